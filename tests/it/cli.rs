//! The real binary's start-up refusals and `check-config`.

use std::process::{Command, Output};

fn sessiongate(args: &[&str], envs: &[(&str, &str)], cwd: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sessiongate"))
        .args(args)
        .env_clear()
        .envs(envs.iter().copied())
        .current_dir(cwd)
        .output()
        .expect("run sessiongate")
}

#[test]
fn bad_config_file_stops_start_up_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "unknown.toml",
            "[server]\ngrpc_adr = \"0.0.0.0:1\"\n",
            "server.grpc_adr",
            "unknown field",
        ),
        (
            "type.toml",
            "[[flows]]\nname = \"login\"\npercentage = \"ten\"\n",
            "flows[0].percentage",
            "invalid type",
        ),
        (
            "range.toml",
            "[[flows]]\nname = \"login\"\npercentage = 150\n",
            "flows[0].percentage",
            "more than 100",
        ),
    ];
    for (file, text, key, what) in cases {
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        for args in [vec!["serve"], vec!["check-config", path.to_str().unwrap()]] {
            let out = sessiongate(
                &args,
                &[("SESSIONGATE_CONFIG", path.to_str().unwrap())],
                dir.path(),
            );
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{args:?} {file}: {err}");
            assert!(
                err.contains(file) && err.contains(key) && err.contains(what),
                "{args:?} {file}: {err}"
            );
        }
    }
}

#[test]
fn live_without_required_settings_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = sessiongate(&[], &[("SESSIONGATE_ENV", "live")], dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    for fix in ["REDIS_URL", "sessiongate keygen", "[[clients]]"] {
        assert!(err.contains(fix), "missing `{fix}` in: {err}");
    }
}

#[test]
fn check_config_prints_what_it_understood_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env-test"),
        "REDIS_URL=redis://:hunter2@127.0.0.1:1/\n",
    )
    .unwrap();
    let out = sessiongate(&["check-config"], &[], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(json["env"], "test");
    assert_eq!(json["store"]["redis_url"], "<redacted>");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hunter2"));
}

#[test]
fn apikey_prints_a_key_whose_hash_it_configures() {
    let dir = tempfile::tempdir().unwrap();
    let out = sessiongate(&["apikey", "--name", "svc"], &[], dir.path());
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let key = text.lines().nth(1).unwrap().trim_start_matches("# ");
    let hash = sessiongate::store::keys::Digest::of(key.as_bytes()).to_hex();
    assert!(text.contains(&format!("key_sha256 = \"{hash}\"")), "{text}");
}

#[test]
fn token_inspect_decodes_without_trusting_and_never_prints_a_signature() {
    use base64::Engine as _;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let sig = "bm90LWEtcmVhbC1zaWduYXR1cmUtYnV0LWxvbmctZW5vdWdoLXRvLW1hdHRlcg";
    let token = format!(
        "{}.{}.{sig}",
        b64(serde_json::json!({"alg": "ES256", "kid": "k-9"})),
        b64(
            serde_json::json!({"iss": "https://idp.example.com/", "sub": "s-1", "exp": 4_000_000_000u64})
        )
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sessiongate.toml");
    std::fs::write(
        &cfg,
        "[[providers]]\nname = \"old\"\nkind = \"legacy\"\nissuer = \"https://idp.example.com/\"\naudiences = [\"a\"]\n",
    )
    .unwrap();
    let out = sessiongate(
        &[
            "token",
            "inspect",
            &token,
            "--config",
            cfg.to_str().unwrap(),
        ],
        &[],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["header"]["kid"], "k-9");
    assert_eq!(v["claims"]["sub"], "s-1");
    assert_eq!(v["expired"], false);
    assert_eq!(v["verifier"], "legacy provider `old`");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(sig));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT VERIFIED"));
}

#[test]
fn flow_simulate_counts_where_users_land() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sessiongate.toml");
    std::fs::write(
        &cfg,
        "[[flows]]\nname = \"login\"\npercentage = 30\nstickiness = \"device\"\ncountries = [\"NO\"]\n",
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "flow",
            "simulate",
            "--config",
            cfg.to_str().unwrap(),
            "--users",
            "20000",
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = sessiongate(&args, &[], dir.path());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let share = |v: &serde_json::Value| v["new"].as_f64().unwrap() / 20000.0 * 100.0;
    let at30 = run(&["--country", "no"]);
    assert!((share(&at30) - 30.0).abs() < 1.5, "{at30}");
    let at60 = run(&["--country", "NO", "--percentage", "60"]);
    assert!((share(&at60) - 60.0).abs() < 1.5, "{at60}");
    let elsewhere = run(&["--country", "SE"]);
    assert_eq!(elsewhere["new"], 0);
    assert_eq!(elsewhere["rows"][0][1], "not_eligible");
    let out = sessiongate(
        &[
            "flow",
            "simulate",
            "--config",
            cfg.to_str().unwrap(),
            "--flow",
            "nope",
        ],
        &[],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no flow named `nope`"));
}
