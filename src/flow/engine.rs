//! A pure evaluator with Unleash's semantics (client specification v6.1, as Unleash's own
//! Rust engine Yggdrasil implements it).
//!
//! Written here rather than taken from `unleash-yggdrasil` because ResolveFlow needs more than
//! a yes/no: which strategy decided, the bucket and the rollout it was compared with, and
//! whether any strategy's constraints matched at all (ROLLOUT_OUT vs NO_MATCH). Everything is
//! parsed once when a flow is compiled ([`Feature::compile`]); evaluation allocates only the
//! hash input. The known answers of Unleash's bucketing are pinned in the tests below so a
//! crate swap can never silently move users between buckets.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::unleash::{ConstraintDef, StrategyDef, parse_net, parse_rollout};

/// Unleash's seed for strategy bucketing (variants use another; sessiongate has none).
const STRATEGY_SEED: u32 = 0;

/// MurmurHash3 x86_32 of the UTF-8 bytes of `s`.
pub fn murmur3_32(s: &str, seed: u32) -> u32 {
    // Reading from a byte slice cannot fail.
    murmur3::murmur3_32(&mut std::io::Cursor::new(s.as_bytes()), seed).unwrap_or(0)
}

/// Unleash's normalised bucket, 1..=100, of `id` in `group`.
pub fn bucket(group: &str, id: &str) -> u32 {
    murmur3_32(&format!("{group}:{id}"), STRATEGY_SEED) % 100 + 1
}

/// What a flow is evaluated against (Unleash's context).
#[derive(Debug, Default, Clone)]
pub struct Context<'a> {
    pub user_id: Option<&'a str>,
    pub session_id: Option<&'a str>,
    pub remote_address: Option<&'a str>,
    pub environment: Option<&'a str>,
    pub app_name: Option<&'a str>,
    /// `None` = now.
    pub current_time: Option<OffsetDateTime>,
    pub properties: HashMap<&'a str, &'a str>,
}

impl<'a> Context<'a> {
    /// A context field by its Unleash name: the top-level fields, else a property.
    fn field(&self, name: &str) -> Option<&'a str> {
        match name {
            "userId" => self.user_id,
            "sessionId" => self.session_id,
            "remoteAddress" => self.remote_address,
            "environment" => self.environment,
            "appName" => self.app_name,
            _ => self.properties.get(name).copied(),
        }
    }
}

