//! `skiff`: send files of any size straight from one computer to another.
//!
//! A thin shell over `skiff-core`: parses flags, shows progress (human output on stderr,
//! or one JSON event per line on stdout with `--json`), asks before accepting.
//! Must not: implement transfer logic (that is the engine's).

mod output;
mod peers;

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use skiff_core::names::display_escape;
use skiff_core::{Config, Decision, Node, Outcome, ReceiveOptions, SendOptions};

use output::Output;

/// Send files of any size straight from one computer to another, encrypted and verified.
#[derive(Parser, Debug)]
#[command(name = "skiff", version, propagate_version = true)]
struct Cli {
    /// Where state (checkpoints) lives; several instances can run with different dirs.
    #[arg(long, global = true, env = "SKIFF_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Print one JSON object per line on stdout instead of human output.
    #[arg(long, global = true)]
    json: bool,
    /// With a signaling server: neither offer nor try direct TCP addresses, so the data
    /// takes the WebRTC path (or the TURN relay). For labs and testing.
    #[arg(long, global = true)]
    webrtc_only: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Offer files or folders; prints the code to give the receiver.
    Send {
        /// Listen for the receiver on this address (direct connection, also the LAN path).
        #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:0")]
        direct: String,
        /// Meet the receiver through this signaling server (`ws://…/ws` or `wss://…/ws`):
        /// the code then works without knowing this computer's address.
        #[arg(long, env = "SKIFF_SIGNAL", value_name = "URL")]
        signal: Option<String>,
        /// Files and folders to send.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Receive with a code (prompted for, or read from SKIFF_CODE, if not given).
    Receive {
        /// The sender's address (direct connection).
        #[arg(long, value_name = "ADDR", conflicts_with = "signal")]
        direct: Option<String>,
        /// Meet the sender through this signaling server (the one the sender used).
        #[arg(long, env = "SKIFF_SIGNAL", value_name = "URL")]
        signal: Option<String>,
        /// The code from the sender. Visible to other local users in the process list:
        /// prefer the prompt or SKIFF_CODE.
        code: Option<String>,
        /// Folder to save into (default: your Downloads folder).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Accept the offer without asking.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Continue interrupted transfers from their checkpoints (all of them without an ID).
    Resume {
        id: Option<String>,
        /// How long to keep trying to reach the other side, in seconds.
        #[arg(long, default_value_t = 300)]
        wait: u64,
    },
    /// List transfers in the data directory.
    List,
    /// List the peers in your signaling space (same public address, or --space).
    Peers(peers::PeersArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("SKIFF_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    let out = Output::new(cli.json);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            out.fatal(&anyhow::anyhow!(e).context("starting the runtime"));
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli, &out)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            out.fatal(&e);
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, out: &Output) -> Result<bool> {
    if let Cmd::Peers(args) = &cli.command {
        // No engine: listing peers must not lock the data directory.
        return peers::run(args, cli.json).await;
    }
    let mut config = Config::new(cli.data_dir.clone());
    config.tcp_paths = !cli.webrtc_only;
    let node = Node::spawn(config.clone())
        .await
        .context("starting the engine")?;
    let printer = out.spawn_printer(node.events());
    let result = tokio::select! {
        r = command(cli.command, &node, &config, out) => r,
        _ = tokio::signal::ctrl_c() => {
            out.note("Stopped. Run `skiff resume` to continue later.");
            Ok(false)
        }
    };
    node.shutdown().await;
    drop(node); // closes the event stream, which ends the printer
    printer.finish().await;
    result
}

async fn command(cmd: Cmd, node: &Node, config: &Config, out: &Output) -> Result<bool> {
    match cmd {
        Cmd::Send {
            direct,
            signal,
            paths,
        } => {
            node.set_signal_url(signal.clone()).await?;
            let started = node
                .send(paths, SendOptions { listen: direct })
                .await
                .context("preparing the offer")?;
            for (path, why) in &started.skipped {
                out.note(&format!(
                    "Skipped {}: {why}",
                    display_escape(&path.display().to_string())
                ));
            }
            out.show_code(&started.code, &started.listen, signal.as_deref());
            Ok(out.outcome(node.wait(&started.id).await?))
        }
        Cmd::Receive {
            direct,
            signal,
            code,
            dir,
            yes,
        } => {
            let addr = match (direct, signal) {
                (Some(addr), _) => addr,
                (None, Some(url)) => {
                    node.set_signal_url(Some(url)).await?;
                    String::new()
                }
                (None, None) => bail!(
                    "give the signaling server with --signal URL (or SKIFF_SIGNAL), or the sender's address with --direct HOST:PORT"
                ),
            };
            let code = match code.or_else(|| std::env::var("SKIFF_CODE").ok()) {
                Some(c) => c,
                None => read_code()?,
            };
            let opts = ReceiveOptions {
                connect: addr,
                dir: dir.clone(),
                auto_accept: yes,
                reconnect_for: Duration::from_secs(300),
            };
            let offer = node.receive(&code, opts).await?;
            if !yes {
                out.show_offer(&offer, dir.as_ref().unwrap_or(&config.download_dir));
                let decision = if ask("Accept? [y/N] ")? {
                    Decision::Accept { dir }
                } else {
                    Decision::Decline
                };
                node.decide(&offer.id, decision).await?;
            }
            Ok(out.outcome(node.wait(&offer.id).await?))
        }
        Cmd::Resume { id, wait } => {
            let window = Duration::from_secs(wait);
            let ids = match id {
                Some(id) => vec![id],
                None => node.resumable().await?,
            };
            if ids.is_empty() {
                out.note("Nothing to resume.");
                return Ok(true);
            }
            for id in &ids {
                node.resume(id, window)
                    .await
                    .with_context(|| format!("resuming {id}"))?;
            }
            let mut ok = true;
            for id in &ids {
                ok &= out.outcome(node.wait(id).await?);
            }
            Ok(ok)
        }
        Cmd::List => {
            out.list(&node.list().await?);
            Ok(true)
        }
        Cmd::Peers(_) => unreachable!("`skiff peers` runs before the engine starts (see `run`)"),
    }
}

fn read_code() -> Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Enter the code: ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("reading the code")?;
    let code = line.trim().to_owned();
    if code.is_empty() {
        bail!("no code given");
    }
    Ok(code)
}

fn ask(prompt: &str) -> Result<bool> {
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    // Prefer the terminal, so a code piped on stdin does not answer the question.
    match std::fs::File::open("/dev/tty") {
        Ok(tty) => {
            std::io::BufReader::new(tty)
                .read_line(&mut line)
                .context("reading the answer")?;
        }
        Err(_) => {
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the answer")?;
        }
    }
    Ok(matches!(line.trim().to_lowercase().as_str(), "y" | "yes"))
}

impl Output {
    fn outcome(&self, o: Outcome) -> bool {
        match o {
            Outcome::Done { .. } => true,
            Outcome::Failed { .. } => false,
        }
    }
}
