//! The tenancy tables and the deterministic apply of [`TenancyCommand`]s, plus the
//! tenancy queries of [`StateView`]. Ordered tables only, time only from commands.

use std::ops::Bound;

use berth_types::EcProfile;
use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};

use crate::codec;
use crate::error::ConsensusError;
use crate::state::{BytesRead, contains, read_record};
use crate::tables::{BytesTable, key, prefix_range};
use crate::tenancy::{
    AUDIT_BATCH_ENTRIES_MAX, AuditRecord, GroupBinding, IdentityProvider, OneTimeTokenRecord,
    ProjectLimits, ProjectName, ProjectRecord, ProjectRole, ProviderSetting, ROBOT_GRANTS_MAX,
    RobotRecord, RobotSecretGrace, SigningKeyRecord, TenancyCommand, TenancyOutcome,
    TenancyRejection, UserRecord, valid_group_name,
};
use crate::view::StateView;

/// `project` -> `ProjectRecord`.
pub(crate) const PROJECTS: BytesTable = TableDefinition::new("projects");
/// `user` -> `UserRecord`.
pub(crate) const USERS: BytesTable = TableDefinition::new("users");
/// `project\0user` -> `ProjectRole`.
pub(crate) const MEMBERS: BytesTable = TableDefinition::new("members");
/// `robot name` -> `RobotRecord`.
pub(crate) const ROBOTS: BytesTable = TableDefinition::new("robots");
/// `kid` -> `SigningKeyRecord`.
pub(crate) const SIGNING_KEYS: BytesTable = TableDefinition::new("signing_keys");
/// `at_ms (8 bytes BE) ++ sequence (8 bytes BE)` -> `AuditRecord`.
pub(crate) const AUDIT: BytesTable = TableDefinition::new("audit");
/// [`AUDIT_SEQ`] -> next audit sequence number (8 bytes BE).
pub(crate) const TENANCY_META: BytesTable = TableDefinition::new("tenancy_meta");
const AUDIT_SEQ: &[u8] = b"audit_seq";
/// `robot_grace\0<robot>` in [`TENANCY_META`] -> the [`RobotSecretGrace`] of a robot
/// whose secret was rotated with a grace period.
fn robot_grace_key(robot: &str) -> Vec<u8> {
    key(&[b"robot_grace", robot.as_bytes()])
}

/// `project_profile\0<project>` in [`TENANCY_META`] -> the [`EcProfile`] of the
/// project's new blobs.
fn project_profile_key(project: &ProjectName) -> Vec<u8> {
    key(&[b"project_profile", project.as_str().as_bytes()])
}

/// `project_limits\0<project>` in [`TENANCY_META`] -> the [`ProjectLimits`] of a
/// project that has a request limit.
fn project_limits_key(project: &ProjectName) -> Vec<u8> {
    key(&[b"project_limits", project.as_str().as_bytes()])
}

/// `provider\0<oidc|ldap>` in [`TENANCY_META`] -> the [`ProviderSetting`] in force
/// (absent: never set).
fn provider_key(provider: IdentityProvider) -> Vec<u8> {
    key(&[b"provider", provider.as_str().as_bytes()])
}
/// `onetime$<project>+<id>` -> `OneTimeTokenRecord`.
pub(crate) const ONE_TIME_TOKENS: BytesTable = TableDefinition::new("one_time_tokens");
/// `kid` -> the instant (ms, 8 bytes BE) after which tokens it signed are refused.
/// A key without an entry is the one in force.
pub(crate) const KEY_RETIREMENT: BytesTable = TableDefinition::new("signing_key_retirement");

/// The access tables (one-time tokens, key retirement), after [`TENANCY_TABLES`] in
/// snapshots and the state digest.
pub(crate) const ACCESS_TABLES: [(&str, BytesTable); 2] = [
    ("one_time_tokens", ONE_TIME_TOKENS),
    ("signing_key_retirement", KEY_RETIREMENT),
];
/// `project\0provider\0group` -> `GroupBinding`.
pub(crate) const GROUP_BINDINGS: BytesTable = TableDefinition::new("group_bindings");

