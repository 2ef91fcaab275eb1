//! The real sessiongate binary on free ports, with its log captured (for tests that need the
//! process: signals, exit codes, everything it writes).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use tonic::transport::Channel;

pub struct Binary {
    pub child: Child,
    pub grpc: String,
    pub http: String,
    pub log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Binary {
    pub fn start(toml: &str, env: &[(&str, String)]) -> Binary {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessiongate.toml");
        std::fs::write(&path, toml).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sessiongate"))
            .env_clear()
            .env("SESSIONGATE_CONFIG", &path)
            .env("SESSIONGATE_GRPC_ADDR", "127.0.0.1:0")
            .env("SESSIONGATE_HTTP_ADDR", "127.0.0.1:0")
            .env("SESSIONGATE_LOG_FORMAT", "json")
            // Everything sessiongate logs, at every level (a test's env may lower it).
            .env("RUST_LOG", "trace")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir(dir.path())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn sessiongate");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("\"sessiongate serving\"") {
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                    let addr = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                    let _ = tx.send((addr("grpc_addr"), addr("http_addr")));
                }
                sink.lock().unwrap().push(line);
            }
        });
        let (grpc, http) = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no serving line: {:?}", log.lock().unwrap()));
        Binary {
            child,
            grpc,
            http,
            log,
            _dir: dir,
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            // Every call has a deadline: a stall fails the test instead of hanging CI.
            .timeout(super::CALL_DEADLINE)
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect()
            .await
            .unwrap()
    }

    /// SIGTERM, and wait: the binary flushes its spans on the way out.
    pub fn stop(mut self) -> String {
        super::signal(self.child.id(), rustix::process::Signal::TERM);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "exit status {status}");
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Binary {
    /// A test that fails half-way must not leave its server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
