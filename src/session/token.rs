//! Classifying a credential and taking a compact JWS apart — before trusting any of it.
//!
//! Nothing here verifies anything: it decides which verifier a token goes to, and refuses
//! shapes no verifier should see (docs/design.md, "How a verdict is decided", steps 1–2).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::model::Redacted;
use super::verdict::Reason;

/// The prefix of sessiongate's opaque session tokens.
pub const NATIVE_TOKEN_PREFIX: &str = "sgs_";
/// Random bytes in a native token (256 bits).
const NATIVE_TOKEN_BYTES: usize = 32;
/// Length of the base64url body of a native token.
const NATIVE_TOKEN_BODY_LEN: usize = 43;

/// What a credential looks like.
#[derive(Debug, PartialEq, Eq)]
pub enum Shape<'a> {
    /// `sgs_` + 43 base64url characters.
    NativeOpaque,
    /// A compact JWS: three base64url parts.
    Jws(Jws<'a>),
    /// Neither: perhaps a legacy provider's opaque token.
    Other,
}

/// The parts of a compact JWS, still encoded.
#[derive(PartialEq, Eq, Clone, Copy)]
pub struct Jws<'a> {
    pub header: &'a str,
    pub payload: &'a str,
    pub signature: &'a str,
    /// `header.payload`: what the signature covers.
    pub signing_input: &'a str,
}

impl std::fmt::Debug for Jws<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jws")
            .field("signing_input", &Redacted(self.signing_input))
            .field("signature", &Redacted(self.signature))
            .finish()
    }
}

/// Whether every byte of `s` is in the base64url alphabet.
fn is_b64url(s: &str) -> bool {
    // Range compares OR-ed together, folded without early exit: the compiler vectorises
    // them 32 bytes at a time (a JWT is ~1 KB and every validation checks all of it; a
    // table lookup per byte cost ~0.5 ns a byte, `all()` with a branchy predicate ~3 ns).
    s.bytes().fold(true, |ok, b| {
        ok & ((b.wrapping_sub(b'A') < 26)
            | (b.wrapping_sub(b'a') < 26)
            | (b.wrapping_sub(b'0') < 10)
            | (b == b'-')
            | (b == b'_'))
    })
}

/// Classifies `token` by shape alone. `sgs_` tokens of the wrong shape are malformed, not
/// "other": they must never reach a legacy provider.
pub fn classify(token: &str) -> Result<Shape<'_>, Reason> {
    if let Some(body) = token.strip_prefix(NATIVE_TOKEN_PREFIX) {
        return if body.len() == NATIVE_TOKEN_BODY_LEN && is_b64url(body) {
            Ok(Shape::NativeOpaque)
        } else {
            Err(Reason::Malformed)
        };
    }
    // The dots by `memchr` (SIMD): `str::split`'s searcher reads a JWT a word at a time, and
    // every validation of a JWT looks for its dots (~0.2 µs of a cached validation, in perf).
    let mut dots = memchr::memchr_iter(b'.', token.as_bytes());
    match (dots.next(), dots.next(), dots.next()) {
        (Some(d1), Some(d2), None) => {
            let (h, p, s) = (&token[..d1], &token[d1 + 1..d2], &token[d2 + 1..]);
            if h.is_empty() || p.is_empty() || !is_b64url(h) || !is_b64url(p) || !is_b64url(s) {
                return Err(Reason::Malformed);
            }
            Ok(Shape::Jws(Jws {
                header: h,
                payload: p,
                signature: s,
                signing_input: &token[..d2],
            }))
        }
        // One dot, or three and more (a JWE has four): not ours to decode.
        (Some(_), _, _) => Err(Reason::Malformed),
        (None, _, _) => Ok(Shape::Other),
    }
}

/// The prefix of sessiongate's caller API keys.
pub const CALLER_KEY_PREFIX: &str = "sgk_";

/// Whether `token` may be shown to a provider (UserInfo, introspection): visible ASCII only
/// (nothing that could split or smuggle a header), and never a credential of sessiongate's
/// own — a session token or a caller key sent to another party would leak it.
pub fn upstream_safe(token: &str) -> bool {
    !token.is_empty()
        && token.bytes().all(|b| (0x21..0x7f).contains(&b))
        && !token.starts_with(NATIVE_TOKEN_PREFIX)
        && !token.starts_with(CALLER_KEY_PREFIX)
}

