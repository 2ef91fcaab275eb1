//! Properties of ResolveFlow's rules over many ids (issue: "a sticky, monotone rollout"):
//! monotone ramp, share within ±1.5 points, determinism across instances, sticky NEW across a
//! percentage decrease, the kill switch, rollback epochs, and the eligibility gates.

use std::collections::BTreeMap;
use std::net::IpAddr;

use rand::{RngCore, SeedableRng};

use super::cookie::CookieKeys;
use super::model::{Effective, ListName, Overrides};
use super::resolve::{Decision, Early, Flow, FlowReason, Request, Resolver, normalise_country};
use crate::config::{FlowConfig, FlowRules, KeySource, Secret, Stickiness};

const IDS: usize = 10_000;

fn ids(seed: u64) -> Vec<String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..IDS)
        .map(|_| {
            let mut b = [0u8; 16];
            rng.fill_bytes(&mut b);
            uuid::Builder::from_random_bytes(b).into_uuid().to_string()
        })
        .collect()
}

fn flow(percentage: u32) -> FlowConfig {
    FlowConfig {
        name: "login".into(),
        kill_switch: false,
        rollback_epoch: 0,
        allow_users: vec![],
        deny_users: vec![],
        allow_devices: vec![],
        deny_devices: vec![],
        allow_cidrs: vec![],
        deny_cidrs: vec![],
        countries: vec![],
        min_app_versions: BTreeMap::new(),
        rules: FlowRules::Percentage {
            percentage,
            stickiness: Stickiness::Device,
        },
        ramp: None,
    }
}

fn keys() -> CookieKeys {
    CookieKeys::load(&[KeySource::Env {
        var: "K".into(),
        value: Secret::new("a-test-flow-cookie-key-of-32-bytes-or-more"),
    }])
    .unwrap()
}

fn resolve(eff: &Effective, keys: &CookieKeys, req: &Request) -> Decision {
    let r = Resolver {
        flow: eff,
        cookies: keys,
        cookie_name: "__Host-sg_flow",
        cookie_max_age_secs: 34_560_000,
    };
    match r.early(req) {
        Early::Decided(d) => d,
        Early::Continue(p) => r.late(req, p, false),
    }
}

fn device(id: &str) -> Request {
    Request {
        flow: "login".into(),
        device_id: Some(id.into()),
        ..Default::default()
    }
}

fn at(percentage: u32) -> std::sync::Arc<Effective> {
    Effective::compile(&flow(percentage), &Overrides::default())
}

#[test]
fn raising_the_percentage_only_moves_ids_from_legacy_to_new() {
    let (ids, k) = (ids(1), keys());
    let mut was_new = vec![false; IDS];
    for p in 1..=100 {
        let eff = at(p);
        let mut new = 0;
        for (i, id) in ids.iter().enumerate() {
            let is_new = resolve(&eff, &k, &device(id)).flow == Flow::New;
            assert!(!was_new[i] || is_new, "{id} went back to LEGACY at {p}%");
            was_new[i] = is_new;
            new += usize::from(is_new);
        }
        let share = 100.0 * new as f64 / IDS as f64;
        assert!(
            (share - f64::from(p)).abs() <= 1.5,
            "{share:.2}% on NEW at {p}%"
        );
    }
    assert!(was_new.iter().all(|n| *n), "everyone is NEW at 100%");
}

#[test]
fn the_same_id_gets_the_same_answer_from_two_instances() {
    // Two instances with different cookie keys (as two replicas misconfigured would have):
    // the bucket depends on the id only.
    let other = CookieKeys::load(&[]).unwrap();
    let (a, b) = (at(37), at(37));
    for id in ids(2) {
        let (x, y) = (
            resolve(&a, &keys(), &device(&id)),
            resolve(&b, &other, &device(&id)),
        );
        assert_eq!((x.flow, x.reason, x.bucket), (y.flow, y.reason, y.bucket));
    }
}

