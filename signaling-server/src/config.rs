//! Server configuration: defaults, the TOML file format and validation.
//!
//! Owns: every tunable number (the defaults are those of the security guide §2.6), the
//! trusted-proxy and metrics address lists, TLS and TURN settings.
//! Must not: read the environment or parse flags (that is `main.rs`), or touch sockets.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::Error;

/// Longest TURN credential lifetime the server will mint (coturn REST API, guide §2.5).
pub const MAX_TURN_TTL_SECS: u64 = 3600;
/// Longest time a nameplate may wait for its second member.
pub const MAX_NAMEPLATE_TTL_SECS: f64 = 24.0 * 3600.0;

/// Everything `run` needs. `Config::default()` is a safe production setup without TLS/TURN.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on (used by the binary; `run` takes a bound listener).
    pub listen: Option<String>,
    /// PEM certificate chain and private key; both set means the port speaks TLS only.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Reverse proxies whose `X-Forwarded-For` is believed (CIDRs or addresses).
    pub trusted_proxies: Vec<Cidr>,
    /// Who may read `/metrics` (CIDRs or addresses); empty means everybody.
    pub metrics_allow: Vec<Cidr>,
    pub turn: TurnConfig,
    pub limits: Limits,
}

/// coturn REST API credentials (`use-auth-secret` / `static-auth-secret`).
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TurnConfig {
    pub secret: Option<String>,
    /// `turn:`, `turns:` and `stun:` URLs handed to clients.
    pub urls: Vec<String>,
    /// Credential lifetime, at most one hour.
    pub ttl_secs: u64,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            secret: None,
            urls: Vec::new(),
            ttl_secs: MAX_TURN_TTL_SECS,
        }
    }
}

impl std::fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("urls", &self.urls)
            .field("ttl_secs", &self.ttl_secs)
            .finish()
    }
}

/// Limits per message, connection, address and server. Durations are in seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest WebSocket message and frame; larger ones close the socket with 1009.
    pub max_message_bytes: usize,
    /// Bytes queued for one slow reader before it is dropped.
    pub max_outbound_bytes: usize,
    /// From TCP accept to a received `hello` (TLS, HTTP upgrade and hello included).
    pub handshake_timeout_secs: f64,
    /// A socket with no frame for this long is closed.
    pub idle_timeout_secs: f64,
    /// The server pings every this often, so live clients answer well within the idle timeout.
    pub ping_interval_secs: f64,
    /// Token bucket per connection: sustained messages per second and burst.
    pub messages_per_sec: f64,
    pub message_burst: f64,
    /// A connection over its rate without a pause for this long is closed.
    pub flood_close_after_secs: f64,
    /// Concurrent WebSockets per IPv4 address or IPv6 /64.
    pub max_sockets_per_ip: u32,
    /// New WebSockets per address: per minute, and burst.
    pub new_connections_per_min: f64,
    pub new_connection_burst: f64,
    /// Failed claims per address per minute before claims are refused for `claim_block_secs`.
    pub failed_claims_per_min: f64,
    pub claim_block_secs: f64,
    /// TURN credential refreshes per address: per minute, and burst.
    pub ice_refresh_per_min: f64,
    pub ice_refresh_burst: f64,
    /// All TCP connections of the server; above it new ones are shed at once.
    pub max_connections: usize,
    /// How long an allocated nameplate waits for its second member (≤ 24 h).
    pub nameplate_ttl_secs: f64,
    /// Nameplates one connection may hold at once.
    pub max_nameplates_per_connection: usize,
    /// On shutdown, how long open sockets get to receive their close frame.
    pub shutdown_grace_secs: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: skiff_proto::signal::MAX_SIGNAL_MESSAGE,
            max_outbound_bytes: 256 * 1024,
            handshake_timeout_secs: 10.0,
            idle_timeout_secs: 60.0,
            ping_interval_secs: 20.0,
            messages_per_sec: 20.0,
            message_burst: 50.0,
            flood_close_after_secs: 3.0,
            max_sockets_per_ip: 20,
            new_connections_per_min: 30.0,
            new_connection_burst: 10.0,
            failed_claims_per_min: 10.0,
            claim_block_secs: 600.0,
            ice_refresh_per_min: 10.0,
            ice_refresh_burst: 5.0,
            max_connections: 10_000,
            nameplate_ttl_secs: 600.0,
            max_nameplates_per_connection: 4,
            shutdown_grace_secs: 2.0,
        }
    }
}

impl Limits {
    pub(crate) fn secs(v: f64) -> Duration {
        Duration::from_secs_f64(v)
    }
}

