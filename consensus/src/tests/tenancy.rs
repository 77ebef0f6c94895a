//! Tenancy commands: each command's outcome and effect, the rules that keep projects,
//! members and robots consistent, and a snapshot that carries the tenancy tables to
//! another node.

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};

use super::{TestDb, inline, repo, sha};
use crate::model::{Command, Outcome};
use crate::tenancy::{
    AuditOutcome, AuditRecord, ProjectName, ProjectRecord, ProjectRole, RobotActions, RobotGrant,
    RobotRecord, SigningKeyRecord, TenancyCommand as T, TenancyOutcome, TenancyRejection,
    UserRecord,
};
use crate::tenancy_state::AuditQuery;

fn project(name: &str) -> ProjectName {
    name.parse().unwrap()
}

fn t(db: &TestDb, cmd: T) -> TenancyOutcome {
    match db.apply(&Command::Tenancy(cmd)) {
        Outcome::Tenancy(o) => o,
        other => panic!("tenancy command answered {other:?}"),
    }
}

fn user(name: &str, admin: bool) -> UserRecord {
    UserRecord {
        name: name.into(),
        password_hash: format!("hash-of-{name}"),
        admin,
        created_at_ms: 5,
    }
}

fn new_project(name: &str, public: bool) -> T {
    T::CreateProject(ProjectRecord {
        name: project(name),
        public,
        created_at_ms: 1,
        created_by: "admin".into(),
    })
}

fn robot(name: &str, owner: Option<&str>, grant_project: &str) -> RobotRecord {
    RobotRecord {
        name: name.into(),
        project: owner.map(project),
        secret_hash: "h".into(),
        grants: vec![RobotGrant {
            project: project(grant_project),
            repositories: "app".into(),
            actions: RobotActions {
                pull: true,
                push: true,
                delete: false,
            },
        }],
        expires_at_ms: Some(100),
        created_at_ms: 2,
        created_by: "admin".into(),
    }
}

fn audit(at_ms: u64, identity: &str, action: &str) -> AuditRecord {
    AuditRecord {
        at_ms,
        identity: identity.into(),
        client: "127.0.0.1".into(),
        action: action.into(),
        resource: "team/app:v1".into(),
        project: Some("team".into()),
        outcome: AuditOutcome::Success,
        count: 1,
    }
}

/// Builds a tenancy state worth carrying: two projects, users, a binding, a robot, a
/// key and audit entries.
fn populate(db: &TestDb) {
    assert_eq!(t(db, new_project("team", false)), TenancyOutcome::Done);
    assert_eq!(t(db, new_project("pub", true)), TenancyOutcome::Done);
    assert_eq!(
        t(db, T::BootstrapAdmin(user("admin", true))),
        TenancyOutcome::Done
    );
    assert_eq!(
        t(db, T::CreateUser(user("alice", false))),
        TenancyOutcome::Done
    );
    assert_eq!(
        t(
            db,
            T::SetMember {
                project: project("team"),
                user: "alice".into(),
                role: Some(ProjectRole::Developer),
            }
        ),
        TenancyOutcome::Done
    );
    assert_eq!(
        t(
            db,
            T::CreateRobot(robot("robot$team+ci", Some("team"), "team"))
        ),
        TenancyOutcome::Done
    );
    let key = SigningKeyRecord {
        kid: "k1".into(),
        pkcs8_der: vec![1, 2, 3],
        created_at_ms: 3,
    };
    assert_eq!(
        t(db, T::InitSigningKey(key.clone())),
        TenancyOutcome::SigningKey(key)
    );
    assert_eq!(
        t(
            db,
            T::Audit(vec![audit(10, "alice", "push"), audit(10, "bob", "pull")])
        ),
        TenancyOutcome::Audited(2)
    );
}