/// The tenancy tables, in the fixed order snapshots and the state digest use after
/// the registry tables.
pub(crate) const TENANCY_TABLES: [(&str, BytesTable); 8] = [
    ("projects", PROJECTS),
    ("users", USERS),
    ("members", MEMBERS),
    ("robots", ROBOTS),
    ("signing_keys", SIGNING_KEYS),
    ("audit", AUDIT),
    ("tenancy_meta", TENANCY_META),
    ("group_bindings", GROUP_BINDINGS),
];

type BytesTableMut<'txn> = Table<'txn, &'static [u8], &'static [u8]>;

/// The tenancy tables opened for writing in an apply transaction.
pub(crate) struct TenancyTables<'txn> {
    projects: BytesTableMut<'txn>,
    users: BytesTableMut<'txn>,
    members: BytesTableMut<'txn>,
    robots: BytesTableMut<'txn>,
    keys: BytesTableMut<'txn>,
    audit: BytesTableMut<'txn>,
    meta: BytesTableMut<'txn>,
    one_time: BytesTableMut<'txn>,
    retirement: BytesTableMut<'txn>,
    groups: BytesTableMut<'txn>,
}

fn group_key(project: &ProjectName, provider: IdentityProvider, group: &str) -> Vec<u8> {
    key(&[
        project.as_str().as_bytes(),
        provider.as_str().as_bytes(),
        group.as_bytes(),
    ])
}

fn robot_prefix(project: &ProjectName) -> String {
    format!("robot${project}+")
}

