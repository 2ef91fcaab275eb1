//! ResolveFlow's rules (docs/design.md, "Rolling out"), in order, first decisive rule wins: unknown flow →
//! kill switch → eligibility gates → deny lists → allow lists → sticky NEW → percentage.
//! Pure: the one fact that needs the store (does this user already have an account?) is asked
//! for through [`Facts`] only when the earlier rules did not decide.

use std::collections::HashMap;
use std::net::IpAddr;

use super::cookie::{self, CookieKeys, FlowCookie};
use super::engine::Context;
use super::model::Effective;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Legacy,
    New,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowReason {
    FlowNotFound,
    Disabled,
    NotEligible,
    ForcedLegacy,
    ForcedNew,
    Sticky,
    RolloutIn,
    RolloutOut,
    NoMatch,
    Error,
}

impl FlowReason {
    pub const ALL: [FlowReason; 10] = [
        FlowReason::FlowNotFound,
        FlowReason::Disabled,
        FlowReason::NotEligible,
        FlowReason::ForcedLegacy,
        FlowReason::ForcedNew,
        FlowReason::Sticky,
        FlowReason::RolloutIn,
        FlowReason::RolloutOut,
        FlowReason::NoMatch,
        FlowReason::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FlowReason::FlowNotFound => "flow_not_found",
            FlowReason::Disabled => "disabled",
            FlowReason::NotEligible => "not_eligible",
            FlowReason::ForcedLegacy => "forced_legacy",
            FlowReason::ForcedNew => "forced_new",
            FlowReason::Sticky => "sticky",
            FlowReason::RolloutIn => "rollout_in",
            FlowReason::RolloutOut => "rollout_out",
            FlowReason::NoMatch => "no_match",
            FlowReason::Error => "error",
        }
    }
}

/// One ResolveFlow request, validated and normalised.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub flow: String,
    pub user_id: Option<String>,
    pub device_id: Option<String>,
    pub flow_cookie: Option<String>,
    /// Unparsable addresses are dropped (as unknown), never an error.
    pub ip: Option<IpAddr>,
    /// Upper-case ISO 3166-1 alpha-2; `None` when unknown (empty, `XX`, `T1`).
    pub country: Option<String>,
    pub app_name: Option<String>,
    /// As sent.
    pub app_version: Option<String>,
    pub properties: HashMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetCookie {
    pub name: String,
    pub value: String,
    pub max_age_secs: u64,
    pub header_value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub flow: Flow,
    pub reason: FlowReason,
    pub rule: String,
    pub bucket: u32,
    pub percentage: u32,
    pub device_id: String,
    pub set_cookie: Option<SetCookie>,
    pub config_version: String,
}

/// Normalises a country from the edge: upper-case; empty, `XX` (unknown) and `T1` (Tor) are
/// unknown.
pub fn normalise_country(c: &str) -> Option<String> {
    let up = c.trim().to_ascii_uppercase();
    match up.as_str() {
        "" | "XX" | "T1" => None,
        _ => Some(up),
    }
}

/// Normalises an app version the way apps write them: a leading `v`, two components
/// (`5.12` → `5.12.0`) and a build in parentheses (`5.12.0 (4321)` → `5.12.0+4321`).
/// Anything still not a semantic version is `None` (not eligible).
pub fn normalise_version(v: &str) -> Option<semver::Version> {
    let v = v.trim();
    let v = v.strip_prefix(['v', 'V']).unwrap_or(v);
    let (core, build) = match v.split_once(" (") {
        Some((c, b)) => (c.trim(), Some(b.strip_suffix(')')?.trim())),
        None => (v, None),
    };
    let mut text = core.to_owned();
    if !core.contains(['-', '+']) && core.split('.').count() == 2 {
        text.push_str(".0");
    }
    if let Some(b) = build.filter(|b| !b.is_empty()) {
        text.push('+');
        text.push_str(b);
    }
    semver::Version::parse(&text).ok()
}