#[test]
fn tenancy_commands_keep_their_rules() {
    let db = TestDb::new();
    populate(&db);
    // Names are unique; the bootstrap admin is created only on an empty user table.
    assert_eq!(t(&db, new_project("team", true)), TenancyOutcome::Exists);
    assert_eq!(
        t(&db, T::CreateUser(user("alice", true))),
        TenancyOutcome::Exists
    );
    assert_eq!(
        t(&db, T::BootstrapAdmin(user("root", true))),
        TenancyOutcome::Exists
    );
    assert!(db.view().user("root").unwrap().is_none());
    // The first signing key stays in force.
    let other = SigningKeyRecord {
        kid: "k2".into(),
        pkcs8_der: vec![9],
        created_at_ms: 4,
    };
    match t(&db, T::InitSigningKey(other)) {
        TenancyOutcome::SigningKey(k) => assert_eq!(k.kid, "k1"),
        o => panic!("{o:?}"),
    }
    assert_eq!(db.view().signing_keys().unwrap().len(), 1);
    // Bindings and robots need existing projects and users.
    assert_eq!(
        t(
            &db,
            T::SetMember {
                project: project("nope"),
                user: "alice".into(),
                role: Some(ProjectRole::Reader),
            }
        ),
        TenancyOutcome::Rejected(TenancyRejection::ProjectUnknown)
    );
    assert_eq!(
        t(
            &db,
            T::SetMember {
                project: project("team"),
                user: "ghost".into(),
                role: Some(ProjectRole::Reader),
            }
        ),
        TenancyOutcome::Rejected(TenancyRejection::UserUnknown)
    );
    assert_eq!(
        t(
            &db,
            T::CreateRobot(robot("robot$team+x", Some("team"), "pub"))
        ),
        TenancyOutcome::Rejected(TenancyRejection::GrantOutsideProject)
    );
    assert_eq!(
        t(&db, T::CreateRobot(robot("robot$sys", None, "nope"))),
        TenancyOutcome::Rejected(TenancyRejection::ProjectUnknown)
    );
    let v = db.view();
    assert_eq!(
        v.role(&project("team"), "alice").unwrap(),
        Some(ProjectRole::Developer)
    );
    assert_eq!(v.members(&project("team")).unwrap().len(), 1);
    assert_eq!(v.robots(Some(&project("team"))).unwrap().len(), 1);
    assert_eq!(v.robots(Some(&project("pub"))).unwrap().len(), 0);

    // A project with repositories is not deleted.
    db.apply(&Command::CommitBlob {
        repo: repo("team/app"),
        digest: sha(1),
        size: 3,
        layout: inline(1),
        upload: None,
        at_ms: 1,
    });
    assert_eq!(
        t(
            &db,
            T::DeleteProject {
                name: project("team")
            }
        ),
        TenancyOutcome::Rejected(TenancyRejection::ProjectNotEmpty)
    );
    db.apply(&Command::UnlinkBlob {
        repo: repo("team/app"),
        digest: sha(1),
    });
    // A repository of another project whose name extends this one does not count.
    db.apply(&Command::CommitBlob {
        repo: repo("teams/app"),
        digest: sha(1),
        size: 3,
        layout: inline(1),
        upload: None,
        at_ms: 1,
    });
    assert_eq!(
        t(
            &db,
            T::DeleteProject {
                name: project("team")
            }
        ),
        TenancyOutcome::Done
    );
    let v = db.view();
    assert!(v.project(&project("team")).unwrap().is_none());
    assert_eq!(v.role(&project("team"), "alice").unwrap(), None);
    assert!(v.robot("robot$team+ci").unwrap().is_none());

    // Deleting a user removes its bindings.
    t(&db, new_project("team", false));
    t(
        &db,
        T::SetMember {
            project: project("team"),
            user: "alice".into(),
            role: Some(ProjectRole::Owner),
        },
    );
    assert_eq!(
        t(
            &db,
            T::DeleteUser {
                name: "alice".into()
            }
        ),
        TenancyOutcome::Done
    );
    assert!(db.view().members(&project("team")).unwrap().is_empty());
    assert_eq!(
        t(
            &db,
            T::DeleteUser {
                name: "alice".into()
            }
        ),
        TenancyOutcome::NotFound
    );
}

