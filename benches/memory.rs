//! Memory per stored thing (targets in docs/performance.md: ≤ 600 bytes per in-process cache
//! entry, ≤ 300 bytes per Redis key).
//!
//! - **Redis**: a local `redis-server` (no persistence), sessions created, revoked and
//!   migrated through the real domain code with the Redis store, then `MEMORY USAGE <key>
//!   SAMPLES 0` of every kind of key, averaged over many keys of that kind.
//! - **In process**: the verdict caches of native JWTs and of a legacy provider's JWTs
//!   (verified against its key set, served on loopback), each measured as the growth of this
//!   process' resident memory per newly cached token (allocator overhead included) while
//!   `n` never-seen JWTs are validated — and no growth when they are validated again.
//!
//! `cargo bench --bench memory` (or `./scripts/bench --memory`), about 20 seconds.

#[path = "support/idp.rs"]
mod idp;
#[path = "support/redis.rs"]
mod redis_server;

use std::collections::HashMap;
use std::sync::Arc;

use sessiongate::caller::Caller;
use sessiongate::clock::{Clock, SystemClock};
use sessiongate::config::{Env, KeySource};
use sessiongate::keys::{KeyKind, SigningKeys};
use sessiongate::session::model::{AuthFactor, Session};
use sessiongate::session::native::NativeIssuer;
use sessiongate::session::{
    CreateRequest, RevokeTarget, SessionService, ValidateRequest, Verdict, Who,
};
use sessiongate::store::Store;
use sessiongate::store::keys::{Digest, Keys};

/// Resident memory of this process, in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn config(dir: &std::path::Path) -> sessiongate::config::Config {
    sessiongate::config::load(&HashMap::<String, String>::new(), dir, None).unwrap()
}

fn signing(dir: &std::path::Path, kind: KeyKind) -> Arc<SigningKeys> {
    let path = dir.join("k.pem");
    std::fs::write(
        &path,
        sessiongate::keys::signing::generate_pem(kind).unwrap(),
    )
    .unwrap();
    Arc::new(SigningKeys::load_or_generate(&[KeySource::File(path)]).unwrap())
}

fn request(token: &str) -> ValidateRequest {
    ValidateRequest {
        caller: Arc::from("bench"),
        token: token.to_owned(),
        max_token_age_seconds: 0,
        session_duration_minutes: 0,
        client: Default::default(),
        may_extend_by_jwt: false,
        view: Default::default(),
    }
}

