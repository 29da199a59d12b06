//! skiff-core: the Skiff engine.
//!
//! Owns: transfers end to end — manifests, the crypto session, chunk streaming with
//! per-chunk and per-file SHA-256, crash-safe writes, SQLite checkpoints, resume — behind
//! one [`Node`] handle. Transports plug in through [`transport`].
//! Must not: import any UI framework, or block the async runtime.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod crypto;
pub mod device;
pub mod error;
pub mod events;
pub mod fsx;
pub mod lan;
pub mod names;
pub mod node;
pub mod pace;
pub mod pairing;
pub mod paths;
pub mod recv;
pub mod send;
pub mod session;
pub mod settings;
pub mod signal;
pub mod store;
mod tasks;
pub mod transport;
pub mod walk;

pub use config::Config;
pub use error::{Error, Result};
pub use events::Event;
pub use node::{
    Decision, IncomingOffer, ListenOptions, Node, Outcome, PeerList, Presence, ReceiveOptions,
    SendOptions, SendStarted, TransferInfo, TrustedDevice,
};
