//! Access commands: one-time tokens are redeemed exactly once and never after their
//! expiry, a robot's secret is replaced, and signing-key rotation retires the keys in
//! force at the given instant and drops keys retired before the new key was made;
//! a conditional rotation rotates only from the key it names; a project's request
//! limit and its erasure-coding profile are stored, validated and dropped with the
//! project.

use berth_types::EcProfile;

use super::TestDb;
use crate::model::{Command, Outcome};
use crate::tenancy::{
    OneTimeTokenRecord, ProjectLimits, ProjectRecord, RobotActions, RobotGrant, RobotRecord,
    SigningKeyRecord, TenancyCommand as T, TenancyOutcome, TenancyRejection,
};

fn t(db: &TestDb, cmd: T) -> TenancyOutcome {
    match db.apply(&Command::Tenancy(cmd)) {
        Outcome::Tenancy(o) => o,
        other => panic!("tenancy command answered {other:?}"),
    }
}

fn with_project(db: &TestDb) {
    let p = ProjectRecord {
        name: "team".parse().unwrap(),
        public: false,
        created_at_ms: 1,
        created_by: "admin".into(),
    };
    assert_eq!(t(db, T::CreateProject(p)), TenancyOutcome::Done);
}

fn one_time(name: &str, project: &str, expires_at_ms: u64) -> OneTimeTokenRecord {
    OneTimeTokenRecord {
        name: name.into(),
        project: project.parse().unwrap(),
        repositories: "app".into(),
        actions: RobotActions {
            pull: true,
            push: true,
            delete: false,
        },
        secret_hash: "h".into(),
        expires_at_ms,
        created_at_ms: 10,
        created_by: "admin".into(),
        redeemed_at_ms: None,
    }
}

#[test]
fn a_one_time_token_is_redeemed_once_and_not_after_expiry() {
    let db = TestDb::new();
    assert_eq!(
        t(
            &db,
            T::CreateOneTimeToken(one_time("onetime$team+a", "team", 100))
        ),
        TenancyOutcome::Rejected(TenancyRejection::ProjectUnknown)
    );
    with_project(&db);
    let a = one_time("onetime$team+a", "team", 100);
    assert_eq!(
        t(&db, T::CreateOneTimeToken(a.clone())),
        TenancyOutcome::Done
    );
    assert_eq!(t(&db, T::CreateOneTimeToken(a)), TenancyOutcome::Exists);
    let redeem = |name: &str, at_ms| T::RedeemOneTimeToken {
        name: name.into(),
        at_ms,
    };
    assert_eq!(t(&db, redeem("onetime$team+a", 50)), TenancyOutcome::Done);
    assert_eq!(
        t(&db, redeem("onetime$team+a", 51)),
        TenancyOutcome::Rejected(TenancyRejection::AlreadyUsed)
    );
    let stored = db.view().one_time_token("onetime$team+a").unwrap().unwrap();
    assert_eq!(stored.redeemed_at_ms, Some(50));
    assert_eq!(
        t(&db, redeem("onetime$team+none", 50)),
        TenancyOutcome::NotFound
    );

    let b = one_time("onetime$team+b", "team", 100);
    assert_eq!(t(&db, T::CreateOneTimeToken(b)), TenancyOutcome::Done);
    assert_eq!(
        t(&db, redeem("onetime$team+b", 100)),
        TenancyOutcome::Rejected(TenancyRejection::Expired)
    );
    let c = one_time("onetime$team+c", "team", 500);
    assert_eq!(t(&db, T::CreateOneTimeToken(c)), TenancyOutcome::Done);
    assert_eq!(
        db.view()
            .one_time_tokens(&"team".parse().unwrap())
            .unwrap()
            .len(),
        3
    );
    // Pruning drops the two that expired at 100, keeps the one valid until 500.
    assert_eq!(
        t(&db, T::PruneOneTimeTokens { before_ms: 200 }),
        TenancyOutcome::Audited(2)
    );
    let left = db.view().one_time_tokens(&"team".parse().unwrap()).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].name, "onetime$team+c");
}

#[test]
fn pruning_removes_tokens_redeemed_before_the_instant_and_keeps_redeemable_ones() {
    let db = TestDb::new();
    with_project(&db);
    for (name, expires) in [("onetime$team+early", 1_000), ("onetime$team+late", 1_000)] {
        assert_eq!(
            t(&db, T::CreateOneTimeToken(one_time(name, "team", expires))),
            TenancyOutcome::Done
        );
    }
    let fresh = one_time("onetime$team+fresh", "team", 1_000);
    assert_eq!(t(&db, T::CreateOneTimeToken(fresh)), TenancyOutcome::Done);
    for (name, at_ms) in [("onetime$team+early", 100), ("onetime$team+late", 300)] {
        assert_eq!(
            t(
                &db,
                T::RedeemOneTimeToken {
                    name: name.into(),
                    at_ms
                }
            ),
            TenancyOutcome::Done
        );
    }
    // Redeemed at 100 goes; redeemed at 300 (an access token of it may still be in
    // use) and the unredeemed one valid until 1000 stay.
    assert_eq!(
        t(&db, T::PruneOneTimeTokens { before_ms: 200 }),
        TenancyOutcome::Audited(1)
    );
    let mut left: Vec<String> = db
        .view()
        .all_one_time_tokens()
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    left.sort();
    assert_eq!(left, ["onetime$team+fresh", "onetime$team+late"]);
}