/// What the rules before "sticky" concluded.
pub enum Early {
    Decided(Decision),
    /// Undecided: continue with stickiness and the percentage.
    Continue(Pending),
}

/// State carried from the early rules to the late ones.
pub struct Pending {
    device_id: Option<String>,
    /// A cookie that verified, with its NEW flag kept only at the current epoch.
    cookie_new: bool,
}

impl Pending {
    /// Whether the "already has an account" fact matters (a user id and no sticky cookie).
    pub fn needs_account_check(&self, req: &Request) -> bool {
        req.user_id.is_some() && !self.cookie_new
    }
}

/// The decision machinery of one flow.
pub struct Resolver<'a> {
    pub flow: &'a Effective,
    pub cookies: &'a CookieKeys,
    /// This flow's cookie name ([`cookie::cookie_name`]).
    pub cookie_name: &'a str,
    pub cookie_max_age_secs: u64,
}

impl Resolver<'_> {
    fn decision(
        &self,
        flow: Flow,
        reason: FlowReason,
        rule: impl Into<String>,
        device_id: Option<&str>,
        keep_new: bool,
    ) -> Decision {
        let device_id = device_id.unwrap_or_default().to_owned();
        // Persist the device id, and NEW once given (a temporary LEGACY — kill switch, gate,
        // deny list — does not erase it; only a rollback epoch bump does).
        let set_cookie = (!device_id.is_empty()).then(|| {
            let value = self.cookies.sign(
                &self.flow.name,
                &FlowCookie {
                    device_id: device_id.clone(),
                    new: flow == Flow::New || keep_new,
                    epoch: self.flow.rollback_epoch,
                },
            );
            let name = self.cookie_name.to_owned();
            SetCookie {
                header_value: cookie::header_value(&name, &value, self.cookie_max_age_secs),
                name,
                value,
                max_age_secs: self.cookie_max_age_secs,
            }
        });
        Decision {
            flow,
            reason,
            rule: rule.into(),
            bucket: 0,
            percentage: self.flow.percentage,
            device_id,
            set_cookie,
            config_version: self.flow.config_version.clone(),
        }
    }

    /// Rules 2–5: kill switch, eligibility gates, deny lists, allow lists.
    pub fn early(&self, req: &Request) -> Early {
        let f = self.flow;
        let cookie = req
            .flow_cookie
            .as_deref()
            .and_then(|v| self.cookies.verify(&f.name, v))
            // A cookie of another device than the one named is not this device's.
            .filter(|c| req.device_id.as_ref().is_none_or(|d| *d == c.device_id));
        let cookie_new = cookie
            .as_ref()
            .is_some_and(|c| c.new && c.epoch == f.rollback_epoch);
        let device_id = req
            .device_id
            .clone()
            .or_else(|| cookie.as_ref().map(|c| c.device_id.clone()))
            .or_else(|| {
                // Never random bucketing: with neither id, mint one and hand it back.
                req.user_id
                    .is_none()
                    .then(|| uuid::Uuid::new_v4().to_string())
            });
        let dev = device_id.as_deref();
        let legacy = |reason, rule: String| {
            Early::Decided(self.decision(Flow::Legacy, reason, rule, dev, cookie_new))
        };

        if f.kill_switch {
            return legacy(FlowReason::Disabled, "kill_switch".into());
        }
        if !f.countries.is_empty() {
            match &req.country {
                Some(c) if f.countries.iter().any(|x| x == c) => {}
                _ => return legacy(FlowReason::NotEligible, "countries".into()),
            }
        }
        if let Some(app) = &req.app_name
            && let Some(min) = f.min_app_versions.get(app)
        {
            let ok = req
                .app_version
                .as_deref()
                .and_then(normalise_version)
                .is_some_and(|v| v.cmp_precedence(min).is_ge());
            if !ok {
                return legacy(FlowReason::NotEligible, format!("min_app_versions.{app}"));
            }
        }
        if let Some(u) = &req.user_id
            && f.deny_users.contains(u)
        {
            return legacy(FlowReason::ForcedLegacy, "deny_users".into());
        }
        if let Some(d) = dev
            && f.deny_devices.contains(d)
        {
            return legacy(FlowReason::ForcedLegacy, "deny_devices".into());
        }
        if let Some(ip) = req.ip
            && let Some(n) = f.deny_cidrs.iter().find(|n| n.contains(&ip))
        {
            return legacy(FlowReason::ForcedLegacy, format!("deny_cidrs:{n}"));
        }
        let new = |rule: String| {
            Early::Decided(self.decision(Flow::New, FlowReason::ForcedNew, rule, dev, true))
        };
        if let Some(u) = &req.user_id
            && f.allow_users.contains(u)
        {
            return new("allow_users".into());
        }
        if let Some(d) = dev
            && f.allow_devices.contains(d)
        {
            return new("allow_devices".into());
        }
        if let Some(ip) = req.ip
            && let Some(n) = f.allow_cidrs.iter().find(|n| n.contains(&ip))
        {
            return new(format!("allow_cidrs:{n}"));
        }
        Early::Continue(Pending {
            device_id,
            cookie_new,
        })
    }

    /// Rules 6–7: sticky NEW, then the percentage (Unleash's evaluation).
    pub fn late(&self, req: &Request, p: Pending, has_account: bool) -> Decision {
        let f = self.flow;
        let dev = p.device_id.as_deref();
        if p.cookie_new {
            return self.decision(Flow::New, FlowReason::Sticky, "cookie", dev, true);
        }
        if has_account {
            return self.decision(Flow::New, FlowReason::Sticky, "account", dev, true);
        }
        let ip = req.ip.map(|i| i.to_string());
        let mut ctx = Context {
            user_id: req.user_id.as_deref(),
            session_id: dev,
            remote_address: ip.as_deref(),
            app_name: req.app_name.as_deref(),
            ..Default::default()
        };
        for (k, v) in &req.properties {
            ctx.properties.insert(k, v);
        }
        if let Some(c) = &req.country {
            ctx.properties.insert("country", c);
        }
        if let Some(v) = &req.app_version {
            ctx.properties.insert("appVersion", v);
        }
        let e = f.feature.evaluate(&ctx);
        let rule = |i: Option<usize>| match (f.from_strategies, i) {
            (true, Some(i)) => format!("strategies[{i}]"),
            _ => "percentage".into(),
        };
        let mut d = if e.enabled {
            self.decision(
                Flow::New,
                FlowReason::RolloutIn,
                rule(e.strategy),
                dev,
                true,
            )
        } else if e.constraints_matched {
            self.decision(Flow::Legacy, FlowReason::RolloutOut, rule(None), dev, false)
        } else {
            self.decision(
                Flow::Legacy,
                FlowReason::NoMatch,
                "no_strategy_matched",
                dev,
                false,
            )
        };
        d.bucket = e.bucket.unwrap_or(0);
        if let Some(r) = e.rollout {
            d.percentage = r.min(100);
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn countries_are_normalised_and_unknowns_are_none() {
        assert_eq!(normalise_country(" no "), Some("NO".into()));
        for unknown in ["", "xx", "XX", "T1", "t1", "  "] {
            assert_eq!(normalise_country(unknown), None, "{unknown:?}");
        }
    }

    #[test]
    fn app_versions_are_normalised_the_way_apps_write_them() {
        let v = |s: &str| normalise_version(s).map(|v| v.to_string());
        assert_eq!(v("5.12.0"), Some("5.12.0".into()));
        assert_eq!(v("v5.12"), Some("5.12.0".into()));
        assert_eq!(v("5.12.0 (4321)"), Some("5.12.0+4321".into()));
        assert_eq!(v("5.13.0-beta.1"), Some("5.13.0-beta.1".into()));
        for bad in ["", "five", "5", "5.x", "5.12.0.1", "5.12 (", "1.2.3 (a b)"] {
            assert_eq!(v(bad), None, "{bad:?}");
        }
    }
}
