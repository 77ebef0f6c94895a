//! The tenancy model: projects (the tenant unit, the first path component of a
//! repository), local users, project role bindings, robot accounts, the token signing
//! keys and the audit log, with the versioned [`TenancyCommand`]s that change them and
//! the [`TenancyOutcome`] they return. Secrets never appear here in the clear: the
//! proposer hashes passwords and robot secrets before it proposes, so the log and the
//! state hold only hashes.

use std::fmt;
use std::str::FromStr;

use berth_types::{EcProfile, RepoName};
use serde::{Deserialize, Serialize};

/// Longest user or robot name, in bytes.
pub const ACCOUNT_NAME_BYTES_MAX: usize = 128;
/// Most audit entries one command may carry.
pub const AUDIT_BATCH_ENTRIES_MAX: usize = 1_000;
/// Most grants one robot may hold.
pub const ROBOT_GRANTS_MAX: usize = 100;
/// Longest external group name, in bytes.
pub const GROUP_NAME_BYTES_MAX: usize = 256;
/// Longest field of an identity provider setting (a URL, DN template or filter), in
/// bytes.
pub const PROVIDER_FIELD_BYTES_MAX: usize = 2048;
/// Highest request rate a project limit may set (requests per second).
pub const PROJECT_RPS_MAX: u32 = 1_000_000;
/// Largest burst a project limit may allow (requests).
pub const PROJECT_BURST_MAX: u32 = 10_000_000;

/// A project name: one repository path component (`[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProjectName(String);

/// Why a project, user or robot name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenancyNameError {
    #[error("a project name is one repository path component ([a-z0-9]+ joined by . _ __ or -)")]
    Project,
    #[error(
        "an account name is 1 to {ACCOUNT_NAME_BYTES_MAX} characters of a-z, A-Z, 0-9, . _ - @ and is not anonymous or robot$..."
    )]
    Account,
}

impl ProjectName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The project a repository belongs to.
    pub fn of(repo: &RepoName) -> ProjectName {
        ProjectName(repo.project().to_owned())
    }
}

impl FromStr for ProjectName {
    type Err = TenancyNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains('/') || s.parse::<RepoName>().is_err() {
            return Err(TenancyNameError::Project);
        }
        Ok(ProjectName(s.to_owned()))
    }
}

impl TryFrom<String> for ProjectName {
    type Error = TenancyNameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ProjectName> for String {
    fn from(p: ProjectName) -> String {
        p.0
    }
}

impl fmt::Display for ProjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ProjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Whether `name` is a valid local user name (robots are named by the server).
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= ACCOUNT_NAME_BYTES_MAX
        && !name.starts_with("robot$")
        && name != "anonymous"
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

/// A role in a project. Ordered by power: every role holds what the ones before it do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProjectRole {
    /// Pull.
    Reader,
    /// Pull and push.
    Developer,
    /// Pull, push and delete.
    Maintainer,
    /// Everything in the project, including its members and robots.
    Owner,
}

impl FromStr for ProjectRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "reader" => Ok(ProjectRole::Reader),
            "developer" => Ok(ProjectRole::Developer),
            "maintainer" => Ok(ProjectRole::Maintainer),
            "owner" => Ok(ProjectRole::Owner),
            _ => Err(format!(
                "unknown role {s:?}: use owner, maintainer, developer or reader"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectRecord {
    pub name: ProjectName,
    /// Anyone, also anonymous, may pull from a public project.
    pub public: bool,
    pub created_at_ms: u64,
    pub created_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    /// PHC string of an argon2id hash.
    pub password_hash: String,
    /// A system administrator may do everything.
    pub admin: bool,
    pub created_at_ms: u64,
}

/// What a robot grant allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RobotActions {
    pub pull: bool,
    pub push: bool,
    pub delete: bool,
}

/// One permission of a robot: `actions` on the repositories of `project` whose path
/// below the project matches `repositories` (`*` for all, `app` for exactly
/// `project/app`, `app/*` for every repository under `project/app/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RobotGrant {
    pub project: ProjectName,
    pub repositories: String,
    pub actions: RobotActions,
}