/// A new native opaque token: `sgs_` + 256 random bits, base64url.
pub fn new_native_token() -> String {
    let bytes: [u8; NATIVE_TOKEN_BYTES] = rand::random();
    format!("{NATIVE_TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The JOSE header fields sessiongate looks at. Unknown fields are ignored; duplicate fields
/// are refused by serde (a JSON object with two `alg`s is ambiguous on purpose).
#[derive(Debug, Deserialize)]
pub struct Header {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub typ: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
    #[serde(default)]
    jku: Option<Value>,
    #[serde(default)]
    jwk: Option<Value>,
    #[serde(default)]
    x5u: Option<Value>,
    #[serde(default)]
    x5c: Option<Value>,
    /// A content type (`cty: "JWT"` announces a nested token): access tokens have none.
    #[serde(default)]
    cty: Option<Value>,
    /// RFC 7797 unencoded payloads: never for JWTs.
    #[serde(default)]
    b64: Option<Value>,
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, Reason> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| Reason::Malformed)?;
    // JOSE headers and claims are JSON objects; serde would also fill a struct from an array.
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(Reason::Malformed);
    }
    serde_json::from_slice(&bytes).map_err(|_| Reason::Malformed)
}

/// Decodes and screens the header: no critical extensions we would have to understand, no
/// key material or key URLs carried by the token itself (a token must never pick its own
/// key), and a `typ` of a JWT access token.
/// The `typ`s an access token or a session JWT may carry (absent is fine too).
pub const ACCESS_TYPS: &[&str] = &["JWT", "at+jwt", "application/at+jwt"];
/// The `typ`s a back-channel logout token may carry: never an access token's, so that neither
/// passes for the other.
pub const LOGOUT_TYPS: &[&str] = &["JWT", "logout+jwt", "application/logout+jwt"];

pub fn header(jws: &Jws<'_>) -> Result<Header, Reason> {
    header_typed(jws, ACCESS_TYPS)
}

/// The header, refusing a `typ` outside `typs` (compared without case).
pub fn header_typed(jws: &Jws<'_>, typs: &[&str]) -> Result<Header, Reason> {
    // No key named twice, at any depth (serde's derive only notices the fields it knows).
    let UniqueKeys(raw) = decode_json(jws.header)?;
    let h: Header = serde_json::from_value(Value::Object(raw)).map_err(|_| Reason::Malformed)?;
    if h.crit.is_some()
        || h.jku.is_some()
        || h.jwk.is_some()
        || h.x5u.is_some()
        || h.x5c.is_some()
        || h.cty.is_some()
        || h.b64.is_some()
    {
        return Err(Reason::Malformed);
    }
    match h.typ.as_deref() {
        None => {}
        Some(t) if typs.iter().any(|ok| t.eq_ignore_ascii_case(ok)) => {}
        Some(_) => return Err(Reason::Malformed),
    }
    Ok(h)
}

/// Decodes the payload as a JSON object (unverified). A claim named twice is refused:
/// serde_json would keep the last one, another library the first, and that disagreement is
/// an attack (`{"sub":"alice","sub":"admin"}`, RFC 8725 §2.6).
pub fn payload(jws: &Jws<'_>) -> Result<Map<String, Value>, Reason> {
    decode_json::<UniqueKeys>(jws.payload).map(|u| u.0)
}

/// The largest NumericDate magnitude accepted (about 31 million years): far beyond any real
/// token, and small enough that sums and differences of two dates (`exp - iat`, `exp +
/// leeway`, seconds to milliseconds) can never overflow an `i64`.
pub const MAX_NUMERIC_DATE: i64 = 1_000_000_000_000_000;

/// An RFC 7519 NumericDate: a JSON number of seconds (fractions truncated), sane in magnitude,
/// integer or float alike; anything else (a string, NaN, 1e300, 2^62) is `None`.
pub fn numeric_date(v: &Value) -> Option<i64> {
    if let Some(i) = v.as_i64() {
        return (i.unsigned_abs() < MAX_NUMERIC_DATE as u64).then_some(i);
    }
    let f = v.as_f64()?;
    (f.is_finite() && f.abs() < MAX_NUMERIC_DATE as f64).then_some(f as i64)
}

/// True if the `aud` claim (a string, or an array of strings) names one of `audiences`.
pub fn audience_matches(claims: &Map<String, Value>, audiences: &[String]) -> bool {
    let ok = |a: &str| audiences.iter().any(|x| x == a);
    match claims.get("aud") {
        Some(Value::String(a)) => ok(a),
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(ok),
        _ => false,
    }
}

/// A JSON object whose keys are distinct at every depth (`{"a":{"role":"user","role":"admin"}}`
/// is as ambiguous as a duplicate at the top).
struct UniqueKeys(Map<String, Value>);

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match UniqueValue::deserialize(d)?.0 {
            Value::Object(m) => Ok(UniqueKeys(m)),
            _ => Err(serde::de::Error::custom("not a JSON object")),
        }
    }
}

