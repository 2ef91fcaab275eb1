//! A flow's ramp: a schedule of steps (`[[flows.ramp]]`: a percentage, held for a time) that
//! the service advances by itself and pauses by itself when a guard trips — what a ramp
//! decides ([`next`], [`apply`], [`admin`]) and what its guards count ([`share`], [`window`],
//! [`tripped`]). `super::autoramp` is the task that makes the moves.
//!
//! Every replica adds its health counts ([`crate::signals`]) to one-minute windows in the
//! store, so the guards see the fleet's traffic, not one replica's.
//!
//! Monotone: a step only ever raises the percentage (steps rise, and one below what an admin
//! set leaves it be); only the kill switch or an epoch bump moves anyone back. While the kill
//! switch is on the ramp waits.

use std::time::Duration;

use super::model::{Overrides, RampState};
use crate::config::{Guards, RampConfig};
use crate::signals::{Signal, Signals};
use crate::store::keys::Keys;
use crate::store::{Store, StoreResult};

/// How long a minute's shared counts are kept: the widest window and some.
const WINDOW_KEEP: Duration = Duration::from_secs(62 * 60);

/// What an admin can do to a ramp (`UpdateRollout.ramp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RampAction {
    /// Run again after a pause: the step's hold starts over, and the guards forget what
    /// tripped them.
    Resume,
    /// Go to the next step now (a paused ramp stays paused).
    Skip,
    /// Stop advancing until resumed.
    Pause,
}

/// What a ramp does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Move {
    Start,
    Advance(u32),
    Pause(String),
}

/// The ramp's next move, if any: start; pause if a guard `tripped`; advance once the
/// current step's hold has passed. Nothing while paused, at the last step or while the kill
/// switch is on.
pub(super) fn next(
    cfg: &RampConfig,
    state: Option<&RampState>,
    kill_switch: bool,
    now_ms: i64,
    tripped: Option<String>,
) -> Option<Move> {
    if kill_switch {
        return None;
    }
    let Some(st) = state else {
        return Some(Move::Start);
    };
    if st.paused.is_some() {
        return None;
    }
    if let Some(why) = tripped {
        return Some(Move::Pause(why));
    }
    let step = cfg.steps.get(st.step as usize)?;
    let hold = step.hold?;
    (now_ms - st.since_ms >= hold.as_millis() as i64 && (st.step as usize + 1) < cfg.steps.len())
        .then_some(Move::Advance(st.step + 1))
}

/// Applies `mv` to the override record (`current`: the flow's percentage now).
pub(super) fn apply(cfg: &RampConfig, ov: &mut Overrides, current: u32, mv: &Move, now_ms: i64) {
    match mv {
        Move::Start => {
            ov.ramp = Some(RampState {
                step: 0,
                since_ms: now_ms,
                paused: None,
                guards_from_ms: now_ms,
            });
            raise(ov, current, cfg.steps[0].percentage);
        }
        Move::Advance(to) => {
            if let (Some(st), Some(step)) = (ov.ramp.as_mut(), cfg.steps.get(*to as usize)) {
                st.step = *to;
                st.since_ms = now_ms;
                raise(ov, current, step.percentage);
            }
        }
        Move::Pause(why) => {
            if let Some(st) = ov.ramp.as_mut() {
                st.paused = Some(why.clone());
            }
        }
    }
}

/// Never lowers: a step below what the flow already has leaves it be.
fn raise(ov: &mut Overrides, current: u32, to: u32) {
    if to > current {
        ov.percentage = Some(to);
    }
}

/// An admin's action on the ramp, applied to the fresh record (`current`: the percentage).
pub(super) fn admin(
    cfg: &RampConfig,
    ov: &mut Overrides,
    current: u32,
    action: RampAction,
    by: &str,
    now_ms: i64,
) {
    if ov.ramp.is_none() {
        apply(cfg, ov, current, &Move::Start, now_ms);
        if action == RampAction::Skip {
            return;
        }
    }
    let Some(st) = ov.ramp.as_mut() else { return };
    match action {
        RampAction::Resume => {
            if st.paused.take().is_some() {
                st.since_ms = now_ms;
                st.guards_from_ms = now_ms;
            }
        }
        RampAction::Pause => st.paused = Some(format!("paused by {by}")),
        RampAction::Skip => {
            let to = st.step + 1;
            if (to as usize) < cfg.steps.len() {
                apply(cfg, ov, current, &Move::Advance(to), now_ms);
            }
        }
    }
}

/// The shared counts of the window before `now_ms`, from `from_ms` on.
pub(super) type Counts = std::collections::BTreeMap<Signal, u64>;

