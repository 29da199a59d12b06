//! Signaling protocol wire types: the JSON messages between a Skiff client and `skiff-signal`.
//!
//! Owns: the message shapes, the protocol version and its negotiation rule, the size limit
//! and the validated identifiers (peer ids, nameplates, spaces, opaque blobs).
//! Must not: do I/O, hold connection state, or look inside a [`SealedBlob`].
//!
//! Flow (one WebSocket, text frames, one JSON object each, tagged by `type`):
//! - client `hello` → server `welcome` (negotiated version, peer id, ICE servers), then
//!   `peers` (snapshot of the space); later `peer_joined` / `peer_left` for that space.
//! - `allocate` → `allocated`; another client's `claim` → `claimed` to it and
//!   `nameplate_joined` to the allocator; `release` → `released` (the other member gets
//!   `nameplate_left`); an unclaimed nameplate ends with `nameplate_expired`.
//! - `send {to, blob}` → the recipient gets `message {from, blob}`; only within a shared
//!   nameplate or space.
//! - `ping` → `pong`; `refresh_ice` → `ice_servers`; any refusal → `error {code, message}`.
//!
//! Versions: v1, first release. A server answers `hello {version}` with
//! `min(version, SIGNAL_VERSION)` when that is at least [`MIN_SIGNAL_VERSION`], otherwise
//! `error {code: unsupported_version}` and closes.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ProtoError;

/// The newest signaling protocol version this crate speaks. Bump on incompatible changes.
pub const SIGNAL_VERSION: u16 = 1;
/// The oldest version a v1 implementation still accepts.
pub const MIN_SIGNAL_VERSION: u16 = 1;
/// Largest WebSocket message either side accepts (the server closes with 1009 above it).
pub const MAX_SIGNAL_MESSAGE: usize = 64 * 1024;
/// Longest display name, device id or space name, in bytes.
pub const MAX_LABEL_LEN: usize = 64;
/// Longest device id, in bytes.
pub const MAX_DEVICE_ID_LEN: usize = 128;
/// Longest nameplate, in digits.
pub const MAX_NAMEPLATE_DIGITS: usize = 8;

