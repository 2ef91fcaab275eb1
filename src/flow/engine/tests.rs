//! The engine held to Unleash's semantics: murmur3 buckets (known answers and Unleash's
//! vectors), strategies, constraint operators, segments, and what an evaluation reports.

use super::*;
use std::collections::BTreeMap;

fn flexible(rollout: &str, stickiness: &str, group: &str) -> StrategyDef {
    StrategyDef {
        name: "flexibleRollout".into(),
        parameters: BTreeMap::from([
            ("rollout".into(), rollout.into()),
            ("stickiness".into(), stickiness.into()),
            ("groupId".into(), group.into()),
        ]),
        ..Default::default()
    }
}

fn feature(strategies: Vec<StrategyDef>) -> Feature {
    Feature::compile("f", true, &strategies, &HashMap::new())
}

fn user(id: &str) -> Context<'_> {
    Context {
        user_id: Some(id),
        ..Default::default()
    }
}

#[test]
fn murmur3_known_answers() {
    assert_eq!(murmur3_32("", 0), 0);
    assert_eq!(murmur3_32("", 1), 0x514e28b7);
    assert_eq!(murmur3_32("", 0xffff_ffff), 0x81f16f39);
    assert_eq!(murmur3_32("hello", 0), 0x248bfa47);
    assert_eq!(
        murmur3_32("The quick brown fox jumps over the lazy dog", 0),
        0x2e4ff723
    );
    assert_eq!(murmur3_32("aaaa", 0x9747b28c), 0x5a97808a);
    assert_eq!(murmur3_32("abc", 0), 0xb3dd93fa);
}

#[test]
fn unleash_bucket_vectors() {
    // (group, id, hash, bucket) from Unleash's client specification and SDKs.
    for (group, id, hash, b) in [
        ("Feature.flexibleRollout.10", "174", 3067997709u32, 10),
        ("Feature.flexibleRollout.10", "499", 330494531, 32),
        ("Feature.flexibleRollout.userId.55", "25", 1087573954, 55),
        ("Feature.flexibleRollout.sessionId.42", "147", 391178641, 42),
        ("AB12A", "122", 1062108722, 23),
        ("AB12A", "155", 3268232399, 100),
        (
            "Feature.flexible.rollout.custom.stickiness_50",
            "402",
            3304166854,
            55,
        ),
        (
            "Feature.flexible.rollout.custom.stickiness_50",
            "388",
            3162492009,
            10,
        ),
        (
            "Feature.flexible.rollout.custom.stickiness_50",
            "39",
            4081093624,
            25,
        ),
        ("auth-migration", "device-0001", 2578071814, 15),
        ("auth-migration", "device-0002", 1365214991, 92),
        ("auth-migration", "device-0003", 2705067087, 88),
        ("auth-migration", "device-0004", 4158232563, 64),
        ("auth-migration", "device-0005", 4053586744, 45),
        (
            "auth-migration",
            "3f2b7c1e-9a4d-4e8b-8c2f-5d6e7a8b9c0d",
            140122585,
            86,
        ),
    ] {
        assert_eq!(
            murmur3_32(&format!("{group}:{id}"), 0),
            hash,
            "{group}:{id}"
        );
        assert_eq!(bucket(group, id), b, "{group}:{id}");
    }
}

#[test]
fn non_ascii_ids_hash_their_utf8_bytes() {
    // Pinned from Python `mmh3.hash(s.encode(), 0, signed=False)` (UTF-8, as Yggdrasil).
    assert_eq!(murmur3_32("login:ølbrygger-日本", 0), NON_ASCII_HASH);
    assert_eq!(bucket("login", "ølbrygger-日本"), 21);
}

const NON_ASCII_HASH: u32 = 2_357_232_220;

#[test]
fn the_percentage_boundary_is_inclusive() {
    // Bucket of "174" in this group is exactly 10.
    let g = "Feature.flexibleRollout.10";
    assert!(
        feature(vec![flexible("10", "userId", g)])
            .evaluate(&user("174"))
            .enabled
    );
    assert!(
        !feature(vec![flexible("9", "userId", g)])
            .evaluate(&user("174"))
            .enabled
    );
    assert!(
        !feature(vec![flexible("0", "userId", g)])
            .evaluate(&user("174"))
            .enabled
    );
    assert!(
        feature(vec![flexible("100", "userId", g)])
            .evaluate(&user("499"))
            .enabled
    );
}

