//! Connections (reliability.md R8, R9 and the hygiene rules): recycling loses no call; a
//! client that never opens HTTP, goes quiet or floods the server with idle sockets costs a
//! bounded time and no CPU; the cap and the descriptor limit are survived.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sessiongate::grpc::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::binary::Binary;
use crate::support::{Setup, eventually, http_get, new_user_session, sha, validate_as};

const KEY: &str = "connections-test-key";

fn toml(server: &str) -> String {
    format!(
        "[server]\n{server}\n[[clients]]\nname = \"svc\"\nkey_sha256 = \"{}\"\n\
         scopes = [\"validate\", \"issue\"]\n",
        sha(KEY)
    )
}

/// The sum of a metric's series whose labels contain every one of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metrics_of(http: &str) -> String {
    http_get(http.parse().unwrap(), "/metrics").await.1
}

type Api = pb::session_gate_service_client::SessionGateServiceClient<tonic::transport::Channel>;

/// Whether the server closed `s` (EOF or reset) — waiting at most `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // Whatever the server says first (HTTP/2 SETTINGS, GOAWAY): keep reading.
            Ok(Ok(_)) => continue,
        }
    }
}

/// Whether tonic failed a call because it raced its connection's GOAWAY — a call the server
/// never saw. tonic 0.14 (hyper 1, h2 0.4) keeps handing calls to a connection after reading
/// its GOAWAY: h2 refuses the new stream (INTERNAL, "h2 protocol error", a remote NO_ERROR
/// GOAWAY), or hyper cancels a call still queued when the connection closes (CANCELLED). grpcio
/// and grpc-js move such calls to the new connection themselves.
fn raced_goaway(s: &tonic::Status) -> bool {
    sources(s).any(|x| {
        x.downcast_ref::<hyper::Error>()
            .is_some_and(|h| h.is_canceled())
            || x.downcast_ref::<h2::Error>().is_some_and(|h| {
                h.is_go_away() && h.is_remote() && h.reason() == Some(h2::Reason::NO_ERROR)
            })
    })
}

/// A failed call's error and what caused it, outermost first (what its `Status` hides).
fn sources(s: &tonic::Status) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    std::iter::successors(std::error::Error::source(s), |e| e.source())
}

