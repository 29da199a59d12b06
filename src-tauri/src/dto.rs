//! What crosses the IPC boundary: camelCase DTOs and the command error.
//!
//! Owns: the conversion of engine types and events into UI types (here and nowhere else),
//! and `CommandError { code, message }`, whose `code` the UI maps to words.
//! Must not: hold logic; names are passed through as data (the UI renders them as text).

use serde::Serialize;
use skiff_core::events::Event;
use skiff_core::node::{Outcome, TransferInfo};

/// A failed command: a stable `code` (the engine's `Error::code`, or one of the app's
/// own: `not_available`, `invalid_input`, `no_such_offer`) and a message for Details.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CommandError {
    pub code: String,
    pub message: String,
}

pub type CmdResult<T> = Result<T, CommandError>;

impl CommandError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

impl From<skiff_core::Error> for CommandError {
    fn from(e: skiff_core::Error) -> Self {
        Self::new(e.code(), e.to_string())
    }
}

/// One item chosen for sending (a top-level file or folder).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ItemDto {
    pub name: String,
    pub path: String,
    pub is_dir: bool,
    pub files: u64,
    pub bytes: u64,
}

/// A send that has its code.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShareDto {
    pub id: String,
    pub code: String,
    pub link: String,
    pub items: Vec<ItemDto>,
    pub total_files: u64,
    pub total_bytes: u64,
    /// Items that could not be read and are not sent: (path, why).
    pub skipped: Vec<(String, String)>,
    /// The signaling server the receiver must use too (`None`: direct).
    pub signal_url: Option<String>,
    /// The device it goes to (a peer-list send, no code needed), if any.
    pub to: Option<String>,
}

/// Result of checking a typed code.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CodeCheck {
    pub valid: bool,
    /// The canonical form (`42-river-olive-kitten`) when valid.
    pub code: Option<String>,
    /// What is wrong, in words, when not.
    pub message: Option<String>,
}

/// One entry of an offer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryDto {
    pub path: String,
    pub size: u64,
    pub dir: bool,
}

/// An incoming offer waiting for Accept / Decline. Entries come in pages.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OfferDto {
    pub id: String,
    pub sender: String,
    pub files: usize,
    pub dirs: usize,
    pub total: u64,
    pub entry_count: usize,
    pub download_dir: String,
    /// Free bytes where the files would go (`None` when unknown).
    pub free_bytes: Option<u64>,
}

/// A peer-list send waiting for this device's decision: the offer, who sends it (as the
/// Noise handshake proved), and the phrase to compare with the sender's screen.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RequestDto {
    pub offer: OfferDto,
    /// The sender's device name (untrusted text).
    pub peer: String,
    /// The sender's device id (its public key, hex).
    pub device: String,
    /// Four words, the same on both screens.
    pub phrase: String,
    /// The sender's key is pinned (`Node::trust`).
    pub trusted: bool,
}

/// A transfer as the Transfers screen lists it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferDto {
    pub id: String,
    pub direction: String,
    pub state: String,
    pub peer_name: String,
    pub path: Option<String>,
    pub files: usize,
    pub total: u64,
    pub held: Option<u64>,
    pub dest: Option<String>,
    pub error: Option<String>,
    pub created: i64,
    /// Whether this app is working on it right now (otherwise an interrupted one needs Resume).
    pub running: bool,
}

impl TransferDto {
    pub fn new(t: TransferInfo, running: bool) -> Self {
        Self {
            id: t.id,
            direction: t.direction.to_owned(),
            state: t.state,
            peer_name: t.peer_name,
            path: t.path,
            files: t.files,
            total: t.total,
            held: t.held,
            dest: t.dest,
            error: t.error,
            created: t.created,
            running,
        }
    }
}