#[test]
fn lowering_the_percentage_keeps_cookie_holders_on_new() {
    let k = keys();
    let (high, low) = (at(60), at(5));
    let mut held = 0;
    for id in ids(3) {
        let first = resolve(&high, &k, &device(&id));
        if first.flow != Flow::New {
            continue;
        }
        held += 1;
        let cookie = first.set_cookie.expect("NEW sets a cookie").value;
        let mut req = device(&id);
        req.flow_cookie = Some(cookie);
        let again = resolve(&low, &k, &req);
        assert_eq!(again.flow, Flow::New, "{id}");
        if again.bucket == 0 {
            assert_eq!(again.reason, FlowReason::Sticky);
        }
        // Without its cookie, most would now be LEGACY.
    }
    assert!(held > 5_000, "{held}");
}

#[test]
fn the_kill_switch_sends_everyone_to_legacy_even_with_a_new_cookie() {
    let k = keys();
    let on = at(100);
    let mut cfg = flow(100);
    cfg.kill_switch = true;
    let killed = Effective::compile(&cfg, &Overrides::default());
    for id in ids(4).iter().take(2_000) {
        let cookie = resolve(&on, &k, &device(id)).set_cookie.unwrap().value;
        let mut req = device(id);
        req.flow_cookie = Some(cookie.clone());
        let d = resolve(&killed, &k, &req);
        assert_eq!((d.flow, d.reason), (Flow::Legacy, FlowReason::Disabled));
        // The cookie it gets back still says NEW: switching the kill switch off restores it.
        let back = d.set_cookie.unwrap().value;
        assert!(k.verify("login", &back).unwrap().new);
    }
}

#[test]
fn the_effective_rollback_epoch_is_the_higher_of_file_and_override() {
    let mut cfg = flow(50);
    cfg.rollback_epoch = 5;
    let epoch = |o: Option<u32>| {
        Effective::compile(
            &cfg,
            &Overrides {
                rollback_epoch: o,
                ..Default::default()
            },
        )
        .rollback_epoch
    };
    assert_eq!((epoch(None), epoch(Some(3)), epoch(Some(7))), (5, 5, 7));
}

#[test]
fn a_rollback_epoch_bump_invalidates_new_cookies() {
    let k = keys();
    let mut cfg = flow(100);
    let before = Effective::compile(&cfg, &Overrides::default());
    cfg.rules = FlowRules::Percentage {
        percentage: 0,
        stickiness: Stickiness::Device,
    };
    let same_epoch = Effective::compile(&cfg, &Overrides::default());
    let bumped = Effective::compile(
        &cfg,
        &Overrides {
            rollback_epoch: Some(1),
            ..Default::default()
        },
    );
    for id in ids(5).iter().take(2_000) {
        let cookie = resolve(&before, &k, &device(id)).set_cookie.unwrap().value;
        let mut req = device(id);
        req.flow_cookie = Some(cookie);
        assert_eq!(resolve(&same_epoch, &k, &req).reason, FlowReason::Sticky);
        let d = resolve(&bumped, &k, &req);
        assert_eq!((d.flow, d.reason), (Flow::Legacy, FlowReason::RolloutOut));
        let c = k.verify("login", &d.set_cookie.unwrap().value).unwrap();
        assert_eq!((c.new, c.epoch), (false, 1), "the new cookie forgets NEW");
    }
}

#[test]
fn forged_cookies_and_cookies_of_other_devices_are_ignored() {
    let k = keys();
    let eff = at(0);
    let forged = CookieKeys::load(&[]).unwrap().sign(
        "login",
        &super::cookie::FlowCookie {
            device_id: "d1".into(),
            new: true,
            epoch: 0,
        },
    );
    let mut req = device("d1");
    req.flow_cookie = Some(forged);
    assert_eq!(resolve(&eff, &k, &req).reason, FlowReason::RolloutOut);
    let genuine = k.sign(
        "login",
        &super::cookie::FlowCookie {
            device_id: "d2".into(),
            new: true,
            epoch: 0,
        },
    );
    req.flow_cookie = Some(genuine.clone());
    assert_eq!(
        resolve(&eff, &k, &req).reason,
        FlowReason::RolloutOut,
        "d2's cookie"
    );
    // With no device id given, the cookie's device is used.
    let req = Request {
        flow: "login".into(),
        flow_cookie: Some(genuine),
        ..Default::default()
    };
    let d = resolve(&eff, &k, &req);
    assert_eq!((d.reason, d.device_id.as_str()), (FlowReason::Sticky, "d2"));
}

