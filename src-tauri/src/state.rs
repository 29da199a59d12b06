//! The app's state: one `Node` for the app's lifetime, the settings, the network side,
//! pending offers (by code, and requests from other devices to this device's `listen`)
//! and the transfers this app is working on.
//!
//! Owns: startup (settings → engine → network) and shutdown, the one function behind both
//! a drop and "Choose files…" ([`AppState::offer_paths`]), the task that turns the
//! engine's `verify` + `offer` events of a device request into a waiting request for the
//! dialog, trust through the engine (`Node::trust` / `forget`, the CLI's list), and the
//! waiter task of each transfer (every task on `tasks`, with a child of `cancel`).
//! Must not: implement transfer logic (that is `skiff-core`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_core::events::Event;
use skiff_core::node::{Decision, IncomingOffer, ReceiveOptions, SendOptions, SendStarted};
use skiff_core::settings::Settings;
use skiff_core::{Config, Node};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bridge::Bridge;
use crate::dto::{
    CmdResult, CommandError, EntryDto, ItemDto, LanPeerDto, NetworkDto, OfferDto, RequestDto,
    ShareDto, TransferDto, UiEvent,
};
use crate::lan::LanPeer;
use crate::network::{EmbeddedOptions, Network};

/// How long a receiver keeps reconnecting after the connection drops.
pub const RECONNECT_FOR: Duration = Duration::from_secs(300);
/// Largest page of offer entries one call returns.
pub const MAX_PAGE: usize = 1000;
/// Most `verify` events remembered while waiting for their offer (sends from this app
/// have one too, and no offer follows).
const MAX_VERIFIES: usize = 256;

/// Who sends a device request, from its `verify` event.
#[derive(Debug, Clone)]
pub struct Requester {
    pub peer: String,
    pub device: String,
    pub phrase: String,
    pub trusted: bool,
}

pub struct AppState {
    pub node: Node,
    pub data_dir: PathBuf,
    pub settings: Arc<Mutex<Settings>>,
    pub network: tokio::sync::Mutex<Network>,
    pub bridge: Bridge,
    pub offers: Arc<Mutex<HashMap<String, IncomingOffer>>>,
    /// Of `offers`, those that are device requests (not code receives): their sender.
    pub requests: Arc<Mutex<HashMap<String, Requester>>>,
    /// Transfers this app instance started or resumed and that have not ended.
    pub live: Arc<Mutex<HashSet<String>>>,
    /// Problems found at startup (e.g. a damaged settings file), shown once by the UI.
    pub notices: Mutex<Vec<CommandError>>,
    pub cancel: CancellationToken,
    pub tasks: TaskTracker,
}

