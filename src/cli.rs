//! The command line: `sessiongate [serve]`, `check-config`, `keygen`, `apikey`, `flow simulate`,
//! `token inspect`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, ProcessEnv};

/// Exit code for a bad configuration or command line (sysexits' EX_USAGE).
const EX_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "sessiongate",
    version,
    about = "Validates any session — native, legacy or external — over gRPC, while a fleet migrates auth providers.",
    long_about = "Validates any session — sessiongate's own, a legacy provider's or an external new \
provider's — over gRPC, migrates legacy sessions without logging anyone out, and resolves \
rolling-deployment login flows.\n\n\
Configuration: a TOML file at SESSIONGATE_CONFIG (optional), `.env-<env>` in the working \
directory, and these environment variables (real ones win):\n  \
SESSIONGATE_ENV         test | live (default test)\n  \
SESSIONGATE_CONFIG      path of sessiongate.toml\n  \
SESSIONGATE_GRPC_ADDR   gRPC listen address (default 0.0.0.0:50051)\n  \
SESSIONGATE_HTTP_ADDR   HTTP listen address for /metrics and /.well-known/jwks.json (default 0.0.0.0:8080)\n  \
REDIS_URL               Redis for shared state; unset = embedded in-memory store (test only)\n  \
SESSIONGATE_LOG_FORMAT  human | json (default human)\n  \
RUST_LOG                log filter (default info)\n  \
OTEL_EXPORTER_OTLP_ENDPOINT  export spans over OTLP/gRPC (e.g. http://otel-collector:4317); unset = none\n  \
OTEL_SERVICE_NAME       service.name of the spans (default sessiongate)\n\n\
With no configuration at all it starts in `test` with an embedded store: the quick start."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service (the default when no command is given).
    Serve {
        /// Configuration file; overrides SESSIONGATE_CONFIG.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Validate the configuration and print what was understood (secrets redacted).
    /// Exits 64 and names the file, key and fix of every problem when it is invalid.
    CheckConfig {
        /// Configuration file; default: SESSIONGATE_CONFIG, else built-in defaults.
        file: Option<PathBuf>,
    },
    /// Print a new signing key (PKCS#8 PEM) for native.signing_keys; its kid goes to stderr.
    Keygen {
        /// Key type: rs256 (RSA 2048, verifiable everywhere), es256 (EC P-256) or eddsa (Ed25519).
        #[arg(long, value_enum, default_value = "rs256")]
        alg: crate::keys::KeyKind,
    },
    /// Generate a caller API key and the SHA-256 to configure for it in [[clients]].
    Apikey {
        /// The client's name in the printed [[clients]] entry.
        #[arg(long, default_value = "my-service")]
        name: String,
    },
    /// Rollout tools: `flow simulate` dry-runs a flow over many synthetic users.
    #[command(subcommand)]
    Flow(FlowCommand),
    /// Token tools: `token inspect` decodes a credential without trusting it.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Classify and decode a credential WITHOUT verifying it: its shape, a JWT's header,
    /// claims and times (expired?), which configured verifier would take it (with a config),
    /// and a SHA-256 fingerprint. Signatures and opaque token bodies are never printed in full.
    Inspect {
        /// The token; `-` (or nothing) reads it from stdin, which keeps it out of shell history.
        token: Option<String>,
        /// Configuration file (default: SESSIONGATE_CONFIG, if set) to say which verifier would
        /// take the token.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum FlowCommand {
    /// Resolve a flow for many synthetic users with ResolveFlow's own rules and print how many
    /// land in NEW and LEGACY, and by which rule: check a change before applying it. Uses the
    /// file's settings (not run-time admin overrides); cookies and accounts play no part.
    Simulate {
        /// The flow's name.
        #[arg(long, default_value = "login")]
        flow: String,
        /// How many synthetic users (random UUIDs: device ids, or user ids for user stickiness).
        #[arg(long, default_value_t = 100_000)]
        users: usize,
        /// Simulate this percentage instead of the configured one.
        #[arg(long)]
        percentage: Option<u32>,
        /// The users' country (ISO 3166-1 alpha-2), for country gates and constraints.
        #[arg(long)]
        country: Option<String>,
        /// The users' app name (e.g. ios), for app-version gates.
        #[arg(long)]
        app_name: Option<String>,
        /// The users' app version.
        #[arg(long)]
        app_version: Option<String>,
        /// The users' IP address, for CIDR lists and remoteAddress strategies.
        #[arg(long)]
        ip: Option<std::net::IpAddr>,
        /// Seed of the synthetic ids (same seed, same ids).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Configuration file; default: SESSIONGATE_CONFIG.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// Runs the command line; the returned code is the process' exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve { config: None }) {
        Command::Serve { config } => serve(config),
        Command::CheckConfig { file } => check_config(file),
        Command::Keygen { alg } => {
            let made = crate::keys::signing::generate_pem(alg).and_then(|pem| {
                let key = crate::keys::SigningKey::from_pem(
                    pem.as_bytes(),
                    std::path::Path::new("(generated)"),
                )?;
                Ok((pem, key.kid().to_owned()))
            });
            match made {
                Ok((pem, kid)) => {
                    print!("{pem}");
                    eprintln!(
                        "kid {kid}: keep the file secret (e.g. a Kubernetes Secret) and list its path in native.signing_keys"
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sessiongate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Flow(FlowCommand::Simulate {
            flow,
            users,
            percentage,
            country,
            app_name,
            app_version,
            ip,
            seed,
            json,
            config,
        }) => {
            let cfg = match load(config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let sim = crate::flow::simulate::Simulation {
                flow,
                users,
                percentage,
                country,
                app_name,
                app_version,
                ip,
                seed,
            };
            match crate::flow::simulate::run(&cfg, &sim) {
                Ok(report) if json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&report).unwrap_or_default()
                    );
                    ExitCode::SUCCESS
                }
                Ok(report) => {
                    print!("{}", report.table());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sessiongate: {e}");
                    ExitCode::from(EX_USAGE)
                }
            }
        }
        Command::Token(TokenCommand::Inspect { token, config }) => {
            let token = match token.filter(|t| t != "-") {
                Some(t) => t,
                None => {
                    let mut t = String::new();
                    if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut t) {
                        eprintln!("sessiongate: cannot read the token from stdin: {e}");
                        return ExitCode::from(EX_USAGE);
                    }
                    t
                }
            };
            let cfg = if config.is_some() || std::env::var_os(config::ENV_CONFIG).is_some() {
                match load(config) {
                    Ok(c) => Some(c),
                    Err(code) => return code,
                }
            } else {
                None
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let report = crate::session::inspect::inspect(&token, now, cfg.as_ref());
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
            eprintln!("NOT VERIFIED: the signature and the store were not checked");
            ExitCode::SUCCESS
        }
        Command::Apikey { name } => {
            let (key, hash) = crate::auth::new_api_key();
            println!(
                "# Give the key to the calling service (it sends `authorization: Bearer <key>`):"
            );
            println!("# {key}");
            println!("# and put only its hash into sessiongate.toml:");
            println!(
                "[[clients]]\nname = \"{name}\"\nkey_sha256 = \"{hash}\"\nscopes = [\"validate\"]"
            );
            ExitCode::SUCCESS
        }
    }
}

fn load(file: Option<PathBuf>) -> Result<config::Config, ExitCode> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    config::load(&ProcessEnv, &cwd, file.as_deref()).map_err(|e| {
        eprintln!("sessiongate: {e}");
        ExitCode::from(EX_USAGE)
    })
}

fn check_config(file: Option<PathBuf>) -> ExitCode {
    let cfg = match load(file) {
        Ok(c) => c,
        Err(code) => return code,
    };
    println!("{}", cfg.describe());
    for w in cfg.warnings() {
        eprintln!("warning: {w}");
    }
    eprintln!(
        "configuration OK ({})",
        cfg.file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "built-in defaults".into())
    );
    ExitCode::SUCCESS
}

fn serve(file: Option<PathBuf>) -> ExitCode {
    let cfg = match load(file) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Worker threads: tokio reads TOKIO_WORKER_THREADS itself (set it from the pod's CPU
    // request in Kubernetes), else one per available core.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sessiongate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Telemetry inside the runtime: the span exporter runs on it.
    let telemetry = {
        let _in_runtime = rt.enter();
        match crate::telemetry::init(cfg.log_format, &cfg.telemetry, cfg.env.as_str()) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("sessiongate: {e}");
                return ExitCode::from(EX_USAGE);
            }
        }
    };
    let result = rt.block_on(async {
        let app = crate::App::build(cfg).await?;
        app.run(crate::shutdown::signal()).await
    });
    {
        // Flush the last spans while the runtime that exports them still runs.
        let _in_runtime = rt.enter();
        telemetry.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "sessiongate failed");
            eprintln!("sessiongate: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
