//! An accepted TCP connection as HTTP sees it: it notes when the client has said enough to
//! count as having opened HTTP, and it batches answers — within one write (it tells HTTP/2 it
//! cannot write vectored) and across calls (a write waits once for the calls still running).
//!
//! **Batching within a write.** h2 copies a DATA frame into its write buffer, to go out with
//! the others of the same poll, only when the frame is at most 256 bytes on a connection that
//! writes vectored (1 024 otherwise); a larger frame is chained and flushed with a system
//! call of its own. Many of sessiongate's answers are between the two (a FULL verdict,
//! Envoy's Check with its dynamic metadata), so on a vectored connection each cost a `writev`
//! of its own; here they share one. Measured server-bound: a FULL cache hit 64–70 → 41–50 µs
//! of server CPU, a Check with metadata 61–70 → 33 µs; answers under 256 bytes unchanged.
//! Frames over 1 024 bytes (CreateSession, MigrateSession, an opaque token's FULL answer)
//! take two writes instead of one; measured, the opaque FULL answer did not get slower.
//! (HTTP/1.1 answers, on the HTTP port, are then flattened into one buffer too.)
//!
//! **Batching across calls.** Each call runs as a task of its own; when it ends, it wakes the
//! connection's task, and tokio runs a task just woken next. So the connection wrote each
//! answer as soon as its call ended: 0.67 `sendto` a call under load, each also paying the
//! kernel's TCP send (and, on loopback, the delivery). Now a write that finds other calls of
//! its connection still in flight is put off once: the connection's task wakes itself and
//! goes to the back of the run queue, the calls that were ready run and add their answers to
//! h2's buffer, and one write sends them all. With no other call in flight (one call at a
//! time) the write goes at once, as before, so a lone call's latency does not change; under
//! a partial load the first answer of a burst waits for the others (the price of the shared
//! write). HTTP/1.1 has one call at a time on a connection: nothing to batch, and
//! forward-auth's cost did not move, measured. Measured server-bound (docs/performance.md,
//! session 13): 0.06 `sendto` a call instead of 0.67, a Health/Check's server CPU 18–24 →
//! 10–13 µs, a cached Check's 43 → 19 µs.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::activity::Activity;

/// How many bytes a client must send to have opened HTTP: HTTP/2's connection preface is 24
/// bytes (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`), and no HTTP/1.1 request line with its
/// `Host` header is shorter.
pub(super) const OPENING_BYTES: usize = 24;

pub(super) struct Socket {
    tcp: TcpStream,
    /// Bytes read until the opening is complete; then `None`, and reads count nothing.
    opening: Option<usize>,
    activity: Arc<Activity>,
    /// The pending write was put off once already (see the module's "across calls").
    deferred: bool,
}

impl Socket {
    pub(super) fn new(tcp: TcpStream, activity: Arc<Activity>) -> Self {
        Self {
            tcp,
            opening: Some(0),
            activity,
            deferred: false,
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if let Some(read) = &mut this.opening {
            *read += buf.filled().len() - before;
            if *read >= OPENING_BYTES {
                this.opening = None;
                this.activity.opened();
            }
        }
        r
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if !this.deferred && this.activity.busy() {
            // Once, and only while other calls run: a write is never put off twice in a row,
            // so a connection whose calls never end (a stream) still writes.
            this.deferred = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.deferred = false;
        Pin::new(&mut this.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use tokio::io::AsyncReadExt as _;
    use tokio::net::TcpListener;

    use super::*;

    /// A waker that counts its wakes.
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_write_waits_once_while_other_calls_run_and_never_otherwise() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let activity = Arc::new(Activity::new());
        let mut socket = Socket::new(tcp, activity.clone());
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut write = |b: &[u8]| Pin::new(&mut socket).poll_write(&mut cx, b);

        // No call in flight: at once.
        assert!(matches!(write(b"a"), Poll::Ready(Ok(1))));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);

        // A call in flight: put off once, with a wake so that it is tried again; then written.
        let call = activity.call_started();
        assert!(write(b"b").is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert!(matches!(write(b"b"), Poll::Ready(Ok(1))));
        // The next write waits once again, never twice in a row.
        assert!(write(b"c").is_pending());
        assert!(matches!(write(b"c"), Poll::Ready(Ok(1))));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);

        // The call over: at once again.
        drop(call);
        assert!(matches!(write(b"d"), Poll::Ready(Ok(1))));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);

        let mut got = [0u8; 4];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abcd");
    }
}