/// Whether tonic failed a call because its connection ended while the call's stream was still
/// open on the client's side (h2's "stream closed because of a broken pipe": the end of the
/// connection came before any answer). Under a loaded CPU tonic now and then still has such a
/// stream on a connection the server retires; the server never answered it, which the test
/// proves from the server's own counts, not from this error.
fn died_with_its_connection(s: &tonic::Status) -> bool {
    sources(s).any(|x| {
        x.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// A failed call's causes as text, for its failure message.
fn chain(s: &tonic::Status) -> String {
    sources(s)
        .map(|x| format!("{x:?}"))
        .collect::<Vec<_>>()
        .join(" <- ")
}

/// R8 with tonic: 4 workers call ValidateSession through at least three recyclings of their
/// connection (max age 2 s ± 10 %). No call the server received fails: every answer the server
/// gave reached the client (its count of OK answers is exactly the client's), and no
/// connection was closed with a call in flight. Calls that raced a GOAWAY in tonic's client,
/// or whose stream tonic still held when the connection ended, are retried (up to 5 times), as
/// the README tells tonic users to, and then none fails either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r8_tonic_calls_through_three_recyclings_and_none_fails() {
    let bin = Binary::start(
        &toml("max_connection_age_seconds = 2\nmax_connection_age_grace_seconds = 5"),
        &[("RUST_LOG", "warn,sessiongate::app=info".into())],
    );
    let channel = bin.channel().await;
    let mut api = Api::new(channel.clone());
    let jwt = new_user_session(&mut api, KEY).await.session_jwt;
    let retired = |t: &str| {
        metric(
            t,
            "sessiongate_connections_retired_total",
            &["door=\"grpc\"", "reason=\"max_age\""],
        )
    };
    let answered = |t: &str| {
        metric(
            t,
            "sessiongate_grpc_requests_total",
            &[
                "method=\"SessionGateService/ValidateSession\"",
                "code=\"OK\"",
            ],
        )
    };
    let first = metrics_of(&bin.http).await;
    let (before, answered_before) = (retired(&first), answered(&first));

    let started = Instant::now();
    let run_for = Duration::from_secs(7);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let mut api = Api::new(channel.clone());
            let jwt = jwt.clone();
            tokio::spawn(async move {
                let (mut ok, mut raced, mut failed) = (0u32, 0u32, Vec::new());
                while started.elapsed() < run_for {
                    let mut r = api.validate_session(validate_as(jwt.clone(), KEY)).await;
                    // A retry can race the same GOAWAY again, until tonic has moved to the
                    // new connection: a few tries, as a retry policy would.
                    for _ in 0..5 {
                        if !r
                            .as_ref()
                            .is_err_and(|s| raced_goaway(s) || died_with_its_connection(s))
                        {
                            break;
                        }
                        raced += 1;
                        r = api.validate_session(validate_as(jwt.clone(), KEY)).await;
                    }
                    match r {
                        Ok(r) if r.get_ref().verdict == pb::Verdict::Valid as i32 => ok += 1,
                        Ok(r) => failed.push(format!("verdict {}", r.get_ref().verdict)),
                        Err(s) => {
                            failed.push(format!("{:?} {}: {}", s.code(), s.message(), chain(&s)))
                        }
                    }
                }
                (ok, raced, failed)
            })
        })
        .collect();
    let (mut ok, mut raced, mut failed) = (0, 0, Vec::new());
    for w in workers {
        let (o, r, f) = w.await.unwrap();
        ok += o;
        raced += r;
        failed.extend(f);
    }
    let after = metrics_of(&bin.http).await;
    let recycled = retired(&after) - before;
    println!(
        "R8 tonic: {ok} calls in {run_for:?}, {} failed, {raced} raced a GOAWAY in the client \
         (retried), {recycled} connections retired by age",
        failed.len()
    );
    // How the server ended its connections, to tell a server that closed too early from a
    // client that raced it.
    let ended: Vec<String> = after
        .lines()
        .filter(|l| {
            l.starts_with("sessiongate_connections_retired_total")
                || l.starts_with("sessiongate_connections_cut_total")
                || l.starts_with("sessiongate_connections_failed_total")
        })
        .map(str::to_owned)
        .collect();
    assert!(failed.is_empty(), "failed calls: {failed:?}; {ended:?}");
    // What the retries must not hide: an answer the server gave and the client never got, or
    // a connection closed under a call.
    assert_eq!(
        answered(&after) - answered_before,
        f64::from(ok),
        "OK answers the server counted vs those the client got; {ended:?}"
    );
    assert_eq!(
        metric(&after, "sessiongate_connections_cut_total", &[]),
        0.0,
        "{ended:?}"
    );
    // Nor may a retried call hide a connection the server ended in an error (an HTTP/2
    // protocol error ends every call in flight on it, which tonic reports as a broken pipe).
    assert_eq!(
        metric(&after, "sessiongate_connections_failed_total", &[]),
        0.0,
        "{ended:?}"
    );
    assert!(recycled >= 3.0, "only {recycled} recyclings");
    assert!(ok > 100);
}

/// A connection that never opens HTTP is closed at the handshake timeout, on both ports; so is
/// one that sends half of HTTP/2's preface, and an HTTP/1.1 request whose headers never end.
#[tokio::test]
async fn connections_that_never_open_http_are_closed_at_the_handshake_timeout() {
    let app = Setup::new()
        .toml("[server]\nhandshake_timeout_seconds = 1\n")
        .spawn()
        .await;
    let started = Instant::now();
    let mut silent_grpc = TcpStream::connect(app.grpc_addr).await.unwrap();
    let mut silent_http = TcpStream::connect(app.http_addr).await.unwrap();
    let mut half_preface = TcpStream::connect(app.grpc_addr).await.unwrap();
    half_preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut slow_headers = TcpStream::connect(app.http_addr).await.unwrap();
    slow_headers
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    for (name, s) in [
        ("silent gRPC", &mut silent_grpc),
        ("silent HTTP", &mut silent_http),
        ("half a preface", &mut half_preface),
        ("endless headers", &mut slow_headers),
    ] {
        assert!(
            closed_within(s, Duration::from_secs(5)).await,
            "{name} still open"
        );
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed before the timeout: {took:?}"
    );
    // A client that talks is served as before.
    let (status, _) = app.http_get("/metrics").await;
    assert_eq!(status, 200);
    app.health()
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
}

/// The HTTP/2 frames a raw client reads: (type, stream id, payload).
async fn read_frame(s: &mut TcpStream) -> Option<(u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0; len];
    s.read_exact(&mut payload).await.ok()?;
    Some((head[3], stream, payload))
}

const GOAWAY: u8 = 7;
const PING: u8 = 6;

