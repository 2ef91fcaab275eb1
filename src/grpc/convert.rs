//! Conversions between generated types and domain types.

use std::collections::BTreeMap;

use prost_types::value::Kind;
use serde_json::{Map, Number, Value};

use super::pb;
use crate::error::{Error, ErrorReason};
use crate::session::claims::Claims;
use crate::session::model::{AuthFactor, ClientInfo, LegacyIdentity, Session, User};
use crate::session::{Action, Created, Origin, Reason, Source, Verdict, View};

/// Unix milliseconds → Timestamp.
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Timestamp → Unix milliseconds (saturating).
pub fn millis(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.nanos.clamp(0, 999_999_999)) / 1_000_000)
}

// === JSON <-> google.protobuf.Struct ===

/// Struct → JSON object. Non-finite numbers have no JSON form and are refused.
pub fn struct_to_json(s: prost_types::Struct, field: &str) -> Result<Map<String, Value>, Error> {
    s.fields
        .into_iter()
        .map(|(k, v)| Ok((k, value_to_json(v, field)?)))
        .collect()
}

/// `session_custom_claims` of CreateSession and MigrateSession: absent = none.
pub fn custom_claims_in(s: Option<prost_types::Struct>) -> Result<Map<String, Value>, Error> {
    s.map_or_else(
        || Ok(Map::new()),
        |s| struct_to_json(s, "session_custom_claims"),
    )
}

fn value_to_json(v: prost_types::Value, field: &str) -> Result<Value, Error> {
    Ok(match v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::NumberValue(n)) => {
            // Whole numbers stay integers in JSON (a claim like `"tier": 3` should not turn
            // into `3.0`).
            if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
                Value::Number(Number::from(n as i64))
            } else {
                Value::Number(Number::from_f64(n).ok_or_else(|| {
                    Error::invalid_argument(
                        ErrorReason::InvalidNumber,
                        format!("{field} holds a number that JSON cannot represent"),
                    )
                })?)
            }
        }
        Some(Kind::StructValue(s)) => Value::Object(struct_to_json(s, field)?),
        Some(Kind::ListValue(l)) => Value::Array(
            l.values
                .into_iter()
                .map(|v| value_to_json(v, field))
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// JSON object → Struct.
pub fn json_to_struct(m: &Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: m
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
    }
}

/// A verdict's claims as a Struct. A canonical native token's are rendered straight from
/// the cached compact form, field for field what `NativeClaims::to_json` builds (the test
/// `native_claims_render_exactly_as_their_json` holds the two together).
pub fn claims_out(c: &Claims) -> prost_types::Struct {
    let n = match c {
        Claims::Json(m) => return json_to_struct(m),
        Claims::Native(n) => n,
    };
    let string = |s: &str| prost_types::Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    let number = |n: i64| prost_types::Value {
        kind: Some(Kind::NumberValue(n as f64)),
    };
    let object = |fields: BTreeMap<String, prost_types::Value>| prost_types::Value {
        kind: Some(Kind::StructValue(prost_types::Struct { fields })),
    };
    let mut fields: BTreeMap<String, prost_types::Value> = n
        .custom()
        .map(|m| json_to_struct(m).fields)
        .unwrap_or_default();
    let aud = match &*n.audiences {
        [one] => string(one),
        many => prost_types::Value {
            kind: Some(Kind::ListValue(prost_types::ListValue {
                values: many.iter().map(|a| string(a)).collect(),
            })),
        },
    };
    let factors = n
        .factors()
        .iter()
        .map(|f| {
            let mut o = BTreeMap::new();
            o.insert("type".to_owned(), string(&f.kind));
            if !f.delivery.is_empty() {
                o.insert("delivery".to_owned(), string(&f.delivery));
            }
            if let Some(ms) = f.last_authenticated_at_ms {
                o.insert(
                    "last_authenticated_at".to_owned(),
                    number(ms.div_euclid(1000)),
                );
            }
            if !f.acr.is_empty() {
                o.insert("acr".to_owned(), string(&f.acr));
            }
            object(o)
        })
        .collect();
    let mut session: BTreeMap<String, prost_types::Value> = n
        .session_times()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), number(v)))
        .collect();
    session.insert("id".to_owned(), string(n.session_id()));
    session.insert(
        "authentication_factors".to_owned(),
        prost_types::Value {
            kind: Some(Kind::ListValue(prost_types::ListValue { values: factors })),
        },
    );
    for (k, v) in [
        ("iss", string(&n.issuer)),
        ("aud", aud),
        ("sub", string(n.subject())),
        ("sid", string(n.session_id())),
        ("iat", number(n.issued_at())),
        ("nbf", number(n.not_before())),
        ("exp", number(n.expires_at())),
        ("jti", string(&n.jti())),
        ("session", object(session)),
    ] {
        fields.insert(k.to_owned(), v);
    }
    prost_types::Struct { fields }
}

