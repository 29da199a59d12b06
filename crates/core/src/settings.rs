//! User settings shared by the desktop app and the CLI: `<data_dir>/settings.toml`.
//!
//! Owns: the settings schema and its defaults, validation of what a user typed, and the
//! file: atomic writes (temp file, fsync, rename, fsync dir) at 0600 in a 0700 dir; keys
//! this version does not know are kept on save; a damaged file is reported and moved aside.
//! Must not: apply settings to a running engine (the app and CLI do that).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{default_download_dir, device_name, ensure_private_dir};
use crate::{Error, Result};

/// File name inside the data directory.
pub const FILE_NAME: &str = "settings.toml";

/// Light, dark, or whatever the system uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Theme {
    #[default]
    System,
    Light,
    Dark,
}

/// A STUN or TURN server (`stun:host:port`, `turn:host:port?transport=tcp`, `turns:…`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct IceServerSetting {
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Everything a user can set. Missing keys take their defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Signaling server (`ws://…/ws` or `wss://…/ws`); `None` uses the built-in one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal_url: Option<String>,
    /// Extra STUN/TURN servers, used besides those the signaling server hands out.
    pub ice_servers: Vec<IceServerSetting>,
    /// Where received files go; `None`: the user's Downloads folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download_dir: Option<PathBuf>,
    /// The name other devices see; `None`: this computer's host name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    /// With no `signal_url`: run a signaling server inside the app.
    pub run_embedded_server: bool,
    pub theme: Theme,
    /// Unused since the app went online with the engine's device key (`device.key`,
    /// `Node::device_id`); still read and written back so that files of earlier versions
    /// load unchanged. Nothing identifies this device by it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// A named space for the peer list; `None`: devices behind the same public address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub space: Option<String>,
    /// Unused: trusted devices are pinned in the engine's store (`Node::trust`, the same
    /// list as `skiff trust`). Still read and written back for files of earlier versions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trusted_peers: Vec<String>,
    /// Keys written by a newer version: kept as they are on save.
    #[serde(skip)]
    pub extra: toml::Table,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            signal_url: None,
            ice_servers: Vec::new(),
            download_dir: None,
            device_name: None,
            run_embedded_server: true,
            theme: Theme::System,
            device_id: None,
            space: None,
            trusted_peers: Vec::new(),
            extra: toml::Table::new(),
        }
    }
}

/// Keys of [`Settings`] in the file, to tell them from unknown ones.
const KNOWN_KEYS: &[&str] = &[
    "signal_url",
    "ice_servers",
    "download_dir",
    "device_name",
    "run_embedded_server",
    "theme",
    "device_id",
    "space",
    "trusted_peers",
];

/// Longest device name accepted.
pub const MAX_DEVICE_NAME: usize = 64;

