//! The task that moves ramps: one replica at a time moves a flow's ramp — the one holding its
//! lease in the store — and every replica shares its guard counts each second.
//!
//! A move is a change of the flow's override record like an admin's (`FlowService::change`:
//! under the flow's lock, re-decided on the fresh record, a `rollout.updated` event, announced
//! to every replica), so two replicas can never both advance a step: the second finds the step
//! already taken and changes nothing.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use super::model::Effective;
use super::ramp::{Move, apply, next, share, tripped, window};
use super::service::{Changes, FlowService};
use crate::config::RampConfig;
use crate::signals::Signals;

/// How often each replica shares its counts and the holder looks at its ramps.
const TICK: Duration = Duration::from_secs(1);
const LEASE_TTL: Duration = Duration::from_secs(10);
/// Who the ramp's own changes are by, in events and logs.
pub const BY: &str = "ramp";

/// Shares this replica's counts and moves the flows' ramps while it holds their leases, until
/// `stop` turns true. Nothing to do (and no task) when no flow has a ramp.
pub fn spawn(
    flows: Arc<FlowService>,
    signals: Arc<Signals>,
    mut stop: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let ramps = flows.ramps();
    if ramps.is_empty() {
        return None;
    }
    Some(tokio::spawn(async move {
        let holder = uuid::Uuid::new_v4().to_string();
        let mut held = vec![false; ramps.len()];
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = tick.tick() => {}
            }
            let (store, keys) = (flows.store(), flows.keys());
            let now = flows.now_ms();
            if let Err(e) = share(store, keys, &signals, now).await {
                tracing::debug!(error = %e, "cannot share the guards' counts yet");
            }
            for (i, (flow, cfg)) in ramps.iter().enumerate() {
                let lease = keys.flow_ramp_lease(flow);
                let ours = if held[i] {
                    store
                        .renew_if_equals(&lease, holder.as_bytes(), LEASE_TTL)
                        .await
                } else {
                    store
                        .put_if_absent(&lease, holder.as_bytes(), Some(LEASE_TTL))
                        .await
                };
                held[i] = ours.unwrap_or(false);
                if held[i]
                    && let Err(e) = step(&flows, flow, cfg, now).await
                {
                    tracing::warn!(flow, error = %e, "could not move the flow's ramp; trying again");
                }
            }
        }
        // Hand over at once rather than after the lease runs out.
        for (i, (flow, _)) in ramps.iter().enumerate() {
            if held[i] {
                let _ = flows
                    .store()
                    .delete_if_equals(&flows.keys().flow_ramp_lease(flow), holder.as_bytes())
                    .await;
            }
        }
    }))
}

/// One look at `flow`'s ramp by the lease holder: decided on what this replica knows, then
/// re-decided on the fresh record under the flow's lock before anything is written.
async fn step(
    flows: &FlowService,
    flow: &str,
    cfg: &RampConfig,
    now: i64,
) -> Result<(), crate::error::Error> {
    let Some(eff) = flows.effective(flow) else {
        return Ok(());
    };
    let running = eff.ramp.as_ref().filter(|r| r.paused.is_none());
    let tripped = match running {
        Some(st) => {
            let counts = window(
                flows.store(),
                flows.keys(),
                cfg.guards.window,
                st.guards_from_ms,
                now,
            )
            .await?;
            tripped(&cfg.guards, &counts, cfg.guards.window)
        }
        None => None,
    };
    let Some(planned) = next(cfg, eff.ramp.as_ref(), eff.kill_switch, now, tripped) else {
        return Ok(());
    };
    let changed = flows
        .change(flow, BY, |_, ov, before: &Effective| {
            // Someone (another holder, an admin) may have moved it since: only a move that is
            // still the next one is made.
            let fresh = match &planned {
                Move::Pause(_) => ov.ramp.as_ref().is_some_and(|r| r.paused.is_none()),
                Move::Start => ov.ramp.is_none(),
                Move::Advance(to) => ov
                    .ramp
                    .as_ref()
                    .is_some_and(|r| r.paused.is_none() && r.step + 1 == *to),
            };
            if !fresh || before.kill_switch {
                return Ok(None);
            }
            apply(cfg, ov, before.percentage, &planned, now);
            let mut changes = Changes::new();
            if let Move::Pause(why) = &planned {
                changes.insert("reason".into(), json!(why));
            }
            Ok(Some(changes))
        })
        .await?;
    if let Some(r) = changed {
        match &planned {
            Move::Pause(why) => {
                tracing::warn!(flow, reason = %why, "the flow's ramp paused itself")
            }
            _ => tracing::info!(flow, percentage = r.percentage, "the flow's ramp moved"),
        }
    }
    Ok(())
}
