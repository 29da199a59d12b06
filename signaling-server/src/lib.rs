//! Skiff signaling server: presence per space, nameplates, and relay of opaque blobs.
//!
//! Owns: the `/ws`, `/healthz` and `/metrics` endpoints of `skiff-signal` and every limit
//! of the security guide §2.6; [`run`] serves a bound listener until its shutdown future
//! completes, so tests and the desktop app embed it.
//! Must not: decrypt, parse or log blobs, list peers or nameplates to anyone outside a
//! space, make outbound requests, or depend on anything but `skiff-proto` of Skiff.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod config;
mod conn;
mod error;
mod hub;
mod limits;
pub mod metrics;
mod server;
mod tls;
mod turn;

pub use config::{Cidr, Config, Limits, TurnConfig, MAX_TURN_TTL_SECS};
pub use error::Error;
pub use server::run;
pub use turn::password as turn_password;