/// WebSocket close codes used by the server (RFC 6455 §7.4.1).
pub mod close {
    /// Normal close (the client asked, or a fatal protocol error was reported first).
    pub const NORMAL: u16 = 1000;
    /// Invalid UTF-8 in a text frame.
    pub const INVALID_DATA: u16 = 1007;
    /// A limit was exceeded (rate, idle, hello deadline, slow reader, replaced).
    pub const POLICY: u16 = 1008;
    /// The message was larger than [`super::MAX_SIGNAL_MESSAGE`].
    pub const TOO_BIG: u16 = 1009;
    /// The server is restarting: reconnect with backoff.
    pub const RESTART: u16 = 1012;
    /// The server is full: reconnect later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// An identifier validated on decode: non-empty, at most `MAX` bytes, no control characters.
fn check_label(s: &str, max: usize, what: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if s.len() > max {
        return Err(format!("{what} is longer than {max} bytes"));
    }
    if s.chars().any(char::is_control) {
        return Err(format!("{what} contains control characters"));
    }
    Ok(())
}

macro_rules! label_type {
    ($(#[$doc:meta])* $name:ident, $max:expr, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The string form.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                check_label(&s, $max, $what)?;
                Ok(Self(s))
            }
        }

        impl TryFrom<&str> for $name {
            type Error = String;
            fn try_from(s: &str) -> Result<Self, String> {
                Self::try_from(s.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

label_type!(
    /// The server's name for one connection, fresh on every connection.
    PeerId, MAX_LABEL_LEN, "peer id"
);
label_type!(
    /// A device's stable id chosen by the client (e.g. its public key in hex).
    DeviceId, MAX_DEVICE_ID_LEN, "device id"
);
label_type!(
    /// A named presence space; without one the server groups peers by public IP.
    SpaceName, MAX_LABEL_LEN, "space name"
);

/// A room number handed out by the server: 1 to 8 decimal digits, no leading zero.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Nameplate(String);

impl Nameplate {
    /// A nameplate from its number (must be ≥ 1 and have at most 8 digits).
    pub fn from_number(n: u32) -> Option<Self> {
        Self::try_from(n.to_string()).ok()
    }

    /// The number.
    pub fn number(&self) -> u32 {
        // Validated on construction: 1–8 digits, so it always fits in a u32.
        self.0.parse().unwrap_or(0)
    }

    /// The string form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Nameplate {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= MAX_NAMEPLATE_DIGITS
            && s.bytes().all(|b| b.is_ascii_digit())
            && !s.starts_with('0');
        if ok {
            Ok(Self(s))
        } else {
            Err("a nameplate is 1 to 8 digits without a leading zero".to_owned())
        }
    }
}

impl From<Nameplate> for String {
    fn from(v: Nameplate) -> String {
        v.0
    }
}

impl fmt::Display for Nameplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// End-to-end encrypted bytes in a printable form (the client chooses, e.g. base64).
/// The server relays it unchanged, never parses it and never logs it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SealedBlob(pub String);

impl fmt::Debug for SealedBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedBlob({} bytes)", self.0.len())
    }
}

/// One entry of a `peers` snapshot or a `peer_joined` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub peer_id: PeerId,
    pub device_id: DeviceId,
    /// Untrusted display name: escape before showing it.
    pub name: String,
}

/// An ICE server for WebRTC (`RTCIceServer`). TURN entries carry ephemeral credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Client → server. The client encodes these and the server decodes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClientMsg {
    /// First message on every connection.
    Hello {
        /// The newest version the client speaks.
        version: u16,
        device_id: DeviceId,
        name: String,
        /// A named space; `None` means "peers behind my public IP".
        #[serde(default)]
        space: Option<SpaceName>,
    },
    /// Ask for a fresh nameplate; the answer is `allocated`.
    Allocate,
    /// Join the nameplate another peer allocated; the answer is `claimed` or an error.
    Claim { nameplate: Nameplate },
    /// Leave a nameplate; when both members have left it is freed.
    Release { nameplate: Nameplate },
    /// Relay an opaque blob to a peer that shares a nameplate or the space.
    Send { to: PeerId, blob: SealedBlob },
    /// Fresh TURN credentials (clients refresh at 80 % of the TTL).
    RefreshIce,
    /// Application-level liveness and latency check; echoed in `pong`.
    Ping {
        #[serde(default)]
        id: u64,
    },
}

/// Server → client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ServerMsg {
    Welcome {
        /// The negotiated protocol version.
        version: u16,
        peer_id: PeerId,
        ice_servers: Vec<IceServer>,
        /// Seconds the TURN credentials stay valid (0 when there are none).
        #[serde(default)]
        ice_ttl_secs: u64,
    },
    /// Every other peer in the space, sent once after `welcome`.
    Peers {
        list: Vec<PeerInfo>,
    },
    PeerJoined {
        peer: PeerInfo,
    },
    PeerLeft {
        peer_id: PeerId,
    },
    Allocated {
        nameplate: Nameplate,
    },
    /// To the claimer: `peer` is the member that allocated the nameplate.
    Claimed {
        nameplate: Nameplate,
        peer: PeerId,
    },
    /// To the allocator: `peer` claimed the nameplate.
    NameplateJoined {
        nameplate: Nameplate,
        peer: PeerId,
    },
    /// The other member released the nameplate or went away.
    NameplateLeft {
        nameplate: Nameplate,
        peer: PeerId,
    },
    Released {
        nameplate: Nameplate,
    },
    /// Nobody claimed the nameplate within its TTL; it is freed.
    NameplateExpired {
        nameplate: Nameplate,
    },
    Message {
        from: PeerId,
        blob: SealedBlob,
    },
    IceServers {
        ice_servers: Vec<IceServer>,
        ice_ttl_secs: u64,
    },
    Pong {
        id: u64,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    /// Sent by a newer server. An older client logs it and carries on.
    #[serde(other)]
    Unknown,
}

