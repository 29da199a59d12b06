//! The app's network side: the embedded signaling server, the presence connection behind
//! the Peers screen, LAN discovery of other apps, and which server the Node uses.
//!
//! Owns: starting/stopping the in-process `skiff-signal` (on `0.0.0.0`, port
//! [`EMBEDDED_PORT`] or a free one when that is taken; the app itself uses it over
//! `127.0.0.1`), the [`crate::lan`] task while the embedded server is reachable from the
//! LAN, one `SignalClient` for presence, and applying the signaling part of the settings
//! live.
//! Must not: keep a task that is not on the app's `TaskTracker` with a child token.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use skiff_core::settings::Settings;
use skiff_core::signal::{Backoff, SignalClient, SignalEvent, SignalOptions};
use skiff_core::Node;
use skiff_proto::signal::{DeviceId, PeerInfo, SpaceName};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dto::{NetworkDto, PeerDto, PeersDto};
use crate::lan::{Lan, LanPeer};

/// The embedded server's port when it is free (`SKIFF_EMBEDDED_PORT` overrides it): a
/// fixed port, so other machines (and this app after a restart, for a stored transfer's
/// `signal_url`) find the server at the same address.
pub const EMBEDDED_PORT: u16 = 47231;

/// Where the embedded server listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// `0.0.0.0` (reachable from the LAN, announced over mDNS); a loopback address keeps
    /// the server, and LAN discovery, on this machine (`SKIFF_EMBEDDED_HOST`).
    pub host: IpAddr,
    /// The port tried first; when it is taken a free one is used, and the network status
    /// says so.
    pub port: u16,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: EMBEDDED_PORT,
        }
    }
}

impl EmbeddedOptions {
    /// The defaults, with `SKIFF_EMBEDDED_PORT` and `SKIFF_EMBEDDED_HOST` applied (bad
    /// values are ignored).
    pub fn from_env() -> Self {
        let mut o = Self::default();
        if let Some(port) = std::env::var("SKIFF_EMBEDDED_PORT")
            .ok()
            .and_then(|p| p.trim().parse().ok())
        {
            o.port = port;
        }
        if let Some(host) = std::env::var("SKIFF_EMBEDDED_HOST")
            .ok()
            .and_then(|h| h.trim().parse().ok())
        {
            o.host = host;
        }
        o
    }
}

/// Binds the embedded server's listener: `host:port`, else `host` on a free port with a
/// note for the network status (the reason the fixed port could not be used).
pub async fn bind_embedded(
    opts: EmbeddedOptions,
) -> std::io::Result<(tokio::net::TcpListener, Option<String>)> {
    match tokio::net::TcpListener::bind((opts.host, opts.port)).await {
        Ok(l) => Ok((l, None)),
        Err(e) if opts.port != 0 => {
            let l = tokio::net::TcpListener::bind((opts.host, 0)).await?;
            let port = l.local_addr()?.port();
            let note = format!(
                "port {} is not available ({e}), so the built-in server uses port {port}                  this time: other Skiff apps on the LAN still find it, but transfers                  stored with the usual port cannot resume until it is free again",
                opts.port
            );
            tracing::warn!("{note}");
            Ok((l, Some(note)))
        }
        Err(e) => Err(e),
    }
}

/// A running embedded server.
struct Embedded {
    url: String,
    stop: CancellationToken,
    /// What it is bound to (e.g. `0.0.0.0:47231`).
    bound: SocketAddr,
    /// Why it is not on the port asked for.
    note: Option<String>,
}

/// A running presence connection.
struct Presence {
    key: (String, String, Option<String>, String),
    client: SignalClient,
    stop: CancellationToken,
}

/// The network state, behind one async mutex in `AppState`.
pub struct Network {
    tasks: TaskTracker,
    root: CancellationToken,
    embedded: Option<Embedded>,
    presence: Option<Presence>,
    status: NetworkDto,
    /// The latest peer list, for the UI (`peers-changed` events carry it too).
    pub peers: watch::Sender<PeersDto>,
    embedded_opts: EmbeddedOptions,
    lan: Option<Lan>,
    /// Other Skiff apps on the LAN (empty unless the embedded server runs on the LAN).
    pub lan_peers: watch::Sender<Vec<LanPeer>>,
}

impl Network {
    pub fn new(tasks: TaskTracker, root: CancellationToken) -> Self {
        Self {
            tasks,
            root,
            embedded: None,
            presence: None,
            status: NetworkDto {
                mode: "direct".into(),
                url: None,
                error: None,
                note: None,
            },
            peers: watch::channel(PeersDto {
                status: "offline".into(),
                detail: None,
                space: None,
                me: String::new(),
                peers: Vec::new(),
            })
            .0,
            embedded_opts: EmbeddedOptions::from_env(),
            lan: None,
            lan_peers: watch::channel(Vec::new()).0,
        }
    }

