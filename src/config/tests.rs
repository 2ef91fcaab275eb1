//! The configuration's tests: what parses, what is refused and how it is said.

use std::time::Duration;

use super::*;

fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn from_toml(text: &str, v: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let raw: RawFile = parse_toml("sessiongate.toml", text)?;
    let env = match v.iter().find(|(k, _)| *k == ENV_ENV) {
        Some((_, e)) => Env::parse(e).unwrap(),
        None => raw.env.unwrap_or(Env::Test),
    };
    build(env, Some("sessiongate.toml".into()), raw, &vars(v))
}

const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

#[test]
fn no_file_gives_test_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = load(&vars(&[]), dir.path(), None).unwrap();
    assert_eq!(cfg.env, Env::Test);
    assert_eq!(cfg.server.grpc_addr, DEFAULT_GRPC_ADDR.parse().unwrap());
    assert_eq!(cfg.server.http_addr, DEFAULT_HTTP_ADDR.parse().unwrap());
    assert_eq!(cfg.server.max_token_bytes, 8192);
    assert!(cfg.store.redis_url.is_none());
    assert_eq!(cfg.native.issuer, "urn:sessiongate:test");
    assert_eq!(cfg.native.jwt_ttl, Duration::from_secs(300));
    assert!(cfg.providers.is_empty() && cfg.clients.is_empty());
    assert_eq!(cfg.warnings().len(), 2);
}

#[test]
fn design_example_parses() {
    let text = format!(
        r#"
env = "test"
[server]
grpc_addr = "0.0.0.0:50051"
http_addr = "0.0.0.0:8080"
max_token_bytes = 8192
[native]
issuer = "https://sessions.example.com/test"
audiences = ["example-app"]
jwt_ttl_seconds = 300
session_duration_minutes = 60
leeway_seconds = 30
signing_keys = ["/etc/sessiongate/keys/2026-11.pem"]
[[providers]]
name = "auth0"
kind = "legacy"
issuer = "https://example.auth0.com/"
jwks_url = "https://example.auth0.com/.well-known/jwks.json"
audiences = ["https://api.example.com"]
algorithms = ["RS256"]
userinfo_url = "https://example.auth0.com/userinfo"
token_format = "jwt"
policy = "upgrade"
allowed_client_ids = ["abc123"]
link_verified_email = true
[[flows]]
name = "login"
percentage = 10
stickiness = "device"
kill_switch = false
rollback_epoch = 0
allow_users = []
deny_users = []
allow_cidrs = ["10.20.0.0/16"]
deny_cidrs = ["192.0.2.7"]
countries = ["no", "SE"]
min_app_versions = {{ ios = "5.12.0", android = "5.10.0" }}
[[flows]]
name = "checkout"
[[flows.strategies]]
name = "flexibleRollout"
parameters = {{ rollout = "25", stickiness = "default", groupId = "checkout" }}
constraints = [ {{ contextName = "country", operator = "IN", values = ["NO", "SE"] }} ]
[[clients]]
name = "checkout-service"
key_sha256 = "{HASH}"
scopes = ["validate", "flow"]
"#
    );
    let cfg = from_toml(&text, &[]).unwrap();
    assert_eq!(cfg.providers[0].policy, Policy::Upgrade);
    assert_eq!(cfg.providers[0].token_format, TokenFormat::Jwt);
    assert_eq!(cfg.providers[0].allowed_client_ids, ["abc123"]);
    let f = &cfg.flows[0];
    assert!(matches!(
        f.rules,
        FlowRules::Percentage {
            percentage: 10,
            stickiness: Stickiness::Device
        }
    ));
    assert_eq!(f.countries, ["NO", "SE"]);
    assert_eq!(f.deny_cidrs[0].to_string(), "192.0.2.7/32");
    assert_eq!(f.min_app_versions["ios"], semver::Version::new(5, 12, 0));
    let FlowRules::Strategies { strategies, .. } = &cfg.flows[1].rules else {
        panic!("strategies expected");
    };
    assert_eq!(strategies[0].constraints[0].context_name, "country");
    assert_eq!(
        cfg.clients[0].scopes,
        BTreeSet::from([Scope::Validate, Scope::Flow])
    );
}

fn problem(text: &str, v: &[(&str, &str)]) -> Vec<Problem> {
    from_toml(text, v).expect_err("must be refused").problems
}

#[test]
fn unknown_key_is_refused_with_its_path() {
    let p = problem("[server]\ngrpc_adr = \"0.0.0.0:1\"\n", &[]);
    assert_eq!(p[0].origin, "sessiongate.toml");
    assert!(
        p[0].key.contains("grpc_adr") || p[0].key == "server",
        "{p:?}"
    );
    assert!(p[0].message.contains("unknown field `grpc_adr`"), "{p:?}");
}