/// Stable reason of an `error` message; clients branch on this, never on the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// Not JSON, an unknown `type`, wrong field types, or a binary frame.
    Malformed,
    /// No version in common; the connection is closed.
    UnsupportedVersion,
    /// Anything before `hello`, or a second `hello`.
    HelloFirst,
    /// Unknown, expired or full nameplate (deliberately indistinguishable).
    NameplateUnavailable,
    /// `release` of a nameplate this connection is not in, or a second claim.
    NotInNameplate,
    /// Too many nameplates held by this connection.
    TooManyNameplates,
    /// No such peer in a shared nameplate or space (also: the peer is yourself).
    UnknownPeer,
    /// Message rate exceeded; messages are dropped, and the socket is closed if it goes on.
    RateLimited,
    /// Too many failed claims from this address: claims are refused for a while.
    TooManyAttempts,
    /// The server has no TURN credentials to give.
    NoTurn,
    /// Sent by a newer server; treat as a generic error.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The wire name (`"nameplate_unavailable"`), for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::HelloFirst => "hello_first",
            ErrorCode::NameplateUnavailable => "nameplate_unavailable",
            ErrorCode::NotInNameplate => "not_in_nameplate",
            ErrorCode::TooManyNameplates => "too_many_nameplates",
            ErrorCode::UnknownPeer => "unknown_peer",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManyAttempts => "too_many_attempts",
            ErrorCode::NoTurn => "no_turn",
            ErrorCode::Unknown => "unknown",
        }
    }
}

/// The version both sides use, or `None` when they have none in common.
pub fn negotiate_version(client_version: u16) -> Option<u16> {
    let v = client_version.min(SIGNAL_VERSION);
    (v >= MIN_SIGNAL_VERSION).then_some(v)
}

fn decode<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ProtoError> {
    if text.len() > MAX_SIGNAL_MESSAGE {
        return Err(ProtoError::TooLarge {
            len: text.len(),
            max: MAX_SIGNAL_MESSAGE,
        });
    }
    serde_json::from_str(text).map_err(ProtoError::malformed)
}

impl ClientMsg {
    /// Decodes one text frame. Never panics; any input that is not a valid message is an error.
    pub fn decode(text: &str) -> Result<Self, ProtoError> {
        decode(text)
    }

    /// Encodes as one JSON text frame.
    pub fn encode(&self) -> String {
        // A derived Serialize of strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The `type` tag, for logs and metrics (never the content).
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMsg::Hello { .. } => "hello",
            ClientMsg::Allocate => "allocate",
            ClientMsg::Claim { .. } => "claim",
            ClientMsg::Release { .. } => "release",
            ClientMsg::Send { .. } => "send",
            ClientMsg::RefreshIce => "refresh_ice",
            ClientMsg::Ping { .. } => "ping",
        }
    }
}

impl ServerMsg {
    /// Decodes one text frame; an unknown `type` becomes [`ServerMsg::Unknown`].
    pub fn decode(text: &str) -> Result<Self, ProtoError> {
        decode(text)
    }

    /// Encodes as one JSON text frame.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A shorthand for an `error` message.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMsg::Error {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_picks_the_common_version() {
        assert_eq!(negotiate_version(1), Some(1));
        assert_eq!(negotiate_version(7), Some(SIGNAL_VERSION));
        assert_eq!(negotiate_version(0), None);
    }

    #[test]
    fn nameplates_are_digits_without_leading_zero() {
        assert!(Nameplate::try_from("42".to_owned()).is_ok());
        for bad in ["", "0", "042", "12a", "123456789", "-1", " 1"] {
            assert!(Nameplate::try_from(bad.to_owned()).is_err(), "{bad:?}");
        }
        assert_eq!(Nameplate::from_number(7).map(|n| n.number()), Some(7));
        assert_eq!(Nameplate::from_number(0), None);
    }

    #[test]
    fn blob_debug_hides_the_content() {
        let blob = SealedBlob("c2VjcmV0".to_owned());
        assert_eq!(format!("{blob:?}"), "SealedBlob(8 bytes)");
    }
}
