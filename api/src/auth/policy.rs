//! The authorization decision as a pure function: what an identity may do in one
//! repository, from the facts gathered for it (administrator flag, project role, robot
//! grants, whether the project exists and is public), and what a request needs from
//! its parsed [`Endpoint`]. No I/O; table-tested below.

use axum::http::Method;
use berth_consensus::tenancy::{ProjectRole, RobotActions};
use berth_types::RepoName;

use crate::oci::endpoint::Endpoint;

/// Actions on a repository.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Actions {
    pub pull: bool,
    pub push: bool,
    pub delete: bool,
}

impl Actions {
    pub const NONE: Actions = Actions {
        pull: false,
        push: false,
        delete: false,
    };
    pub const ALL: Actions = Actions {
        pull: true,
        push: true,
        delete: true,
    };
    pub const PULL: Actions = Actions {
        pull: true,
        push: false,
        delete: false,
    };

    pub fn union(self, o: Actions) -> Actions {
        Actions {
            pull: self.pull || o.pull,
            push: self.push || o.push,
            delete: self.delete || o.delete,
        }
    }

    pub fn intersect(self, o: Actions) -> Actions {
        Actions {
            pull: self.pull && o.pull,
            push: self.push && o.push,
            delete: self.delete && o.delete,
        }
    }

    /// Whether every action of `need` is in `self`.
    pub fn covers(self, need: Actions) -> bool {
        self.intersect(need) == need
    }

    pub fn is_empty(self) -> bool {
        self == Actions::NONE
    }

    /// What a project role allows.
    pub fn of_role(role: ProjectRole) -> Actions {
        match role {
            ProjectRole::Reader => Actions::PULL,
            ProjectRole::Developer => Actions {
                pull: true,
                push: true,
                delete: false,
            },
            ProjectRole::Maintainer | ProjectRole::Owner => Actions::ALL,
        }
    }

    pub fn of_robot(a: RobotActions) -> Actions {
        Actions {
            pull: a.pull,
            push: a.push,
            delete: a.delete,
        }
    }

    /// The token-scope spelling: `pull,push,delete` (only those held).
    pub fn scope_list(self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.pull {
            out.push("pull");
        }
        if self.push {
            out.push("push");
        }
        if self.delete {
            out.push("delete");
        }
        out
    }

    /// Parses token-scope actions; `*` means all. Unknown words are ignored, as the
    /// token protocol asks.
    pub fn parse_list<'a>(words: impl IntoIterator<Item = &'a str>) -> Actions {
        let mut a = Actions::NONE;
        for w in words {
            match w.trim() {
                "pull" => a.pull = true,
                "push" => a.push = true,
                "delete" => a.delete = true,
                "*" => a = Actions::ALL,
                _ => {}
            }
        }
        a
    }
}

/// What is known about one identity and one repository's project.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// A system administrator.
    pub admin: bool,
    /// The user's role in the project.
    pub role: Option<ProjectRole>,
    /// The actions of the robot grants that cover the repository (unexpired robot).
    pub robot: Actions,
    /// `None`: the project does not exist. `Some(public)` otherwise.
    pub project_public: Option<bool>,
}

/// What the facts allow in the repository.
pub fn allowed(f: &Facts) -> Actions {
    let Some(public) = f.project_public else {
        // Nothing exists in a project that does not: an administrator may look (and
        // gets NAME_UNKNOWN), nobody may write.
        return if f.admin {
            Actions::PULL
        } else {
            Actions::NONE
        };
    };
    if f.admin {
        return Actions::ALL;
    }
    let mut a = if public { Actions::PULL } else { Actions::NONE };
    if let Some(role) = f.role {
        a = a.union(Actions::of_role(role));
    }
    a.union(f.robot)
}

