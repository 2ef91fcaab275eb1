//! Reading what a proxy describes: the credential (bearer token, else the route's cookies),
//! another cookie by name, and the identity headers a client sent itself.

use crate::config::EdgeHeaders;

use super::IDENTITY_PREFIX;

/// The values of the headers named `name` (any case), in order.
fn named<'a>(headers: &[(&'a str, &'a str)], name: &'static str) -> impl Iterator<Item = &'a str> {
    headers
        .iter()
        .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
}

/// The credential: `Authorization: Bearer …`, else the first of the route's cookies that is
/// present. An `Authorization` of another scheme (Basic) is not ours and is passed over.
pub(super) fn credential<'a>(
    headers: &[(&'a str, &'a str)],
    cookies: &[String],
) -> Option<&'a str> {
    if let Some(t) = named(headers, "authorization").find_map(crate::auth::bearer_str) {
        return Some(t);
    }
    cookies.iter().find_map(|name| cookie(headers, name))
}

/// The value of the cookie `name`, from every `Cookie` header; `None` when absent or empty.
pub(super) fn cookie<'a>(headers: &[(&'a str, &'a str)], name: &str) -> Option<&'a str> {
    named(headers, "cookie")
        .flat_map(|h| h.split(';'))
        .filter_map(|c| cookie::Cookie::parse(c.trim()).ok())
        .find(|c| c.name() == name)
        .and_then(|c| match c.value_raw() {
            Some(v) if !v.is_empty() => Some(v.trim_matches('"')),
            _ => None,
        })
}

/// The client's own copies of headers sessiongate sets (lower-cased, sorted, once each):
/// every `x-sessiongate-*` header and every configured name. They are removed before the
/// request goes on. Those sessiongate sets replace any copy anyway; removing only what was
/// sent keeps the answer small on the common path (none).
pub(super) fn spoofed(headers: &[(&str, &str)], names: &EdgeHeaders) -> Vec<String> {
    let mut remove: Vec<String> = headers
        .iter()
        .filter(|(k, _)| {
            (k.len() >= IDENTITY_PREFIX.len()
                && k.as_bytes()[..IDENTITY_PREFIX.len()]
                    .eq_ignore_ascii_case(IDENTITY_PREFIX.as_bytes()))
                || names.all().iter().any(|(_, n)| k.eq_ignore_ascii_case(n))
        })
        .map(|(k, _)| k.to_ascii_lowercase())
        .collect();
    // Sorted, not searched as they come: the client picks how many there are, and a search
    // per header would make thousands of them cost a quadratic time.
    remove.sort_unstable();
    remove.dedup();
    remove
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_credential_is_the_bearer_token_else_the_first_route_cookie_present() {
        let h = |v: &[(&'static str, &'static str)]| v.to_vec();
        let none = names(&[]);
        let sid = names(&["sid"]);
        assert_eq!(
            credential(&h(&[("authorization", "Bearer abc")]), &none),
            Some("abc")
        );
        assert_eq!(
            credential(&h(&[("Authorization", "bearer  abc ")]), &none),
            Some("abc")
        );
        assert_eq!(
            credential(&h(&[("authorization", "Basic dTpw")]), &none),
            None
        );
        assert_eq!(credential(&h(&[("authorization", "Bearer ")]), &none), None);
        assert_eq!(credential(&h(&[("authorization", "Bearer")]), &none), None);
        // The cookie only on a route that names it.
        let c = h(&[("cookie", "a=1; sid=tok; b=2")]);
        assert_eq!(credential(&c, &none), None);
        assert_eq!(credential(&c, &sid), Some("tok"));
        assert_eq!(
            credential(&h(&[("cookie", "a=1"), ("cookie", "sid=t2")]), &sid),
            Some("t2")
        );
        assert_eq!(credential(&h(&[("cookie", "sid=")]), &sid), None);
        assert_eq!(credential(&h(&[("cookie", "xsid=t; sidx=u")]), &sid), None);
        // Several cookies: the route's order, not the header's.
        let two = names(&["new", "old"]);
        assert_eq!(
            credential(&h(&[("cookie", "old=L; new=N")]), &two),
            Some("N")
        );
        assert_eq!(credential(&h(&[("cookie", "old=L")]), &two), Some("L"));
        // Bearer wins over the cookie.
        let both = h(&[("cookie", "sid=c"), ("authorization", "Bearer b")]);
        assert_eq!(credential(&both, &sid), Some("b"));
        // Garbage never panics.
        for junk in ["", ";;;", "=", "sid", "\u{1F600}=x", "sid=\u{1F600}"] {
            let _ = credential(&h(&[("cookie", junk), ("authorization", junk)]), &sid);
        }
    }

    #[test]
    fn every_identity_header_the_client_sent_is_removed() {
        let d = EdgeHeaders::default();
        let r = spoofed(
            &[
                ("X-SessionGate-User-Id", "admin"),
                ("x-sessiongate-user-id", "admin"),
                ("x-sessiongate-role", "root"),
                ("x-sessiongat", "short"),
                ("x-other", "kept"),
            ],
            &d,
        );
        assert_eq!(r, ["x-sessiongate-role", "x-sessiongate-user-id"]);
        // Thousands, repeated: each once (the client picks how many).
        let many: Vec<String> = (0..5_000)
            .map(|i| format!("X-SessionGate-H{}", i % 2_500))
            .collect();
        let many: Vec<(&str, &str)> = many.iter().map(|k| (k.as_str(), "")).collect();
        let r = spoofed(&many, &d);
        assert_eq!(r.len(), 2_500);
        assert!(r.windows(2).all(|w| w[0] < w[1]));
        assert!(r.iter().all(|k| k.starts_with("x-sessiongate-h")));
        assert!(spoofed(&[("authorization", "Bearer x")], &d).is_empty());
        // A configured name outside the prefix is removed as well.
        let custom = EdgeHeaders {
            user_id: "x-user".into(),
            ..EdgeHeaders::default()
        };
        assert_eq!(
            spoofed(&[("X-User", "admin"), ("x-userx", "kept")], &custom),
            ["x-user"]
        );
    }
}
