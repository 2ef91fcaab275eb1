//! sessiongate's load generator (method and targets: docs/performance.md).
//!
//! Starts a local redis-server and the **release binary** of sessiongate, prepares sessions,
//! then measures each path against the baseline `grpc.health.v1.Health/Check` on the same
//! server, in alternating rounds, and prints throughput, latency percentiles and the ratio to
//! the baseline — as a table and as JSON. Absolute numbers depend on the machine; the ratios
//! are what the targets are about.
//!
//! Run it with `./scripts/bench` (builds the release binary first), or
//! `cargo bench --bench loadgen -- --help`. It is a tool, not a Criterion bench: it lives
//! here so that `cargo bench` builds it with the dev-dependencies; `benches/support` holds the
//! legacy provider and the Redis the benches share.

#[path = "../support/idp.rs"]
mod fixtures;
mod h2load;
mod migrate;
mod paths;
#[path = "../support/redis.rs"]
mod redis_server;
mod report;
mod run;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use sessiongate::clock::{Clock, SystemClock};
use sessiongate::grpc::pb;
use sessiongate::grpc::pb::session_gate_service_client::SessionGateServiceClient;
use sessiongate::keys::SigningKeys;
use sessiongate::session::model::{AuthFactor, Session};
use sessiongate::session::native::NativeIssuer;

use fixtures::{LEGACY_API, LegacyIdp};
use migrate::{MigrateResult, bench_migrate};
use paths::{Fixtures, Path, measure, validate_lean};
use redis_server::Redis;
use report::{Row, cpu_us, print_table, rss_kb};
use run::Run;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[derive(Parser, Debug)]
#[command(about = "Measures sessiongate's RPC paths as ratios to Health/Check on the same server")]
struct Args {
    /// Seconds per timed round.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Rounds per path (each paired with a baseline round; the median ratio is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Requests in flight during throughput rounds.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Distinct never-seen JWTs per uncached round (the round ends when they are used up).
    #[arg(long, default_value_t = 4000)]
    uncached_tokens: usize,
    /// The sessiongate binary to measure.
    #[arg(long, default_value = "target/release/sessiongate")]
    binary: PathBuf,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Fixed latency of the fake UserInfo endpoint in the MigrateSession benchmark.
    #[arg(long, default_value_t = 20)]
    userinfo_latency_ms: u64,
    /// Migrations per MigrateSession measurement (each one a never-seen legacy identity).
    #[arg(long, default_value_t = 1500)]
    migrations: usize,
    /// Server-bound: the server pinned to core 0 with one worker thread, the load (h2load,
    /// and this process) on core 1, so that the ratios are the server's cost and not the
    /// client's. Otherwise client and server share every core.
    #[arg(long)]
    server_bound: bool,
    /// Server-bound mode: h2load's connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Server-bound mode: h2load's concurrent streams per connection.
    #[arg(long, default_value_t = 16)]
    streams: usize,
    /// Paths to run (default: all; `migrate` is the MigrateSession benchmark).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    // `cargo bench` passes --bench; accept and ignore it.
    #[arg(long, hide = true)]
    bench: bool,
}

pub(crate) const API_KEY: &str = "loadgen-key";

struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.server_bound {
        // Before the runtime starts: its threads, redis-server and h2load inherit core 1.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        anyhow::ensure!(
            cores >= 2,
            "--server-bound needs two cores, this machine has {cores}"
        );
        let pinned = Command::new("taskset")
            .args(["-p", "-c", "1", &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(pinned.success(), "taskset could not pin the load generator");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.binary.exists(),
        "{} not found: build it first (cargo build --release) or use ./scripts/bench",
        args.binary.display()
    );
    // The server runs in a temp dir: resolve the binary before leaving this one.
    let binary = std::fs::canonicalize(&args.binary)?;
    let redis = Redis::start()?;
    let dir = tempfile::tempdir()?;
    let key_path = dir.path().join("signing.pem");
    std::fs::write(
        &key_path,
        sessiongate::keys::signing::generate_pem(sessiongate::keys::KeyKind::Rs256)?,
    )?;
    let legacy = LegacyIdp::start(Duration::from_millis(args.userinfo_latency_ms)).await?;
    let config_path = dir.path().join("sessiongate.toml");
    std::fs::write(
        &config_path,
        format!(
            "[native]\nsigning_keys = [\"{}\"]\n[[clients]]\nname = \"loadgen\"\nkey_sha256 = \"{}\"\nscopes = [\"validate\", \"issue\", \"migrate\", \"flow\"]\n\
             [[flows]]\nname = \"login\"\npercentage = 50\nstickiness = \"device\"\ncountries = [\"NO\", \"SE\"]\n\
             [migration]\nper_caller_per_minute = 10000000\n\
             [[providers]]\nname = \"legacy\"\nkind = \"legacy\"\nissuer = \"{}\"\njwks_url = \"{}\"\nuserinfo_url = \"{}\"\naudiences = [\"{LEGACY_API}\"]\nalgorithms = [\"RS256\", \"ES256\", \"EdDSA\"]\n\
             userinfo_budget_per_second = 100000\nuserinfo_budget_burst = 100000\n",
            key_path.display(),
            sessiongate::store::keys::Digest::of(API_KEY.as_bytes()).to_hex(),
            legacy.issuer(),
            legacy.jwks_url(),
            legacy.userinfo_url(),
        ),
    )?;

    let started = Instant::now();
    let mut command = if args.server_bound {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(&binary);
        c
    } else {
        Command::new(&binary)
    };
    let mut child = command
        .env_clear()
        // One worker thread on the one core the server may use.
        .envs(args.server_bound.then_some(("TOKIO_WORKER_THREADS", "1")))
        .env("SESSIONGATE_CONFIG", &config_path)
        .env("REDIS_URL", redis.url())
        .env("SESSIONGATE_GRPC_ADDR", "127.0.0.1:0")
        .env("SESSIONGATE_HTTP_ADDR", "127.0.0.1:0")
        .env("SESSIONGATE_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .current_dir(dir.path())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    let stderr = child.stderr.take().expect("piped");
    let server = Server { child };
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Reads until the server says where it serves, then keeps draining.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("\"sessiongate serving\"") {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                let addr = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                let _ = addr_tx.send((addr("grpc_addr"), addr("http_addr")));
            }
        }
    });
    let (addr, http_addr) = addr_rx.recv_timeout(Duration::from_secs(30))?;
    let to_listening = started.elapsed();
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    // Start-to-SERVING: process spawn until the first Health/Check answers SERVING.
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    let to_serving = started.elapsed();

    eprintln!(
        "preparing sessions and {} fresh JWTs per uncached round…",
        args.uncached_tokens
    );
    let fixtures = Arc::new(prepare(&channel, &http_addr, &key_path, &legacy, &args).await?);
    // The legacy issuer's keys load in the background at start: wait until they verify.
    let warm = legacy
        .signer(sessiongate::keys::KeyKind::Rs256)
        .sign(&legacy.claims("legacy-warm-up"));
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut req = tonic::Request::new(pb::ValidateSessionRequest {
            token: warm.clone(),
            ..Default::default()
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {API_KEY}").parse()?);
        if matches!(validate_lean(&mut grpc, req).await, Ok(v) if v.verdict == pb::Verdict::Valid as i32)
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the legacy issuer's keys never loaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let all = [
        Path::JwtCachedBasic,
        Path::JwtCached,
        Path::JwtUncached,
        Path::OpaqueBasic,
        Path::Opaque,
        Path::ResolveFlow,
        Path::Malformed,
        Path::MalformedJwtSized,
        Path::EnvoyCheck,
        Path::EnvoyCheckFloor,
        Path::ForwardAuth,
        Path::LegacyRs256,
        Path::LegacyEs256,
        Path::LegacyEdDsa,
    ];
    let paths: Vec<Path> = all
        .into_iter()
        .filter(|p| args.only.is_empty() || args.only.iter().any(|o| o == p.key()))
        .collect();

    // Warm-up (connections, caches, allocator): not measured.
    for p in std::iter::once(Path::Baseline).chain(paths.iter().copied().filter(|p| !p.fresh())) {
        measure(p, &channel, &fixtures, 8, Duration::from_millis(300), None).await;
    }

    let pid = server.child.id();
    let h2load = if args.server_bound {
        Some(h2load::H2Load::new(
            &addr,
            &http_addr,
            dir.path(),
            args.connections,
            args.streams,
        )?)
    } else {
        None
    };
    let mut results = Vec::new();
    for &path in &paths {
        let mut ratios = Vec::new();
        let mut runs = Vec::new();
        let mut bases = Vec::new();
        // Server CPU per request (µs), path and baseline: a cost that host noise and the
        // load generator's own share of the cores do not move the way throughput moves.
        let (mut cpu, mut base_cpu) = (Vec::new(), Vec::new());
        for _ in 0..args.rounds {
            let limit = path.fresh().then_some(args.uncached_tokens);
            let dur = Duration::from_secs_f64(args.seconds);
            if let (Some(h2), Some(req)) = (&h2load, h2load::fixed_request(path, &fixtures)) {
                let base_req = h2load::fixed_request(Path::Baseline, &fixtures)
                    .expect("the baseline has a fixed request");
                let base = h2
                    .shot(Path::Baseline, &base_req, args.seconds, pid)
                    .await?;
                let run = h2.shot(path, &req, args.seconds, pid).await?;
                base_cpu.push(base.cpu_us);
                cpu.push(run.cpu_us);
                ratios.push(run.rps / base.rps);
                runs.push(Run::throughput(run.rps, run.done));
                bases.push(Run::throughput(base.rps, base.done));
                continue;
            }
            let t0 = cpu_us(pid);
            let base = measure(
                Path::Baseline,
                &channel,
                &fixtures,
                args.concurrency,
                dur,
                None,
            )
            .await;
            let t1 = cpu_us(pid);
            let run = measure(path, &channel, &fixtures, args.concurrency, dur, limit).await;
            let t2 = cpu_us(pid);
            base_cpu.push((t1 - t0) as f64 / base.ok.max(1) as f64);
            cpu.push((t2 - t1) as f64 / run.ok.max(1) as f64);
            anyhow::ensure!(
                run.errors == 0 && base.errors == 0,
                "{}: {} errors",
                path.name(),
                run.errors + base.errors
            );
            ratios.push(run.rps() / base.rps());
            runs.push(run);
            bases.push(base);
        }
        // Unloaded latency: one request at a time.
        let base1 = measure(
            Path::Baseline,
            &channel,
            &fixtures,
            1,
            Duration::from_secs(1),
            None,
        )
        .await;
        let limit1 = path.fresh().then_some(args.uncached_tokens / 4);
        let run1 = measure(path, &channel, &fixtures, 1, Duration::from_secs(1), limit1).await;
        ratios.sort_by(f64::total_cmp);
        let median = ratios[ratios.len() / 2];
        let mid = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let best = runs
            .iter()
            .max_by(|a, b| a.rps().total_cmp(&b.rps()))
            .expect("rounds >= 1");
        let best_base = bases
            .iter()
            .max_by(|a, b| a.rps().total_cmp(&b.rps()))
            .expect("rounds >= 1");
        results.push(Row {
            path,
            rps: best.rps(),
            base_rps: best_base.rps(),
            ratio: median,
            p50: best.p(0.5),
            p99: best.p(0.99),
            p999: best.p(0.999),
            unloaded_p50: run1.p(0.5),
            unloaded_p99: run1.p(0.99),
            base_unloaded_p99: base1.p(0.99),
            cpu_us: mid(cpu),
            base_cpu_us: mid(base_cpu),
        });
    }

    let migrate = if args.only.is_empty() || args.only.iter().any(|o| o == "migrate") {
        Some(bench_migrate(&channel, &legacy, &args).await?)
    } else {
        None
    };

    let rss_kb = rss_kb(server.child.id());
    println!(
        "\nmode: {}",
        if args.server_bound {
            format!(
                "server-bound (server on core 0 with one worker thread; h2load -c {} -m {} and this process on core 1)",
                args.connections, args.streams
            )
        } else {
            format!(
                "shared (client and server on every core; {} calls in flight on one connection)",
                args.concurrency
            )
        }
    );
    print_table(&results, to_listening, to_serving, rss_kb);
    if let Some(m) = &migrate {
        m.print();
    }
    let json = serde_json::json!({
        "machine": { "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
        "mode": if args.server_bound { "server-bound" } else { "shared" },
        "concurrency": args.concurrency,
        "h2load_connections_streams": args.server_bound.then_some([args.connections, args.streams]),
        "seconds_per_round": args.seconds,
        "rounds": args.rounds,
        "start_to_listening_ms": to_listening.as_secs_f64() * 1000.0,
        "start_to_serving_ms": to_serving.as_secs_f64() * 1000.0,
        "server_rss_kb_after_run": rss_kb,
        "paths": results.iter().map(Row::json).collect::<Vec<_>>(),
        "migrate": migrate.as_ref().map(MigrateResult::json),
    });
    println!("{}", serde_json::to_string_pretty(&json)?);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&json)?)?;
    }
    drop(server);
    Ok(())
}

