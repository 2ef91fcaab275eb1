//! The two doors' connections: accepting them, serving HTTP on them, and retiring them, so
//! that no client — leaking, flooding or merely long-lived — can starve the service.
//!
//! - **A cap** on open connections, shared by both ports: the server accepts no more until one
//!   closes (the rest wait in the kernel's backlog). By default it stays below the process's
//!   file-descriptor limit, so that clients alone never take the descriptors Redis and the
//!   upstream calls need.
//! - **An accept loop that backs off** when the process or the system is out of descriptors
//!   (`EMFILE`, `ENFILE`) or memory, instead of retrying at once for ever (a full core, for
//!   nothing); logged once per spell, counted per error.
//! - **Each connection retired** when it does not open HTTP within the handshake timeout, has
//!   had no call for the idle timeout, or reaches its maximum age — the last two with HTTP/2's
//!   graceful GOAWAY and a grace for the calls in flight ([`connection`]).
//!
//! The gRPC port speaks HTTP/2 only; the HTTP port HTTP/1.1 and HTTP/2.

mod activity;
mod connection;
mod socket;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::config::ServerConfig;

/// Descriptors kept for everything but clients' connections (Redis, upstream calls, files)
/// when the cap is derived from the descriptor limit.
const RESERVED_DESCRIPTORS: u64 = 128;
/// The cap when the descriptor limit does not bound it.
const DEFAULT_MAX_CONNECTIONS: u64 = 100_000;
/// The longest pause of the accept loop when descriptors are out.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// Streams a client may have open at once on one HTTP/2 connection.
const MAX_CONCURRENT_STREAMS: u32 = 1_024;

/// What a door serves on each of its connections: HTTP requests in, answers out (the gRPC
/// services, the HTTP router).
pub trait DoorService<B>:
    tower::Service<
        http::Request<hyper::body::Incoming>,
        Response = http::Response<B>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S, B> DoorService<B> for S where
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// An answer's body, as hyper sends it.
pub trait AnswerBody:
    http_body::Body<Data = bytes::Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
    + Send
    + 'static
{
}

impl<B> AnswerBody for B where
    B: http_body::Body<Data = bytes::Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static
{
}

/// Which port a connection came through (a metric label), and what it speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Door {
    Grpc,
    Http,
}

impl Door {
    pub fn as_str(self) -> &'static str {
        match self {
            Door::Grpc => "grpc",
            Door::Http => "http",
        }
    }
}

/// How connections are bounded in time.
#[derive(Clone, Debug)]
pub struct Limits {
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_age: Duration,
    pub max_age_grace: Duration,
    /// Server pings on an HTTP/2 connection this often, so a vanished peer is noticed.
    pub keepalive: Duration,
}

impl Limits {
    pub fn of(cfg: &ServerConfig) -> Self {
        Self {
            handshake_timeout: cfg.handshake_timeout,
            idle_timeout: cfg.max_connection_idle,
            max_age: cfg.max_connection_age,
            max_age_grace: cfg.max_connection_age_grace,
            keepalive: Duration::from_secs(30),
        }
    }
}

/// Both doors' connections: their limits and the cap they share.
#[derive(Clone)]
pub struct Connections {
    limits: Arc<Limits>,
    slots: Arc<Semaphore>,
    cap: usize,
}

impl Connections {
    /// `max_connections`: the cap, or `None` for the default (below the descriptor limit).
    pub fn new(limits: Limits, max_connections: Option<u32>) -> Self {
        let cap = max_connections
            .map(u64::from)
            .unwrap_or_else(default_cap)
            .clamp(1, Semaphore::MAX_PERMITS as u64) as usize;
        Self {
            limits: Arc::new(limits),
            slots: Arc::new(Semaphore::new(cap)),
            cap,
        }
    }

