//! Repository names, tags and manifest references, validated against the grammar of
//! the OCI Distribution Spec.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::limits::{REPO_NAME_BYTES_MAX, TAG_BYTES_MAX};

/// Why a repository name or tag was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("repository name is empty")]
    EmptyName,
    #[error("repository name is longer than {REPO_NAME_BYTES_MAX} characters")]
    NameTooLong,
    #[error(
        "repository name does not match [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*)*"
    )]
    NameGrammar,
    #[error("tag must match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")]
    TagGrammar,
}

/// A repository name such as `library/alpine` or `team-a/app/api`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepoName(String);

impl RepoName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first path component, the project (tenant) the repository belongs to.
    pub fn project(&self) -> &str {
        self.0.split('/').next().unwrap_or(&self.0)
    }
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// One path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_component(c: &[u8]) -> bool {
    let mut i = 0;
    let run = |i: &mut usize| {
        let start = *i;
        while *i < c.len() && is_alnum(c[*i]) {
            *i += 1;
        }
        *i > start
    };
    if !run(&mut i) {
        return false;
    }
    while i < c.len() {
        let sep_start = i;
        match c[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < c.len() && c[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < c.len() && c[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        debug_assert!(i > sep_start);
        if !run(&mut i) {
            return false;
        }
    }
    true
}

impl FromStr for RepoName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(NameError::EmptyName);
        }
        if s.len() > REPO_NAME_BYTES_MAX {
            return Err(NameError::NameTooLong);
        }
        if !s.split('/').all(|c| valid_component(c.as_bytes())) {
            return Err(NameError::NameGrammar);
        }
        Ok(RepoName(s.to_owned()))
    }
}

/// A tag such as `latest` or `v1.2.3-rc_1`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Tag(String);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let first_ok = b
            .first()
            .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_');
        let rest_ok = b
            .iter()
            .skip(1)
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
        if !first_ok || !rest_ok || b.len() > TAG_BYTES_MAX {
            return Err(NameError::TagGrammar);
        }
        Ok(Tag(s.to_owned()))
    }
}

/// The `<reference>` of a manifest URL: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t.as_str()),
            Reference::Digest(d) => fmt::Display::fmt(d, f),
        }
    }
}

macro_rules! string_newtype_impls {
    ($t:ident) => {
        impl TryFrom<String> for $t {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    };
}
string_newtype_impls!(RepoName);
string_newtype_impls!(Tag);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn repo_name_table() {
        let ok = [
            "a",
            "library/alpine",
            "team-a/app/api",
            "a.b_c__d---e/f0",
            "0/1/2",
        ];
        for s in ok {
            assert_eq!(s.parse::<RepoName>().unwrap().as_str(), s, "{s}");
        }
        let bad = [
            ("", NameError::EmptyName),
            ("A", NameError::NameGrammar),
            ("a/", NameError::NameGrammar),
            ("/a", NameError::NameGrammar),
            ("a//b", NameError::NameGrammar),
            ("a___b", NameError::NameGrammar),
            ("a..b", NameError::NameGrammar),
            ("-a", NameError::NameGrammar),
            ("a-", NameError::NameGrammar),
            ("a b", NameError::NameGrammar),
            ("a:b", NameError::NameGrammar),
        ];
        for (s, e) in bad {
            assert_eq!(s.parse::<RepoName>().unwrap_err(), e, "{s}");
        }
        let long = "a".repeat(REPO_NAME_BYTES_MAX + 1);
        assert_eq!(
            long.parse::<RepoName>().unwrap_err(),
            NameError::NameTooLong
        );
        assert!("a".repeat(REPO_NAME_BYTES_MAX).parse::<RepoName>().is_ok());
    }

    #[test]
    fn project_is_first_component() {
        assert_eq!(
            "team-a/app".parse::<RepoName>().unwrap().project(),
            "team-a"
        );
        assert_eq!("solo".parse::<RepoName>().unwrap().project(), "solo");
    }

    #[test]
    fn tag_table() {
        for s in ["latest", "v1.2.3-rc_1", "_x", "A", &"a".repeat(128)] {
            assert!(s.parse::<Tag>().is_ok(), "{s}");
        }
        for s in ["", ".a", "-a", "a/b", "a:b", &"a".repeat(129)] {
            assert_eq!(s.parse::<Tag>().unwrap_err(), NameError::TagGrammar, "{s}");
        }
    }

    proptest! {
        #[test]
        fn generated_valid_names_parse(s in "[a-z0-9]{1,8}((\\.|_|__|-{1,3})[a-z0-9]{1,8}){0,3}(/[a-z0-9]{1,8}((\\.|_|__|-+)[a-z0-9]{1,8}){0,2}){0,3}") {
            prop_assert!(s.parse::<RepoName>().is_ok());
        }

        #[test]
        fn parser_never_panics(s in "\\PC{0,300}") {
            let _ = s.parse::<RepoName>();
            let _ = s.parse::<Tag>();
            let _ = s.parse::<Digest>();
        }
    }
}