#[test]
fn wrong_type_names_the_key() {
    let p = problem("[[flows]]\nname = \"login\"\npercentage = \"ten\"\n", &[]);
    assert_eq!(p[0].key, "flows[0].percentage");
    assert!(p[0].message.contains("invalid type"), "{p:?}");
}

/// A URL issuer is where discovery is published: it must be one that a verifier can build
/// `<issuer>/.well-known/openid-configuration` from.
#[test]
fn an_issuer_url_has_a_host_and_no_query_or_fragment() {
    for bad in [
        "https://sessions.example.com/?tenant=a",
        "https://sessions.example.com/#x",
        "http://",
        "https://exa mple.com",
    ] {
        let p = problem(&format!("[native]\nissuer = \"{bad}\"\n"), &[]);
        assert_eq!(p[0].key, "native.issuer", "{bad}: {p:?}");
    }
    for good in [
        "https://sessions.example.com",
        "https://sessions.example.com/test/",
        "http://sessiongate.sessiongate.svc:8080",
        "urn:sessiongate:live-eu",
    ] {
        let cfg = from_toml(&format!("[native]\nissuer = \"{good}\"\n"), &[]).unwrap();
        assert_eq!(cfg.native.issuer, good);
    }
}

#[test]
fn fractional_percentage_is_refused() {
    let p = problem("[[flows]]\nname = \"login\"\npercentage = 10.5\n", &[]);
    assert_eq!(p[0].key, "flows[0].percentage");
}

#[test]
fn impossible_values_are_refused_together() {
    let p = problem(
        "[[flows]]\nname = \"login\"\npercentage = 101\nallow_cidrs = [\"10.0.0.0/33\"]\nstrategies = []\n[native]\nsession_duration_minutes = 1\n[redis]\nresync_seconds = 0\n",
        &[],
    );
    let keys: Vec<_> = p.iter().map(|p| p.key.as_str()).collect();
    assert!(keys.contains(&"redis.resync_seconds"), "{keys:?}");
    assert!(keys.contains(&"flows[0].percentage"), "{keys:?}");
    assert!(keys.contains(&"flows[0].allow_cidrs"), "{keys:?}");
    assert!(keys.contains(&"flows[0].strategies"), "{keys:?}");
    assert!(
        keys.contains(&"native.session_duration_minutes"),
        "{keys:?}"
    );
}

#[test]
fn hmac_algorithms_are_refused_for_providers() {
    let p = problem(
        "[[providers]]\nname = \"a\"\nkind = \"legacy\"\nissuer = \"https://a/\"\naudiences = [\"x\"]\njwks_url = \"https://a/j\"\nalgorithms = [\"HS256\"]\n",
        &[],
    );
    assert_eq!(p[0].key, "providers[0].algorithms");
}

#[test]
fn a_client_allow_list_is_refused_where_opaque_tokens_would_bypass_it() {
    for format in ["opaque", "both"] {
        let p = problem(
            &format!(
                "[[providers]]\nname = \"a\"\nkind = \"legacy\"\nissuer = \"https://a/\"\naudiences = [\"x\"]\njwks_url = \"https://a/j\"\nuserinfo_url = \"https://a/u\"\ntoken_format = \"{format}\"\nallowed_client_ids = [\"web\"]\n"
            ),
            &[],
        );
        assert_eq!(p[0].key, "providers[0].allowed_client_ids", "{format}");
        assert!(p[0].message.contains("token_format = \"jwt\""), "{format}");
    }
}

#[test]
fn the_shipped_env_example_parses_and_sets_nothing() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join(".env-test.example");
    assert_eq!(read_dotenv(&example).unwrap(), HashMap::new());
}

#[test]
fn an_upstream_proxy_must_be_an_http_proxy_url() {
    for bad in ["ftp://proxy", "proxy:3128", "http://"] {
        let p = problem(&format!("[server]\nupstream_proxy = \"{bad}\"\n"), &[]);
        assert_eq!(p[0].key, "server.upstream_proxy", "{bad}");
    }
    let cfg = from_toml(
        "[server]\nupstream_proxy = \"http://user:pw@proxy:3128\"\n",
        &[],
    )
    .unwrap();
    assert!(
        !format!("{cfg:?}").contains("pw@"),
        "the proxy's credentials are a secret"
    );
}

#[test]
fn duplicate_issuers_are_refused() {
    let p = problem(
        "[[providers]]\nname = \"a\"\nkind = \"legacy\"\nissuer = \"https://a/\"\naudiences = [\"x\"]\njwks_url = \"https://a/j\"\n[[providers]]\nname = \"b\"\nkind = \"external\"\nissuer = \"https://a/\"\naudiences = [\"x\"]\njwks_url = \"https://a/j\"\n",
        &[],
    );
    assert_eq!(p[0].key, "providers[1].issuer");
}