#[test]
fn a_device_id_is_minted_when_no_id_is_given_and_reproduces_the_decision() {
    let (k, eff) = (keys(), at(50));
    let d = resolve(
        &eff,
        &k,
        &Request {
            flow: "login".into(),
            ..Default::default()
        },
    );
    assert!(
        uuid::Uuid::parse_str(&d.device_id).is_ok(),
        "{}",
        d.device_id
    );
    assert!(d.set_cookie.is_some());
    let again = resolve(&eff, &k, &device(&d.device_id));
    assert_eq!((again.flow, again.bucket), (d.flow, d.bucket));
    // A user id alone is bucketed as is: nothing is minted.
    let u = resolve(
        &eff,
        &k,
        &Request {
            flow: "login".into(),
            user_id: Some("user-1".into()),
            ..Default::default()
        },
    );
    assert_eq!(u.device_id, "");
}

fn gated() -> std::sync::Arc<Effective> {
    let mut cfg = flow(100);
    cfg.countries = vec!["NO".into(), "SE".into()];
    cfg.min_app_versions = BTreeMap::from([("ios".into(), semver::Version::new(5, 12, 0))]);
    cfg.allow_cidrs = vec![
        "10.20.0.0/16".parse().unwrap(),
        "2001:db8::/32".parse().unwrap(),
    ];
    cfg.deny_cidrs = vec![
        "10.20.30.0/24".parse().unwrap(),
        "2001:db8:dead::/48".parse().unwrap(),
    ];
    Effective::compile(&cfg, &Overrides::default())
}

fn with(country: &str, app: Option<(&str, &str)>, ip: Option<&str>) -> Request {
    Request {
        flow: "login".into(),
        device_id: Some("device-0001".into()),
        country: normalise_country(country),
        app_name: app.map(|a| a.0.to_owned()),
        app_version: app.map(|a| a.1.to_owned()),
        ip: ip.map(|i| i.parse::<IpAddr>().unwrap()),
        ..Default::default()
    }
}

#[test]
fn country_gate_refuses_unknown_and_other_countries() {
    let (k, eff) = (keys(), gated());
    assert_eq!(
        resolve(&eff, &k, &with("no", None, None)).reason,
        FlowReason::RolloutIn
    );
    for c in ["", "XX", "T1", "DE", "xx"] {
        let d = resolve(&eff, &k, &with(c, None, None));
        assert_eq!(
            (d.flow, d.reason, d.rule.as_str()),
            (Flow::Legacy, FlowReason::NotEligible, "countries"),
            "{c:?}"
        );
    }
}

#[test]
fn app_version_gate_refuses_old_and_unparsable_versions() {
    let (k, eff) = (keys(), gated());
    for (v, ok) in [
        ("5.12.0", true),
        ("5.12", true),
        ("v5.13.1", true),
        ("5.12.0 (4321)", true),
        ("5.11.9", false),
        ("5.12.0-beta.1", false),
        ("garbage", false),
        ("", false),
    ] {
        let d = resolve(&eff, &k, &with("SE", Some(("ios", v)), None));
        let want = if ok {
            FlowReason::RolloutIn
        } else {
            FlowReason::NotEligible
        };
        assert_eq!(d.reason, want, "{v:?}");
        if !ok {
            assert_eq!(d.rule, "min_app_versions.ios");
        }
    }
    // Apps without a minimum are not gated.
    let d = resolve(&eff, &k, &with("SE", Some(("android", "1.0")), None));
    assert_eq!(d.reason, FlowReason::RolloutIn);
}

