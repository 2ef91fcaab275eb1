//! A flow's effective settings: the file's [`FlowConfig`] with the run-time [`Overrides`] an
//! admin set through `RolloutAdminService` on top, compiled once per change for evaluation.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::engine::Feature;
use crate::config::unleash::{StrategyDef, parse_net};
use crate::config::{FlowConfig, FlowRules, Stickiness};

/// The lists an admin can edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListName {
    AllowUsers,
    DenyUsers,
    AllowDevices,
    DenyDevices,
    AllowCidrs,
    DenyCidrs,
}

impl ListName {
    pub const ALL: [ListName; 6] = [
        ListName::AllowUsers,
        ListName::DenyUsers,
        ListName::AllowDevices,
        ListName::DenyDevices,
        ListName::AllowCidrs,
        ListName::DenyCidrs,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ListName::AllowUsers => "allow_users",
            ListName::DenyUsers => "deny_users",
            ListName::AllowDevices => "allow_devices",
            ListName::DenyDevices => "deny_devices",
            ListName::AllowCidrs => "allow_cidrs",
            ListName::DenyCidrs => "deny_cidrs",
        }
    }

    pub fn is_cidr(self) -> bool {
        matches!(self, ListName::AllowCidrs | ListName::DenyCidrs)
    }
}

/// Entries added to and removed from a file-configured list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListDelta {
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub add: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub remove: BTreeSet<String>,
}

/// Run-time overrides of one flow, stored in the shared store. Absent fields fall back to
/// the file; they win until cleared.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_switch: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_epoch: Option<u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lists: BTreeMap<ListName, ListDelta>,
    /// Unix milliseconds of the last change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at_ms: Option<i64>,
    /// Bumped by every change (part of the config version).
    #[serde(default)]
    pub revision: u64,
    /// Where the flow's ramp is (`None`: not started, or no ramp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp: Option<RampState>,
}

/// A ramp's progress, shared by every replica in the flow's override record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RampState {
    /// The current step (an index into the configured steps).
    pub step: u32,
    /// When the current step began, or the ramp last resumed (Unix ms): its hold counts
    /// from here.
    pub since_ms: i64,
    /// Why it is paused (a guard, or who paused it); `None` while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    /// The guards count from here (Unix ms): a resume forgets what tripped them.
    pub guards_from_ms: i64,
}

impl Overrides {
    /// Adds then removes `edit` entries in `list` (removals apply after additions).
    pub fn edit(&mut self, list: ListName, add: &[String], remove: &[String]) {
        let d = self.lists.entry(list).or_default();
        for a in add {
            d.remove.remove(a);
            d.add.insert(a.clone());
        }
        for r in remove {
            d.add.remove(r);
            d.remove.insert(r.clone());
        }
    }
}

/// A flow ready for evaluation.
#[derive(Debug, Clone)]
pub struct Effective {
    pub name: String,
    pub kill_switch: bool,
    pub rollback_epoch: u32,
    /// The simple form's percentage, or the largest rollout of the strategies.
    pub percentage: u32,
    /// `None` for flows written as Unleash strategies.
    pub stickiness: Option<Stickiness>,
    pub from_strategies: bool,
    pub allow_users: HashSet<String>,
    pub deny_users: HashSet<String>,
    pub allow_devices: HashSet<String>,
    pub deny_devices: HashSet<String>,
    pub allow_cidrs: Vec<IpNet>,
    pub deny_cidrs: Vec<IpNet>,
    pub countries: Vec<String>,
    pub min_app_versions: BTreeMap<String, semver::Version>,
    pub feature: Feature,
    /// Changes whenever anything that decides changes (file or overrides).
    pub config_version: String,
    pub updated_at_ms: Option<i64>,
    pub ramp: Option<RampState>,
}

fn apply(base: &[String], d: Option<&ListDelta>) -> Vec<String> {
    let mut out: BTreeSet<String> = base.iter().cloned().collect();
    if let Some(d) = d {
        out.extend(d.add.iter().cloned());
        out.retain(|e| !d.remove.contains(e));
    }
    out.into_iter().collect()
}