#[test]
fn a_robot_secret_is_replaced() {
    let db = TestDb::new();
    with_project(&db);
    let r = RobotRecord {
        name: "robot$team+ci".into(),
        project: Some("team".parse().unwrap()),
        secret_hash: "old".into(),
        grants: vec![RobotGrant {
            project: "team".parse().unwrap(),
            repositories: "*".into(),
            actions: RobotActions::default(),
        }],
        expires_at_ms: None,
        created_at_ms: 1,
        created_by: "admin".into(),
    };
    assert_eq!(t(&db, T::CreateRobot(r)), TenancyOutcome::Done);
    let set = |name: &str| T::SetRobotSecret {
        name: name.into(),
        secret_hash: "new".into(),
    };
    assert_eq!(t(&db, set("robot$team+ci")), TenancyOutcome::Done);
    assert_eq!(t(&db, set("robot$team+nobody")), TenancyOutcome::NotFound);
    let stored = db.view().robot("robot$team+ci").unwrap().unwrap();
    assert_eq!(stored.secret_hash, "new");

    // A rotation with grace keeps the previous hash until the given instant; one
    // without ends the grace; deleting the robot (or its project) drops it.
    let grace = |hash: &str, until| T::SetRobotSecretWithGrace {
        name: "robot$team+ci".into(),
        secret_hash: hash.into(),
        previous_until_ms: until,
    };
    assert_eq!(t(&db, grace("newer", 500)), TenancyOutcome::Done);
    let kept = db
        .view()
        .robot_secret_grace("robot$team+ci")
        .unwrap()
        .unwrap();
    assert_eq!((kept.previous_hash.as_str(), kept.until_ms), ("new", 500));
    assert_eq!(
        db.view()
            .robot("robot$team+ci")
            .unwrap()
            .unwrap()
            .secret_hash,
        "newer"
    );
    assert_eq!(t(&db, set("robot$team+ci")), TenancyOutcome::Done);
    assert_eq!(db.view().robot_secret_grace("robot$team+ci").unwrap(), None);
    assert_eq!(t(&db, grace("newest", 900)), TenancyOutcome::Done);
    assert!(
        db.view()
            .robot_secret_grace("robot$team+ci")
            .unwrap()
            .is_some()
    );
    assert_eq!(
        t(
            &db,
            T::DeleteProject {
                name: "team".parse().unwrap()
            }
        ),
        TenancyOutcome::Done
    );
    assert_eq!(db.view().robot_secret_grace("robot$team+ci").unwrap(), None);
}

fn key(kid: &str, created_at_ms: u64) -> SigningKeyRecord {
    SigningKeyRecord {
        kid: kid.into(),
        pkcs8_der: vec![1, 2, 3],
        created_at_ms,
    }
}

#[test]
fn rotation_retires_the_previous_key_at_the_overlap_end() {
    let db = TestDb::new();
    assert!(matches!(
        t(&db, T::InitSigningKey(key("k1", 0))),
        TenancyOutcome::SigningKey(k) if k.kid == "k1"
    ));
    let rotate = |kid: &str, at, retire| T::RotateSigningKey {
        key: key(kid, at),
        retire_previous_at_ms: retire,
    };
    assert!(matches!(
        t(&db, rotate("k2", 100, 200)),
        TenancyOutcome::SigningKey(k) if k.kid == "k2"
    ));
    let keys = |db: &TestDb| {
        db.view()
            .signing_keys_with_retirement()
            .unwrap()
            .into_iter()
            .map(|(k, at)| (k.kid, at))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keys(&db),
        vec![("k1".into(), Some(200)), ("k2".into(), None)]
    );
    // A second rotation inside the overlap keeps k1's earlier retirement and
    // schedules k2's.
    t(&db, rotate("k3", 150, 400));
    assert_eq!(
        keys(&db),
        vec![
            ("k1".into(), Some(200)),
            ("k2".into(), Some(400)),
            ("k3".into(), None)
        ]
    );
    // A rotation after k1 retired removes it.
    t(&db, rotate("k4", 300, 500));
    assert_eq!(
        keys(&db),
        vec![
            ("k2".into(), Some(400)),
            ("k3".into(), Some(500)),
            ("k4".into(), None)
        ]
    );
}

