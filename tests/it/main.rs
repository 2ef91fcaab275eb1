//! The one integration-test binary (one link on a 2-core machine): every test runs the real
//! service — gRPC over loopback, real redis-server processes.

mod attacks;
mod backchannel;
mod cli;
mod connections;
mod differential;
mod edge;
mod faults;
mod flows;
mod hostile;
mod migrate;
mod observability;
mod providers;
mod ramp;
mod server;
mod sessions;
mod store;
mod support;
mod telemetry;
mod upstream_faults;
mod webhooks;
mod wycheproof;
