//! Skiff wire types: share codes, the direct-connection handshake, peer messages,
//! the manifest and the data-frame layout.
//!
//! Owns: every byte layout that crosses a process boundary, with its version and limits.
//! Must not: do I/O, hold crypto state, or depend on tokio.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod code;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod manifest;
pub mod peer;
pub mod rendezvous;
pub mod signal;

pub use error::ProtoError;

/// Version of the peer protocol (handshake, sealed frames, peer messages).
/// v1: first release.
pub const PEER_VERSION: u16 = 1;