#[test]
fn env_overrides_file() {
    let cfg = from_toml(
        "[server]\ngrpc_addr = \"127.0.0.1:1\"\n",
        &[
            (ENV_GRPC_ADDR, "127.0.0.1:2"),
            (ENV_REDIS_URL, "redis://127.0.0.1:6379"),
            (ENV_LOG_FORMAT, "json"),
        ],
    )
    .unwrap();
    assert_eq!(cfg.server.grpc_addr.port(), 2);
    assert_eq!(
        cfg.store.redis_url.as_ref().unwrap().expose(),
        "redis://127.0.0.1:6379"
    );
    assert_eq!(cfg.log_format, LogFormat::Json);
}

#[test]
fn bad_env_value_names_the_variable() {
    let p = problem("", &[(ENV_GRPC_ADDR, "nope")]);
    assert_eq!(p[0].origin, "environment variable SESSIONGATE_GRPC_ADDR");
    assert_eq!(p[0].key, ENV_GRPC_ADDR);
}

#[test]
fn live_refuses_test_conveniences_and_names_each_fix() {
    let p = problem("env = \"live\"\n", &[]);
    let keys: Vec<_> = p.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["REDIS_URL", "native.signing_keys", "clients"]);
    assert!(p[0].message.contains("set REDIS_URL"));
    assert!(p[1].message.contains("sessiongate keygen"));
    assert!(p[2].message.contains("[[clients]]"));
}

#[test]
fn live_with_everything_starts() {
    let text = format!(
        "env = \"live\"\n[native]\nsigning_keys = [\"k.pem\"]\n[[clients]]\nname = \"a\"\nkey_sha256 = \"{HASH}\"\nscopes = [\"validate\"]\n"
    );
    let cfg = from_toml(&text, &[(ENV_REDIS_URL, "redis://r:6379")]).unwrap();
    assert_eq!(cfg.env, Env::Live);
    assert!(cfg.warnings().is_empty());
}

/// Callers can live in a file of their own (`clients_file`, relative to the config file): in
/// Kubernetes, each overlay mounts its callers and the shared config names the file.
#[test]
fn callers_come_from_a_clients_file_too_and_its_problems_name_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("callers")).unwrap();
    let config = dir.path().join("sessiongate.toml");
    let callers = dir.path().join("callers/clients.toml");
    let other = "a".repeat(64);
    std::fs::write(
        &config,
        format!(
            "env = \"live\"\nclients_file = \"callers/clients.toml\"\n[native]\nsigning_keys = [\"k.pem\"]\n\
             [[clients]]\nname = \"gateway\"\nkey_sha256 = \"{HASH}\"\nscopes = [\"validate\"]\n"
        ),
    )
    .unwrap();
    let load = |text: &str| {
        std::fs::write(&callers, text).unwrap();
        load(
            &vars(&[(ENV_REDIS_URL, "redis://r:6379")]),
            dir.path(),
            Some(&config),
        )
    };
    let cfg = load(&format!(
        "[[clients]]\nname = \"orders\"\nkey_sha256 = \"{other}\"\nscopes = [\"validate\", \"migrate\"]\n"
    ))
    .unwrap();
    let names: Vec<&str> = cfg.clients.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["gateway", "orders"]);
    assert_eq!(cfg.clients_file.as_deref(), Some(callers.as_path()));

    // Checked as one list, each problem against its own file and index.
    let p = load(&format!(
        "[[clients]]\nname = \"ok\"\nkey_sha256 = \"{other}\"\nscopes = [\"validate\"]\n\
         [[clients]]\nname = \"gateway\"\nkey_sha256 = \"{HASH}\"\nscopes = [\"validate\"]\n"
    ))
    .unwrap_err()
    .problems;
    assert_eq!(p.len(), 2, "{p:?}");
    for p in &p {
        assert_eq!(p.origin, callers.display().to_string());
        assert!(p.key.starts_with("clients[1]."), "{p:?}");
    }
    // Nothing but callers in it, and it must be there.
    let p = load("[server]\ngrpc_addr = \"0.0.0.0:1\"\n")
        .unwrap_err()
        .problems;
    assert_eq!(p[0].origin, callers.display().to_string(), "{p:?}");
    std::fs::remove_file(&callers).unwrap();
    let p = load_err(&config, dir.path());
    assert_eq!(p[0].key, "clients_file", "{p:?}");
}

fn load_err(config: &std::path::Path, dir: &std::path::Path) -> Vec<Problem> {
    load(
        &vars(&[(ENV_REDIS_URL, "redis://r:6379")]),
        dir,
        Some(config),
    )
    .unwrap_err()
    .problems
}

#[test]
fn redis_url_is_never_printed() {
    let cfg = from_toml("", &[(ENV_REDIS_URL, "redis://:hunter2@r:6379")]).unwrap();
    assert!(!format!("{cfg:?}").contains("hunter2"));
    assert!(!cfg.describe().contains("hunter2"));
    let p = problem("", &[(ENV_REDIS_URL, "http://:hunter2@r")]);
    assert!(!p[0].to_string().contains("hunter2"));
}

