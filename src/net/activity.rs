//! What a connection is doing, as its driver needs to know to retire it: whether the client has
//! opened HTTP yet, and how many calls are in flight and since when there were none.
//!
//! A call counts from its request's arrival until its answer's body has been sent or dropped,
//! so a streaming answer (reflection) keeps its connection busy for as long as it runs.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tower::ServiceExt as _;
use tower::util::Oneshot;

pub(super) struct Activity {
    started: Instant,
    opened: AtomicBool,
    calls: AtomicUsize,
    /// When the last call ended, in milliseconds after `started` (0 before the first call:
    /// a connection without any call has been idle since it was accepted).
    idle_since_ms: AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Self {
        Self {
            started: Instant::now(),
            opened: AtomicBool::new(false),
            calls: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    pub(super) fn started(&self) -> Instant {
        self.started
    }

    /// The client has sent the opening of HTTP (see `socket::OPENING_BYTES`).
    pub(super) fn opened(&self) {
        self.opened.store(true, Ordering::Release);
    }

    pub(super) fn is_open(&self) -> bool {
        self.opened.load(Ordering::Acquire)
    }

    /// Since when the connection has had no call in flight; `None` while one is.
    pub(super) fn idle_since(&self) -> Option<Instant> {
        if self.calls.load(Ordering::Acquire) > 0 {
            return None;
        }
        let ms = self.idle_since_ms.load(Ordering::Acquire);
        Some(self.started + Duration::from_millis(ms))
    }

    /// Whether any call is in flight: one whose answer has not all been handed to HTTP yet.
    pub(super) fn busy(&self) -> bool {
        self.calls.load(Ordering::Acquire) > 0
    }

    pub(super) fn call_started(self: &Arc<Self>) -> CallGuard {
        self.calls.fetch_add(1, Ordering::AcqRel);
        CallGuard(self.clone())
    }
}

/// One call in flight; the count drops with it.
pub(super) struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        let a = &self.0;
        // Stamp before the count reaches zero, so a driver that reads zero calls never reads
        // the stamp of an earlier idle spell.
        let ms = a.started.elapsed().as_millis().min(u64::MAX as u128) as u64;
        a.idle_since_ms.store(ms, Ordering::Release);
        a.calls.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The connection's service: the port's service, with each call counted in [`Activity`].
pub(super) struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub(super) fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone,
    B: Body,
{
    type Response = Response<TrackedBody<B>>;
    type Error = Infallible;
    type Future = TrackedCall<S>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        TrackedCall {
            call: self.inner.clone().oneshot(req),
            guard: Some(self.activity.call_started()),
        }
    }
}

pin_project_lite::pin_project! {
    pub(super) struct TrackedCall<S: tower::Service<Request<Incoming>>> {
        #[pin]
        call: Oneshot<S, Request<Incoming>>,
        guard: Option<CallGuard>,
    }
}

impl<S, B> Future for TrackedCall<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
{
    type Output = Result<Response<TrackedBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(res) = std::task::ready!(this.call.poll(cx));
        let guard = this.guard.take();
        Poll::Ready(Ok(res.map(|body| TrackedBody {
            body,
            _guard: guard,
        })))
    }
}

pin_project_lite::pin_project! {
    /// An answer's body, which ends its call when it is dropped.
    pub(super) struct TrackedBody<B> {
        #[pin]
        body: B,
        _guard: Option<CallGuard>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_idle_since_its_last_call_ended() {
        let a = Arc::new(Activity::new());
        assert_eq!(a.idle_since(), Some(a.started()), "idle from the start");
        let one = a.call_started();
        let two = a.call_started();
        assert_eq!(a.idle_since(), None);
        drop(one);
        assert_eq!(a.idle_since(), None, "one call still in flight");
        drop(two);
        let since = a.idle_since().expect("idle again");
        assert!(since >= a.started() && since <= Instant::now());
    }

    #[test]
    fn a_connection_is_open_once_told() {
        let a = Activity::new();
        assert!(!a.is_open());
        a.opened();
        assert!(a.is_open());
    }
}