/// Where state lives: `SKIFF_DATA_DIR`, else the platform default (as for the CLI).
pub fn data_dir_from_env() -> PathBuf {
    std::env::var_os("SKIFF_DATA_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(skiff_core::config::default_data_dir)
}

impl AppState {
    /// Loads the settings, starts the engine and the network side.
    pub async fn start(data_dir: PathBuf) -> anyhow::Result<Self> {
        Self::start_with(data_dir, EmbeddedOptions::from_env()).await
    }

    /// As [`AppState::start`], with the embedded server on `embedded`.
    pub async fn start_with(data_dir: PathBuf, embedded: EmbeddedOptions) -> anyhow::Result<Self> {
        use anyhow::Context;
        skiff_core::config::ensure_private_dir(&data_dir).context("creating the data folder")?;
        let mut notices = Vec::new();
        let (settings, damaged) = Settings::load_or_recover(&data_dir);
        if let Some(e) = damaged {
            notices.push(CommandError::from(e));
        }
        let mut config = Config::new(Some(data_dir.clone()));
        config.download_dir = settings.effective_download_dir();
        config.device_name = settings.effective_device_name();
        let node = Node::spawn(config).await.context("starting the engine")?;
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let bridge = Bridge::default();
        tasks.spawn(bridge.clone().run(node.events(), cancel.child_token()));
        let offers = Arc::new(Mutex::new(HashMap::new()));
        let settings = Arc::new(Mutex::new(settings));
        let requests = Arc::new(Mutex::new(HashMap::new()));
        tasks.spawn(watch_requests(
            node.events(),
            offers.clone(),
            requests.clone(),
            settings.clone(),
            bridge.clone(),
            cancel.child_token(),
        ));
        let mut network =
            Network::new(tasks.clone(), cancel.clone(), &node).with_embedded(embedded);
        let current = settings.lock().map(|s| s.clone()).unwrap_or_default();
        let status = network.apply(&current, &node).await;
        if let Some(e) = status.error {
            notices.push(CommandError::new("signal", e));
        }
        if let Some(n) = status.note {
            notices.push(CommandError::new("embedded_port", n));
        }
        Ok(Self {
            node,
            data_dir,
            settings,
            network: tokio::sync::Mutex::new(network),
            bridge,
            offers,
            requests,
            live: Arc::new(Mutex::new(HashSet::new())),
            notices: Mutex::new(notices),
            cancel,
            tasks,
        })
    }

    /// Stops every transfer (resumable), the network side and all app tasks.
    pub async fn shutdown(&self) {
        self.network.lock().await.shutdown().await;
        self.node.shutdown().await;
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    pub fn settings(&self) -> Settings {
        self.settings.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Validates, saves and applies new settings (no restart needed).
    pub async fn update_settings(&self, mut new: Settings) -> CmdResult<NetworkDto> {
        let old = self.settings();
        // Fields the UI does not edit are kept (`device_id`, `trusted_peers`: unused
        // keys of earlier versions, written back as they were).
        new.device_id = old.device_id.clone();
        new.trusted_peers = old.trusted_peers.clone();
        new.extra = old.extra.clone();
        normalise(&mut new);
        new.save(&self.data_dir)?;
        if let Ok(mut s) = self.settings.lock() {
            *s = new.clone();
        }
        Ok(self.network.lock().await.apply(&new, &self.node).await)
    }

    /// Trust (pin) or forget a device in the engine, the list `skiff trust` shows. A
    /// device is pinned with the name it has in the peer list (or in its waiting request).
    pub async fn set_trusted(&self, device_id: &str, trusted: bool) -> CmdResult<()> {
        let network = self.network.lock().await;
        if trusted {
            let online = network
                .peers
                .borrow()
                .peers
                .iter()
                .find(|p| p.device_id == device_id)
                .map(|p| p.name.clone());
            let requesting = || {
                self.requests.lock().ok().and_then(|r| {
                    r.values()
                        .find(|q| q.device == device_id)
                        .map(|q| q.peer.clone())
                })
            };
            let Some(name) = online.or_else(requesting) else {
                return Err(CommandError::new(
                    "invalid_input",
                    "that device is not online: trust it while it is in the list",
                ));
            };
            self.node.trust(device_id, &name).await?;
        } else {
            self.node.forget(device_id).await?;
        }
        network.refresh_trusted().await;
        Ok(())
    }

    /// Device requests waiting for a decision (for a window that starts or reloads).
    pub fn pending_requests(&self) -> Vec<RequestDto> {
        let download_dir = self.settings().effective_download_dir();
        let (Ok(offers), Ok(requests)) = (self.offers.lock(), self.requests.lock()) else {
            return Vec::new();
        };
        let mut list: Vec<RequestDto> = requests
            .iter()
            .filter_map(|(id, r)| {
                offers
                    .get(id)
                    .map(|o| request_dto(offer_dto(o, &download_dir), r))
            })
            .collect();
        list.sort_by(|a, b| a.offer.id.cmp(&b.offer.id));
        list
    }

    fn mark_live(&self, id: &str) {
        if let Ok(mut l) = self.live.lock() {
            l.insert(id.to_owned());
        }
    }

    pub fn is_live(&self, id: &str) -> bool {
        self.live.lock().map(|l| l.contains(id)).unwrap_or(false)
    }

    /// Marks `id` live and waits for its end in an owned task, then tells the UI.
    fn watch(&self, id: &str) {
        self.mark_live(id);
        let (node, live, bridge, stop) = (
            self.node.clone(),
            self.live.clone(),
            self.bridge.clone(),
            self.cancel.child_token(),
        );
        let id = id.to_owned();
        self.tasks.spawn(async move {
            let outcome = tokio::select! {
                biased;
                () = stop.cancelled() => return,
                o = node.wait(&id) => o,
            };
            if let Ok(mut l) = live.lock() {
                l.remove(&id);
            }
            if let Ok(o) = outcome {
                bridge.send(UiEvent::finished(&id, &o));
            }
        });
    }

    /// The one entry point for "send these": a native drop and "Choose files/folder" both
    /// end here. Starts a send and returns its code.
    pub async fn offer_paths(&self, paths: Vec<PathBuf>) -> CmdResult<ShareDto> {
        self.offer_paths_to(None, paths).await
    }

    /// Like [`AppState::offer_paths`], to one device of the peer list when `peer` is set.
    pub async fn offer_paths_to(
        &self,
        peer: Option<String>,
        paths: Vec<PathBuf>,
    ) -> CmdResult<ShareDto> {
        if paths.is_empty() {
            return Err(CommandError::new("invalid_input", "nothing to send"));
        }
        let items = summarise_off_runtime(&paths).await?;
        let opts = SendOptions {
            listen: "0.0.0.0:0".into(),
            // Embedded mode: the code's nameplate is announced on the LAN (`snp=`).
            announce_server: self.network.lock().await.lan_server(),
            ..Default::default()
        };
        let to = peer.clone();
        let started = match peer {
            Some(peer) => {
                let (space, via_lan) = {
                    let net = self.network.lock().await;
                    let via_lan = net
                        .peers
                        .borrow()
                        .peers
                        .iter()
                        .any(|p| p.lan && p.device_id == peer);
                    (net.space(), via_lan)
                };
                if via_lan {
                    // Another app on the LAN: through its own server.
                    return self.offer_paths_to_lan(&peer, paths).await;
                }
                self.node.send_to(&peer, space, paths, opts).await?
            }
            None => self.node.send(paths, opts).await?,
        };
        let signal_url = self.network.lock().await.status().url;
        let link = format!("{}{}", skiff_proto::code::LINK_SCHEME, started.code);
        Ok(self.shared(started, items, link, signal_url, to))
    }

    /// The Send screen's card of a started send (which is watched from now on).
    fn shared(
        &self,
        started: SendStarted,
        items: Vec<ItemDto>,
        link: String,
        signal_url: Option<String>,
        to: Option<String>,
    ) -> ShareDto {
        self.watch(&started.id);
        self.bridge.send(UiEvent::Refresh);
        ShareDto {
            id: started.id,
            code: started.code,
            link,
            total_files: items.iter().map(|i| i.files).sum(),
            total_bytes: items.iter().map(|i| i.bytes).sum(),
            items,
            skipped: started
                .skipped
                .into_iter()
                .map(|(p, why)| (p.display().to_string(), why))
                .collect(),
            signal_url,
            to,
        }
    }

    /// Other Skiff apps on the LAN (empty unless the embedded server runs on the LAN).
    pub async fn lan_peers(&self) -> Vec<LanPeerDto> {
        let peers = self.network.lock().await.lan_peers.borrow().clone();
        peers
            .into_iter()
            .filter_map(|p| {
                Some(LanPeerDto {
                    url: p.url()?,
                    device_id: p.device_id,
                    name: p.name,
                })
            })
            .collect()
    }

    /// Sends `paths` to the app `device_id` found on the LAN: through its embedded server
    /// (the first of its addresses that answers), in [`skiff_core::lan::LAN_SPACE`], where
    /// a listening app is online. The transfer stores that server's URL, so a resume
    /// meets there again.
    pub async fn offer_paths_to_lan(
        &self,
        device_id: &str,
        paths: Vec<PathBuf>,
    ) -> CmdResult<ShareDto> {
        if paths.is_empty() {
            return Err(CommandError::new("invalid_input", "nothing to send"));
        }
        let peer: Option<LanPeer> = {
            let net = self.network.lock().await;
            let list = net.lan_peers.borrow();
            list.iter().find(|p| p.device_id == device_id).cloned()
        };
        let peer = peer.ok_or_else(|| {
            CommandError::new(
                "invalid_input",
                "that device is no longer seen on this network",
            )
        })?;
        let url = skiff_core::lan::reachable_signal_url(&peer.addrs).await?;
        let items = summarise_off_runtime(&paths).await?;
        let opts = SendOptions {
            listen: "0.0.0.0:0".into(),
            signal: Some(url.clone()),
            ..Default::default()
        };
        let space = Some(skiff_core::lan::LAN_SPACE.to_owned());
        let started = self
            .node
            .send_to(&peer.device_id, space, paths, opts)
            .await?;
        Ok(self.shared(
            started,
            items,
            String::new(),
            Some(url),
            Some(peer.device_id),
        ))
    }

    /// Connects with a code and returns the offer for the user to decide on.
    pub async fn start_receive(&self, code: &str, address: Option<String>) -> CmdResult<OfferDto> {
        let parsed = skiff_proto::code::ShareCode::parse(code)
            .map_err(|e| CommandError::new("bad_code", e.to_string()))?;
        let status = self.network.lock().await.status();
        let connect = match (address.filter(|a| !a.trim().is_empty()), status.url) {
            (Some(a), _) => {
                // A direct address wins over the server for this one transfer.
                a.trim().to_owned()
            }
            (None, Some(_)) => String::new(),
            (None, None) => {
                return Err(CommandError::new(
                    "invalid_input",
                    "no signaling server is set up: enter the sender's address, or turn on the built-in server in Settings",
                ))
            }
        };
        let opts = ReceiveOptions {
            connect,
            dir: Some(self.settings().effective_download_dir()),
            auto_accept: false,
            reconnect_for: RECONNECT_FOR,
            // Embedded mode on the LAN: the code may live on another app's server there.
            find_on_lan: self.network.lock().await.lan_server().is_some(),
            ..Default::default()
        };
        let offer = self.node.receive(&parsed.to_string(), opts).await?;
        let dto = offer_dto(&offer, &self.settings().effective_download_dir());
        if let Ok(mut o) = self.offers.lock() {
            o.insert(offer.id.clone(), offer);
        }
        self.bridge.send(UiEvent::Refresh);
        Ok(dto)
    }

    pub fn offer_entries(&self, id: &str, offset: usize, limit: usize) -> CmdResult<Vec<EntryDto>> {
        let offers = self
            .offers
            .lock()
            .map_err(|_| CommandError::new("io", "offer table unavailable"))?;
        let offer = offers
            .get(id)
            .ok_or_else(|| CommandError::new("no_such_offer", "this offer is no longer waiting"))?;
        Ok(offer
            .entries
            .iter()
            .skip(offset)
            .take(limit.min(MAX_PAGE))
            .map(|e| EntryDto {
                path: e.path.clone(),
                size: e.size,
                dir: e.dir,
            })
            .collect())
    }

    /// Accepts (into `dir`) or declines a waiting offer. `trust` (device requests only,
    /// on accept) pins the sender's key first, as `skiff trust` would.
    pub async fn decide(
        &self,
        id: &str,
        accept: bool,
        dir: Option<PathBuf>,
        trust: bool,
    ) -> CmdResult<()> {
        let removed = self.offers.lock().ok().and_then(|mut o| o.remove(id));
        let requester = self.requests.lock().ok().and_then(|mut r| r.remove(id));
        if removed.is_none() {
            return Err(CommandError::new(
                "no_such_offer",
                "this offer is no longer waiting",
            ));
        }
        if let (true, true, Some(r)) = (accept, trust, &requester) {
            self.node.trust(&r.device, &r.peer).await?;
            self.network.lock().await.refresh_trusted().await;
        }
        let decision = if accept {
            let dir = dir.unwrap_or_else(|| self.settings().effective_download_dir());
            Decision::Accept { dir: Some(dir) }
        } else {
            Decision::Decline
        };
        self.node.decide(id, decision).await?;
        if accept {
            self.watch(id);
        }
        self.bridge.send(UiEvent::Refresh);
        Ok(())
    }

    pub async fn resume(&self, id: &str) -> CmdResult<()> {
        self.node.resume(id, RECONNECT_FOR).await?;
        self.watch(id);
        self.bridge.send(UiEvent::Refresh);
        Ok(())
    }

    pub async fn transfers(&self) -> CmdResult<Vec<TransferDto>> {
        let list = self.node.list().await?;
        Ok(list
            .into_iter()
            .map(|t| {
                let running = self.is_live(&t.id);
                TransferDto::new(t, running)
            })
            .collect())
    }
}

fn normalise(s: &mut Settings) {
    let trim = |v: &mut Option<String>| {
        *v = v
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
    };
    trim(&mut s.signal_url);
    trim(&mut s.device_name);
    trim(&mut s.space);
    for server in &mut s.ice_servers {
        server.urls = server
            .urls
            .iter()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        trim(&mut server.username);
        trim(&mut server.credential);
    }
    s.ice_servers.retain(|i| !i.urls.is_empty());
}

/// Free bytes on the file system holding `dir` (or its nearest existing parent).
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let mut probe = Some(dir);
    while let Some(p) = probe {
        if p.exists() {
            return rustix::fs::statvfs(p)
                .ok()
                .map(|s| s.f_bavail.saturating_mul(s.f_frsize));
        }
        probe = p.parent();
    }
    None
}

fn request_dto(offer: OfferDto, r: &Requester) -> RequestDto {
    RequestDto {
        offer,
        peer: r.peer.clone(),
        device: r.device.clone(),
        phrase: r.phrase.clone(),
        trusted: r.trusted,
    }
}

/// Turns the engine's `verify` + `offer` events of a device request (`Node::listen`) into
/// a waiting offer and a request for the dialog. A code receive has no `verify`; a send
/// of this app to another device has a `verify` and no `offer` (forgotten when it ends).
async fn watch_requests(
    mut events: tokio::sync::broadcast::Receiver<Event>,
    offers: Arc<Mutex<HashMap<String, IncomingOffer>>>,
    requests: Arc<Mutex<HashMap<String, Requester>>>,
    settings: Arc<Mutex<Settings>>,
    bridge: Bridge,
    stop: CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut verified: HashMap<String, Requester> = HashMap::new();
    let mut order: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    loop {
        let event = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            e = events.recv() => match e {
                Ok(e) => e,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!("missed {n} engine events");
                    continue;
                }
                Err(RecvError::Closed) => return,
            },
        };
        match event {
            Event::Verify {
                transfer,
                peer,
                device,
                phrase,
                trusted,
            } => {
                if verified.len() >= MAX_VERIFIES {
                    if let Some(old) = order.pop_front() {
                        verified.remove(&old);
                    }
                }
                order.push_back(transfer.clone());
                verified.insert(
                    transfer,
                    Requester {
                        peer,
                        device,
                        phrase,
                        trusted,
                    },
                );
            }
            ev @ Event::Offer { .. } => {
                let Some(offer) = IncomingOffer::from_event(ev) else {
                    continue;
                };
                let transfer = offer.id.clone();
                let Some(r) = verified.remove(&transfer) else {
                    continue; // a code receive: `start_receive` has it
                };
                order.retain(|t| t != &transfer);
                let download_dir = settings
                    .lock()
                    .map(|s| s.effective_download_dir())
                    .unwrap_or_else(|_| skiff_core::config::default_download_dir());
                let dto = request_dto(offer_dto(&offer, &download_dir), &r);
                if let Ok(mut o) = offers.lock() {
                    o.insert(transfer.clone(), offer);
                }
                if let Ok(mut q) = requests.lock() {
                    q.insert(transfer, r);
                }
                let what = if dto.offer.files == 1 {
                    "1 file".to_owned()
                } else {
                    format!("{} files", dto.offer.files)
                };
                bridge.notify(
                    "Incoming files",
                    &format!(
                        "{} wants to send you {what}",
                        skiff_core::names::display_escape(&dto.peer)
                    ),
                );
                bridge.send(UiEvent::Incoming { request: dto });
            }
            Event::State { transfer, state }
                if matches!(
                    state.as_str(),
                    "completed" | "failed" | "cancelled" | "declined"
                ) =>
            {
                verified.remove(&transfer);
                order.retain(|t| t != &transfer);
                let gone = offers.lock().ok().and_then(|mut o| o.remove(&transfer));
                if let Ok(mut q) = requests.lock() {
                    q.remove(&transfer);
                }
                if gone.is_some() {
                    bridge.send(UiEvent::Refresh);
                }
            }
            _ => {}
        }
    }
}