impl Config {
    /// Reads a TOML file (see `signaling-server/skiff-signal.toml`).
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|reason| Error::ConfigFile {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks ranges; `run` calls it before serving.
    pub fn validate(&self) -> Result<(), Error> {
        let l = &self.limits;
        let positive = [
            ("handshake_timeout_secs", l.handshake_timeout_secs),
            ("idle_timeout_secs", l.idle_timeout_secs),
            ("ping_interval_secs", l.ping_interval_secs),
            ("messages_per_sec", l.messages_per_sec),
            ("message_burst", l.message_burst),
            ("flood_close_after_secs", l.flood_close_after_secs),
            ("new_connections_per_min", l.new_connections_per_min),
            ("new_connection_burst", l.new_connection_burst),
            ("failed_claims_per_min", l.failed_claims_per_min),
            ("claim_block_secs", l.claim_block_secs),
            ("ice_refresh_per_min", l.ice_refresh_per_min),
            ("ice_refresh_burst", l.ice_refresh_burst),
            ("nameplate_ttl_secs", l.nameplate_ttl_secs),
            ("shutdown_grace_secs", l.shutdown_grace_secs),
        ];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0 && v < 1e9) {
                return Err(Error::config(format!(
                    "limits.{name} must be a positive number"
                )));
            }
        }
        if l.nameplate_ttl_secs > MAX_NAMEPLATE_TTL_SECS {
            return Err(Error::config(
                "limits.nameplate_ttl_secs must be at most 24 h",
            ));
        }
        if l.ping_interval_secs >= l.idle_timeout_secs {
            return Err(Error::config(
                "limits.ping_interval_secs must be below idle_timeout_secs",
            ));
        }
        if l.max_message_bytes < 1024 || l.max_outbound_bytes < l.max_message_bytes {
            return Err(Error::config(
                "limits: max_message_bytes ≥ 1024 and max_outbound_bytes ≥ max_message_bytes",
            ));
        }
        if l.max_connections == 0 || l.max_sockets_per_ip == 0 {
            return Err(Error::config("limits: connection caps must be at least 1"));
        }
        if self.turn.ttl_secs == 0 || self.turn.ttl_secs > MAX_TURN_TTL_SECS {
            return Err(Error::config("turn.ttl_secs must be between 1 and 3600"));
        }
        if self.turn.secret.as_deref() == Some("") {
            return Err(Error::config("turn.secret is empty"));
        }
        if self.turn.secret.is_some() && self.turn.urls.is_empty() {
            return Err(Error::config("turn.secret is set but no turn.urls"));
        }
        for url in &self.turn.urls {
            if !["turn:", "turns:", "stun:", "stuns:"]
                .iter()
                .any(|p| url.starts_with(p))
            {
                return Err(Error::config(format!("not a STUN/TURN URL: {url}")));
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(Error::config("tls_cert and tls_key go together"));
        }
        Ok(())
    }
}

/// An address range such as `10.0.0.0/8` or `::1/128`; a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`) as plain IPv4.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net = canonical(
            addr.trim()
                .parse::<IpAddr>()
                .map_err(|e| format!("{s:?}: {e}"))?,
        );
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|e| format!("{s:?}: {e}"))?,
            None => max,
        };
        if prefix > max {
            return Err(format!("{s:?}: prefix longer than {max}"));
        }
        Ok(Self { net, prefix })
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_guide_numbers_and_valid() {
        let c = Config::default();
        c.validate().unwrap();
        let l = &c.limits;
        assert_eq!(l.max_message_bytes, 64 * 1024);
        assert_eq!(l.max_outbound_bytes, 256 * 1024);
        assert_eq!(
            (l.handshake_timeout_secs, l.idle_timeout_secs),
            (10.0, 60.0)
        );
        assert_eq!(
            (
                l.messages_per_sec,
                l.message_burst,
                l.flood_close_after_secs
            ),
            (20.0, 50.0, 3.0)
        );
        assert_eq!((l.max_sockets_per_ip, l.max_connections), (20, 10_000));
        assert_eq!(
            (l.new_connections_per_min, l.new_connection_burst),
            (30.0, 10.0)
        );
        assert_eq!((l.failed_claims_per_min, l.claim_block_secs), (10.0, 600.0));
        assert_eq!(l.nameplate_ttl_secs, 600.0);
        assert!(l.ping_interval_secs <= 25.0);
        assert_eq!(c.turn.ttl_secs, 3600);
    }

    #[test]
    fn toml_file_overrides_defaults_and_rejects_typos() {
        let c = Config::from_toml(
            "listen = \"0.0.0.0:8080\"\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]\n\
             [turn]\nsecret = \"s\"\nurls = [\"turn:203.0.113.10:3478?transport=udp\"]\n\
             [limits]\nmax_sockets_per_ip = 100\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.limits.max_sockets_per_ip, 100);
        assert_eq!(c.limits.messages_per_sec, 20.0);
        assert!(Config::from_toml("[limits]\nmax_socket_per_ip = 1\n").is_err());
        let mut bad = Config::default();
        bad.turn.ttl_secs = 7200;
        assert!(bad.validate().is_err());
        assert!(!format!("{c:?}").contains("secret = \"s\""));
        assert!(!format!("{:?}", c.turn).contains("\"s\""));
    }

    #[test]
    fn cidr_matching() {
        let lan: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(lan.contains("10.1.2.3".parse().unwrap()));
        assert!(lan.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!lan.contains("11.0.0.1".parse().unwrap()));
        let one: Cidr = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::2".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope".parse::<Cidr>().is_err());
    }
}
