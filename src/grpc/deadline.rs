//! A call's deadline: the caller's `grpc-timeout`, never longer than the server's bound — so
//! that work for a caller who has given up stops, and a call that sets no deadline cannot hold
//! a connection for ever. A call past its deadline ends `DEADLINE_EXCEEDED`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;
use tower::{Layer, Service};

const GRPC_TIMEOUT: &str = "grpc-timeout";

#[derive(Clone)]
pub struct DeadlineLayer {
    max: Duration,
}

impl DeadlineLayer {
    /// `max`: the deadline of a call that sets none, and the longest any call gets.
    pub fn new(max: Duration) -> Self {
        Self { max }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            max: self.max,
        }
    }
}

#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
    max: Duration,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Deadline<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let asked = req
            .headers()
            .get(GRPC_TIMEOUT)
            .and_then(|v| parse_timeout(v.as_bytes()));
        let after = asked.map_or(self.max, |t| t.min(self.max));
        DeadlineFuture {
            call: self.inner.call(req),
            expiry: tokio::time::sleep(after),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct DeadlineFuture<F> {
        #[pin]
        call: F,
        #[pin]
        expiry: Sleep,
    }
}

impl<F, ResBody, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
    ResBody: Default,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(r) = this.call.poll(cx) {
            return Poll::Ready(r);
        }
        std::task::ready!(this.expiry.poll(cx));
        Poll::Ready(Ok(tonic::Status::deadline_exceeded(
            "the call's deadline passed",
        )
        .into_http()))
    }
}

/// `grpc-timeout` as the gRPC HTTP/2 protocol spells it: at most 8 ASCII digits and a unit
/// (`H`, `M`, `S`, `m`, `u`, `n`). Anything else is no deadline (the server's bound applies).
fn parse_timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::ServiceExt as _;

    #[test]
    fn grpc_timeout_is_read_as_the_protocol_spells_it() {
        assert_eq!(parse_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"3M"), Some(Duration::from_secs(180)));
        assert_eq!(
            parse_timeout(b"99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_timeout(b"5n"), Some(Duration::from_nanos(5)));
        for bad in [
            &b""[..],
            b"m",
            b"123456789m",
            b"-1S",
            b"1.5S",
            b"10x",
            b"10 S",
            b"\xff1S",
        ] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
    }

    fn slow() -> impl Service<
        http::Request<()>,
        Response = http::Response<tonic::body::Body>,
        Error = Infallible,
        Future = impl Future<Output = Result<http::Response<tonic::body::Body>, Infallible>>,
    > + Clone {
        tower::service_fn(|_req: http::Request<()>| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, Infallible>(http::Response::new(tonic::body::Body::default()))
        })
    }

    fn status(res: &http::Response<tonic::body::Body>) -> Option<&str> {
        res.headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_ends_at_the_callers_deadline_or_the_servers_bound() {
        let svc = DeadlineLayer::new(Duration::from_secs(30)).layer(slow());
        let started = tokio::time::Instant::now();
        let req = http::Request::builder()
            .header(GRPC_TIMEOUT, "100m")
            .body(())
            .unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(status(&res), Some("4"), "DEADLINE_EXCEEDED");
        assert_eq!(started.elapsed(), Duration::from_millis(100));

        let started = tokio::time::Instant::now();
        let req = http::Request::builder()
            .header(GRPC_TIMEOUT, "1H")
            .body(())
            .unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(status(&res), Some("4"));
        assert_eq!(started.elapsed(), Duration::from_secs(30), "capped");

        let started = tokio::time::Instant::now();
        let res = svc.oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(status(&res), Some("4"));
        assert_eq!(started.elapsed(), Duration::from_secs(30), "none set");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_within_its_deadline_is_untouched() {
        let fast = tower::service_fn(|_req: http::Request<()>| async {
            Ok::<_, Infallible>(http::Response::new(tonic::body::Body::default()))
        });
        let svc = DeadlineLayer::new(Duration::from_secs(30)).layer(fast);
        let req = http::Request::builder()
            .header(GRPC_TIMEOUT, "1n")
            .body(())
            .unwrap();
        let res = svc.oneshot(req).await.unwrap();
        assert_eq!(status(&res), None, "the service's own answer");
    }
}
