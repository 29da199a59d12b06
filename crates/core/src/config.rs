//! Where things live: the data directory (state), the download folder, this device's name,
//! and the per-transfer lock that keeps two processes off one transfer.
//!
//! Owns: platform defaults (XDG data dir, the user's Downloads) and 0700/0600 permissions.
//! Must not: read or write transfer state (that is `store`).

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Engine configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// State: the checkpoint database and locks.
    pub data_dir: PathBuf,
    /// Where received files go unless a transfer says otherwise.
    pub download_dir: PathBuf,
    /// Shown to the other side.
    pub device_name: String,
    /// WebRTC settings; `rtc.ice_servers` are the user's STUN/TURN servers (the
    /// signaling server's ephemeral TURN credentials are added per connection).
    pub rtc: crate::transport::webrtc::RtcConfig,
    /// Offer and try direct TCP addresses before WebRTC (on by default; off forces the
    /// WebRTC path, for labs and tests).
    pub tcp_paths: bool,
    /// Bandwidth limit of each transfer, in bytes per second, applied by whichever side
    /// sets it (a sender paces what it sends, a receiver what it reads); `None`: no limit.
    pub max_rate: Option<u64>,
}

impl Config {
    /// Platform defaults, with `data_dir` overridden when given.
    pub fn new(data_dir: Option<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.unwrap_or_else(default_data_dir),
            download_dir: default_download_dir(),
            device_name: device_name(),
            rtc: Default::default(),
            tcp_paths: true,
            max_rate: None,
        }
    }
}

pub fn default_data_dir() -> PathBuf {
    directories::ProjectDirs::from("", "", "skiff")
        .map(|d| d.data_dir().to_owned())
        .unwrap_or_else(|| PathBuf::from(".skiff"))
}

pub fn default_download_dir() -> PathBuf {
    directories::UserDirs::new()
        .and_then(|u| {
            u.download_dir()
                .map(Path::to_owned)
                .or_else(|| Some(u.home_dir().join("Downloads")))
        })
        .unwrap_or_else(|| PathBuf::from("."))
}

pub fn device_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "skiff device".to_owned())
}

/// Creates `dir` (0700) if needed.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    Ok(())
}

/// Best effort: makes an existing file 0600.
pub fn make_private_file(path: &Path) {
    if path.exists() {
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
}

/// An exclusive lock on one transfer, held while a process works on it.
#[derive(Debug)]
pub struct TransferLock {
    _file: File,
}

impl TransferLock {
    pub fn acquire(data_dir: &Path, id: &str) -> Result<Self> {
        let dir = data_dir.join("locks");
        ensure_private_dir(&dir)?;
        let path = dir.join(format!("{id}.lock"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        make_private_file(&path);
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |_| Error::Busy {
                path: data_dir.to_owned(),
            },
        )?;
        Ok(Self { _file: file })
    }
}