#[test]
fn rollout_must_be_an_integer_and_stickiness_present() {
    let g = "Feature.flexibleRollout.10";
    assert!(
        !feature(vec![flexible("12.5", "userId", g)])
            .evaluate(&user("174"))
            .enabled
    );
    assert!(
        !feature(vec![flexible("", "userId", g)])
            .evaluate(&user("174"))
            .enabled
    );
    // Stickiness on a field the context lacks: off.
    assert!(
        !feature(vec![flexible("100", "sessionId", g)])
            .evaluate(&user("174"))
            .enabled
    );
    // Custom stickiness from a property.
    let mut ctx = Context::default();
    ctx.properties.insert("tenant", "174");
    assert!(
        feature(vec![flexible("10", "tenant", g)])
            .evaluate(&ctx)
            .enabled
    );
    // `default` with a session id only buckets the session id.
    let ctx = Context {
        session_id: Some("147"),
        ..Default::default()
    };
    let s = flexible("42", "default", "Feature.flexibleRollout.sessionId.42");
    let e = feature(vec![s]).evaluate(&ctx);
    assert_eq!((e.enabled, e.bucket, e.rollout), (true, Some(42), Some(42)));
}

#[test]
fn group_id_defaults_to_the_feature_name() {
    let mut s = flexible("10", "userId", "");
    s.parameters.remove("groupId");
    let f = Feature::compile("Feature.flexibleRollout.10", true, &[s], &HashMap::new());
    assert_eq!(f.evaluate(&user("174")).bucket, Some(10));
}

#[test]
fn feature_level_rules() {
    // No strategies: on (Unleash), disabled: off.
    assert!(
        Feature::compile("f", true, &[], &HashMap::new())
            .evaluate(&user("u"))
            .enabled
    );
    let d = StrategyDef {
        name: "default".into(),
        ..Default::default()
    };
    assert!(
        !Feature::compile("f", false, std::slice::from_ref(&d), &HashMap::new())
            .evaluate(&user("u"))
            .enabled
    );
    // Unknown strategy: off; strategies are OR'ed.
    let unknown = StrategyDef {
        name: "gradualRolloutRandom".into(),
        ..Default::default()
    };
    assert!(!feature(vec![unknown.clone()]).evaluate(&user("u")).enabled);
    let e = feature(vec![unknown, d]).evaluate(&user("u"));
    assert_eq!((e.enabled, e.strategy), (true, Some(1)));
}

#[test]
fn user_with_id_and_remote_address() {
    let s = StrategyDef {
        name: "userWithId".into(),
        parameters: BTreeMap::from([("userIds".into(), " a, b ,c".into())]),
        ..Default::default()
    };
    assert!(feature(vec![s.clone()]).evaluate(&user("b")).enabled);
    assert!(!feature(vec![s]).evaluate(&user("d")).enabled);
    let s = StrategyDef {
        name: "remoteAddress".into(),
        parameters: BTreeMap::from([(
            "IPs".into(),
            "192.invalid, 10.0.0.0/8 ,2001:db8::/32,127.0.0.1".into(),
        )]),
        ..Default::default()
    };
    let f = feature(vec![s]);
    for (ip, want) in [
        ("10.1.2.3", true),
        ("127.0.0.1", true),
        ("2001:db8::1", true),
        ("11.0.0.1", false),
        ("2001:db9::1", false),
        ("garbage", false),
    ] {
        let ctx = Context {
            remote_address: Some(ip),
            ..Default::default()
        };
        assert_eq!(f.evaluate(&ctx).enabled, want, "{ip}");
    }
    assert!(!f.evaluate(&Context::default()).enabled, "missing address");
}

fn check(op: &str, values: &[&str], value: Option<&str>, ctx: &Context<'_>) -> bool {
    check_with(op, values, value, false, false, ctx)
}

fn check_with(
    op: &str,
    values: &[&str],
    value: Option<&str>,
    inverted: bool,
    case_insensitive: bool,
    ctx: &Context<'_>,
) -> bool {
    let c = Constraint::compile(&ConstraintDef {
        context_name: "x".into(),
        operator: op.into(),
        values: values.iter().map(|s| s.to_string()).collect(),
        value: value.map(str::to_owned),
        inverted,
        case_insensitive,
    });
    c.holds(ctx)
}

