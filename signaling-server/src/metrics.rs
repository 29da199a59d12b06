//! Counters and gauges, rendered as Prometheus text on `GET /metrics`.
//!
//! Owns: the metric names and the fixed set of rejection reasons.
//! Must not: carry labels with peer ids, addresses, nameplates or anything a client sent.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why the server refused or ended something; each is a `reason` label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    ServerFull,
    PerIpSockets,
    PerIpRate,
    HandshakeTimeout,
    BadUpgrade,
    Malformed,
    UnsupportedVersion,
    TooLarge,
    RateLimited,
    Flood,
    SlowReader,
    Idle,
    NameplateUnavailable,
    ClaimsBlocked,
    UnknownPeer,
    Replaced,
}

impl Reason {
    const ALL: [Reason; 16] = [
        Reason::ServerFull,
        Reason::PerIpSockets,
        Reason::PerIpRate,
        Reason::HandshakeTimeout,
        Reason::BadUpgrade,
        Reason::Malformed,
        Reason::UnsupportedVersion,
        Reason::TooLarge,
        Reason::RateLimited,
        Reason::Flood,
        Reason::SlowReader,
        Reason::Idle,
        Reason::NameplateUnavailable,
        Reason::ClaimsBlocked,
        Reason::UnknownPeer,
        Reason::Replaced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ServerFull => "server_full",
            Reason::PerIpSockets => "per_ip_sockets",
            Reason::PerIpRate => "per_ip_rate",
            Reason::HandshakeTimeout => "handshake_timeout",
            Reason::BadUpgrade => "bad_upgrade",
            Reason::Malformed => "malformed",
            Reason::UnsupportedVersion => "unsupported_version",
            Reason::TooLarge => "too_large",
            Reason::RateLimited => "rate_limited",
            Reason::Flood => "flood",
            Reason::SlowReader => "slow_reader",
            Reason::Idle => "idle",
            Reason::NameplateUnavailable => "nameplate_unavailable",
            Reason::ClaimsBlocked => "claims_blocked",
            Reason::UnknownPeer => "unknown_peer",
            Reason::Replaced => "replaced",
        }
    }
}

/// All counters of one server.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) tcp_connections: AtomicU64,
    pub(crate) sessions: AtomicU64,
    pub(crate) sessions_total: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) messages_relayed: AtomicU64,
    pub(crate) bytes_relayed: AtomicU64,
    pub(crate) pairings: AtomicU64,
    rejections: [AtomicU64; Reason::ALL.len()],
}

impl Metrics {
    pub(crate) fn reject(&self, reason: Reason) {
        let i = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.rejections[i].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn dec(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }

    /// The current value of a rejection counter.
    pub fn rejections(&self, reason: Reason) -> u64 {
        let i = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.rejections[i].load(Ordering::Relaxed)
    }

    /// Prometheus text exposition format 0.0.4.
    pub(crate) fn render(&self, spaces: usize, nameplates: usize) -> String {
        let mut out = String::with_capacity(2048);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        };
        metric(
            "skiff_signal_tcp_connections",
            "gauge",
            "Open TCP connections.",
            get(&self.tcp_connections),
        );
        metric(
            "skiff_signal_connections",
            "gauge",
            "Open WebSocket sessions.",
            get(&self.sessions),
        );
        metric(
            "skiff_signal_connections_total",
            "counter",
            "WebSocket sessions accepted since start.",
            get(&self.sessions_total),
        );
        metric(
            "skiff_signal_spaces",
            "gauge",
            "Presence spaces with at least one peer.",
            spaces as u64,
        );
        metric(
            "skiff_signal_nameplates",
            "gauge",
            "Live nameplates.",
            nameplates as u64,
        );
        metric(
            "skiff_signal_messages_received_total",
            "counter",
            "Client messages received.",
            get(&self.messages_received),
        );
        metric(
            "skiff_signal_messages_relayed_total",
            "counter",
            "Blobs relayed between peers.",
            get(&self.messages_relayed),
        );
        metric(
            "skiff_signal_relayed_bytes_total",
            "counter",
            "Bytes of blobs relayed between peers.",
            get(&self.bytes_relayed),
        );
        metric(
            "skiff_signal_pairings_total",
            "counter",
            "Nameplates claimed by a second peer.",
            get(&self.pairings),
        );
        let _ = write!(
            out,
            "# HELP skiff_signal_rejections_total Refused or ended connections and messages, by reason.\n\
             # TYPE skiff_signal_rejections_total counter\n"
        );
        for (reason, count) in Reason::ALL.iter().zip(&self.rejections) {
            let _ = writeln!(
                out,
                "skiff_signal_rejections_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                get(count)
            );
        }
        out
    }
}
