//! The server-bound measurement: the server pinned to one core with one worker thread, and
//! the load on the other core from `h2load` (nghttp2's HTTP/2 load generator, written in C:
//! it costs the client far less per request than a tonic client, so the server is what
//! saturates). A tonic client on the same core as the server measures the pair; this
//! measures the server.
//!
//! h2load sends one fixed body per path, a gRPC-framed request, and counts HTTP statuses —
//! which say nothing of gRPC's (a refused call is HTTP 200 too). So every shot is checked on
//! the server's own counters: the calls it answered OK, and for ValidateSession the VALID
//! (or, for the malformed path, INVALID) verdicts, must both match what h2load completed.

use std::path::{Path as FsPath, PathBuf};
use std::process::Command;

use sessiongate::grpc::pb;
use tonic_health::pb::HealthCheckRequest;

use crate::paths::{Fixtures, Path};

/// Where h2load and the server's metrics are.
pub(crate) struct H2Load {
    grpc_addr: String,
    http_addr: String,
    metrics_url: String,
    http: reqwest::Client,
    dir: PathBuf,
    connections: usize,
    streams: usize,
}

/// One h2load run of one path.
pub(crate) struct Shot {
    pub(crate) rps: f64,
    pub(crate) done: u64,
    /// Server CPU per request (µs) over the shot.
    pub(crate) cpu_us: f64,
}

impl H2Load {
    /// Checks that h2load is installed (`apt-get install nghttp2-client`).
    pub(crate) fn new(
        grpc_addr: &str,
        http_addr: &str,
        dir: &FsPath,
        connections: usize,
        streams: usize,
    ) -> anyhow::Result<Self> {
        let found = Command::new("h2load").arg("--version").output();
        anyhow::ensure!(
            found.is_ok_and(|o| o.status.success()),
            "h2load not found: the server-bound mode needs it (apt-get install nghttp2-client; ./scripts/bench installs it)"
        );
        Ok(Self {
            grpc_addr: grpc_addr.to_owned(),
            http_addr: http_addr.to_owned(),
            metrics_url: format!("http://{http_addr}/metrics"),
            http: reqwest::Client::new(),
            dir: dir.to_path_buf(),
            connections,
            streams,
        })
    }