impl RobotGrant {
    /// Whether the grant covers `repo`.
    pub fn covers(&self, repo: &RepoName) -> bool {
        if repo.project() != self.project.as_str() {
            return false;
        }
        let below = repo
            .as_str()
            .strip_prefix(self.project.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .unwrap_or("");
        pattern_matches(&self.repositories, below)
    }
}

/// `*` matches everything; a trailing `/*` matches the prefix and everything under it;
/// anything else matches exactly.
fn pattern_matches(pattern: &str, path: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix("/*") {
        return path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|r| r.starts_with('/'));
    }
    pattern == path
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RobotRecord {
    /// `robot$<project>+<name>` for a project robot, `robot$<name>` for a system robot.
    pub name: String,
    /// The owning project; `None` for a system robot (created by an administrator).
    pub project: Option<ProjectName>,
    /// PHC string of an argon2id hash of the secret.
    pub secret_hash: String,
    pub grants: Vec<RobotGrant>,
    /// After this instant the robot authenticates nothing.
    pub expires_at_ms: Option<u64>,
    pub created_at_ms: u64,
    pub created_by: String,
}

impl RobotRecord {
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|e| now_ms >= e)
    }
}

/// A project's request limit: each node lets through `requests_per_second` registry
/// requests for the project's repositories, with bursts of up to `burst` (a token
/// bucket per project and node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectLimits {
    /// 1 to [`PROJECT_RPS_MAX`].
    pub requests_per_second: u32,
    /// 1 to [`PROJECT_BURST_MAX`]; `None`: one second's worth (`requests_per_second`).
    pub burst: Option<u32>,
}

impl ProjectLimits {
    /// Whether both numbers are in range.
    pub fn valid(&self) -> bool {
        (1..=PROJECT_RPS_MAX).contains(&self.requests_per_second)
            && self
                .burst
                .is_none_or(|b| (1..=PROJECT_BURST_MAX).contains(&b))
    }

    /// The bucket size: `burst`, or one second's worth of requests.
    pub fn bucket(&self) -> u32 {
        self.burst.unwrap_or(self.requests_per_second)
    }
}

/// The previous secret of a robot that still authenticates until `until_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RobotSecretGrace {
    /// PHC string of an argon2id hash of the previous secret.
    pub previous_hash: String,
    pub until_ms: u64,
}

/// A token signing key (ECDSA P-256). The private key is in Raft so every node signs
/// and verifies with the same key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKeyRecord {
    pub kid: String,
    /// PKCS#8 DER of the private key.
    pub pkcs8_der: Vec<u8>,
    pub created_at_ms: u64,
}

/// Never prints key material.
impl fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeyRecord")
            .field("kid", &self.kid)
            .field("created_at_ms", &self.created_at_ms)
            .finish_non_exhaustive()
    }
}

/// A one-time token: a secret that may be exchanged once, before `expires_at_ms`, at
/// the token service for a short-lived access token carrying `actions` on the
/// repositories of `project` matching `repositories` (a single CI push). The
/// exchange is a Raft command ([`TenancyCommand::RedeemOneTimeToken`]), so two nodes
/// cannot both accept it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneTimeTokenRecord {
    /// `onetime$<project>+<hex id>`.
    pub name: String,
    pub project: ProjectName,
    /// `*`, `NAME` or `NAME/*` below the project, as for robot grants.
    pub repositories: String,
    pub actions: RobotActions,
    /// PHC string of an argon2id hash of the secret.
    pub secret_hash: String,
    /// After this instant the token can no longer be redeemed.
    pub expires_at_ms: u64,
    pub created_at_ms: u64,
    pub created_by: String,
    /// When it was redeemed; a redeemed token is never accepted again.
    pub redeemed_at_ms: Option<u64>,
}

/// The name prefix of one-time tokens.
pub const ONE_TIME_PREFIX: &str = "onetime$";

