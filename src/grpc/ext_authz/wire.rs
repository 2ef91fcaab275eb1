//! Envoy's `CheckRequest` and `CheckResponse`, as much of them as sessiongate reads and
//! writes, field for field on the wire with `envoy/service/auth/v3/external_auth.proto`.
//!
//! Why not the `envoy-types` structs: Envoy describes every request at length (addresses,
//! TLS, path, every header in a `HashMap`, metadata) and decoding all of it into owned
//! strings cost more than the cached verdict it asks for. These structs decode only the
//! headers, the route's settings and the client's address, as `Bytes` that share the
//! receive buffer; prost skips every other field. `tests` proves both directions against the
//! `envoy-types` definitions.
//!
//! A map field (`map<string,string>`) is a repeated `{key = 1, value = 2}` message on the
//! wire, so it is read as a list here: no hashing, duplicates as sent. A `oneof` member is
//! written as the optional field of the same number.

use bytes::Bytes;
use prost::Message;

/// A `{key, value}` pair whose value may be a credential: `Debug` shows only the key.
#[derive(Clone, PartialEq, Message)]
#[prost(skip_debug)]
pub struct Entry {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("key", &String::from_utf8_lossy(&self.key))
            .finish_non_exhaustive()
    }
}

// === CheckRequest ===

/// `envoy.service.auth.v3.CheckRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct CheckRequest {
    #[prost(message, optional, tag = "1")]
    pub attributes: Option<AttributeContext>,
}

/// `envoy.service.auth.v3.AttributeContext`.
#[derive(Clone, PartialEq, Message)]
pub struct AttributeContext {
    #[prost(message, optional, tag = "1")]
    pub source: Option<Peer>,
    #[prost(message, optional, tag = "4")]
    pub request: Option<Request>,
    /// `map<string, string> context_extensions`.
    #[prost(message, repeated, tag = "10")]
    pub context_extensions: Vec<Entry>,
}

/// `AttributeContext.Peer`.
#[derive(Clone, PartialEq, Message)]
pub struct Peer {
    #[prost(message, optional, tag = "1")]
    pub address: Option<Address>,
}

/// `envoy.config.core.v3.Address`.
#[derive(Clone, PartialEq, Message)]
pub struct Address {
    /// The `socket_address` member of the `address` oneof.
    #[prost(message, optional, tag = "1")]
    pub socket_address: Option<SocketAddress>,
}

/// `envoy.config.core.v3.SocketAddress`.
#[derive(Clone, PartialEq, Message)]
pub struct SocketAddress {
    #[prost(bytes = "bytes", tag = "2")]
    pub address: Bytes,
}

/// `AttributeContext.Request`.
#[derive(Clone, PartialEq, Message)]
pub struct Request {
    #[prost(message, optional, tag = "2")]
    pub http: Option<HttpRequest>,
}

/// `AttributeContext.HttpRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct HttpRequest {
    /// `map<string, string> headers`.
    #[prost(message, repeated, tag = "3")]
    pub headers: Vec<Entry>,
    #[prost(message, optional, tag = "13")]
    pub header_map: Option<HeaderMap>,
}

/// `envoy.config.core.v3.HeaderMap`.
#[derive(Clone, PartialEq, Message)]
pub struct HeaderMap {
    #[prost(message, repeated, tag = "1")]
    pub headers: Vec<HeaderValue>,
}

/// `envoy.config.core.v3.HeaderValue`: `Debug` shows only the key.
#[derive(Clone, PartialEq, Message)]
#[prost(skip_debug)]
pub struct HeaderValue {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
    #[prost(bytes = "bytes", tag = "3")]
    pub raw_value: Bytes,
}

impl std::fmt::Debug for HeaderValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderValue")
            .field("key", &String::from_utf8_lossy(&self.key))
            .finish_non_exhaustive()
    }
}