#[test]
fn project_limits_are_validated_listed_and_dropped_with_the_project() {
    let db = TestDb::new();
    let team = || "team".parse().unwrap();
    let limits = ProjectLimits {
        requests_per_second: 5,
        burst: Some(20),
    };
    let set = |l: Option<ProjectLimits>| T::SetProjectLimits {
        project: team(),
        limits: l,
    };
    assert_eq!(t(&db, set(Some(limits))), TenancyOutcome::NotFound);
    with_project(&db);
    for bad in [
        ProjectLimits {
            requests_per_second: 0,
            burst: None,
        },
        ProjectLimits {
            requests_per_second: 5,
            burst: Some(0),
        },
        ProjectLimits {
            requests_per_second: crate::tenancy::PROJECT_RPS_MAX + 1,
            burst: None,
        },
    ] {
        assert_eq!(
            t(&db, set(Some(bad))),
            TenancyOutcome::Rejected(TenancyRejection::TooLarge)
        );
    }
    assert_eq!(db.view().project_limits(&team()).unwrap(), None);
    assert_eq!(t(&db, set(Some(limits))), TenancyOutcome::Done);
    assert_eq!(db.view().project_limits(&team()).unwrap(), Some(limits));
    assert_eq!(
        db.view().all_project_limits().unwrap(),
        vec![("team".to_owned(), limits)]
    );
    assert_eq!(t(&db, set(None)), TenancyOutcome::Done);
    assert!(db.view().all_project_limits().unwrap().is_empty());
    assert_eq!(t(&db, set(Some(limits))), TenancyOutcome::Done);
    assert_eq!(
        t(&db, T::DeleteProject { name: team() }),
        TenancyOutcome::Done
    );
    assert!(db.view().all_project_limits().unwrap().is_empty());
    with_project(&db);
    assert_eq!(db.view().project_limits(&team()).unwrap(), None);
}

#[test]
fn a_conditional_rotation_rotates_once_from_the_key_it_names() {
    let db = TestDb::new();
    match t(&db, T::InitSigningKey(key("k1", 10))) {
        TenancyOutcome::SigningKey(k) => assert_eq!(k.kid, "k1"),
        other => panic!("{other:?}"),
    }
    let from = |expected: &str, kid: &str, at: u64| T::RotateSigningKeyFrom {
        expected_kid: expected.into(),
        key: key(kid, at),
        retire_previous_at_ms: at + 1_000,
    };
    // Two leaders propose for the due key k1: the first rotates, the second is a no-op.
    match t(&db, from("k1", "k2", 100)) {
        TenancyOutcome::SigningKey(k) => assert_eq!(k.kid, "k2"),
        other => panic!("{other:?}"),
    }
    assert_eq!(t(&db, from("k1", "k3", 101)), TenancyOutcome::Exists);
    let keys = db.view().signing_keys_with_retirement().unwrap();
    let kids: Vec<(&str, Option<u64>)> = keys.iter().map(|(k, r)| (k.kid.as_str(), *r)).collect();
    assert_eq!(kids, vec![("k1", Some(1_100)), ("k2", None)]);
    // The next period rotates from k2 and keeps k1 until its own retirement.
    match t(&db, from("k2", "k4", 200)) {
        TenancyOutcome::SigningKey(k) => assert_eq!(k.kid, "k4"),
        other => panic!("{other:?}"),
    }
    let keys = db.view().signing_keys_with_retirement().unwrap();
    let kids: Vec<(&str, Option<u64>)> = keys.iter().map(|(k, r)| (k.kid.as_str(), *r)).collect();
    assert_eq!(
        kids,
        vec![("k1", Some(1_100)), ("k2", Some(1_200)), ("k4", None)]
    );
}

#[test]
fn project_profiles_are_validated_and_dropped_with_the_project() {
    let db = TestDb::new();
    let team = || "team".parse().unwrap();
    let set = |p: Option<EcProfile>| T::SetProjectProfile {
        project: team(),
        profile: p,
    };
    let three_two = EcProfile::new(3, 2).unwrap();
    assert_eq!(t(&db, set(Some(three_two))), TenancyOutcome::NotFound);
    with_project(&db);
    // A profile that `EcProfile::new` refuses can still arrive decoded from a log.
    let zero_data: EcProfile =
        crate::codec::decode("profile", &[crate::codec::FORMAT_V1, 0, 1]).unwrap();
    assert_eq!(
        t(&db, set(Some(zero_data))),
        TenancyOutcome::Rejected(TenancyRejection::TooLarge)
    );
    assert_eq!(db.view().project_profile(&team()).unwrap(), None);
    assert_eq!(t(&db, set(Some(three_two))), TenancyOutcome::Done);
    assert_eq!(db.view().project_profile(&team()).unwrap(), Some(three_two));
    assert_eq!(t(&db, set(None)), TenancyOutcome::Done);
    assert_eq!(db.view().project_profile(&team()).unwrap(), None);
    assert_eq!(t(&db, set(Some(three_two))), TenancyOutcome::Done);
    assert_eq!(
        t(&db, T::DeleteProject { name: team() }),
        TenancyOutcome::Done
    );
    with_project(&db);
    assert_eq!(db.view().project_profile(&team()).unwrap(), None);
}