impl<'txn> TenancyTables<'txn> {
    pub(crate) fn open(txn: &'txn WriteTransaction) -> Result<TenancyTables<'txn>, ConsensusError> {
        Ok(TenancyTables {
            projects: txn.open_table(PROJECTS)?,
            users: txn.open_table(USERS)?,
            members: txn.open_table(MEMBERS)?,
            robots: txn.open_table(ROBOTS)?,
            keys: txn.open_table(SIGNING_KEYS)?,
            audit: txn.open_table(AUDIT)?,
            meta: txn.open_table(TENANCY_META)?,
            one_time: txn.open_table(ONE_TIME_TOKENS)?,
            retirement: txn.open_table(KEY_RETIREMENT)?,
            groups: txn.open_table(GROUP_BINDINGS)?,
        })
    }

    /// Applies one tenancy command. `repos` is the registry's repository table, read to
    /// refuse deleting a project that still holds repositories. Every check runs before
    /// the first write.
    pub(crate) fn apply(
        &mut self,
        cmd: &TenancyCommand,
        repos: &impl BytesRead,
    ) -> Result<TenancyOutcome, ConsensusError> {
        use TenancyOutcome::{Done, Exists, NotFound, Rejected};
        Ok(match cmd {
            TenancyCommand::CreateProject(p) => {
                let k = p.name.as_str().as_bytes();
                if contains(&self.projects, k)? {
                    Exists
                } else {
                    self.projects.insert(k, codec::encode(p).as_slice())?;
                    Done
                }
            }
            TenancyCommand::SetProjectPublic { name, public } => {
                let k = name.as_str().as_bytes();
                match read_record::<ProjectRecord>(&self.projects, "project record", k)? {
                    None => NotFound,
                    Some(mut p) => {
                        p.public = *public;
                        self.projects.insert(k, codec::encode(&p).as_slice())?;
                        Done
                    }
                }
            }
            TenancyCommand::DeleteProject { name } => self.delete_project(name, repos)?,
            TenancyCommand::CreateUser(u) => {
                if contains(&self.users, u.name.as_bytes())? {
                    Exists
                } else {
                    self.users
                        .insert(u.name.as_bytes(), codec::encode(u).as_slice())?;
                    Done
                }
            }
            TenancyCommand::BootstrapAdmin(u) => {
                if self.users.iter()?.next().transpose()?.is_some() {
                    Exists
                } else {
                    self.users
                        .insert(u.name.as_bytes(), codec::encode(u).as_slice())?;
                    Done
                }
            }
            TenancyCommand::SetPassword {
                name,
                password_hash,
            } => self.update_user(name, |u| u.password_hash = password_hash.clone())?,
            TenancyCommand::SetAdmin { name, admin } => {
                self.update_user(name, |u| u.admin = *admin)?
            }
            TenancyCommand::DeleteUser { name } => {
                if self.users.remove(name.as_bytes())?.is_none() {
                    NotFound
                } else {
                    let mut doomed = Vec::new();
                    for entry in self.members.iter()? {
                        let (k, _) = entry?;
                        let k = k.value();
                        if k.split(|b| *b == 0).nth(1) == Some(name.as_bytes()) {
                            doomed.push(k.to_vec());
                        }
                    }
                    for k in doomed {
                        self.members.remove(k.as_slice())?;
                    }
                    Done
                }
            }
            TenancyCommand::SetMember {
                project,
                user,
                role,
            } => {
                if !contains(&self.projects, project.as_str().as_bytes())? {
                    Rejected(TenancyRejection::ProjectUnknown)
                } else if !contains(&self.users, user.as_bytes())? {
                    Rejected(TenancyRejection::UserUnknown)
                } else {
                    let k = key(&[project.as_str().as_bytes(), user.as_bytes()]);
                    match role {
                        Some(r) => {
                            self.members
                                .insert(k.as_slice(), codec::encode(r).as_slice())?;
                            Done
                        }
                        None => match self.members.remove(k.as_slice())? {
                            Some(_) => Done,
                            None => NotFound,
                        },
                    }
                }
            }
            TenancyCommand::CreateRobot(r) => self.create_robot(r)?,
            TenancyCommand::DeleteRobot { name } => match self.robots.remove(name.as_bytes())? {
                Some(_) => {
                    self.meta.remove(robot_grace_key(name).as_slice())?;
                    Done
                }
                None => NotFound,
            },
            TenancyCommand::InitSigningKey(k) => {
                let first = self
                    .keys
                    .iter()?
                    .next()
                    .transpose()?
                    .map(|(_, v)| v.value().to_vec());
                match first {
                    Some(v) => TenancyOutcome::SigningKey(codec::decode("signing key record", &v)?),
                    None => {
                        self.keys
                            .insert(k.kid.as_bytes(), codec::encode(k).as_slice())?;
                        TenancyOutcome::SigningKey(k.clone())
                    }
                }
            }
            TenancyCommand::Audit(entries) => {
                if entries.len() > AUDIT_BATCH_ENTRIES_MAX {
                    Rejected(TenancyRejection::TooLarge)
                } else {
                    let mut seq = self.audit_seq()?;
                    for e in entries {
                        let mut k = e.at_ms.to_be_bytes().to_vec();
                        k.extend_from_slice(&seq.to_be_bytes());
                        self.audit
                            .insert(k.as_slice(), codec::encode(e).as_slice())?;
                        seq += 1;
                    }
                    self.meta.insert(AUDIT_SEQ, &seq.to_be_bytes()[..])?;
                    TenancyOutcome::Audited(entries.len() as u64)
                }
            }
            TenancyCommand::PruneAudit { before_ms } => {
                let end = before_ms.to_be_bytes();
                let mut doomed = Vec::new();
                for entry in self.audit.range::<&[u8]>(..&end[..])? {
                    doomed.push(entry?.0.value().to_vec());
                }
                for k in &doomed {
                    self.audit.remove(k.as_slice())?;
                }
                TenancyOutcome::Audited(doomed.len() as u64)
            }
            TenancyCommand::CreateOneTimeToken(t) => {
                if !contains(&self.projects, t.project.as_str().as_bytes())? {
                    Rejected(TenancyRejection::ProjectUnknown)
                } else if contains(&self.one_time, t.name.as_bytes())? {
                    Exists
                } else {
                    self.one_time
                        .insert(t.name.as_bytes(), codec::encode(t).as_slice())?;
                    Done
                }
            }
            TenancyCommand::RedeemOneTimeToken { name, at_ms } => {
                self.redeem_one_time(name, *at_ms)?
            }
            TenancyCommand::PruneOneTimeTokens { before_ms } => {
                let mut doomed = Vec::new();
                for entry in self.one_time.iter()? {
                    let (k, v) = entry?;
                    let t: OneTimeTokenRecord = codec::decode("one-time token", v.value())?;
                    if t.expires_at_ms < *before_ms
                        || t.redeemed_at_ms.is_some_and(|at| at < *before_ms)
                    {
                        doomed.push(k.value().to_vec());
                    }
                }
                for k in &doomed {
                    self.one_time.remove(k.as_slice())?;
                }
                TenancyOutcome::Audited(doomed.len() as u64)
            }
            TenancyCommand::SetRobotSecret { name, secret_hash } => {
                self.set_robot_secret(name, secret_hash, None)?
            }
            TenancyCommand::SetRobotSecretWithGrace {
                name,
                secret_hash,
                previous_until_ms,
            } => self.set_robot_secret(name, secret_hash, Some(*previous_until_ms))?,
            TenancyCommand::RotateSigningKey {
                key,
                retire_previous_at_ms,
            } => self.rotate_signing_key(key, *retire_previous_at_ms)?,
            TenancyCommand::SetGroupBinding {
                provider,
                group,
                project,
                role,
            } => self.set_group_binding(*provider, group, project, *role)?,
            TenancyCommand::RotateSigningKeyFrom {
                expected_kid,
                key,
                retire_previous_at_ms,
            } => {
                if self.signing_kid()?.as_deref() == Some(expected_kid.as_str()) {
                    self.rotate_signing_key(key, *retire_previous_at_ms)?
                } else {
                    Exists
                }
            }
            TenancyCommand::SetProjectProfile { project, profile } => {
                // Decoded profiles bypass `EcProfile::new`: checked again here.
                let valid =
                    profile.is_none_or(|p| EcProfile::new(p.k() as u8, p.m() as u8).is_ok());
                self.set_project_setting(
                    project_profile_key(project),
                    project,
                    profile.as_ref(),
                    valid,
                )?
            }
            TenancyCommand::SetProjectLimits { project, limits } => {
                let valid = limits.is_none_or(|l| l.valid());
                self.set_project_setting(
                    project_limits_key(project),
                    project,
                    limits.as_ref(),
                    valid,
                )?
            }
            TenancyCommand::SetIdentityProvider { setting, seed } => {
                let k = provider_key(setting.provider());
                if !setting.fits() {
                    Rejected(TenancyRejection::TooLarge)
                } else if *seed && contains(&self.meta, k.as_slice())? {
                    Exists
                } else {
                    self.meta
                        .insert(k.as_slice(), codec::encode(setting).as_slice())?;
                    Done
                }
            }
        })
    }

    /// Replaces a robot's secret hash; with `grace_until_ms` the previous hash is kept
    /// as its grace until then, without it any earlier grace ends.
    /// Sets (or with `None` removes) one per-project setting stored under `k`:
    /// `NotFound` without the project, `Rejected(TooLarge)` when not `valid`.
    fn set_project_setting<T: serde::Serialize>(
        &mut self,
        k: Vec<u8>,
        project: &ProjectName,
        value: Option<&T>,
        valid: bool,
    ) -> Result<TenancyOutcome, ConsensusError> {
        if !contains(&self.projects, project.as_str().as_bytes())? {
            return Ok(TenancyOutcome::NotFound);
        }
        if !valid {
            return Ok(TenancyOutcome::Rejected(TenancyRejection::TooLarge));
        }
        match value {
            Some(v) => self
                .meta
                .insert(k.as_slice(), codec::encode(v).as_slice())?,
            None => self.meta.remove(k.as_slice())?,
        };
        Ok(TenancyOutcome::Done)
    }

    fn set_robot_secret(
        &mut self,
        name: &str,
        secret_hash: &str,
        grace_until_ms: Option<u64>,
    ) -> Result<TenancyOutcome, ConsensusError> {
        let Some(mut r) =
            read_record::<RobotRecord>(&self.robots, "robot record", name.as_bytes())?
        else {
            return Ok(TenancyOutcome::NotFound);
        };
        let grace_key = robot_grace_key(name);
        match grace_until_ms {
            Some(until_ms) => {
                let grace = RobotSecretGrace {
                    previous_hash: r.secret_hash.clone(),
                    until_ms,
                };
                self.meta
                    .insert(grace_key.as_slice(), codec::encode(&grace).as_slice())?;
            }
            None => {
                self.meta.remove(grace_key.as_slice())?;
            }
        }
        r.secret_hash = secret_hash.to_owned();
        self.robots
            .insert(name.as_bytes(), codec::encode(&r).as_slice())?;
        Ok(TenancyOutcome::Done)
    }

    fn set_group_binding(
        &mut self,
        provider: IdentityProvider,
        group: &str,
        project: &ProjectName,
        role: Option<ProjectRole>,
    ) -> Result<TenancyOutcome, ConsensusError> {
        if !valid_group_name(group) {
            return Ok(TenancyOutcome::Rejected(TenancyRejection::TooLarge));
        }
        if !contains(&self.projects, project.as_str().as_bytes())? {
            return Ok(TenancyOutcome::Rejected(TenancyRejection::ProjectUnknown));
        }
        let k = group_key(project, provider, group);
        Ok(match role {
            Some(role) => {
                let record = GroupBinding {
                    provider,
                    group: group.to_owned(),
                    project: project.clone(),
                    role,
                };
                self.groups
                    .insert(k.as_slice(), codec::encode(&record).as_slice())?;
                TenancyOutcome::Done
            }
            None => match self.groups.remove(k.as_slice())? {
                Some(_) => TenancyOutcome::Done,
                None => TenancyOutcome::NotFound,
            },
        })
    }

    fn redeem_one_time(
        &mut self,
        name: &str,
        at_ms: u64,
    ) -> Result<TenancyOutcome, ConsensusError> {
        let Some(mut t) =
            read_record::<OneTimeTokenRecord>(&self.one_time, "one-time token", name.as_bytes())?
        else {
            return Ok(TenancyOutcome::NotFound);
        };
        if t.redeemed_at_ms.is_some() {
            return Ok(TenancyOutcome::Rejected(TenancyRejection::AlreadyUsed));
        }
        if at_ms >= t.expires_at_ms {
            return Ok(TenancyOutcome::Rejected(TenancyRejection::Expired));
        }
        t.redeemed_at_ms = Some(at_ms);
        self.one_time
            .insert(name.as_bytes(), codec::encode(&t).as_slice())?;
        Ok(TenancyOutcome::Done)
    }

    /// The key that signs: the newest key without a retirement instant.
    fn signing_kid(&self) -> Result<Option<String>, ConsensusError> {
        let mut best: Option<SigningKeyRecord> = None;
        for entry in self.keys.iter()? {
            let (kid, v) = entry?;
            if self.retirement.get(kid.value())?.is_some() {
                continue;
            }
            let k: SigningKeyRecord = codec::decode("signing key record", v.value())?;
            if best
                .as_ref()
                .is_none_or(|b| k.created_at_ms > b.created_at_ms)
            {
                best = Some(k);
            }
        }
        Ok(best.map(|k| k.kid))
    }

    fn rotate_signing_key(
        &mut self,
        key: &SigningKeyRecord,
        retire_previous_at_ms: u64,
    ) -> Result<TenancyOutcome, ConsensusError> {
        let mut kids = Vec::new();
        for entry in self.keys.iter()? {
            kids.push(entry?.0.value().to_vec());
        }
        for kid in kids {
            if kid == key.kid.as_bytes() {
                continue;
            }
            let retire = match self.retirement.get(kid.as_slice())? {
                Some(v) => be_u64(v.value())?.min(retire_previous_at_ms),
                None => retire_previous_at_ms,
            };
            if retire <= key.created_at_ms {
                self.keys.remove(kid.as_slice())?;
                self.retirement.remove(kid.as_slice())?;
            } else {
                self.retirement
                    .insert(kid.as_slice(), &retire.to_be_bytes()[..])?;
            }
        }
        self.keys
            .insert(key.kid.as_bytes(), codec::encode(key).as_slice())?;
        self.retirement.remove(key.kid.as_bytes())?;
        Ok(TenancyOutcome::SigningKey(key.clone()))
    }

    fn create_robot(&mut self, r: &RobotRecord) -> Result<TenancyOutcome, ConsensusError> {
        use TenancyOutcome::Rejected;
        if r.grants.len() > ROBOT_GRANTS_MAX {
            return Ok(Rejected(TenancyRejection::TooLarge));
        }
        if let Some(own) = &r.project
            && r.grants.iter().any(|g| g.project != *own)
        {
            return Ok(Rejected(TenancyRejection::GrantOutsideProject));
        }
        for p in r
            .grants
            .iter()
            .map(|g| &g.project)
            .chain(r.project.as_ref())
        {
            if !contains(&self.projects, p.as_str().as_bytes())? {
                return Ok(Rejected(TenancyRejection::ProjectUnknown));
            }
        }
        if contains(&self.robots, r.name.as_bytes())? {
            return Ok(TenancyOutcome::Exists);
        }
        self.robots
            .insert(r.name.as_bytes(), codec::encode(r).as_slice())?;
        Ok(TenancyOutcome::Done)
    }

    fn audit_seq(&self) -> Result<u64, ConsensusError> {
        match self.meta.get(AUDIT_SEQ)? {
            None => Ok(0),
            Some(v) => {
                let b: [u8; 8] = v
                    .value()
                    .try_into()
                    .map_err(|_| ConsensusError::Malformed {
                        table: "tenancy_meta",
                    })?;
                Ok(u64::from_be_bytes(b))
            }
        }
    }
}

fn be_u64(v: &[u8]) -> Result<u64, ConsensusError> {
    let b: [u8; 8] = v.try_into().map_err(|_| ConsensusError::Malformed {
        table: "signing_key_retirement",
    })?;
    Ok(u64::from_be_bytes(b))
}

impl<'txn> TenancyTables<'txn> {
    fn update_user(
        &mut self,
        name: &str,
        change: impl FnOnce(&mut UserRecord),
    ) -> Result<TenancyOutcome, ConsensusError> {
        match read_record::<UserRecord>(&self.users, "user record", name.as_bytes())? {
            None => Ok(TenancyOutcome::NotFound),
            Some(mut u) => {
                change(&mut u);
                self.users
                    .insert(name.as_bytes(), codec::encode(&u).as_slice())?;
                Ok(TenancyOutcome::Done)
            }
        }
    }

