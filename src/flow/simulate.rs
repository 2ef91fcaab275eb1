//! `sessiongate flow simulate`: resolves a flow for many synthetic users with the very rules
//! ResolveFlow uses and counts where they land — the plot-free way to check a change (a new
//! percentage, a country list) before applying it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use rand::{RngCore, SeedableRng};

use super::cookie::CookieKeys;
use super::model::{Effective, Overrides};
use super::resolve::{Early, Flow, Request, Resolver, normalise_country};
use crate::config::{Config, FlowRules, Stickiness};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Simulation {
    pub flow: String,
    pub users: usize,
    /// Simulate this percentage instead of the configured one (simple-form flows).
    pub percentage: Option<u32>,
    pub country: Option<String>,
    pub app_name: Option<String>,
    pub app_version: Option<String>,
    pub ip: Option<IpAddr>,
    /// Seed of the synthetic ids (the same seed gives the same ids).
    pub seed: u64,
}

/// The outcome: how many landed where, by reason and rule.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub flow: String,
    pub users: usize,
    pub ids_are: &'static str,
    pub percentage: u32,
    pub config_version: String,
    pub new: usize,
    pub legacy: usize,
    /// ("NEW"/"LEGACY", reason, rule) → count
    pub rows: Vec<(String, String, String, usize)>,
}

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("no flow named `{0}` is configured (flows: {1})")]
    UnknownFlow(String, String),
    #[error("--percentage {0} is more than 100")]
    Percentage(u32),
    #[error(
        "flow `{0}` takes its percentages from Unleash strategies: --percentage applies to the simple form only"
    )]
    Strategies(String),
}

pub fn run(cfg: &Config, sim: &Simulation) -> Result<Report, SimulateError> {
    let Some(fc) = cfg.flows.iter().find(|f| f.name == sim.flow) else {
        let names: Vec<&str> = cfg.flows.iter().map(|f| f.name.as_str()).collect();
        return Err(SimulateError::UnknownFlow(
            sim.flow.clone(),
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            },
        ));
    };
    let mut ov = Overrides::default();
    if let Some(p) = sim.percentage {
        if p > 100 {
            return Err(SimulateError::Percentage(p));
        }
        if matches!(fc.rules, FlowRules::Strategies { .. }) {
            return Err(SimulateError::Strategies(sim.flow.clone()));
        }
        ov.percentage = Some(p);
    }
    let eff = Effective::compile(fc, &ov);
    // Cookies are not part of a simulation; a throwaway key signs the ones made.
    let cookies = CookieKeys::load(&[]).expect("a generated key always loads");
    let r = Resolver {
        flow: &eff,
        cookies: &cookies,
        cookie_name: &super::cookie::cookie_name(&cfg.flow_cookie.name, &sim.flow),
        cookie_max_age_secs: cfg.flow_cookie.max_age.as_secs(),
    };
    // User stickiness buckets user ids; every other form buckets the device (pre-login).
    let as_users = matches!(
        fc.rules,
        FlowRules::Percentage {
            stickiness: Stickiness::User,
            ..
        }
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(sim.seed);
    let mut counts: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    let (mut new, mut legacy) = (0, 0);
    for _ in 0..sim.users {
        let mut bytes = [0u8; 16];
        rng.fill_bytes(&mut bytes);
        let id = uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string();
        let req = Request {
            flow: sim.flow.clone(),
            user_id: as_users.then(|| id.clone()),
            device_id: (!as_users).then(|| id.clone()),
            ip: sim.ip,
            country: sim.country.as_deref().and_then(normalise_country),
            app_name: sim.app_name.clone(),
            app_version: sim.app_version.clone(),
            ..Default::default()
        };
        let d = match r.early(&req) {
            Early::Decided(d) => d,
            Early::Continue(p) => r.late(&req, p, false),
        };
        match d.flow {
            Flow::New => new += 1,
            Flow::Legacy => legacy += 1,
        }
        let flow = match d.flow {
            Flow::New => "NEW",
            Flow::Legacy => "LEGACY",
        };
        *counts
            .entry((flow.into(), d.reason.as_str().into(), d.rule))
            .or_default() += 1;
    }
    Ok(Report {
        flow: sim.flow.clone(),
        users: sim.users,
        ids_are: if as_users { "user ids" } else { "device ids" },
        percentage: eff.percentage,
        config_version: eff.config_version.clone(),
        new,
        legacy,
        rows: counts
            .into_iter()
            .map(|((f, reason, rule), n)| (f, reason, rule, n))
            .collect(),
    })
}

impl Report {
    /// The report as a Markdown table.
    pub fn table(&self) -> String {
        let pct = |n: usize| 100.0 * n as f64 / self.users.max(1) as f64;
        let mut out = format!(
            "flow `{}`: {} simulated {} (percentage {}, config {})\n\n| flow | reason | rule | count | share |\n|---|---|---|---:|---:|\n",
            self.flow, self.users, self.ids_are, self.percentage, self.config_version
        );
        for (f, reason, rule, n) in &self.rows {
            out.push_str(&format!(
                "| {f} | {reason} | {rule} | {n} | {:.2}% |\n",
                pct(*n)
            ));
        }
        out.push_str(&format!(
            "\nNEW {} ({:.2}%), LEGACY {} ({:.2}%)\n",
            self.new,
            pct(self.new),
            self.legacy,
            pct(self.legacy)
        ));
        out
    }
}