/// Which guard, if any, is over its threshold, in words.
pub(super) fn tripped(g: &Guards, counts: &Counts, window: Duration) -> Option<String> {
    let n = |s| counts.get(&s).copied().unwrap_or(0);
    let minutes = window.as_secs() / 60;
    [
        (
            "migration failures",
            Signal::MigrationFailures,
            Signal::Migrations,
            g.migration_failure_ratio,
        ),
        (
            "INVALID NEW validations",
            Signal::NewInvalid,
            Signal::NewValidations,
            g.new_invalid_ratio,
        ),
        (
            "UserInfo errors",
            Signal::UserinfoErrors,
            Signal::UserinfoCalls,
            g.userinfo_error_ratio,
        ),
    ]
    .into_iter()
    .find_map(|(what, bad, all, limit)| {
        let (bad, all) = (n(bad), n(all));
        let ratio = bad as f64 / all.max(1) as f64;
        (all >= g.min_samples && ratio > limit).then(|| {
            format!(
                "guard: {what} {bad} of {all} ({:.1} %) over the last {minutes} min, above {:.1} %",
                ratio * 100.0,
                limit * 100.0
            )
        })
    })
}

fn minute(ms: i64) -> i64 {
    ms.div_euclid(60_000)
}

/// Adds this replica's counts since the last call to the fleet's one-minute windows. Counts
/// that cannot be stored are kept for the next call.
pub(super) async fn share(
    store: &dyn Store,
    keys: &Keys,
    signals: &Signals,
    now_ms: i64,
) -> StoreResult<()> {
    let taken = signals.take();
    let m = minute(now_ms);
    for (i, (s, n)) in taken.iter().enumerate() {
        if *n == 0 {
            continue;
        }
        if let Err(e) = store
            .incr(&keys.guard_count(s.as_str(), m), *n, WINDOW_KEEP)
            .await
        {
            signals.give_back(&taken[i..]);
            return Err(e);
        }
    }
    Ok(())
}