/// An HTTP/2 connection without calls gets a GOAWAY after the idle timeout (not before), and
/// one whose only call is a long-lived stream (reflection) keeps being served past it.
#[tokio::test]
async fn idle_connections_get_a_goaway_and_busy_ones_do_not() {
    let app = Setup::new()
        .toml("[server]\nmax_connection_idle_seconds = 1\nmax_connection_age_grace_seconds = 1\n")
        .spawn()
        .await;

    // A raw HTTP/2 client: the preface and an empty SETTINGS, then nothing.
    let mut idle = TcpStream::connect(app.grpc_addr).await.unwrap();
    idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let opened = Instant::now();
    let goaway = loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut idle))
            .await
            .expect("a frame within 10 s")
            .expect("the connection stays open until the GOAWAY");
        if frame.0 == GOAWAY {
            break frame;
        }
        if frame.0 == PING && frame.2.len() == 8 {
            // Answer pings, as any client does (the server's graceful GOAWAY waits on one).
            let mut ack = vec![0, 0, 8, PING, 1, 0, 0, 0, 0];
            ack.extend_from_slice(&frame.2);
            idle.write_all(&ack).await.unwrap();
        }
    };
    let after = opened.elapsed();
    assert!(
        after >= Duration::from_millis(900),
        "GOAWAY after {after:?}"
    );
    let error_code = u32::from_be_bytes(goaway.2[4..8].try_into().unwrap());
    assert_eq!(error_code, 0, "NO_ERROR: a graceful GOAWAY");
    assert!(closed_within(&mut idle, Duration::from_secs(5)).await);

    // A reflection stream held open past the idle timeout is still answered.
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_request::MessageRequest,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let list = || ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut client = ServerReflectionClient::new(app.channel.clone());
    tx.send(list()).await.unwrap();
    let mut answers = client
        .server_reflection_info(tokio_stream_of(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(answers.message().await.unwrap().is_some());
    // Quiet for twice the idle timeout, the stream still open: no GOAWAY may end it.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    tx.send(list()).await.unwrap();
    assert!(
        answers.message().await.unwrap().is_some(),
        "the stream was cut"
    );
}

/// A stream of the channel's messages, for a client-streaming call.
fn tokio_stream_of<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// With the cap reached by silent connections, a new client waits in the backlog and is
/// served as soon as the handshake timeout frees a place — it is not refused, and the
/// server does not accept past the cap.
#[tokio::test]
async fn past_the_cap_clients_wait_until_a_place_frees() {
    let bin = Binary::start(
        &toml("max_connections = 3\nhandshake_timeout_seconds = 1"),
        &[("RUST_LOG", "warn,sessiongate::app=info".into())],
    );
    let grpc: SocketAddr = bin.grpc.parse().unwrap();
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(grpc).await.unwrap());
    }
    let started = Instant::now();
    let channel = bin.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    let waited = started.elapsed();
    println!("cap 3, 3 silent connections: served after {waited:?}");
    assert!(
        waited >= Duration::from_millis(500),
        "served past the cap after {waited:?}"
    );
    for s in &mut silent {
        assert!(closed_within(s, Duration::from_secs(5)).await);
    }
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which may hold spaces): utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// R9: the server's descriptors limited to 256, 400 connections that never send a byte. The
/// accept loop backs off instead of spinning, the silent ones are closed at the handshake
/// timeout, health answers right after, and a well-behaved client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r9_a_flood_of_idle_connections_under_a_low_descriptor_limit_costs_no_cpu() {
    let bin = Binary::start(
        // A cap above the descriptor limit, so the limit itself is hit.
        &toml("max_connections = 100000\nhandshake_timeout_seconds = 2"),
        &[(
            "RUST_LOG",
            "warn,sessiongate::app=info,sessiongate::net=info".into(),
        )],
    );
    let pid = bin.child.id();
    // Our side holds 400 sockets too.
    let ours = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: ours.maximum,
            maximum: ours.maximum,
        },
    );
    let limit = rustix::process::Rlimit {
        current: Some(256),
        maximum: Some(256),
    };
    rustix::process::prlimit(
        Some(rustix::process::Pid::from_raw(pid as i32).unwrap()),
        rustix::process::Resource::Nofile,
        limit,
    )
    .expect("limit the server's descriptors");
    let grpc: SocketAddr = bin.grpc.parse().unwrap();

    let flood_started = Instant::now();
    let mut flood = Vec::new();
    for _ in 0..400 {
        flood.push(TcpStream::connect(grpc).await.unwrap());
    }
    let ticks_before = cpu_ticks(pid);
    let window = Instant::now();
    // Measure while the flood holds the descriptors (before the first handshake timeout).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let ticks = cpu_ticks(pid) - ticks_before;
    let hz = rustix::param::clock_ticks_per_second() as f64;
    let cpu = ticks as f64 / hz / window.elapsed().as_secs_f64();
    println!(
        "R9: 400 silent connections on 256 descriptors: server CPU {:.0} % of a core",
        cpu * 100.0
    );
    assert!(
        cpu < 0.3,
        "the server burned {:.0} % of a core",
        cpu * 100.0
    );

    let mut closed = 0;
    for s in &mut flood {
        if closed_within(s, Duration::from_secs(15)).await {
            closed += 1;
        }
    }
    let all_closed = flood_started.elapsed();
    drop(flood);
    println!("R9: {closed} of 400 closed by the server within {all_closed:?}");
    assert_eq!(closed, 400);

    // Health answers again and a client is served.
    let health_started = Instant::now();
    let channel = bin.channel().await;
    tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    println!(
        "R9: health answered {:?} after the flood closed",
        health_started.elapsed()
    );
    let mut api = Api::new(channel);
    let jwt = new_user_session(&mut api, KEY).await.session_jwt;
    for _ in 0..20 {
        let v = api
            .validate_session(validate_as(jwt.clone(), KEY))
            .await
            .unwrap();
        assert_eq!(v.get_ref().verdict, pb::Verdict::Valid as i32);
    }
    let text = eventually(Duration::from_secs(10), || async {
        let t = http_get(bin.http.parse().unwrap(), "/metrics").await.1;
        (!t.is_empty()).then_some(t)
    })
    .await;
    let exhausted = metric(
        &text,
        "sessiongate_accept_errors_total",
        &["kind=\"exhausted\""],
    );
    println!("R9: {exhausted} accepts failed for want of descriptors");
    assert!(exhausted > 0.0, "the descriptor limit was never hit");
    let log = bin.stop();
    let warned = log.matches("out of file descriptors").count();
    assert!((1..=5).contains(&warned), "warned {warned} times");
}

