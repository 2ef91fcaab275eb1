//! The gRPC surface: the only place that knows the generated types. Handlers decode the
//! request, call the domain, encode the answer; errors become `tonic::Status` through
//! [`crate::error`].

pub mod convert;
pub mod deadline;
pub mod ext_authz;
pub mod layers;
pub mod rollout;
pub mod server;
pub mod session;
pub mod webhooks;

/// Generated code for `sessiongate.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("sessiongate.v1");

    /// The encoded descriptor set served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("sessiongate_descriptor");
}

/// Fully qualified names of the public services, as reflection and health report them.
pub const SESSION_GATE_SERVICE: &str = "sessiongate.v1.SessionGateService";
pub const ROLLOUT_ADMIN_SERVICE: &str = "sessiongate.v1.RolloutAdminService";
pub const WEBHOOK_ADMIN_SERVICE: &str = "sessiongate.v1.WebhookAdminService";
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
pub const EXT_AUTHZ_SERVICE: &str = "envoy.service.auth.v3.Authorization";

/// Envoy's external authorization service and its imports, for reflection.
pub const EXT_AUTHZ_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("ext_authz_descriptor");

use crate::caller::Caller;
use crate::config::{Scope, Scopes};

/// The caller the auth layer established (anonymous only in open test mode).
pub(crate) fn caller<T>(req: &tonic::Request<T>) -> Caller {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_else(Caller::anonymous)
}

/// What the auth and metrics layers need to know about a request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    /// `Service/Method`, a bounded set of values for metric labels.
    pub name: &'static str,
    /// `package.Service/Method`, as OpenTelemetry's RPC conventions name it (`_OTHER` for a
    /// path that is none of sessiongate's methods).
    pub full: &'static str,
    /// The scopes any one of which lets a caller make the call; `None`: open (health,
    /// reflection).
    pub scope: Option<Scopes>,
}

/// Every RPC sessiongate serves: path, metric label, scope.
const METHODS: &[(&str, &str, Option<Scopes>)] = &[
    (
        "/sessiongate.v1.SessionGateService/ValidateSession",
        "SessionGateService/ValidateSession",
        Some(Scopes::one(Scope::Validate)),
    ),
    (
        "/sessiongate.v1.SessionGateService/MigrateSession",
        "SessionGateService/MigrateSession",
        Some(Scopes::one(Scope::Migrate)),
    ),
    (
        "/sessiongate.v1.SessionGateService/ResolveFlow",
        "SessionGateService/ResolveFlow",
        Some(Scopes::one(Scope::Flow)),
    ),
    (
        "/sessiongate.v1.SessionGateService/CreateSession",
        "SessionGateService/CreateSession",
        Some(Scopes::one(Scope::Issue)),
    ),
    (
        "/sessiongate.v1.SessionGateService/RevokeSession",
        "SessionGateService/RevokeSession",
        Some(Scopes::one(Scope::Revoke)),
    ),
    (
        "/sessiongate.v1.SessionGateService/ListSessions",
        "SessionGateService/ListSessions",
        Some(Scopes::one(Scope::Revoke).or(Scope::Admin)),
    ),
    (
        "/sessiongate.v1.RolloutAdminService/GetRollout",
        "RolloutAdminService/GetRollout",
        Some(Scopes::one(Scope::Admin)),
    ),
    (
        "/sessiongate.v1.RolloutAdminService/ListRollouts",
        "RolloutAdminService/ListRollouts",
        Some(Scopes::one(Scope::Admin)),
    ),
    (
        "/sessiongate.v1.RolloutAdminService/UpdateRollout",
        "RolloutAdminService/UpdateRollout",
        Some(Scopes::one(Scope::Admin)),
    ),
    (
        "/sessiongate.v1.WebhookAdminService/ListDeadLetters",
        "WebhookAdminService/ListDeadLetters",
        Some(Scopes::one(Scope::Admin)),
    ),
    (
        "/sessiongate.v1.WebhookAdminService/RedeliverDeadLetter",
        "WebhookAdminService/RedeliverDeadLetter",
        Some(Scopes::one(Scope::Admin)),
    ),
    (
        "/envoy.service.auth.v3.Authorization/Check",
        "Authorization/Check",
        Some(Scopes::one(Scope::Validate)),
    ),
    ("/grpc.health.v1.Health/Check", "Health/Check", None),
    ("/grpc.health.v1.Health/Watch", "Health/Watch", None),
];

/// Classifies a request path (`/package.Service/Method`).
pub fn method(path: &str) -> Method {
    if let Some((p, name, scope)) = METHODS.iter().find(|(p, _, _)| *p == path) {
        return Method {
            name,
            full: &p[1..],
            scope: *scope,
        };
    }
    if path.starts_with("/grpc.reflection.") {
        return Method {
            name: "ServerReflection",
            full: "_OTHER",
            scope: None,
        };
    }
    // Anything else is answered UNIMPLEMENTED by the router; still require a caller key so
    // that probing unknown names tells an outsider nothing.
    Method {
        name: "unknown",
        full: "_OTHER",
        scope: Some(Scopes::one(Scope::Admin)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_scopes() {
        let m = method("/sessiongate.v1.SessionGateService/CreateSession");
        assert_eq!(m.name, "SessionGateService/CreateSession");
        assert_eq!(m.scope, Some(Scopes::one(Scope::Issue)));
        assert_eq!(
            method("/sessiongate.v1.RolloutAdminService/UpdateRollout").scope,
            Some(Scopes::one(Scope::Admin))
        );
        assert_eq!(method("/grpc.health.v1.Health/Check").scope, None);
        assert_eq!(
            method("/envoy.service.auth.v3.Authorization/Check").scope,
            Some(Scopes::one(Scope::Validate))
        );
        assert_eq!(
            method("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo").scope,
            None
        );
        assert_eq!(
            method("/sessiongate.v1.SessionGateService/Nope").scope,
            Some(Scopes::one(Scope::Admin))
        );
        assert_eq!(method("garbage").name, "unknown");
    }
}
