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

use crate::config::unleash::{
    ConstraintDef, StrategyDef, parse_net, parse_percentage, parse_rollout,
};

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
    /// The older gradualRolloutUserId / gradualRolloutSessionId: on when the id's bucket (in
    /// `group_id`, empty by default) is at most the percentage. `percentage`: `None` when it is
    /// not a number (off).
    Gradual {
        by_session: bool,
        percentage: Option<f64>,
        group_id: String,
    },
    /// gradualRolloutRandom: on for a fresh random bucket 1..=100 at most the percentage.
    Random {
        percentage: Option<f64>,
    },
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
                    "gradualRolloutUserId" | "gradualRolloutSessionId" => Rule::Gradual {
                        by_session: s.name == "gradualRolloutSessionId",
                        percentage: parse_percentage(p.get("percentage")),
                        group_id: p.get("groupId").cloned().unwrap_or_default(),
                    },
                    "gradualRolloutRandom" => Rule::Random {
                        percentage: parse_percentage(p.get("percentage")),
                    },
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
                Rule::Gradual {
                    by_session,
                    percentage,
                    group_id,
                } => {
                    let id = if *by_session {
                        ctx.session_id
                    } else {
                        ctx.user_id
                    };
                    match (id, percentage) {
                        (Some(id), Some(p)) => *p > 0.0 && f64::from(bucket(group_id, id)) <= *p,
                        _ => false,
                    }
                }
                Rule::Random { percentage } => {
                    percentage.is_some_and(|p| p >= f64::from(rand::random::<u32>() % 100 + 1))
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
mod tests;