    /// The cap on open connections.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Serves `service` on every connection `listener` accepts until `stop` resolves; then
    /// stops accepting (the listening socket closes), retires every connection gracefully,
    /// and resolves once the last has closed.
    pub async fn serve<S: DoorService<B>, B: AnswerBody>(
        &self,
        listener: TcpListener,
        door: Door,
        service: S,
        stop: impl Future<Output = ()>,
    ) {
        let builder = self.builder(door);
        let (stopping, stopped) = watch::channel(false);
        {
            let mut stop = std::pin::pin!(stop);
            let mut backoff = Backoff::default();
            loop {
                let slot = tokio::select! {
                    () = &mut stop => break,
                    slot = self.slots.clone().acquire_owned() => slot.expect("the cap is never closed"),
                };
                let tcp = tokio::select! {
                    () = &mut stop => break,
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => {
                            backoff.reset(door);
                            tcp
                        }
                        Err(e) => {
                            if let Some(pause) = backoff.after(door, &e) {
                                tokio::select! {
                                    () = &mut stop => break,
                                    () = tokio::time::sleep(pause) => {}
                                }
                            }
                            continue;
                        }
                    },
                };
                // Answers are small and latency matters more than segment count.
                let _ = tcp.set_nodelay(true);
                tokio::spawn(connection::drive(
                    tcp,
                    service.clone(),
                    builder.clone(),
                    self.limits.clone(),
                    door,
                    stopped.clone(),
                    slot,
                ));
            }
        }
        drop(listener);
        let _ = stopping.send(true);
        drop(stopped);
        // Every connection holds a receiver: all gone, all closed.
        stopping.closed().await;
    }

    fn builder(&self, door: Door) -> auto::Builder<TokioExecutor> {
        let mut b = auto::Builder::new(TokioExecutor::new());
        if door == Door::Grpc {
            b = b.http2_only();
        }
        b.http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(self.limits.keepalive))
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
        // Each HTTP/1.1 request's headers, not only the first, must arrive within the
        // handshake timeout (a slow-headers client holds no connection for long).
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Some(self.limits.handshake_timeout));
        b
    }
}

/// Below the soft descriptor limit, leaving [`RESERVED_DESCRIPTORS`] for the rest.
fn default_cap() -> u64 {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    match soft {
        Some(n) => n
            .saturating_sub(RESERVED_DESCRIPTORS)
            .clamp(16, DEFAULT_MAX_CONNECTIONS),
        None => DEFAULT_MAX_CONNECTIONS,
    }
}

/// The accept loop's pause after an error: none for a connection that failed on its own
/// (reset before it was accepted), growing from 5 ms to [`MAX_ACCEPT_BACKOFF`] while the
/// process is out of descriptors or memory — retrying at once would only fail again.
#[derive(Default)]
struct Backoff {
    pause: Option<Duration>,
}

impl Backoff {
    fn after(&mut self, door: Door, e: &io::Error) -> Option<Duration> {
        let exhausted = is_exhaustion(e);
        let kind = if exhausted { "exhausted" } else { "other" };
        metrics::counter!("sessiongate_accept_errors_total", "door" => door.as_str(), "kind" => kind)
            .increment(1);
        if !exhausted {
            tracing::debug!(door = door.as_str(), error = %e, "accept failed");
            return None;
        }
        let pause = match self.pause {
            None => {
                tracing::warn!(
                    door = door.as_str(),
                    error = %e,
                    "out of file descriptors or memory: accepting more slowly until it passes"
                );
                Duration::from_millis(5)
            }
            Some(p) => (p * 2).min(MAX_ACCEPT_BACKOFF),
        };
        self.pause = Some(pause);
        Some(pause)
    }

    fn reset(&mut self, door: Door) {
        if self.pause.take().is_some() {
            tracing::info!(door = door.as_str(), "accepting connections again");
        }
    }
}

/// Errors that say the process or the system has no room for another connection.
fn is_exhaustion(e: &io::Error) -> bool {
    use rustix::io::Errno;
    let errno = Errno::from_io_error(e);
    matches!(
        errno,
        Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_exhaustion_backs_off_and_other_errors_do_not() {
        let mut b = Backoff::default();
        let emfile = io::Error::from_raw_os_error(rustix::io::Errno::MFILE.raw_os_error());
        let reset = io::Error::from_raw_os_error(rustix::io::Errno::CONNABORTED.raw_os_error());
        assert_eq!(b.after(Door::Grpc, &reset), None);
        let pauses: Vec<_> = (0..12)
            .map(|_| b.after(Door::Grpc, &emfile).unwrap())
            .collect();
        assert_eq!(pauses[0], Duration::from_millis(5));
        assert!(pauses.windows(2).all(|w| w[1] >= w[0]), "{pauses:?}");
        assert_eq!(*pauses.last().unwrap(), MAX_ACCEPT_BACKOFF);
        b.reset(Door::Grpc);
        assert_eq!(
            b.after(Door::Grpc, &emfile),
            Some(Duration::from_millis(5)),
            "a new spell starts small"
        );
        let nfile = io::Error::from_raw_os_error(rustix::io::Errno::NFILE.raw_os_error());
        assert!(is_exhaustion(&nfile));
    }

    #[test]
    fn the_default_cap_stays_below_the_descriptor_limit() {
        let cap = default_cap();
        let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        assert!(cap >= 16);
        if let Some(soft) = soft {
            assert!(
                cap <= soft.saturating_sub(RESERVED_DESCRIPTORS).max(16),
                "{cap} vs {soft}"
            );
        }
    }
}
