//! The commands the UI calls: each is one call into `AppState` / `skiff-core`.
//!
//! Owns: argument and result shapes of every `#[tauri::command]`, and the wording of
//! Test connection's rows.
//! Must not: hold transfer logic, or return raw strings as errors (always `CommandError`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use skiff_core::settings::{check_signal_url, IceServerSetting, Settings, Theme};
use tauri::ipc::Channel;
use tauri::State;

use crate::dto::{
    CheckRow, CmdResult, CodeCheck, CommandError, EntryDto, LanPeerDto, NetworkDto, OfferDto,
    PeersDto, ProbeDto, RequestDto, ShareDto, TransferDto, UiEvent,
};
use crate::state::AppState;

/// Settings as the UI edits them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SettingsDto {
    pub signal_url: Option<String>,
    pub ice_servers: Vec<IceServerDto>,
    pub download_dir: Option<String>,
    pub device_name: Option<String>,
    pub run_embedded_server: bool,
    pub theme: Theme,
    pub space: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IceServerDto {
    pub url: String,
    pub username: Option<String>,
    pub credential: Option<String>,
}

impl From<&Settings> for SettingsDto {
    fn from(s: &Settings) -> Self {
        Self {
            signal_url: s.signal_url.clone(),
            ice_servers: s
                .ice_servers
                .iter()
                .map(|i| IceServerDto {
                    url: i.urls.join(" "),
                    username: i.username.clone(),
                    credential: i.credential.clone(),
                })
                .collect(),
            download_dir: s.download_dir.as_ref().map(|d| d.display().to_string()),
            device_name: s.device_name.clone(),
            run_embedded_server: s.run_embedded_server,
            theme: s.theme,
            space: s.space.clone(),
        }
    }
}

impl SettingsDto {
    fn into_settings(self, base: Settings) -> Settings {
        Settings {
            signal_url: self.signal_url,
            ice_servers: self
                .ice_servers
                .into_iter()
                .map(|i| IceServerSetting {
                    urls: i.url.split_whitespace().map(str::to_owned).collect(),
                    username: i.username,
                    credential: i.credential,
                })
                .collect(),
            download_dir: self
                .download_dir
                .filter(|d| !d.trim().is_empty())
                .map(PathBuf::from),
            device_name: self.device_name,
            run_embedded_server: self.run_embedded_server,
            theme: self.theme,
            space: self.space,
            ..base
        }
    }
}

/// Everything the UI needs at start.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppInfo {
    pub version: String,
    pub data_dir: String,
    pub settings: SettingsDto,
    pub download_dir: String,
    pub device_name: String,
    pub network: NetworkDto,
    pub notices: Vec<CommandError>,
}

fn info(state: &AppState, network: NetworkDto, notices: Vec<CommandError>) -> AppInfo {
    let s = state.settings();
    AppInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        data_dir: state.data_dir.display().to_string(),
        settings: SettingsDto::from(&s),
        download_dir: s.effective_download_dir().display().to_string(),
        device_name: s.effective_device_name(),
        network,
        notices,
    }
}

#[tauri::command]
pub async fn app_info(state: State<'_, AppState>) -> CmdResult<AppInfo> {
    let network = state.network.lock().await.status();
    let notices = state
        .notices
        .lock()
        .map(|mut n| std::mem::take(&mut *n))
        .unwrap_or_default();
    Ok(info(&state, network, notices))
}

/// The UI's channel for live transfer news.
#[tauri::command]
pub fn subscribe_events(state: State<'_, AppState>, on_event: Channel<UiEvent>) {
    state.bridge.set_channel(on_event);
}

/// "Choose files/folder…" (the native drop handler calls the same `offer_paths`).
#[tauri::command]
pub async fn send_paths(state: State<'_, AppState>, paths: Vec<PathBuf>) -> CmdResult<ShareDto> {
    state.offer_paths(paths).await
}

/// Checks a typed code before any network call.
#[tauri::command]
pub fn check_code(text: String) -> CodeCheck {
    match skiff_proto::code::ShareCode::parse(&text) {
        Ok(c) => CodeCheck {
            valid: true,
            code: Some(c.to_string()),
            message: None,
        },
        Err(e) => CodeCheck {
            valid: false,
            code: None,
            message: Some(match e {
                skiff_proto::ProtoError::BadCode { reason } => reason,
                other => other.to_string(),
            }),
        },
    }
}