impl OneTimeTokenRecord {
    /// The grant it carries, in the robot grant form the policy understands.
    pub fn grant(&self) -> RobotGrant {
        RobotGrant {
            project: self.project.clone(),
            repositories: self.repositories.clone(),
            actions: self.actions,
        }
    }
}

/// An external identity provider whose groups map to project roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityProvider {
    /// OpenID Connect ID tokens from the configured issuer.
    Oidc,
    /// Bind authentication against the configured LDAP directory.
    Ldap,
}

impl IdentityProvider {
    /// The spelling in identities (`oidc:alice`), paths and keys.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityProvider::Oidc => "oidc",
            IdentityProvider::Ldap => "ldap",
        }
    }

    /// The provider an identity name belongs to (`oidc:alice` -> OIDC).
    pub fn of_identity(name: &str) -> Option<IdentityProvider> {
        let (prefix, rest) = name.split_once(':')?;
        if rest.is_empty() {
            return None;
        }
        prefix.parse().ok()
    }
}

impl FromStr for IdentityProvider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "oidc" => Ok(IdentityProvider::Oidc),
            "ldap" => Ok(IdentityProvider::Ldap),
            _ => Err(format!("unknown identity provider {s:?}: use oidc or ldap")),
        }
    }
}

impl fmt::Display for IdentityProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `group` is a valid external group name: 1 to [`GROUP_NAME_BYTES_MAX`]
/// bytes without control characters (LDAP and OIDC group names hold spaces, `=` or
/// `/`).
pub fn valid_group_name(group: &str) -> bool {
    !group.is_empty() && group.len() <= GROUP_NAME_BYTES_MAX && !group.chars().any(char::is_control)
}

/// Members of `group` at `provider` hold `role` in `project`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupBinding {
    pub provider: IdentityProvider,
    pub group: String,
    pub project: ProjectName,
    pub role: ProjectRole,
}

/// The OIDC provider as the cluster stores it: ID tokens of `issuer` issued to
/// `audience` are accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OidcProviderRecord {
    /// The issuer URL, exactly as in the tokens' `iss`.
    pub issuer: String,
    /// The client id the tokens must be issued to (`aud`).
    pub audience: String,
    /// The claim that lists the caller's groups.
    pub groups_claim: String,
    /// The claim that names the caller.
    pub username_claim: String,
    /// Least seconds between two key fetches caused by unknown key ids.
    pub jwks_refresh_min_secs: u64,
}

/// The LDAP provider as the cluster stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LdapProviderRecord {
    /// `ldap://host:port`.
    pub url: String,
    /// The DN a user binds as, `{user}` standing for the user name.
    pub user_dn: String,
    /// Where groups are searched (subtree).
    pub group_base: String,
    /// Which entries are the user's groups (`{dn}`, `{user}` substituted).
    pub group_filter: String,
    /// The attribute of a group entry that names it.
    pub group_attribute: String,
}

/// The setting of one identity provider: its record, or `None` for "not used".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProviderSetting {
    Oidc(Option<OidcProviderRecord>),
    Ldap(Option<LdapProviderRecord>),
}

impl ProviderSetting {
    pub fn provider(&self) -> IdentityProvider {
        match self {
            ProviderSetting::Oidc(_) => IdentityProvider::Oidc,
            ProviderSetting::Ldap(_) => IdentityProvider::Ldap,
        }
    }

    /// Whether every field fits [`PROVIDER_FIELD_BYTES_MAX`].
    pub fn fits(&self) -> bool {
        let fields: Vec<&str> = match self {
            ProviderSetting::Oidc(Some(o)) => {
                vec![&o.issuer, &o.audience, &o.groups_claim, &o.username_claim]
            }
            ProviderSetting::Ldap(Some(l)) => vec![
                &l.url,
                &l.user_dn,
                &l.group_base,
                &l.group_filter,
                &l.group_attribute,
            ],
            _ => Vec::new(),
        };
        fields.iter().all(|f| f.len() <= PROVIDER_FIELD_BYTES_MAX)
    }
}

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditOutcome {
    Success,
    Denied,
    Failure,
}

