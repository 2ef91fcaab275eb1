//! sessiongate: one gRPC call that validates any session — sessiongate's own, a legacy
//! provider's or an external new provider's — while a fleet migrates from the legacy auth
//! provider to a new session system without logging anyone out.
//!
//! Data flows one way: [`grpc`] → domain → [`store`]. `grpc` is the only module that knows the
//! generated protobuf types; [`error`] maps every call-level error to a `tonic::Status` in one
//! place. docs/design.md is the map; the README says how to run and configure it.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod app;
pub mod auth;
pub mod caller;
pub mod cli;
pub mod clock;
pub mod config;
pub mod edge;
pub mod error;
pub mod flow;
pub mod grpc;
pub mod http;
pub mod ids;
pub mod keys;
pub mod net;
pub mod session;
pub mod shutdown;
pub mod signals;
pub mod store;
pub mod telemetry;
pub mod upstream;
pub mod webhooks;

pub use app::App;
pub use config::Config;