/// What a request needs: `None` for `/v2/` and the catalog (any caller; the catalog
/// filters), else the repository and the actions.
pub fn needs(endpoint: &Endpoint, method: &Method) -> Option<(RepoName, Actions)> {
    let push = Actions {
        pull: false,
        push: true,
        delete: false,
    };
    let delete = Actions {
        pull: false,
        push: false,
        delete: true,
    };
    let (repo, actions) = match endpoint {
        Endpoint::Base | Endpoint::Catalog => return None,
        Endpoint::Tags(r) | Endpoint::Referrers(r, _) => (r, Actions::PULL),
        Endpoint::Manifest(r, _) | Endpoint::Blob(r, _) => match *method {
            Method::PUT => (r, push),
            Method::DELETE => (r, delete),
            _ => (r, Actions::PULL),
        },
        Endpoint::UploadStart(r) | Endpoint::Upload(r, _) => (r, push),
    };
    Some((repo.clone(), actions))
}

/// The answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Anonymous, or a token without the needed scope while the identity holds it:
    /// 401 with a Bearer challenge, so the client fetches a (new) token.
    Challenge,
    /// Authenticated without the right: 403 DENIED, the same whether the resource
    /// exists or not.
    Deny,
    /// The project does not exist and the caller could create it: 403 DENIED with a
    /// message saying so.
    ProjectMissing,
}

