//! `skiff-signal`: parses flags, environment and the config file, binds, and calls
//! [`skiff_signal::run`] with SIGTERM / Ctrl-C as the shutdown.
//!
//! Must not: contain server logic (that is the library), or print the TURN secret.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use skiff_signal::{Cidr, Config};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// Skiff signaling server: presence, nameplates and relay of end-to-end encrypted blobs.
///
/// Serves the WebSocket at /ws, plus GET /healthz and GET /metrics, on one port.
#[derive(Debug, Parser)]
#[command(name = "skiff-signal", version)]
struct Args {
    /// Address to listen on [default: the config file's `listen`, else 0.0.0.0:8080].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// TOML configuration file (flags win over it).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// coturn `static-auth-secret`: enables ephemeral TURN credentials in `welcome`.
    #[arg(
        long,
        value_name = "SECRET",
        env = "SKIFF_TURN_SECRET",
        hide_env_values = true
    )]
    turn_secret: Option<String>,
    /// STUN/TURN URL handed to clients, e.g. `turn:203.0.113.10:3478?transport=udp` (repeatable).
    #[arg(long = "turn-url", value_name = "URL")]
    turn_urls: Vec<String>,
    /// PEM certificate chain: serve TLS (wss://) directly, with --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Reverse proxy whose X-Forwarded-For is trusted, as an address or CIDR (repeatable).
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    trusted_proxies: Vec<Cidr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => Config::from_file(path).context("loading the configuration")?,
        None => Config::default(),
    };
    if let Some(secret) = args.turn_secret {
        config.turn.secret = Some(secret);
    }
    if !args.turn_urls.is_empty() {
        config.turn.urls = args.turn_urls;
    }
    if args.tls_cert.is_some() {
        config.tls_cert = args.tls_cert;
        config.tls_key = args.tls_key;
    }
    config.trusted_proxies.extend(args.trusted_proxies);
    config.validate().context("checking the configuration")?;
    let listen = args
        .listen
        .or_else(|| config.listen.clone())
        .unwrap_or_else(|| "0.0.0.0:8080".to_owned());
    let listener = TcpListener::bind(&listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    skiff_signal::run(listener, config, shutdown_signal())
        .await
        .context("serving")?;
    Ok(())
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`). The WebSocket library's debug
/// and trace output dumps frame contents, so it never reaches the log, whatever `RUST_LOG` says:
/// logs never contain blobs.
fn init_logging() {
    let wanted = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    // Appended last, these win over any `RUST_LOG` directive for the same targets.
    let spec = format!("{wanted},tungstenite=info,tokio_tungstenite=info");
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Completes on SIGTERM (systemd stop, container stop) or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
