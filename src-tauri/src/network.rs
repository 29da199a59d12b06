//! The app's network side: the embedded signaling server, keeping this device online
//! with the engine's `Node::listen`, the peer list behind the Peers screen, LAN discovery
//! of other apps, and which server the Node uses.
//!
//! Owns: starting/stopping the in-process `skiff-signal` (on `0.0.0.0`, port
//! [`EMBEDDED_PORT`] or a free one when that is taken; the app itself uses it over
//! `127.0.0.1`); the [`crate::lan`] task while the embedded server is reachable from the
//! LAN; one supervisor task that keeps `Node::listen` running on the server in effect
//! (started again, with backoff, when it fails or the server drops it; restarted when the
//! server, name or space changes); the feed that turns `Node::peers`, the LAN's apps and
//! the engine's trusted devices into `PeersDto`; applying the signaling part of the
//! settings live.
//! Must not: open a presence connection of its own (the engine's `listen` is this
//! device's one presence, under its device key), or keep a task that is not on the app's
//! `TaskTracker` with a child token.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use skiff_core::node::{ListenOptions, Presence, ReceiveOptions, LISTEN_ID};
use skiff_core::settings::Settings;
use skiff_core::Node;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dto::{NetworkDto, PeerDto, PeersDto};
use crate::lan::{Lan, LanPeer};
use crate::state::RECONNECT_FOR;

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
                "port {} is not available ({e}), so the built-in server uses port {port} \
                 this time: other Skiff apps on the LAN still find it, but transfers \
                 stored with the usual port cannot resume until it is free again",
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

/// What `listen` runs with: (server, device name, space).
type ListenKey = (String, String, Option<String>);

