//! The flow service: ResolveFlow over the effective flows, and RolloutAdminService's run-time
//! overrides — stored in the shared store, announced on the invalidation channel, applied on
//! every replica within a round trip (and reloaded after a reconnect, since messages sent
//! during an outage are lost).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::{Value, json};

use super::cookie::CookieKeys;
use super::model::{Effective, ListName, Overrides};
use super::resolve::{Decision, Early, Flow, FlowReason, Request, Resolver};
use crate::caller::Caller;
use crate::clock::Clock;
use crate::config::{Env, FlowConfig, FlowCookieConfig};
use crate::error::{Error, ErrorCode, ErrorReason};
use crate::ids::{self, IdKind};
use crate::store::Invalidation;
use crate::store::keys::Keys;
use crate::store::{Notice, Store, StoreError, Write};

/// Longest a user or device id may be.
const MAX_ID_BYTES: usize = 256;
/// How long an admin update may hold a flow's override lock.
const LOCK_TTL: Duration = Duration::from_secs(5);

/// A flow's effective settings, as the admin API shows them.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub flow: String,
    pub percentage: u32,
    pub kill_switch: bool,
    pub rollback_epoch: u32,
    pub stickiness: String,
    pub lists: BTreeMap<ListName, Vec<String>>,
    pub countries: Vec<String>,
    pub min_app_versions: BTreeMap<String, String>,
    pub config_version: String,
    pub updated_at_ms: Option<i64>,
    /// The flow's ramp, if it has one.
    pub ramp: Option<RampView>,
}

/// A ramp as the admin API shows it: the schedule and where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct RampView {
    pub steps: Vec<crate::config::RampStep>,
    /// `None` until it starts.
    pub state: Option<super::model::RampState>,
    /// When the next step is due, if one is (running, not at the last step).
    pub next_step_at_ms: Option<i64>,
}

/// A partial update: only the fields present change.
#[derive(Debug, Clone, Default)]
pub struct Update {
    pub flow: String,
    pub percentage: Option<u32>,
    pub kill_switch: Option<bool>,
    pub rollback_epoch: Option<u32>,
    /// (list, add, remove)
    pub lists: Vec<(ListName, Vec<String>, Vec<String>)>,
    /// Drop every override first (back to the file), then apply the rest.
    pub clear_overrides: bool,
    /// Resume, skip a step of or pause the flow's ramp.
    pub ramp: Option<super::ramp::RampAction>,
}

pub struct FlowService {
    env: Env,
    files: BTreeMap<String, FlowConfig>,
    effective: RwLock<HashMap<String, Arc<Effective>>>,
    store: Arc<dyn Store>,
    keys: Keys,
    clock: Arc<dyn Clock>,
    cookies: CookieKeys,
    /// Each flow's cookie name, computed once.
    cookie_names: HashMap<String, String>,
    cookie_max_age_secs: u64,
    /// Users known to have an account (accounts are never deleted, so positives are final).
    accounts: moka::sync::Cache<String, ()>,
    /// `sessiongate_flow_decisions_total` handles per flow, resolved once: looking labels up
    /// on every call cost more than the decision itself.
    decisions: HashMap<String, Vec<metrics::Counter>>,
    unknown_flow: metrics::Counter,
}

fn counters(flow: &str) -> Vec<metrics::Counter> {
    FlowReason::ALL
        .iter()
        .flat_map(|r| {
            ["legacy", "new"].map(|result| {
                metrics::counter!(
                    "sessiongate_flow_decisions_total",
                    "flow" => flow.to_owned(),
                    "result" => result,
                    "reason" => r.as_str()
                )
            })
        })
        .collect()
}

fn counter_index(flow: Flow, reason: FlowReason) -> usize {
    let r = FlowReason::ALL
        .iter()
        .position(|x| *x == reason)
        .unwrap_or_default();
    r * 2 + usize::from(flow == Flow::New)
}