/// One audited action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub at_ms: u64,
    /// User or robot name, or `anonymous`.
    pub identity: String,
    pub client: String,
    /// `push`, `delete`, `tag`, `pull`, `login`, `auth-failure`, `policy`, ...
    pub action: String,
    /// The repository, `repo:tag`, `repo@digest`, or a management path.
    pub resource: String,
    /// The project the resource belongs to, if any.
    pub project: Option<String>,
    pub outcome: AuditOutcome,
    /// How many identical events this entry stands for (pulls are batched).
    pub count: u32,
}

/// Format 1 of the tenancy commands. Times are stamped by the proposer.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TenancyCommand {
    /// Creates a project; `Exists` if there is one by that name.
    CreateProject(ProjectRecord),
    SetProjectPublic {
        name: ProjectName,
        public: bool,
    },
    /// Deletes a project with its role bindings and robots. Refused while the project
    /// holds repositories.
    DeleteProject {
        name: ProjectName,
    },
    /// Creates a user; `Exists` if there is one by that name.
    CreateUser(UserRecord),
    /// Creates the first administrator, only while there is no user at all.
    BootstrapAdmin(UserRecord),
    SetPassword {
        name: String,
        password_hash: String,
    },
    SetAdmin {
        name: String,
        admin: bool,
    },
    /// Deletes a user and its role bindings.
    DeleteUser {
        name: String,
    },
    /// Binds `user` to `role` in `project`, or unbinds with `None`.
    SetMember {
        project: ProjectName,
        user: String,
        role: Option<ProjectRole>,
    },
    CreateRobot(RobotRecord),
    DeleteRobot {
        name: String,
    },
    /// Stores the signing key unless one is stored already; the outcome names the key
    /// in force. Every node may propose its own at start; the first one applied wins.
    InitSigningKey(SigningKeyRecord),
    /// Appends audit entries.
    Audit(Vec<AuditRecord>),
    /// Removes audit entries older than `before_ms`.
    PruneAudit {
        before_ms: u64,
    },
    /// Stores a one-time token; `Exists` if there is one by that name,
    /// `Rejected(ProjectUnknown)` without its project.
    CreateOneTimeToken(OneTimeTokenRecord),
    /// Marks a one-time token redeemed at `at_ms`: `Done` the first time,
    /// `Rejected(AlreadyUsed)` after, `Rejected(Expired)` past its expiry.
    RedeemOneTimeToken {
        name: String,
        at_ms: u64,
    },
    /// Removes one-time tokens that expired, or were redeemed, before `before_ms`.
    PruneOneTimeTokens {
        before_ms: u64,
    },
    /// Replaces a robot's secret hash (the old secret stops working at once).
    SetRobotSecret {
        name: String,
        secret_hash: String,
    },
    /// Adds `key` as the signing key: every key in force until now is retired at
    /// `retire_previous_at_ms` (tokens it signed verify until then), and keys whose
    /// retirement is before `key.created_at_ms` are removed. The outcome is the new key.
    RotateSigningKey {
        key: SigningKeyRecord,
        retire_previous_at_ms: u64,
    },
    /// Binds the members of an external `group` to `role` in `project`, or unbinds
    /// with `None`.
    SetGroupBinding {
        provider: IdentityProvider,
        group: String,
        project: ProjectName,
        role: Option<ProjectRole>,
    },
    /// Sets one identity provider for the whole cluster (`None` in the setting turns
    /// it off). With `seed`, only if the cluster has never had a setting for that
    /// provider (`Exists` otherwise): a node's start-up flags seed the cluster
    /// setting, they never overwrite one an administrator made.
    SetIdentityProvider {
        setting: ProviderSetting,
        seed: bool,
    },
    /// Replaces a robot's secret hash like [`TenancyCommand::SetRobotSecret`], but the
    /// previous secret keeps authenticating until `previous_until_ms` (for clients
    /// that still hold it while the new one is rolled out).
    SetRobotSecretWithGrace {
        name: String,
        secret_hash: String,
        previous_until_ms: u64,
    },
    /// Sets the request limit of `project` (`None`: unlimited). `NotFound` without
    /// the project, `Rejected(TooLarge)` for numbers out of range. Deleting the
    /// project drops its limit.
    SetProjectLimits {
        project: ProjectName,
        limits: Option<ProjectLimits>,
    },
    /// [`TenancyCommand::RotateSigningKey`], but only while `expected_kid` is the key
    /// that signs (`Exists` otherwise): the periodic rotation of a leader, so two
    /// proposals made for the same due key (a leader change in between) rotate once.
    RotateSigningKeyFrom {
        expected_kid: String,
        key: SigningKeyRecord,
        retire_previous_at_ms: u64,
    },
    /// Sets the erasure-coding profile of `project`'s new blobs (`None`: the cluster's
    /// default). `NotFound` without the project, `Rejected(TooLarge)` for a profile out
    /// of range. Blobs already stored keep the profile recorded in their layout until
    /// restriping (in `api`) rewrites those linked only from this project, when the
    /// new profile has at least as many parity shards. Deleting the project drops it.
    SetProjectProfile {
        project: ProjectName,
        profile: Option<EcProfile>,
    },
}

