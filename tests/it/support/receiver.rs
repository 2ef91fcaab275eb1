//! A webhook receiver on loopback: records every delivery it gets and answers the statuses a
//! test scripts.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use tokio::sync::mpsc;

/// One request the receiver got, and what it answered.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Vec<u8>,
    pub status: u16,
}

impl Delivery {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

struct Script {
    next: VecDeque<u16>,
    otherwise: u16,
    seen: mpsc::UnboundedSender<Delivery>,
}

pub struct Receiver {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    seen: tokio::sync::Mutex<mpsc::UnboundedReceiver<Delivery>>,
}

async fn take(
    State(script): State<Arc<Mutex<Script>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut s = script.lock().unwrap();
    let status = s.next.pop_front().unwrap_or(s.otherwise);
    let _ = s.seen.send(Delivery {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body: body.to_vec(),
        status,
    });
    StatusCode::from_u16(status).unwrap()
}

impl Receiver {
    pub async fn start() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let script = Arc::new(Mutex::new(Script {
            next: VecDeque::new(),
            otherwise: 200,
            seen: tx,
        }));
        let app = Router::new()
            .route("/hook", post(take))
            .with_state(script.clone());
        let addr = super::serve_http(app).await;
        Self {
            addr,
            script,
            seen: tokio::sync::Mutex::new(rx),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answers `statuses` to the next requests, in order, then as before.
    pub fn answer_next(&self, statuses: &[u16]) {
        self.script.lock().unwrap().next.extend(statuses);
    }

    /// Answers `status` from now on (after any scripted ones).
    pub fn answer(&self, status: u16) {
        self.script.lock().unwrap().otherwise = status;
    }

    /// The next request received (within 20 s, or the test fails).
    pub async fn next(&self) -> Delivery {
        tokio::time::timeout(Duration::from_secs(20), self.seen.lock().await.recv())
            .await
            .expect("a delivery within 20 s")
            .expect("the receiver runs")
    }

    /// Requests until one answered 2xx for each of `n` distinct event ids; returns every
    /// request in arrival order.
    pub async fn until_delivered(&self, n: usize) -> Vec<Delivery> {
        let mut all = Vec::new();
        let mut ok = std::collections::BTreeSet::new();
        while ok.len() < n {
            let d = self.next().await;
            if (200..300).contains(&d.status) {
                ok.insert(d.id.clone());
            }
            all.push(d);
        }
        all
    }
}