impl Settings {
    /// Path of the settings file in `data_dir`.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE_NAME)
    }

    /// Parses the file's text.
    pub fn from_toml(text: &str) -> std::result::Result<Self, String> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
        let mut settings: Settings = table
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| e.to_string())?;
        settings.extra = table
            .into_iter()
            .filter(|(k, _)| !KNOWN_KEYS.contains(&k.as_str()))
            .collect();
        Ok(settings)
    }

    /// The file's text: known keys, then the unknown ones kept from loading.
    pub fn to_toml(&self) -> std::result::Result<String, String> {
        let mut table = toml::Table::try_from(self).map_err(|e| e.to_string())?;
        for (k, v) in &self.extra {
            if !KNOWN_KEYS.contains(&k.as_str()) {
                table.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        toml::to_string(&table).map_err(|e| e.to_string())
    }

    /// Loads `<data_dir>/settings.toml`; defaults when it does not exist.
    pub fn load(data_dir: &Path) -> Result<Self> {
        let path = Self::path(data_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(Error::BadSettings {
                    path,
                    reason: "it is not UTF-8 text".into(),
                })
            }
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        Self::from_toml(&text).map_err(|reason| Error::BadSettings { path, reason })
    }

    /// Like [`Settings::load`], but a damaged file is moved aside (`settings.toml.damaged`)
    /// and the defaults are used; the error says where the old file went.
    pub fn load_or_recover(data_dir: &Path) -> (Self, Option<Error>) {
        match Self::load(data_dir) {
            Ok(s) => (s, None),
            Err(Error::BadSettings { path, reason }) => {
                let aside = path.with_extension("toml.damaged");
                let reason = match std::fs::rename(&path, &aside) {
                    Ok(()) => format!("{reason}; it was moved to {}", aside.display()),
                    Err(e) => format!("{reason}; moving it aside failed: {e}"),
                };
                (Self::default(), Some(Error::BadSettings { path, reason }))
            }
            Err(e) => (Self::default(), Some(e)),
        }
    }

    /// Writes `<data_dir>/settings.toml` atomically (0600, in a 0700 directory).
    pub fn save(&self, data_dir: &Path) -> Result<()> {
        self.validate()?;
        ensure_private_dir(data_dir)?;
        let text = self
            .to_toml()
            .map_err(|reason| Error::InvalidInput { reason })?;
        let path = Self::path(data_dir);
        let tmp = data_dir.join(format!(".{FILE_NAME}.{:016x}.tmp", rand::random::<u64>()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(data_dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(format!("writing {}", path.display()), e)
        })
    }

    /// Checks what a user may have typed; the message says what to fix.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::InvalidInput { reason });
        if let Some(url) = &self.signal_url {
            if let Err(reason) = check_signal_url(url) {
                return bad(reason);
            }
        }
        for server in &self.ice_servers {
            if server.urls.is_empty() {
                return bad("a STUN/TURN server needs at least one address".into());
            }
            for url in &server.urls {
                let ok = ["stun:", "turn:", "turns:"]
                    .iter()
                    .any(|p| url.starts_with(p) && url.len() > p.len());
                if !ok {
                    return bad(format!(
                        "\"{url}\" is not a STUN/TURN address; use stun:host:port, turn:host:port or turns:host:port"
                    ));
                }
            }
        }
        if let Some(name) = &self.device_name {
            let name = name.trim();
            if name.is_empty() || name.chars().count() > MAX_DEVICE_NAME {
                return bad(format!(
                    "a device name has 1 to {MAX_DEVICE_NAME} characters"
                ));
            }
            if name.chars().any(char::is_control) {
                return bad("a device name cannot contain control characters".into());
            }
        }
        if let Some(dir) = &self.download_dir {
            if !dir.is_absolute() {
                return bad("the download folder must be a full path".into());
            }
        }
        Ok(())
    }

    /// The download folder in effect.
    pub fn effective_download_dir(&self) -> PathBuf {
        self.download_dir
            .clone()
            .unwrap_or_else(default_download_dir)
    }

    /// The device name in effect.
    pub fn effective_device_name(&self) -> String {
        self.device_name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .unwrap_or_else(device_name)
    }
}

/// Checks the shape of a signaling URL before any network call.
pub fn check_signal_url(url: &str) -> std::result::Result<(), String> {
    let url = url.trim();
    let rest = if let Some(r) = url.strip_prefix("wss://") {
        r
    } else if let Some(r) = url.strip_prefix("ws://") {
        r
    } else if url.starts_with("https://") || url.starts_with("http://") {
        return Err("use a ws:// or wss:// address (for https://…, try wss://…)".into());
    } else {
        return Err("use a ws:// or wss:// address, like wss://signal.example.org/ws".into());
    };
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err("the address has no host name, like wss://signal.example.org/ws".into());
    }
    if host.contains('@') {
        return Err("leave user names and passwords out of the address".into());
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("the address cannot contain spaces or control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn missing_file_gives_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settings::load(dir.path()).unwrap();
        assert_eq!(s, Settings::default());
        assert!(s.run_embedded_server);
        assert_eq!(s.theme, Theme::System);
    }

    #[test]
    fn save_then_load_round_trips_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let s = Settings {
            signal_url: Some("wss://signal.example.org/ws".into()),
            ice_servers: vec![IceServerSetting {
                urls: vec!["turn:turn.example.org:3478".into()],
                username: Some("u".into()),
                credential: Some("p".into()),
            }],
            download_dir: Some("/tmp/dl".into()),
            device_name: Some("Ana's desktop".into()),
            run_embedded_server: false,
            theme: Theme::Dark,
            device_id: Some("dev-1".into()),
            space: Some("home".into()),
            trusted_peers: vec!["dev-2".into()],
            extra: toml::Table::new(),
        };
        s.save(&data).unwrap();
        assert_eq!(Settings::load(&data).unwrap(), s);
        let file = std::fs::metadata(Settings::path(&data)).unwrap();
        assert_eq!(file.permissions().mode() & 0o777, 0o600);
        let d = std::fs::metadata(&data).unwrap();
        assert_eq!(d.permissions().mode() & 0o777, 0o700);
        let leftovers: Vec<_> = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != FILE_NAME)
            .collect();
        assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    }

    #[test]
    fn unknown_keys_survive_a_save() {
        let dir = tempfile::tempdir().unwrap();
        let text = "theme = \"light\"\nfuture_key = 7\n[future_table]\nx = \"y\"\n";
        std::fs::write(Settings::path(dir.path()), text).unwrap();
        let mut s = Settings::load(dir.path()).unwrap();
        assert_eq!(s.theme, Theme::Light);
        s.theme = Theme::Dark;
        s.save(dir.path()).unwrap();
        let raw: toml::Table = std::fs::read_to_string(Settings::path(dir.path()))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(raw["future_key"].as_integer(), Some(7));
        assert_eq!(raw["future_table"]["x"].as_str(), Some("y"));
        assert_eq!(raw["theme"].as_str(), Some("dark"));
    }

    #[test]
    fn damaged_file_is_reported_and_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(Settings::path(dir.path()), "theme = [unterminated").unwrap();
        let err = Settings::load(dir.path()).unwrap_err();
        assert_eq!(err.code(), "bad_settings");
        let (s, err) = Settings::load_or_recover(dir.path());
        assert_eq!(s, Settings::default());
        assert!(err.unwrap().to_string().contains("moved to"));
        assert!(dir.path().join("settings.toml.damaged").exists());
        assert!(!Settings::path(dir.path()).exists());
    }

    #[test]
    fn wrong_types_and_binary_are_damage_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        for bytes in [
            &b"theme = 5"[..],
            b"run_embedded_server = \"yes\"",
            b"\xff\xfe\x00",
        ] {
            std::fs::write(Settings::path(dir.path()), bytes).unwrap();
            assert_eq!(
                Settings::load(dir.path()).unwrap_err().code(),
                "bad_settings"
            );
        }
    }

    #[test]
    fn validate_explains_bad_input() {
        let mut s = Settings {
            signal_url: Some("https://signal.example.org/ws".into()),
            ..Settings::default()
        };
        assert!(s.validate().unwrap_err().to_string().contains("wss://"));
        s.signal_url = Some("wss://user:pw@signal.example.org/ws".into());
        assert!(s.validate().unwrap_err().to_string().contains("passwords"));
        s.signal_url = Some("ws://127.0.0.1:9/ws".into());
        s.validate().unwrap();
        s.ice_servers = vec![IceServerSetting {
            urls: vec!["http://x".into()],
            ..Default::default()
        }];
        assert!(s.validate().unwrap_err().to_string().contains("STUN/TURN"));
        s.ice_servers.clear();
        s.device_name = Some("  ".into());
        assert!(s.validate().is_err());
        s.device_name = Some("laptop".into());
        s.download_dir = Some("relative/dir".into());
        assert!(s.validate().is_err());
        // An invalid value is never written.
        let dir = tempfile::tempdir().unwrap();
        assert!(s.save(dir.path()).is_err());
        assert!(!Settings::path(dir.path()).exists());
    }
}
