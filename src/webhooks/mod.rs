//! Events out: every `[[webhooks]]` receiver gets the change events it asked for, signed per
//! the Standard Webhooks specification ([`sign`]), at least once, a user's events in order
//! ([`deliver`]), retried for a day and then kept as dead letters ([`dead`]) that an admin
//! lists and redelivers.
//!
//! Events are appended to the store's event stream by the write they describe (a session
//! created, a user migrated, a rollout changed, …); each webhook reads that stream through a
//! consumer group of its own, so a receiver that is down loses nothing and one receiver's
//! outage never slows another.

pub mod dead;
mod deliver;
pub mod send;
pub mod sign;

use std::sync::Arc;

use tokio::sync::watch;

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, WebhookConfig};
use crate::error::{Error, ErrorCode, ErrorReason};
use crate::store::Store;
use crate::store::keys::Keys;
pub use dead::DeadLetter;
use sign::{Envelope, Signer};

/// The most dead letters one listing returns.
pub const MAX_DEAD_LETTERS_LISTED: usize = 1000;

/// One receiver, ready to send to.
struct Endpoint {
    cfg: WebhookConfig,
    signer: Signer,
    client: reqwest::Client,
    /// Its consumer group on the event stream.
    group: String,
    /// Where a new consumer group starts reading (Unix ms): when this process started, with a
    /// minute's margin for clocks that disagree — a webhook added with this deploy gets every
    /// event from it on, however late its deliverer first takes the lease.
    since_ms: i64,
}

/// What every deliverer shares.
struct Shared {
    store: Arc<dyn Store>,
    keys: Keys,
    clock: Arc<dyn Clock>,
}

/// The configured webhooks: their deliverers and their dead letters.
pub struct Webhooks {
    endpoints: Vec<Arc<Endpoint>>,
    shared: Arc<Shared>,
}

impl Webhooks {
    pub fn new(config: &Config, store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        let keys = Keys::new(config.env);
        // The wall clock, not `clock`: stream ids are Redis' wall time.
        let since_ms = SystemClock.now_ms() - 60_000;
        let endpoints = config
            .webhooks
            .iter()
            .map(|w| {
                Arc::new(Endpoint {
                    signer: Signer::new(&w.secrets),
                    client: crate::upstream::http::http_client(
                        w.timeout,
                        w.timeout,
                        config.server.upstream_proxy.as_ref(),
                    ),
                    group: keys.webhook_group(&w.name),
                    since_ms,
                    cfg: w.clone(),
                })
            })
            .collect();
        Self {
            endpoints,
            shared: Arc::new(Shared { store, keys, clock }),
        }
    }

    /// Starts one deliverer per webhook; each ends when `stop` turns true, after letting its
    /// deliveries in flight finish (a few seconds at most).
    pub fn spawn(&self, stop: watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        self.endpoints
            .iter()
            .map(|ep| tokio::spawn(deliver::run(ep.clone(), self.shared.clone(), stop.clone())))
            .collect()
    }

    fn endpoint(&self, name: &str) -> Result<&Arc<Endpoint>, Error> {
        self.endpoints
            .iter()
            .find(|e| e.cfg.name == name)
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::NotFound,
                    ErrorReason::WebhookNotFound,
                    format!(
                        "no webhook is named `{}`",
                        name.chars().take(64).collect::<String>()
                    ),
                )
            })
    }

    /// Up to `limit` of a webhook's dead letters, the most recently buried first.
    pub async fn dead_letters(
        &self,
        webhook: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, Error> {
        let ep = self.endpoint(webhook)?;
        let sh = &self.shared;
        Ok(dead::list(
            &*sh.store,
            &sh.keys,
            &ep.cfg.name,
            sh.clock.now_ms(),
            limit.min(MAX_DEAD_LETTERS_LISTED),
        )
        .await?)
    }

    /// Delivers dead letter `event_id` of `webhook` now; delivered, it is no longer a dead
    /// letter. A refusal keeps it (with the new attempt counted) and is an error.
    pub async fn redeliver(&self, webhook: &str, event_id: &str) -> Result<(), Error> {
        let ep = self.endpoint(webhook)?;
        let sh = &self.shared;
        // Only an id sessiongate minted can name a dead letter (and become part of a key).
        let not_found = || {
            Error::new(
                ErrorCode::NotFound,
                ErrorReason::DeadLetterNotFound,
                format!(
                    "webhook `{}` has no dead letter of that event id",
                    ep.cfg.name
                ),
            )
        };
        let id = uuid::Uuid::parse_str(event_id)
            .map_err(|_| not_found())?
            .to_string();
        let mut letter = dead::get(&*sh.store, &sh.keys, &ep.cfg.name, &id)
            .await?
            .ok_or_else(not_found)?;
        let envelope = Envelope::of(&letter.event)
            .ok_or_else(|| Error::internal("a dead letter holds no event envelope"))?;
        let now_ms = sh.clock.now_ms();
        let name = ep.cfg.name.clone();
        match send::attempt(
            &ep.client,
            ep.cfg.url.get(),
            &ep.signer,
            &envelope,
            now_ms.div_euclid(1000),
        )
        .await
        {
            Ok(()) => {
                sh.store.write(dead::remove(&sh.keys, &name, &id)).await?;
                metrics::counter!("sessiongate_webhook_deliveries_total", "webhook" => name, "result" => "redelivered").increment(1);
                Ok(())
            }
            Err(why) => {
                letter.attempts += 1;
                letter.last_error = why.clone();
                sh.store
                    .write(dead::bury(
                        &sh.keys,
                        &name,
                        &letter,
                        ep.cfg.dead_letter_retention,
                        now_ms,
                    )?)
                    .await?;
                Err(Error::unavailable(
                    ErrorReason::WebhookUndelivered,
                    format!("the receiver did not take the event ({why}); it stays a dead letter"),
                ))
            }
        }
    }

    /// Redelivers every dead letter of `webhook`, oldest first, stopping at the first the
    /// receiver refuses (delivering later ones first would break a user's order further).
    /// How many were delivered.
    pub async fn redeliver_all(&self, webhook: &str) -> Result<u32, Error> {
        let mut letters = self.dead_letters(webhook, MAX_DEAD_LETTERS_LISTED).await?;
        letters.reverse();
        let mut delivered = 0;
        for l in letters {
            match self.redeliver(webhook, &l.event_id).await {
                Ok(()) => delivered += 1,
                // Redelivered meanwhile by another call.
                Err(e) if e.reason == ErrorReason::DeadLetterNotFound => {}
                Err(mut e) => {
                    e.message = format!("{delivered} redelivered, then: {}", e.message);
                    return Err(e);
                }
            }
        }
        Ok(delivered)
    }
}
