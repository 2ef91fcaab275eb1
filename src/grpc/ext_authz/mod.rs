//! `envoy.service.auth.v3.Authorization/Check`: Envoy's external authorization (and any
//! gRPC caller of it), answered by [`crate::edge::Gate`] — read Envoy's description of the
//! request, decide, write the answer Envoy applies.
//!
//! Per-route settings are `context_extensions` under `sessiongate.`: `sessiongate.cookie`,
//! `sessiongate.anonymous`, `sessiongate.migrate`, `sessiongate.flow` ([`Route::set`]).

pub mod wire;

use std::sync::Arc;

use bytes::Bytes;
use tonic::{Request, Response, Status};

use crate::edge::{Decision, EdgeRequest, Fact, Gate, Route};
use crate::error::{Error, ErrorReason};

use wire::{
    APPEND_IF_EXISTS_OR_ADD, CheckRequest, CheckResponse, DeniedHttpResponse, Field,
    HeaderValueOption, HttpStatus, OVERWRITE_IF_EXISTS_OR_ADD, OkHttpResponse, RpcStatus,
    StringValue, Struct,
};

pub use wire::authorization_server::AuthorizationServer;

/// The prefix of sessiongate's keys in Envoy's `context_extensions`.
const SETTING_PREFIX: &[u8] = b"sessiongate.";

/// The handler of `envoy.service.auth.v3.Authorization`.
pub struct ExtAuthzApi {
    gate: Arc<Gate>,
    /// Each fact's header name, ready to share into answers ([`Fact::ALL`]'s order).
    headers: [Bytes; Fact::ALL.len()],
}

impl ExtAuthzApi {
    pub fn new(gate: Arc<Gate>) -> Self {
        let headers = Fact::ALL.map(|f| Bytes::from(gate.header(f).to_owned()));
        Self { gate, headers }
    }
}

#[tonic::async_trait]
impl wire::authorization_server::Authorization for ExtAuthzApi {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let caller = super::caller(&request);
        let attributes = request.into_inner().attributes.unwrap_or_default();
        let mut settings = Vec::new();
        for e in &attributes.context_extensions {
            if let Some(key) = e.key.strip_prefix(SETTING_PREFIX) {
                settings.push((utf8(key)?, utf8(&e.value)?));
            }
        }
        let route = Route::of(&caller, settings)?;
        // Envoy's view of the client: the downstream address after its own
        // `x-forwarded-for` handling, which the client cannot write.
        let client_ip = attributes
            .source
            .and_then(|p| p.address?.socket_address)
            .and_then(|s| std::str::from_utf8(&s.address).ok()?.parse().ok());
        let http = attributes.request.and_then(|r| r.http).unwrap_or_default();
        let req = EdgeRequest {
            headers: http.header_list(),
            route,
            client_ip,
        };
        let decision = self.gate.check(&req, &caller).await?;
        Ok(Response::new(self.answer(decision)))
    }
}

impl ExtAuthzApi {
    /// The answer to `d`; the facts go in dynamic metadata too, for Envoy's RBAC and
    /// rate-limit filters.
    fn answer(&self, d: Decision) -> CheckResponse {
        match d {
            Decision::Allow {
                set,
                remove,
                set_cookies,
            } => {
                let mut headers = Vec::with_capacity(set.len());
                let mut fields = Vec::with_capacity(set.len());
                for u in set {
                    let value = Bytes::from(u.value);
                    if let Some(key) = u.fact.metadata_key() {
                        fields.push(Field {
                            key: Bytes::from_static(key.as_bytes()),
                            value: Some(StringValue {
                                string_value: value.clone(),
                            }),
                        });
                    }
                    headers.push(HeaderValueOption::new(
                        self.headers[u.fact as usize].clone(),
                        value,
                        OVERWRITE_IF_EXISTS_OR_ADD,
                    ));
                }
                CheckResponse {
                    status: Some(RpcStatus::default()),
                    ok_response: Some(OkHttpResponse {
                        headers,
                        headers_to_remove: remove,
                        // A backend's own cookies stay: ours are added beside them.
                        response_headers_to_add: set_cookies
                            .into_iter()
                            .map(|c| {
                                HeaderValueOption::new(
                                    Bytes::from_static(b"set-cookie"),
                                    Bytes::from(c),
                                    APPEND_IF_EXISTS_OR_ADD,
                                )
                            })
                            .collect(),
                    }),
                    dynamic_metadata: (!fields.is_empty()).then_some(Struct { fields }),
                    ..Default::default()
                }
            }
            Decision::Deny {
                www_authenticate,
                body,
            } => CheckResponse {
                status: Some(RpcStatus {
                    code: tonic::Code::Unauthenticated as i32,
                    message: body.clone(),
                }),
                denied_response: Some(DeniedHttpResponse {
                    status: Some(HttpStatus { code: 401 }),
                    headers: vec![HeaderValueOption::new(
                        Bytes::from_static(b"www-authenticate"),
                        Bytes::from(www_authenticate),
                        OVERWRITE_IF_EXISTS_OR_ADD,
                    )],
                    body,
                }),
                ..Default::default()
            },
        }
    }
}

fn utf8(b: &[u8]) -> Result<&str, Error> {
    std::str::from_utf8(b).map_err(|_| {
        Error::invalid_argument(
            ErrorReason::InvalidRouteSetting,
            "a `sessiongate.*` context extension is not UTF-8",
        )
    })
}
