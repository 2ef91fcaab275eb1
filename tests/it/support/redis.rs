//! A real `redis-server` per test, on a free loopback port in its own temp dir, so a test can
//! kill, pause and restart it without touching anyone else's.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// `appendfsync` policy; `None`: no AOF.
    aof: Option<&'static str>,
    cluster: bool,
}

fn binary() -> PathBuf {
    std::env::var_os("REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

fn free_port() -> u16 {
    // Bind-and-release: redis-server cannot report the port it picked, so pick one for it.
    // A race with another process is possible; `start_on` retries with a new port then.
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl RedisServer {
    /// A throwaway Redis: no persistence.
    pub async fn start() -> Self {
        Self::launch(None, false).await
    }

    /// A Redis with AOF (`appendfsync everysec`), as the shipped manifest runs it: what was
    /// written survives [`RedisServer::kill`] + [`RedisServer::restart`], except, on a slow
    /// disk, the last seconds' writes (use [`RedisServer::start_with_aof_always`] to assert
    /// that a write survives).
    pub async fn start_with_aof() -> Self {
        Self::launch(Some("everysec"), false).await
    }

    /// AOF with `appendfsync always`: every acknowledged write is on disk.
    pub async fn start_with_aof_always() -> Self {
        Self::launch(Some("always"), false).await
    }

    async fn launch(aof: Option<&'static str>, cluster: bool) -> Self {
        let mut dir = tempfile::tempdir().expect("temp dir");
        for _ in 0..5 {
            let mut server = Self {
                child: None,
                port: free_port(),
                dir,
                aof,
                cluster,
            };
            if server.spawn().await {
                return server;
            }
            dir = server.dir;
        }
        panic!("redis-server did not start on any of 5 ports");
    }

    /// Starts the process and waits for "Ready to accept connections"; false if it exited
    /// first (e.g. the port was taken).
    async fn spawn(&mut self) -> bool {
        let mut cmd = Command::new(binary());
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
            .args(["--protected-mode", "no", "--loglevel", "notice"])
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--appendonly",
                if self.aof.is_some() { "yes" } else { "no" },
            ])
            .args(["--appendfsync", self.aof.unwrap_or("everysec")])
            .args(["--maxmemory-policy", "noeviction"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if self.cluster {
            // A short node timeout so that a killed master is noticed quickly; partial
            // coverage so that the other masters keep serving their slots meanwhile.
            cmd.args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "1000"])
                .args(["--cluster-require-full-coverage", "no"]);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!(
                "cannot run {}: {e}. Install it (apt-get install -y redis-server) or run ./scripts/test, which does",
                binary().display()
            ),
        };
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        // Keep draining the log after start-up: a full pipe would block redis-server.
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut ready = Some(ready_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("Ready to accept connections")
                    && let Some(tx) = ready.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        match tokio::time::timeout(Duration::from_secs(20), ready_rx).await {
            Ok(Ok(())) => {
                self.child = Some(child);
                true
            }
            // The log closed without "Ready": it exited (port in use?).
            Ok(Err(_)) => {
                let _ = child.kill().await;
                false
            }
            Err(_) => panic!("redis-server did not become ready within 20 s"),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(|c| c.id())
            .expect("redis-server is running")
    }

    /// SIGKILL, as a crash would: no shutdown save, AOF keeps what `everysec` had flushed.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
            let _ = c.wait().await;
        }
    }

    /// Starts it again on the same port and directory (AOF, if on, is replayed).
    pub async fn restart(&mut self) {
        self.kill().await;
        // The same port must be free again; after SIGKILL the kernel releases it at once
        // (redis sets SO_REUSEADDR), so one attempt suffices.
        assert!(
            self.spawn().await,
            "redis-server did not restart on port {}",
            self.port
        );
    }

    /// SIGSTOP: the socket stays open but nothing answers (a hung server).
    pub fn pause(&self) {
        signal(self.pid(), rustix::process::Signal::STOP);
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        signal(self.pid(), rustix::process::Signal::CONT);
    }
}

/// A Redis Cluster of three masters (no replicas) on loopback, created with
/// `redis-cli --cluster create`, each node with AOF so that a killed master comes back with
/// its data and its `nodes.conf`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start() -> Self {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(RedisServer::launch(Some("everysec"), true).await);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .await
            .expect("redis-cli (installed with redis-server)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self { nodes };
        cluster.wait_until_ok().await;
        cluster
    }

    /// Every node reports `cluster_state:ok` and knows all three masters (polled with
    /// backoff, within 30 s).
    pub async fn wait_until_ok(&self) {
        for node in &self.nodes {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            let mut pause = Duration::from_millis(10);
            while !cluster_ok(&node.url()).await {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "cluster node {} not OK within 30 s",
                    node.port
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
        }
    }

    /// The seed list sessiongate takes in `REDIS_URL` (comma-separated).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node serving `key`'s slot.
    pub async fn node_of(&self, key: &str) -> usize {
        let client = ::redis::Client::open(self.nodes[0].url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let slot: u16 = ::redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut c)
            .await
            .unwrap();
        let slots: Vec<(u16, u16, Vec<::redis::Value>)> = ::redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut c)
            .await
            .unwrap();
        for (start, end, master) in slots {
            if (start..=end).contains(&slot) {
                let port = match master.get(1) {
                    Some(::redis::Value::Int(p)) => *p as u16,
                    other => panic!("unexpected CLUSTER SLOTS entry {other:?}"),
                };
                return self
                    .nodes
                    .iter()
                    .position(|n| n.port == port)
                    .expect("a node of ours");
            }
        }
        panic!("slot {slot} is not served");
    }
}

async fn cluster_ok(url: &str) -> bool {
    let info = async {
        let client = ::redis::Client::open(url).ok()?;
        let mut c = client.get_multiplexed_async_connection().await.ok()?;
        ::redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async::<String>(&mut c)
            .await
            .ok()
    };
    info.await
        .is_some_and(|i| i.contains("cluster_state:ok") && i.contains("cluster_known_nodes:3"))
}

/// Sends `sig` to `pid`, a child process this test started.
pub fn signal(pid: u32, sig: rustix::process::Signal) {
    let target = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .expect("a child's pid");
    rustix::process::kill_process(target, sig)
        .unwrap_or_else(|e| panic!("signal {sig:?} to {pid}: {e}"));
}