    fn delete_project(
        &mut self,
        name: &ProjectName,
        repos: &impl BytesRead,
    ) -> Result<TenancyOutcome, ConsensusError> {
        let n = name.as_str().as_bytes();
        if !contains(&self.projects, n)? {
            return Ok(TenancyOutcome::NotFound);
        }
        // Repositories of the project: `name` itself and everything under `name/`
        // (`/` + 1 is `0`).
        let mut below = n.to_vec();
        below.push(b'/');
        let mut end = n.to_vec();
        end.push(b'0');
        let holds = contains(repos, n)?
            || repos
                .range::<&[u8]>(below.as_slice()..end.as_slice())?
                .next()
                .transpose()?
                .is_some();
        if holds {
            return Ok(TenancyOutcome::Rejected(TenancyRejection::ProjectNotEmpty));
        }
        self.projects.remove(n)?;
        let (start, stop) = prefix_range(&[n]);
        let mut doomed = Vec::new();
        for entry in self
            .members
            .range::<&[u8]>(start.as_slice()..stop.as_slice())?
        {
            doomed.push(entry?.0.value().to_vec());
        }
        for k in doomed {
            self.members.remove(k.as_slice())?;
        }
        let prefix = robot_prefix(name);
        let mut robots = Vec::new();
        for entry in self.robots.range::<&[u8]>(prefix.as_bytes()..)? {
            let (k, _) = entry?;
            if !k.value().starts_with(prefix.as_bytes()) {
                break;
            }
            robots.push(k.value().to_vec());
        }
        for k in robots {
            self.robots.remove(k.as_slice())?;
            self.meta
                .remove(key(&[b"robot_grace", k.as_slice()]).as_slice())?;
        }
        let mut bindings = Vec::new();
        for entry in self
            .groups
            .range::<&[u8]>(start.as_slice()..stop.as_slice())?
        {
            bindings.push(entry?.0.value().to_vec());
        }
        for k in bindings {
            self.groups.remove(k.as_slice())?;
        }
        self.meta.remove(project_limits_key(name).as_slice())?;
        self.meta.remove(project_profile_key(name).as_slice())?;
        Ok(TenancyOutcome::Done)
    }
}

/// Filters of an audit query.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub identity: Option<String>,
    pub project: Option<String>,
    pub action: Option<String>,
    pub limit: usize,
}

