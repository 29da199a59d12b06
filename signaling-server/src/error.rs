//! The one error type of `skiff-signal`'s library.
//!
//! Owns: failures of configuration, TLS setup and the listener.
//! Must not: describe per-connection problems (those are protocol `error` messages and
//! close codes sent to the client, never Rust errors).

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot read {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid configuration file {path}: {reason}")]
    ConfigFile { path: PathBuf, reason: String },
    #[error("invalid configuration: {reason}")]
    Config { reason: String },
    #[error("TLS setup")]
    Tls(#[from] rustls::Error),
    #[error("no certificate or key in {path}")]
    NoPem { path: PathBuf },
    #[error("the listener failed")]
    Listener(#[source] io::Error),
}

impl Error {
    pub(crate) fn config(reason: impl Into<String>) -> Self {
        Error::Config {
            reason: reason.into(),
        }
    }
}