impl FlowService {
    pub fn new(
        env: Env,
        flows: &[FlowConfig],
        cookie: &FlowCookieConfig,
        cookies: CookieKeys,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let files: BTreeMap<String, FlowConfig> =
            flows.iter().map(|f| (f.name.clone(), f.clone())).collect();
        let effective: HashMap<String, Arc<Effective>> = files
            .iter()
            .map(|(n, f)| (n.clone(), Effective::compile(f, &Overrides::default())))
            .collect();
        for (n, e) in &effective {
            gauges(n, e);
        }
        FlowService {
            env,
            effective: RwLock::new(effective),
            store,
            keys: Keys::new(env),
            clock,
            cookies,
            cookie_names: files
                .keys()
                .map(|n| (n.clone(), super::cookie::cookie_name(&cookie.name, n)))
                .collect(),
            cookie_max_age_secs: cookie.max_age.as_secs(),
            accounts: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
            decisions: files.keys().map(|n| (n.clone(), counters(n))).collect(),
            unknown_flow: metrics::counter!(
                "sessiongate_flow_decisions_total",
                "flow" => "(unknown)",
                "result" => "legacy",
                "reason" => FlowReason::FlowNotFound.as_str()
            ),
            files,
        }
    }

    /// The flows with a ramp, and their schedules.
    pub(super) fn ramps(&self) -> Vec<(String, crate::config::RampConfig)> {
        self.files
            .iter()
            .filter_map(|(n, f)| Some((n.clone(), f.ramp.clone()?)))
            .collect()
    }

    pub(super) fn store(&self) -> &dyn Store {
        &*self.store
    }

    pub(super) fn keys(&self) -> &Keys {
        &self.keys
    }

    pub(super) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// A flow's effective settings as this replica has them.
    pub(super) fn effective(&self, flow: &str) -> Option<Arc<Effective>> {
        self.current(flow)
    }

    fn current(&self, flow: &str) -> Option<Arc<Effective>> {
        self.effective
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(flow)
            .cloned()
    }

    /// The cookie `flow` keeps its device id and stickiness in; `None` for a flow that is not
    /// configured (its decision is LEGACY, and no cookie is read or set).
    pub fn cookie_name(&self, flow: &str) -> Option<&str> {
        self.cookie_names.get(flow).map(String::as_str)
    }

    fn resolver<'a>(&'a self, flow: &'a Effective) -> Resolver<'a> {
        Resolver {
            flow,
            cookies: &self.cookies,
            cookie_name: self.cookie_names.get(&flow.name).map_or("", String::as_str),
            cookie_max_age_secs: self.cookie_max_age_secs,
        }
    }

    /// Checks a request's sizes (the only errors ResolveFlow returns: everything else is a
    /// decision, LEGACY when in doubt).
    pub fn check(req: &Request) -> Result<(), Error> {
        let bad = |m: String| Err(Error::invalid_argument(ErrorReason::InvalidFlowRequest, m));
        if req.flow.len() > 256 {
            return bad("flow: at most 256 bytes".into());
        }
        for (name, v) in [("user_id", &req.user_id), ("device_id", &req.device_id)] {
            if let Some(v) = v
                && (v.len() > MAX_ID_BYTES || v.chars().any(char::is_control))
            {
                return bad(format!(
                    "{name}: at most {MAX_ID_BYTES} bytes without control characters"
                ));
            }
        }
        if req.app_name.as_ref().is_some_and(|v| v.len() > 64)
            || req.app_version.as_ref().is_some_and(|v| v.len() > 64)
        {
            return bad("app_name and app_version: at most 64 bytes each".into());
        }
        if req.properties.len() > 32
            || req
                .properties
                .iter()
                .any(|(k, v)| k.len() > 64 || v.len() > 256)
        {
            return bad(
                "properties: at most 32, names up to 64 bytes, values up to 256 bytes".into(),
            );
        }
        Ok(())
    }

    /// ResolveFlow.
    pub async fn resolve(&self, req: &Request) -> Result<Decision, Error> {
        let d = self.decide(req).await?;
        // Labels: configured flow names only (request text never becomes a label).
        match self.decisions.get(&req.flow) {
            Some(c) => c[counter_index(d.flow, d.reason)].increment(1),
            None => self.unknown_flow.increment(1),
        }
        Ok(d)
    }