#[test]
fn a_cluster_takes_a_list_of_seed_nodes_and_only_a_cluster_does() {
    let seeds = "redis://:hunter2@a:7000, redis://:hunter2@b:7001";
    let cfg = from_toml("[redis]\ncluster = true\n", &[(ENV_REDIS_URL, seeds)]).unwrap();
    assert!(cfg.store.cluster);
    let p = problem("", &[(ENV_REDIS_URL, seeds)]);
    assert_eq!(p[0].key, ENV_REDIS_URL);
    assert!(p[0].message.contains("redis.cluster = true"), "{}", p[0]);
    assert!(!p[0].to_string().contains("hunter2"));
    let p = problem(
        "[redis]\ncluster = true\n",
        &[(ENV_REDIS_URL, "redis://a:7000,http://b")],
    );
    assert!(
        p[0].message.contains("each comma-separated node"),
        "{}",
        p[0]
    );
}

#[test]
fn dotenv_of_the_chosen_env_is_read_and_real_env_wins() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env-live"),
        "REDIS_URL=redis://from-dotenv:6379\nSESSIONGATE_GRPC_ADDR=127.0.0.1:7\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join(".env-test"),
        "SESSIONGATE_GRPC_ADDR=127.0.0.1:9\n",
    )
    .unwrap();
    // test: only .env-test applies.
    let cfg = load(&vars(&[]), dir.path(), None).unwrap();
    assert_eq!(cfg.server.grpc_addr.port(), 9);
    assert!(cfg.store.redis_url.is_none());
    // live: .env-live applies, the real environment wins over it; live still refuses
    // without keys, which shows the dotenv REDIS_URL was taken.
    let err = load(
        &vars(&[(ENV_ENV, "live"), (ENV_GRPC_ADDR, "127.0.0.1:8")]),
        dir.path(),
        None,
    )
    .unwrap_err();
    let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["native.signing_keys", "clients"]);
}

#[test]
fn config_file_from_env_var_and_its_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[native]\nleeway_seconds = -1\n").unwrap();
    let err = load(
        &vars(&[(ENV_CONFIG, path.to_str().unwrap())]),
        dir.path(),
        None,
    )
    .unwrap_err();
    assert_eq!(err.problems[0].origin, path.display().to_string());
    assert_eq!(err.problems[0].key, "native.leeway_seconds");
    let missing = load(
        &vars(&[(ENV_CONFIG, "/nonexistent/x.toml")]),
        dir.path(),
        None,
    )
    .unwrap_err();
    assert!(missing.to_string().contains("/nonexistent/x.toml"));
}

#[test]
fn signing_keys_from_files_and_env_secrets() {
    let cfg = from_toml(
        "[native]\nsigning_keys = [\"/k/a.pem\", \"env:SIGNING_KEY\"]\n",
        &[("SIGNING_KEY", "-----BEGIN PRIVATE KEY-----\nsecret\n")],
    )
    .unwrap();
    assert_eq!(
        cfg.native.signing_keys[0],
        KeySource::File("/k/a.pem".into())
    );
    assert!(
        matches!(&cfg.native.signing_keys[1], KeySource::Env { var, .. } if var == "SIGNING_KEY")
    );
    assert!(!cfg.describe().contains("secret") && cfg.describe().contains("env:SIGNING_KEY"));
    let p = problem("[native]\nsigning_keys = [\"env:MISSING\"]\n", &[]);
    assert_eq!(p[0].key, "native.signing_keys[0]");
    assert!(p[0].message.contains("MISSING"));
}

#[test]
fn client_keys_must_be_hashes() {
    let p = problem(
        "[[clients]]\nname = \"a\"\nkey_sha256 = \"plain-key\"\nscopes = [\"validate\"]\n",
        &[],
    );
    assert_eq!(p[0].key, "clients[0].key_sha256");
    let p = problem(
        &format!("[[clients]]\nname = \"a\"\nkey_sha256 = \"{HASH}\"\nscopes = [\"root\"]\n"),
        &[],
    );
    assert_eq!(p[0].key, "clients[0].scopes[0]");
}

fn keys_of(p: &[Problem]) -> Vec<&str> {
    p.iter().map(|p| p.key.as_str()).collect()
}

#[test]
fn hand_written_strategies_must_keep_the_ramp_monotone() {
    let p = problem(
        r#"
[[flows]]
name = "login"
percentage = 10
stickiness = "device"
[[flows.strategies]]
name = "flexibleRollout"
parameters = { rollout = "12.5", groupId = "other", stickiness = "random" }
[[flows.strategies]]
name = "flexibleRollout"
parameters = { rollout = "20", stickiness = "userId" }
constraints = [
  { contextName = "remoteAddress", operator = "IN_CIDR", values = ["10.0.0.0/33"] },
  { contextName = "appVersion", operator = "SEMVER_GTE", value = "v5" },
  { contextName = "x", operator = "REGEX", value = ".*" },
]
[[flows.strategies]]
name = "gradualRolloutRandom"
"#,
        &[],
    );
    let keys = keys_of(&p);
    for want in [
        "flows[0].percentage",
        "flows[0].stickiness",
        "flows[0].strategies[0].parameters.rollout",
        "flows[0].strategies[0].parameters.groupId",
        "flows[0].strategies[0].parameters.stickiness",
        "flows[0].strategies[1].parameters.stickiness",
        "flows[0].strategies[1].constraints[0].values",
        "flows[0].strategies[1].constraints[1].value",
        "flows[0].strategies[1].constraints[2].operator",
        "flows[0].strategies[2].name",
    ] {
        assert!(keys.contains(&want), "{want} not in {keys:?}");
    }
}