impl HttpRequest {
    /// Every header Envoy sent, from `headers` and `header_map` alike (Envoy fills one or
    /// the other: `header_map` when it sends raw headers, as gRPC callers under A92 do). A
    /// header whose name or value is not UTF-8 is no credential of anyone's and is skipped.
    pub fn header_list(&self) -> Vec<(&str, &str)> {
        fn utf8(b: &[u8]) -> Option<&str> {
            std::str::from_utf8(b).ok()
        }
        let map = self.header_map.iter().flat_map(|m| &m.headers);
        let mut out = Vec::with_capacity(self.headers.len() + map.clone().count());
        out.extend(
            self.headers
                .iter()
                .filter_map(|e| Some((utf8(&e.key)?, utf8(&e.value)?))),
        );
        out.extend(map.filter_map(|h| {
            let value = if h.raw_value.is_empty() {
                &h.value
            } else {
                &h.raw_value
            };
            Some((utf8(&h.key)?, utf8(value)?))
        }));
        out
    }
}

// === CheckResponse ===

/// `envoy.service.auth.v3.CheckResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct CheckResponse {
    #[prost(message, optional, tag = "1")]
    pub status: Option<RpcStatus>,
    /// The `denied_response` member of the `http_response` oneof.
    #[prost(message, optional, tag = "2")]
    pub denied_response: Option<DeniedHttpResponse>,
    /// The `ok_response` member of the `http_response` oneof.
    #[prost(message, optional, tag = "3")]
    pub ok_response: Option<OkHttpResponse>,
    #[prost(message, optional, tag = "4")]
    pub dynamic_metadata: Option<Struct>,
}

/// `google.rpc.Status`.
#[derive(Clone, PartialEq, Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// `envoy.service.auth.v3.DeniedHttpResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct DeniedHttpResponse {
    #[prost(message, optional, tag = "1")]
    pub status: Option<HttpStatus>,
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<HeaderValueOption>,
    #[prost(string, tag = "3")]
    pub body: String,
}

/// `envoy.type.v3.HttpStatus`.
#[derive(Clone, PartialEq, Message)]
pub struct HttpStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
}

/// `envoy.service.auth.v3.OkHttpResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct OkHttpResponse {
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<HeaderValueOption>,
    #[prost(string, repeated, tag = "5")]
    pub headers_to_remove: Vec<String>,
    #[prost(message, repeated, tag = "6")]
    pub response_headers_to_add: Vec<HeaderValueOption>,
}

/// `envoy.config.core.v3.HeaderValueOption`.
#[derive(Clone, PartialEq, Message)]
pub struct HeaderValueOption {
    #[prost(message, optional, tag = "1")]
    pub header: Option<HeaderValue>,
    /// `HeaderAppendAction`.
    #[prost(int32, tag = "3")]
    pub append_action: i32,
}

/// `HeaderValueOption.HeaderAppendAction.APPEND_IF_EXISTS_OR_ADD`.
pub const APPEND_IF_EXISTS_OR_ADD: i32 = 0;
/// `HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD`.
pub const OVERWRITE_IF_EXISTS_OR_ADD: i32 = 2;

impl HeaderValueOption {
    pub fn new(key: Bytes, value: Bytes, append_action: i32) -> Self {
        Self {
            header: Some(HeaderValue {
                key,
                value,
                raw_value: Bytes::new(),
            }),
            append_action,
        }
    }
}

/// `google.protobuf.Struct` of strings: `map<string, Value> fields`.
#[derive(Clone, PartialEq, Message)]
pub struct Struct {
    #[prost(message, repeated, tag = "1")]
    pub fields: Vec<Field>,
}

/// One entry of `Struct.fields`.
#[derive(Clone, PartialEq, Message)]
pub struct Field {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(message, optional, tag = "2")]
    pub value: Option<StringValue>,
}

/// `google.protobuf.Value` holding its `string_value` member.
#[derive(Clone, PartialEq, Message)]
pub struct StringValue {
    #[prost(bytes = "bytes", tag = "3")]
    pub string_value: Bytes,
}