    async fn decide(&self, req: &Request) -> Result<Decision, Error> {
        Self::check(req)?;
        let Some(flow) = self.current(&req.flow) else {
            return Ok(Decision {
                flow: Flow::Legacy,
                reason: FlowReason::FlowNotFound,
                rule: "flow_not_found".into(),
                bucket: 0,
                percentage: 0,
                device_id: req.device_id.clone().unwrap_or_default(),
                set_cookie: None,
                config_version: String::new(),
            });
        };
        let r = self.resolver(&flow);
        let pending = match r.early(req) {
            Early::Decided(d) => return Ok(d),
            Early::Continue(p) => p,
        };
        let has_account = if pending.needs_account_check(req) {
            match self
                .has_account(req.user_id.as_deref().unwrap_or_default())
                .await
            {
                Ok(b) => b,
                Err(e) => {
                    // LEGACY is the known-good path; the caller still gets an answer.
                    tracing::warn!(flow = %flow.name, error = %e, "ResolveFlow could not check for an account: LEGACY");
                    metrics::counter!("sessiongate_flow_errors_total").increment(1);
                    let mut d = r.late(req, pending, false);
                    d.flow = Flow::Legacy;
                    d.reason = FlowReason::Error;
                    d.rule = "store_unavailable".into();
                    d.bucket = 0;
                    return Ok(d);
                }
            }
        } else {
            false
        };
        Ok(r.late(req, pending, has_account))
    }

    async fn has_account(&self, user_id: &str) -> Result<bool, StoreError> {
        // Only sessiongate user ids of this env can be accounts; anything else needs no lookup.
        if user_id
            .strip_prefix(&ids::prefix(IdKind::User, self.env))
            .is_none_or(|u| uuid::Uuid::parse_str(u).is_err())
        {
            return Ok(false);
        }
        if self.accounts.contains_key(user_id) {
            return Ok(true);
        }
        let found = self.store.get(&self.keys.user(user_id)).await?.is_some();
        if found {
            self.accounts.insert(user_id.to_owned(), ());
        }
        Ok(found)
    }

    // === RolloutAdminService ===

    fn rollout_of(&self, e: &Effective) -> Rollout {
        let cfg = &self.files[&e.name];
        Rollout {
            flow: e.name.clone(),
            percentage: e.percentage,
            kill_switch: e.kill_switch,
            rollback_epoch: e.rollback_epoch,
            stickiness: e.stickiness.map_or("strategies", |s| s.as_str()).to_owned(),
            lists: ListName::ALL.iter().map(|l| (*l, e.list(*l))).collect(),
            countries: cfg.countries.clone(),
            min_app_versions: cfg
                .min_app_versions
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
            config_version: e.config_version.clone(),
            updated_at_ms: e.updated_at_ms,
            ramp: cfg.ramp.as_ref().map(|r| RampView {
                steps: r.steps.clone(),
                state: e.ramp.clone(),
                next_step_at_ms: e.ramp.as_ref().and_then(|st| {
                    let hold = r.steps.get(st.step as usize)?.hold?;
                    (st.paused.is_none() && (st.step as usize + 1) < r.steps.len())
                        .then(|| st.since_ms + hold.as_millis() as i64)
                }),
            }),
        }
    }

    pub fn get(&self, flow: &str) -> Result<Rollout, Error> {
        self.current(flow)
            .map(|e| self.rollout_of(&e))
            .ok_or_else(|| not_found(flow))
    }

    pub fn list(&self) -> Vec<Rollout> {
        let map = self.effective.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<Rollout> = map.values().map(|e| self.rollout_of(e)).collect();
        v.sort_by(|a, b| a.flow.cmp(&b.flow));
        v
    }