#[tauri::command]
pub async fn start_receive(
    state: State<'_, AppState>,
    code: String,
    address: Option<String>,
) -> CmdResult<OfferDto> {
    state.start_receive(&code, address).await
}

#[tauri::command]
pub fn offer_entries(
    state: State<'_, AppState>,
    id: String,
    offset: usize,
    limit: usize,
) -> CmdResult<Vec<EntryDto>> {
    state.offer_entries(&id, offset, limit)
}

/// Accept (into `dir`) or Decline a waiting offer; `trust` (a device request, on accept)
/// also pins the sender's device key.
#[tauri::command]
pub async fn decide_offer(
    state: State<'_, AppState>,
    id: String,
    accept: bool,
    dir: Option<PathBuf>,
    trust: Option<bool>,
) -> CmdResult<()> {
    state.decide(&id, accept, dir, trust.unwrap_or(false)).await
}

/// Requests from other devices that wait for Accept / Decline (also sent as
/// `UiEvent::Incoming` when they arrive).
#[tauri::command]
pub fn pending_requests(state: State<'_, AppState>) -> Vec<RequestDto> {
    state.pending_requests()
}

#[tauri::command]
pub async fn list_transfers(state: State<'_, AppState>) -> CmdResult<Vec<TransferDto>> {
    state.transfers().await
}

#[tauri::command]
pub async fn resume_transfer(state: State<'_, AppState>, id: String) -> CmdResult<()> {
    state.resume(&id).await
}

#[tauri::command]
pub async fn cancel_transfer(state: State<'_, AppState>, id: String) -> CmdResult<()> {
    Ok(state.node.cancel(&id).await?)
}

/// Stops a running transfer keeping its checkpoint (state `paused`; Resume continues it).
#[tauri::command]
pub async fn pause_transfer(state: State<'_, AppState>, id: String) -> CmdResult<()> {
    state.node.pause(&id).await?;
    state.bridge.send(UiEvent::Refresh);
    Ok(())
}

/// Opens a folder in the file manager.
#[tauri::command]
pub async fn open_folder(state: State<'_, AppState>, path: PathBuf) -> CmdResult<()> {
    if !path.is_dir() {
        return Err(CommandError::new(
            "invalid_input",
            format!("{} is not a folder", path.display()),
        ));
    }
    let mut child = std::process::Command::new("xdg-open")
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| CommandError::new("io", format!("opening the file manager: {e}")))?;
    // Reaped on the app's tracker so no zombie is left.
    drop(state.tasks.spawn_blocking(move || child.wait()));
    Ok(())
}

#[tauri::command]
pub fn get_settings(state: State<'_, AppState>) -> SettingsDto {
    SettingsDto::from(&state.settings())
}

/// Saves and applies settings; returns the app info as it is now.
#[tauri::command]
pub async fn save_settings(
    state: State<'_, AppState>,
    settings: SettingsDto,
) -> CmdResult<AppInfo> {
    let new = settings.into_settings(state.settings());
    let network = state.update_settings(new).await?;
    Ok(info(&state, network, Vec::new()))
}

#[tauri::command]
pub fn check_signal_address(url: String) -> Option<String> {
    check_signal_url(&url).err()
}

/// Settings → Test connection.
#[tauri::command]
pub async fn test_connection(url: String) -> ProbeDto {
    probe_rows(url.trim()).await
}

fn sentence(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => {
            let end = if s.ends_with('.') { "" } else { "." };
            format!("{}{}{end}", first.to_uppercase(), c.as_str())
        }
        None => String::new(),
    }
}

