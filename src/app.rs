//! Wiring: build the state, bind the ports, serve gRPC (with health and reflection) and HTTP,
//! and shut down with a bounded drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::auth::CallerKeys;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::flow::FlowService;
use crate::flow::cookie::CookieKeys;
use crate::grpc::server::Services;
use crate::keys::{KeyError, SigningKeys};
use crate::net::{Connections, Door, Limits};
use crate::session::SessionService;
use crate::store::keys::Keys;
use crate::store::{Store, StoreError, StoreKind};
use crate::webhooks::Webhooks;

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("signing keys: {0}")]
    Keys(#[from] KeyError),
    #[error(transparent)]
    CookieKeys(#[from] crate::flow::cookie::CookieKeyError),
    #[error("cannot build server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// A built, bound, not yet serving sessiongate.
pub struct App {
    config: Arc<Config>,
    store: Arc<dyn Store>,
    callers: Arc<CallerKeys>,
    signing: Arc<SigningKeys>,
    sessions: Arc<SessionService>,
    flows: Arc<FlowService>,
    webhooks: Arc<Webhooks>,
    grpc: TcpListener,
    http: TcpListener,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
}

impl App {
    /// Builds the state and binds both ports (port 0 picks a free one: see
    /// [`App::grpc_addr`]). Nothing is served until [`App::run`].
    pub async fn build(config: Config) -> Result<Self, AppError> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    /// [`App::build`] with a given clock (tests move time instead of waiting).
    pub async fn build_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Self, AppError> {
        // The metrics recorder first, so handles the services resolve up front are live.
        crate::telemetry::metrics();
        for w in config.warnings() {
            tracing::warn!("{w}");
        }
        let store = crate::store::from_config(config.env, &config.store)?;
        if store.kind() == StoreKind::Redis {
            // Not fatal: Redis may come up after us. JWT validation works without it;
            // whatever needs it answers UNAVAILABLE until it is back.
            match store.ping().await {
                Err(e) => tracing::warn!(error = %e, "Redis is not reachable yet; continuing"),
                Ok(()) => {
                    for w in store.durability_warnings().await {
                        tracing::warn!("{w}");
                    }
                }
            }
        }
        let signing = Arc::new(SigningKeys::load_or_generate(&config.native.signing_keys)?);
        if signing.is_generated() {
            // `config` refuses this in live; in test it is the quick start's convenience.
            tracing::warn!(
                kid = signing.active().kid(),
                "no native.signing_keys configured: generated a signing key for this process only; \
                 its JWTs stop verifying at restart and no other replica can verify them"
            );
        }
        let sessions = Arc::new(SessionService::new(
            &config,
            store.clone(),
            clock.clone(),
            signing.clone(),
        ));
        // Revocations other replicas made before we started (best effort: if the store is
        // down, the listener reloads once it is subscribed).
        if let Err(e) = sessions
            .revoked()
            .reload(&*store, &Keys::new(config.env), &*clock)
            .await
        {
            tracing::warn!(error = %e, "cannot load revoked sessions yet");
        }
        crate::session::revocation::spawn_listener(
            sessions.revoked().clone(),
            store.clone(),
            Keys::new(config.env),
            clock.clone(),
            config.store.resync_every,
        );
        let flows = Arc::new(FlowService::new(
            config.env,
            &config.flows,
            &config.flow_cookie,
            CookieKeys::load(&config.flow_cookie.keys)?,
            store.clone(),
            clock.clone(),
        ));
        // Admin overrides made before we started (best effort, as above).
        if let Err(e) = flows.reload_all().await {
            tracing::warn!(error = %e, "cannot load flow overrides yet");
        }
        crate::flow::service::spawn_listener(flows.clone(), config.store.resync_every);
        let webhooks = Arc::new(Webhooks::new(&config, store.clone(), clock.clone()));
        let bind = |what, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| AppError::Bind { what, addr, source })
        };
        let grpc = bind("gRPC", config.server.grpc_addr).await?;
        let http = bind("HTTP", config.server.http_addr).await?;
        let local = |l: &TcpListener, what, addr| {
            l.local_addr()
                .map_err(|source| AppError::Bind { what, addr, source })
        };
        let grpc_addr = local(&grpc, "gRPC", config.server.grpc_addr)?;
        let http_addr = local(&http, "HTTP", config.server.http_addr)?;
        Ok(Self {
            store,
            callers: Arc::new(CallerKeys::new(&config.clients)),
            signing,
            sessions,
            flows,
            webhooks,
            config: Arc::new(config),
            grpc,
            http,
            grpc_addr,
            http_addr,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The shared store (tests read what the services wrote).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Serves until `shutdown` resolves, then: health NOT_SERVING, stop accepting, let
    /// in-flight calls finish within `server.drain_grace`, return.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), AppError> {
        let cfg = self.config.clone();
        // One gate for both doors of the edge: Envoy's gRPC Check and HTTP forward-auth.
        let edge = Arc::new(crate::edge::Gate::new(
            self.sessions.clone(),
            self.flows.clone(),
            cfg.edge.headers.clone(),
        ));
        let forward_auth = crate::http::ForwardAuth {
            gate: edge.clone(),
            callers: self.callers.clone(),
        };
        let started = std::time::Instant::now();
        let sessions = self.sessions.clone();
        let flows = self.flows.clone();
        let status_flows = self.flows.clone();
        let (health, grpc_service) = crate::grpc::server::service(Services {
            edge,
            sessions: self.sessions,
            flows: self.flows,
            callers: self.callers,
            webhooks: self.webhooks.clone(),
            max_message_bytes: cfg.server.max_message_bytes,
        })
        .await?;

        let metrics = crate::telemetry::metrics();
        let upkeep = {
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    metrics.run_upkeep();
                }
            })
        };

        let connections = Connections::new(Limits::of(&cfg.server), cfg.server.max_connections);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let stop_signal = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let deliverers = self.webhooks.spawn(stopped.clone());
        let ramps =
            crate::flow::autoramp::spawn(flows, sessions.signals().clone(), stopped.clone());
        let grpc = {
            let connections = connections.clone();
            let stopped = stop_signal(stopped.clone());
            tokio::spawn(async move {
                connections
                    .serve(self.grpc, Door::Grpc, grpc_service, stopped)
                    .await
            })
        };
        let http = {
            let connections = connections.clone();
            let stopped = stop_signal(stopped);
            let status = crate::http::StatusPage {
                sessions: sessions.clone(),
                flows: status_flows,
                env: cfg.env.as_str(),
                store: match self.store.kind() {
                    StoreKind::Memory => "embedded",
                    StoreKind::Redis => "Redis",
                },
                started,
            };
            let discovery = crate::http::Discovery::new(&cfg.native.issuer, &self.signing);
            let router = crate::http::router(
                metrics,
                self.signing.clone(),
                forward_auth,
                sessions,
                status,
                discovery,
            );
            tokio::spawn(async move {
                connections
                    .serve(self.http, Door::Http, router, stopped)
                    .await
            })
        };

        tracing::info!(
            grpc_addr = %self.grpc_addr,
            http_addr = %self.http_addr,
            env = cfg.env.as_str(),
            store = ?self.store.kind(),
            max_connections = connections.cap(),
            "sessiongate serving"
        );

        shutdown.await;
        // Readiness first, so load balancers stop sending before we stop accepting.
        tracing::info!("shutdown requested: NOT_SERVING, draining in-flight calls");
        health.not_serving().await;
        let _ = stop.send(true);
        // Each door stops accepting, sends every connection a GOAWAY and waits for it to
        // close: bound the wait.
        let drained = tokio::time::timeout(cfg.server.drain_grace, async {
            let _ = grpc.await;
            let _ = http.await;
            // Webhook deliveries in flight finish (or are left to the next holder); the ramp
            // hands its leases over.
            futures::future::join_all(deliverers).await;
            if let Some(r) = ramps {
                let _ = r.await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                grace_seconds = cfg.server.drain_grace.as_secs(),
                "drain grace elapsed; closing the remaining connections"
            );
        }
        upkeep.abort();
        tracing::info!("sessiongate stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::caller::Caller;
    use crate::config::EdgeHeaders;
    use crate::edge::{EdgeRequest, Gate, Route};
    use crate::session::ValidateRequest;

    /// A future holds the state of every path it may take and is copied whole each time it
    /// moves (into its caller's future, into the task's box), so the paths that wait on the
    /// store or a provider are boxed where they branch off. Inline, a migration made an edge
    /// check's future 8.4 KB and a cached validation's 2.5 KB, which cost every call the
    /// copies (about 7 000 instructions a call, counted with callgrind). This fails when a
    /// change brings such a path back inline.
    #[tokio::test]
    async fn the_futures_of_a_validation_and_an_edge_check_stay_small() {
        let dir = tempfile::tempdir().unwrap();
        let vars = HashMap::from([
            ("SESSIONGATE_GRPC_ADDR", "127.0.0.1:0"),
            ("SESSIONGATE_HTTP_ADDR", "127.0.0.1:0"),
        ]);
        let app = App::build(crate::config::load(&vars, dir.path(), None).unwrap())
            .await
            .unwrap();
        let validate = app.sessions.validate(ValidateRequest::default());
        let size = std::mem::size_of_val(&validate);
        assert!(
            size <= 1536,
            "SessionService::validate's future: {size} bytes"
        );
        drop(validate);
        let gate = Gate::new(
            app.sessions.clone(),
            app.flows.clone(),
            EdgeHeaders::default(),
        );
        let req = EdgeRequest {
            headers: Vec::new(),
            route: Route::default(),
            client_ip: None,
        };
        let caller = Caller::anonymous();
        let check = gate.check(&req, &caller);
        let size = std::mem::size_of_val(&check);
        assert!(size <= 2048, "Gate::check's future: {size} bytes");
    }
}