fn offer_dto(offer: &IncomingOffer, download_dir: &Path) -> OfferDto {
    OfferDto {
        id: offer.id.clone(),
        sender: offer.sender.clone(),
        files: offer.files,
        dirs: offer.dirs,
        total: offer.total,
        entry_count: offer.entries.len(),
        download_dir: download_dir.display().to_string(),
        free_bytes: free_bytes(download_dir),
    }
}

/// Name, size and file count of each chosen item (folders walked without following links).
/// [`summarise`] on a blocking thread (it walks folders).
async fn summarise_off_runtime(paths: &[PathBuf]) -> CmdResult<Vec<ItemDto>> {
    let paths = paths.to_vec();
    tokio::task::spawn_blocking(move || summarise(&paths))
        .await
        .map_err(|_| CommandError::new("io", "reading the chosen items failed"))
}

pub fn summarise(paths: &[PathBuf]) -> Vec<ItemDto> {
    paths
        .iter()
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string());
            let meta = std::fs::symlink_metadata(p);
            let is_dir = meta.as_ref().map(|m| m.is_dir()).unwrap_or(false);
            let (files, bytes) = if is_dir {
                walk_size(p)
            } else {
                match meta {
                    Ok(m) if m.is_file() => (1, m.len()),
                    _ => (0, 0),
                }
            };
            ItemDto {
                name,
                path: p.display().to_string(),
                is_dir,
                files,
                bytes,
            }
        })
        .collect()
}

fn walk_size(root: &Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in rd.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                files += 1;
                bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    (files, bytes)
}
