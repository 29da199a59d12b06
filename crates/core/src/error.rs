//! The one error type of `skiff-core`.
//!
//! Owns: every failure the engine can report, worded for the user, each with a stable
//! [`Error::code`] that the CLI's `--json` output and the desktop UI branch on.
//! Must not: carry preformatted strings where a field will do, or repeat a wrapped
//! source's text in its own message.

use std::io;
use std::path::PathBuf;

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("peer verification failed (code mismatch): the code is wrong, or someone interfered")]
    CodeMismatch,
    /// The peer, or something between us, failed an authenticity check outside the PAKE
    /// (resume keys, a DTLS certificate that is not the one the sealed offer named).
    #[error("peer verification failed: {reason}")]
    PeerVerification { reason: String },
    #[error("not a valid code: {reason}")]
    BadCode { reason: String },
    #[error("no transfer is waiting for this code: it may have expired or been used already")]
    UnknownCode,
    #[error("protocol error: {reason}")]
    Protocol { reason: String },
    #[error("frame out of order or replayed (expected #{expected}, got #{got})")]
    Replay { expected: u64, got: u64 },
    #[error("frame of {len} bytes is larger than the limit of {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error(
        "peer verification failed: a sealed frame did not authenticate (tampered or corrupted)"
    )]
    Decrypt,
    #[error("offer refused: {reason}")]
    BadOffer { reason: String },
    #[error("offer refused: unsafe path {path:?}: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("offer too large: {reason}")]
    OfferTooLarge { reason: String },
    #[error("not enough disk space: needs {needed} bytes, {free} free")]
    NoSpace { needed: u64, free: u64 },
    #[error("the disk is full while writing {path}")]
    DiskFull { path: PathBuf },
    #[error("source file changed since the transfer started: {path}")]
    SourceChanged { path: String },
    #[error("sender data corrupt: {path} failed verification {tries} times")]
    CorruptData { path: String, tries: u32 },
    #[error("{path} did not match the sender's digest; it will be fetched again")]
    Verification { path: String },
    #[error("the peer reported an error ({kind}): {message}")]
    Remote { kind: String, message: String },
    #[error("the receiver declined the transfer")]
    Declined,
    #[error("the transfer was cancelled")]
    Cancelled,
    #[error("stopped; the transfer can be resumed")]
    Interrupted,
    #[error("no transfer with id {id}")]
    UnknownTransfer { id: String },
    #[error("the transfer {id} is already finished")]
    AlreadyFinished { id: String },
    #[error("the connection to the peer was lost")]
    ConnectionClosed,
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("checkpoint store")]
    Store(#[from] rusqlite::Error),
    #[error("cannot write to {path}")]
    NotWritable { path: PathBuf },
    #[error("timed out {what}")]
    Timeout { what: &'static str },
    #[error("another skiff process is using the data directory {path}")]
    Busy { path: PathBuf },
    #[error("invalid input: {reason}")]
    InvalidInput { reason: String },
    #[error("the node has stopped")]
    NodeStopped,
    #[error("signaling server: {reason}")]
    Signal { reason: String },
    /// An error response from a TURN server (`what`: "allocation", "permission", …).
    #[error("TURN server refused the {what}: {code} {reason}")]
    TurnRefused {
        what: &'static str,
        code: u16,
        reason: String,
    },
    #[error("no sender with code {nameplate} found on this network")]
    NotOnLan { nameplate: String },
    #[error("LAN discovery: {reason}")]
    Lan { reason: String },
    #[error("the settings file {path} is damaged: {reason}")]
    BadSettings { path: PathBuf, reason: String },
}

impl Error {
    /// A stable machine-readable name for the variant (`--json` `kind`, UI messages).
    pub fn code(&self) -> &'static str {
        match self {
            Error::CodeMismatch => "code_mismatch",
            Error::PeerVerification { .. } => "peer_verification_failed",
            Error::BadCode { .. } => "bad_code",
            Error::UnknownCode => "unknown_code",
            Error::Protocol { .. } => "protocol",
            Error::Replay { .. } => "replay",
            Error::FrameTooLarge { .. } => "frame_too_large",
            Error::Decrypt => "decrypt",
            Error::BadOffer { .. } => "bad_offer",
            Error::BadPath { .. } => "bad_path",
            Error::OfferTooLarge { .. } => "offer_too_large",
            Error::NoSpace { .. } | Error::DiskFull { .. } => "disk_full",
            Error::SourceChanged { .. } => "source_changed",
            Error::CorruptData { .. } => "sender_data_corrupt",
            Error::Verification { .. } => "verification_failed",
            Error::Remote { .. } => "remote",
            Error::Declined => "declined",
            Error::Cancelled => "cancelled",
            Error::Interrupted => "interrupted",
            Error::UnknownTransfer { .. } => "unknown_transfer",
            Error::AlreadyFinished { .. } => "already_finished",
            Error::ConnectionClosed => "connection_closed",
            Error::Io { .. } => "io",
            Error::Store(_) => "store",
            Error::NotWritable { .. } => "not_writable",
            Error::Timeout { .. } => "timeout",
            Error::Busy { .. } => "busy",
            Error::InvalidInput { .. } => "invalid_input",
            Error::NodeStopped => "node_stopped",
            Error::Signal { .. } => "signal",
            Error::TurnRefused { .. } => "turn_refused",
            Error::NotOnLan { .. } => "not_on_lan",
            Error::Lan { .. } => "lan",
            Error::BadSettings { .. } => "bad_settings",
        }
    }

    /// Whether the transfer can continue later from its checkpoint after this error.
    pub fn is_resumable(&self) -> bool {
        matches!(
            self,
            Error::ConnectionClosed
                | Error::Interrupted
                | Error::Timeout { .. }
                | Error::DiskFull { .. }
                | Error::Verification { .. }
                | Error::NoSpace { .. }
                | Error::Io { .. }
                | Error::Replay { .. }
                | Error::Decrypt
                | Error::Protocol { .. }
                | Error::FrameTooLarge { .. }
        )
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            return Error::DiskFull {
                path: PathBuf::from(context.into()),
            };
        }
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn protocol(reason: impl Into<String>) -> Self {
        Error::Protocol {
            reason: reason.into(),
        }
    }
}