fn with_x(v: &str) -> Context<'_> {
    let mut c = Context::default();
    c.properties.insert("x", v);
    c
}

#[test]
fn set_and_string_operators() {
    let none = Context::default();
    assert!(check("IN", &["NO", " SE "], None, &with_x("SE")));
    assert!(
        !check("IN", &["NO"], None, &with_x("no")),
        "IN is case-sensitive"
    );
    assert!(!check("IN", &["NO"], None, &none), "missing: IN false");
    assert!(
        check("NOT_IN", &["NO"], None, &none),
        "missing: NOT_IN true"
    );
    assert!(
        !check("IN", &[], None, &with_x("NO")),
        "empty values: IN false"
    );
    assert!(check("NOT_IN", &[], None, &with_x("NO")));
    assert!(
        !check_with("IN", &["NO"], None, true, false, &with_x("NO")),
        "inverted"
    );
    assert!(check_with(
        "NOT_IN",
        &["NO"],
        None,
        true,
        false,
        &with_x("NO")
    ));
    assert!(check("STR_CONTAINS", &["ell"], None, &with_x("hello")));
    assert!(!check("STR_CONTAINS", &["ELL"], None, &with_x("hello")));
    assert!(check_with(
        "STR_CONTAINS",
        &["ELL"],
        None,
        false,
        true,
        &with_x("hello")
    ));
    assert!(check(
        "STR_STARTS_WITH",
        &["x", "he"],
        None,
        &with_x("hello")
    ));
    assert!(!check("STR_ENDS_WITH", &["LO"], None, &with_x("hello")));
    assert!(check_with(
        "STR_ENDS_WITH",
        &["LO"],
        None,
        false,
        true,
        &with_x("hellO")
    ));
    assert!(
        !check("STR_CONTAINS", &["a"], None, &none),
        "missing: false"
    );
    assert!(
        check_with("STR_CONTAINS", &["a"], None, true, false, &none),
        "inverted missing"
    );
    assert!(
        !check("REGEX", &[], Some(".*"), &with_x("a")),
        "unknown operator"
    );
    assert!(
        !check_with("REGEX", &[], Some(".*"), true, false, &with_x("a")),
        "even inverted"
    );
}

#[test]
fn numeric_date_and_semver_operators() {
    assert!(check("NUM_EQ", &[], Some("12"), &with_x("12.0")));
    assert!(check("NUM_GT", &[], Some("5"), &with_x("6")));
    assert!(!check("NUM_GT", &[], Some("5"), &with_x("5")));
    assert!(check("NUM_GTE", &[], Some("5"), &with_x("5")));
    assert!(check("NUM_LT", &[], Some("5"), &with_x("-1")));
    assert!(check("NUM_LTE", &[], Some("5"), &with_x("5")));
    assert!(
        !check("NUM_EQ", &[], Some("five"), &with_x("5")),
        "bad value"
    );
    assert!(
        !check("NUM_EQ", &[], Some("5"), &with_x("five")),
        "bad context"
    );

    let at = OffsetDateTime::parse("2026-06-01T12:00:00Z", &Rfc3339).unwrap();
    let ctx = Context {
        current_time: Some(at),
        ..Default::default()
    };
    let date = |op: &str, v: &str| {
        Constraint::compile(&ConstraintDef {
            context_name: "currentTime".into(),
            operator: op.into(),
            value: Some(v.into()),
            ..Default::default()
        })
        .holds(&ctx)
    };
    assert!(date("DATE_AFTER", "2026-06-01T11:59:59Z"));
    assert!(!date("DATE_AFTER", "2026-06-01T12:00:00Z"), "strict");
    assert!(
        date("DATE_BEFORE", "2026-06-01T13:00:00+00:30"),
        "offsets respected"
    );
    assert!(
        !date("DATE_BEFORE", "2026-06-01T14:00:00+02:00"),
        "equal is not before"
    );
    assert!(!date("DATE_AFTER", "yesterday"));

    assert!(
        check("SEMVER_EQ", &[], Some("2.0.0"), &with_x("2.0.0+build.7")),
        "build ignored"
    );
    assert!(check(
        "SEMVER_GT",
        &[],
        Some("2.0.0-alpha"),
        &with_x("2.0.0-alpha.1")
    ));
    assert!(check("SEMVER_LT", &[], Some("2.0.0"), &with_x("2.0.0-rc")));
    assert!(check("SEMVER_GTE", &[], Some("5.12.0"), &with_x("5.12.0")));
    assert!(check("SEMVER_LTE", &[], Some("5.12.0"), &with_x("5.11.9")));
    for bad in ["v2.0.0", "1.2", "not a semver", ""] {
        assert!(
            !check("SEMVER_GTE", &[], Some("0.0.1"), &with_x(bad)),
            "{bad}"
        );
    }
}

