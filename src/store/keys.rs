//! Every key name the store uses, built in one place.
//!
//! [`Key`] can only be made here, and the builders take ids sessiongate minted or a
//! [`Digest`] — never a token — so a token can never end up in a key name, in Redis' SLOWLOG
//! or in `MONITOR` output. Keys that change together share a hash tag (`{…}`) so that atomic
//! batches stay on one slot in Redis Cluster.

use std::fmt;

use crate::config::Env;

/// A store key. Only this module constructs one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

impl Key {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.0)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// SHA-256 of a secret (a token, an API key). What the store and the logs may see instead of
/// the secret itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest([u8; 32]);

impl Digest {
    pub fn of(secret: &[u8]) -> Self {
        // aws-lc's SHA-256 (SHA-NI/AVX2 assembly): about 3× the `sha2` crate's speed on a
        // 600-byte JWT, and every validation hashes its token once.
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }

    /// A digest read back from the store.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        // Into a buffer, not `hex::encode` (which collects chars one by one): this builds
        // every store key of the hot paths.
        let mut buf = [0u8; 64];
        hex::encode_to_slice(self.0, &mut buf).expect("64 hex digits for 32 bytes");
        String::from_utf8(buf.to_vec()).expect("hex digits are ASCII")
    }

    /// The first 8 hex characters: enough to correlate log lines, useless to an attacker.
    pub fn fingerprint(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({}…)", self.fingerprint())
    }
}