/// `n` tokens made by `make(i)` on two threads (signing, RSA above all, is slow).
fn mint_many(
    n: usize,
    make: Arc<dyn Fn(usize) -> String + Send + Sync>,
) -> anyhow::Result<Vec<String>> {
    let half = n.div_ceil(2);
    let handles: Vec<_> = (0..2)
        .map(|t| {
            let make = make.clone();
            std::thread::spawn(move || {
                (t * half..((t + 1) * half).min(n))
                    .map(|i| make(i))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for h in handles {
        out.extend(
            h.join()
                .map_err(|_| anyhow::anyhow!("minting thread panicked"))?,
        );
    }
    Ok(out)
}

async fn prepare(
    channel: &Channel,
    http_addr: &str,
    key_path: &std::path::Path,
    legacy: &LegacyIdp,
    args: &Args,
) -> anyhow::Result<Fixtures> {
    let mut client = SessionGateServiceClient::new(channel.clone());
    let mut opaque = Vec::new();
    let mut cached_jwt = String::new();
    for i in 0..200 {
        let mut req = tonic::Request::new(pb::CreateSessionRequest {
            who: Some(pb::create_session_request::Who::NewUser(pb::NewUser {
                email: format!("load{i}@example.com"),
                ..Default::default()
            })),
            ..Default::default()
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {API_KEY}").parse()?);
        let r = client.create_session(req).await?.into_inner();
        opaque.push(r.session_token);
        cached_jwt = r.session_jwt;
    }
    // Fresh JWTs signed with the server's own key (what the server would mint), made here
    // so the server's cache has never seen them. Two threads: RSA signing is slow.
    let cfg = sessiongate::config::load(
        &HashMap::<String, String>::new(),
        key_path.parent().unwrap(),
        None,
    )?;
    let keys = Arc::new(SigningKeys::load_or_generate(&[
        sessiongate::config::KeySource::File(key_path.to_path_buf()),
    ])?);
    let issuer = Arc::new(NativeIssuer::new(cfg.env, &cfg.native, keys));
    let per_path = args.uncached_tokens * (args.rounds + 2);
    let wanted = |p: Path| args.only.is_empty() || args.only.iter().any(|o| o == p.key());
    let mut fresh = HashMap::new();
    if wanted(Path::JwtUncached) {
        let now = SystemClock.now_ms();
        let tokens = mint_many(
            per_path,
            Arc::new(move |i| {
                let session = Session {
                    session_id: format!("session-test-load-{i}"),
                    user_id: format!("user-test-load-{i}"),
                    started_at_ms: now,
                    last_accessed_at_ms: now,
                    expires_at_ms: now + 3_600_000,
                    factors: vec![AuthFactor {
                        kind: "password".into(),
                        ..Default::default()
                    }],
                    attributes: Default::default(),
                    custom_claims: Default::default(),
                };
                issuer.mint(&session, now).expect("mint")
            }),
        )?;
        fresh.insert(
            Path::JwtUncached.key(),
            std::sync::Mutex::new(tokens.into_iter()),
        );
    }
    for (path, kind) in [
        (Path::LegacyRs256, sessiongate::keys::KeyKind::Rs256),
        (Path::LegacyEs256, sessiongate::keys::KeyKind::Es256),
        (Path::LegacyEdDsa, sessiongate::keys::KeyKind::Eddsa),
    ] {
        if !wanted(path) {
            continue;
        }
        let signer = legacy.signer(kind);
        let claims = legacy.claims("legacy-load");
        let tokens = mint_many(
            per_path,
            Arc::new(move |i| {
                let mut c = claims.clone();
                c["jti"] = serde_json::json!(format!("load-{i}"));
                signer.sign(&c)
            }),
        )?;
        fresh.insert(path.key(), std::sync::Mutex::new(tokens.into_iter()));
    }
    Ok(Fixtures {
        http_addr: http_addr.to_owned(),
        cached_jwt,
        opaque,
        fresh,
    })
}