    /// Runs `path` (whose request is `req`) for `seconds`, and checks every completed call
    /// on the server's counters.
    pub(crate) async fn shot(
        &self,
        path: Path,
        req: &Fixed,
        seconds: f64,
        server_pid: u32,
    ) -> anyhow::Result<Shot> {
        let mut cmd = tokio::process::Command::new("h2load");
        cmd.args(["-t", "1"])
            // h2load takes whole seconds.
            .args(["-D", &format!("{}", seconds.ceil().max(1.0) as u64)])
            .args(["--warm-up-time", "1"]);
        match req {
            Fixed::Grpc { rpc, body } => {
                let file = self.dir.join(format!("{}.bin", path.key()));
                std::fs::write(&file, body)?;
                cmd.args(["-c", &self.connections.to_string()])
                    .args(["-m", &self.streams.to_string()])
                    .arg("-d")
                    .arg(&file)
                    .args(["-H", "content-type: application/grpc"])
                    .args(["-H", "te: trailers"])
                    .args(["-H", &format!("authorization: Bearer {}", crate::API_KEY)])
                    .arg(format!("http://{}{rpc}", self.grpc_addr));
            }
            Fixed::Http { target, headers } => {
                // A proxy keeps HTTP/1.1 connections alive and sends one request at a time on
                // each (no pipelining): as many connections as gRPC has calls in flight.
                cmd.arg("--h1")
                    .args(["-c", &(self.connections * self.streams).to_string()])
                    .args(["-m", "1"]);
                for h in headers {
                    cmd.args(["-H", h]);
                }
                cmd.arg(format!("http://{}{target}", self.http_addr));
            }
        }
        let before = Counters::read(&self.http, &self.metrics_url).await?;
        let cpu0 = crate::report::cpu_us(server_pid);
        let out = cmd.output().await?;
        let cpu1 = crate::report::cpu_us(server_pid);
        let text = String::from_utf8_lossy(&out.stdout);
        anyhow::ensure!(
            out.status.success(),
            "h2load failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let after = Counters::read(&self.http, &self.metrics_url).await?;
        let rps = field(&text, "finished in ", " req/s")
            .and_then(|s| s.rsplit(", ").next().map(str::to_owned))
            .and_then(|s| s.trim().parse::<f64>().ok())
            .ok_or_else(|| anyhow::anyhow!("no req/s in h2load's output: {text}"))?;
        let (done, failed) = requests(&text)
            .ok_or_else(|| anyhow::anyhow!("no request counts in h2load's output: {text}"))?;
        anyhow::ensure!(
            failed == 0,
            "{}: h2load saw {failed} failed requests",
            path.name()
        );
        // Warm-up requests are answered too but not counted by h2load: the server's counts
        // may exceed h2load's, never fall short of them.
        let want_valid = !path.malformed();
        let verdicts = after.verdicts(want_valid) - before.verdicts(want_valid);
        let (ok, judged) = match req {
            Fixed::Grpc { rpc, .. } => {
                // The metric labels a method `Service/Method`, without the package.
                let method = rpc.rsplit('.').next().unwrap_or(rpc);
                let ok = after.ok(method) - before.ok(method);
                // Check decides through the same validation, so its verdicts are counted
                // alike.
                let validates =
                    rpc.ends_with("/ValidateSession") || rpc.ends_with(".Authorization/Check");
                (ok, if validates { verdicts } else { ok })
            }
            // h2load counts only 2xx as succeeded; forward-auth's are VALID verdicts.
            Fixed::Http { .. } => (verdicts, verdicts),
        };
        anyhow::ensure!(
            ok >= done && judged >= done && ok == judged,
            "{}: h2load completed {done} calls, the server answered {ok} OK and judged {judged} as expected",
            path.name()
        );
        Ok(Shot {
            rps,
            done,
            cpu_us: (cpu1 - cpu0) as f64 / ok.max(1) as f64,
        })
    }
}

/// The one request h2load repeats for a path.
pub(crate) enum Fixed {
    /// A gRPC call: the method's path and its request, gRPC-framed.
    Grpc { rpc: &'static str, body: Vec<u8> },
    /// An HTTP/1.1 GET of `target` on the HTTP port, with these `name: value` headers.
    Http {
        target: &'static str,
        headers: Vec<String>,
    },
}

/// The request a path repeats (for h2load, which sends one fixed request per path; `None`
/// for paths that need a fresh token per call).
pub(crate) fn fixed_request(path: Path, fx: &Fixtures) -> Option<Fixed> {
    let grpc = |rpc, body| Some(Fixed::Grpc { rpc, body });
    let validate = |token: &str| {
        grpc(
            "/sessiongate.v1.SessionGateService/ValidateSession",
            grpc_frame(&pb::ValidateSessionRequest {
                token: token.to_owned(),
                view: path.view() as i32,
                ..Default::default()
            }),
        )
    };
    match path {
        Path::Baseline => grpc(
            "/grpc.health.v1.Health/Check",
            grpc_frame(&HealthCheckRequest {
                service: String::new(),
            }),
        ),
        Path::JwtCached | Path::JwtCachedBasic => validate(&fx.cached_jwt),
        Path::Opaque | Path::OpaqueBasic => validate(&fx.opaque[0]),
        Path::Malformed | Path::MalformedJwtSized => {
            validate(&path.malformed_token(&fx.cached_jwt))
        }
        Path::EnvoyCheck => grpc(
            "/envoy.service.auth.v3.Authorization/Check",
            grpc_frame(&crate::paths::envoy_check(&fx.cached_jwt)),
        ),
        Path::EnvoyCheckFloor => grpc(
            "/envoy.service.auth.v3.Authorization/Check",
            grpc_frame(&crate::paths::envoy_check(
                &path.malformed_token(&fx.cached_jwt),
            )),
        ),
        // What nginx's auth subrequest carries: the user's headers and the proxy's key.
        Path::ForwardAuth => Some(Fixed::Http {
            target: "/auth",
            headers: vec![
                format!("authorization: Bearer {}", fx.cached_jwt),
                format!("{}: {}", crate::paths::FORWARD_AUTH_CALLER, crate::API_KEY),
                "user-agent: Mozilla/5.0".into(),
            ],
        }),
        Path::ResolveFlow => grpc(
            "/sessiongate.v1.SessionGateService/ResolveFlow",
            grpc_frame(&pb::ResolveFlowRequest {
                flow: "login".into(),
                device_id: "device-1".into(),
                country: "NO".into(),
                ..Default::default()
            }),
        ),
        _ => None,
    }
}

/// A gRPC message on the wire: uncompressed flag, big-endian length, the protobuf.
pub(crate) fn grpc_frame(msg: &impl prost::Message) -> Vec<u8> {
    let body = msg.encode_to_vec();
    let mut framed = Vec::with_capacity(5 + body.len());
    framed.push(0);
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(&body);
    framed
}

/// The text between `start` and `end` on the first line that has both.
fn field(text: &str, start: &str, end: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let from = l.find(start)? + start.len();
        let to = l[from..].find(end)? + from;
        Some(l[from..to].to_owned())
    })
}

/// `requests: N total, N started, N done, N succeeded, N failed, …` → (succeeded, failed).
fn requests(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("requests:"))?;
    let count = |what: &str| {
        line.split(", ")
            .find(|p| p.ends_with(what))
            .and_then(|p| p.trim_start_matches("requests: ").split(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some((count(" succeeded")?, count(" failed")?))
}

/// The server's request and verdict counters, from `/metrics`.
struct Counters {
    text: String,
}

impl Counters {
    async fn read(http: &reqwest::Client, url: &str) -> anyhow::Result<Self> {
        Ok(Self {
            text: http
                .get(url)
                .send()
                .await?
                .error_for_status()?
                .text()
                .await?,
        })
    }

    /// Sum of the samples of `name` whose labels include every one of `labels`.
    fn sum(&self, name: &str, labels: &[&str]) -> u64 {
        self.text
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
            .filter(|l| labels.iter().all(|want| l.contains(want)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    fn ok(&self, method: &str) -> u64 {
        self.sum(
            "sessiongate_grpc_requests_total",
            &[&format!("method=\"{method}\""), "code=\"OK\""],
        )
    }

    fn verdicts(&self, valid: bool) -> u64 {
        let v = if valid { "VALID" } else { "INVALID" };
        self.sum(
            "sessiongate_validations_total",
            &[&format!("verdict=\"{v}\"")],
        )
    }
}
