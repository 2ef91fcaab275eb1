//! `envoy.service.auth.v3.Authorization/Check`: Envoy's external authorization (and any
//! gRPC caller of it), answered by [`crate::edge::Gate`] — decode Envoy's description of the
//! request, decide, encode the answer Envoy applies.

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
    HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, HttpStatusCode, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};

use crate::edge::{Decision, EdgeRequest, Gate, Route};

/// Per-route settings, as Envoy's `context_extensions` carry them.
const COOKIE: &str = "sessiongate.cookie";
const ANONYMOUS: &str = "sessiongate.anonymous";

/// The handler of `envoy.service.auth.v3.Authorization`.
pub struct ExtAuthzApi {
    gate: Arc<Gate>,
}

impl ExtAuthzApi {
    pub fn new(gate: Arc<Gate>) -> Self {
        Self { gate }
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzApi {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let caller = super::caller(&request);
        let attributes = request.into_inner().attributes.unwrap_or_default();
        let http = attributes.request.and_then(|r| r.http).unwrap_or_default();
        // Envoy fills `headers`, or only `header_map` when it sends raw headers (and gRPC
        // callers under A92 fill only `header_map`): read both.
        let mut headers: Vec<(&str, &str)> = http
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if let Some(map) = &http.header_map {
            headers.extend(map.headers.iter().filter_map(|h| {
                let value = if h.raw_value.is_empty() {
                    h.value.as_str()
                } else {
                    std::str::from_utf8(&h.raw_value).ok()?
                };
                Some((h.key.as_str(), value))
            }));
        }
        let ext = &attributes.context_extensions;
        let route = Route {
            cookie: ext.get(COOKIE).filter(|c| !c.is_empty()).cloned(),
            anonymous: ext.get(ANONYMOUS).is_some_and(|v| v == "true"),
        };
        let decision = self
            .gate
            .check(&EdgeRequest { headers, route }, &caller)
            .await?;
        Ok(Response::new(check_response(decision)))
    }
}

fn check_response(d: Decision) -> CheckResponse {
    match d {
        Decision::Allow { set, remove } => {
            let metadata = Struct {
                fields: set
                    .iter()
                    .filter_map(|(name, value)| {
                        Some((
                            metadata_key(name)?.to_owned(),
                            Value {
                                kind: Some(Kind::StringValue(value.clone())),
                            },
                        ))
                    })
                    .collect(),
            };
            CheckResponse {
                status: Some(rpc::Status {
                    code: tonic::Code::Ok as i32,
                    ..Default::default()
                }),
                dynamic_metadata: Some(metadata),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: set
                        .into_iter()
                        .map(|(k, v)| header(k, v, HeaderAppendAction::OverwriteIfExistsOrAdd))
                        .collect(),
                    headers_to_remove: remove,
                    ..Default::default()
                })),
            }
        }
        Decision::Deny {
            www_authenticate,
            body,
        } => CheckResponse {
            status: Some(rpc::Status {
                code: tonic::Code::Unauthenticated as i32,
                message: body.clone(),
                ..Default::default()
            }),
            dynamic_metadata: None,
            http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                status: Some(HttpStatus {
                    code: HttpStatusCode::Unauthorized as i32,
                }),
                headers: vec![header(
                    "www-authenticate",
                    www_authenticate,
                    HeaderAppendAction::OverwriteIfExistsOrAdd,
                )],
                body,
            })),
        },
    }
}

/// The dynamic-metadata key of an identity header; none for the session JWT (a credential
/// has no place in metadata that RBAC logs and access logs may print).
fn metadata_key(header: &str) -> Option<&'static str> {
    use crate::edge::{ORIGIN, PROVIDER, SESSION_ID, SUBJECT, USER_ID};
    Some(match header {
        USER_ID => "user_id",
        SESSION_ID => "session_id",
        ORIGIN => "origin",
        PROVIDER => "provider",
        SUBJECT => "subject",
        _ => return None,
    })
}

fn header(key: &str, value: String, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value,
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    }
}