/// A short summary for logs; never prints hashes or keys.
impl fmt::Display for TenancyCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TenancyCommand::CreateProject(p) => write!(f, "create-project {}", p.name),
            TenancyCommand::SetProjectPublic { name, public } => {
                write!(f, "set-project-public {name} {public}")
            }
            TenancyCommand::DeleteProject { name } => write!(f, "delete-project {name}"),
            TenancyCommand::CreateUser(u) => write!(f, "create-user {}", u.name),
            TenancyCommand::BootstrapAdmin(u) => write!(f, "bootstrap-admin {}", u.name),
            TenancyCommand::SetPassword { name, .. } => write!(f, "set-password {name}"),
            TenancyCommand::SetAdmin { name, admin } => write!(f, "set-admin {name} {admin}"),
            TenancyCommand::DeleteUser { name } => write!(f, "delete-user {name}"),
            TenancyCommand::SetMember {
                project,
                user,
                role,
            } => write!(f, "set-member {project} {user} {role:?}"),
            TenancyCommand::CreateRobot(r) => write!(f, "create-robot {}", r.name),
            TenancyCommand::DeleteRobot { name } => write!(f, "delete-robot {name}"),
            TenancyCommand::InitSigningKey(k) => write!(f, "init-signing-key {}", k.kid),
            TenancyCommand::Audit(entries) => write!(f, "audit {} entries", entries.len()),
            TenancyCommand::PruneAudit { before_ms } => write!(f, "prune-audit {before_ms}"),
            TenancyCommand::CreateOneTimeToken(t) => write!(f, "create-one-time-token {}", t.name),
            TenancyCommand::RedeemOneTimeToken { name, at_ms } => {
                write!(f, "redeem-one-time-token {name} {at_ms}")
            }
            TenancyCommand::PruneOneTimeTokens { before_ms } => {
                write!(f, "prune-one-time-tokens {before_ms}")
            }
            TenancyCommand::SetRobotSecret { name, .. } => write!(f, "set-robot-secret {name}"),
            TenancyCommand::RotateSigningKey {
                key,
                retire_previous_at_ms,
            } => write!(f, "rotate-signing-key {} {retire_previous_at_ms}", key.kid),
            TenancyCommand::SetGroupBinding {
                provider,
                group,
                project,
                role,
            } => write!(
                f,
                "set-group-binding {provider}:{group:?} {project} {role:?}"
            ),
            TenancyCommand::SetRobotSecretWithGrace {
                name,
                previous_until_ms,
                ..
            } => write!(f, "set-robot-secret {name} grace-until {previous_until_ms}"),
            TenancyCommand::SetIdentityProvider { setting, seed } => write!(
                f,
                "set-identity-provider {} {} seed={seed}",
                setting.provider(),
                match setting {
                    ProviderSetting::Oidc(Some(_)) | ProviderSetting::Ldap(Some(_)) => "on",
                    _ => "off",
                }
            ),
            TenancyCommand::SetProjectLimits { project, limits } => match limits {
                Some(l) => write!(
                    f,
                    "set-project-limits {project} {} rps burst {}",
                    l.requests_per_second,
                    l.bucket()
                ),
                None => write!(f, "set-project-limits {project} off"),
            },
            TenancyCommand::RotateSigningKeyFrom {
                expected_kid,
                key,
                retire_previous_at_ms,
            } => write!(
                f,
                "rotate-signing-key {expected_kid} -> {} {retire_previous_at_ms}",
                key.kid
            ),
            TenancyCommand::SetProjectProfile { project, profile } => match profile {
                Some(p) => write!(f, "set-project-profile {project} {p}"),
                None => write!(f, "set-project-profile {project} default"),
            },
        }
    }
}

