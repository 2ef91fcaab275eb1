//! Sessions, all sides of the migration. Each side has its room, and data flows one way:
//!
//! - `native/` — the NEW side: sessiongate's own session tokens and JWTs (create, revoke,
//!   judge).
//! - `providers/` — the LEGACY and EXTERNAL side: the configured providers' JWTs and opaque
//!   tokens (verify, UserInfo, deny-list).
//! - `migrate/` — a legacy token becomes a native session (identity links).
//! - `replay` — the calls that mint a session made safe to repeat: MigrateSession, and
//!   CreateSession with a request id.
//! - `validate` — `ValidateSession`: one match on the token's shape, each arm one side's.
//! - `service` — the session RPCs' service: assembles the sides, and revokes across them.
//!
//! Below them all: `verdict` (the question and the answer), `token` (what a credential looks
//! like), `claims` (a verified native JWT's compact form), `model` (stored records), `record`
//! (a session's compact stored form) and `revocation` (the revoked set every replica keeps);
//! and `inspect` (the CLI's offline look at a token). Events go out through the store's one
//! envelope (`store::event`).

pub mod claims;
pub mod inspect;
mod migrate;
pub mod model;
pub mod native;
pub mod providers;
mod record;
mod replay;
pub mod revocation;
mod service;
pub mod token;
mod validate;
pub mod verdict;

pub use migrate::MigrateRequest;
pub use native::{CreateRequest, Created, Who};
pub use service::{MigratedInPassing, RevokeTarget, SessionService};
pub use verdict::{
    Action, NATIVE_PROVIDER, Origin, Reason, Source, ValidateRequest, Verdict, View,
};