/// Any JSON value, refused if an object in it names a key twice.
struct UniqueValue(Value);

impl<'de> serde::Deserialize<'de> for UniqueValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = UniqueValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<UniqueValue, E> {
                Ok(UniqueValue(Value::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<UniqueValue, E> {
                Ok(UniqueValue(Value::from(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<UniqueValue, E> {
                Ok(UniqueValue(Value::from(v)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<UniqueValue, E> {
                Ok(UniqueValue(Value::from(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<UniqueValue, E> {
                Ok(UniqueValue(Value::String(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<UniqueValue, E> {
                Ok(UniqueValue(Value::String(v)))
            }
            fn visit_unit<E>(self) -> Result<UniqueValue, E> {
                Ok(UniqueValue(Value::Null))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<UniqueValue, A::Error> {
                let mut v = Vec::new();
                while let Some(UniqueValue(item)) = access.next_element()? {
                    v.push(item);
                }
                Ok(UniqueValue(Value::Array(v)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<UniqueValue, A::Error> {
                let mut m = Map::new();
                while let Some((k, UniqueValue(v))) = access.next_entry::<String, UniqueValue>()? {
                    if m.contains_key(&k) {
                        return Err(serde::de::Error::custom("duplicate key"));
                    }
                    m.insert(k, v);
                }
                Ok(UniqueValue(Value::Object(m)))
            }
        }
        d.deserialize_any(Visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn native_tokens_are_recognised_by_exact_shape() {
        let t = new_native_token();
        assert_eq!(t.len(), 4 + 43);
        assert_eq!(classify(&t), Ok(Shape::NativeOpaque));
        assert_eq!(classify("sgs_short"), Err(Reason::Malformed));
        assert_eq!(classify(&format!("{t}x")), Err(Reason::Malformed));
        assert_ne!(new_native_token(), t);
    }

    #[test]
    fn the_base64url_alphabet_is_exactly_its_64_bytes() {
        for b in 0..=255u8 {
            let want = b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
            // Alone, and after 40 good bytes (past the vectorised stride).
            let long = format!("{}{}", "A".repeat(40), b as char);
            assert_eq!(is_b64url(&(b as char).to_string()), want, "{b:#x}");
            assert_eq!(is_b64url(&long), want, "{b:#x}");
        }
        assert!(is_b64url(""));
    }

    #[test]
    fn debug_output_never_holds_the_token() {
        let token = "aGVhZA.c2VjcmV0LXBheWxvYWQ.c2ln";
        let shown = format!("{:?}", classify(token).unwrap());
        assert!(
            !shown.contains("c2VjcmV0") && !shown.contains("c2ln"),
            "{shown}"
        );
    }

    #[test]
    fn jws_shapes() {
        let Ok(Shape::Jws(j)) = classify("aGVhZA.cGF5.c2ln") else {
            panic!()
        };
        assert_eq!((j.header, j.payload), ("aGVhZA", "cGF5"));
        assert_eq!(j.signing_input, "aGVhZA.cGF5");
        assert_eq!(j.signature, "c2ln");
        // alg=none tokens have an empty signature: still a JWS shape, refused later by alg.
        assert!(matches!(classify("aGVhZA.cGF5."), Ok(Shape::Jws(_))));
        for bad in [
            ".",
            "..",
            "...",
            "a.b",
            "a.b.c.",
            "a.b.c.d.e",
            "a.b.c.d",
            ".b.c",
            "a..c",
            "a.b+.c",
            "a.b.c=",
            "a.b.c ",
        ] {
            assert_eq!(classify(bad), Err(Reason::Malformed), "{bad}");
        }
        assert_eq!(classify("opaque-legacy-token"), Ok(Shape::Other));
    }

    #[test]
    fn threat_16_duplicate_claims_are_refused() {
        let jws = |p: &str| format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(p));
        let parse = |t: &str| match classify(t).unwrap() {
            Shape::Jws(j) => payload(&j),
            _ => panic!(),
        };
        assert!(parse(&jws(r#"{"sub":"alice","exp":1}"#)).is_ok());
        assert_eq!(
            parse(&jws(r#"{"sub":"alice","sub":"admin"}"#)),
            Err(Reason::Malformed)
        );
        assert_eq!(parse(&jws(r#"{"exp":1,"exp":2}"#)), Err(Reason::Malformed));
        // At every depth: in an object, in an object in an array.
        assert_eq!(
            parse(&jws(r#"{"sub":"a","org":{"role":"user","role":"admin"}}"#)),
            Err(Reason::Malformed)
        );
        assert_eq!(
            parse(&jws(r#"{"sub":"a","groups":[{"id":1,"id":2}]}"#)),
            Err(Reason::Malformed)
        );
        assert!(
            parse(&jws(
                r#"{"sub":"a","org":{"role":"user","n":[1,2.5,null,true]}}"#
            ))
            .is_ok()
        );
        assert_eq!(parse(&jws(r#"["sub"]"#)), Err(Reason::Malformed));
    }

    #[test]
    fn numeric_dates_are_bounded_whatever_their_json_type() {
        use serde_json::json;
        assert_eq!(numeric_date(&json!(1_700_000_000)), Some(1_700_000_000));
        assert_eq!(numeric_date(&json!(1_700_000_000.9)), Some(1_700_000_000));
        assert_eq!(numeric_date(&json!(-5)), Some(-5));
        for bad in [
            json!(4_611_686_018_427_387_904_i64),
            json!(-4_611_686_018_427_387_905_i64),
            json!(i64::MIN),
            json!(u64::MAX),
            json!(1e300),
            json!(MAX_NUMERIC_DATE),
            json!("1700000000"),
        ] {
            assert_eq!(numeric_date(&bad), None, "{bad}");
        }
    }

    #[test]
    fn headers_that_choose_their_own_key_or_need_extensions_are_refused() {
        let jws = |h: &str| format!("{}.{}.sig", b64(h), b64("{}"));
        let parse = |t: &str| match classify(t).unwrap() {
            Shape::Jws(j) => header(&j).map(|h| h.alg),
            _ => panic!(),
        };
        assert_eq!(
            parse(&jws(r#"{"alg":"RS256","typ":"JWT"}"#)),
            Ok("RS256".into())
        );
        assert_eq!(
            parse(&jws(r#"{"alg":"RS256","typ":"at+jwt"}"#)),
            Ok("RS256".into())
        );
        for bad in [
            r#"{"alg":"RS256","crit":["exp"]}"#,
            r#"{"alg":"RS256","jku":"https://evil/jwks"}"#,
            r#"{"alg":"RS256","jwk":{"kty":"RSA"}}"#,
            r#"{"alg":"RS256","x5u":"https://evil"}"#,
            r#"{"alg":"RS256","x5c":["MII"]}"#,
            r#"{"alg":"RS256","typ":"JWE"}"#,
            r#"{"alg":"RS256","alg":"none"}"#,
            r#"{"alg":"RS256","x-team":1,"x-team":2}"#,
            r#"{"typ":"JWT"}"#,
            r#"["alg"]"#,
        ] {
            assert_eq!(parse(&jws(bad)), Err(Reason::Malformed), "{bad}");
        }
    }
}

#[cfg(test)]
mod fuzz {
    //! Property tests: no input makes the classifier or the parsers panic, and whatever they
    //! accept has the shape they promise.
    use super::*;
    use proptest::prelude::*;

    fn b64_of(bytes: Vec<u8>) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Near-JWTs: three or more base64url-ish parts built from arbitrary JSON-ish bytes.
    fn near_jwt() -> impl Strategy<Value = String> {
        let part = prop_oneof![
            any::<Vec<u8>>().prop_map(b64_of),
            "[A-Za-z0-9_=+/ .-]{0,40}",
            prop::collection::vec(any::<(String, i64)>(), 0..4).prop_map(|kv| {
                let obj: serde_json::Map<String, Value> =
                    kv.into_iter().map(|(k, v)| (k, Value::from(v))).collect();
                b64_of(serde_json::to_vec(&obj).unwrap())
            }),
            Just(b64_of(br#"{"alg":"RS256","kid":"k","typ":"JWT"}"#.to_vec())),
        ];
        prop::collection::vec(part, 1..6).prop_map(|parts| parts.join("."))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

        #[test]
        fn classify_and_parse_never_panic(token in prop_oneof![any::<String>(), near_jwt()]) {
            match classify(&token) {
                Ok(Shape::Jws(jws)) => {
                    prop_assert_eq!(token.matches('.').count(), 2);
                    prop_assert!(token.starts_with(jws.signing_input));
                    let _ = header(&jws);
                    let _ = payload(&jws);
                }
                Ok(Shape::NativeOpaque) => prop_assert!(token.starts_with(NATIVE_TOKEN_PREFIX) && token.len() == 47),
                Ok(Shape::Other) => prop_assert!(!token.contains('.') || token.matches('.').count() < 2),
                Err(_) => {}
            }
        }
    }
}
