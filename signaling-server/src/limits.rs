//! Rate and count limits: token buckets, the flood gate of one connection and the
//! per-address table.
//!
//! Owns: the arithmetic of every limit, on tokio's clock (so tests can pause time), and
//! the rule that an address is an IPv4 address or an IPv6 /64.
//! Must not: do I/O or know about messages; callers decide what a refusal means.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{canonical, Limits};

/// A classic token bucket: `capacity` tokens, refilled at `rate` per second.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    tokens: f64,
    capacity: f64,
    rate: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate_per_sec: f64, capacity: f64, now: Instant) -> Self {
        Self {
            tokens: capacity,
            capacity,
            rate: rate_per_sec,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.capacity);
        self.last = now;
    }

    /// Takes one token if there is one.
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full again (nothing to remember about this address).
    pub(crate) fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.capacity
    }
}

/// What to do with one incoming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    Pass,
    /// Over the rate: drop it; `first` is true for the first drop of an episode (tell the client).
    Drop {
        first: bool,
    },
    /// Over the rate without a pause for too long: close the socket.
    Close,
}

/// Per-connection message rate: a token bucket plus "close after N s of continuous excess".
/// An excess episode ends when one second passes without a dropped message.
#[derive(Debug)]
pub(crate) struct FloodGate {
    bucket: TokenBucket,
    close_after: Duration,
    excess_since: Option<Instant>,
    last_drop: Option<Instant>,
}

const EPISODE_GAP: Duration = Duration::from_secs(1);

impl FloodGate {
    pub(crate) fn new(limits: &Limits, now: Instant) -> Self {
        Self {
            bucket: TokenBucket::new(limits.messages_per_sec, limits.message_burst, now),
            close_after: Limits::secs(limits.flood_close_after_secs),
            excess_since: None,
            last_drop: None,
        }
    }

    pub(crate) fn check(&mut self, now: Instant) -> Gate {
        let in_episode = self
            .last_drop
            .is_some_and(|t| now.saturating_duration_since(t) < EPISODE_GAP);
        if !in_episode {
            self.excess_since = None;
        }
        if self.bucket.try_take(now) {
            return Gate::Pass;
        }
        self.last_drop = Some(now);
        match self.excess_since {
            None => {
                self.excess_since = Some(now);
                Gate::Drop { first: true }
            }
            Some(since) if now.saturating_duration_since(since) >= self.close_after => Gate::Close,
            Some(_) => Gate::Drop { first: false },
        }
    }
}

/// The unit of per-address limits: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct IpKey(IpAddr);

impl IpKey {
    pub(crate) fn of(ip: IpAddr) -> Self {
        match canonical(ip) {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpKey(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
            v4 => IpKey(v4),
        }
    }
}

impl std::fmt::Display for IpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
            v4 => write!(f, "{v4}"),
        }
    }
}

#[derive(Debug)]
struct IpEntry {
    sockets: u32,
    new_connections: TokenBucket,
    failed_claims: TokenBucket,
    ice_refresh: TokenBucket,
    claims_blocked_until: Option<Instant>,
}

/// Why a new WebSocket from an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IpRefusal {
    TooManySockets,
    TooManyNewConnections,
}

/// Limits per address. Entries exist only while an address has sockets or recent history,
/// so its size is bounded by the connection cap plus the addresses seen in the last minutes.
#[derive(Debug)]
pub(crate) struct IpTable {
    limits: Limits,
    entries: HashMap<IpKey, IpEntry>,
}