#[test]
fn cidr_lists_v4_and_v6_deny_before_allow() {
    let mut cfg = flow(0);
    cfg.allow_cidrs = vec![
        "10.20.0.0/16".parse().unwrap(),
        "2001:db8::/32".parse().unwrap(),
    ];
    cfg.deny_cidrs = vec![
        "10.20.30.0/24".parse().unwrap(),
        "2001:db8:dead::/48".parse().unwrap(),
    ];
    let eff = Effective::compile(&cfg, &Overrides::default());
    let k = keys();
    for (ip, reason, rule) in [
        (
            "10.20.1.1",
            FlowReason::ForcedNew,
            "allow_cidrs:10.20.0.0/16",
        ),
        (
            "10.20.30.4",
            FlowReason::ForcedLegacy,
            "deny_cidrs:10.20.30.0/24",
        ),
        (
            "2001:db8::1",
            FlowReason::ForcedNew,
            "allow_cidrs:2001:db8::/32",
        ),
        (
            "2001:db8:dead::1",
            FlowReason::ForcedLegacy,
            "deny_cidrs:2001:db8:dead::/48",
        ),
        ("192.0.2.1", FlowReason::RolloutOut, "percentage"),
    ] {
        let d = resolve(&eff, &k, &with("", None, Some(ip)));
        assert_eq!((d.reason, d.rule.as_str()), (reason, rule), "{ip}");
    }
}

#[test]
fn admin_list_edits_apply_on_top_of_the_file() {
    let mut cfg = flow(0);
    cfg.allow_users = vec!["qa-1".into(), "qa-2".into()];
    let mut ov = Overrides::default();
    ov.edit(ListName::AllowUsers, &["qa-3".into()], &["qa-1".into()]);
    ov.edit(ListName::DenyDevices, &["stolen".into()], &[]);
    let eff = Effective::compile(&cfg, &ov);
    assert_eq!(eff.list(ListName::AllowUsers), ["qa-2", "qa-3"]);
    let k = keys();
    let user = |u: &str| Request {
        flow: "login".into(),
        user_id: Some(u.into()),
        ..Default::default()
    };
    assert_eq!(
        resolve(&eff, &k, &user("qa-3")).reason,
        FlowReason::ForcedNew
    );
    assert_eq!(
        resolve(&eff, &k, &user("qa-1")).reason,
        FlowReason::RolloutOut
    );
    assert_eq!(
        resolve(&eff, &k, &device("stolen")).reason,
        FlowReason::ForcedLegacy
    );
}

#[test]
fn unleash_strategies_decide_with_their_own_rollouts() {
    // Norway at 50%, everyone else at 10%, one group id: the union is monotone.
    let strat = |rollout: &str, country: Option<&str>| crate::config::unleash::StrategyDef {
        name: "flexibleRollout".into(),
        parameters: BTreeMap::from([
            ("rollout".into(), rollout.into()),
            ("stickiness".into(), "sessionId".into()),
        ]),
        constraints: country
            .map(|c| {
                vec![crate::config::unleash::ConstraintDef {
                    context_name: "country".into(),
                    operator: "IN".into(),
                    values: vec![c.into()],
                    ..Default::default()
                }]
            })
            .unwrap_or_default(),
        segments: vec![],
    };
    let mut cfg = flow(0);
    cfg.rules = FlowRules::Strategies {
        strategies: vec![strat("50", Some("NO")), strat("10", None)],
        segments: Default::default(),
        from_export: false,
    };
    let eff = Effective::compile(&cfg, &Overrides::default());
    assert_eq!(eff.percentage, 50);
    let k = keys();
    let (mut no, mut other) = (0, 0);
    for id in ids(6) {
        let mut r = device(&id);
        r.country = Some("NO".into());
        let d = resolve(&eff, &k, &r);
        if d.flow == Flow::New {
            no += 1;
            assert!(d.rule.starts_with("strategies["), "{}", d.rule);
        }
        r.country = Some("DE".into());
        let d = resolve(&eff, &k, &r);
        if d.flow == Flow::New {
            other += 1;
            assert_eq!((d.rule.as_str(), d.percentage), ("strategies[1]", 10));
        }
    }
    let share = |n: usize| 100.0 * n as f64 / IDS as f64;
    assert!((share(no) - 50.0).abs() <= 1.5, "{}", share(no));
    assert!((share(other) - 10.0).abs() <= 1.5, "{}", share(other));
}