    /// UpdateRollout: a read-modify-write of the flow's override record under a short store
    /// lock (so two admins' edits never overwrite each other), then an announcement.
    pub async fn update(&self, u: Update, caller: &Caller) -> Result<Rollout, Error> {
        let Some(cfg) = self.files.get(&u.flow) else {
            return Err(not_found(&u.flow));
        };
        if let Some(p) = u.percentage {
            if p > 100 {
                return Err(Error::invalid_argument(
                    ErrorReason::InvalidRollout,
                    format!("percentage {p} is more than 100"),
                ));
            }
            if matches!(cfg.rules, crate::config::FlowRules::Strategies { .. }) {
                return Err(Error::new(
                    ErrorCode::FailedPrecondition,
                    ErrorReason::FlowHasStrategies,
                    format!(
                        "flow `{}` takes its percentages from Unleash strategies: change their rollout in the configuration",
                        u.flow
                    ),
                ));
            }
        }
        for (list, add, remove) in &u.lists {
            for e in add.iter().chain(remove) {
                let bad = if list.is_cidr() {
                    crate::config::unleash::parse_net(e).is_none()
                } else {
                    e.is_empty() || e.len() > MAX_ID_BYTES || e.chars().any(char::is_control)
                };
                if bad {
                    return Err(Error::invalid_argument(
                        ErrorReason::InvalidRollout,
                        format!(
                            "{}: `{}` is not a valid entry",
                            list.as_str(),
                            e.escape_debug()
                        ),
                    ));
                }
            }
        }
        if u.ramp.is_some() && cfg.ramp.is_none() {
            return Err(Error::invalid_argument(
                ErrorReason::InvalidRollout,
                format!(
                    "flow `{}` has no [[flows.ramp]] to resume, skip or pause",
                    u.flow
                ),
            ));
        }
        let now = self.clock.now_ms();
        let by = caller.name.to_string();
        self.change(&u.flow, &by, |cfg, ov, before| {
            apply_update(cfg, &u, &by, ov, before, now).map(Some)
        })
        .await?
        .ok_or_else(|| Error::internal("an admin update made no change"))
    }

    /// A read-modify-write of `flow`'s override record under a short store lock (so that two
    /// admins, or an admin and the ramp, never overwrite each other's change), then a
    /// `rollout.updated` event naming what changed and `by` whom, and an announcement to
    /// every replica. `edit` returns what it changed beyond what the diff shows, or `None` to
    /// change nothing (its check of the fresh record failed); then `None` is returned.
    pub(super) async fn change(
        &self,
        flow: &str,
        by: &str,
        edit: impl FnOnce(&FlowConfig, &mut Overrides, &Effective) -> Result<Option<Changes>, Error>,
    ) -> Result<Option<Rollout>, Error> {
        let Some(cfg) = self.files.get(flow) else {
            return Err(not_found(flow));
        };
        let key = self.keys.flow_overrides(flow);
        let lock = self.keys.flow_overrides_lock(flow);
        let owner = uuid::Uuid::new_v4().to_string();
        let mut acquired = false;
        for attempt in 0..40u64 {
            if self
                .store
                .put_if_absent(&lock, owner.as_bytes(), Some(LOCK_TTL))
                .await?
            {
                acquired = true;
                break;
            }
            // Another update is in flight (milliseconds): wait briefly.
            tokio::time::sleep(Duration::from_millis(10 + attempt * 5)).await;
        }
        if !acquired {
            return Err(Error::unavailable(
                ErrorReason::RolloutBusy,
                "another update of this flow is in progress; retry",
            ));
        }
        let result = self.change_locked(cfg, flow, by, &key, edit).await;
        if let Err(e) = self.store.delete_if_equals(&lock, owner.as_bytes()).await {
            tracing::warn!(error = %e, "could not release a rollout lock (it expires by itself)");
        }
        let Some(ov) = result? else {
            return Ok(None);
        };
        let eff = Effective::compile(cfg, &ov);
        self.install(flow, eff.clone());
        let note = serde_json::to_vec(&Invalidation::Rollout {
            flow: flow.to_owned(),
        })
        .map_err(Error::internal)?;
        if let Err(e) = self.store.publish(&note).await {
            // Stored: other replicas pick it up at their next resync.
            tracing::warn!(error = %e, "could not announce a rollout change");
        }
        Ok(Some(self.rollout_of(&eff)))
    }