impl IpTable {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            entries: HashMap::new(),
        }
    }

    fn entry(&mut self, key: IpKey, now: Instant) -> &mut IpEntry {
        let l = &self.limits;
        self.entries.entry(key).or_insert_with(|| IpEntry {
            sockets: 0,
            new_connections: TokenBucket::new(
                l.new_connections_per_min / 60.0,
                l.new_connection_burst,
                now,
            ),
            failed_claims: TokenBucket::new(
                l.failed_claims_per_min / 60.0,
                l.failed_claims_per_min,
                now,
            ),
            ice_refresh: TokenBucket::new(l.ice_refresh_per_min / 60.0, l.ice_refresh_burst, now),
            claims_blocked_until: None,
        })
    }

    /// Admits one more WebSocket from `key` (then call [`IpTable::close_socket`] when it ends).
    pub(crate) fn open_socket(&mut self, key: IpKey, now: Instant) -> Result<(), IpRefusal> {
        let max = self.limits.max_sockets_per_ip;
        let e = self.entry(key, now);
        if e.sockets >= max {
            return Err(IpRefusal::TooManySockets);
        }
        if !e.new_connections.try_take(now) {
            return Err(IpRefusal::TooManyNewConnections);
        }
        e.sockets += 1;
        Ok(())
    }

    pub(crate) fn close_socket(&mut self, key: IpKey) {
        if let Some(e) = self.entries.get_mut(&key) {
            e.sockets = e.sockets.saturating_sub(1);
        }
    }

    /// Whether claims from `key` are currently refused.
    pub(crate) fn claims_blocked(&mut self, key: IpKey, now: Instant) -> bool {
        let e = self.entry(key, now);
        e.claims_blocked_until.is_some_and(|t| now < t)
    }

    /// Records a failed claim; returns true when this one uses up the allowance and
    /// starts a block (so the 11th claim within a minute is already refused).
    pub(crate) fn claim_failed(&mut self, key: IpKey, now: Instant) -> bool {
        let block = Limits::secs(self.limits.claim_block_secs);
        let e = self.entry(key, now);
        if e.failed_claims.try_take(now) && e.failed_claims.tokens >= 1.0 {
            return false;
        }
        e.claims_blocked_until = Some(now + block);
        true
    }

    pub(crate) fn allow_ice_refresh(&mut self, key: IpKey, now: Instant) -> bool {
        self.entry(key, now).ice_refresh.try_take(now)
    }

    /// Forgets addresses with no socket, no block and full buckets.
    pub(crate) fn sweep(&mut self, now: Instant) {
        self.entries.retain(|_, e| {
            let blocked = e.claims_blocked_until.is_some_and(|t| now < t);
            e.sockets > 0
                || blocked
                || !e.new_connections.is_full(now)
                || !e.failed_claims.is_full(now)
                || !e.ice_refresh.is_full(now)
        });
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn flood_gate_allows_burst_then_rate_and_closes_after_three_seconds() {
        let limits = Limits::default();
        let start = Instant::now();
        let mut gate = FloodGate::new(&limits, start);
        // 10 000 msg/s for 4 s: count what passes and when the gate closes.
        let mut passed = 0;
        let mut first_drops = 0;
        let mut closed_at = None;
        for i in 0..40_000u32 {
            let now = start + Duration::from_micros(u64::from(i) * 100);
            match gate.check(now) {
                Gate::Pass => passed += 1,
                Gate::Drop { first } => first_drops += u32::from(first),
                Gate::Close => {
                    closed_at = Some(now - start);
                    break;
                }
            }
        }
        let closed_at = closed_at.expect("a flood must be closed");
        assert!(closed_at >= Duration::from_secs(3) && closed_at < Duration::from_millis(3100));
        assert_eq!(first_drops, 1, "the client is told once per episode");
        // burst of 50 plus 20/s for ~3 s
        assert!((100..=112).contains(&passed), "passed {passed}");
    }

    #[tokio::test(start_paused = true)]
    async fn flood_gate_forgives_after_a_pause() {
        let limits = Limits::default();
        let start = Instant::now();
        let mut gate = FloodGate::new(&limits, start);
        for _ in 0..60 {
            gate.check(start);
        }
        // 2.5 s later, a pause of 2 s, then a new burst: a new episode, no close.
        let later = start + Duration::from_millis(4500);
        for _ in 0..100 {
            assert_ne!(gate.check(later), Gate::Close);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn per_ip_socket_cap_and_new_connection_rate() {
        let mut table = IpTable::new(Limits::default());
        let a = IpKey::of("198.51.100.7".parse().unwrap());
        let b = IpKey::of("198.51.100.8".parse().unwrap());
        let mut now = Instant::now();
        // burst of 10, then 0.5/s: 20 sockets open within ~20 s; the 21st is refused.
        let mut opened = 0;
        while opened < 20 {
            if table.open_socket(a, now).is_ok() {
                opened += 1;
            }
            now += Duration::from_millis(500);
        }
        now += Duration::from_secs(60);
        assert_eq!(table.open_socket(a, now), Err(IpRefusal::TooManySockets));
        assert!(
            table.open_socket(b, now).is_ok(),
            "other addresses are unaffected"
        );
        table.close_socket(a);
        assert!(table.open_socket(a, now).is_ok());
        // New-connection rate: 10 at once, then refused.
        let c = IpKey::of("203.0.113.50".parse().unwrap());
        for _ in 0..10 {
            table.open_socket(c, now).unwrap();
            table.close_socket(c);
        }
        assert_eq!(
            table.open_socket(c, now),
            Err(IpRefusal::TooManyNewConnections)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failed_claims_block_for_ten_minutes() {
        let mut table = IpTable::new(Limits::default());
        let a = IpKey::of("192.0.2.1".parse().unwrap());
        let now = Instant::now();
        let blocked: Vec<bool> = (0..10).map(|_| table.claim_failed(a, now)).collect();
        assert_eq!(blocked.iter().filter(|b| **b).count(), 1);
        assert!(blocked[9], "the tenth failure starts the block");
        assert!(table.claims_blocked(a, now));
        assert!(table.claims_blocked(a, now + Duration::from_secs(599)));
        assert!(!table.claims_blocked(a, now + Duration::from_secs(601)));
        table.sweep(now + Duration::from_secs(1000));
        assert_eq!(table.len(), 0, "forgotten once nothing is left to remember");
    }

    #[test]
    fn ipv6_addresses_share_their_slash_64() {
        let a = IpKey::of("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = IpKey::of("2001:db8:1:2:bbbb::2".parse().unwrap());
        let c = IpKey::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            IpKey::of("::ffff:192.0.2.1".parse().unwrap()),
            IpKey::of("192.0.2.1".parse().unwrap())
        );
    }
}
