//! The MigrateSession benchmark.

use std::sync::Arc;

use sessiongate::grpc::pb;
use sessiongate::grpc::pb::session_gate_service_client::SessionGateServiceClient;
use tonic::transport::Channel;

use crate::fixtures::LegacyIdp;
use crate::run::{Run, run_tokens};
use crate::{Args, mint_many};

/// MigrateSession against a fake UserInfo with a fixed latency, next to the same UserInfo
/// called directly by the load generator: the difference is what sessiongate adds (local JWT
/// verification, replay/single-flight records, rate limits, identity claim, user and session
/// commit in Redis, minting).
pub(crate) struct MigrateResult {
    pub(crate) userinfo_latency_ms: u64,
    /// (concurrency, direct UserInfo run, MigrateSession run)
    pub(crate) runs: Vec<(usize, Run, Run)>,
}

impl MigrateResult {
    pub(crate) fn print(&self) {
        println!(
            "MigrateSession, fake UserInfo with {} ms fixed latency, one never-seen legacy identity per call:",
            self.userinfo_latency_ms
        );
        println!();
        println!(
            "| in flight | calls | UserInfo direct p50 / p99 ms | MigrateSession p50 / p99 ms | added p50 / p99 ms | migrations/s |"
        );
        println!("|---:|---:|---:|---:|---:|---:|");
        for (c, direct, migrate) in &self.runs {
            println!(
                "| {c} | {} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.0} |",
                migrate.ok,
                direct.p(0.5) / 1000.0,
                direct.p(0.99) / 1000.0,
                migrate.p(0.5) / 1000.0,
                migrate.p(0.99) / 1000.0,
                (migrate.p(0.5) - direct.p(0.5)) / 1000.0,
                (migrate.p(0.99) - direct.p(0.99)) / 1000.0,
                migrate.rps(),
            );
        }
        println!();
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "userinfo_latency_ms": self.userinfo_latency_ms,
            "runs": self.runs.iter().map(|(c, d, m)| serde_json::json!({
                "concurrency": c,
                "calls": m.ok,
                "userinfo_direct_p50_us": d.p(0.5), "userinfo_direct_p99_us": d.p(0.99),
                "migrate_p50_us": m.p(0.5), "migrate_p99_us": m.p(0.99),
                "added_p50_us": m.p(0.5) - d.p(0.5), "added_p99_us": m.p(0.99) - d.p(0.99),
                "migrations_per_s": m.rps().round(),
            })).collect::<Vec<_>>(),
        })
    }
}

pub(crate) async fn bench_migrate(
    channel: &Channel,
    legacy: &LegacyIdp,
    args: &Args,
) -> anyhow::Result<MigrateResult> {
    let mut runs = Vec::new();
    for (round, concurrency) in [1usize, 16].into_iter().enumerate() {
        // One-at-a-time calls take the full latency each: fewer of them.
        let n = if concurrency == 1 {
            (args.migrations / 8).max(50)
        } else {
            args.migrations
        };
        eprintln!("MigrateSession: {n} legacy identities, {concurrency} in flight…");
        let signer = legacy.signer(sessiongate::keys::KeyKind::Rs256);
        let claims = legacy.claims("legacy");
        // Each token its own identity (UserInfo answers with the token's `sub`).
        let tokens = mint_many(
            n,
            Arc::new(move |i| {
                let mut c = claims.clone();
                c["sub"] = serde_json::json!(format!("legacy-{round}-{i}"));
                c["jti"] = serde_json::json!(format!("migrate-{round}-{i}"));
                signer.sign(&c)
            }),
        )?;
        let direct = run_tokens(tokens.clone(), concurrency, {
            let http = reqwest::Client::new();
            let url = legacy.userinfo_url();
            move |token: String| {
                let http = http.clone();
                let url = url.clone();
                async move {
                    http.get(&url)
                        .bearer_auth(token)
                        .send()
                        .await
                        .and_then(|r| r.error_for_status())
                        .is_ok()
                }
            }
        })
        .await;
        let migrate = run_tokens(tokens, concurrency, {
            let client = SessionGateServiceClient::new(channel.clone());
            move |token: String| {
                let mut client = client.clone();
                async move {
                    let mut req = tonic::Request::new(pb::MigrateSessionRequest {
                        legacy_token: token,
                        ..Default::default()
                    });
                    req.metadata_mut().insert(
                        "authorization",
                        tonic::metadata::MetadataValue::from_static("Bearer loadgen-key"),
                    );
                    matches!(client.migrate_session(req).await, Ok(r) if !r.get_ref().replayed)
                }
            }
        })
        .await;
        anyhow::ensure!(
            direct.errors == 0 && migrate.errors == 0,
            "MigrateSession benchmark: {} direct and {} migration errors",
            direct.errors,
            migrate.errors
        );
        runs.push((concurrency, direct, migrate));
    }
    Ok(MigrateResult {
        userinfo_latency_ms: args.userinfo_latency_ms,
        runs,
    })
}