/// The tenancy queries.
impl StateView {
    pub fn project(&self, name: &ProjectName) -> Result<Option<ProjectRecord>, ConsensusError> {
        read_record(
            &self.table(PROJECTS)?,
            "project record",
            name.as_str().as_bytes(),
        )
    }

    /// Every project, by name.
    pub fn projects(&self) -> Result<Vec<ProjectRecord>, ConsensusError> {
        self.all(PROJECTS, "project record")
    }

    pub fn user(&self, name: &str) -> Result<Option<UserRecord>, ConsensusError> {
        read_record(&self.table(USERS)?, "user record", name.as_bytes())
    }

    /// Every user, by name.
    pub fn users(&self) -> Result<Vec<UserRecord>, ConsensusError> {
        self.all(USERS, "user record")
    }

    /// The role of `user` in `project`.
    pub fn role(
        &self,
        project: &ProjectName,
        user: &str,
    ) -> Result<Option<ProjectRole>, ConsensusError> {
        let k = key(&[project.as_str().as_bytes(), user.as_bytes()]);
        read_record(&self.table(MEMBERS)?, "role binding", &k)
    }

    /// The members of `project` with their roles, by user name.
    pub fn members(
        &self,
        project: &ProjectName,
    ) -> Result<Vec<(String, ProjectRole)>, ConsensusError> {
        let (start, end) = prefix_range(&[project.as_str().as_bytes()]);
        let table = self.table(MEMBERS)?;
        let mut out = Vec::new();
        for entry in table.range::<&[u8]>(start.as_slice()..end.as_slice())? {
            let (k, v) = entry?;
            let user = crate::state::key_suffix(k.value(), &start, "members")?.to_owned();
            out.push((user, codec::decode("role binding", v.value())?));
        }
        Ok(out)
    }