#[test]
fn in_cidr_v4_and_v6() {
    let nets = ["10.0.0.0/8", "bogus", "2001:db8::/48", "192.168.1.7"];
    assert!(check("IN_CIDR", &nets, None, &with_x("10.200.0.1")));
    assert!(check("IN_CIDR", &nets, None, &with_x("192.168.1.7")));
    assert!(check("IN_CIDR", &nets, None, &with_x("2001:db8:0:ffff::1")));
    assert!(!check("IN_CIDR", &nets, None, &with_x("2001:db8:1::1")));
    assert!(!check("IN_CIDR", &nets, None, &with_x("not-an-ip")));
    assert!(!check("IN_CIDR", &nets, None, &Context::default()));
}

#[test]
fn segments_add_constraints_and_a_missing_one_turns_the_strategy_off() {
    let segments = HashMap::from([(
        1,
        vec![ConstraintDef {
            context_name: "country".into(),
            operator: "IN".into(),
            values: vec!["NO".into()],
            ..Default::default()
        }],
    )]);
    let mut s = StrategyDef {
        name: "default".into(),
        segments: vec![1],
        ..Default::default()
    };
    let f = Feature::compile("f", true, std::slice::from_ref(&s), &segments);
    let mut ctx = Context::default();
    assert!(!f.evaluate(&ctx).enabled);
    ctx.properties.insert("country", "NO");
    assert!(f.evaluate(&ctx).enabled);
    s.segments = vec![1, 2];
    let f = Feature::compile("f", true, &[s], &segments);
    assert!(!f.evaluate(&ctx).enabled, "segment 2 does not exist");
}

#[test]
fn evaluation_reports_what_decided() {
    let g = "Feature.flexibleRollout.10";
    let country_no = |rollout: &str| {
        let mut s = flexible(rollout, "userId", g);
        s.constraints.push(ConstraintDef {
            context_name: "country".into(),
            operator: "IN".into(),
            values: vec!["NO".into()],
            ..Default::default()
        });
        s
    };
    // "499" has bucket 32: out of a 10% rollout, in a 50% one.
    let f = feature(vec![country_no("50"), flexible("10", "userId", g)]);
    let mut ctx = user("499");
    let e = f.evaluate(&ctx);
    assert_eq!(
        (
            e.enabled,
            e.strategy,
            e.bucket,
            e.rollout,
            e.constraints_matched
        ),
        (false, None, Some(32), Some(10), true)
    );
    ctx.properties.insert("country", "NO");
    let e = f.evaluate(&ctx);
    assert_eq!(
        (e.enabled, e.strategy, e.bucket, e.rollout),
        (true, Some(0), Some(32), Some(50))
    );
    let only_no = feature(vec![country_no("50")]);
    let e = only_no.evaluate(&user("499"));
    assert!(!e.enabled && !e.constraints_matched, "NO_MATCH");
}

fn older(name: &str, percentage: &str, group: Option<&str>) -> StrategyDef {
    let mut parameters = BTreeMap::from([("percentage".into(), percentage.into())]);
    if let Some(g) = group {
        parameters.insert("groupId".into(), g.into());
    }
    StrategyDef {
        name: name.into(),
        parameters,
        ..Default::default()
    }
}

fn default_strategy() -> StrategyDef {
    StrategyDef {
        name: "default".into(),
        ..Default::default()
    }
}

fn session(id: &str) -> Context<'_> {
    Context {
        session_id: Some(id),
        ..Default::default()
    }
}