// The server of `envoy.service.auth.v3.Authorization`, generated by build.rs for these types.
include!(concat!(
    env!("OUT_DIR"),
    "/envoy.service.auth.v3.Authorization.rs"
));

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::envoy::service::auth::v3 as envoy;
    use envoy_types::pb::google::protobuf::{Struct as PbStruct, Value, value::Kind};

    fn full_request() -> envoy::CheckRequest {
        let mut http = envoy::attribute_context::HttpRequest {
            id: "123".into(),
            method: "GET".into(),
            path: "/orders?page=2".into(),
            host: "shop.example".into(),
            scheme: "https".into(),
            protocol: "HTTP/2".into(),
            size: 42,
            body: "ignored".into(),
            raw_body: vec![0, 1, 2],
            header_map: Some(core::HeaderMap {
                headers: vec![
                    core::HeaderValue {
                        key: "cookie".into(),
                        value: "a=1".into(),
                        ..Default::default()
                    },
                    core::HeaderValue {
                        key: "x-raw".into(),
                        raw_value: b"raw".to_vec(),
                        ..Default::default()
                    },
                    core::HeaderValue {
                        key: "x-binary".into(),
                        raw_value: vec![0xff, 0xfe],
                        ..Default::default()
                    },
                ],
            }),
            ..Default::default()
        };
        http.headers
            .insert("authorization".into(), "Bearer t".into());
        let mut attributes = envoy::AttributeContext {
            source: Some(envoy::attribute_context::Peer {
                address: Some(core::Address {
                    address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                        address: "203.0.113.7".into(),
                        port_specifier: Some(core::socket_address::PortSpecifier::PortValue(5555)),
                        ..Default::default()
                    })),
                }),
                service: "edge".into(),
                principal: "spiffe://x".into(),
                ..Default::default()
            }),
            destination: Some(Default::default()),
            request: Some(envoy::attribute_context::Request {
                time: Some(Default::default()),
                http: Some(http),
            }),
            metadata_context: Some(Default::default()),
            ..Default::default()
        };
        attributes
            .context_extensions
            .insert("sessiongate.cookie".into(), "sid".into());
        envoy::CheckRequest {
            attributes: Some(attributes),
        }
    }

    #[test]
    fn envoys_check_request_decodes_to_what_sessiongate_reads() {
        let bytes = full_request().encode_to_vec();
        let lean = CheckRequest::decode(Bytes::from(bytes)).unwrap();
        let a = lean.attributes.unwrap();
        let ip = a.source.unwrap().address.unwrap().socket_address.unwrap();
        assert_eq!(&ip.address[..], b"203.0.113.7");
        assert_eq!(a.context_extensions.len(), 1);
        assert_eq!(&a.context_extensions[0].key[..], b"sessiongate.cookie");
        assert_eq!(&a.context_extensions[0].value[..], b"sid");
        let http = a.request.unwrap().http.unwrap();
        assert_eq!(
            http.header_list(),
            [
                ("authorization", "Bearer t"),
                ("cookie", "a=1"),
                ("x-raw", "raw")
            ]
        );
        // Nothing of a header's value is in `Debug`.
        let dbg = format!("{http:?}");
        assert!(
            dbg.contains("authorization") && !dbg.contains("Bearer"),
            "{dbg}"
        );
    }

    #[test]
    fn sessiongates_check_response_decodes_with_envoys_definitions() {
        let ok = CheckResponse {
            status: Some(RpcStatus {
                code: 0,
                message: String::new(),
            }),
            ok_response: Some(OkHttpResponse {
                headers: vec![HeaderValueOption::new(
                    Bytes::from_static(b"x-user"),
                    Bytes::from_static(b"u1"),
                    OVERWRITE_IF_EXISTS_OR_ADD,
                )],
                headers_to_remove: vec!["x-sessiongate-role".into()],
                response_headers_to_add: vec![HeaderValueOption::new(
                    Bytes::from_static(b"set-cookie"),
                    Bytes::from_static(b"a=b"),
                    APPEND_IF_EXISTS_OR_ADD,
                )],
            }),
            dynamic_metadata: Some(Struct {
                fields: vec![Field {
                    key: Bytes::from_static(b"user_id"),
                    value: Some(StringValue {
                        string_value: Bytes::from_static(b"u1"),
                    }),
                }],
            }),
            ..Default::default()
        };
        let got = envoy::CheckResponse::decode(&ok.encode_to_vec()[..]).unwrap();
        let header = |k: &str, v: &str, a: core::header_value_option::HeaderAppendAction| {
            core::HeaderValueOption {
                header: Some(core::HeaderValue {
                    key: k.into(),
                    value: v.into(),
                    ..Default::default()
                }),
                append_action: a as i32,
                ..Default::default()
            }
        };
        use core::header_value_option::HeaderAppendAction as A;
        assert_eq!(
            got,
            envoy::CheckResponse {
                status: Some(Default::default()),
                http_response: Some(envoy::check_response::HttpResponse::OkResponse(
                    envoy::OkHttpResponse {
                        headers: vec![header("x-user", "u1", A::OverwriteIfExistsOrAdd)],
                        headers_to_remove: vec!["x-sessiongate-role".into()],
                        response_headers_to_add: vec![header(
                            "set-cookie",
                            "a=b",
                            A::AppendIfExistsOrAdd
                        )],
                        ..Default::default()
                    }
                )),
                dynamic_metadata: Some(PbStruct {
                    fields: [(
                        "user_id".to_owned(),
                        Value {
                            kind: Some(Kind::StringValue("u1".into()))
                        }
                    )]
                    .into()
                }),
            }
        );

        let denied = CheckResponse {
            status: Some(RpcStatus {
                code: 16,
                message: "no".into(),
            }),
            denied_response: Some(DeniedHttpResponse {
                status: Some(HttpStatus { code: 401 }),
                headers: vec![HeaderValueOption::new(
                    Bytes::from_static(b"www-authenticate"),
                    Bytes::from_static(b"Bearer"),
                    OVERWRITE_IF_EXISTS_OR_ADD,
                )],
                body: "no".into(),
            }),
            ..Default::default()
        };
        let got = envoy::CheckResponse::decode(&denied.encode_to_vec()[..]).unwrap();
        assert_eq!(
            got.http_response,
            Some(envoy::check_response::HttpResponse::DeniedResponse(
                envoy::DeniedHttpResponse {
                    status: Some(envoy_types::pb::envoy::r#type::v3::HttpStatus { code: 401 }),
                    headers: vec![header(
                        "www-authenticate",
                        "Bearer",
                        A::OverwriteIfExistsOrAdd
                    )],
                    body: "no".into(),
                }
            ))
        );
        assert_eq!(got.status.unwrap().code, 16);
    }

    #[test]
    fn garbage_never_panics_the_decoder() {
        let full = full_request().encode_to_vec();
        for cut in 0..full.len() {
            let _ = CheckRequest::decode(&full[..cut]);
        }
        let mut flipped = full.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0x5a;
            let _ = CheckRequest::decode(&flipped[..]);
            flipped[i] ^= 0x5a;
        }
    }

    /// The `.proto` files the build compiles Envoy's descriptors from are a copy of the
    /// ones the `envoy-types` crate ships (the structs these tests decode with): after an
    /// update of that crate, this test names any file that changed and how to copy it.
    #[test]
    fn the_vendored_envoy_protos_are_those_of_the_envoy_types_crate() {
        let out = std::process::Command::new(env!("CARGO"))
            .args(["metadata", "--format-version", "1", "--offline"])
            .arg("--manifest-path")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .output()
            .expect("cargo runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let manifest = meta["packages"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "envoy-types"))
            .and_then(|p| p["manifest_path"].as_str())
            .expect("envoy-types is a dependency");
        let theirs = std::path::Path::new(manifest)
            .parent()
            .unwrap()
            .join("proto");
        let ours = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("third_party/envoy-api");
        let mut files = Vec::new();
        let mut dirs = vec![ours.clone()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "proto") {
                    files.push(p.strip_prefix(&ours).unwrap().to_owned());
                }
            }
        }
        assert!(files.len() >= 19, "{files:?}");
        let stale: Vec<_> = files
            .iter()
            .filter(|f| std::fs::read(ours.join(f)).ok() != std::fs::read(theirs.join(f)).ok())
            .collect();
        assert!(
            stale.is_empty(),
            "third_party/envoy-api differs from {}: {stale:?}; copy each file from there",
            theirs.display()
        );
    }
}
