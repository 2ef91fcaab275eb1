//! `/status`: one HTML page for the quick start, where there is no Grafana — the rollouts
//! with their percentage and ramp, this replica's NEW/LEGACY share since it started, the
//! migrations and UserInfo calls it made, and each provider's key freshness. No script: the
//! browser reloads it every 10 s. Everything shown is escaped; nothing on it is a secret
//! (flow and provider names, counts, times).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::flow::FlowService;
use crate::session::SessionService;
use crate::signals::Signal;

/// What the page is drawn from.
#[derive(Clone)]
pub struct StatusPage {
    pub sessions: Arc<SessionService>,
    pub flows: Arc<FlowService>,
    pub env: &'static str,
    pub store: &'static str,
    pub started: Instant,
}

/// `&`, `<`, `>`, `"` and `'` as entities: text and attribute values alike.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn share(part: u64, whole: u64) -> String {
    if whole == 0 {
        "—".into()
    } else {
        format!("{:.1} %", part as f64 * 100.0 / whole as f64)
    }
}

fn when(ms: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64),
    )
    .to_string()
}

pub async fn page(State(p): State<StatusPage>) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // No script, no frame, nothing fetched: the page is its own inline style.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
            ),
        ],
        render(&p),
    )
}

fn render(p: &StatusPage) -> String {
    let signals = p.sessions.signals();
    let n = |s| signals.since_start(s);
    let mut h = String::new();
    let up = p.started.elapsed().as_secs();
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"10\"><title>sessiongate status</title>\
         <style>body{{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}}\
         table{{border-collapse:collapse;margin:.5em 0 1.5em}}td,th{{border:1px solid #ccc;\
         padding:.3em .7em;text-align:left}}th{{background:#f3f3f3}}.bad{{color:#b00}}\
         .ok{{color:#070}}small{{color:#666}}</style></head><body>\
         <h1>sessiongate</h1><p><small>version {} · env {} · store {} · up {}h{:02}m · \
         this replica, refreshed every 10 s</small></p>",
        esc(env!("CARGO_PKG_VERSION")),
        esc(p.env),
        esc(p.store),
        up / 3600,
        up % 3600 / 60
    );

    // The migration, as this replica saw it.
    let (new, legacy) = (n(Signal::ValidNew), n(Signal::ValidLegacy));
    let (mig, mig_failed) = (n(Signal::Migrations), n(Signal::MigrationFailures));
    let (ui, ui_failed) = (n(Signal::UserinfoCalls), n(Signal::UserinfoErrors));
    let _ = write!(
        h,
        "<h2>Migration since start</h2><table><tr><th>valid sessions</th><th>NEW</th>\
         <th>LEGACY</th><th>migrations</th><th>failed</th><th>UserInfo calls</th>\
         <th>errors</th></tr><tr><td>{}</td><td id=\"new-share\">{} ({})</td><td>{} ({})</td>\
         <td>{}</td><td class=\"{}\">{}</td><td>{}</td><td class=\"{}\">{}</td></tr></table>",
        new + legacy,
        new,
        share(new, new + legacy),
        legacy,
        share(legacy, new + legacy),
        mig,
        if mig_failed > 0 { "bad" } else { "ok" },
        mig_failed,
        ui,
        if ui_failed > 0 { "bad" } else { "ok" },
        ui_failed,
    );

    // The rollouts.
    h.push_str(
        "<h2>Rollouts</h2><table><tr><th>flow</th><th>on NEW</th><th>kill switch</th>\
         <th>ramp</th></tr>",
    );
    let rollouts = p.flows.list();
    if rollouts.is_empty() {
        h.push_str("<tr><td colspan=\"4\">no flows configured</td></tr>");
    }
    for r in rollouts {
        let ramp = match &r.ramp {
            None => "—".to_owned(),
            Some(v) => match &v.state {
                None => format!("{} steps, not started", v.steps.len()),
                Some(st) => {
                    let mut s = format!("step {} of {}", st.step + 1, v.steps.len());
                    if let Some(why) = &st.paused {
                        let _ = write!(s, " · <span class=\"bad\">paused: {}</span>", esc(why));
                    } else if let Some(at) = v.next_step_at_ms {
                        let _ = write!(s, " · next at {}", when(at));
                    } else if st.step as usize + 1 >= v.steps.len() {
                        s.push_str(" · complete");
                    }
                    s
                }
            },
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{} %</td><td class=\"{}\">{}</td><td>{}</td></tr>",
            esc(&r.flow),
            r.percentage,
            if r.kill_switch { "bad" } else { "ok" },
            if r.kill_switch { "on" } else { "off" },
            ramp
        );
    }
    h.push_str("</table>");

    // The providers' keys.
    h.push_str("<h2>Providers</h2><table><tr><th>provider</th><th>side</th><th>keys</th></tr>");
    let providers = p.sessions.providers();
    if providers.is_empty() {
        h.push_str("<tr><td colspan=\"3\">no providers configured</td></tr>");
    }
    for pr in providers {
        let keys = match pr.keys {
            None => "— (opaque tokens: UserInfo)".to_owned(),
            Some((_, true)) => {
                "<span class=\"bad\">refresh failing (last good keys kept)</span>".into()
            }
            Some((Some(age), false)) => format!("fetched {} s ago", age.as_secs()),
            Some((None, false)) => "<span class=\"bad\">not fetched yet</span>".into(),
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&pr.name),
            if pr.legacy { "legacy" } else { "external" },
            keys
        );
    }
    h.push_str(
        "</table><p><small>Fleet-wide figures: <code>/metrics</code>.</small></p></body></html>",
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_html_and_attributes() {
        assert_eq!(
            esc(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(share(1, 3), "33.3 %");
        assert_eq!(share(0, 0), "—");
    }
}