/// Runs the probe and words the result as rows.
pub async fn probe_rows(url: &str) -> ProbeDto {
    let row = |level: &str, label: &str, detail: String| CheckRow {
        level: level.into(),
        label: label.into(),
        detail,
        technical: None,
    };
    if let Err(why) = check_signal_url(url) {
        return ProbeDto {
            ok: false,
            url: url.to_owned(),
            rows: vec![row("fail", "Address", sentence(&why))],
            latency_ms: None,
        };
    }
    let host = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or(url)
        .to_owned();
    match skiff_core::signal::probe(url).await {
        Ok(r) => {
            let mut rows = vec![
                row(
                    "ok",
                    "Reachable",
                    format!("{host} answered in {} ms.", r.connect_ms),
                ),
                row(
                    "ok",
                    "Skiff server",
                    format!("Protocol version {} (compatible).", r.version),
                ),
                row(
                    "ok",
                    "Latency",
                    format!("{:.1} ms round trip.", r.latency_ms),
                ),
            ];
            rows.push(if r.turn {
                row(
                    "ok",
                    "Relay credentials",
                    format!("Received for {}.", r.ice_servers.join(", ")),
                )
            } else if !r.ice_servers.is_empty() {
                row(
                    "warn",
                    "Relay credentials",
                    format!(
                        "None: the server offers only {}. Some networks will need a relay.",
                        r.ice_servers.join(", ")
                    ),
                )
            } else {
                row(
                    "warn",
                    "Relay credentials",
                    "None: the server offers no relay (TURN). Direct and local connections still work.".into(),
                )
            });
            ProbeDto {
                ok: true,
                url: url.to_owned(),
                rows,
                latency_ms: Some(r.latency_ms),
            }
        }
        Err(e) => ProbeDto {
            ok: false,
            url: url.to_owned(),
            rows: vec![CheckRow {
                technical: Some(e.to_string()),
                ..row("fail", "Reachable", explain_probe_error(&host, &e))
            }],
            latency_ms: None,
        },
    }
}

fn explain_probe_error(host: &str, e: &skiff_core::Error) -> String {
    let lower = e.to_string().to_lowercase();
    let port = host
        .rsplit_once(':')
        .map(|(_, p)| p)
        .filter(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    if matches!(e, skiff_core::Error::Timeout { .. }) {
        format!(
            "No answer from {host} within 10 s. Check the address and that the server is running."
        )
    } else if lower.contains("refused") {
        match port {
            Some(p) => format!("Nothing answers on port {p} of {host}. Is the server running?"),
            None => format!("{host} refused the connection. Is the server running?"),
        }
    } else if lower.contains("lookup")
        || lower.contains("resolve")
        || lower.contains("name or service")
    {
        format!("Can't find the host {host}. Check the spelling.")
    } else if lower.contains("certificate") || lower.contains("tls") {
        format!("The TLS certificate of {host} is not valid for this name.")
    } else if lower.contains("http") || lower.contains("upgrade") || lower.contains("handshake") {
        format!("{host} answered, but it is not a Skiff signaling server.")
    } else {
        format!("{host} could not be used.")
    }
}

#[tauri::command]
pub async fn get_peers(state: State<'_, AppState>) -> CmdResult<PeersDto> {
    Ok(state.network.lock().await.peers.borrow().clone())
}

/// Trust (pin the key of) or forget a device, in the engine's list (`skiff trust`).
#[tauri::command]
pub async fn set_peer_trust(
    state: State<'_, AppState>,
    device_id: String,
    trusted: bool,
) -> CmdResult<()> {
    state.set_trusted(&device_id, trusted).await
}

/// Other Skiff apps on the LAN (embedded mode), each with its built-in server's address.
#[tauri::command]
pub async fn get_lan_peers(state: State<'_, AppState>) -> CmdResult<Vec<LanPeerDto>> {
    Ok(state.lan_peers().await)
}

/// Sends to another Skiff app on the LAN through its built-in server (no code; the device
/// keys authenticate, as for [`send_to_peer`]).
#[tauri::command]
pub async fn send_to_lan_peer(
    state: State<'_, AppState>,
    device_id: String,
    paths: Vec<PathBuf>,
) -> CmdResult<ShareDto> {
    state.offer_paths_to_lan(&device_id, paths).await
}

/// Sends straight to a device in the peer list (no code; the device keys authenticate).
#[tauri::command]
pub async fn send_to_peer(
    state: State<'_, AppState>,
    device_id: String,
    paths: Vec<PathBuf>,
) -> CmdResult<ShareDto> {
    state.offer_paths_to(Some(device_id), paths).await
}