// --- compiled form ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cmp {
    Eq,
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Cmp {
    fn holds(self, o: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            Cmp::Eq => o == Equal,
            Cmp::Gt => o == Greater,
            Cmp::Gte => o != Less,
            Cmp::Lt => o == Less,
            Cmp::Lte => o != Greater,
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    In(Vec<String>),
    NotIn(Vec<String>),
    StrContains(Vec<String>),
    StrStartsWith(Vec<String>),
    StrEndsWith(Vec<String>),
    /// `None`: the constraint's value is not a number (always false).
    Num(Cmp, Option<f64>),
    DateAfter(Option<OffsetDateTime>),
    DateBefore(Option<OffsetDateTime>),
    Semver(Cmp, Option<semver::Version>),
    InCidr(Vec<IpNet>),
    Unknown,
}

#[derive(Debug, Clone)]
struct Constraint {
    context_name: String,
    op: Op,
    inverted: bool,
    case_insensitive: bool,
}

impl Constraint {
    fn compile(d: &ConstraintDef) -> Self {
        let ci = d.case_insensitive;
        let list = || -> Vec<String> {
            d.values
                .iter()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .collect()
        };
        let str_list = || -> Vec<String> {
            d.values
                .iter()
                .map(|v| if ci { v.to_lowercase() } else { v.clone() })
                .collect()
        };
        let value = || d.value.as_deref().map(str::trim);
        let num = |c| Op::Num(c, value().and_then(|v| v.parse::<f64>().ok()));
        let date = || value().and_then(|v| OffsetDateTime::parse(v, &Rfc3339).ok());
        let ver = |c| Op::Semver(c, value().and_then(|v| semver::Version::parse(v).ok()));
        let op = match d.operator.as_str() {
            "IN" => Op::In(list()),
            "NOT_IN" => Op::NotIn(list()),
            "STR_CONTAINS" => Op::StrContains(str_list()),
            "STR_STARTS_WITH" => Op::StrStartsWith(str_list()),
            "STR_ENDS_WITH" => Op::StrEndsWith(str_list()),
            "NUM_EQ" => num(Cmp::Eq),
            "NUM_GT" => num(Cmp::Gt),
            "NUM_GTE" => num(Cmp::Gte),
            "NUM_LT" => num(Cmp::Lt),
            "NUM_LTE" => num(Cmp::Lte),
            "DATE_AFTER" => Op::DateAfter(date()),
            "DATE_BEFORE" => Op::DateBefore(date()),
            "SEMVER_EQ" => ver(Cmp::Eq),
            "SEMVER_GT" => ver(Cmp::Gt),
            "SEMVER_GTE" => ver(Cmp::Gte),
            "SEMVER_LT" => ver(Cmp::Lt),
            "SEMVER_LTE" => ver(Cmp::Lte),
            // Invalid entries are ignored; the others still match (spec 22).
            "IN_CIDR" => Op::InCidr(d.values.iter().filter_map(|v| parse_net(v)).collect()),
            _ => Op::Unknown,
        };
        Constraint {
            context_name: d.context_name.clone(),
            op,
            inverted: d.inverted,
            case_insensitive: ci,
        }
    }

    fn holds(&self, ctx: &Context<'_>) -> bool {
        // An unknown operator is false even when inverted (Unleash checks before inverting).
        if matches!(self.op, Op::Unknown) {
            return false;
        }
        let raw = ctx.field(&self.context_name);
        let lowered;
        let value = match raw {
            Some(v) if self.case_insensitive => {
                lowered = v.to_lowercase();
                Some(lowered.as_str())
            }
            other => other,
        };
        let result = match &self.op {
            Op::In(vals) => value.is_some_and(|v| vals.iter().any(|x| x == v)),
            Op::NotIn(vals) => value.is_none_or(|v| !vals.iter().any(|x| x == v)),
            Op::StrContains(vals) => {
                value.is_some_and(|v| vals.iter().any(|x| v.contains(x.as_str())))
            }
            Op::StrStartsWith(vals) => {
                value.is_some_and(|v| vals.iter().any(|x| v.starts_with(x.as_str())))
            }
            Op::StrEndsWith(vals) => {
                value.is_some_and(|v| vals.iter().any(|x| v.ends_with(x.as_str())))
            }
            Op::Num(cmp, Some(want)) => value
                .and_then(|v| v.trim().parse::<f64>().ok())
                .and_then(|got| got.partial_cmp(want))
                .is_some_and(|o| cmp.holds(o)),
            Op::DateAfter(Some(at)) => now_of(ctx, &self.context_name) > *at,
            Op::DateBefore(Some(at)) => now_of(ctx, &self.context_name) < *at,
            Op::Semver(cmp, Some(want)) => value
                .and_then(|v| semver::Version::parse(v).ok())
                .is_some_and(|got| cmp.holds(got.cmp_precedence(want))),
            Op::InCidr(nets) => value
                .and_then(|v| v.trim().parse::<IpAddr>().ok())
                .is_some_and(|ip| nets.iter().any(|n| n.contains(&ip))),
            Op::Num(_, None) | Op::DateAfter(None) | Op::DateBefore(None) | Op::Semver(_, None) => {
                false
            }
            Op::Unknown => false,
        };
        result != self.inverted
    }
}

/// The time a DATE_* constraint compares with: the context's `currentTime`, else now.
fn now_of(ctx: &Context<'_>, context_name: &str) -> OffsetDateTime {
    if context_name != "currentTime"
        && let Some(t) = ctx
            .field(context_name)
            .and_then(|v| OffsetDateTime::parse(v, &Rfc3339).ok())
    {
        return t;
    }
    ctx.current_time.unwrap_or_else(OffsetDateTime::now_utc)
}

#[derive(Debug, Clone)]
enum Rule {
    /// `rollout`: `None` when the parameter is not an integer (the strategy is off).
    Flexible {
        rollout: Option<u32>,
        stickiness: String,
        group_id: String,
    },
    UserWithId(Vec<String>),
    RemoteAddress(Vec<IpNet>),
    Default,
    Unknown,
}

#[derive(Debug, Clone)]
struct Strategy {
    rule: Rule,
    constraints: Vec<Constraint>,
    /// Segment constraints folded in; `false` when a referenced segment is missing.
    segments_ok: bool,
}

/// A flow compiled for evaluation: Unleash's feature toggle.
#[derive(Debug, Clone)]
pub struct Feature {
    pub name: String,
    pub enabled: bool,
    strategies: Vec<Strategy>,
}

/// The outcome of evaluating a [`Feature`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Evaluation {
    pub enabled: bool,
    /// The strategy that turned the feature on.
    pub strategy: Option<usize>,
    /// The bucket and rollout of the deciding flexibleRollout strategy, or, when off, of the
    /// first flexibleRollout whose constraints matched.
    pub bucket: Option<u32>,
    pub rollout: Option<u32>,
    /// Whether some strategy's constraints (and segments) all held.
    pub constraints_matched: bool,
}