#[test]
fn flow_countries_and_cookie_settings_are_checked() {
    let p = problem(
        "[[flows]]\nname = \"login\"\ncountries = [\"XX\", \"NOR\"]\n[flow_cookie]\nname = \"bad name\"\nmax_age_days = 401\nkeys = [\"env:SHORT\"]\n",
        &[("SHORT", "too-short")],
    );
    let keys = keys_of(&p);
    assert_eq!(
        keys.iter().filter(|k| **k == "flows[0].countries").count(),
        2,
        "{p:?}"
    );
    for want in [
        "flow_cookie.name",
        "flow_cookie.max_age_days",
        "flow_cookie.keys[0]",
    ] {
        assert!(keys.contains(&want), "{want} not in {keys:?}");
    }
}

#[test]
fn live_refuses_a_generated_flow_cookie_key() {
    let p = problem(
        &format!(
            "env = \"live\"\n[native]\nsigning_keys = [\"/k.pem\"]\n[[clients]]\nname = \"a\"\nkey_sha256 = \"{HASH}\"\nscopes = [\"flow\"]\n[[flows]]\nname = \"login\"\n"
        ),
        &[("REDIS_URL", "redis://127.0.0.1/")],
    );
    assert_eq!(keys_of(&p), ["flow_cookie.keys"], "{p:?}");
    assert!(p[0].message.contains("openssl rand"), "{}", p[0].message);
}

#[test]
fn an_unleash_export_is_taken_as_unleash_would_with_warnings() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("features.json"),
        r#"{"version": 2, "features": [
            {"name": "login", "enabled": true, "type": "release", "project": "default",
             "strategies": [{"name": "flexibleRollout", "parameters":
               {"rollout": "25", "stickiness": "default", "groupId": "login"},
               "constraints": [], "segments": [1]}]},
            {"name": "everyone", "enabled": true, "strategies": []},
            {"name": "half", "enabled": true, "strategies": [
               {"name": "flexibleRollout", "parameters": {"rollout": "12.5"}},
               {"name": "default", "segments": [7]}]},
            {"name": "off", "enabled": false, "strategies": [{"name": "default"}]}
          ],
          "segments": [{"id": 1, "name": "nordics", "constraints":
             [{"contextName": "country", "operator": "IN", "values": ["NO"]}]}]}"#,
    )
    .unwrap();
    let cfg_path = dir.path().join("sessiongate.toml");
    let raw = parse_toml(
        "sessiongate.toml",
        "unleash_features_file = \"features.json\"\n",
    )
    .unwrap();
    let cfg = build(Env::Test, Some(cfg_path), raw, &vars(&[])).unwrap();
    let names: Vec<&str> = cfg.flows.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["login", "everyone", "half", "off"]);
    assert!(
        cfg.flows[3].kill_switch,
        "enabled = false is the kill switch"
    );
    let w = cfg.warnings().join("\n");
    assert!(w.contains("`everyone`: enabled with no strategies"), "{w}");
    assert!(
        w.contains("`half`: strategy 0: rollout `12.5` is not an integer"),
        "{w}"
    );
    assert!(
        w.contains("`half`: strategy 1: segment 7 is not in the export"),
        "{w}"
    );
    assert!(!w.contains("`login`"), "{w}");

    // A broken export names the file and the place.
    std::fs::write(
        dir.path().join("features.json"),
        r#"{"features": [{"enabled": true}]}"#,
    )
    .unwrap();
    let raw = parse_toml(
        "sessiongate.toml",
        "unleash_features_file = \"features.json\"\n",
    )
    .unwrap();
    let p = build(
        Env::Test,
        Some(dir.path().join("sessiongate.toml")),
        raw,
        &vars(&[]),
    )
    .unwrap_err()
    .problems;
    assert_eq!(p[0].key, "unleash_features_file");
    assert!(p[0].message.contains("features[0]"), "{}", p[0].message);
}

#[test]
fn session_format_is_binary_unless_json_is_asked_for() {
    assert_eq!(
        from_toml("", &[]).unwrap().store.session_format,
        SessionFormat::Binary
    );
    assert_eq!(
        from_toml("[redis]\nsession_format = \"json\"\n", &[])
            .unwrap()
            .store
            .session_format,
        SessionFormat::Json
    );
    let p = problem("[redis]\nsession_format = \"protobuf\"\n", &[]);
    assert!(p[0].message.contains("unknown variant"), "{p:?}");
}

