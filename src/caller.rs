//! Who is calling: a fact of the domain (a session is revoked *by* someone, a migration is
//! charged *to* someone), established by the API-key layer in front of every RPC and read by
//! the services. It lives below both, so neither imports the other for it.

use std::sync::Arc;

use crate::error::{Error, ErrorCode, ErrorReason};

/// Who is calling, as established by the auth layer; handlers read it from the request's
/// extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The configured client name, or `anonymous` in open mode.
    pub name: Arc<str>,
    /// False in open mode: operations that must never be open check this.
    pub authenticated: bool,
    /// Holds the `issue` scope: may mint sessions, and so extend one by its JWT alone.
    pub can_issue: bool,
    /// Holds the `migrate` scope: may turn a legacy token into a session (inline, at the edge).
    pub can_migrate: bool,
    /// Holds the `flow` scope: may ask for login-flow decisions (at the edge).
    pub can_resolve_flow: bool,
    /// Its own route settings at the edge (`[[clients]] edge`), for checks that carry none.
    pub edge_route: Option<Arc<crate::config::ClientRoute>>,
}

impl Caller {
    pub fn anonymous() -> Self {
        Self {
            name: Arc::from("anonymous"),
            authenticated: false,
            can_issue: false,
            // Open mode grants validate, migrate and flow to anyone (`auth`).
            can_migrate: true,
            can_resolve_flow: true,
            edge_route: None,
        }
    }

    /// Refuses anonymous callers: for operations that are never open (`issue`, `revoke`,
    /// `admin`), whatever the env.
    pub fn require_authenticated(&self, what: &str) -> Result<(), Error> {
        if self.authenticated {
            Ok(())
        } else {
            Err(Error::new(
                ErrorCode::Unauthenticated,
                ErrorReason::CallerUnauthenticated,
                format!(
                    "{what} is never open: call with `authorization: Bearer <key>` of a configured [[clients]] key"
                ),
            ))
        }
    }
}
