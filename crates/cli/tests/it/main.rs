//! Integration tests of the `skiff` CLI: two real processes per test, over loopback.

mod errors;
mod resume;
mod security;
mod signaling;
mod transfer;
mod util;
