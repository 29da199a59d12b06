//! Integration tests of the `skiff` CLI: two real processes per test, over loopback (or,
//! for `lan`, between two network namespaces).

mod errors;
mod lan;
mod resume;
mod security;
mod signaling;
mod transfer;
mod util;
