//! `sessiongate.v1.WebhookAdminService`: decode, call the domain, encode.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{convert, pb};
use crate::error::{Error, ErrorReason};
use crate::webhooks::{DeadLetter, Webhooks};

/// Dead letters per listing when the request names no page size.
const DEFAULT_PAGE: usize = 100;

/// The handlers of `WebhookAdminService`.
pub struct WebhookAdminApi {
    webhooks: Arc<Webhooks>,
}

impl WebhookAdminApi {
    pub fn new(webhooks: Arc<Webhooks>) -> Self {
        Self { webhooks }
    }
}

fn dead_letter(l: DeadLetter) -> pb::DeadLetter {
    let event = match &l.event {
        serde_json::Value::Object(m) => Some(convert::json_to_struct(m)),
        _ => None,
    };
    pb::DeadLetter {
        event_id: l.event_id,
        event_type: l.event_type,
        event,
        attempts: l.attempts,
        last_error: l.last_error,
        dead_at: Some(convert::timestamp(l.dead_at_ms)),
    }
}

#[tonic::async_trait]
impl pb::webhook_admin_service_server::WebhookAdminService for WebhookAdminApi {
    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let r = request.into_inner();
        let limit = match r.page_size {
            0 => DEFAULT_PAGE,
            n => n as usize,
        };
        let letters = self.webhooks.dead_letters(&r.webhook, limit).await?;
        Ok(Response::new(pb::ListDeadLettersResponse {
            dead_letters: letters.into_iter().map(dead_letter).collect(),
        }))
    }

    async fn redeliver_dead_letter(
        &self,
        request: Request<pb::RedeliverDeadLetterRequest>,
    ) -> Result<Response<pb::RedeliverDeadLetterResponse>, Status> {
        let r = request.into_inner();
        let redelivered = match (r.all, r.event_id.is_empty()) {
            (true, true) => self.webhooks.redeliver_all(&r.webhook).await?,
            (false, false) => {
                self.webhooks.redeliver(&r.webhook, &r.event_id).await?;
                1
            }
            _ => {
                return Err(Error::invalid_argument(
                    ErrorReason::TargetRequired,
                    "name one dead letter (`event_id`) or set `all`, not both",
                )
                .into());
            }
        };
        Ok(Response::new(pb::RedeliverDeadLetterResponse {
            redelivered,
        }))
    }
}
