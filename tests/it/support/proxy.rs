//! A TCP fault proxy on loopback, in front of Redis or a fake issuer: passes bytes through
//! until told to add latency, black-hole them, or reset every connection — on new and
//! existing connections alike (reliability.md §7: a deterministic netem/toxiproxy stand-in).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    Pass,
    /// Hold every chunk this long before forwarding it (a slow network or a slow server).
    Latency(Duration),
    /// Accept and read, forward nothing (a hung peer with TCP still up).
    BlackHole,
    /// Reset every connection, existing and new (a crashed peer).
    Reset,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    fault: watch::Sender<Fault>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (fault, _) = watch::channel(Fault::Pass);
        let tx = fault.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let rx = tx.subscribe();
                tokio::spawn(async move {
                    if *rx.borrow() == Fault::Reset {
                        reset(inbound);
                        return;
                    }
                    let Ok(outbound) = TcpStream::connect(upstream).await else {
                        reset(inbound);
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    let up = tokio::spawn(pump(ri, wo, rx.clone()));
                    let down = tokio::spawn(pump(ro, wi, rx));
                    let _ = tokio::join!(up, down);
                });
            }
        });
        FaultProxy { addr, fault, task }
    }

    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }
}

fn reset(s: TcpStream) {
    // Linger 0: close with RST, as a crashed peer's kernel would.
    #[allow(deprecated)] // set_linger(0) is exactly the abortive close wanted here
    let _ = s.set_linger(Some(Duration::ZERO));
    drop(s);
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut fault: watch::Receiver<Fault>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            // A switch to Reset cuts connections that are idle, too.
            changed = fault.changed() => {
                if changed.is_err() || *fault.borrow() == Fault::Reset {
                    break;
                }
                continue;
            }
        };
        let current = *fault.borrow();
        match current {
            Fault::Pass => {}
            // Simulated network latency, not synchronisation.
            Fault::Latency(d) => tokio::time::sleep(d).await,
            Fault::BlackHole => continue,
            Fault::Reset => break,
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    // Dropping the halves closes both connections.
    drop((from, to));
}
