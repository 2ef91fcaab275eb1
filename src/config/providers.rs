//! `[[providers]]`: the legacy and external issuers whose tokens are accepted, and how each
//! is checked.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Check, Env};

/// Algorithms a provider may allow. HMAC is absent on purpose: a shared secret cannot be
/// published in a JWKS, and HS* with a public key is the classic confusion attack.
pub const ASYMMETRIC_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Legacy,
    External,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenFormat {
    Jwt,
    Opaque,
    Both,
}

/// The characters a provider's opaque tokens are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpaqueAlphabet {
    /// Any visible ASCII character (the default: nothing narrower is assumed).
    VisibleAscii,
    /// `A–Z a–z 0–9 - _`.
    Base64url,
    /// `A–Z a–z 0–9 + / =`.
    Base64,
    /// `0–9 a–f A–F`.
    Hex,
    /// `A–Z a–z 0–9`.
    Alphanumeric,
}

impl OpaqueAlphabet {
    fn allows(self, b: u8) -> bool {
        match self {
            OpaqueAlphabet::VisibleAscii => (0x21..0x7f).contains(&b),
            OpaqueAlphabet::Base64url => b.is_ascii_alphanumeric() || b == b'-' || b == b'_',
            OpaqueAlphabet::Base64 => {
                b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'='
            }
            OpaqueAlphabet::Hex => b.is_ascii_hexdigit(),
            OpaqueAlphabet::Alphanumeric => b.is_ascii_alphanumeric(),
        }
    }
}

/// What a provider's opaque tokens look like, checked before any of them is sent upstream:
/// junk that cannot be a token of this provider costs no UserInfo call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpaqueShape {
    pub prefix: String,
    pub min_length: usize,
    pub max_length: usize,
    pub alphabet: OpaqueAlphabet,
}

impl OpaqueShape {
    pub fn accepts(&self, token: &str) -> bool {
        (self.min_length..=self.max_length).contains(&token.len())
            && token.starts_with(&self.prefix)
            && token.bytes().all(|b| self.alphabet.allows(b))
    }
}

/// A provider's budget of upstream calls (UserInfo), per replica: a token bucket refilled at
/// `per_second`, holding at most `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UpstreamBudget {
    pub per_second: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    Accept,
    Upgrade,
    Reject,
}

/// What a back-channel logout from the provider revokes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogoutRevokes {
    /// The provider's tokens of that user (or OP session) issued before the logout.
    Legacy,
    /// Those, and the native sessions migrated from that identity.
    All,
}

