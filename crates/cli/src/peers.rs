//! `skiff peers`: the peers in this machine's signaling space (same public address, or a
//! named space), once or live with `--watch`.
//!
//! Owns: the command's flags and output (text, or one JSON object per line with `--json`);
//! every name from the network is escaped before it is printed.
//! Must not: speak the signaling protocol itself (that is `skiff_core::signal`), or touch
//! the data directory.

use std::collections::HashMap;

use anyhow::{Context, Result};
use skiff_core::names::display_escape;
use skiff_core::signal::{list_peers, Backoff, SignalClient, SignalEvent, SignalOptions};
use skiff_proto::signal::{DeviceId, PeerId, PeerInfo, SpaceName};

/// Flags of `skiff peers`.
#[derive(clap::Args, Debug)]
pub struct PeersArgs {
    /// Signaling server, e.g. `wss://signal.example.org/ws`.
    #[arg(long, env = "SKIFF_SIGNAL", value_name = "URL")]
    pub signal: String,
    /// A named space instead of "everyone behind my public address".
    #[arg(long, value_name = "NAME")]
    pub space: Option<String>,
    /// The name the others see (default: this computer's host name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Stay connected and print peers as they join and leave, until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|s| {
            s.trim()
                .chars()
                .filter(|c| !c.is_control())
                .take(64)
                .collect::<String>()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "skiff".to_owned())
}

fn peer_json(event: &str, p: &PeerInfo) -> serde_json::Value {
    serde_json::json!({
        "event": event, "peer_id": p.peer_id.as_str(), "device_id": p.device_id.as_str(), "name": p.name,
    })
}

fn peer_line(p: &PeerInfo) -> String {
    format!(
        "{}  (device {}, peer {})",
        display_escape(&p.name),
        display_escape(p.device_id.as_str()),
        p.peer_id
    )
}

/// Runs the command; `Ok(true)` on success.
pub async fn run(args: &PeersArgs, json: bool) -> Result<bool> {
    let space = args
        .space
        .clone()
        .map(SpaceName::try_from)
        .transpose()
        .map_err(|reason| anyhow::anyhow!("--space: {reason}"))?;
    let name = args.name.clone().unwrap_or_else(host_name);
    if !args.watch {
        let peers = list_peers(&args.signal, &name, space)
            .await
            .with_context(|| format!("asking {} for peers", args.signal))?;
        if json {
            let list: Vec<_> = peers.iter().map(|p| peer_json("peer", p)).collect();
            println!("{}", serde_json::json!({ "event": "peers", "peers": list }));
        } else if peers.is_empty() {
            println!("No other peers in your space.");
        } else {
            for p in &peers {
                println!("{}", peer_line(p));
            }
        }
        return Ok(true);
    }
    let device_id = DeviceId::try_from(format!("cli-watch-{:016x}", rand_u64()))
        .map_err(|reason| anyhow::anyhow!(reason))?;
    let options = SignalOptions {
        url: args.signal.clone(),
        device_id,
        name,
        space,
        backoff: Backoff::default(),
    };
    let (client, mut events) = SignalClient::spawn(options);
    // Names by peer id, so a departure can say who left.
    let mut names: HashMap<PeerId, String> = HashMap::new();
    let ok = loop {
        let event = tokio::select! {
            _ = tokio::signal::ctrl_c() => break true,
            e = events.recv() => match e {
                Some(e) => e,
                None => break false,
            },
        };
        match &event {
            SignalEvent::Peers { list } => {
                names = list
                    .iter()
                    .map(|p| (p.peer_id.clone(), p.name.clone()))
                    .collect();
            }
            SignalEvent::PeerJoined { peer } => {
                names.insert(peer.peer_id.clone(), peer.name.clone());
            }
            _ => {}
        }
        print_event(&event, json, &names);
        if let SignalEvent::PeerLeft { peer_id } = &event {
            names.remove(peer_id);
        }
        if let SignalEvent::Stopped { .. } = event {
            break false;
        }
    };
    client.shutdown().await;
    Ok(ok)
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

fn print_event(event: &SignalEvent, json: bool, names: &HashMap<PeerId, String>) {
    match event {
        SignalEvent::Connected { peer_id, .. } => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "event": "connected", "peer_id": peer_id.as_str() })
                );
            } else {
                eprintln!("Connected as peer {peer_id}.");
            }
        }
        SignalEvent::Peers { list } => {
            for p in list {
                if json {
                    println!("{}", peer_json("peer", p));
                } else {
                    println!("  {}", peer_line(p));
                }
            }
        }
        SignalEvent::PeerJoined { peer } => {
            if json {
                println!("{}", peer_json("peer_joined", peer));
            } else {
                println!("+ {}", peer_line(peer));
            }
        }
        SignalEvent::PeerLeft { peer_id } => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "event": "peer_left", "peer_id": peer_id.as_str() })
                );
            } else {
                let name = names
                    .get(peer_id)
                    .map_or(String::new(), |n| display_escape(n));
                println!("- {name}  (peer {peer_id})");
            }
        }
        SignalEvent::Disconnected { reason, retry_in } => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "event": "disconnected", "message": reason, "retry_in_ms": retry_in.as_millis() as u64,
                    })
                );
            } else {
                eprintln!(
                    "Disconnected ({}); retrying in {:.1} s.",
                    display_escape(reason),
                    retry_in.as_secs_f64()
                );
            }
        }
        SignalEvent::Stopped { reason } => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "event": "stopped", "message": reason })
                );
            } else {
                eprintln!("Stopped: {}", display_escape(reason));
            }
        }
        _ => {}
    }
}