fn json_to_value(v: &Value) -> prost_types::Value {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(json_to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

// === Domain -> wire ===

pub fn client_in(c: Option<pb::ClientInfo>) -> ClientInfo {
    let c = c.unwrap_or_default();
    ClientInfo {
        ip_address: c.ip_address,
        user_agent: c.user_agent,
    }
}

fn client_out(c: &ClientInfo) -> pb::ClientInfo {
    pb::ClientInfo {
        ip_address: c.ip_address.clone(),
        user_agent: c.user_agent.clone(),
    }
}

pub fn factor_in(f: pb::AuthenticationFactor) -> AuthFactor {
    AuthFactor {
        kind: f.r#type,
        delivery: f.delivery,
        last_authenticated_at_ms: f.last_authenticated_at.as_ref().map(millis),
        acr: f.acr,
    }
}

fn factor_out(f: &AuthFactor) -> pb::AuthenticationFactor {
    pb::AuthenticationFactor {
        r#type: f.kind.clone(),
        delivery: f.delivery.clone(),
        last_authenticated_at: f.last_authenticated_at_ms.map(timestamp),
        acr: f.acr.clone(),
    }
}

pub fn session_out(s: &Session) -> pb::Session {
    pb::Session {
        session_id: s.session_id.clone(),
        user_id: s.user_id.clone(),
        started_at: Some(timestamp(s.started_at_ms)),
        last_accessed_at: Some(timestamp(s.last_accessed_at_ms)),
        expires_at: Some(timestamp(s.expires_at_ms)),
        authentication_factors: s.factors.iter().map(factor_out).collect(),
        attributes: Some(client_out(&s.attributes)),
        custom_claims: (!s.custom_claims.is_empty()).then(|| json_to_struct(&s.custom_claims)),
        created_via: s.created_via().to_owned(),
    }
}

pub fn user_out(u: &User) -> pb::User {
    pb::User {
        user_id: u.user_id.clone(),
        email: u.email.clone(),
        email_verified: u.email_verified,
        name: u.name.clone(),
        legacy_identities: u
            .legacy_identities
            .iter()
            .map(|li: &LegacyIdentity| pb::LegacyIdentity {
                provider: li.provider.clone(),
                subject: li.subject.clone(),
            })
            .collect(),
        created_at: Some(timestamp(u.created_at_ms)),
    }
}

fn reason_out(r: Reason) -> pb::Reason {
    match r {
        Reason::Malformed => pb::Reason::Malformed,
        Reason::TooLarge => pb::Reason::TooLarge,
        Reason::UnsupportedAlgorithm => pb::Reason::UnsupportedAlgorithm,
        Reason::BadSignature => pb::Reason::BadSignature,
        Reason::UnknownIssuer => pb::Reason::UnknownIssuer,
        Reason::UnknownKey => pb::Reason::UnknownKey,
        Reason::Expired => pb::Reason::Expired,
        Reason::NotYetValid => pb::Reason::NotYetValid,
        Reason::WrongAudience => pb::Reason::WrongAudience,
        Reason::Revoked => pb::Reason::Revoked,
        Reason::NotFound => pb::Reason::NotFound,
        Reason::LegacyRetired => pb::Reason::LegacyRetired,
        Reason::WrongEnv => pb::Reason::WrongEnv,
        Reason::InvalidClaims => pb::Reason::InvalidClaims,
    }
}

/// The verdict in the view asked for: BASIC leaves out claims, session and session_jwt
/// (the domain builds none of them for it where it can; this holds every path to it).
/// A migrated session, as MigrateSession (and ValidateSession's `migration`) answer it.
pub fn migrated_out(created: Created, replayed: bool) -> pb::MigrateSessionResponse {
    pb::MigrateSessionResponse {
        user_id: created.user.user_id.clone(),
        user: Some(user_out(&created.user)),
        session: Some(session_out(&created.session)),
        session_token: created.session_token,
        session_jwt: created.session_jwt,
        user_created: created.user_created,
        replayed,
    }
}

pub fn verdict_out(v: Verdict, view: View) -> pb::ValidateSessionResponse {
    let full = view == View::Full;
    pb::ValidateSessionResponse {
        verdict: if v.is_valid() {
            pb::Verdict::Valid
        } else {
            pb::Verdict::Invalid
        } as i32,
        reason: v.invalid.map_or(pb::Reason::Unspecified, reason_out) as i32,
        origin: match v.origin {
            Origin::Unknown => pb::Origin::Unspecified,
            Origin::New => pb::Origin::New,
            Origin::Legacy => pb::Origin::Legacy,
        } as i32,
        provider: v.provider,
        user_id: v.user_id,
        subject: v.subject,
        session_id: v.session_id,
        session: v.session.as_ref().filter(|_| full).map(session_out),
        claims: v.claims.as_ref().filter(|_| full).map(claims_out),
        expires_at: v.expires_at_ms.map(timestamp),
        session_jwt: v.session_jwt.filter(|_| full).unwrap_or_default(),
        action: match v.action {
            Action::None => pb::Action::None,
            Action::Migrate => pb::Action::Migrate,
        } as i32,
        source: match v.source {
            Source::LocalVerify => pb::DecisionSource::LocalVerify,
            Source::Cache => pb::DecisionSource::Cache,
            Source::Store => pb::DecisionSource::Store,
            Source::Upstream => pb::DecisionSource::Upstream,
        } as i32,
        migration: None,
    }
}

/// The view asked for; unset is FULL (see the proto).
pub fn view_in(v: i32) -> View {
    match pb::ValidateView::try_from(v) {
        Ok(pb::ValidateView::Basic) => View::Basic,
        _ => View::Full,
    }
}

// === ResolveFlow, RolloutAdminService ===

/// ResolveFlowRequest → the domain request (normalised; empty strings are "not given").
pub fn flow_request(r: pb::ResolveFlowRequest) -> crate::flow::Request {
    let given = |s: String| (!s.is_empty()).then_some(s);
    crate::flow::Request {
        flow: if r.flow.is_empty() {
            "login".into()
        } else {
            r.flow
        },
        user_id: given(r.user_id),
        device_id: given(r.device_id),
        flow_cookie: given(r.flow_cookie),
        ip: r.ip.trim().parse().ok(),
        country: crate::flow::resolve::normalise_country(&r.country),
        app_name: given(r.app_name),
        app_version: given(r.app_version),
        properties: r.properties.into_iter().collect(),
    }
}

pub fn flow_response(d: crate::flow::Decision) -> pb::ResolveFlowResponse {
    use crate::flow::{Flow, FlowReason as R};
    let reason = match d.reason {
        R::FlowNotFound => pb::FlowReason::FlowNotFound,
        R::Disabled => pb::FlowReason::Disabled,
        R::NotEligible => pb::FlowReason::NotEligible,
        R::ForcedLegacy => pb::FlowReason::ForcedLegacy,
        R::ForcedNew => pb::FlowReason::ForcedNew,
        R::Sticky => pb::FlowReason::Sticky,
        R::RolloutIn => pb::FlowReason::RolloutIn,
        R::RolloutOut => pb::FlowReason::RolloutOut,
        R::NoMatch => pb::FlowReason::NoMatch,
        R::Error => pb::FlowReason::Error,
    };
    pb::ResolveFlowResponse {
        flow: match d.flow {
            Flow::New => pb::Flow::New,
            Flow::Legacy => pb::Flow::Legacy,
        } as i32,
        reason: reason as i32,
        rule: d.rule,
        bucket: d.bucket,
        percentage: d.percentage,
        device_id: d.device_id,
        set_cookie: d.set_cookie.map(|c| pb::SetCookie {
            name: c.name,
            value: c.value,
            max_age_seconds: u32::try_from(c.max_age_secs).unwrap_or(u32::MAX),
            header_value: c.header_value,
        }),
        config_version: d.config_version,
    }
}

pub fn rollout(r: crate::flow::Rollout) -> pb::Rollout {
    use crate::flow::model::ListName as L;
    let mut lists = r.lists;
    let mut take = |l: L| lists.remove(&l).unwrap_or_default();
    pb::Rollout {
        flow: r.flow,
        percentage: r.percentage,
        kill_switch: r.kill_switch,
        rollback_epoch: r.rollback_epoch,
        stickiness: r.stickiness,
        allow_users: take(L::AllowUsers),
        deny_users: take(L::DenyUsers),
        allow_devices: take(L::AllowDevices),
        deny_devices: take(L::DenyDevices),
        allow_cidrs: take(L::AllowCidrs),
        deny_cidrs: take(L::DenyCidrs),
        countries: r.countries,
        min_app_versions: r.min_app_versions.into_iter().collect(),
        config_version: r.config_version,
        updated_at: r.updated_at_ms.map(timestamp),
        ramp: r.ramp.map(|v| {
            let st = v.state.as_ref();
            let last = v.steps.len().saturating_sub(1);
            pb::Ramp {
                steps: v
                    .steps
                    .iter()
                    .map(|s| pb::RampStep {
                        percentage: s.percentage,
                        hold_minutes: s.hold.map_or(0, |h| (h.as_secs() / 60) as u32),
                    })
                    .collect(),
                started: st.is_some(),
                current_step: st.map_or(0, |s| s.step),
                step_started_at: st.map(|s| timestamp(s.since_ms)),
                next_step_at: v.next_step_at_ms.map(timestamp),
                paused: st.is_some_and(|s| s.paused.is_some()),
                paused_reason: st.and_then(|s| s.paused.clone()).unwrap_or_default(),
                complete: st.is_some_and(|s| s.step as usize >= last),
            }
        }),
    }
}

pub fn rollout_update(r: pb::UpdateRolloutRequest) -> Result<crate::flow::Update, Error> {
    use crate::flow::model::ListName as L;
    use crate::flow::ramp::RampAction;
    let lists = [
        (L::AllowUsers, r.allow_users),
        (L::DenyUsers, r.deny_users),
        (L::AllowDevices, r.allow_devices),
        (L::DenyDevices, r.deny_devices),
        (L::AllowCidrs, r.allow_cidrs),
        (L::DenyCidrs, r.deny_cidrs),
    ]
    .into_iter()
    .filter_map(|(l, e)| e.map(|e| (l, e.add, e.remove)))
    .filter(|(_, a, r)| !a.is_empty() || !r.is_empty())
    .collect();
    let ramp = match pb::RampAction::try_from(r.ramp) {
        Ok(pb::RampAction::Unspecified) => None,
        Ok(pb::RampAction::Resume) => Some(RampAction::Resume),
        Ok(pb::RampAction::Skip) => Some(RampAction::Skip),
        Ok(pb::RampAction::Pause) => Some(RampAction::Pause),
        Err(_) => {
            return Err(Error::invalid_argument(
                ErrorReason::InvalidRollout,
                format!("ramp: {} is not a RampAction", r.ramp),
            ));
        }
    };
    Ok(crate::flow::Update {
        flow: r.flow,
        percentage: r.percentage,
        kill_switch: r.kill_switch,
        rollback_epoch: r.rollback_epoch,
        lists,
        clear_overrides: r.clear_overrides,
        ramp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A canonical native token's claims, rendered from the compact form, are exactly the
    /// JSON claims the token carries, converted — for one audience (a string) and several (a
    /// list), with custom claims and factors with and without optional fields.
    #[test]
    fn native_claims_render_exactly_as_their_json() {
        use crate::session::token::{self, Shape};
        use std::sync::Arc;
        for audiences in [r#"["one"]"#, r#"["one", "two"]"#] {
            let issuer = crate::session::native::jwt::tests::issuer_with(audiences);
            let now_ms = 1_800_000_000_123;
            let session = crate::session::native::jwt::tests::sample_session(now_ms);
            let jwt = issuer.mint(&session, now_ms).unwrap();
            let Ok(Shape::Jws(jws)) = token::classify(&jwt) else {
                panic!("not a JWS")
            };
            let payload = token::payload(&jws).unwrap();
            let verified = issuer
                .verify(
                    &jws,
                    &token::header(&jws).unwrap(),
                    payload.clone(),
                    now_ms / 1000,
                )
                .unwrap();
            let claims = issuer.claims(&Arc::new(verified));
            assert!(matches!(claims, Claims::Native(_)), "{audiences}");
            assert_eq!(*claims.to_json(), payload, "{audiences}");
            assert_eq!(claims_out(&claims), json_to_struct(&payload), "{audiences}");
        }
    }

    #[test]
    fn timestamps_round_trip_including_before_1970() {
        for ms in [0, 1, 999, 1_700_000_000_123, -1, -1001] {
            assert_eq!(millis(&timestamp(ms)), ms);
        }
    }

    #[test]
    fn structs_round_trip_and_keep_integers() {
        let j: Map<String, Value> = serde_json::from_str(
            r#"{"tier":3,"ratio":0.5,"tags":["a",true,null],"nested":{"x":"y"}}"#,
        )
        .unwrap();
        let back = struct_to_json(json_to_struct(&j), "f").unwrap();
        assert_eq!(back, j);
        let nan = prost_types::Struct {
            fields: [(
                "n".to_string(),
                prost_types::Value {
                    kind: Some(Kind::NumberValue(f64::NAN)),
                },
            )]
            .into(),
        };
        assert_eq!(
            struct_to_json(nan, "f").unwrap_err().reason,
            ErrorReason::InvalidNumber
        );
    }
}
