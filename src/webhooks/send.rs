//! One delivery attempt: POST the envelope, signed for this moment; any 2xx is delivered.

use super::sign::{Envelope, Signer};

/// POSTs `envelope` to `url`, signed at `now_s` (Unix seconds). `Err` says why it was not
/// delivered, in words fit for a log line and a dead letter (never the receiver's body).
pub async fn attempt(
    client: &reqwest::Client,
    url: &url::Url,
    signer: &Signer,
    envelope: &Envelope,
    now_s: i64,
) -> Result<(), String> {
    let resp = client
        .post(url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", &envelope.id)
        .header("webhook-timestamp", now_s.to_string())
        .header(
            "webhook-signature",
            signer.signature(&envelope.id, now_s, &envelope.body),
        )
        .body(envelope.body.clone())
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                "timed out".to_owned()
            } else if e.is_connect() {
                "cannot connect".to_owned()
            } else {
                "the request failed".to_owned()
            }
        })?;
    let status = resp.status();
    // The answer's body is not read: nothing in it changes the outcome.
    drop(resp);
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {}", status.as_u16()))
    }
}
