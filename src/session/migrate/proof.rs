//! What the legacy login proved, kept in the migrated session: the token's `amr` (how the
//! user authenticated; values such as `pwd`, `otp`, `mfa`, `hwk` from RFC 8176), `acr` (the
//! assurance level it satisfied) and `auth_time` (when), as OpenID Connect Core §2 defines
//! them. A service whose step-up rule reads the session's factors then sees the MFA the user
//! already did at the legacy provider, instead of sending them through it again because the
//! provider changed.
//!
//! The claims come from the verified legacy JWT, or from UserInfo's answer for an opaque token.
//! They are the provider's word, so they are carried only when well formed and never widened:
//! an odd value is dropped, not guessed at, and a login "in the future" has no time.

use serde_json::{Map, Value};

use crate::session::model::AuthFactor;

/// At most this many `amr` values are carried (RFC 8176 registers fewer than 20).
const MAX_AMR: usize = 8;
const MAX_AMR_LEN: usize = 32;
const MAX_ACR_LEN: usize = 128;
/// How far in the future an `auth_time` may be (clock skew) before it is dropped.
const AUTH_TIME_LEEWAY_MS: i64 = 60_000;

/// The factors `claims` prove, delivered by `provider`: one per `amr` value (its `type`), each
/// with the login's `acr` and `auth_time`; without `amr`, one `legacy_login` factor if the
/// login's `acr` or `auth_time` is known; none otherwise.
pub(super) fn factors(claims: &Map<String, Value>, provider: &str, now_ms: i64) -> Vec<AuthFactor> {
    let acr = claims
        .get("acr")
        .and_then(Value::as_str)
        .filter(|a| is_token(a, MAX_ACR_LEN, |c| c.is_ascii_graphic()))
        .unwrap_or_default();
    let at = claims
        .get("auth_time")
        .and_then(Value::as_i64)
        .and_then(|s| s.checked_mul(1000))
        .filter(|&ms| ms > 0 && ms <= now_ms.saturating_add(AUTH_TIME_LEEWAY_MS));
    let factor = |kind: &str| AuthFactor {
        kind: kind.to_owned(),
        delivery: provider.to_owned(),
        last_authenticated_at_ms: at,
        acr: acr.to_owned(),
    };
    let mut amr: Vec<&str> = claims
        .get("amr")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|v| {
            is_token(v, MAX_AMR_LEN, |c| {
                c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
            })
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    amr.retain(|v| seen.insert(*v));
    amr.truncate(MAX_AMR);
    if !amr.is_empty() {
        return amr.into_iter().map(factor).collect();
    }
    if !acr.is_empty() || at.is_some() {
        return vec![factor("legacy_login")];
    }
    Vec::new()
}

fn is_token(v: &str, max: usize, allowed: impl Fn(char) -> bool) -> bool {
    !v.is_empty() && v.len() <= max && v.chars().all(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000_000;

    fn of(claims: Value) -> Vec<AuthFactor> {
        factors(claims.as_object().unwrap(), "auth0", NOW)
    }

    #[test]
    fn each_amr_value_is_a_factor_with_the_logins_acr_and_time() {
        let f = of(
            json!({"amr": ["pwd", "mfa", "otp"], "acr": "urn:example:loa:2", "auth_time": 1_799_999_000}),
        );
        assert_eq!(f.len(), 3);
        assert_eq!(
            f.iter().map(|f| f.kind.as_str()).collect::<Vec<_>>(),
            ["pwd", "mfa", "otp"]
        );
        for f in &f {
            assert_eq!(f.delivery, "auth0");
            assert_eq!(f.acr, "urn:example:loa:2");
            assert_eq!(f.last_authenticated_at_ms, Some(1_799_999_000_000));
        }
    }

    #[test]
    fn without_amr_the_login_is_one_factor_if_anything_is_known() {
        let f = of(json!({"acr": "1"}));
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].kind.as_str(), f[0].acr.as_str()),
            ("legacy_login", "1")
        );
        assert_eq!(f[0].last_authenticated_at_ms, None);
        let f = of(json!({"auth_time": 1_799_000_000}));
        assert_eq!(f[0].last_authenticated_at_ms, Some(1_799_000_000_000));
        assert!(of(json!({"sub": "x", "email": "a@example.com"})).is_empty());
    }

    #[test]
    fn odd_values_are_dropped_not_guessed_at() {
        let long = "x".repeat(33);
        let f = of(json!({
            "amr": ["mfa", "mfa", "", long, "p w d", 7, {"a": 1}, "a;b", "hwk"],
            "acr": "two words",
            "auth_time": NOW / 1000 + 3_600,
        }));
        assert_eq!(
            f.iter().map(|f| f.kind.as_str()).collect::<Vec<_>>(),
            ["mfa", "hwk"],
            "duplicates, empties, long, spaced, non-strings and separators dropped"
        );
        assert!(f.iter().all(|f| f.acr.is_empty()), "an acr with a space");
        assert!(
            f.iter().all(|f| f.last_authenticated_at_ms.is_none()),
            "a login an hour in the future"
        );
        let many: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
        assert_eq!(of(json!({"amr": many})).len(), MAX_AMR);
        assert!(of(json!({"amr": "mfa"})).is_empty(), "amr must be an array");
        assert!(of(json!({"auth_time": -5})).is_empty());
        assert!(of(json!({"auth_time": i64::MAX})).is_empty(), "overflow");
        assert!(
            of(json!({"auth_time": "1799999000"})).is_empty(),
            "a string is no time"
        );
    }
}