fn apply_nets(base: &[IpNet], d: Option<&ListDelta>) -> Vec<IpNet> {
    let mut out: BTreeSet<IpNet> = base.iter().copied().collect();
    if let Some(d) = d {
        out.extend(d.add.iter().filter_map(|s| parse_net(s)));
        let removed: Vec<IpNet> = d.remove.iter().filter_map(|s| parse_net(s)).collect();
        out.retain(|n| !removed.contains(n));
    }
    out.into_iter().collect()
}

impl Effective {
    pub fn compile(cfg: &FlowConfig, ov: &Overrides) -> Arc<Self> {
        let list = |l: ListName, base: &[String]| apply(base, ov.lists.get(&l));
        let (feature, percentage, stickiness, from_strategies) = match &cfg.rules {
            FlowRules::Percentage {
                percentage,
                stickiness,
            } => {
                let pct = ov.percentage.unwrap_or(*percentage).min(100);
                let s = StrategyDef {
                    name: "flexibleRollout".into(),
                    parameters: BTreeMap::from([
                        ("rollout".into(), pct.to_string()),
                        ("stickiness".into(), stickiness.unleash().into()),
                        ("groupId".into(), cfg.name.clone()),
                    ]),
                    ..Default::default()
                };
                let f = Feature::compile(&cfg.name, true, &[s], &Default::default());
                (f, pct, Some(*stickiness), false)
            }
            FlowRules::Strategies {
                strategies,
                segments,
                ..
            } => {
                let f = Feature::compile(&cfg.name, true, strategies, segments);
                let max = f.rollouts().filter_map(|r| r.1).max().unwrap_or(0).min(100);
                (f, max, None, true)
            }
        };
        let allow_users = list(ListName::AllowUsers, &cfg.allow_users);
        let deny_users = list(ListName::DenyUsers, &cfg.deny_users);
        let allow_devices = list(ListName::AllowDevices, &cfg.allow_devices);
        let deny_devices = list(ListName::DenyDevices, &cfg.deny_devices);
        let allow_cidrs = apply_nets(&cfg.allow_cidrs, ov.lists.get(&ListName::AllowCidrs));
        let deny_cidrs = apply_nets(&cfg.deny_cidrs, ov.lists.get(&ListName::DenyCidrs));
        let kill_switch = ov.kill_switch.unwrap_or(cfg.kill_switch);
        // The epoch only ever goes up: the higher of the file's and the override's. A file
        // edited to a lower epoch than an admin set (or an override older than a file bump)
        // must never revive the cookies the higher epoch invalidated.
        let rollback_epoch = ov
            .rollback_epoch
            .map_or(cfg.rollback_epoch, |e| e.max(cfg.rollback_epoch));

        // The version is a digest of everything that decides, so two replicas with the same
        // file and overrides report the same version.
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(cfg).unwrap_or_default());
        h.update(serde_json::to_vec(ov).unwrap_or_default());
        let config_version = hex::encode(&h.finalize()[..6]);

        Arc::new(Effective {
            name: cfg.name.clone(),
            kill_switch,
            rollback_epoch,
            percentage,
            stickiness,
            from_strategies,
            allow_users: allow_users.into_iter().collect(),
            deny_users: deny_users.into_iter().collect(),
            allow_devices: allow_devices.into_iter().collect(),
            deny_devices: deny_devices.into_iter().collect(),
            allow_cidrs,
            deny_cidrs,
            countries: cfg.countries.clone(),
            min_app_versions: cfg.min_app_versions.clone(),
            feature,
            config_version,
            updated_at_ms: ov.updated_at_ms,
            ramp: ov.ramp.clone(),
        })
    }

    /// A list's effective entries, sorted (for the admin API).
    pub fn list(&self, l: ListName) -> Vec<String> {
        let mut v: Vec<String> = match l {
            ListName::AllowUsers => self.allow_users.iter().cloned().collect(),
            ListName::DenyUsers => self.deny_users.iter().cloned().collect(),
            ListName::AllowDevices => self.allow_devices.iter().cloned().collect(),
            ListName::DenyDevices => self.deny_devices.iter().cloned().collect(),
            ListName::AllowCidrs => self.allow_cidrs.iter().map(|n| n.to_string()).collect(),
            ListName::DenyCidrs => self.deny_cidrs.iter().map(|n| n.to_string()).collect(),
        };
        v.sort();
        v
    }
}