/// The fleet's counts over the whole minutes of the `window` before `now_ms` that began at
/// or after `from_ms` (a resume's moment: what tripped the guards before it is forgotten),
/// the current minute included.
pub(super) async fn window(
    store: &dyn Store,
    keys: &Keys,
    window: Duration,
    from_ms: i64,
    now_ms: i64,
) -> StoreResult<Counts> {
    let last = minute(now_ms);
    let first = (last - (window.as_secs() / 60) as i64 + 1).max(minute(from_ms) + 1);
    let mut counts = Counts::new();
    if first > last {
        return Ok(counts);
    }
    for s in Signal::ALL.into_iter().filter(|s| s.guarded()) {
        let keys: Vec<_> = (first..=last)
            .map(|m| keys.guard_count(s.as_str(), m))
            .collect();
        let total: u64 = store
            .get_many(&keys)
            .await?
            .into_iter()
            .flatten()
            .filter_map(|v| std::str::from_utf8(&v).ok()?.parse::<u64>().ok())
            .sum();
        counts.insert(s, total);
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RampStep;

    const MIN: i64 = 60_000;

    fn cfg() -> RampConfig {
        RampConfig {
            steps: vec![
                RampStep {
                    percentage: 10,
                    hold: Some(Duration::from_secs(600)),
                },
                RampStep {
                    percentage: 50,
                    hold: Some(Duration::from_secs(600)),
                },
                RampStep {
                    percentage: 100,
                    hold: None,
                },
            ],
            guards: Guards {
                window: Duration::from_secs(600),
                min_samples: 10,
                migration_failure_ratio: 0.05,
                new_invalid_ratio: 0.05,
                userinfo_error_ratio: 0.1,
            },
        }
    }

    #[test]
    fn a_ramp_starts_holds_advances_and_stops_at_its_last_step() {
        let c = cfg();
        let mut ov = Overrides::default();
        assert_eq!(next(&c, None, false, 0, None), Some(Move::Start));
        apply(&c, &mut ov, 0, &Move::Start, 0);
        assert_eq!(ov.percentage, Some(10));
        let st = ov.ramp.clone().unwrap();
        assert_eq!(next(&c, Some(&st), false, 10 * MIN - 1, None), None);
        assert_eq!(
            next(&c, Some(&st), false, 10 * MIN, None),
            Some(Move::Advance(1))
        );
        apply(&c, &mut ov, 10, &Move::Advance(1), 10 * MIN);
        assert_eq!(ov.percentage, Some(50));
        apply(&c, &mut ov, 50, &Move::Advance(2), 20 * MIN);
        assert_eq!(ov.percentage, Some(100));
        // The last step has no hold and no next.
        assert_eq!(next(&c, ov.ramp.as_ref(), false, 1000 * MIN, None), None);
    }

    #[test]
    fn a_step_never_lowers_what_an_admin_raised() {
        let c = cfg();
        let mut ov = Overrides {
            percentage: Some(30),
            ..Default::default()
        };
        apply(&c, &mut ov, 30, &Move::Start, 0);
        assert_eq!(ov.percentage, Some(30), "10 % would lower 30 %");
        apply(&c, &mut ov, 30, &Move::Advance(1), MIN);
        assert_eq!(ov.percentage, Some(50));
    }

    #[test]
    fn a_tripped_guard_pauses_and_nothing_moves_while_paused_or_killed() {
        let c = cfg();
        let mut ov = Overrides::default();
        apply(&c, &mut ov, 0, &Move::Start, 0);
        let st = ov.ramp.clone().unwrap();
        assert_eq!(
            next(&c, Some(&st), false, MIN, Some("bad".into())),
            Some(Move::Pause("bad".into()))
        );
        apply(&c, &mut ov, 10, &Move::Pause("bad".into()), MIN);
        let paused = ov.ramp.clone().unwrap();
        assert_eq!(next(&c, Some(&paused), false, 100 * MIN, None), None);
        assert_eq!(
            next(&c, Some(&st), true, 100 * MIN, None),
            None,
            "kill switch"
        );
        assert_eq!(next(&c, None, true, 0, None), None);
        // Resume: the hold starts over and the guards forget.
        admin(&c, &mut ov, 10, RampAction::Resume, "ops", 50 * MIN);
        let resumed = ov.ramp.clone().unwrap();
        assert_eq!(resumed.paused, None);
        assert_eq!(
            (resumed.since_ms, resumed.guards_from_ms),
            (50 * MIN, 50 * MIN)
        );
        assert_eq!(next(&c, Some(&resumed), false, 59 * MIN, None), None);
        // Pause by hand, skip while paused (moves, stays paused).
        admin(&c, &mut ov, 10, RampAction::Pause, "ops", 51 * MIN);
        assert_eq!(
            ov.ramp.as_ref().unwrap().paused.as_deref(),
            Some("paused by ops")
        );
        admin(&c, &mut ov, 10, RampAction::Skip, "ops", 52 * MIN);
        assert_eq!(
            (ov.ramp.as_ref().unwrap().step, ov.percentage),
            (1, Some(50))
        );
        assert!(ov.ramp.as_ref().unwrap().paused.is_some());
        admin(&c, &mut ov, 50, RampAction::Skip, "ops", 53 * MIN);
        admin(&c, &mut ov, 100, RampAction::Skip, "ops", 54 * MIN);
        assert_eq!(ov.ramp.as_ref().unwrap().step, 2, "no step past the last");
    }

    #[test]
    fn guards_need_enough_samples_and_name_what_tripped() {
        let g = cfg().guards;
        let w = g.window;
        let counts = |pairs: &[(Signal, u64)]| pairs.iter().copied().collect::<Counts>();
        assert_eq!(tripped(&g, &counts(&[]), w), None);
        // 5 of 9 fail, but 9 < min_samples.
        assert_eq!(
            tripped(
                &g,
                &counts(&[(Signal::Migrations, 9), (Signal::MigrationFailures, 5)]),
                w
            ),
            None
        );
        // At the threshold is not over it.
        assert_eq!(
            tripped(
                &g,
                &counts(&[(Signal::NewValidations, 100), (Signal::NewInvalid, 5)]),
                w
            ),
            None
        );
        let why = tripped(
            &g,
            &counts(&[(Signal::NewValidations, 100), (Signal::NewInvalid, 6)]),
            w,
        )
        .unwrap();
        assert!(
            why.contains("INVALID NEW validations 6 of 100 (6.0 %)"),
            "{why}"
        );
        let why = tripped(
            &g,
            &counts(&[(Signal::UserinfoCalls, 20), (Signal::UserinfoErrors, 3)]),
            w,
        )
        .unwrap();
        assert!(why.starts_with("guard: UserInfo errors 3 of 20"), "{why}");
    }

    #[tokio::test]
    async fn counts_are_shared_in_minute_windows_and_a_resume_forgets_the_past() {
        let store = crate::store::memory::MemoryStore::new(crate::config::Env::Test);
        let keys = Keys::new(crate::config::Env::Test);
        let signals = Signals::default();
        let w = Duration::from_secs(600);
        for _ in 0..3 {
            signals.outcome(Signal::Migrations, Signal::MigrationFailures, true);
        }
        share(&store, &keys, &signals, 100 * MIN + 5).await.unwrap();
        signals.count(Signal::Migrations);
        share(&store, &keys, &signals, 101 * MIN).await.unwrap();
        let c = window(&store, &keys, w, 0, 101 * MIN + 1).await.unwrap();
        assert_eq!(
            (c[&Signal::Migrations], c[&Signal::MigrationFailures]),
            (4, 3)
        );
        // Out of the window after ten minutes.
        let c = window(&store, &keys, w, 0, 110 * MIN).await.unwrap();
        assert_eq!(c[&Signal::Migrations], 1);
        // From a resume in minute 100: only minute 101 on counts.
        let c = window(&store, &keys, w, 100 * MIN + 30_000, 101 * MIN)
            .await
            .unwrap();
        assert_eq!(
            (c[&Signal::Migrations], c[&Signal::MigrationFailures]),
            (1, 0)
        );
    }
}