impl Feature {
    /// Compiles Unleash-shaped strategies; `segments` are the export's segments by id.
    pub fn compile(
        name: &str,
        enabled: bool,
        strategies: &[StrategyDef],
        segments: &HashMap<u32, Vec<ConstraintDef>>,
    ) -> Self {
        let strategies = strategies
            .iter()
            .map(|s| {
                let mut constraints: Vec<Constraint> =
                    s.constraints.iter().map(Constraint::compile).collect();
                let mut segments_ok = true;
                for id in &s.segments {
                    match segments.get(id) {
                        Some(cs) => constraints.extend(cs.iter().map(Constraint::compile)),
                        None => segments_ok = false,
                    }
                }
                let p = &s.parameters;
                let rule = match s.name.as_str() {
                    "flexibleRollout" => Rule::Flexible {
                        rollout: parse_rollout(p.get("rollout")),
                        stickiness: p
                            .get("stickiness")
                            .filter(|v| !v.is_empty())
                            .cloned()
                            .unwrap_or_else(|| "default".into()),
                        group_id: p
                            .get("groupId")
                            .filter(|v| !v.is_empty())
                            .cloned()
                            .unwrap_or_else(|| name.to_owned()),
                    },
                    "userWithId" => Rule::UserWithId(
                        p.get("userIds")
                            .map(|ids| {
                                ids.split(',')
                                    .map(|i| i.trim().to_owned())
                                    .filter(|i| !i.is_empty())
                                    .collect()
                            })
                            .unwrap_or_default(),
                    ),
                    "remoteAddress" => Rule::RemoteAddress(
                        p.get("IPs")
                            .map(|ips| ips.split(',').filter_map(parse_net).collect())
                            .unwrap_or_default(),
                    ),
                    "default" => Rule::Default,
                    _ => Rule::Unknown,
                };
                Strategy {
                    rule,
                    constraints,
                    segments_ok,
                }
            })
            .collect();
        Feature {
            name: name.to_owned(),
            enabled,
            strategies,
        }
    }

    /// Evaluates the feature exactly as Unleash would (strategies OR'ed in order).
    pub fn evaluate(&self, ctx: &Context<'_>) -> Evaluation {
        let mut out = Evaluation::default();
        if !self.enabled {
            return out;
        }
        if self.strategies.is_empty() {
            // Unleash: an enabled feature without strategies is on for everyone.
            out.enabled = true;
            return out;
        }
        for (i, s) in self.strategies.iter().enumerate() {
            if !s.segments_ok || !s.constraints.iter().all(|c| c.holds(ctx)) {
                continue;
            }
            out.constraints_matched = true;
            let on = match &s.rule {
                Rule::Default => true,
                Rule::UserWithId(ids) => ctx.user_id.is_some_and(|u| ids.iter().any(|i| i == u)),
                Rule::RemoteAddress(nets) => ctx
                    .remote_address
                    .and_then(|a| a.trim().parse::<IpAddr>().ok())
                    .is_some_and(|ip| nets.iter().any(|n| n.contains(&ip))),
                Rule::Flexible {
                    rollout,
                    stickiness,
                    group_id,
                } => {
                    let Some(rollout) = *rollout else { continue };
                    let Some(id) = stickiness_value(ctx, stickiness) else {
                        if out.rollout.is_none() {
                            out.rollout = Some(rollout);
                        }
                        continue;
                    };
                    let b = bucket(group_id, &id);
                    let on = rollout > 0 && b <= rollout;
                    if on || out.bucket.is_none() {
                        out.bucket = Some(b);
                        out.rollout = Some(rollout);
                    }
                    on
                }
                Rule::Unknown => false,
            };
            if on {
                out.enabled = true;
                out.strategy = Some(i);
                return out;
            }
        }
        out
    }

    /// The flexibleRollout strategies' (index, rollout, stickiness, groupId).
    pub fn rollouts(&self) -> impl Iterator<Item = (usize, Option<u32>, &str, &str)> {
        self.strategies
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match &s.rule {
                Rule::Flexible {
                    rollout,
                    stickiness,
                    group_id,
                } => Some((i, *rollout, stickiness.as_str(), group_id.as_str())),
                _ => None,
            })
    }
}

/// The value a strategy buckets on, or `None` when the context lacks it (strategy off).
fn stickiness_value(ctx: &Context<'_>, stickiness: &str) -> Option<String> {
    match stickiness {
        // userId, then sessionId, then a random value (never sticky; sessiongate always
        // supplies a device id, so it never gets here through ResolveFlow).
        "default" => Some(
            ctx.user_id
                .or(ctx.session_id)
                .map(str::to_owned)
                .unwrap_or_else(|| (rand::random::<u32>() % 10_000 + 1).to_string()),
        ),
        "random" => Some((rand::random::<u32>() % 10_000 + 1).to_string()),
        other => ctx.field(other).map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
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
}
