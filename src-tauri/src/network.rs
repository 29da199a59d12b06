//! The app's network side: the embedded signaling server, the presence connection behind
//! the Peers screen, and which server the Node uses.
//!
//! Owns: starting/stopping the in-process `skiff-signal` (127.0.0.1, a free port), one
//! `SignalClient` for presence, and applying the signaling part of the settings live.
//! Must not: keep a task that is not on the app's `TaskTracker` with a child token.

use std::collections::BTreeMap;
use std::time::Duration;

use skiff_core::settings::Settings;
use skiff_core::signal::{Backoff, SignalClient, SignalEvent, SignalOptions};
use skiff_core::Node;
use skiff_proto::signal::{DeviceId, PeerInfo, SpaceName};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dto::{NetworkDto, PeerDto, PeersDto};

/// A running embedded server.
struct Embedded {
    url: String,
    stop: CancellationToken,
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
            },
            peers: watch::channel(PeersDto {
                status: "offline".into(),
                detail: None,
                space: None,
                me: String::new(),
                peers: Vec::new(),
            })
            .0,
        }
    }

    pub fn status(&self) -> NetworkDto {
        self.status.clone()
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