#[test]
fn edge_header_names_are_lower_case_distinct_and_never_a_credentials_header() {
    let c = from_toml(
        "[edge.headers]\nuser_id = \"x-user-id\"\nflow = \"x-login-flow\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.edge.headers.user_id, "x-user-id");
    assert_eq!(c.edge.headers.flow, "x-login-flow");
    assert_eq!(c.edge.headers.origin, "x-sessiongate-origin");
    for (toml, why) in [
        ("user_id = \"X-User\"", "lower-case"),
        ("user_id = \"\"", "lower-case"),
        ("user_id = \"x user\"", "lower-case"),
        (
            "subject = \"authorization\"",
            "something else than identity",
        ),
        ("subject = \"cookie\"", "something else than identity"),
        (
            "subject = \"proxy-connection\"",
            "something else than identity",
        ),
        (
            "subject = \"x-sessiongate-caller\"",
            "something else than identity",
        ),
        ("subject = \"x-sessiongate-user-id\"", "already the name"),
    ] {
        let p = problem(&format!("[edge.headers]\n{toml}\n"), &[]);
        assert_eq!(p.len(), 1, "{toml}: {p:?}");
        assert!(p[0].key.starts_with("edge.headers."), "{toml}: {p:?}");
        assert!(p[0].message.contains(why), "{toml}: {p:?}");
    }
    assert!(!problem("[edge.headers]\nuser = \"x\"\n", &[]).is_empty());
}

#[test]
fn a_client_is_known_by_exactly_one_of_a_key_hash_and_a_spiffe_id() {
    let id = "spiffe://cluster.local/ns/istio-system/sa/ingress";
    let c = from_toml(
        &format!("[[clients]]\nname = \"mesh\"\nspiffe_id = \"{id}\"\nscopes = [\"validate\"]\n"),
        &[],
    )
    .unwrap();
    assert_eq!(c.clients[0].spiffe_id.as_deref(), Some(id));
    assert_eq!(c.clients[0].key_sha256, None);
    for (entry, key) in [
        (
            format!("key_sha256 = \"{HASH}\"\nspiffe_id = \"{id}\""),
            "key_sha256",
        ),
        (String::new(), "key_sha256"),
        ("spiffe_id = \"https://example.com/x\"".into(), "spiffe_id"),
        (
            "spiffe_id = \"spiffe://a/b,URI=spiffe://c\"".into(),
            "spiffe_id",
        ),
        ("spiffe_id = \"spiffe://a/b c\"".into(), "spiffe_id"),
    ] {
        let p = problem(
            &format!("[[clients]]\nname = \"mesh\"\n{entry}\nscopes = [\"validate\"]\n"),
            &[],
        );
        assert_eq!(p.len(), 1, "{entry}: {p:?}");
        assert_eq!(p[0].key, format!("clients[0].{key}"), "{entry}: {p:?}");
    }
    let twice = format!(
        "[[clients]]\nname = \"a\"\nspiffe_id = \"{id}\"\nscopes = [\"validate\"]\n\
         [[clients]]\nname = \"b\"\nspiffe_id = \"{id}\"\nscopes = [\"validate\"]\n"
    );
    assert!(problem(&twice, &[])[0].message.contains("twice"));
}

#[test]
fn a_clients_own_edge_route_is_checked_against_its_scopes() {
    let client = |edge: &str, scopes: &str| {
        format!(
            "[[clients]]\nname = \"mesh\"\nspiffe_id = \"spiffe://cluster.local/ns/a/sa/b\"\nscopes = [{scopes}]\nedge = {{ {edge} }}\n"
        )
    };
    let c = from_toml(
        &client(
            "cookie = [\"__Host-sg\", \"legacy_at\"], migrate = \"inline\"",
            "\"validate\", \"migrate\"",
        ),
        &[],
    )
    .unwrap();
    let edge = c.clients[0].edge.as_ref().unwrap();
    assert_eq!(edge.cookie, ["__Host-sg", "legacy_at"]);
    assert_eq!(edge.migrate.as_deref(), Some("inline"));
    for (edge, scopes, key) in [
        (
            "cookie = [\"a; Domain=x\"]",
            "\"validate\"",
            "clients[0].edge.cookie",
        ),
        (
            "migrate = \"inline\"",
            "\"validate\", \"migrate\"",
            "clients[0].edge.migrate",
        ),
        (
            "cookie = [\"a\"], migrate = \"inline\"",
            "\"validate\"",
            "clients[0].edge.migrate",
        ),
        (
            "cookie = [\"a\"], migrate = \"always\"",
            "\"validate\", \"migrate\"",
            "clients[0].edge.migrate",
        ),
    ] {
        let p = problem(&client(edge, scopes), &[]);
        assert_eq!(p.len(), 1, "{edge}: {p:?}");
        assert_eq!(p[0].key, key, "{edge}: {p:?}");
    }
    assert!(!problem(&client("flow = \"login\"", "\"validate\""), &[]).is_empty());
    // A route reads a few cookies of sane names; more is a mistake, refused at start.
    let names = |n: usize| {
        (0..n)
            .map(|i| format!("\"c{i}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let eight = format!("cookie = [{}]", names(MAX_ROUTE_COOKIES));
    let c = from_toml(&client(&eight, "\"validate\""), &[]).unwrap();
    assert_eq!(
        c.clients[0].edge.as_ref().unwrap().cookie.len(),
        MAX_ROUTE_COOKIES
    );
    for edge in [
        format!("cookie = [{}]", names(MAX_ROUTE_COOKIES + 1)),
        format!("cookie = [\"{}\"]", "a".repeat(MAX_COOKIE_NAME_BYTES + 1)),
    ] {
        let p = problem(&client(&edge, "\"validate\""), &[]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].key, "clients[0].edge.cookie", "{p:?}");
    }
}

#[test]
fn older_gradual_strategies_are_taken_with_a_number_and_random_never() {
    let ok = from_toml(
        r#"
[[flows]]
name = "login"
[[flows.strategies]]
name = "gradualRolloutUserId"
parameters = { percentage = "30", groupId = "login" }
[[flows.strategies]]
name = "gradualRolloutSessionId"
parameters = { percentage = "12.5" }
"#,
        &[],
    );
    assert!(ok.is_ok(), "{:?}", ok.err());
    let p = problem(
        r#"
[[flows]]
name = "login"
[[flows.strategies]]
name = "gradualRolloutUserId"
parameters = { percentage = "abc" }
[[flows.strategies]]
name = "gradualRolloutSessionId"
parameters = { percentage = "101" }
[[flows.strategies]]
name = "gradualRolloutRandom"
parameters = { percentage = "50" }
"#,
        &[],
    );
    let keys = keys_of(&p);
    for want in [
        "flows[0].strategies[0].parameters.percentage",
        "flows[0].strategies[1].parameters.percentage",
        "flows[0].strategies[2].name",
    ] {
        assert!(keys.contains(&want), "{want} not in {keys:?}");
    }
}

#[test]
fn backchannel_logout_settings_are_checked() {
    let p = problem(
        r#"
[[providers]]
name = "legacy"
kind = "legacy"
issuer = "https://idp.example/"
audiences = ["api"]
backchannel_logout_revokes = "all"
[[providers]]
name = "other"
kind = "legacy"
issuer = "not-a-url"
jwks_url = "https://idp.example/jwks"
audiences = ["api"]
backchannel_logout_audiences = [""]
"#,
        &[],
    );
    let keys = keys_of(&p);
    for want in [
        "providers[0].backchannel_logout_revokes",
        "providers[1].backchannel_logout_audiences",
    ] {
        assert!(keys.contains(&want), "{want} not in {keys:?}");
    }
    let bad = from_toml(
        "[[providers]]\nname = \"l\"\nkind = \"legacy\"\nissuer = \"https://idp.example/\"\naudiences = [\"api\"]\nbackchannel_logout_audiences = [\"c\"]\nbackchannel_logout_revokes = \"everything\"\n",
        &[],
    );
    assert!(bad.is_err(), "an unknown revokes value");
    let ok = from_toml(
        "[[providers]]\nname = \"l\"\nkind = \"legacy\"\nissuer = \"https://idp.example/\"\naudiences = [\"api\"]\nbackchannel_logout_audiences = [\"fleet\"]\n",
        &[],
    )
    .expect("valid");
    let b = ok.providers[0].backchannel_logout.as_ref().unwrap();
    assert_eq!(b.audiences, ["fleet"]);
    assert_eq!(
        b.revokes,
        crate::config::LogoutRevokes::Legacy,
        "the default"
    );
}

const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[test]
fn webhooks_parse_with_defaults_and_never_show_their_secrets() {
    let cfg = from_toml(
        "[[webhooks]]\nurl = \"https://hooks.example.com/in?token=abc\"\nsecrets = [\"env:WH1\", \"env:WH2\"]\n\
         [[webhooks]]\nname = \"legacy-backfill\"\nurl = \"https://legacy.example.com/hook\"\nsecrets = [\"env:WH1\"]\nevents = [\"user.created\"]\n",
        &[("WH1", WHSEC), ("WH2", WHSEC)],
    )
    .unwrap();
    let [a, b] = &cfg.webhooks[..] else {
        panic!("two webhooks")
    };
    assert!(a.name.starts_with("webhook-") && a.name.len() == "webhook-".len() + 8);
    assert_eq!(a.secrets.len(), 2);
    assert_eq!(a.secrets[0].key_bytes().len(), 24);
    assert!(a.wants("rollout.updated") && a.wants("user.migrated"));
    assert_eq!(a.retry_for, Duration::from_secs(86_400));
    assert_eq!(a.timeout, Duration::from_secs(10));
    assert_eq!(b.name, "legacy-backfill");
    assert!(b.wants("user.created") && !b.wants("session.created"));
    let shown = cfg.describe();
    assert!(
        !shown.contains("MfKQ9r8") && !shown.contains("token=abc"),
        "{shown}"
    );
    assert!(shown.contains("env:WH1"));
}

#[test]
fn webhook_mistakes_are_refused_with_their_key() {
    let p = problem(
        "[[webhooks]]\nname = \"a\"\nurl = \"https://x.example/h\"\nsecrets = [\"whsec_literal\"]\n\
         [[webhooks]]\nname = \"a\"\nurl = \"https://y.example/h\"\nsecrets = [\"env:SHORT\"]\nevents = []\n\
         [[webhooks]]\nname = \"c d\"\nurl = \"https://z.example/h\"\nsecrets = [\"env:NOPREFIX\", \"env:MISSING\"]\nevents = [\"user.deleted\"]\n\
         [[webhooks]]\nurl = \"ftp://w.example/h\"\nsecrets = [\"env:WH\"]\n\
         [[webhooks]]\nsecrets = [\"env:WH\"]\n\
         [[webhooks]]\nname = \"e\"\nurl = \"https://v.example/h\"\nsecrets = []\ntimeout_seconds = 0\nmax_in_flight = 0\n",
        &[
            ("SHORT", "whsec_c2hvcnQ="),
            ("NOPREFIX", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            ("WH", WHSEC),
        ],
    );
    let keys: Vec<_> = p.iter().map(|p| p.key.as_str()).collect();
    for want in [
        "webhooks[0].secrets[0]",
        "webhooks[1].name",
        "webhooks[1].secrets[0]",
        "webhooks[1].events",
        "webhooks[2].name",
        "webhooks[2].secrets[0]",
        "webhooks[2].secrets[1]",
        "webhooks[2].events",
        "webhooks[3].url",
        "webhooks[4].url",
        "webhooks[5].secrets",
        "webhooks[5].timeout_seconds",
        "webhooks[5].max_in_flight",
    ] {
        assert!(keys.contains(&want), "{want} not in {keys:?}");
    }
    // No secret value in any message.
    assert!(p.iter().all(|p| !p.message.contains("MfKQ9r8")));
    // Plain http only in test.
    let live = problem(
        "[[webhooks]]\nurl = \"http://hooks.internal/h\"\nsecrets = [\"env:WH\"]\n",
        &[("WH", WHSEC), (ENV_ENV, "live")],
    );
    assert!(live.iter().any(|p| p.key == "webhooks[0].url"), "{live:?}");
}

#[test]
fn a_ramp_parses_with_default_guards_and_its_mistakes_are_refused() {
    let cfg = from_toml(
        "[[flows]]\nname = \"login\"\npercentage = 5\n\
         [[flows.ramp]]\npercentage = 10\nhold_minutes = 60\n\
         [[flows.ramp]]\npercentage = 100\n",
        &[],
    )
    .unwrap();
    let ramp = cfg.flows[0].ramp.as_ref().unwrap();
    assert_eq!(ramp.steps.len(), 2);
    assert_eq!(ramp.steps[0].hold, Some(Duration::from_secs(3600)));
    assert_eq!(ramp.steps[1].hold, None);
    assert_eq!(ramp.guards.window, Duration::from_secs(600));
    assert_eq!(ramp.guards.min_samples, 100);
    assert_eq!(ramp.guards.migration_failure_ratio, 0.05);

    let p = problem(
        "[[flows]]\nname = \"a\"\npercentage = 20\n\
         [[flows.ramp]]\npercentage = 10\nhold_minutes = 0\n\
         [[flows.ramp]]\npercentage = 150\n\
         [flows.guards]\nnew_invalid_ratio = 1.5\nwindow_minutes = 120\n\
         [[flows]]\nname = \"b\"\n\
         [[flows.ramp]]\npercentage = 50\n\
         [[flows.ramp]]\npercentage = 60\n\
         [[flows]]\nname = \"c\"\n[flows.guards]\nmin_samples = 5\n\
         [[flows]]\nname = \"d\"\n[[flows.strategies]]\nname = \"default\"\n\
         [[flows.ramp]]\npercentage = 50\n",
        &[],
    );
    let keys: Vec<_> = p.iter().map(|p| p.key.as_str()).collect();
    for want in [
        "flows[0].ramp[0].percentage",
        "flows[0].ramp[0].hold_minutes",
        "flows[0].ramp[1].percentage",
        "flows[0].guards.new_invalid_ratio",
        "flows[0].guards.window_minutes",
        "flows[1].ramp[0].hold_minutes",
        "flows[2].guards",
        "flows[3].ramp",
    ] {
        assert!(keys.contains(&want), "{want} not in {keys:?}");
    }
}