    pub fn robot(&self, name: &str) -> Result<Option<RobotRecord>, ConsensusError> {
        read_record(&self.table(ROBOTS)?, "robot record", name.as_bytes())
    }

    /// Robots of `project` (`None`: every robot), by name.
    pub fn robots(
        &self,
        project: Option<&ProjectName>,
    ) -> Result<Vec<RobotRecord>, ConsensusError> {
        let all: Vec<RobotRecord> = self.all(ROBOTS, "robot record")?;
        Ok(match project {
            None => all,
            Some(p) => all
                .into_iter()
                .filter(|r| r.project.as_ref() == Some(p))
                .collect(),
        })
    }

    /// The group bindings of `project` (`None`: of every project), by project,
    /// provider and group.
    pub fn group_bindings(
        &self,
        project: Option<&ProjectName>,
    ) -> Result<Vec<GroupBinding>, ConsensusError> {
        let Some(project) = project else {
            return self.all(GROUP_BINDINGS, "group binding");
        };
        let (start, end) = prefix_range(&[project.as_str().as_bytes()]);
        let table = self.table(GROUP_BINDINGS)?;
        let mut out = Vec::new();
        for entry in table.range::<&[u8]>(start.as_slice()..end.as_slice())? {
            out.push(codec::decode("group binding", entry?.1.value())?);
        }
        Ok(out)
    }