async fn redis_keys() -> Vec<(String, f64, usize)> {
    const N: usize = 500;
    let dir = tempfile::tempdir().unwrap();
    let server = redis_server::Redis::start().expect("redis-server starts");
    let cfg = config(dir.path());
    let store: Arc<dyn Store> = Arc::new(
        sessiongate::store::redis::RedisStore::connect(
            &server.url(),
            false,
            cfg.env,
            sessiongate::store::redis::Timeouts {
                command: std::time::Duration::from_secs(2),
                connect: std::time::Duration::from_secs(1),
            },
        )
        .unwrap(),
    );
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let sessions = SessionService::new(
        &cfg,
        store.clone(),
        clock,
        signing(dir.path(), KeyKind::Eddsa),
    );
    let admin = Caller {
        name: Arc::from("bench"),
        authenticated: true,
        scopes: sessiongate::config::Scopes::of(&[
            sessiongate::config::Scope::Validate,
            sessiongate::config::Scope::Issue,
            sessiongate::config::Scope::Migrate,
            sessiongate::config::Scope::Flow,
        ]),
        edge_route: None,
    };
    let keys = Keys::new(cfg.env);
    let mut kinds: HashMap<&str, Vec<String>> = HashMap::new();
    for i in 0..N {
        let (c, _) = sessions
            .create(
                &sessiongate::caller::Caller::anonymous(),
                CreateRequest {
                    who: Some(Who::NewUser {
                        email: format!("user{i}@example.com"),
                        email_verified: true,
                        name: format!("User {i}"),
                    }),
                    factors: vec![sessiongate::session::model::AuthFactor {
                        kind: "passkey".into(),
                        ..Default::default()
                    }],
                    duration_minutes: 0,
                    custom_claims: Default::default(),
                    client: sessiongate::session::model::ClientInfo {
                        ip_address: "203.0.113.7".into(),
                        user_agent: "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0".into(),
                    },
                    request_id: None,
                },
            )
            .await
            .unwrap();
        let digest = Digest::of(c.session_token.as_bytes());
        let user = &c.user.user_id;
        kinds
            .entry("user")
            .or_default()
            .push(keys.user(user).to_string());
        kinds
            .entry("email index")
            .or_default()
            .push(keys.email(&Digest::of(c.user.email.as_bytes())).to_string());
        kinds
            .entry("session id → token index")
            .or_default()
            .push(keys.session_token(&c.session.session_id).to_string());
        if i % 5 == 0 {
            sessions
                .revoke(RevokeTarget::SessionToken(c.session_token.clone()), &admin)
                .await
                .unwrap();
            kinds
                .entry("tombstone (revoked session)")
                .or_default()
                .push(keys.tombstone(&digest).to_string());
        } else {
            kinds
                .entry("session record")
                .or_default()
                .push(keys.session(&digest).to_string());
            // (A revoked user's only session leaves the set empty, and Redis drops it.)
            kinds
                .entry("user's session set (one session)")
                .or_default()
                .push(keys.user_sessions(user).to_string());
        }
    }
    let client = ::redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut out = Vec::new();
    let mut names: Vec<_> = kinds.keys().copied().collect();
    names.sort();
    for name in names {
        let list = &kinds[name];
        let mut total = 0usize;
        for key in list {
            let n: Option<usize> = ::redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(key)
                .arg("SAMPLES")
                .arg(0)
                .query_async(&mut conn)
                .await
                .unwrap();
            total += n.unwrap_or_else(|| panic!("{name}: key {key} missing"));
        }
        out.push((
            name.to_owned(),
            total as f64 / list.len() as f64,
            list.len(),
        ));
    }
    // The shared revoked set grows by one member per live revocation (pruned as they expire).
    let set: usize = ::redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(keys.revoked().as_str())
        .arg("SAMPLES")
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap();
    let revoked = N.div_ceil(5);
    out.push((
        "revoked-sid set, per member".to_owned(),
        set as f64 / revoked as f64,
        revoked,
    ));
    out
}

fn cache_entries(n: usize) -> Measured {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    assert_eq!(cfg.env, Env::Test);
    let keys = signing(dir.path(), KeyKind::Eddsa);
    let issuer = NativeIssuer::new(cfg.env, &cfg.native, keys.clone());
    let now = SystemClock.now_ms();
    // Tokens shaped like the ones CreateSession mints (ids, a factor, the client's address).
    let tokens: Vec<String> = (0..n)
        .map(|i| {
            let session = Session {
                session_id: format!("session-test-{}", uuid(i)),
                user_id: format!("user-test-{}", uuid(i + n)),
                started_at_ms: now,
                last_accessed_at_ms: now,
                expires_at_ms: now + 3_600_000,
                factors: vec![AuthFactor {
                    kind: "passkey".into(),
                    ..Default::default()
                }],
                attributes: Default::default(),
                custom_claims: Default::default(),
            };
            issuer.mint(&session, now).unwrap()
        })
        .collect();
    let store: Arc<dyn Store> = Arc::new(sessiongate::store::memory::MemoryStore::new(cfg.env));
    let sessions = SessionService::new(&cfg, store, Arc::new(SystemClock), keys);
    growth_per_entry(&rt, &sessions, &tokens)
}