    /// Where the embedded server is to listen (instead of [`EmbeddedOptions::from_env`]).
    pub fn with_embedded(mut self, opts: EmbeddedOptions) -> Self {
        self.embedded_opts = opts;
        self
    }

    pub fn status(&self) -> NetworkDto {
        self.status.clone()
    }

    /// Where the running embedded server listens for the LAN, if it does (for announcing
    /// a code's nameplate: `SendOptions::announce_server`).
    pub fn lan_server(&self) -> Option<SocketAddr> {
        self.embedded
            .as_ref()
            .map(|e| e.bound)
            .filter(skiff_core::lan::advertisable)
    }

    /// Starts, restarts or stops LAN discovery: on while the embedded server is in use
    /// and reachable from the LAN.
    async fn lan_for(&mut self, settings: &Settings, node: &Node) {
        let want = match self.lan_server() {
            Some(server) if self.status.mode == "embedded" => match node.device_id().await {
                Ok(device_id) => Some(crate::lan::Me {
                    device_id,
                    name: settings.effective_device_name(),
                    server,
                }),
                Err(e) => {
                    tracing::warn!("no LAN discovery: {e}");
                    None
                }
            },
            _ => None,
        };
        if self.lan.as_ref().map(Lan::me) == want.as_ref() {
            return;
        }
        self.stop_lan();
        if let Some(me) = want {
            self.lan = Some(Lan::start(
                &self.tasks,
                &self.root,
                me,
                self.lan_peers.clone(),
            ));
        }
    }

    fn stop_lan(&mut self) {
        if let Some(l) = self.lan.take() {
            l.stop();
        }
    }

    /// Applies `settings`: starts or stops the embedded server, points the node at the
    /// server in effect and (re)connects presence when the server, name or space changed.
    pub async fn apply(&mut self, settings: &Settings, node: &Node) -> NetworkDto {
        let mut error = None;
        let (mode, url) = match &settings.signal_url {
            Some(url) => {
                self.stop_embedded();
                ("custom", Some(url.clone()))
            }
            None if settings.run_embedded_server => match self.start_embedded().await {
                Ok(url) => ("embedded", Some(url)),
                Err(e) => {
                    error = Some(format!("the built-in server could not start: {e}"));
                    ("direct", None)
                }
            },
            None => {
                self.stop_embedded();
                ("direct", None)
            }
        };
        if let Err(e) = node.set_signal_url(url.clone()).await {
            error = Some(e.to_string());
        }
        self.presence_for(url.as_deref(), settings).await;
        self.status = NetworkDto {
            mode: mode.into(),
            url,
            error,
            note: self.embedded.as_ref().and_then(|e| e.note.clone()),
        };
        self.lan_for(settings, node).await;
        self.status.clone()
    }

    async fn start_embedded(&mut self) -> std::io::Result<String> {
        if let Some(e) = &self.embedded {
            return Ok(e.url.clone());
        }
        let (listener, note) = bind_embedded(self.embedded_opts).await?;
        let bound = listener.local_addr()?;
        // The app itself talks to it over loopback (its own address when bound to one).
        let me = if bound.ip().is_unspecified() {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), bound.port())
        } else {
            bound
        };
        let url = format!("ws://{me}/ws");
        let stop = self.root.child_token();
        let shutdown = stop.clone().cancelled_owned();
        self.tasks.spawn(async move {
            if let Err(e) = skiff_signal::run(listener, embedded_config(), shutdown).await {
                tracing::warn!("embedded signaling server stopped: {e}");
            }
        });
        self.embedded = Some(Embedded {
            url: url.clone(),
            stop,
            bound,
            note,
        });
        Ok(url)
    }

    fn stop_embedded(&mut self) {
        self.stop_lan();
        if let Some(e) = self.embedded.take() {
            e.stop.cancel();
        }
    }

    async fn presence_for(&mut self, url: Option<&str>, settings: &Settings) {
        let name = settings.effective_device_name();
        let device_id = settings.device_id.clone().unwrap_or_default();
        let trusted = settings.trusted_peers.clone();
        let Some(url) = url else {
            self.stop_presence().await;
            self.peers.send_replace(PeersDto {
                status: "offline".into(),
                detail: Some("no signaling server is in use".into()),
                space: settings.space.clone(),
                me: name,
                peers: Vec::new(),
            });
            return;
        };
        let key = (
            url.to_owned(),
            name.clone(),
            settings.space.clone(),
            device_id.clone(),
        );
        if self.presence.as_ref().is_some_and(|p| p.key == key) {
            // Same connection: only the trust marks may have changed.
            self.peers.send_modify(|p| {
                for peer in &mut p.peers {
                    peer.trusted = trusted.contains(&peer.device_id);
                }
            });
            return;
        }
        self.stop_presence().await;
        let space = settings
            .space
            .clone()
            .and_then(|s| SpaceName::try_from(s).ok());
        let Ok(device) = DeviceId::try_from(device_id) else {
            return;
        };
        let options = SignalOptions {
            url: url.to_owned(),
            device_id: device.clone(),
            name: name.clone(),
            space,
            backoff: Backoff::default(),
        };
        let (client, events) = SignalClient::spawn(options);
        let stop = self.root.child_token();
        self.peers.send_replace(PeersDto {
            status: "connecting".into(),
            detail: None,
            space: settings.space.clone(),
            me: name,
            peers: Vec::new(),
        });
        self.tasks.spawn(watch_presence(
            events,
            self.peers.clone(),
            device.as_str().to_owned(),
            trusted,
            stop.clone(),
        ));
        self.presence = Some(Presence { key, client, stop });
    }

    async fn stop_presence(&mut self) {
        if let Some(p) = self.presence.take() {
            p.stop.cancel();
            p.client.shutdown().await;
        }
    }

    /// Stops everything (app exit).
    pub async fn shutdown(&mut self) {
        self.stop_presence().await;
        self.stop_embedded();
    }
}