    /// The strongest role that any of `groups` at `provider` holds in `project`.
    pub fn group_role(
        &self,
        project: &ProjectName,
        provider: IdentityProvider,
        groups: &[String],
    ) -> Result<Option<ProjectRole>, ConsensusError> {
        let table = self.table(GROUP_BINDINGS)?;
        let mut best = None;
        for g in groups {
            let k = group_key(project, provider, g);
            if let Some(b) = read_record::<GroupBinding>(&table, "group binding", &k)? {
                best = best.max(Some(b.role));
            }
        }
        Ok(best)
    }

    /// The cluster's setting of `provider`; `None` if it was never set (then a
    /// node's start-up flags apply until they seed it).
    pub fn identity_provider(
        &self,
        provider: IdentityProvider,
    ) -> Result<Option<ProviderSetting>, ConsensusError> {
        read_record(
            &self.table(TENANCY_META)?,
            "identity provider setting",
            provider_key(provider).as_slice(),
        )
    }

    /// The request limit of `project`, if it has one.
    pub fn project_limits(
        &self,
        project: &ProjectName,
    ) -> Result<Option<ProjectLimits>, ConsensusError> {
        read_record(
            &self.table(TENANCY_META)?,
            "project limits",
            project_limits_key(project).as_slice(),
        )
    }

    /// The erasure-coding profile of `project`'s new blobs, if it has its own.
    pub fn project_profile(
        &self,
        project: &ProjectName,
    ) -> Result<Option<EcProfile>, ConsensusError> {
        read_record(
            &self.table(TENANCY_META)?,
            "project profile",
            project_profile_key(project).as_slice(),
        )
    }

