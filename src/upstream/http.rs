//! The one outbound HTTP client configuration: JWKS and discovery fetches and UserInfo calls
//! all go through clients built here, so every upstream call is bounded the same way.

use std::time::Duration;

/// An HTTP client for upstream calls: bounded in time, never redirected, through a proxy
/// only when one is configured.
pub fn http_client(
    connect_timeout: Duration,
    timeout: Duration,
    proxy: Option<&crate::config::Secret>,
) -> reqwest::Client {
    let builder = reqwest::Client::builder();
    // A proxy sees every bearer token sent to UserInfo: only one configured on purpose
    // (`server.upstream_proxy`, validated at start-up), never one that HTTP_PROXY,
    // HTTPS_PROXY or ALL_PROXY, set for some other program, would quietly put in the path.
    let builder = match proxy.and_then(|p| reqwest::Proxy::all(p.expose()).ok()) {
        Some(p) => builder.proxy(p),
        None => builder.no_proxy(),
    };
    builder
        .connect_timeout(connect_timeout)
        .timeout(timeout)
        // A JWKS URL that redirects is a misconfiguration or an attack; never follow.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("sessiongate/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("static reqwest configuration")
}

/// GETs `url` and returns its body, refusing non-200 answers and bodies over `cap`.
pub async fn fetch_capped(
    client: &reqwest::Client,
    url: &url::Url,
    accept: &str,
    cap: usize,
) -> Result<Vec<u8>, String> {
    let resp = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, accept)
        .send()
        .await
        .map_err(|e| describe(&e))?;
    if resp.status() != reqwest::StatusCode::OK {
        return Err(format!("HTTP {}", resp.status().as_u16()));
    }
    read_capped(resp, cap).await.map_err(|e| match e {
        BodyError::TooLarge => format!("body larger than {cap} bytes"),
        BodyError::Failed(e) => describe(&e),
    })
}

/// Why a body could not be read whole.
pub enum BodyError {
    /// Over the cap, by its declared length or as it arrived.
    TooLarge,
    Failed(reqwest::Error),
}

/// Reads `resp`'s body, refusing one over `cap` bytes before buffering more than that.
pub async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Failed)? {
        if body.len() + chunk.len() > cap {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A short, secret-free description of a reqwest error.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else if e.is_redirect() {
        "redirected".into()
    } else {
        "request failed".into()
    }
}
