//! Reliability under faults (issue #9, reliability.md §7): each scenario runs load against the
//! service while a dependency fails, keeps a **ledger** of what the service acknowledged
//! (sessions created, revocations), and replays it through the service afterwards: nothing
//! acknowledged may be lost, no revoked token may come back, JWT validation never stops,
//! opaque validation is `UNAVAILABLE` (never INVALID) while Redis is away, and everything
//! recovers within 3 s of the dependency returning — without restarting sessiongate.
//! Figures are printed (`cargo test faults -- --nocapture`) for the table.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sessiongate::grpc::pb;
use sessiongate::grpc::pb::session_gate_service_client::SessionGateServiceClient;
use tonic::transport::Channel;

use crate::support::proxy::{Fault, FaultProxy};
use crate::support::{RedisCluster, RedisServer, Setup, TestApp};

const KEY: &str = "faults-test-key";

/// How much longer the phases of a scenario last: 1 in CI; `SESSIONGATE_SOAK=<n>` stretches
/// load and outage phases (and counts) n-fold for a soak run (README, "Reliability").
pub fn soak() -> u32 {
    std::env::var("SESSIONGATE_SOAK")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| (1..=1000).contains(n))
        .unwrap_or(1)
}

/// A signing key on disk (so that several replicas and restarts share it) and a caller key
/// with every scope the load needs.
fn key_file(dir: &std::path::Path) -> String {
    let path = dir.join("signing.pem");
    std::fs::write(
        &path,
        sessiongate::keys::signing::generate_pem(sessiongate::keys::KeyKind::Rs256).unwrap(),
    )
    .unwrap();
    format!(
        "[native]\nsigning_keys = [\"{}\"]\n[[clients]]\nname = \"load\"\nkey_sha256 = \"{}\"\nscopes = [\"validate\", \"issue\", \"revoke\"]\n",
        path.display(),
        crate::support::sha(KEY)
    )
}

type Auth = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;
type Api = SessionGateServiceClient<tonic::service::interceptor::InterceptedService<Channel, Auth>>;

fn bearer(mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    r.metadata_mut().insert(
        "authorization",
        tonic::metadata::MetadataValue::from_static("Bearer faults-test-key"),
    );
    Ok(r)
}

/// A client of `app` that authenticates as the load's caller.
fn client_of(app: &TestApp) -> Api {
    SessionGateServiceClient::with_interceptor(app.channel.clone(), bearer as Auth)
}

/// What the service acknowledged during a scenario.
#[derive(Default)]
struct Ledger {
    /// (session_token, session_jwt) of every OK CreateSession.
    created: Vec<(String, String)>,
    /// session tokens whose RevokeSession was acknowledged.
    revoked: Vec<(String, String)>,
}

struct Counts {
    ok: usize,
    unavailable: usize,
    other: Vec<String>,
}