/// Decides one request. `held` is [`allowed`] for the identity; `token` the actions
/// a bearer token grants on the repository (`None` without a token).
pub fn decide(anonymous: bool, facts: &Facts, need: Actions, token: Option<Actions>) -> Decision {
    let held = allowed(facts);
    let effective = match token {
        Some(t) => held.intersect(t),
        None => held,
    };
    if effective.covers(need) {
        return Decision::Allow;
    }
    if anonymous || held.covers(need) {
        return Decision::Challenge;
    }
    if facts.admin && facts.project_public.is_none() {
        return Decision::ProjectMissing;
    }
    Decision::Deny
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::*;

    const PUSH: Actions = Actions {
        pull: false,
        push: true,
        delete: false,
    };
    const DELETE: Actions = Actions {
        pull: false,
        push: false,
        delete: true,
    };

    fn facts(
        admin: bool,
        role: Option<ProjectRole>,
        robot: Actions,
        project_public: Option<bool>,
    ) -> Facts {
        Facts {
            admin,
            role,
            robot,
            project_public,
        }
    }

    #[test]
    fn decision_table() {
        use ProjectRole::*;
        let n = Actions::NONE;
        let robot_pull = Actions::PULL;
        let robot_push = Actions {
            pull: true,
            push: true,
            delete: false,
        };
        // (anonymous, facts, need, token, decision)
        let table: Vec<(bool, Facts, Actions, Option<Actions>, Decision)> = vec![
            // Anonymous: pull on public only; everything else challenges.
            (
                true,
                facts(false, None, n, Some(true)),
                Actions::PULL,
                None,
                Allow,
            ),
            (
                true,
                facts(false, None, n, Some(false)),
                Actions::PULL,
                None,
                Challenge,
            ),
            (
                true,
                facts(false, None, n, None),
                Actions::PULL,
                None,
                Challenge,
            ),
            (
                true,
                facts(false, None, n, Some(true)),
                PUSH,
                None,
                Challenge,
            ),
            // Roles.
            (
                false,
                facts(false, Some(Reader), n, Some(false)),
                Actions::PULL,
                None,
                Allow,
            ),
            (
                false,
                facts(false, Some(Reader), n, Some(false)),
                PUSH,
                None,
                Deny,
            ),
            (
                false,
                facts(false, Some(Reader), n, Some(false)),
                DELETE,
                None,
                Deny,
            ),
            (
                false,
                facts(false, Some(Developer), n, Some(false)),
                PUSH,
                None,
                Allow,
            ),
            (
                false,
                facts(false, Some(Developer), n, Some(false)),
                DELETE,
                None,
                Deny,
            ),
            (
                false,
                facts(false, Some(Maintainer), n, Some(false)),
                DELETE,
                None,
                Allow,
            ),
            (
                false,
                facts(false, Some(Owner), n, Some(false)),
                DELETE,
                None,
                Allow,
            ),
            // A member of nothing: public pull only, and no hint of existence.
            (
                false,
                facts(false, None, n, Some(true)),
                Actions::PULL,
                None,
                Allow,
            ),
            (
                false,
                facts(false, None, n, Some(false)),
                Actions::PULL,
                None,
                Deny,
            ),
            (
                false,
                facts(false, None, n, None),
                Actions::PULL,
                None,
                Deny,
            ),
            (false, facts(false, None, n, None), PUSH, None, Deny),
            // Administrators: everything, but no push into a missing project.
            (
                false,
                facts(true, None, n, Some(false)),
                DELETE,
                None,
                Allow,
            ),
            (
                false,
                facts(true, None, n, None),
                PUSH,
                None,
                ProjectMissing,
            ),
            (
                false,
                facts(true, None, n, None),
                Actions::PULL,
                None,
                Allow,
            ),
            // Robots: their grants.
            (
                false,
                facts(false, None, robot_pull, Some(false)),
                Actions::PULL,
                None,
                Allow,
            ),
            (
                false,
                facts(false, None, robot_pull, Some(false)),
                PUSH,
                None,
                Deny,
            ),
            (
                false,
                facts(false, None, robot_push, Some(false)),
                PUSH,
                None,
                Allow,
            ),
            // Tokens: the intersection; a missing scope the identity holds challenges.
            (
                false,
                facts(false, Some(Developer), n, Some(false)),
                PUSH,
                Some(Actions::PULL),
                Challenge,
            ),
            (
                false,
                facts(false, Some(Developer), n, Some(false)),
                PUSH,
                Some(robot_push),
                Allow,
            ),
            (
                false,
                facts(false, Some(Reader), n, Some(false)),
                PUSH,
                Some(Actions::ALL),
                Deny,
            ),
            (
                false,
                facts(false, None, n, Some(false)),
                Actions::PULL,
                Some(Actions::ALL),
                Deny,
            ),
        ];
        for (i, (anon, f, need, token, want)) in table.into_iter().enumerate() {
            assert_eq!(
                decide(anon, &f, need, token),
                want,
                "row {i}: {f:?} {need:?} {token:?}"
            );
        }
    }

    #[test]
    fn endpoints_need_the_right_actions() {
        let r: RepoName = "team/app".parse().unwrap();
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            .parse()
            .unwrap();
        let m = |tag: &str| {
            Endpoint::Manifest(r.clone(), berth_types::Reference::Tag(tag.parse().unwrap()))
        };
        let table = [
            (Endpoint::Base, Method::GET, None),
            (Endpoint::Catalog, Method::GET, None),
            (Endpoint::Tags(r.clone()), Method::GET, Some(Actions::PULL)),
            (m("v1"), Method::GET, Some(Actions::PULL)),
            (m("v1"), Method::HEAD, Some(Actions::PULL)),
            (m("v1"), Method::PUT, Some(PUSH)),
            (m("v1"), Method::DELETE, Some(DELETE)),
            (Endpoint::Blob(r.clone(), d), Method::DELETE, Some(DELETE)),
            (Endpoint::UploadStart(r.clone()), Method::POST, Some(PUSH)),
        ];
        for (e, method, want) in table {
            assert_eq!(needs(&e, &method).map(|(_, a)| a), want, "{e:?} {method}");
        }
    }

    #[test]
    fn scope_words() {
        assert_eq!(
            Actions::parse_list("pull,push".split(',')),
            Actions {
                pull: true,
                push: true,
                delete: false
            }
        );
        assert_eq!(Actions::parse_list(["*"]), Actions::ALL);
        assert_eq!(Actions::parse_list(["bogus"]), Actions::NONE);
        assert_eq!(Actions::ALL.scope_list(), ["pull", "push", "delete"]);
    }
}
