//! Integration tests of `skiff-signal` with real WebSocket clients over loopback.

mod client;
mod limits;
mod nameplates;
mod ops;
mod presence;
mod turn;
mod util;
