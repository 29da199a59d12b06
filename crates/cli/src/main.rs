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
    /// Limit each transfer's bandwidth to RATE bytes per second (e.g. `500K`, `20MB`,
    /// `1.5GiB`; K/M/G are powers of 1000, KiB/MiB/GiB of 1024; at least 64KiB). A sender
    /// paces what it sends, a receiver what it reads; give it to `resume` again.
    #[arg(long, global = true, value_name = "RATE", value_parser = parse_rate)]
    limit_rate: Option<u64>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Offer files or folders; prints the code to give the receiver.
    Send {
        /// Listen for the receiver on this address (direct connection, also the LAN path).
        /// Without --signal, the code is also announced on the LAN (mDNS), so a receiver
        /// on the same network needs no address.
        #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:0")]
        direct: String,
        /// Meet the receiver through this signaling server (`ws://…/ws` or `wss://…/ws`):
        /// the code then works without knowing this computer's address.
        #[arg(long, env = "SKIFF_SIGNAL", value_name = "URL")]
        signal: Option<String>,
        /// Send to this device (its name or id, see `skiff peers`) instead of showing a code;
        /// it must be running `skiff listen` on the same signaling server.
        #[arg(long, value_name = "NAME|ID")]
        to: Option<String>,
        /// Presence space of `--to` (default: the devices behind your public address).
        #[arg(long, value_name = "NAME", requires = "to")]
        space: Option<String>,
        /// Files and folders to send.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Stay online in your space and receive what other devices send with `--to`.
    Listen {
        /// The signaling server (default: `signal_url` in settings.toml).
        #[arg(long, env = "SKIFF_SIGNAL", value_name = "URL")]
        signal: Option<String>,
        /// Presence space (default: the devices behind your public address).
        #[arg(long, value_name = "NAME")]
        space: Option<String>,
        /// Folder to save into (default: your Downloads folder).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Accept every offer without asking.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Pin a device (by name or id) so that later sessions prove it is the same device;
    /// without an argument, list pinned devices.
    Trust {
        /// The device: its id (or 8+ characters of it), or its name if it is online.
        device: Option<String>,
        /// The signaling server, to look a name up among the online devices.
        #[arg(long, env = "SKIFF_SIGNAL", value_name = "URL")]
        signal: Option<String>,
        /// Presence space for the lookup.
        #[arg(long, value_name = "NAME")]
        space: Option<String>,
        /// Unpin the device instead.
        #[arg(long)]
        forget: bool,
    },
    /// Receive with a code (prompted for, or read from SKIFF_CODE, if not given).
    Receive {
        /// The sender's address (direct connection). Without it and without --signal, the
        /// code is found on the LAN (mDNS): its sender, or the Skiff app whose built-in
        /// signaling server holds it.
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
        .with_ansi(std::io::stderr().is_terminal())
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

/// `--limit-rate`: a size per second, not below [`skiff_core::pace::MIN_RATE`].
fn parse_rate(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let rate = parse_size::parse_size(t).map_err(|e| format!("{e} (try 500K, 20MB or 1.5GiB)"))?;
    let min = skiff_core::pace::MIN_RATE;
    if rate < min {
        return Err(format!(
            "{rate} bytes/s is below the lowest limit, {}KiB/s",
            min / 1024
        ));
    }
    Ok(rate)
}

async fn run(cli: Cli, out: &Output) -> Result<bool> {
    if let Cmd::Peers(args) = &cli.command {
        // No engine: listing peers must not lock the data directory.
        return peers::run(args, cli.json).await;
    }
    let mut cli = cli;
    let mut config = Config::new(cli.data_dir.clone());
    config.tcp_paths = !cli.webrtc_only;
    config.max_rate = cli.limit_rate;
    // The settings file the desktop app writes: one source of truth for both.
    let settings = match skiff_core::settings::Settings::load(&config.data_dir) {
        Ok(s) => s,
        Err(e) => {
            out.note(&format!("{e}; using the defaults"));
            skiff_core::settings::Settings::default()
        }
    };
    config.download_dir = settings.effective_download_dir();
    config.device_name = settings.effective_device_name();
    config.rtc.ice_servers = settings
        .ice_servers
        .iter()
        .map(|s| skiff_core::transport::webrtc::IceServer {
            urls: s.urls.clone(),
            username: s.username.clone().unwrap_or_default(),
            credential: s.credential.clone().unwrap_or_default(),
        })
        .collect();
    if let Some(url) = &settings.signal_url {
        match &mut cli.command {
            Cmd::Send { signal, .. } | Cmd::Listen { signal, .. } | Cmd::Trust { signal, .. } => {
                signal.get_or_insert_with(|| url.clone());
            }
            Cmd::Receive { signal, direct, .. } if direct.is_none() => {
                signal.get_or_insert_with(|| url.clone());
            }
            _ => {}
        }
    }
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
            to,
            space,
            paths,
        } => {
            node.set_signal_url(signal.clone()).await?;
            let opts = SendOptions {
                listen: direct,
                ..Default::default()
            };
            let started = match &to {
                Some(peer) => node.send_to(peer, space, paths, opts).await,
                None => node.send(paths, opts).await,
            }
            .context("preparing the offer")?;
            for (path, why) in &started.skipped {
                out.note(&format!(
                    "Skipped {}: {why}",
                    display_escape(&path.display().to_string())
                ));
            }
            if to.is_none() {
                out.show_code(&started.code, &started.listen, signal.as_deref());
            }
            Ok(out.outcome(node.wait(&started.id).await?))
        }
        Cmd::Receive {
            direct,
            signal,
            code,
            dir,
            yes,
        } => {
            let (addr, on_lan) = match (direct, signal) {
                (Some(addr), _) => (addr, false),
                (None, Some(url)) => {
                    node.set_signal_url(Some(url)).await?;
                    (String::new(), false)
                }
                // No address and no server: the engine finds the sender on the LAN.
                (None, None) => (String::new(), true),
            };
            let code = match code.or_else(|| std::env::var("SKIFF_CODE").ok()) {
                Some(c) => c,
                None => read_code()?,
            };
            if on_lan {
                out.note("Looking for the sender on this network…");
            }
            let opts = ReceiveOptions {
                connect: addr,
                dir: dir.clone(),
                auto_accept: yes,
                reconnect_for: Duration::from_secs(300),
                ..Default::default()
            };
            let offer = match node.receive(&code, opts).await {
                Ok(o) => o,
                Err(e) => {
                    if matches!(e, skiff_core::Error::NotOnLan { .. }) {
                        out.note(
                            "Is the sender on this network and still waiting? From another network, \
                             use --direct HOST:PORT or --signal URL on both sides.",
                        );
                    }
                    return Err(e.into());
                }
            };
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
        Cmd::Listen {
            signal,
            space,
            dir,
            yes,
        } => listen(node, config, out, signal, space, dir, yes).await,
        Cmd::Trust {
            device,
            signal,
            space,
            forget,
        } => trust(node, out, device, signal, space, forget).await,
        Cmd::List => {
            out.list(&node.list().await?);
            Ok(true)
        }
        Cmd::Peers(_) => unreachable!("`skiff peers` runs before the engine starts (see `run`)"),
    }
}

async fn listen(
    node: &Node,
    config: &Config,
    out: &Output,
    signal: Option<String>,
    space: Option<String>,
    dir: Option<PathBuf>,
    yes: bool,
) -> Result<bool> {
    if signal.is_none() {
        bail!("give the signaling server with --signal URL (or SKIFF_SIGNAL, or signal_url in settings.toml)");
    }
    node.set_signal_url(signal).await?;
    let mut events = node.events();
    let receive = ReceiveOptions {
        connect: String::new(),
        dir: dir.clone(),
        auto_accept: yes,
        reconnect_for: Duration::from_secs(300),
        ..Default::default()
    };
    node.listen(skiff_core::ListenOptions { space, receive })
        .await
        .context("going online")?;
    // Back online: unfinished outgoing transfers wait at their rendezvous again.
    let resumable = node.resumable().await?;
    for t in node.list().await? {
        if t.direction == "send" && resumable.contains(&t.id) {
            if let Err(e) = node.resume(&t.id, Duration::from_secs(300)).await {
                out.note(&format!("cannot resume {}: {e}", t.id));
            }
        }
    }
    loop {
        let ev = match events.recv().await {
            Ok(ev) => ev,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(_) => return Ok(true),
        };
        if let Some(offer) = skiff_core::IncomingOffer::from_event(ev) {
            if yes {
                continue;
            }
            out.show_offer(&offer, dir.as_ref().unwrap_or(&config.download_dir));
            // The prompt reads the terminal: run it off the runtime.
            let answer = tokio::task::spawn_blocking(|| ask("Accept? [y/N] "))
                .await
                .context("asking")??;
            let decision = if answer {
                Decision::Accept { dir: dir.clone() }
            } else {
                Decision::Decline
            };
            if let Err(e) = node.decide(&offer.id, decision).await {
                out.note(&format!("{e}"));
            }
        }
    }
}

async fn trust(
    node: &Node,
    out: &Output,
    device: Option<String>,
    signal: Option<String>,
    space: Option<String>,
    forget: bool,
) -> Result<bool> {
    let Some(device) = device else {
        out.trusted(&node.trusted().await?);
        return Ok(true);
    };
    if forget {
        let found = node.forget(&device).await?;
        if !found {
            bail!("no pinned device {device}");
        }
        out.note(&format!("Forgot {}", display_escape(&device)));
        return Ok(true);
    }
    // A name is looked up among the online devices; so is an id, for its name (an id
    // that is not online is pinned under a short form of itself).
    let is_id = device.len() == 64 && device.bytes().all(|b| b.is_ascii_hexdigit());
    let peers = match &signal {
        Some(url) => {
            let space = space
                .map(skiff_proto::signal::SpaceName::try_from)
                .transpose()
                .map_err(|e| anyhow::anyhow!(e))?;
            skiff_core::signal::list_peers(url, &config_name(), space).await?
        }
        None if is_id => Vec::new(),
        None => bail!("give --signal URL to look the device up by name"),
    };
    let found: Vec<_> = peers
        .iter()
        .filter(|p| {
            p.device_id.as_str() == device
                || (device.len() >= 8 && p.device_id.as_str().starts_with(&device))
                || (!is_id && p.name.eq_ignore_ascii_case(&device))
        })
        .collect();
    let (id, name) = match found.as_slice() {
        [p] => (p.device_id.as_str().to_owned(), p.name.clone()),
        [] if is_id => (device.clone(), device[..12].to_owned()),
        [] => bail!(
            "no device {} online (see `skiff peers`)",
            display_escape(&device)
        ),
        _ => bail!(
            "several devices match {}: use the id",
            display_escape(&device)
        ),
    };
    node.trust(&id, &name).await?;
    out.note(&format!("Trusted {} (device {id})", display_escape(&name)));
    Ok(true)
}

fn config_name() -> String {
    skiff_core::config::device_name()
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

#[cfg(test)]
mod tests {
    use super::parse_rate;

    #[test]
    fn rates_parse_with_units_and_a_floor() {
        assert_eq!(parse_rate("20MB"), Ok(20_000_000));
        assert_eq!(parse_rate("1.5GiB"), Ok(1_610_612_736));
        assert_eq!(parse_rate("64KiB/s"), Ok(65_536));
        assert_eq!(parse_rate("500K"), Ok(500_000));
        assert!(parse_rate("1K")
            .unwrap_err()
            .contains("below the lowest limit"));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("").is_err());
    }
}