#[test]
fn audit_entries_are_ordered_filtered_and_pruned() {
    let db = TestDb::new();
    t(
        &db,
        T::Audit(vec![
            audit(30, "alice", "push"),
            audit(10, "bob", "pull"),
            audit(20, "alice", "delete"),
        ]),
    );
    let q = |f: &dyn Fn(&mut AuditQuery)| {
        let mut q = AuditQuery {
            limit: 100,
            ..AuditQuery::default()
        };
        f(&mut q);
        db.view().audit(&q).unwrap()
    };
    let all = q(&|_| {});
    assert_eq!(
        all.iter().map(|a| a.at_ms).collect::<Vec<_>>(),
        [10, 20, 30]
    );
    assert_eq!(q(&|q| q.identity = Some("alice".into())).len(), 2);
    assert_eq!(q(&|q| q.action = Some("pull".into())).len(), 1);
    assert_eq!(
        q(&|q| {
            q.since_ms = Some(15);
            q.until_ms = Some(30);
        })
        .len(),
        1
    );
    assert_eq!(
        t(&db, T::PruneAudit { before_ms: 25 }),
        TenancyOutcome::Audited(2)
    );
    assert_eq!(q(&|_| {}).len(), 1);
}

#[tokio::test]
async fn a_snapshot_carries_the_tenancy_state() {
    let from = TestDb::new();
    populate(&from);
    let mut source = from.store();
    let snapshot = source.build_snapshot().await.unwrap();

    let to = TestDb::new();
    t(&to, new_project("stale", false));
    let mut target = to.store();
    target
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    assert_eq!(
        from.view().state_digest().unwrap(),
        to.view().state_digest().unwrap()
    );
    let v = to.view();
    assert!(v.project(&project("stale")).unwrap().is_none());
    assert!(v.project(&project("pub")).unwrap().unwrap().public);
    assert!(v.user("admin").unwrap().unwrap().admin);
    assert_eq!(
        v.role(&project("team"), "alice").unwrap(),
        Some(ProjectRole::Developer)
    );
    assert_eq!(
        v.robot("robot$team+ci").unwrap().unwrap().expires_at_ms,
        Some(100)
    );
    assert_eq!(v.signing_keys().unwrap()[0].kid, "k1");
    let q = AuditQuery {
        limit: 10,
        ..AuditQuery::default()
    };
    assert_eq!(v.audit(&q).unwrap().len(), 2);
}

/// Group bindings: set, replace, look up the strongest role of a caller's groups, unbind,
/// refuse unknown projects and invalid group names, and go away with their project.
#[test]
fn group_bindings_map_external_groups_to_roles() {
    use crate::tenancy::IdentityProvider::{Ldap, Oidc};
    let db = TestDb::new();
    assert_eq!(t(&db, new_project("team", false)), TenancyOutcome::Done);
    let bind = |provider, group: &str, project_name: &str, role| T::SetGroupBinding {
        provider,
        group: group.into(),
        project: project(project_name),
        role,
    };
    assert_eq!(
        t(
            &db,
            bind(Oidc, "devs", "ghost", Some(ProjectRole::Developer))
        ),
        TenancyOutcome::Rejected(TenancyRejection::ProjectUnknown)
    );
    assert_eq!(
        t(&db, bind(Oidc, "", "team", Some(ProjectRole::Developer))),
        TenancyOutcome::Rejected(TenancyRejection::TooLarge)
    );
    for (provider, group, role) in [
        (Oidc, "devs", ProjectRole::Developer),
        (Oidc, "readers", ProjectRole::Reader),
        (Ldap, "devs", ProjectRole::Owner),
    ] {
        assert_eq!(
            t(&db, bind(provider, group, "team", Some(role))),
            TenancyOutcome::Done
        );
    }
    let groups = |g: &[&str]| g.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let role = |provider, g: &[&str]| {
        db.view()
            .group_role(&project("team"), provider, &groups(g))
            .unwrap()
    };
    assert_eq!(
        role(Oidc, &["readers", "devs"]),
        Some(ProjectRole::Developer)
    );
    assert_eq!(role(Oidc, &["readers"]), Some(ProjectRole::Reader));
    // The same group name at another provider is another group.
    assert_eq!(role(Ldap, &["devs"]), Some(ProjectRole::Owner));
    assert_eq!(role(Ldap, &["readers"]), None);
    assert_eq!(role(Oidc, &[]), None);
    assert_eq!(db.view().group_bindings(None).unwrap().len(), 3);

    assert_eq!(
        t(
            &db,
            bind(Oidc, "devs", "team", Some(ProjectRole::Maintainer))
        ),
        TenancyOutcome::Done
    );
    assert_eq!(role(Oidc, &["devs"]), Some(ProjectRole::Maintainer));
    assert_eq!(
        t(&db, bind(Oidc, "devs", "team", None)),
        TenancyOutcome::Done
    );
    assert_eq!(
        t(&db, bind(Oidc, "devs", "team", None)),
        TenancyOutcome::NotFound
    );
    assert_eq!(role(Oidc, &["devs"]), None);

    assert_eq!(
        t(
            &db,
            T::DeleteProject {
                name: project("team")
            }
        ),
        TenancyOutcome::Done
    );
    assert!(db.view().group_bindings(None).unwrap().is_empty());
}

