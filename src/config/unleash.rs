//! The Unleash client-API JSON shape of a flow's strategies and constraints: how flows are
//! written in `[[flows.strategies]]` and read from an Unleash export. What the shapes *mean*
//! is `flow::engine`'s; this is what configuration parses and checks before anything runs.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// One strategy as Unleash's client API writes it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StrategyDef {
    pub name: String,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    #[serde(default)]
    pub constraints: Vec<ConstraintDef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<u32>,
}

/// One constraint as Unleash's client API writes it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConstraintDef {
    pub context_name: String,
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub inverted: bool,
    #[serde(default)]
    pub case_insensitive: bool,
}

/// The operators this engine implements (all others evaluate to false, as in Unleash).
pub const OPERATORS: &[&str] = &[
    "IN",
    "NOT_IN",
    "STR_CONTAINS",
    "STR_STARTS_WITH",
    "STR_ENDS_WITH",
    "NUM_EQ",
    "NUM_GT",
    "NUM_GTE",
    "NUM_LT",
    "NUM_LTE",
    "DATE_AFTER",
    "DATE_BEFORE",
    "SEMVER_EQ",
    "SEMVER_GT",
    "SEMVER_LT",
    "SEMVER_GTE",
    "SEMVER_LTE",
    "IN_CIDR",
];

/// The strategies this engine implements (all others evaluate to false, as in Unleash).
pub const STRATEGIES: &[&str] = &[
    "flexibleRollout",
    "userWithId",
    "remoteAddress",
    "default",
    // Older strategies that real exports still carry.
    "gradualRolloutUserId",
    "gradualRolloutSessionId",
    "gradualRolloutRandom",
];

/// An IP address or a CIDR network.
pub fn parse_net(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// The older strategies' `percentage`, read as Unleash's SDKs read it (JavaScript's
/// `Number(…)`): blank is 0, a decimal number is itself, anything else — or none — is not a
/// number, and no comparison with it holds (the strategy is off).
pub fn parse_percentage(v: Option<&String>) -> Option<f64> {
    let v = v?.trim();
    if v.is_empty() {
        return Some(0.0);
    }
    v.parse::<f64>().ok().filter(|p| !p.is_nan())
}

/// How a flexibleRollout strategy's percentage is read (Unleash: an integer string; anything
/// else turns the strategy off).
pub fn parse_rollout(s: Option<&String>) -> Option<u32> {
    s.and_then(|v| v.trim().parse::<u32>().ok())
}