/// The built-in server's limits: the production defaults (message size and rate, flood
/// close, nameplate lifetime, failed claims per address: a guesser on the LAN is one
/// address), except:
/// - the per-address socket and connection rates: this app, the user's CLI and probes all
///   come from 127.0.0.1, and a per-address rate would throttle the user's own tools;
/// - the server-wide connection cap: it is reachable from the LAN, where a household's
///   devices need a few sockets each, not the public server's ten thousand.
pub fn embedded_config() -> skiff_signal::Config {
    let mut config = skiff_signal::Config::default();
    config.limits.max_sockets_per_ip = 256;
    config.limits.new_connections_per_min = 600.0;
    config.limits.new_connection_burst = 100.0;
    config.limits.max_connections = 1024;
    config
}

/// Keeps the peer list up to date from the presence connection's events.
async fn watch_presence(
    mut events: tokio::sync::mpsc::Receiver<SignalEvent>,
    out: watch::Sender<PeersDto>,
    me: String,
    trusted: Vec<String>,
    stop: CancellationToken,
) {
    let mut peers: BTreeMap<String, PeerInfo> = BTreeMap::new();
    let publish = |peers: &BTreeMap<String, PeerInfo>, status: &str, detail: Option<String>| {
        let mut list: Vec<PeerDto> = peers
            .values()
            .filter(|p| p.device_id.as_str() != me)
            .map(|p| PeerDto {
                peer_id: p.peer_id.to_string(),
                device_id: p.device_id.as_str().to_owned(),
                name: p.name.clone(),
                trusted: trusted.iter().any(|t| t == p.device_id.as_str()),
            })
            .collect();
        list.sort_by_key(|p| p.name.to_lowercase());
        out.send_modify(|p| {
            p.status = status.to_owned();
            p.detail = detail;
            p.peers = list;
        });
    };
    loop {
        let event = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            e = events.recv() => e,
        };
        match event {
            Some(SignalEvent::Connected { .. }) => publish(&peers, "online", None),
            Some(SignalEvent::Peers { list }) => {
                peers = list
                    .into_iter()
                    .map(|p| (p.peer_id.to_string(), p))
                    .collect();
                publish(&peers, "online", None);
            }
            Some(SignalEvent::PeerJoined { peer }) => {
                peers.insert(peer.peer_id.to_string(), peer);
                publish(&peers, "online", None);
            }
            Some(SignalEvent::PeerLeft { peer_id }) => {
                peers.remove(&peer_id.to_string());
                publish(&peers, "online", None);
            }
            Some(SignalEvent::Disconnected { reason, retry_in }) => {
                peers.clear();
                let secs = retry_in.max(Duration::from_secs(1)).as_secs();
                publish(
                    &peers,
                    "connecting",
                    Some(format!("{reason}; trying again in {secs} s")),
                );
            }
            Some(SignalEvent::Stopped { reason }) => {
                peers.clear();
                publish(&peers, "offline", Some(reason));
                return;
            }
            Some(_) => {}
            None => return,
        }
    }
}