async fn create(api: &mut Api) -> Result<pb::CreateSessionResponse, tonic::Status> {
    api.create_session(pb::CreateSessionRequest {
        who: Some(pb::create_session_request::Who::NewUser(
            pb::NewUser::default(),
        )),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

async fn validate(
    api: &mut Api,
    token: &str,
) -> Result<pb::ValidateSessionResponse, tonic::Status> {
    api.validate_session(pb::ValidateSessionRequest {
        token: token.into(),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

/// The verdict on `token` (the call itself must succeed).
async fn verdict(api: &mut Api, token: &str) -> pb::Verdict {
    validate(api, token)
        .await
        .expect("ValidateSession answers")
        .verdict()
}

/// Creates and revokes sessions on `workers` tasks until `stop`, recording what was
/// acknowledged; returns the ledger and how the calls ended.
async fn drive(
    app: &TestApp,
    workers: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (Ledger, Counts) {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let counts = Arc::new(Mutex::new(Counts {
        ok: 0,
        unavailable: 0,
        other: vec![],
    }));
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let mut api = client_of(app);
            let (ledger, counts, stop) = (ledger.clone(), counts.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let outcome = match create(&mut api).await {
                        Ok(c) => {
                            // Every third session is revoked right away.
                            if (i + w).is_multiple_of(3) {
                                match api
                                    .revoke_session(pb::RevokeSessionRequest {
                                        target: Some(
                                            pb::revoke_session_request::Target::SessionToken(
                                                c.session_token.clone(),
                                            ),
                                        ),
                                        ..Default::default()
                                    })
                                    .await
                                {
                                    Ok(_) => {
                                        ledger
                                            .lock()
                                            .unwrap()
                                            .revoked
                                            .push((c.session_token, c.session_jwt));
                                        Ok(())
                                    }
                                    Err(e) => {
                                        // Not acknowledged: the session may or may not be revoked.
                                        Err(e)
                                    }
                                }
                            } else {
                                ledger
                                    .lock()
                                    .unwrap()
                                    .created
                                    .push((c.session_token, c.session_jwt));
                                Ok(())
                            }
                        }
                        Err(e) => Err(e),
                    };
                    let mut c = counts.lock().unwrap();
                    match outcome {
                        Ok(()) => c.ok += 1,
                        Err(e) if e.code() == tonic::Code::Unavailable => c.unavailable += 1,
                        Err(e) => c.other.push(format!("{:?}: {}", e.code(), e.message())),
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let ledger = Arc::try_unwrap(ledger).ok().unwrap().into_inner().unwrap();
    let counts = Arc::try_unwrap(counts).ok().unwrap().into_inner().unwrap();
    (ledger, counts)
}

/// Replays the ledger through the service: (sessions lost, revocations undone).
async fn replay(api: &mut Api, ledger: &Ledger) -> (usize, usize) {
    let mut lost = 0;
    for (token, _) in &ledger.created {
        let v = validate_once_up(api, token).await;
        if v.verdict() != pb::Verdict::Valid {
            lost += 1;
        }
    }
    let mut undone = 0;
    for (token, jwt) in &ledger.revoked {
        for t in [token, jwt] {
            let v = validate_once_up(api, t).await;
            if v.verdict() == pb::Verdict::Valid {
                undone += 1;
            }
        }
    }
    (lost, undone)
}

/// A verdict on `token` now that the store is back. Under the whole suite's load on two
/// cores one call may still time out (UNAVAILABLE): that is availability, which `recovery`
/// measures; the replay is about data, so it asks again, for at most 3 s.
async fn validate_once_up(api: &mut Api, token: &str) -> pb::ValidateSessionResponse {
    let since = Instant::now();
    loop {
        match validate(api, token).await {
            Ok(v) => return v,
            Err(e)
                if e.code() == tonic::Code::Unavailable
                    && since.elapsed() < Duration::from_secs(3) =>
            {
                // Backoff between real requests, not synchronisation.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the store is back, yet: {e:?}"),
        }
    }
}

/// Polls until opaque validation answers again; returns how long it took.
async fn recovery(api: &mut Api, token: &str, since: Instant) -> Duration {
    loop {
        if let Ok(v) = validate(api, token).await {
            assert_ne!(
                v.reason(),
                pb::Reason::NotFound,
                "a session came back NOT_FOUND"
            );
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(3),
            "no recovery within 3 s"
        );
        // Backoff between real requests, not synchronisation.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_redis_killed_mid_load_and_restarted_with_aof_loses_nothing_acknowledged() {
    r1(RedisServer::start_with_aof().await, "everysec").await;
}

/// R1 with `appendfsync always`: not even the last second may be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_with_appendfsync_always_loses_not_one_acknowledged_session() {
    r1(RedisServer::start_with_aof_always().await, "always").await;
}

async fn r1(mut redis: RedisServer, fsync: &str) {
    let dir = tempfile::tempdir().unwrap();
    let app = Setup::new()
        .toml(&key_file(dir.path()))
        .redis(&redis)
        .spawn()
        .await;
    let mut api = client_of(&app);
    let probe = create(&mut api).await.unwrap();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let app = &app;
        let stop = stop.clone();
        async move { drive(app, 4, stop).await }
    };
    let chaos = async {
        // Load for a while, then a crash mid-load; the load keeps going meanwhile.
        tokio::time::sleep(Duration::from_millis(700) * soak()).await;
        redis.kill().await;
        let killed = Instant::now();
        // While Redis is away: JWTs validate, opaque tokens are UNAVAILABLE, never INVALID.
        let mut api = client_of(&app);
        let jwt = validate(&mut api, &probe.session_jwt).await.unwrap();
        assert_eq!(jwt.verdict(), pb::Verdict::Valid);
        let t0 = Instant::now();
        let e = validate(&mut api, &probe.session_token).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        let unavailable_after = t0.elapsed();
        // The outage lasts this long under load (a phase of the scenario, not a wait for an event).
        tokio::time::sleep(Duration::from_millis(500) * soak()).await;
        redis.restart().await;
        let back = Instant::now();
        let recovered = recovery(&mut api, &probe.session_token, back).await;
        // A little load after recovery, then stop the drivers.
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (killed.elapsed(), unavailable_after, recovered)
    };
    let ((ledger, counts), (down, unavailable_after, recovered)) = tokio::join!(load, chaos);
    let (lost, undone) = replay(&mut api, &ledger).await;
    eprintln!(
        "R1 (appendfsync {fsync}): {} sessions and {} revocations acknowledged; {} calls OK, {} UNAVAILABLE during {down:?} of outage; \
         opaque UNAVAILABLE answered in {unavailable_after:?}; recovered {recovered:?} after restart; \
         lost {lost}, revocations undone {undone}",
        ledger.created.len(),
        ledger.revoked.len(),
        counts.ok,
        counts.unavailable
    );
    // everysec: at most the last second before the crash may be lost (reported above);
    // always: nothing.
    let max_lost = if fsync == "always" {
        0
    } else {
        ledger.created.len() / 2
    };
    assert_ledger_held(&ledger, &counts, (lost, undone), max_lost);
}

/// The invariants every Redis fault scenario with a ledger shares: calls failed only with
/// UNAVAILABLE, the load overlapped the outage, no acknowledged revocation was undone, and
/// at most `max_lost` acknowledged sessions were lost.
fn assert_ledger_held(
    ledger: &Ledger,
    counts: &Counts,
    (lost, undone): (usize, usize),
    max_lost: usize,
) {
    assert!(
        counts.other.is_empty(),
        "only UNAVAILABLE may fail: {:?}",
        counts.other
    );
    assert!(
        ledger.created.len() > 20 && counts.unavailable > 0,
        "the load overlapped the outage"
    );
    assert_eq!(undone, 0, "an acknowledged revocation was undone");
    assert!(
        lost <= max_lost,
        "lost {lost} of {} (at most {max_lost} allowed)",
        ledger.created.len()
    );
}

/// The cluster node holding an opaque token's session record.
async fn node_of_token(cluster: &RedisCluster, token: &str) -> usize {
    use sessiongate::store::keys::{Digest, Keys};
    let key = Keys::new(sessiongate::config::Env::Test).session(&Digest::of(token.as_bytes()));
    cluster.node_of(key.as_str()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c1_redis_cluster_master_killed_mid_load_loses_nothing_and_spares_its_peers() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = RedisCluster::start().await;
    let app = Setup::new()
        .toml(&format!(
            "{}[redis]\ncluster = true\n",
            key_file(dir.path())
        ))
        .var("REDIS_URL", &cluster.urls())
        .spawn()
        .await;
    let mut api = client_of(&app);
    // Sessions on every master: the victim holds the probe; a peer holds the bystander.
    let probe = create(&mut api).await.unwrap();
    let victim = node_of_token(&cluster, &probe.session_token).await;
    let mut bystander = None;
    while bystander.is_none() {
        let s = create(&mut api).await.unwrap();
        if node_of_token(&cluster, &s.session_token).await != victim {
            bystander = Some(s);
        }
    }
    let bystander = bystander.unwrap();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let app = &app;
        let stop = stop.clone();
        async move { drive(app, 4, stop).await }
    };
    let chaos = async {
        tokio::time::sleep(Duration::from_millis(700) * soak()).await;
        cluster.nodes[victim].kill().await;
        let killed = Instant::now();
        let mut api = client_of(&app);
        // The victim's slots: UNAVAILABLE, never INVALID. Its peers' slots keep answering.
        let e = validate(&mut api, &probe.session_token).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        let mut peer_latencies = Vec::new();
        // The outage lasts 1.5 s under load (a phase of the scenario), past the cluster's
        // 1 s node timeout, so the peers mark the master failed meanwhile.
        while killed.elapsed() < Duration::from_millis(1500) * soak() {
            let t = Instant::now();
            assert_eq!(
                verdict(&mut api, &bystander.session_token).await,
                pb::Verdict::Valid,
                "a healthy master's session stopped validating"
            );
            assert_eq!(
                verdict(&mut api, &probe.session_jwt).await,
                pb::Verdict::Valid
            );
            peer_latencies.push(t.elapsed());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cluster.nodes[victim].restart().await;
        let restarted = Instant::now();
        // The dependency is back when the cluster says so: a rejoining master waits out
        // Redis' rejoin delay (the node timeout) before it serves again.
        cluster.wait_until_ok().await;
        let rejoined = restarted.elapsed();
        let back = Instant::now();
        let recovered = recovery(&mut api, &probe.session_token, back).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        peer_latencies.sort();
        (killed.elapsed(), (rejoined, recovered), peer_latencies)
    };
    let ((ledger, counts), (down, (rejoined, recovered), peer)) = tokio::join!(load, chaos);
    let (lost, undone) = replay(&mut api, &ledger).await;
    let p99 = peer[(peer.len() * 99 / 100).min(peer.len() - 1)];
    eprintln!(
        "C1: cluster of 3 masters, one killed for {down:?} under load: {} sessions and {} revocations acknowledged; \
         {} calls OK, {} UNAVAILABLE; a peer's session and the JWT stayed VALID (worst of {} checks {p99:?}); \
         cluster OK {rejoined:?} after the restart, sessiongate answering {recovered:?} after that; \
         lost {lost}, revocations undone {undone}",
        ledger.created.len(),
        ledger.revoked.len(),
        counts.ok,
        counts.unavailable,
        peer.len()
    );
    assert_ledger_held(&ledger, &counts, (lost, undone), ledger.created.len() / 2);
    assert_eq!(
        verdict(&mut api, &probe.session_token).await,
        pb::Verdict::Valid
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r2_redis_hung_answers_fast_and_bounded_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start().await;
    let app = Setup::new()
        .toml(&key_file(dir.path()))
        .redis(&redis)
        .spawn()
        .await;
    let mut api = client_of(&app);
    let s = create(&mut api).await.unwrap();

    redis.pause();
    let paused = Instant::now();
    // 200 concurrent opaque validations against a hung Redis: every one ends, UNAVAILABLE,
    // none INVALID; the circuit makes most of them fail at once.
    let calls: Vec<_> = (0..200)
        .map(|_| {
            let mut api = client_of(&app);
            let token = s.session_token.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let r = validate(&mut api, &token).await;
                (r.map(|v| v.verdict()).map_err(|e| e.code()), t.elapsed())
            })
        })
        .collect();
    let mut worst = Duration::ZERO;
    let mut latencies = Vec::new();
    for c in calls {
        let (r, took) = c.await.unwrap();
        assert_eq!(r, Err(tonic::Code::Unavailable));
        worst = worst.max(took);
        latencies.push(took);
    }
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    // JWT validation does not notice.
    let t = Instant::now();
    assert_eq!(verdict(&mut api, &s.session_jwt).await, pb::Verdict::Valid);
    let jwt_latency = t.elapsed();
    // Keep it hung for 10 s in all (reliability.md R2), calling meanwhile.
    while paused.elapsed() < Duration::from_secs(10) * soak() {
        let e = validate(&mut api, &s.session_token).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
        // Pacing of the calls made while Redis is hung.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    redis.resume();
    let back = Instant::now();
    let recovered = recovery(&mut api, &s.session_token, back).await;
    eprintln!(
        "R2: 200 calls against a hung Redis: p50 {p50:?}, worst {worst:?}; JWT validation {jwt_latency:?}; \
         recovered {recovered:?} after SIGCONT"
    );
    assert!(worst < Duration::from_millis(1500), "{worst:?}");
    assert!(jwt_latency < Duration::from_millis(100), "{jwt_latency:?}");
    assert_eq!(
        verdict(&mut api, &s.session_token).await,
        pb::Verdict::Valid
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_redis_absent_at_start_then_appearing_needs_no_restart() {
    let dir = tempfile::tempdir().unwrap();
    let toml = key_file(dir.path());
    // `always`: the session made just before the kill must survive it.
    let mut redis = RedisServer::start_with_aof_always().await;
    // A session made while Redis was up (by another replica).
    let first = Setup::new().toml(&toml).redis(&redis).spawn().await;
    let s = create(&mut client_of(&first)).await.unwrap();
    first.stop().await.unwrap();
    redis.kill().await;

    let app = Setup::new().toml(&toml).redis(&redis).spawn().await;
    let mut api = client_of(&app);
    let health = app
        .health()
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    assert_eq!(verdict(&mut api, &s.session_jwt).await, pb::Verdict::Valid);
    let e = validate(&mut api, &s.session_token).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);

    redis.restart().await;
    let back = Instant::now();
    let recovered = recovery(&mut api, &s.session_token, back).await;
    eprintln!(
        "R3: started without Redis; opaque validation answered {recovered:?} after Redis appeared"
    );
    assert_eq!(
        verdict(&mut api, &s.session_token).await,
        pb::Verdict::Valid
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r4_slow_redis_fails_fast_through_the_circuit_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start().await;
    let proxy = FaultProxy::start(([127, 0, 0, 1], redis.port()).into()).await;
    let app = Setup::new()
        .toml(&key_file(dir.path()))
        .var("REDIS_URL", &format!("redis://{}/", proxy.addr))
        .spawn()
        .await;
    let mut api = client_of(&app);
    let s = create(&mut api).await.unwrap();

    // Every reply 800 ms late: past the 500 ms command timeout.
    proxy.set(Fault::Latency(Duration::from_millis(800)));
    let mut first = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let e = validate(&mut api, &s.session_token).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
        first.push(t.elapsed());
    }
    // The circuit is open now: calls fail without waiting for Redis.
    let t = Instant::now();
    for _ in 0..50 {
        let e = validate(&mut api, &s.session_token).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
    }
    let open_each = t.elapsed() / 50;
    let t = Instant::now();
    assert_eq!(verdict(&mut api, &s.session_jwt).await, pb::Verdict::Valid);
    let jwt_latency = t.elapsed();

    proxy.set(Fault::Pass);
    let back = Instant::now();
    let recovered = recovery(&mut api, &s.session_token, back).await;
    eprintln!(
        "R4: slow Redis (800 ms): first calls {first:?}; with the circuit open {open_each:?} per call; \
         JWT {jwt_latency:?}; recovered {recovered:?} after Redis was fast again"
    );
    assert!(
        first.iter().all(|d| *d < Duration::from_millis(1000)),
        "{first:?}"
    );
    assert!(open_each < Duration::from_millis(50), "{open_each:?}");
    assert!(jwt_latency < Duration::from_millis(100));
}

/// A transport-level refusal (the request never reached a handler), not a server status.
fn refused_by_closing_connection(e: &tonic::Status) -> bool {
    let transport = std::error::Error::source(e)
        .map(|s| format!("{s:?}"))
        .unwrap_or_default();
    (e.code() == tonic::Code::Cancelled && transport.contains("Canceled"))
        || transport.contains("GoAway") && transport.contains("NO_ERROR")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_sigterm_under_load_fails_no_call_and_says_not_serving_first() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start().await;
    let app = Setup::new()
        .toml(&format!(
            "{}[server]\ndrain_grace_seconds = 5\n",
            key_file(dir.path())
        ))
        .redis(&redis)
        .spawn()
        .await;
    let s = create(&mut client_of(&app)).await.unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let mut api = client_of(&app);
            let (stop, failures, done, token) = (
                stop.clone(),
                failures.clone(),
                done.clone(),
                s.session_token.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match validate(&mut api, &token).await {
                        Ok(v) => {
                            assert_eq!(v.verdict(), pb::Verdict::Valid);
                            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        // After shutdown the server refuses new calls: retryable. A call sent
                        // on the connection as the server's GOAWAY closes it is cancelled by
                        // the client's transport before the server ever ran it: retryable too.
                        Err(e) if e.code() == tonic::Code::Unavailable => break,
                        // The same for a call the server's GOAWAY(NO_ERROR) refused (its stream
                        // id was past the last one the server took).
                        Err(e) if refused_by_closing_connection(&e) => break,
                        Err(e) => failures.lock().unwrap().push(format!("{e:?}")),
                    }
                }
            })
        })
        .collect();
    let mut health = app.health();
    // Let the load run, then shut down while it runs.
    // Load runs this long before the shutdown (a phase, not a wait for an event).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = done.load(std::sync::atomic::Ordering::Relaxed);
    let stopping = tokio::spawn(app.stop());
    // Health says NOT_SERVING before the listener goes away (or the call fails: gone).
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|r| r.into_inner().status);
    stopping.await.unwrap().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    eprintln!(
        "S1: {} validations before SIGTERM, {} in all; health during drain: {status:?}",
        before,
        done.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(
        failures.lock().unwrap().is_empty(),
        "{:?}",
        failures.lock().unwrap()
    );
    assert!(before > 50);
    assert!(
        matches!(status, Ok(s) if s == tonic_health::pb::health_check_response::ServingStatus::NotServing as i32)
            || status.is_err(),
        "{status:?}"
    );
}