/// Live news about transfers, sent on the UI's channel (progress at most 10 per second
/// per transfer).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum UiEvent {
    #[serde(rename_all = "camelCase")]
    Connected {
        id: String,
        path: String,
        resumed: bool,
    },
    #[serde(rename_all = "camelCase")]
    State { id: String, state: String },
    #[serde(rename_all = "camelCase")]
    Progress {
        id: String,
        bytes: u64,
        total: u64,
        rate: u64,
        eta: Option<u64>,
        files_done: u64,
    },
    #[serde(rename_all = "camelCase")]
    Done {
        id: String,
        path: String,
        files: usize,
    },
    #[serde(rename_all = "camelCase")]
    Error {
        id: Option<String>,
        code: String,
        message: String,
        resumable: bool,
    },
    /// The app stopped working on the transfer (it may still be resumable).
    #[serde(rename_all = "camelCase")]
    Finished {
        id: String,
        ok: bool,
        code: Option<String>,
        message: Option<String>,
        resumable: bool,
    },
    /// A peer-list send: the phrase both screens show, to compare on first contact.
    #[serde(rename_all = "camelCase")]
    Verify {
        id: String,
        peer: String,
        phrase: String,
        trusted: bool,
    },
    /// Another device asks to send files (a peer-list send to this device's `listen`):
    /// the dialog shows it until Accept or Decline (`decide_offer`).
    #[serde(rename_all = "camelCase")]
    Incoming { request: RequestDto },
    /// Something changed that the list should fetch again (e.g. a new transfer).
    Refresh,
}

impl UiEvent {
    /// Maps an engine event; progress and per-file events are handled by the bridge.
    pub fn from_engine(e: &Event) -> Option<Self> {
        Some(match e {
            Event::Connected {
                transfer,
                path,
                resumed,
                ..
            } => UiEvent::Connected {
                id: transfer.clone(),
                path: path.clone(),
                resumed: *resumed,
            },
            Event::State { transfer, state } => UiEvent::State {
                id: transfer.clone(),
                state: state.clone(),
            },
            Event::Done {
                transfer,
                path,
                files,
            } => UiEvent::Done {
                id: transfer.clone(),
                path: path.clone(),
                files: files.len(),
            },
            Event::Error {
                transfer,
                kind,
                message,
                resumable,
            } => UiEvent::Error {
                id: transfer.clone(),
                code: kind.clone(),
                message: message.clone(),
                resumable: *resumable,
            },
            Event::Verify {
                transfer,
                peer,
                phrase,
                trusted,
                ..
            } => UiEvent::Verify {
                id: transfer.clone(),
                peer: peer.clone(),
                phrase: phrase.clone(),
                trusted: *trusted,
            },
            Event::Code { .. } => UiEvent::Refresh,
            _ => return None,
        })
    }

    pub fn finished(id: &str, outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Done { .. } => UiEvent::Finished {
                id: id.to_owned(),
                ok: true,
                code: None,
                message: None,
                resumable: false,
            },
            Outcome::Failed {
                kind,
                message,
                resumable,
            } => UiEvent::Finished {
                id: id.to_owned(),
                ok: false,
                code: Some(kind.clone()),
                message: Some(message.clone()),
                resumable: *resumable,
            },
        }
    }
}

/// A device in the peer list.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PeerDto {
    pub peer_id: String,
    pub device_id: String,
    pub name: String,
    pub trusted: bool,
    /// Another app found on the LAN (mDNS), reached through its own embedded server.
    pub lan: bool,
}

/// The peer list and whether this device is online (`Node::listen`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PeersDto {
    /// `offline` (no server), `connecting`, `online`.
    pub status: String,
    pub detail: Option<String>,
    pub space: Option<String>,
    /// This device's name and id (the engine's device key).
    pub me: String,
    pub me_id: String,
    pub peers: Vec<PeerDto>,
}

/// Which signaling server transfers use now.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkDto {
    /// `embedded` (the app's own server), `custom` (the URL in Settings), `direct` (none).
    pub mode: String,
    pub url: Option<String>,
    pub error: Option<String>,
    /// Not an error, but worth showing: e.g. the built-in server is not on its usual port.
    pub note: Option<String>,
}

/// Another Skiff app on the LAN (its built-in server's address, for sending to it).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LanPeerDto {
    pub device_id: String,
    /// What it calls itself, escaped for display (not authenticated).
    pub name: String,
    /// `ws://ADDR:PORT/ws`.
    pub url: String,
}

/// One row of Test connection.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CheckRow {
    /// `ok`, `warn` or `fail`.
    pub level: String,
    pub label: String,
    pub detail: String,
    /// The engine's own text, for Details.
    pub technical: Option<String>,
}

/// What Test connection found.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProbeDto {
    pub ok: bool,
    pub url: String,
    pub rows: Vec<CheckRow>,
    pub latency_ms: Option<f64>,
}