/// The supervisor keeping `Node::listen` running.
struct Listening {
    key: ListenKey,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// What the peer list shows besides the engine's list.
#[derive(Debug, Clone, Default, PartialEq)]
struct View {
    /// A signaling server is in use.
    server: bool,
    me: String,
    me_id: String,
    space: Option<String>,
}

/// The network state, behind one async mutex in `AppState`.
pub struct Network {
    tasks: TaskTracker,
    root: CancellationToken,
    node: Node,
    embedded: Option<Embedded>,
    listening: Option<Listening>,
    status: NetworkDto,
    view: watch::Sender<View>,
    /// Device ids pinned in the engine (`Node::trusted`), for the trust marks.
    trusted: watch::Sender<HashSet<String>>,
    /// The latest peer list, for the UI (`peers-changed` events carry it too).
    pub peers: watch::Sender<PeersDto>,
    embedded_opts: EmbeddedOptions,
    lan: Option<Lan>,
    /// Other Skiff apps on the LAN (empty unless the embedded server runs on the LAN).
    pub lan_peers: watch::Sender<Vec<LanPeer>>,
}

impl Network {
    /// Starts the peer-list feed (on `tasks`, until `root` is cancelled).
    pub fn new(tasks: TaskTracker, root: CancellationToken, node: &Node) -> Self {
        let view = watch::channel(View::default()).0;
        let trusted = watch::channel(HashSet::new()).0;
        let peers = watch::channel(peers_dto(
            &View::default(),
            &Default::default(),
            &[],
            &HashSet::new(),
        ))
        .0;
        let lan_peers = watch::channel(Vec::new()).0;
        tasks.spawn(feed_peers(
            node.peers(),
            view.subscribe(),
            lan_peers.subscribe(),
            trusted.subscribe(),
            peers.clone(),
            root.child_token(),
        ));
        Self {
            tasks,
            root,
            node: node.clone(),
            embedded: None,
            listening: None,
            status: NetworkDto {
                mode: "direct".into(),
                url: None,
                error: None,
                note: None,
            },
            view,
            trusted,
            peers,
            embedded_opts: EmbeddedOptions::from_env(),
            lan: None,
            lan_peers,
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

    /// The presence space this device is online in (see [`listen_space`]); sends to a
    /// peer of the list go there.
    pub fn space(&self) -> Option<String> {
        self.view.borrow().space.clone()
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

    /// Reads the engine's trusted devices again (after a trust or forget).
    pub async fn refresh_trusted(&self) {
        match self.node.trusted().await {
            Ok(list) => {
                let ids = list.into_iter().map(|t| t.device).collect();
                self.trusted.send_if_modified(|cur| {
                    let changed = *cur != ids;
                    *cur = ids;
                    changed
                });
            }
            Err(e) => tracing::warn!("reading the trusted devices: {e}"),
        }
    }

    /// Applies `settings`: starts or stops the embedded server, points the node at the
    /// server in effect and (re)starts listening when the server, name or space changed.
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
        self.listen_on(url.as_deref(), settings, node).await;
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

    /// Keeps `Node::listen` running on `url` with the settings' name and space (stopped
    /// without a server).
    async fn listen_on(&mut self, url: Option<&str>, settings: &Settings, node: &Node) {
        let name = settings.effective_device_name();
        let space = listen_space(
            settings,
            self.embedded.is_some() && settings.signal_url.is_none(),
        );
        // Also the sender name of code sends, with or without a server.
        if let Err(e) = node.set_device_name(&name).await {
            tracing::warn!("setting the device name: {e}");
        }
        let me_id = node.device_id().await.unwrap_or_else(|e| {
            tracing::warn!("reading the device key: {e}");
            String::new()
        });
        self.view.send_replace(View {
            server: url.is_some(),
            me: name.clone(),
            me_id,
            space: space.clone(),
        });
        self.refresh_trusted().await;
        let key = url.map(|u| (u.to_owned(), name.clone(), space.clone()));
        if key.is_some() && self.listening.as_ref().map(|l| &l.key) == key.as_ref() {
            return;
        }
        self.stop_listening().await;
        let Some(key) = key else {
            return;
        };
        let opts = ListenOptions {
            space,
            receive: ReceiveOptions {
                connect: String::new(),
                dir: Some(settings.effective_download_dir()),
                // Every request waits for the user's Accept, trusted devices too (as
                // `skiff listen` without `--yes`): trust proves who sends, not consent.
                auto_accept: false,
                reconnect_for: RECONNECT_FOR,
                ..Default::default()
            },
        };
        let stop = self.root.child_token();
        let task = self
            .tasks
            .spawn(keep_listening(node.clone(), opts, stop.clone()));
        self.listening = Some(Listening { key, stop, task });
    }

    /// Stops the supervisor, then the engine's `listen` (in this order, so that no
    /// `listen` it was starting outlives it).
    async fn stop_listening(&mut self) {
        if let Some(l) = self.listening.take() {
            l.stop.cancel();
            let _ = l.task.await;
            if let Err(e) = self.node.stop_listening().await {
                tracing::warn!("stopping listen: {e}");
            }
        }
    }

    /// Stops everything (app exit).
    pub async fn shutdown(&mut self) {
        self.stop_listening().await;
        self.stop_embedded();
    }
}

/// The presence space this device is online in: the one set in Settings, else, on the
/// embedded server, [`skiff_core::lan::LAN_SPACE`] (its clients come from many LAN
/// addresses, so "behind one public address" would split them), else the server's default.
pub fn listen_space(settings: &Settings, embedded: bool) -> Option<String> {
    settings
        .space
        .clone()
        .or_else(|| embedded.then(|| skiff_core::lan::LAN_SPACE.to_owned()))
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

/// Longest wait between two attempts to go online.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Runs `Node::listen` until `stop`: again after it fails to start or ends (server gone
/// for good, this device's connection replaced), after 1, 2, 4 … 30 s.
async fn keep_listening(node: Node, opts: ListenOptions, stop: CancellationToken) {
    let mut failures = 0u32;
    loop {
        let started = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            r = node.listen(opts.clone()) => r,
        };
        match started {
            Ok(()) => {
                failures = 0;
                tokio::select! {
                    biased;
                    () = stop.cancelled() => return,
                    _ = node.wait(LISTEN_ID) => {}
                }
            }
            Err(e) => tracing::info!("going online failed: {e}"),
        }
        failures = failures.saturating_add(1);
        let delay = Duration::from_secs(1 << failures.min(5)).min(MAX_RETRY);
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Keeps `out` (the UI's peer list) in step with the engine's list, the trusted devices
/// and the view (server, own name, space).
async fn feed_peers(
    mut engine: watch::Receiver<skiff_core::PeerList>,
    mut view: watch::Receiver<View>,
    mut lan: watch::Receiver<Vec<LanPeer>>,
    mut trusted: watch::Receiver<HashSet<String>>,
    out: watch::Sender<PeersDto>,
    stop: CancellationToken,
) {
    loop {
        let dto = peers_dto(
            &view.borrow_and_update(),
            &engine.borrow_and_update(),
            &lan.borrow_and_update(),
            &trusted.borrow_and_update(),
        );
        out.send_if_modified(|cur| {
            let changed = *cur != dto;
            *cur = dto;
            changed
        });
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            r = engine.changed() => if r.is_err() { return },
            r = view.changed() => if r.is_err() { return },
            r = lan.changed() => if r.is_err() { return },
            r = trusted.changed() => if r.is_err() { return },
        }
    }
}

/// The engine's list (this server's space), then the LAN's other apps not already in it.
fn peers_dto(
    view: &View,
    list: &skiff_core::PeerList,
    lan: &[LanPeer],
    trusted: &HashSet<String>,
) -> PeersDto {
    let (status, detail) = if !view.server {
        ("offline", Some("no signaling server is in use".to_owned()))
    } else {
        let status = match list.presence {
            Presence::Online => "online",
            Presence::Connecting => "connecting",
            Presence::Offline => "offline",
        };
        (status, list.detail.clone())
    };
    let peers = if view.server {
        list.peers
            .iter()
            .map(|p| PeerDto {
                peer_id: p.peer_id.to_string(),
                device_id: p.device_id.as_str().to_owned(),
                name: p.name.clone(),
                trusted: trusted.contains(p.device_id.as_str()),
                lan: false,
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut peers: Vec<PeerDto> = peers;
    for p in lan {
        if !peers.iter().any(|q| q.device_id == p.device_id) {
            peers.push(PeerDto {
                peer_id: format!("lan-{}", p.device_id),
                device_id: p.device_id.clone(),
                name: p.name.clone(),
                trusted: trusted.contains(&p.device_id),
                lan: true,
            });
        }
    }
    PeersDto {
        status: status.into(),
        detail,
        space: view.space.clone(),
        me: view.me.clone(),
        me_id: view.me_id.clone(),
        peers,
    }
}