    async fn change_locked(
        &self,
        cfg: &FlowConfig,
        flow: &str,
        by: &str,
        key: &crate::store::Key,
        edit: impl FnOnce(&FlowConfig, &mut Overrides, &Effective) -> Result<Option<Changes>, Error>,
    ) -> Result<Option<Overrides>, Error> {
        let mut ov = self.load_overrides(key).await?;
        let before = Effective::compile(cfg, &ov);
        let prev_revision = ov.revision;
        let prev_ramp = ov.ramp.clone();
        let Some(mut changes) = edit(cfg, &mut ov, &before)? else {
            return Ok(None);
        };
        ov.updated_at_ms = Some(self.clock.now_ms());
        ov.revision = prev_revision + 1;
        let after = Effective::compile(cfg, &ov);
        if before.percentage != after.percentage {
            changes.insert(
                "percentage".into(),
                json!([before.percentage, after.percentage]),
            );
        }
        if before.kill_switch != after.kill_switch {
            changes.insert(
                "kill_switch".into(),
                json!([before.kill_switch, after.kill_switch]),
            );
        }
        if before.rollback_epoch != after.rollback_epoch {
            changes.insert(
                "rollback_epoch".into(),
                json!([before.rollback_epoch, after.rollback_epoch]),
            );
        }
        for l in ListName::ALL {
            let (b, a) = (before.list(l), after.list(l));
            if b != a {
                // Counts only: list entries are user and device ids.
                changes.insert(l.as_str().into(), json!([b.len(), a.len()]));
            }
        }
        let (was, is) = (prev_ramp.as_ref(), ov.ramp.as_ref());
        if was.map(|r| r.step) != is.map(|r| r.step) {
            changes.insert(
                "ramp_step".into(),
                json!([was.map(|r| r.step), is.map(|r| r.step)]),
            );
        }
        let (paused_was, paused_is) = (
            was.and_then(|r| r.paused.clone()),
            is.and_then(|r| r.paused.clone()),
        );
        if paused_was != paused_is {
            changes.insert(
                "ramp_paused".into(),
                paused_is.map_or(json!(false), Value::String),
            );
        }
        let event = crate::store::event(
            self.env,
            self.clock.now_ms(),
            "rollout.updated",
            json!({
                "flow": flow,
                "by": by,
                "changes": Value::Object(changes),
                "config_version": after.config_version,
            }),
        );
        let value = serde_json::to_vec(&ov).map_err(Error::internal)?;
        self.store
            .write(vec![
                Write::Put {
                    key: key.clone(),
                    value,
                    ttl: None,
                },
                event,
            ])
            .await?;
        Ok(Some(ov))
    }

    async fn load_overrides(&self, key: &crate::store::Key) -> Result<Overrides, StoreError> {
        match self.store.get(key).await? {
            None => Ok(Overrides::default()),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Corrupt(format!("flow overrides: {e}"))),
        }
    }

    fn install(&self, flow: &str, e: Arc<Effective>) {
        gauges(flow, &e);
        self.effective
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(flow.to_owned(), e);
    }

    /// Reloads one flow's overrides from the store.
    pub async fn reload(&self, flow: &str) -> Result<(), StoreError> {
        let Some(cfg) = self.files.get(flow) else {
            return Ok(());
        };
        let ov = self.load_overrides(&self.keys.flow_overrides(flow)).await?;
        let fresh = Effective::compile(cfg, &ov);
        let changed = self
            .current(flow)
            .is_none_or(|e| e.config_version != fresh.config_version);
        if changed {
            tracing::info!(flow, config_version = %fresh.config_version, "flow settings changed");
            self.install(flow, fresh);
        }
        Ok(())
    }

    /// Reloads every flow's overrides (at start and after the channel reconnects).
    pub async fn reload_all(&self) -> Result<(), StoreError> {
        let names: Vec<String> = self.files.keys().cloned().collect();
        for n in names {
            self.reload(&n).await?;
        }
        Ok(())
    }
}

