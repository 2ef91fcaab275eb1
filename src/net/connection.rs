//! One connection's life: served until the client closes it, or retired by the server.
//!
//! The server retires a connection
//! - that has not opened HTTP within the handshake timeout: closed at once (it has no calls);
//! - that has had no call in flight for the idle timeout, or has reached its maximum age:
//!   HTTP/2's graceful GOAWAY (a first one that stops new streams, then, once the client's
//!   ping answer proves it has seen it, one that names the last stream served), so that new
//!   calls go to a new connection while the calls in flight finish; after the grace, what is
//!   left is closed;
//! - when the server stops: the same GOAWAY; the server bounds the drain.
//!
//! The age has ±10 % jitter, so that connections opened together (a client fleet's restart)
//! are not all retired in the same second.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::time::Instant;

use super::activity::{Activity, Tracked};
use super::socket::Socket;
use super::{AnswerBody, Door, DoorService, Limits};

/// Why the server ended a connection (a metric label).
#[derive(Clone, Copy)]
enum Retired {
    Handshake,
    Idle,
    Age,
    Shutdown,
}

impl Retired {
    fn as_str(self) -> &'static str {
        match self {
            Retired::Handshake => "handshake_timeout",
            Retired::Idle => "idle",
            Retired::Age => "max_age",
            Retired::Shutdown => "shutdown",
        }
    }
}

/// Serves `tcp` until it closes. `stop` turns to `true` when the server stops; `_slot` is the
/// connection's place under the cap, freed when it closes.
pub(super) async fn drive<S: DoorService<B>, B: AnswerBody>(
    tcp: TcpStream,
    service: S,
    builder: auto::Builder<TokioExecutor>,
    limits: Arc<Limits>,
    door: Door,
    mut stop: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let activity = Arc::new(Activity::new());
    let socket = Socket::new(tcp, activity.clone());
    let conn = builder.serve_connection(
        TokioIo::new(socket),
        Tracked::new(service, activity.clone()),
    );
    let mut conn = std::pin::pin!(conn);
    let _open = OpenGauge::new(door);

    let started = Instant::from_std(activity.started());
    let handshake_by = started + limits.handshake_timeout;
    let age_at = started + jittered(limits.max_age);
    // Set once the server has begun to retire the connection: why, and when it closes it.
    let mut retiring: Option<(Retired, Option<Instant>)> = None;
    let mut stopped = *stop.borrow_and_update();

    loop {
        if stopped && retiring.is_none() {
            conn.as_mut().graceful_shutdown();
            // No grace of its own: the server bounds its drain (a connection already retiring
            // by age or idleness keeps its grace).
            retiring = Some((Retired::Shutdown, None));
        }
        let now = Instant::now();
        let next = match retiring {
            Some((_, Some(by))) => by,
            Some((_, None)) => far_future(now),
            None if !activity.is_open() => handshake_by.min(age_at),
            None => {
                let idle_at = match activity.idle_since() {
                    Some(since) => Instant::from_std(since) + limits.idle_timeout,
                    // Busy: look again after an idle timeout's worth of time.
                    None => now + limits.idle_timeout,
                };
                idle_at.min(age_at)
            }
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    // Counted: an HTTP/2 protocol error ends every call of the connection,
                    // which its clients see as failures the server never answered.
                    tracing::debug!(door = door.as_str(), error = %e, "connection ended with an error");
                    metrics::counter!("sessiongate_connections_failed_total", "door" => door.as_str()).increment(1);
                }
                if let Some((why, _)) = retiring {
                    count_retired(door, why);
                }
                return;
            }
            changed = stop.changed(), if !stopped => {
                // A dropped sender means the server is gone: stop as well.
                stopped = changed.is_err() || *stop.borrow_and_update();
            }
            () = tokio::time::sleep_until(next) => {
                let now = Instant::now();
                match retiring {
                    Some((why, Some(by))) if now >= by => {
                        tracing::debug!(door = door.as_str(), reason = why.as_str(), "grace over: closing a connection with calls in flight");
                        metrics::counter!("sessiongate_connections_cut_total", "door" => door.as_str(), "reason" => why.as_str()).increment(1);
                        count_retired(door, why);
                        return;
                    }
                    Some(_) => {}
                    None if !activity.is_open() && now >= handshake_by => {
                        count_retired(door, Retired::Handshake);
                        return;
                    }
                    None => {
                        let idle = activity
                            .idle_since()
                            .is_some_and(|s| now >= Instant::from_std(s) + limits.idle_timeout);
                        let why = if now >= age_at {
                            Some(Retired::Age)
                        } else if idle && activity.is_open() {
                            Some(Retired::Idle)
                        } else {
                            None
                        };
                        if let Some(why) = why {
                            conn.as_mut().graceful_shutdown();
                            retiring = Some((why, Some(now + limits.max_age_grace)));
                        }
                    }
                }
            }
        }
    }
}

/// ±10 %, so that connections opened together are not all retired together.
fn jittered(age: Duration) -> Duration {
    use rand::Rng as _;
    age.mul_f64(rand::rng().random_range(0.9..=1.1))
}

fn far_future(now: Instant) -> Instant {
    now + Duration::from_secs(86_400 * 365)
}

fn count_retired(door: Door, why: Retired) {
    metrics::counter!("sessiongate_connections_retired_total", "door" => door.as_str(), "reason" => why.as_str())
        .increment(1);
}

/// The gauge of open connections per door, one up for as long as it lives.
struct OpenGauge(Door);

impl OpenGauge {
    fn new(door: Door) -> Self {
        metrics::gauge!("sessiongate_connections_open", "door" => door.as_str()).increment(1.0);
        Self(door)
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        metrics::gauge!("sessiongate_connections_open", "door" => self.0.as_str()).decrement(1.0);
    }
}