/// A client may send a WINDOW_UPDATE for a stream it opened as the server's final GOAWAY was on
/// its way (grpcio raises a new stream's window at once). The server ignores such a stream; it
/// must ignore the WINDOW_UPDATE with it, not take it for a frame on an idle stream — h2 0.4.20
/// did, a PROTOCOL_ERROR that ended the connection and every call in flight on it (patched in
/// `third_party/h2`). Raw frames, so that the race happens on every run.
#[tokio::test]
async fn a_window_update_for_a_stream_ignored_after_goaway_ends_nothing() {
    let app = Setup::new()
        .toml("[server]\nmax_connection_age_seconds = 2\nmax_connection_age_grace_seconds = 1\n")
        .spawn()
        .await;
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    }
    // A Health/Check whose message never comes: the call stays in flight through the GOAWAY.
    fn headers(stream: u32) -> Vec<u8> {
        let mut block = Vec::new();
        for (n, v) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/grpc.health.v1.Health/Check"),
            (":authority", "sessiongate"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ] {
            // HPACK: a literal without indexing, new name, no Huffman coding.
            block.extend([0, n.len() as u8]);
            block.extend(n.as_bytes());
            block.push(v.len() as u8);
            block.extend(v.as_bytes());
        }
        frame(1, 0x4, stream, &block)
    }
    let mut tcp = TcpStream::connect(app.grpc_addr).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(4, 0, 0, &[]));
    hello.extend(headers(1));
    tcp.write_all(&hello).await.unwrap();

    let mut goaways = Vec::new();
    let (mut buf, mut sent) = (Vec::new(), false);
    let read_all = async {
        loop {
            let mut chunk = [0u8; 16 * 1024];
            let n = tcp.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            while buf.len() >= 9 {
                let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
                if buf.len() < 9 + len {
                    break;
                }
                let (kind, flags) = (buf[3], buf[4]);
                let payload = buf[9..9 + len].to_vec();
                buf.drain(..9 + len);
                match kind {
                    // SETTINGS and PING are acknowledged: the second GOAWAY waits for the ping.
                    4 if flags & 1 == 0 => tcp.write_all(&frame(4, 1, 0, &[])).await.unwrap(),
                    6 if flags & 1 == 0 => tcp.write_all(&frame(6, 1, 0, &payload)).await.unwrap(),
                    7 => {
                        let last =
                            u32::from_be_bytes(payload[..4].try_into().unwrap()) & 0x7fff_ffff;
                        let code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                        goaways.push((last, code));
                        if last != 0x7fff_ffff && !sent {
                            // Stream 3, after the last one served: ignored — and its window.
                            sent = true;
                            let mut late = headers(3);
                            late.extend(frame(8, 0, 3, &1000u32.to_be_bytes()));
                            tcp.write_all(&late).await.unwrap();
                        }
                    }
                    _ => {}
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read_all)
        .await
        .expect("the server closed the connection after its grace");
    assert!(sent, "no final GOAWAY: {goaways:?}");
    assert!(
        goaways.iter().all(|&(_, code)| code == 0),
        "an error GOAWAY (1 is PROTOCOL_ERROR): {goaways:?}"
    );
    assert_eq!(goaways.last().copied(), Some((1, 0)), "{goaways:?}");
}
