//! ResolveFlow and RolloutAdminService: a sticky, monotone rollout of the new login flow
//! (docs/design.md, "Rolling out the new login flow").
//!
//! - [`engine`]: a pure evaluator with Unleash's semantics (what a flow's strategies say);
//! - [`model`]: a flow's effective settings, the file's config with admin overrides on top;
//! - [`resolve`]: the service rules around the engine (kill switch, gates, lists, stickiness);
//! - [`cookie`]: the signed cookie that keeps a device on NEW;
//! - [`service`]: overrides in the shared store, replicated to every replica;
//! - [`ramp`]: a schedule that raises the percentage by itself and pauses when a guard trips;
//! - [`autoramp`]: the task that moves ramps (one replica per flow, by lease);
//! - [`simulate`]: `sessiongate flow simulate`, the dry run of a change.

pub mod autoramp;
pub mod cookie;
pub mod engine;
pub mod model;
pub mod ramp;
pub mod resolve;
pub mod service;
pub mod simulate;

pub use resolve::{Decision, Flow, FlowReason, Request};
pub use service::{FlowService, Rollout, Update};

#[cfg(test)]
mod tests;