impl fmt::Debug for TenancyCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a tenancy command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TenancyRejection {
    /// The project still holds repositories.
    ProjectNotEmpty,
    /// A role binding or robot names a project that does not exist.
    ProjectUnknown,
    /// A role binding names a user that does not exist.
    UserUnknown,
    /// A project robot holds a grant on another project.
    GrantOutsideProject,
    /// Too many entries in one command.
    TooLarge,
    /// The one-time token was redeemed already.
    AlreadyUsed,
    /// The one-time token expired.
    Expired,
}

/// What applying a tenancy command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TenancyOutcome {
    Done,
    /// Something by that name exists already; nothing changed.
    Exists,
    NotFound,
    Rejected(TenancyRejection),
    /// The signing key in force.
    SigningKey(SigningKeyRecord),
    /// Audit entries appended or pruned.
    Audited(u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    #[test]
    fn grant_patterns() {
        let grant = |pattern: &str| RobotGrant {
            project: "team".parse().unwrap(),
            repositories: pattern.into(),
            actions: RobotActions::default(),
        };
        let table = [
            ("*", "team/app", true),
            ("*", "team", true),
            ("*", "other/app", false),
            ("app", "team/app", true),
            ("app", "team/app/sub", false),
            ("app", "team/apps", false),
            ("app/*", "team/app", true),
            ("app/*", "team/app/sub", true),
            ("app/*", "team/apps", false),
            ("app", "teams/app", false),
        ];
        for (pattern, r, want) in table {
            assert_eq!(grant(pattern).covers(&repo(r)), want, "{pattern} {r}");
        }
    }

    #[test]
    fn names() {
        assert!("team-a".parse::<ProjectName>().is_ok());
        assert!("team/a".parse::<ProjectName>().is_err());
        assert!("Team".parse::<ProjectName>().is_err());
        assert!("".parse::<ProjectName>().is_err());
        assert!(valid_user_name("alice@example.com"));
        assert!(!valid_user_name("robot$x"));
        assert!(!valid_user_name("anonymous"));
        assert!(!valid_user_name("a b"));
        assert!(!valid_user_name(""));
        assert!(ProjectRole::Owner > ProjectRole::Maintainer);
        assert!(ProjectRole::Developer > ProjectRole::Reader);
    }

    #[test]
    fn identity_providers() {
        assert_eq!(
            IdentityProvider::of_identity("oidc:alice"),
            Some(IdentityProvider::Oidc)
        );
        assert_eq!(
            IdentityProvider::of_identity("ldap:bob"),
            Some(IdentityProvider::Ldap)
        );
        assert_eq!(IdentityProvider::of_identity("oidc:"), None);
        assert_eq!(IdentityProvider::of_identity("alice"), None);
        assert_eq!(IdentityProvider::of_identity("saml:x"), None);
        // Local names cannot hold `:`, so external identities never collide.
        assert!(!valid_user_name("oidc:alice"));
        assert!(valid_group_name("cn=devs,ou=groups"));
        assert!(!valid_group_name(""));
        assert!(!valid_group_name("a\nb"));
    }
}