/// What dashboards plot: a flow's share on NEW, and its ramp's step and pause.
fn gauges(flow: &str, e: &Effective) {
    metrics::gauge!("sessiongate_flow_percentage", "flow" => flow.to_owned())
        .set(f64::from(e.percentage));
    if let Some(r) = &e.ramp {
        metrics::gauge!("sessiongate_flow_ramp_step", "flow" => flow.to_owned())
            .set(f64::from(r.step));
        metrics::gauge!("sessiongate_flow_ramp_paused", "flow" => flow.to_owned())
            .set(if r.paused.is_some() { 1.0 } else { 0.0 });
    }
}

/// What a change says about itself in its `rollout.updated` event, beyond the diff.
pub(super) type Changes = serde_json::Map<String, Value>;

/// Applies an admin's update to the fresh override record (`before`: what it makes now).
fn apply_update(
    cfg: &FlowConfig,
    u: &Update,
    by: &str,
    ov: &mut Overrides,
    before: &Effective,
    now_ms: i64,
) -> Result<Changes, Error> {
    let mut changes = Changes::new();
    if u.clear_overrides {
        // Back to the file's settings — except the rollback epoch, which never goes down:
        // clearing must not revive the cookies an epoch bump invalidated. A ramp starts over.
        *ov = Overrides {
            rollback_epoch: ov.rollback_epoch,
            revision: ov.revision,
            ..Overrides::default()
        };
        changes.insert("cleared".into(), json!(true));
    }
    // A clear keeps the epoch, so `before`'s is still the flow's.
    let epoch_now = before.rollback_epoch;
    if let Some(e) = u.rollback_epoch
        && e < epoch_now
    {
        return Err(Error::invalid_argument(
            ErrorReason::InvalidRollout,
            format!(
                "rollback_epoch must not go down ({epoch_now} → {e}): a lower epoch would revive cookies it invalidated"
            ),
        ));
    }
    if let Some(p) = u.percentage {
        ov.percentage = Some(p);
    }
    if let Some(k) = u.kill_switch {
        ov.kill_switch = Some(k);
    }
    if let Some(e) = u.rollback_epoch {
        ov.rollback_epoch = Some(e);
    }
    for (list, add, remove) in &u.lists {
        ov.edit(*list, add, remove);
    }
    if let (Some(action), Some(ramp)) = (u.ramp, &cfg.ramp) {
        let current = Effective::compile(cfg, ov).percentage;
        super::ramp::admin(ramp, ov, current, action, by, now_ms);
    }
    Ok(changes)
}

fn not_found(flow: &str) -> Error {
    Error::new(
        ErrorCode::NotFound,
        ErrorReason::FlowNotFound,
        format!("no flow named `{}` is configured", flow.escape_debug()),
    )
}

/// Keeps `flows` in step with the other replicas' admin updates until the process ends:
/// each update as it is announced, and every flow on a timer, after every re-subscription
/// and — until it succeeds — after a reload that failed (a kill switch set while this replica
/// missed the message must still reach it).
pub fn spawn_listener(
    flows: Arc<FlowService>,
    resync_every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    use tokio::sync::broadcast::error::RecvError;
    let mut rx = flows.store.subscribe();
    tokio::spawn(async move {
        if flows.files.is_empty() {
            return;
        }
        let mut schedule = crate::store::ResyncSchedule::new(resync_every);
        loop {
            tokio::select! {
                notice = rx.recv() => match notice {
                    Ok(Notice::Message(payload)) => {
                        if let Ok(Invalidation::Rollout { flow }) =
                            serde_json::from_slice::<Invalidation>(&payload)
                            && let Err(e) = flows.reload(&flow).await
                        {
                            tracing::warn!(error = %e, "could not reload a changed flow");
                            schedule.now();
                        }
                    }
                    Ok(Notice::Resync) | Err(RecvError::Lagged(_)) => schedule.now(),
                    Err(RecvError::Closed) => return,
                },
                _ = tokio::time::sleep_until(schedule.due()) => {
                    match flows.reload_all().await {
                        Ok(()) => schedule.succeeded(),
                        Err(e) => {
                            schedule.failed();
                            tracing::warn!(error = %e, "could not resynchronise flow overrides; retrying");
                        }
                    }
                }
            }
        }
    })
}