/// Unleash's client specification, cases 03 and 04 (gradualRolloutUserId and
/// gradualRolloutSessionId, group "AB12A"): 100 % on with an id and off without one; at 50 %,
/// id 122 in and 155 out; 0 % off; 0 % then `default` on for everyone.
#[test]
fn older_gradual_rollouts_by_user_and_session_match_unleash_specification() {
    for (name, ctx_of) in [
        ("gradualRolloutUserId", user as fn(&str) -> Context<'_>),
        ("gradualRolloutSessionId", session),
    ] {
        let at = |p: &str| feature(vec![older(name, p, Some("AB12A"))]);
        assert!(at("100").evaluate(&ctx_of("123")).enabled, "{name} A");
        assert!(
            !at("100").evaluate(&Context::default()).enabled,
            "{name} A without id"
        );
        assert!(at("50").evaluate(&ctx_of("122")).enabled, "{name} B 122");
        assert!(!at("50").evaluate(&ctx_of("155")).enabled, "{name} B 155");
        assert!(!at("0").evaluate(&ctx_of("122")).enabled, "{name} C");
        let d = feature(vec![older(name, "0", Some("AB12A")), default_strategy()]);
        assert!(d.evaluate(&Context::default()).enabled, "{name} D");
        // The other id does not count: a user id is no session id.
        let other = if name.ends_with("UserId") {
            session("123")
        } else {
            user("123")
        };
        assert!(
            !at("100").evaluate(&other).enabled,
            "{name} with the other id"
        );
    }
}

/// The same bucket as flexibleRollout's for the same group and id (Unleash's vector: group
/// `Feature.flexibleRollout.userId.55`, id 25 → bucket 55); the group defaults to empty, not
/// to the feature's name; the percentage is read as JavaScript's `Number` reads it.
#[test]
fn older_gradual_rollouts_bucket_like_flexible_rollout_and_read_percentages_like_unleash() {
    let g = "Feature.flexibleRollout.userId.55";
    let at = |p: &str| feature(vec![older("gradualRolloutUserId", p, Some(g))]);
    assert!(at("55").evaluate(&user("25")).enabled);
    assert!(!at("54").evaluate(&user("25")).enabled);
    assert!(
        !at("54.5").evaluate(&user("25")).enabled,
        "bucket 55 is above 54.5"
    );
    assert!(at(" 55 ").evaluate(&user("25")).enabled, "trimmed");
    for off in ["", "abc", "NaN", "-5"] {
        assert!(!at(off).evaluate(&user("25")).enabled, "`{off}`");
    }
    let missing = feature(vec![StrategyDef {
        name: "gradualRolloutUserId".into(),
        ..Default::default()
    }]);
    assert!(!missing.evaluate(&user("25")).enabled, "no percentage: off");
    // No groupId: the empty group, whatever the feature is called.
    let id = (0..1000)
        .map(|i| i.to_string())
        .find(|id| bucket("", id) <= 10 && bucket("f", id) > 10)
        .expect("an id the two groups place apart");
    let no_group = feature(vec![older("gradualRolloutUserId", "10", None)]);
    assert!(no_group.evaluate(&user(&id)).enabled);
}

/// Unleash's client specification, case 05 (gradualRolloutRandom): 100 % always on, 0 % never,
/// 0 % then `default` on, a disabled feature off; in between, about the percentage.
#[test]
fn older_random_rollout_matches_unleash_specification() {
    let random = |p: &str| older("gradualRolloutRandom", p, None);
    let ctx = Context::default();
    for _ in 0..1000 {
        assert!(feature(vec![random("100")]).evaluate(&ctx).enabled);
        assert!(!feature(vec![random("0")]).evaluate(&ctx).enabled);
    }
    assert!(
        feature(vec![random("0"), default_strategy()])
            .evaluate(&ctx)
            .enabled
    );
    let disabled = Feature::compile("f", false, &[random("100")], &HashMap::new());
    assert!(!disabled.evaluate(&ctx).enabled);
    let half = feature(vec![random("50")]);
    let on = (0..10_000).filter(|_| half.evaluate(&ctx).enabled).count();
    assert!((4_500..=5_500).contains(&on), "{on} of 10 000 at 50 %");
}
