//! The app's state: one `Node` for the app's lifetime, the settings, the network side,
//! pending offers and the transfers this app is working on.
//!
//! Owns: startup (settings → engine → network) and shutdown, the one function behind both
//! a drop and "Choose files…" ([`AppState::offer_paths`]), and the waiter task of each
//! transfer (every task on `tasks`, with a child of `cancel`).
//! Must not: implement transfer logic (that is `skiff-core`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_core::node::{Decision, IncomingOffer, ReceiveOptions, SendOptions};
use skiff_core::settings::Settings;
use skiff_core::{Config, Node};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bridge::Bridge;
use crate::dto::{
    CmdResult, CommandError, EntryDto, ItemDto, LanPeerDto, NetworkDto, OfferDto, ShareDto,
    TransferDto, UiEvent,
};
use crate::lan::LanPeer;
use crate::network::{EmbeddedOptions, Network};

/// How long a receiver keeps reconnecting after the connection drops.
pub const RECONNECT_FOR: Duration = Duration::from_secs(300);
/// Largest page of offer entries one call returns.
pub const MAX_PAGE: usize = 1000;

pub struct AppState {
    pub node: Node,
    pub data_dir: PathBuf,
    pub settings: Mutex<Settings>,
    pub network: tokio::sync::Mutex<Network>,
    pub bridge: Bridge,
    pub offers: Mutex<HashMap<String, IncomingOffer>>,
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
        let (mut settings, damaged) = Settings::load_or_recover(&data_dir);
        if let Some(e) = damaged {
            notices.push(CommandError::from(e));
        }
        if settings.ensure_device_id() {
            if let Err(e) = settings.save(&data_dir) {
                notices.push(CommandError::from(e));
            }
        }
        let mut config = Config::new(Some(data_dir.clone()));
        config.download_dir = settings.effective_download_dir();
        config.device_name = settings.effective_device_name();
        let node = Node::spawn(config).await.context("starting the engine")?;
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let bridge = Bridge::default();
        tasks.spawn(bridge.clone().run(node.events(), cancel.child_token()));
        let mut network = Network::new(tasks.clone(), cancel.clone()).with_embedded(embedded);
        let status = network.apply(&settings, &node).await;
        if let Some(e) = status.error {
            notices.push(CommandError::new("signal", e));
        }
        if let Some(n) = status.note {
            notices.push(CommandError::new("embedded_port", n));
        }
        Ok(Self {
            node,
            data_dir,
            settings: Mutex::new(settings),
            network: tokio::sync::Mutex::new(network),
            bridge,
            offers: Mutex::new(HashMap::new()),
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
        // Fields the UI does not edit are kept.
        new.device_id = old.device_id.clone();
        new.extra = old.extra.clone();
        if new.trusted_peers.is_empty() {
            new.trusted_peers = old.trusted_peers.clone();
        }
        normalise(&mut new);
        new.save(&self.data_dir)?;
        if let Ok(mut s) = self.settings.lock() {
            *s = new.clone();
        }
        Ok(self.network.lock().await.apply(&new, &self.node).await)
    }

    pub async fn set_trusted(&self, device_id: &str, trusted: bool) -> CmdResult<()> {
        let mut s = self.settings();
        s.trusted_peers.retain(|d| d != device_id);
        if trusted {
            s.trusted_peers.push(device_id.to_owned());
        }
        s.save(&self.data_dir)?;
        if let Ok(mut cur) = self.settings.lock() {
            *cur = s.clone();
        }
        self.network.lock().await.apply(&s, &self.node).await;
        Ok(())
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
        let for_items = paths.clone();
        let items = tokio::task::spawn_blocking(move || summarise(&for_items))
            .await
            .map_err(|_| CommandError::new("io", "reading the chosen items failed"))?;
        let opts = SendOptions {
            listen: "0.0.0.0:0".into(),
            // Embedded mode: the code's nameplate is announced on the LAN (`snp=`).
            announce_server: self.network.lock().await.lan_server(),
            ..Default::default()
        };
        let to = peer.clone();
        let started = match peer {
            Some(peer) => {
                let space = self.settings().space.clone();
                self.node.send_to(&peer, space, paths, opts).await?
            }
            None => self.node.send(paths, opts).await?,
        };
        self.watch(&started.id);
        let signal_url = self.network.lock().await.status().url;
        let link = format!("{}{}", skiff_proto::code::LINK_SCHEME, started.code);
        let total_files = items.iter().map(|i| i.files).sum();
        let total_bytes = items.iter().map(|i| i.bytes).sum();
        self.bridge.send(UiEvent::Refresh);
        Ok(ShareDto {
            id: started.id,
            code: started.code,
            link,
            items,
            total_files,
            total_bytes,
            skipped: started
                .skipped
                .into_iter()
                .map(|(p, why)| (p.display().to_string(), why))
                .collect(),
            signal_url,
            to,
        })
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
        let for_items = paths.clone();
        let items = tokio::task::spawn_blocking(move || summarise(&for_items))
            .await
            .map_err(|_| CommandError::new("io", "reading the chosen items failed"))?;
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
        self.watch(&started.id);
        let total_files = items.iter().map(|i| i.files).sum();
        let total_bytes = items.iter().map(|i| i.bytes).sum();
        self.bridge.send(UiEvent::Refresh);
        Ok(ShareDto {
            id: started.id,
            code: started.code,
            link: String::new(),
            items,
            total_files,
            total_bytes,
            skipped: started
                .skipped
                .into_iter()
                .map(|(p, why)| (p.display().to_string(), why))
                .collect(),
            signal_url: Some(url),
            to: Some(peer.name),
        })
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

    pub async fn decide(&self, id: &str, accept: bool, dir: Option<PathBuf>) -> CmdResult<()> {
        let removed = self.offers.lock().ok().and_then(|mut o| o.remove(id));
        if removed.is_none() {
            return Err(CommandError::new(
                "no_such_offer",
                "this offer is no longer waiting",
            ));
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