    /// Every project request limit, by project name.
    pub fn all_project_limits(&self) -> Result<Vec<(String, ProjectLimits)>, ConsensusError> {
        let table = self.table(TENANCY_META)?;
        let (start, stop) = prefix_range(&[b"project_limits"]);
        let mut out = Vec::new();
        for entry in table.range::<&[u8]>(start.as_slice()..stop.as_slice())? {
            let (k, v) = entry?;
            let project = k.value()[start.len()..].to_vec();
            let project = String::from_utf8(project).map_err(|_| ConsensusError::Malformed {
                table: "project limits",
            })?;
            out.push((project, codec::decode("project limits", v.value())?));
        }
        Ok(out)
    }

    /// The previous secret of robot `name` kept by a rotation with a grace period
    /// (whether it still holds is the caller's check of `until_ms`).
    pub fn robot_secret_grace(
        &self,
        name: &str,
    ) -> Result<Option<RobotSecretGrace>, ConsensusError> {
        read_record(
            &self.table(TENANCY_META)?,
            "robot secret grace",
            robot_grace_key(name).as_slice(),
        )
    }

    /// The signing keys, by key id.
    pub fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, ConsensusError> {
        self.all(SIGNING_KEYS, "signing key record")
    }

    pub fn one_time_token(&self, name: &str) -> Result<Option<OneTimeTokenRecord>, ConsensusError> {
        read_record(
            &self.table(ONE_TIME_TOKENS)?,
            "one-time token",
            name.as_bytes(),
        )
    }

    /// Every one-time token, by name.
    pub fn all_one_time_tokens(&self) -> Result<Vec<OneTimeTokenRecord>, ConsensusError> {
        self.all(ONE_TIME_TOKENS, "one-time token")
    }

    /// One-time tokens of `project`, by name.
    pub fn one_time_tokens(
        &self,
        project: &ProjectName,
    ) -> Result<Vec<OneTimeTokenRecord>, ConsensusError> {
        let all: Vec<OneTimeTokenRecord> = self.all(ONE_TIME_TOKENS, "one-time token")?;
        Ok(all.into_iter().filter(|t| t.project == *project).collect())
    }

    /// The signing keys with the instant each retires (`None`: the key in force).
    pub fn signing_keys_with_retirement(
        &self,
    ) -> Result<Vec<(SigningKeyRecord, Option<u64>)>, ConsensusError> {
        let retirement = self.table(KEY_RETIREMENT)?;
        let mut out = Vec::new();
        for k in self.signing_keys()? {
            let at = match retirement.get(k.kid.as_bytes())? {
                Some(v) => Some(be_u64(v.value())?),
                None => None,
            };
            out.push((k, at));
        }
        Ok(out)
    }

    /// Audit entries in time order that pass `q`, at most `q.limit`.
    pub fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, ConsensusError> {
        let start = q.since_ms.unwrap_or(0).to_be_bytes();
        let upper = match q.until_ms {
            Some(u) => Bound::Excluded(u.to_be_bytes()),
            None => Bound::Unbounded,
        };
        let upper_ref = match &upper {
            Bound::Excluded(u) => Bound::Excluded(&u[..]),
            _ => Bound::Unbounded,
        };
        let table = self.table(AUDIT)?;
        let mut out = Vec::new();
        for entry in table.range::<&[u8]>((Bound::Included(&start[..]), upper_ref))? {
            if out.len() >= q.limit {
                break;
            }
            let (_, v) = entry?;
            let r: AuditRecord = codec::decode("audit record", v.value())?;
            if q.identity.as_ref().is_some_and(|i| *i != r.identity)
                || q.project
                    .as_ref()
                    .is_some_and(|p| Some(p) != r.project.as_ref())
                || q.action.as_ref().is_some_and(|a| *a != r.action)
            {
                continue;
            }
            out.push(r);
        }
        Ok(out)
    }

    fn all<R: serde::de::DeserializeOwned>(
        &self,
        def: BytesTable,
        what: &'static str,
    ) -> Result<Vec<R>, ConsensusError> {
        let table = self.table(def)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            out.push(codec::decode(what, entry?.1.value())?);
        }
        Ok(out)
    }
}