/// Identity provider settings: a seed lands only while the provider was never set, an
/// administrator's setting replaces one, turning a provider off is remembered (a later
/// seed does not turn it back on), and oversized fields are refused.
#[test]
fn identity_provider_settings_are_seeded_once_and_then_set() {
    use crate::tenancy::{IdentityProvider, OidcProviderRecord, ProviderSetting};
    let db = TestDb::new();
    let oidc = |issuer: &str| {
        ProviderSetting::Oidc(Some(OidcProviderRecord {
            issuer: issuer.into(),
            audience: "berth".into(),
            groups_claim: "groups".into(),
            username_claim: "sub".into(),
            jwks_refresh_min_secs: 60,
        }))
    };
    let set = |setting: ProviderSetting, seed: bool| T::SetIdentityProvider { setting, seed };
    let read = |db: &TestDb| db.view().identity_provider(IdentityProvider::Oidc).unwrap();
    assert_eq!(read(&db), None);
    assert_eq!(
        db.view().identity_provider(IdentityProvider::Ldap).unwrap(),
        None
    );

    assert_eq!(t(&db, set(oidc("https://a"), true)), TenancyOutcome::Done);
    assert_eq!(read(&db), Some(oidc("https://a")));
    // A second node's seed finds the setting made and changes nothing.
    assert_eq!(t(&db, set(oidc("https://b"), true)), TenancyOutcome::Exists);
    assert_eq!(read(&db), Some(oidc("https://a")));
    // An administrator's setting replaces it.
    assert_eq!(t(&db, set(oidc("https://c"), false)), TenancyOutcome::Done);
    assert_eq!(read(&db), Some(oidc("https://c")));
    // Off stays off: a seed does not bring it back.
    assert_eq!(
        t(&db, set(ProviderSetting::Oidc(None), false)),
        TenancyOutcome::Done
    );
    assert_eq!(t(&db, set(oidc("https://d"), true)), TenancyOutcome::Exists);
    assert_eq!(read(&db), Some(ProviderSetting::Oidc(None)));
    // The LDAP setting is separate.
    assert_eq!(
        db.view().identity_provider(IdentityProvider::Ldap).unwrap(),
        None
    );

    let huge = oidc(&"x".repeat(crate::tenancy::PROVIDER_FIELD_BYTES_MAX + 1));
    assert_eq!(
        t(&db, set(huge, false)),
        TenancyOutcome::Rejected(TenancyRejection::TooLarge)
    );
    assert_eq!(read(&db), Some(ProviderSetting::Oidc(None)));
}
