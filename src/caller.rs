//! Who is calling: a fact of the domain (a session is revoked *by* someone, a migration is
//! charged *to* someone), established by the API-key layer in front of every RPC and read by
//! the services. It lives below both, so neither imports the other for it.

use std::sync::Arc;

use crate::config::{Scope, Scopes};
use crate::error::{Error, ErrorCode, ErrorReason};

/// Scopes that an anonymous caller holds in open mode.
/// Never `revoke`: in open mode anyone could log anyone out (a session id or a user's legacy
/// token is no secret to every service that sees them).
pub const OPEN_SCOPES: [Scope; 3] = [Scope::Validate, Scope::Migrate, Scope::Flow];

/// Who is calling, as established by the auth layer; handlers read it from the request's
/// extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The configured client name, or `anonymous` in open mode.
    pub name: Arc<str>,
    /// False in open mode: operations that must never be open check this.
    pub authenticated: bool,
    /// What it may do. Beyond the RPC's own scope (checked by the key layer), services read
    /// `issue` (may extend a session by its JWT alone), `migrate` and `flow` (what a route at
    /// the edge may ask for).
    pub scopes: Scopes,
    /// Its own route settings at the edge (`[[clients]] edge`), for checks that carry none.
    pub edge_route: Option<Arc<crate::config::ClientRoute>>,
}

impl Caller {
    pub fn anonymous() -> Self {
        Self {
            name: Arc::from("anonymous"),
            authenticated: false,
            scopes: Scopes::of(&OPEN_SCOPES),
            edge_route: None,
        }
    }

    pub fn may(&self, scope: Scope) -> bool {
        self.scopes.contains(scope)
    }

    /// Refuses a caller without any of `need` (one scope, or a choice of them), for `what` it
    /// asked ("this call", "auto_migrate"): `PERMISSION_DENIED SCOPE_MISSING`.
    pub fn require(&self, need: impl Into<Scopes>, what: &str) -> Result<(), Error> {
        let need = need.into();
        if self.scopes.meets(need) {
            return Ok(());
        }
        Err(Error::new(
            ErrorCode::PermissionDenied,
            ErrorReason::ScopeMissing,
            format!(
                "client `{}` lacks scope {} for {what}",
                self.name,
                need.describe()
            ),
        ))
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
