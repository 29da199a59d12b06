//! The app's network side: the embedded signaling server, keeping this device online
//! with the engine's `Node::listen`, the peer list behind the Peers screen, and which
//! server the Node uses.
//!
//! Owns: starting/stopping the in-process `skiff-signal` (127.0.0.1, a free port); one
//! supervisor task that keeps `Node::listen` running on the server in effect (started
//! again, with backoff, when it fails or the server drops it; restarted when the server,
//! name or space changes); the feed that turns `Node::peers` plus the engine's trusted
//! devices into `PeersDto`; applying the signaling part of the settings live.
//! Must not: open a presence connection of its own (the engine's `listen` is this
//! device's one presence, under its device key), or keep a task that is not on the app's
//! `TaskTracker` with a child token.

use std::collections::HashSet;
use std::time::Duration;

use skiff_core::node::{ListenOptions, Presence, ReceiveOptions, LISTEN_ID};
use skiff_core::settings::Settings;
use skiff_core::Node;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dto::{NetworkDto, PeerDto, PeersDto};
use crate::state::RECONNECT_FOR;

/// A running embedded server.
struct Embedded {
    url: String,
    stop: CancellationToken,
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
}

impl Network {
    /// Starts the peer-list feed (on `tasks`, until `root` is cancelled).
    pub fn new(tasks: TaskTracker, root: CancellationToken, node: &Node) -> Self {
        let view = watch::channel(View::default()).0;
        let trusted = watch::channel(HashSet::new()).0;
        let peers = watch::channel(peers_dto(
            &View::default(),
            &Default::default(),
            &HashSet::new(),
        ))
        .0;
        tasks.spawn(feed_peers(
            node.peers(),
            view.subscribe(),
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
            },
            view,
            trusted,
            peers,
        }
    }

    pub fn status(&self) -> NetworkDto {
        self.status.clone()
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
        };
        self.status.clone()
    }

    async fn start_embedded(&mut self) -> std::io::Result<String> {
        if let Some(e) = &self.embedded {
            return Ok(e.url.clone());
        }
        let port: u16 = std::env::var("SKIFF_EMBEDDED_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let url = format!("ws://{}/ws", listener.local_addr()?);
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
        });
        Ok(url)
    }

    fn stop_embedded(&mut self) {
        if let Some(e) = self.embedded.take() {
            e.stop.cancel();
        }
    }

    /// Keeps `Node::listen` running on `url` with the settings' name and space (stopped
    /// without a server).
    async fn listen_on(&mut self, url: Option<&str>, settings: &Settings, node: &Node) {
        let name = settings.effective_device_name();
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
            space: settings.space.clone(),
        });
        self.refresh_trusted().await;
        let key = url.map(|u| (u.to_owned(), name.clone(), settings.space.clone()));
        if key.is_some() && self.listening.as_ref().map(|l| &l.key) == key.as_ref() {
            return;
        }
        self.stop_listening().await;
        let Some(key) = key else {
            return;
        };
        let opts = ListenOptions {
            space: settings.space.clone(),
            receive: ReceiveOptions {
                connect: String::new(),
                dir: Some(settings.effective_download_dir()),
                // Every request waits for the user's Accept, trusted devices too (as
                // `skiff listen` without `--yes`): trust proves who sends, not consent.
                auto_accept: false,
                reconnect_for: RECONNECT_FOR,
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

/// The built-in server's limits: the production defaults, except the per-address ones.
/// It listens on 127.0.0.1 only, so every client (this app, the CLI, probes) shares one
/// address and a per-address rate would throttle the user's own tools.
fn embedded_config() -> skiff_signal::Config {
    let mut config = skiff_signal::Config::default();
    config.limits.max_sockets_per_ip = 256;
    config.limits.new_connections_per_min = 600.0;
    config.limits.new_connection_burst = 100.0;
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
    mut trusted: watch::Receiver<HashSet<String>>,
    out: watch::Sender<PeersDto>,
    stop: CancellationToken,
) {
    loop {
        let dto = peers_dto(
            &view.borrow_and_update(),
            &engine.borrow_and_update(),
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
            r = trusted.changed() => if r.is_err() { return },
        }
    }
}

fn peers_dto(view: &View, list: &skiff_core::PeerList, trusted: &HashSet<String>) -> PeersDto {
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
            })
            .collect()
    } else {
        Vec::new()
    };
    PeersDto {
        status: status.into(),
        detail,
        space: view.space.clone(),
        me: view.me.clone(),
        me_id: view.me_id.clone(),
        peers,
    }
}