/// The verdict cache of a legacy provider's JWTs: access tokens shaped like an Auth0 tenant's
/// (two audiences, scopes, the client id), ES256.
fn provider_cache_entries(n: usize) -> Measured {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let idp = rt
        .block_on(idp::LegacyIdp::start(std::time::Duration::ZERO))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessiongate.toml");
    std::fs::write(
        &path,
        format!(
            "[[providers]]\nname = \"auth0\"\nkind = \"legacy\"\nissuer = \"{}\"\n\
             jwks_url = \"{}\"\naudiences = [\"{}\"]\nalgorithms = [\"ES256\"]\n",
            idp.issuer(),
            idp.jwks_url(),
            idp::LEGACY_API
        ),
    )
    .unwrap();
    let cfg = sessiongate::config::load(&HashMap::<String, String>::new(), dir.path(), Some(&path))
        .unwrap();
    let signer = idp.signer(KeyKind::Es256);
    let tokens: Vec<String> = (0..n)
        .map(|i| {
            let mut claims = idp.claims(&format!("auth0|{:024x}", i * 7919));
            claims["aud"] =
                serde_json::json!([idp::LEGACY_API, "https://tenant.example.com/userinfo"]);
            claims["scope"] = "openid profile email read:orders".into();
            claims["azp"] = "9rYcA1sNqQbE0xkWlmZ3uT7dVfH2oJ6p".into();
            signer.sign(&claims)
        })
        .collect();
    let store: Arc<dyn Store> = Arc::new(sessiongate::store::memory::MemoryStore::new(cfg.env));
    let keys = signing(dir.path(), KeyKind::Eddsa);
    // (Inside the runtime: the providers' key sets start their refreshers on it.)
    let _entered = rt.enter();
    let sessions = SessionService::new(&cfg, store, Arc::new(SystemClock), keys);
    // The key set is fetched in the background at start.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !rt
        .block_on(sessions.validate(request(&tokens[0])))
        .is_ok_and(|v| v.is_valid())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the key set never loaded"
        );
        std::thread::yield_now();
    }
    growth_per_entry(&rt, &sessions, &tokens)
}

/// Bytes per cache entry (RSS growth over the tokens after the first 1 000, which warm the
/// allocator and the cache's own structures), the token's length, and the growth when they
/// are all validated again.
type Measured = (f64, usize, usize);

fn growth_per_entry(
    rt: &tokio::runtime::Runtime,
    sessions: &SessionService,
    tokens: &[String],
) -> Measured {
    let check = |v: Verdict| assert!(v.is_valid(), "{:?}", v.invalid);
    for t in tokens.iter().take(1000) {
        check(rt.block_on(sessions.validate(request(t))).unwrap());
    }
    let before = rss();
    for t in &tokens[1000..] {
        check(rt.block_on(sessions.validate(request(t))).unwrap());
    }
    let after = rss();
    // Hits must not grow anything.
    for t in &tokens[1000..] {
        check(rt.block_on(sessions.validate(request(t))).unwrap());
    }
    let again = rss();
    let per_entry = after.saturating_sub(before) as f64 / (tokens.len() - 1000) as f64;
    (per_entry, tokens[0].len(), again.saturating_sub(after))
}

/// A deterministic UUID-shaped id.
fn uuid(i: usize) -> String {
    let h = format!(
        "{:032x}",
        (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834)
    );
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Runs one cache measurement in a process of its own: memory one measurement freed would
/// be reused by the next without growing the resident set.
fn in_child(which: &str) -> Measured {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .arg(format!("--measure={which}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{which}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let v: Vec<&str> = text.split_whitespace().collect();
    (
        v[0].parse().unwrap(),
        v[1].parse().unwrap(),
        v[2].parse().unwrap(),
    )
}

fn main() {
    // `cargo bench` passes `--bench`; the only argument of ours is the child's.
    let n = 50_000;
    if let Some(which) =
        std::env::args().find_map(|a| a.strip_prefix("--measure=").map(str::to_owned))
    {
        let (per_entry, len, growth) = match which.as_str() {
            "native" => cache_entries(n),
            _ => provider_cache_entries(n),
        };
        println!("{per_entry} {len} {growth}");
        return;
    }
    let (per_entry, token_len, growth_on_hits) = in_child("native");
    let (provider_entry, provider_len, provider_growth) = in_child("provider");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let redis = rt.block_on(redis_keys());

    println!("\n| stored thing | bytes | target | keys measured |\n|---|---:|---:|---:|");
    println!(
        "| in-process verdict cache, per native JWT ({token_len}-byte token) | {per_entry:.0} | ≤ 600 | {} |",
        n - 1000
    );
    println!(
        "| in-process verdict cache, per legacy provider JWT ({provider_len}-byte token) | {provider_entry:.0} | ≤ 600 | {} |",
        n - 1000
    );
    for (name, bytes, count) in &redis {
        println!("| Redis: {name} | {bytes:.0} | ≤ 300 | {count} |");
    }
    println!(
        "\nRSS growth when the same {} tokens are validated again (cache hits): {} kB",
        n - 1000,
        growth_on_hits / 1024
    );
    println!(
        "RSS growth when the same {} provider tokens are validated again: {} kB",
        n - 1000,
        provider_growth / 1024
    );
}
