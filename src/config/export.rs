//! `unleash_features_file`: an Unleash client-features export, read into flows. It is
//! evaluated exactly as Unleash would, so its surprises are warnings, not refusals: the
//! operator sees them at start-up and in `check-config`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::Check;
use super::flows::{FlowConfig, FlowRules, check_name};
use super::unleash::{self, ConstraintDef, OPERATORS, STRATEGIES, StrategyDef};

/// An export is read whole at start-up; anything larger is not a feature list.
const MAX_EXPORT_BYTES: u64 = 4 << 20;

#[derive(Debug, Deserialize)]
struct Export {
    #[serde(default)]
    features: Vec<ExportFeature>,
    #[serde(default)]
    segments: Vec<ExportSegment>,
}

#[derive(Debug, Deserialize)]
struct ExportFeature {
    name: String,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    strategies: Vec<StrategyDef>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
struct ExportSegment {
    id: u32,
    #[serde(default)]
    constraints: Vec<ConstraintDef>,
}

/// Reads an Unleash client-features export: each feature becomes a flow of the same name
/// (`enabled = false` is its kill switch), evaluated with Unleash's own edge rules. Returns
/// the flows and one warning per surprise.
pub(super) fn unleash_export(
    c: &mut Check,
    cwd: &Path,
    path: &Path,
) -> (Vec<FlowConfig>, Vec<String>) {
    let key = "unleash_features_file";
    let full: PathBuf = if path.is_absolute() {
        path.to_path_buf()
    } else {
        cwd.join(path)
    };
    let text = match std::fs::metadata(&full).and_then(|m| {
        if m.len() > MAX_EXPORT_BYTES {
            Err(std::io::Error::other(format!(
                "{} bytes is more than the {MAX_EXPORT_BYTES} accepted",
                m.len()
            )))
        } else {
            std::fs::read_to_string(&full)
        }
    }) {
        Ok(t) => t,
        Err(e) => {
            c.fail(key, format!("cannot read `{}`: {e}", full.display()));
            return (Vec::new(), Vec::new());
        }
    };
    let de = &mut serde_json::Deserializer::from_str(&text);
    let export: Export = match serde_path_to_error::deserialize(de) {
        Ok(e) => e,
        Err(e) => {
            c.fail(
                key,
                format!(
                    "`{}` is not an Unleash client-features export: {} at {}",
                    full.display(),
                    e.inner(),
                    e.path()
                ),
            );
            return (Vec::new(), Vec::new());
        }
    };
    let segments: Arc<HashMap<u32, Vec<ConstraintDef>>> = Arc::new(
        export
            .segments
            .into_iter()
            .map(|s| (s.id, s.constraints))
            .collect(),
    );
    let mut warnings = Vec::new();
    let mut names = BTreeSet::new();
    let mut flows = Vec::new();
    for (i, f) in export.features.into_iter().enumerate() {
        check_name(
            c,
            &format!("{key}: features[{i}].name"),
            &f.name,
            &mut names,
        );
        let w = |m: String| format!("unleash_features_file: feature `{}`: {m}", f.name);
        if f.enabled && f.strategies.is_empty() {
            warnings.push(w(
                "enabled with no strategies: Unleash turns it ON for everyone (NEW for all)".into(),
            ));
        }
        let mut groups = BTreeSet::new();
        let mut stickies = BTreeSet::new();
        for (j, s) in f.strategies.iter().enumerate() {
            if !STRATEGIES.contains(&s.name.as_str()) {
                warnings.push(w(format!(
                    "strategy {j} `{}` is not supported: it is always off",
                    s.name
                )));
            }
            if s.name == "gradualRolloutRandom" {
                warnings.push(w(format!(
                    "strategy {j} gradualRolloutRandom is not sticky: a user may get NEW on one call and LEGACY on the next"
                )));
            }
            if s.name.starts_with("gradualRollout")
                && unleash::parse_percentage(s.parameters.get("percentage")).is_none()
            {
                warnings.push(w(format!(
                    "strategy {j}: percentage `{}` is not a number: Unleash turns the strategy off",
                    s.parameters
                        .get("percentage")
                        .map_or("(missing)", String::as_str)
                )));
            }
            if s.name == "flexibleRollout" {
                match unleash::parse_rollout(s.parameters.get("rollout")) {
                    Some(r) if r <= 100 => {}
                    Some(r) => warnings.push(w(format!(
                        "strategy {j}: rollout {r} is more than 100: everyone is in"
                    ))),
                    None => warnings.push(w(format!(
                        "strategy {j}: rollout `{}` is not an integer: Unleash turns the strategy off",
                        s.parameters.get("rollout").map_or("(missing)", String::as_str)
                    ))),
                }
                groups.insert(
                    s.parameters
                        .get("groupId")
                        .filter(|g| !g.is_empty())
                        .cloned()
                        .unwrap_or_else(|| f.name.clone()),
                );
                let st = s
                    .parameters
                    .get("stickiness")
                    .filter(|v| !v.is_empty())
                    .cloned()
                    .unwrap_or_else(|| "default".into());
                if st == "random" {
                    warnings.push(w(format!(
                        "strategy {j}: stickiness `random` is never sticky"
                    )));
                }
                stickies.insert(st);
            }
            for con in &s.constraints {
                if !OPERATORS.contains(&con.operator.as_str()) {
                    warnings.push(w(format!(
                        "strategy {j}: operator `{}` is not supported: that constraint is always false",
                        con.operator
                    )));
                }
            }
            for id in &s.segments {
                if !segments.contains_key(id) {
                    warnings.push(w(format!(
                        "strategy {j}: segment {id} is not in the export: the strategy is off"
                    )));
                }
            }
        }
        if groups.len() > 1 {
            warnings.push(w(format!(
                "its flexibleRollout strategies use several group ids ({}): a user can be in one and out of another",
                groups.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
        if stickies.len() > 1 {
            warnings.push(w(format!(
                "its flexibleRollout strategies use several stickiness values ({})",
                stickies.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
        flows.push(FlowConfig {
            name: f.name,
            kill_switch: !f.enabled,
            rollback_epoch: 0,
            allow_users: Vec::new(),
            deny_users: Vec::new(),
            allow_devices: Vec::new(),
            deny_devices: Vec::new(),
            allow_cidrs: Vec::new(),
            deny_cidrs: Vec::new(),
            countries: Vec::new(),
            min_app_versions: BTreeMap::new(),
            rules: FlowRules::Strategies {
                strategies: f.strategies,
                segments: segments.clone(),
                from_export: true,
            },
            ramp: None,
        });
    }
    (flows, warnings)
}
