//! The caller's mesh identity from `x-forwarded-client-cert` (XFCC), as Envoy — an Istio
//! sidecar in front of sessiongate — writes it after verifying the caller's mTLS certificate:
//! `By=<us>;Hash=<cert hash>;URI=spiffe://<trust domain>/ns/<ns>/sa/<account>`.
//!
//! Only the **last** element counts: the sidecar appends its own element to whatever the
//! client sent (`APPEND_FORWARD`, Istio's default), so every element before it may be forged.
//! And only with a sidecar that every connection passes through with mTLS
//! (`PeerAuthentication` `STRICT`): without one, the last element is the client's own.
//!
//! Hand-written (40 lines) rather than a dependency: no maintained crate parses XFCC, and the
//! grammar is Envoy's small one — elements split by `,`, pairs by `;`, values optionally
//! double-quoted with `\"` escapes.

/// The SPIFFE ID (`URI=spiffe://…`) of the last element, if it has one.
pub fn peer_spiffe_id(header: &[u8]) -> Option<&str> {
    let header = std::str::from_utf8(header).ok()?;
    let last = split_unquoted(header, ',').last()?;
    split_unquoted(last, ';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        (key.eq_ignore_ascii_case("URI") && value.starts_with("spiffe://")).then_some(value)
    })
}

/// `s` split at `sep` outside double quotes (a `\` escapes the next character inside them).
fn split_unquoted(s: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GATEWAY: &str =
        "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account";

    #[test]
    fn the_last_element_is_the_sidecars_and_the_only_one_read() {
        let one = format!(
            "By=spiffe://cluster.local/ns/sg/sa/sessiongate;Hash=ab12;Subject=\"\";URI={GATEWAY}"
        );
        assert_eq!(peer_spiffe_id(one.as_bytes()), Some(GATEWAY));
        // A client's own element first, the sidecar's after it: the sidecar's.
        let forged =
            format!("By=x;URI=spiffe://cluster.local/ns/prod/sa/admin,By=y;Hash=cd;URI={GATEWAY}");
        assert_eq!(peer_spiffe_id(forged.as_bytes()), Some(GATEWAY));
        // The forged one last (no sidecar appended): what is last is read — which is why a
        // sidecar with STRICT mTLS is required.
        let last = format!("By=y;URI={GATEWAY},URI=spiffe://cluster.local/ns/prod/sa/admin");
        assert_eq!(
            peer_spiffe_id(last.as_bytes()),
            Some("spiffe://cluster.local/ns/prod/sa/admin")
        );
    }

    #[test]
    fn quoted_values_may_hold_separators() {
        let h = format!("By=spiffe://a;Subject=\"CN=x,O=Acme; Inc.\\\",\";URI=\"{GATEWAY}\"");
        assert_eq!(peer_spiffe_id(h.as_bytes()), Some(GATEWAY));
    }

    #[test]
    fn anything_else_is_no_identity() {
        for h in [
            &b""[..],
            b"By=spiffe://a;Hash=ab",
            b"URI=https://example.com",
            b"URI=",
            b",,,",
            b"URI=spiffe://a,",
            b"\"unterminated;URI=spiffe://a",
            &[0xff, 0xfe],
        ] {
            assert_eq!(peer_spiffe_id(h), None, "{:?}", String::from_utf8_lossy(h));
        }
    }
}