/// OpenID Connect Back-Channel Logout from this provider (`POST /backchannel-logout/<name>`).
#[derive(Debug, Clone, Serialize)]
pub struct BackchannelLogout {
    /// The logout token's `aud` must name one of these (the client id the provider knows
    /// sessiongate's fleet by).
    pub audiences: Vec<String>,
    pub revokes: LogoutRevokes,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    pub issuer: String,
    pub jwks_url: Option<url::Url>,
    pub audiences: Vec<String>,
    pub algorithms: Vec<String>,
    pub userinfo_url: Option<url::Url>,
    pub token_format: TokenFormat,
    pub policy: Policy,
    pub allowed_client_ids: Vec<String>,
    pub link_verified_email: bool,
    /// Longest `exp - iat` accepted (also refuses `exp` written in milliseconds).
    pub max_token_lifetime: Duration,
    /// Bound on one UserInfo call.
    pub userinfo_timeout: Duration,
    /// UserInfo calls this replica may make, whatever asks for them.
    pub userinfo_budget: UpstreamBudget,
    /// What this provider's opaque tokens look like.
    pub opaque_shape: OpaqueShape,
    /// `None`: the provider's back-channel logouts are not taken.
    pub backchannel_logout: Option<BackchannelLogout>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvider {
    name: String,
    kind: ProviderKind,
    issuer: String,
    jwks_url: Option<String>,
    #[serde(default)]
    audiences: Vec<String>,
    algorithms: Option<Vec<String>>,
    userinfo_url: Option<String>,
    token_format: Option<TokenFormat>,
    policy: Option<Policy>,
    #[serde(default)]
    allowed_client_ids: Vec<String>,
    #[serde(default)]
    link_verified_email: bool,
    max_token_lifetime_seconds: Option<u32>,
    userinfo_timeout_ms: Option<u32>,
    userinfo_budget_per_second: Option<u32>,
    userinfo_budget_burst: Option<u32>,
    #[serde(default)]
    opaque_token_prefix: String,
    opaque_token_min_length: Option<u32>,
    opaque_token_max_length: Option<u32>,
    opaque_token_alphabet: Option<OpaqueAlphabet>,
    #[serde(default)]
    backchannel_logout_audiences: Vec<String>,
    backchannel_logout_revokes: Option<LogoutRevokes>,
}

/// `native_issuer` is taken: tokens are routed by issuer, so no provider may share it.
pub(super) fn build(
    c: &mut Check,
    env: Env,
    raw: Vec<RawProvider>,
    native_issuer: &str,
) -> Vec<ProviderConfig> {
    let mut providers = Vec::new();
    let mut names = BTreeSet::new();
    let mut issuers = BTreeSet::from([native_issuer.to_owned()]);
    let mut opaque_provider: Option<String> = None;
    for (i, p) in raw.into_iter().enumerate() {
        let k = |f: &str| format!("providers[{i}].{f}");
        if p.name.is_empty() || p.name == "native" {
            c.fail(
                k("name"),
                "must be non-empty and not `native` (reserved for sessiongate's own sessions)",
            );
        } else if !names.insert(p.name.clone()) {
            c.fail(k("name"), format!("`{}` is used twice", p.name));
        }
        if p.issuer.is_empty() {
            c.fail(k("issuer"), "must not be empty");
        } else if !issuers.insert(p.issuer.clone()) {
            c.fail(k("issuer"), format!("`{}` is already the issuer of another provider or of native sessions; tokens are routed by issuer, so each must be unique", p.issuer));
        }
        let jwks_url = url_field(c, env, &k("jwks_url"), p.jwks_url);
        let userinfo_url = url_field(c, env, &k("userinfo_url"), p.userinfo_url);
        // Endpoints left out are discovered from the issuer, which must then be a URL.
        let discoverable = url::Url::parse(&p.issuer)
            .is_ok_and(|u| u.scheme() == "https" || (u.scheme() == "http" && env == Env::Test));
        let algorithms = p.algorithms.unwrap_or_else(|| vec!["RS256".into()]);
        if algorithms.is_empty() {
            c.fail(k("algorithms"), "needs at least one algorithm");
        }
        for a in &algorithms {
            if !ASYMMETRIC_ALGORITHMS.contains(&a.as_str()) {
                c.fail(
                    k("algorithms"),
                    format!(
                        "`{a}` is not allowed; use one of {}",
                        ASYMMETRIC_ALGORITHMS.join(", ")
                    ),
                );
            }
        }
        let token_format = p.token_format.unwrap_or(TokenFormat::Jwt);
        if p.kind == ProviderKind::External && token_format != TokenFormat::Jwt {
            c.fail(
                k("token_format"),
                "an external provider is validated by its JWTs only: use `jwt`",
            );
        }
        if p.kind == ProviderKind::Legacy && token_format != TokenFormat::Jwt {
            if userinfo_url.is_none() && !discoverable {
                c.fail(k("userinfo_url"), "opaque legacy tokens are checked through UserInfo: set userinfo_url, or make issuer an https URL to discover it");
            }
            // UserInfo answers "whose token is this", never "which client was it issued to":
            // an allow-list of clients cannot be enforced on a token UserInfo vouches for.
            if !p.allowed_client_ids.is_empty() {
                c.fail(k("allowed_client_ids"), "cannot be enforced on opaque tokens: UserInfo does not say which client a token was issued to, so another client's opaque token of the same tenant would pass. Set token_format = \"jwt\" (a JWT's azp/client_id is checked), or remove allowed_client_ids");
            }
            if opaque_provider.replace(p.name.clone()).is_some() {
                c.fail(k("token_format"), "only one legacy provider may accept opaque tokens: an opaque token names no issuer to route it by");
            }
        }
        let userinfo_timeout = p.userinfo_timeout_ms.unwrap_or(3000);
        c.range(k("userinfo_timeout_ms"), userinfo_timeout, 50..=30_000);
        let takes_jwt = matches!(token_format, TokenFormat::Jwt | TokenFormat::Both);
        if takes_jwt && p.audiences.is_empty() {
            c.fail(k("audiences"), "JWTs are only accepted for a listed audience: set the API identifiers this fleet accepts");
        }

        if takes_jwt && jwks_url.is_none() && !discoverable {
            c.fail(k("jwks_url"), "JWTs are verified with the issuer's JWKS: set jwks_url, or make issuer an https URL to discover it");
        }
        let lifetime = p.max_token_lifetime_seconds.unwrap_or(86_400);
        c.range(k("max_token_lifetime_seconds"), lifetime, 60..=31_536_000);
        let per_second = p.userinfo_budget_per_second.unwrap_or(50);
        c.range(k("userinfo_budget_per_second"), per_second, 1..=100_000);
        let burst = p
            .userinfo_budget_burst
            .unwrap_or(per_second.saturating_mul(2));
        c.range(k("userinfo_budget_burst"), burst, 1..=200_000);
        let min_length = p.opaque_token_min_length.unwrap_or(1) as usize;
        let max_length = p.opaque_token_max_length.unwrap_or(8192) as usize;
        if min_length == 0 || min_length > max_length || max_length > 8192 {
            c.fail(
                k("opaque_token_max_length"),
                format!("the length range {min_length}..={max_length} must be non-empty, within 1..=8192"),
            );
        }
        if p.opaque_token_prefix.len() > 64
            || !p
                .opaque_token_prefix
                .bytes()
                .all(|b| (0x21..0x7f).contains(&b))
        {
            c.fail(
                k("opaque_token_prefix"),
                "must be at most 64 visible ASCII characters",
            );
        }
        let backchannel_logout = if p.backchannel_logout_audiences.is_empty() {
            if p.backchannel_logout_revokes.is_some() {
                c.fail(
                    k("backchannel_logout_revokes"),
                    "set backchannel_logout_audiences too (the client id the logout tokens are addressed to)",
                );
            }
            None
        } else {
            if jwks_url.is_none() && !discoverable {
                c.fail(k("backchannel_logout_audiences"), "logout tokens are verified with the issuer's JWKS: set jwks_url, or make issuer an https URL to discover it");
            }
            if p.backchannel_logout_audiences.iter().any(String::is_empty) {
                c.fail(
                    k("backchannel_logout_audiences"),
                    "an empty audience matches nothing",
                );
            }
            Some(BackchannelLogout {
                audiences: p.backchannel_logout_audiences,
                revokes: p
                    .backchannel_logout_revokes
                    .unwrap_or(LogoutRevokes::Legacy),
            })
        };
        if p.kind == ProviderKind::External && p.policy.is_some() {
            c.fail(
                k("policy"),
                "applies to legacy providers only; external tokens are always NEW",
            );
        }
        providers.push(ProviderConfig {
            name: p.name,
            kind: p.kind,
            issuer: p.issuer,
            jwks_url,
            audiences: p.audiences,
            algorithms,
            userinfo_url,
            token_format,
            policy: p.policy.unwrap_or(Policy::Accept),
            allowed_client_ids: p.allowed_client_ids,
            link_verified_email: p.link_verified_email,
            max_token_lifetime: Duration::from_secs(lifetime.into()),
            userinfo_timeout: Duration::from_millis(userinfo_timeout.into()),
            userinfo_budget: UpstreamBudget { per_second, burst },
            opaque_shape: OpaqueShape {
                prefix: p.opaque_token_prefix,
                min_length,
                max_length,
                alphabet: p
                    .opaque_token_alphabet
                    .unwrap_or(OpaqueAlphabet::VisibleAscii),
            },
            backchannel_logout,
        });
    }

    providers
}

pub(super) fn url_field(
    c: &mut Check,
    env: Env,
    key: &str,
    value: Option<String>,
) -> Option<url::Url> {
    let value = value?;
    match url::Url::parse(&value) {
        Ok(u) if u.scheme() == "https" => Some(u),
        // Plain http is for fakes on loopback in tests; never for a live issuer.
        Ok(u) if u.scheme() == "http" && env == Env::Test => Some(u),
        Ok(_) => {
            c.fail(
                key,
                format!("`{value}` must be an https URL (http only in test)"),
            );
            None
        }
        Err(e) => {
            c.fail(key, format!("`{value}` is not a URL: {e}"));
            None
        }
    }
}