/// Key builders for one env: every key starts with `sg:<env>:`, so a test and a live
/// deployment that were pointed at the same Redis by mistake still never share state.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(env: Env) -> Self {
        Self {
            prefix: format!("sg:{}:", env.as_str()),
        }
    }

    fn key(&self, rest: fmt::Arguments<'_>) -> Key {
        Key(format!("{}{}", self.prefix, rest))
    }

    /// The invalidation pub/sub channel.
    pub fn channel(&self) -> String {
        format!("{}invalidate", self.prefix)
    }

    /// A session record, found by the digest of its opaque token (the hot lookup: one key).
    pub fn session(&self, token: &Digest) -> Key {
        self.key(format_args!("{{t:{}}}:session", token.to_hex()))
    }

    /// What is left of a revoked session until its original expiry.
    pub fn tombstone(&self, token: &Digest) -> Key {
        self.key(format_args!("{{t:{}}}:tombstone", token.to_hex()))
    }

    /// Session id → digest of its token, to revoke or re-check a session by id or by JWT.
    pub fn session_token(&self, session_id: &str) -> Key {
        self.key(format_args!("{{s:{session_id}}}:token"))
    }

    /// A user record.
    pub fn user(&self, user_id: &str) -> Key {
        self.key(format_args!("{{u:{user_id}}}:user"))
    }

    /// The set of a user's session ids.
    pub fn user_sessions(&self, user_id: &str) -> Key {
        self.key(format_args!("{{u:{user_id}}}:sessions"))
    }

    /// Revoked native session ids (`sid`s) and deny-listed legacy tokens, ordered by when
    /// they stop mattering (a sorted set; its members are ids and digests, never tokens).
    pub fn revoked(&self) -> Key {
        self.key(format_args!("revoked"))
    }

    /// The user linked to a provider's subject, by digest of `issuer \0 sub`: the issuer, not
    /// the provider's configured name, so renaming or re-pointing a provider never maps one
    /// issuer's subject onto another's user.
    pub fn identity(&self, issuer_sub: &Digest) -> Key {
        self.key(format_args!("{{ii:{}}}:user", issuer_sub.to_hex()))
    }

    /// Links written before identities were keyed by issuer, by digest of `provider name \0
    /// sub`. Read only through [`Keys::provider_issuer`]'s guard, and re-written under
    /// [`Keys::identity`] when found.
    pub fn identity_by_name(&self, name_sub: &Digest) -> Key {
        self.key(format_args!("{{i:{}}}:user", name_sub.to_hex()))
    }

    /// The issuer a provider name stood for when its name-keyed links were first read: a
    /// name-keyed link is trusted only while the name still means that issuer.
    pub fn provider_issuer(&self, name: &Digest) -> Key {
        self.key(format_args!("{{pn:{}}}:issuer", name.to_hex()))
    }

    /// The user owning a verified email address, by digest of the lower-cased address.
    pub fn email(&self, email: &Digest) -> Key {
        self.key(format_args!("{{e:{}}}:user", email.to_hex()))
    }

    /// A migration's sealed outcome, replayed within the window, by the legacy token's digest.
    pub fn replay(&self, token: &Digest) -> Key {
        self.key(format_args!("{{m:{}}}:replay", token.to_hex()))
    }

    /// The single-flight lock of a legacy token's migration.
    pub fn replay_lock(&self, token: &Digest) -> Key {
        self.key(format_args!("{{m:{}}}:lock", token.to_hex()))
    }

    /// A `CreateSession`'s sealed outcome, replayed within the window, by the digest of the
    /// client and its request id.
    pub fn creation(&self, client_request: &Digest) -> Key {
        self.key(format_args!("{{c:{}}}:replay", client_request.to_hex()))
    }

    /// The single-flight lock of a `CreateSession` with a request id.
    pub fn creation_lock(&self, client_request: &Digest) -> Key {
        self.key(format_args!("{{c:{}}}:lock", client_request.to_hex()))
    }

    /// An issuer's JWKS document as last fetched, shared by replicas; `source` names the
    /// issuer and where its keys come from.
    pub fn jwks(&self, source: &str) -> Key {
        self.key(format_args!(
            "jwks:{}",
            Digest::of(source.as_bytes()).to_hex()
        ))
    }

    /// A back-channel logout token already taken, by the digest of its issuer and `jti`.
    pub fn logout_jti(&self, iss_jti: &Digest) -> Key {
        self.key(format_args!("lo-jti:{}", iss_jti.to_hex()))
    }

    /// A legacy provider's cached UserInfo answer for an opaque token.
    pub fn userinfo(&self, token: &Digest) -> Key {
        self.key(format_args!("ui:{}", token.to_hex()))
    }

    /// The sessions minted by migrating a legacy token, by the digest its deny-list entry is
    /// keyed by (a JWT's signing input, an opaque token whole): revoking the legacy token
    /// revokes them too.
    pub fn migrated_sessions(&self, signed: &Digest) -> Key {
        self.key(format_args!("{{m:{}}}:sessions", signed.to_hex()))
    }

    /// A flow's run-time overrides (the flow's name hashed: names are free text).
    pub fn flow_overrides(&self, flow: &str) -> Key {
        self.key(format_args!(
            "flow:{}",
            Digest::of(flow.as_bytes()).to_hex()
        ))
    }

    /// The lock that serialises admin updates of one flow.
    pub fn flow_overrides_lock(&self, flow: &str) -> Key {
        self.key(format_args!(
            "flow:{}:lock",
            Digest::of(flow.as_bytes()).to_hex()
        ))
    }

    /// The lease of the replica delivering a webhook's events (names are configuration:
    /// letters, digits, `-`, `_`, `.`).
    pub fn webhook_lease(&self, webhook: &str) -> Key {
        self.key(format_args!("wh:{webhook}:lease"))
    }

    /// A webhook's dead letters, ordered by when they are dropped (members: event ids).
    pub fn webhook_dead_letters(&self, webhook: &str) -> Key {
        self.key(format_args!("{{wh:{webhook}}}:dead"))
    }

    /// One dead letter: the event and why its delivery gave up.
    pub fn webhook_dead_letter(&self, webhook: &str, event_id: &str) -> Key {
        self.key(format_args!("{{wh:{webhook}}}:dead:{event_id}"))
    }

    /// The consumer group a webhook reads the event stream with (not a key: a name within
    /// the stream), per env like the keys.
    pub fn webhook_group(&self, webhook: &str) -> String {
        format!("{}webhook:{webhook}", self.prefix)
    }

    /// The lease of the replica moving a flow's ramp.
    pub fn flow_ramp_lease(&self, flow: &str) -> Key {
        self.key(format_args!(
            "flow:{}:ramp",
            Digest::of(flow.as_bytes()).to_hex()
        ))
    }

    /// The fleet's count of a guard signal in one minute (`minute`: Unix minutes).
    pub fn guard_count(&self, signal: &str, minute: i64) -> Key {
        self.key(format_args!("guard:{signal}:{minute}"))
    }

    /// A fixed-window rate-limit counter for `subject` (a digest: subjects may be tokens).
    pub fn rate(&self, bucket: &str, subject: &Digest) -> Key {
        self.key(format_args!("rate:{bucket}:{}", subject.to_hex()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_env_and_never_the_secret() {
        let k = Keys::new(Env::Live);
        let token = b"sgs_supersecret";
        let key = k.session(&Digest::of(token));
        assert!(key.as_str().starts_with("sg:live:{t:"));
        assert!(!key.as_str().contains("supersecret"));
        assert_eq!(key.as_str().len(), "sg:live:{t:}:session".len() + 64);
        assert_eq!(
            Keys::new(Env::Test).session_token("s1").as_str(),
            "sg:test:{s:s1}:token"
        );
    }

    #[test]
    fn related_keys_share_a_hash_tag() {
        let k = Keys::new(Env::Test);
        let tag = |key: &Key| {
            let s = key.as_str();
            s[s.find('{').unwrap()..=s.find('}').unwrap()].to_owned()
        };
        let d = Digest::of(b"t");
        assert_eq!(tag(&k.session(&d)), tag(&k.tombstone(&d)));
        assert_eq!(tag(&k.user("u")), tag(&k.user_sessions("u")));
    }

    #[test]
    fn digest_fingerprint_is_eight_hex() {
        let d = Digest::of(b"hello");
        assert_eq!(d.fingerprint(), "2cf24dba");
        assert!(!format!("{d:?}").contains("hello"));
    }
}
