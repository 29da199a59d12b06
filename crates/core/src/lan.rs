//! LAN discovery over mDNS / DNS-SD: `_skiff._tcp.local.` records that announce a waiting
//! code's nameplate (so `skiff receive CODE` finds its sender with no address and no
//! server), a code whose nameplate lives on a LAN signaling server (the app's embedded
//! one), and a device's presence with its signaling server (the app's list of LAN apps).
//!
//! Record kinds (TXT `v=1`, `name=`, and exactly one of):
//! - `np=<nameplate>`: a sender waiting for a direct TCP connection at the record's
//!   addresses and port (the CLI's `skiff send` without a server);
//! - `snp=<nameplate>`: the nameplate was allocated on the signaling server at the
//!   record's addresses and port (`ws://ADDR:PORT/ws`); the receiver runs the code's PAKE
//!   through that server. Readers of the `np`-only layout see neither `np` nor `id` and
//!   ignore it, so they never dial a server as if it were a sender;
//! - `id=<device id>`: a device that is online; the record's port is its signaling
//!   server's (`ws://ADDR:PORT/ws`), where it is present in [`LAN_SPACE`].
//!
//! Owns: the mDNS daemons (`mdns-sd`, one per advert or browse, each on its own thread and
//! shut down when its handle is dropped), the TXT layout above, the validation of every
//! record read from the network (sizes, fields, addresses), and finding and dialing the
//! sender (or the server) of a code.
//! Must not: put any word of a code (or anything secret) in a record, trust a name, an
//! address or a field from the network before it is validated, keep an unbounded number of
//! records, block the async runtime, or run the code's PAKE itself (that is `session`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::ops::Deref;
use std::time::Duration;

use mdns_sd::{IfKind, ResolvedService, ScopedIp, ServiceDaemon, ServiceEvent, ServiceInfo};
use skiff_proto::code::ShareCode;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::crypto::Secret;
use crate::names::display_escape;
use crate::session::{self, Channel};
use crate::transport::tcp;
use crate::{Error, Result};

/// The DNS-SD service type of every Skiff record.
pub const SERVICE_TYPE: &str = "_skiff._tcp.local.";
/// The TXT `v=` this build writes and reads (records of other versions are ignored).
pub const TXT_VERSION: &str = "1";
/// The presence space of devices on a LAN signaling server (the app's embedded server):
/// its clients come from different LAN addresses (and the server's own app from
/// loopback), so the default space ("behind the same public address") would split them.
/// Devices advertised with [`LanAdvert::device`] are online there, and a sender to a
/// device found by [`browse_devices`] joins it.
pub const LAN_SPACE: &str = "skiff-lan";
/// The WebSocket path of a signaling server announced on the LAN.
pub const SIGNAL_PATH: &str = "/ws";
/// Longest device name put in or accepted from a record, in bytes.
pub const MAX_NAME_BYTES: usize = 63;
/// Longest device id, in bytes (`[A-Za-z0-9_-]`).
pub const MAX_ID_BYTES: usize = 64;
/// A record whose TXT holds more keys, or more bytes in all, is ignored.
pub const MAX_TXT_KEYS: usize = 8;
pub const MAX_TXT_BYTES: usize = 400;
/// Addresses kept per record.
pub const MAX_ADDRS: usize = 8;
/// Devices a [`DeviceBrowser`] keeps track of; more are ignored until some go away.
pub const MAX_DEVICES: usize = 256;
/// How long `skiff receive CODE` looks for the code's sender on the LAN.
pub const FIND_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-address connect timeout when dialing a sender found on the LAN.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// After the first matching answer, how long more addresses of that record are gathered.
const GATHER: Duration = Duration::from_millis(300);
/// Waiting for a daemon to confirm its shutdown in [`LanAdvert::close`].
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

fn lan_err(e: mdns_sd::Error) -> Error {
    Error::Lan {
        reason: e.to_string(),
    }
}

/// One `mdns-sd` daemon (its own thread); shut down, which also sends goodbyes for its
/// records, when dropped.
struct Daemon(ServiceDaemon);

impl Daemon {
    /// A daemon on every interface but loopback, for IPv4 and/or IPv6.
    fn start(v4: bool, v6: bool) -> Result<Self> {
        let d = Daemon(ServiceDaemon::new().map_err(lan_err)?);
        d.0.disable_interface(IfKind::LoopbackV4).map_err(lan_err)?;
        d.0.disable_interface(IfKind::LoopbackV6).map_err(lan_err)?;
        if !v4 {
            d.0.disable_interface(IfKind::IPv4).map_err(lan_err)?;
        }
        if !v6 {
            d.0.disable_interface(IfKind::IPv6).map_err(lan_err)?;
        }
        Ok(d)
    }

    /// Shuts down and waits (briefly) until the daemon thread has sent its goodbyes.
    async fn close(self) {
        if let Ok(rx) = self.0.shutdown() {
            let _ = tokio::time::timeout(SHUTDOWN_WAIT, rx.recv_async()).await;
        }
        // Drop asks once more, which the stopped daemon ignores.
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Non-blocking: queues the exit; the daemon thread says goodbye and ends.
        let _ = self.0.shutdown();
    }
}

// ---------------------------------------------------------------- records

/// A validated Skiff record from the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A sender waiting with a code whose public number is `nameplate` (`np=`).
    Transfer { nameplate: String, name: String },
    /// A code whose nameplate lives on the signaling server at the record's address
    /// (`snp=`).
    ServerTransfer { nameplate: String, name: String },
    /// A device that is online (the app's peer list).
    Device { id: String, name: String },
}

/// Why a record from the network was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid(pub &'static str);

fn valid_nameplate(s: &str) -> bool {
    (1..=9).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0')
}

fn valid_id(s: &str) -> bool {
    (1..=MAX_ID_BYTES).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `name` as it goes into a record: at most [`MAX_NAME_BYTES`] (cut at a character
/// boundary), never empty.
fn clamp_name(name: &str) -> String {
    let name = name.trim();
    let mut end = name.len().min(MAX_NAME_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    match name[..end].trim_end() {
        "" => "skiff device".to_owned(),
        n => n.to_owned(),
    }
}

/// Parses and validates a record's TXT properties (`key`, raw value). Names are returned
/// escaped for display ([`display_escape`]).
pub fn parse_txt<'a>(
    props: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> Result<Record, Invalid> {
    let (mut v, mut np, mut snp, mut id, mut name) = (None, None, None, None, None);
    let (mut keys, mut bytes) = (0usize, 0usize);
    for (key, val) in props {
        keys += 1;
        bytes += key.len() + val.map_or(0, |v| v.len() + 1);
        if keys > MAX_TXT_KEYS {
            return Err(Invalid("too many TXT keys"));
        }
        if bytes > MAX_TXT_BYTES {
            return Err(Invalid("TXT record too large"));
        }
        let slot = match key.to_ascii_lowercase().as_str() {
            "v" => &mut v,
            "np" => &mut np,
            "snp" => &mut snp,
            "id" => &mut id,
            "name" => &mut name,
            _ => continue, // unknown keys: ignored (newer builds may add some)
        };
        if slot.is_some() {
            return Err(Invalid("duplicate TXT key"));
        }
        let text = std::str::from_utf8(val.ok_or(Invalid("TXT key without a value"))?)
            .map_err(|_| Invalid("TXT value is not UTF-8"))?;
        *slot = Some(text);
    }
    if v.ok_or(Invalid("no version"))? != TXT_VERSION {
        return Err(Invalid("unknown version"));
    }
    let name = name.ok_or(Invalid("no name"))?;
    if name.len() > MAX_NAME_BYTES || name.trim().is_empty() {
        return Err(Invalid("bad name"));
    }
    let name = display_escape(name);
    match (np, snp, id) {
        (Some(np), None, None) if valid_nameplate(np) => Ok(Record::Transfer {
            nameplate: np.to_owned(),
            name,
        }),
        (None, Some(np), None) if valid_nameplate(np) => Ok(Record::ServerTransfer {
            nameplate: np.to_owned(),
            name,
        }),
        (None, None, Some(id)) if valid_id(id) => Ok(Record::Device {
            id: id.to_owned(),
            name,
        }),
        (Some(_), None, None) | (None, Some(_), None) => Err(Invalid("bad nameplate")),
        (None, None, Some(_)) => Err(Invalid("bad device id")),
        (Some(_), Some(_), _) => Err(Invalid("both a direct and a server nameplate")),
        (_, _, Some(_)) => Err(Invalid("both a nameplate and a device id")),
        (None, None, None) => Err(Invalid("neither a nameplate nor a device id")),
    }
}

/// Addresses a receiver may dial: no loopback, unspecified, multicast or broadcast
/// address, port ≠ 0; IPv4 first, then IPv6 (link-local ones last, with their interface);
/// at most [`MAX_ADDRS`].
pub fn usable_addrs(ips: impl IntoIterator<Item = (IpAddr, u32)>, port: u16) -> Vec<SocketAddr> {
    if port == 0 {
        return Vec::new();
    }
    let mut out: Vec<SocketAddr> = ips
        .into_iter()
        .filter_map(|(ip, scope)| match ip {
            IpAddr::V4(v4) => (!v4.is_loopback()
                && !v4.is_unspecified()
                && !v4.is_multicast()
                && !v4.is_broadcast())
            .then(|| SocketAddr::new(ip, port)),
            IpAddr::V6(v6) => {
                let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80;
                let ok = !v6.is_loopback()
                    && !v6.is_unspecified()
                    && !v6.is_multicast()
                    && v6.to_ipv4_mapped().is_none()
                    && (!link_local || scope != 0);
                ok.then(|| {
                    SocketAddr::V6(SocketAddrV6::new(
                        v6,
                        port,
                        0,
                        if link_local { scope } else { 0 },
                    ))
                })
            }
        })
        .collect();
    out.sort_by_key(|a| match a {
        SocketAddr::V4(_) => (0, *a),
        SocketAddr::V6(v6) if v6.scope_id() == 0 => (1, *a),
        SocketAddr::V6(_) => (2, *a),
    });
    out.dedup();
    out.truncate(MAX_ADDRS);
    out
}

fn record_of(svc: &ResolvedService) -> Result<Record, Invalid> {
    if !svc.ty_domain.eq_ignore_ascii_case(SERVICE_TYPE) {
        return Err(Invalid("another service type"));
    }
    parse_txt(svc.get_properties().iter().map(|p| (p.key(), p.val())))
}

fn addrs_of(svc: &ResolvedService) -> Vec<SocketAddr> {
    usable_addrs(
        svc.get_addresses().iter().map(|ip| match ip {
            ScopedIp::V6(v6) => (IpAddr::V6(*v6.addr()), v6.scope_id().index),
            other => (other.to_ip_addr(), 0),
        }),
        svc.get_port(),
    )
}

// ---------------------------------------------------------------- adverts

/// A record announced on the LAN for as long as this value lives: dropping it (or
/// [`LanAdvert::close`]) withdraws the record and stops its daemon.
pub struct LanAdvert {
    daemon: Daemon,
    fullname: String,
}

impl std::fmt::Debug for LanAdvert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LanAdvert")
            .field("fullname", &self.fullname)
            .finish()
    }
}

/// Whether a listener bound to `listen` can be announced on the LAN (not loopback-only).
pub fn advertisable(listen: &SocketAddr) -> bool {
    !listen.ip().is_loopback() && listen.port() != 0
}

impl LanAdvert {
    /// Announces a sender waiting with a code whose nameplate is `nameplate` (only the
    /// number: never any word of the code), reachable at `listen`'s port on the
    /// addresses `listen` is bound to (every interface of its family when unspecified).
    pub fn transfer(nameplate: &str, listen: SocketAddr, device_name: &str) -> Result<LanAdvert> {
        if !valid_nameplate(nameplate) {
            return Err(Error::InvalidInput {
                reason: "not a nameplate".into(),
            });
        }
        Self::start(listen, &[("np", nameplate)], device_name)
    }

    /// Announces a code whose nameplate `nameplate` was allocated on the signaling server
    /// listening on `server` (e.g. the app's embedded server on `0.0.0.0:47231`): a
    /// receiver on the LAN runs the code's PAKE through `ws://ADDR:PORT/ws`. Only the
    /// number goes into the record, never any word of the code.
    pub fn transfer_on_server(
        nameplate: &str,
        server: SocketAddr,
        device_name: &str,
    ) -> Result<LanAdvert> {
        if !valid_nameplate(nameplate) {
            return Err(Error::InvalidInput {
                reason: "not a nameplate".into(),
            });
        }
        Self::start(server, &[("snp", nameplate)], device_name)
    }

    /// Announces this device (`device_id`: 1–64 of `[A-Za-z0-9_-]`) with its name, for
    /// the peer lists of other devices on the LAN. `listen` is where its signaling server
    /// listens (`ws://ADDR:PORT/ws`; the device is online there in [`LAN_SPACE`]).
    pub fn device(device_id: &str, device_name: &str, listen: SocketAddr) -> Result<LanAdvert> {
        if !valid_id(device_id) {
            return Err(Error::InvalidInput {
                reason: "a device id is 1 to 64 letters, digits, '-' or '_'".into(),
            });
        }
        Self::start(listen, &[("id", device_id)], device_name)
    }

    fn start(listen: SocketAddr, key: &[(&str, &str)], device_name: &str) -> Result<LanAdvert> {
        if !advertisable(&listen) {
            return Err(Error::InvalidInput {
                reason: format!("{listen} is not reachable from the LAN"),
            });
        }
        let ip = listen.ip();
        let daemon = match ip {
            IpAddr::V4(_) => Daemon::start(true, false)?,
            IpAddr::V6(_) if ip.is_unspecified() => Daemon::start(true, true)?,
            IpAddr::V6(_) => Daemon::start(false, true)?,
        };
        let tag = hex::encode(rand::random::<[u8; 8]>());
        let name = clamp_name(device_name);
        let mut props = vec![("v", TXT_VERSION)];
        props.extend_from_slice(key);
        props.push(("name", name.as_str()));
        let host = format!("skiff-{tag}.local.");
        let instance = format!("skiff-{tag}");
        let info = if ip.is_unspecified() {
            ServiceInfo::new(
                SERVICE_TYPE,
                &instance,
                &host,
                (),
                listen.port(),
                &props[..],
            )
            .map(ServiceInfo::enable_addr_auto)
        } else {
            ServiceInfo::new(
                SERVICE_TYPE,
                &instance,
                &host,
                ip,
                listen.port(),
                &props[..],
            )
        }
        .map_err(lan_err)?;
        let fullname = info.get_fullname().to_owned();
        daemon.0.register(info).map_err(lan_err)?;
        tracing::debug!("lan: announcing {fullname} on port {}", listen.port());
        Ok(LanAdvert { daemon, fullname })
    }

    /// The record's DNS-SD instance name (random; names nothing about the user).
    pub fn fullname(&self) -> &str {
        &self.fullname
    }

    /// Withdraws the record and waits (at most a second) until the goodbye is sent.
    pub async fn close(self) {
        self.daemon.close().await;
    }
}

/// A share code that nobody has used yet, with the record announcing its nameplate on
/// the LAN (when there is one): dropping it after the code's one PAKE attempt withdraws
/// the record.
pub(crate) struct UnusedCode {
    code: ShareCode,
    _advert: Option<LanAdvert>,
}

impl Deref for UnusedCode {
    type Target = ShareCode;
    fn deref(&self) -> &ShareCode {
        &self.code
    }
}

/// Announces a code's `nameplate` as living on the signaling server listening on
/// `server` (best effort, as [`announce_code`]); the record lives as long as the value.
pub(crate) fn announce_on_server(
    nameplate: &str,
    server: SocketAddr,
    device: &str,
) -> Option<LanAdvert> {
    LanAdvert::transfer_on_server(nameplate, server, device)
        .inspect_err(|e| tracing::warn!("not announced on the LAN: {e}"))
        .ok()
}

/// Announces `code`'s nameplate for a sender listening on `listener` (best effort: a
/// loopback listener, or a LAN without mDNS, just goes unannounced).
pub(crate) fn announce_code(code: ShareCode, listener: &TcpListener, device: &str) -> UnusedCode {
    let advert = match listener.local_addr() {
        Ok(addr) if advertisable(&addr) => LanAdvert::transfer(code.nameplate(), addr, device)
            .inspect_err(|e| tracing::warn!("not announced on the LAN: {e}"))
            .ok(),
        _ => None,
    };
    UnusedCode {
        code,
        _advert: advert,
    }
}

// ---------------------------------------------------------------- browsing

/// One browse of [`SERVICE_TYPE`] on its own daemon (`mdns-sd` keeps one listener per
/// service type and daemon).
struct Browse {
    rx: mdns_sd::Receiver<ServiceEvent>,
    _daemon: Daemon,
}

impl Browse {
    fn start() -> Result<Self> {
        let daemon = Daemon::start(true, true)?;
        let rx = daemon.0.browse(SERVICE_TYPE).map_err(lan_err)?;
        Ok(Browse {
            rx,
            _daemon: daemon,
        })
    }

    /// The next event; `None` when the daemon ended the browse.
    async fn next(&self) -> Option<ServiceEvent> {
        self.rx.recv_async().await.ok()
    }
}

const AMBIGUOUS: &str = "more than one sender on this network has code";

/// Whether `e` is [`find_nameplate`]'s "two records for one nameplate" (never to be
/// guessed around, e.g. by trying another server).
pub(crate) fn is_ambiguous(e: &Error) -> bool {
    matches!(e, Error::Lan { reason } if reason.starts_with(AMBIGUOUS))
}

/// Where a code found on the LAN waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeAt {
    /// The sender itself, for a direct TCP connection (an `np=` record).
    Sender(Vec<SocketAddr>),
    /// The signaling server holding the nameplate (an `snp=` record): its addresses.
    Server(Vec<SocketAddr>),
}

/// Looks on the LAN for the sender (or the signaling server) of a code whose nameplate is
/// `nameplate`, until one answers or `timeout` passes. Returns its addresses, IPv4 first.
/// Two records answering for the same nameplate (of either kind) are an error
/// (`Error::Lan`), not a guess.
pub async fn find_nameplate(nameplate: &str, timeout: Duration) -> Result<CodeAt> {
    if !valid_nameplate(nameplate) {
        return Err(Error::InvalidInput {
            reason: "not a nameplate".into(),
        });
    }
    let browse = Browse::start()?;
    let not_found = || Error::NotOnLan {
        nameplate: nameplate.to_owned(),
    };
    let mut deadline = Instant::now() + timeout;
    let mut found: Option<(String, bool, Vec<SocketAddr>)> = None;
    loop {
        let ev = match tokio::time::timeout_at(deadline, browse.next()).await {
            Ok(Some(ev)) => ev,
            Ok(None) if found.is_none() => {
                return Err(Error::Lan {
                    reason: "the mDNS daemon stopped".into(),
                })
            }
            Ok(None) | Err(_) => break,
        };
        let ServiceEvent::ServiceResolved(svc) = ev else {
            continue;
        };
        let on_server = match record_of(&svc) {
            Ok(Record::Transfer { nameplate: np, .. }) if np == nameplate => false,
            Ok(Record::ServerTransfer { nameplate: np, .. }) if np == nameplate => true,
            Ok(_) => continue,
            Err(Invalid(why)) => {
                tracing::debug!("lan: ignoring {}: {why}", svc.get_fullname());
                continue;
            }
        };
        let addrs = addrs_of(&svc);
        match &mut found {
            None if !addrs.is_empty() => {
                tracing::debug!("lan: code {nameplate} at {addrs:?}");
                found = Some((svc.get_fullname().to_owned(), on_server, addrs));
                // Gather the record's other addresses for a moment.
                deadline = deadline.min(Instant::now() + GATHER);
            }
            Some((fullname, _, have)) if fullname == svc.get_fullname() => {
                let all = have.iter().chain(&addrs).map(|a| (a.ip(), scope_of(a)));
                *have = usable_addrs(all.collect::<Vec<_>>(), svc.get_port());
            }
            // Two senders with the same number (nameplates are short): dialing either
            // could burn the other's code, so ask for a new one instead.
            Some(_) if !addrs.is_empty() => {
                return Err(Error::Lan {
                    reason: format!(
                        "{AMBIGUOUS} {nameplate}: ask the sender to start again for a new code"
                    ),
                })
            }
            _ => {}
        }
    }
    match found {
        Some((_, true, addrs)) => Ok(CodeAt::Server(addrs)),
        Some((_, false, addrs)) => Ok(CodeAt::Sender(addrs)),
        None => Err(not_found()),
    }
}

/// The URL of the signaling server at `addr` (`ws://ADDR:PORT/ws`); `None` for an IPv6
/// link-local address, which a URL cannot carry with its interface.
pub fn signal_url_of(addr: &SocketAddr) -> Option<String> {
    match addr {
        SocketAddr::V6(v6) if v6.scope_id() != 0 || (v6.ip().segments()[0] & 0xffc0) == 0xfe80 => {
            None
        }
        _ => Some(format!("ws://{addr}{SIGNAL_PATH}")),
    }
}

/// The URL of the first of `addrs` (a signaling server found on the LAN) that accepts a
/// TCP connection, tried in turn.
pub async fn reachable_signal_url(addrs: &[SocketAddr]) -> Result<String> {
    let mut last = Error::Lan {
        reason: "the signaling server found on the LAN has no usable address".into(),
    };
    for addr in addrs {
        let Some(url) = signal_url_of(addr) else {
            continue;
        };
        match tokio::time::timeout(DIAL_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_probe)) => return Ok(url),
            Ok(Err(e)) => last = Error::io(format!("connecting to the server at {addr}"), e),
            Err(_) => {
                last = Error::Timeout {
                    what: "connecting to the signaling server found on the LAN",
                }
            }
        }
        tracing::info!("lan: could not reach the server at {addr}: {last}");
    }
    Err(last)
}

fn scope_of(a: &SocketAddr) -> u32 {
    match a {
        SocketAddr::V6(v6) => v6.scope_id(),
        SocketAddr::V4(_) => 0,
    }
}

/// A device seen on the LAN. Its id and name are what it says about itself (not
/// authenticated: a transfer to it authenticates its device key); `name` is already
/// escaped for display. `addrs` are its signaling server's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanDevice {
    pub id: String,
    pub name: String,
    pub addrs: Vec<SocketAddr>,
}

impl LanDevice {
    /// Its signaling server's URLs (`ws://ADDR:PORT/ws`), in the order of `addrs`.
    pub fn signal_urls(&self) -> Vec<String> {
        self.addrs.iter().filter_map(signal_url_of).collect()
    }
}

/// A change in the set of devices on the LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LanEvent {
    /// A device appeared, or its record changed (same `id`: replace the old entry).
    Added(LanDevice),
    /// A device left (or its record became invalid).
    Removed { id: String },
}

/// The devices announcing themselves on the LAN ([`LanAdvert::device`]), as a stream of
/// [`LanEvent`]s. Dropping it stops the browse and its daemon.
pub struct DeviceBrowser {
    browse: Browse,
    /// Instance name → device id, for removals (at most [`MAX_DEVICES`]).
    known: HashMap<String, String>,
}

/// Starts watching the LAN for devices.
pub fn browse_devices() -> Result<DeviceBrowser> {
    Ok(DeviceBrowser {
        browse: Browse::start()?,
        known: HashMap::new(),
    })
}

impl DeviceBrowser {
    /// The next change; `None` once the browse has ended (its daemon stopped). Cancel-safe.
    pub async fn next(&mut self) -> Option<LanEvent> {
        loop {
            match self.browse.next().await? {
                ServiceEvent::ServiceResolved(svc) => {
                    if let Some(ev) = self.resolved(&svc) {
                        return Some(ev);
                    }
                }
                ServiceEvent::ServiceRemoved(_, fullname) => {
                    if let Some(id) = self.known.remove(&fullname) {
                        return Some(LanEvent::Removed { id });
                    }
                }
                _ => {}
            }
        }
    }

    fn resolved(&mut self, svc: &ResolvedService) -> Option<LanEvent> {
        let fullname = svc.get_fullname();
        let addrs = addrs_of(svc);
        match record_of(svc) {
            Ok(Record::Device { id, name }) if !addrs.is_empty() => {
                if !self.known.contains_key(fullname) && self.known.len() >= MAX_DEVICES {
                    tracing::debug!("lan: ignoring {fullname}: {MAX_DEVICES} devices known");
                    return None;
                }
                self.known.insert(fullname.to_owned(), id.clone());
                Some(LanEvent::Added(LanDevice { id, name, addrs }))
            }
            other => {
                if let Err(Invalid(why)) = other {
                    tracing::debug!("lan: ignoring {fullname}: {why}");
                }
                // A known device whose record no longer qualifies is gone.
                self.known
                    .remove(fullname)
                    .map(|id| LanEvent::Removed { id })
            }
        }
    }
}

// ---------------------------------------------------------------- dialing

/// A code found on the LAN, ready for its PAKE.
pub(crate) enum LanCode {
    /// Dialed the sender directly and ran the PAKE: channel, resume secret, address.
    Direct(Box<Channel>, Secret, String),
    /// The code lives on the signaling server at this URL: pair through it.
    Server(String),
}

/// Receiver without an address: finds the code on the LAN. For a sender waiting directly,
/// dials its addresses in turn and runs the code's PAKE on the first connection (only
/// one: a code has one attempt); for a code on a LAN signaling server, returns the URL
/// of that server that answers.
pub(crate) async fn dial_code(code: &ShareCode) -> Result<LanCode> {
    match find_nameplate(code.nameplate(), FIND_TIMEOUT).await? {
        CodeAt::Server(addrs) => Ok(LanCode::Server(reachable_signal_url(&addrs).await?)),
        CodeAt::Sender(addrs) => {
            let (ch, secret, addr) = dial_sender(code, addrs).await?;
            Ok(LanCode::Direct(Box::new(ch), secret, addr))
        }
    }
}

async fn dial_sender(
    code: &ShareCode,
    addrs: Vec<SocketAddr>,
) -> Result<(Channel, Secret, String)> {
    let mut last = Error::NotOnLan {
        nameplate: code.nameplate().to_owned(),
    };
    for addr in addrs {
        let addr = addr.to_string();
        match tokio::time::timeout(DIAL_TIMEOUT, tcp::dial(&addr)).await {
            Ok(Ok(conn)) => {
                let (ch, secret) = session::dial_pake(conn, code).await?;
                return Ok((ch, secret, addr));
            }
            Ok(Err(e)) => last = e,
            Err(_) => {
                last = Error::Timeout {
                    what: "connecting to the sender found on the LAN",
                }
            }
        }
        tracing::info!("lan: could not reach {addr}: {last}");
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txt<'a>(kv: &'a [(&'a str, &'a str)]) -> Vec<(&'a str, Option<&'a [u8]>)> {
        kv.iter().map(|(k, v)| (*k, Some(v.as_bytes()))).collect()
    }

    #[test]
    fn parses_a_transfer_and_a_device_record() {
        let r = parse_txt(txt(&[("v", "1"), ("np", "417"), ("name", "laptop")]));
        assert_eq!(
            r,
            Ok(Record::Transfer {
                nameplate: "417".into(),
                name: "laptop".into()
            })
        );
        let r = parse_txt(txt(&[
            ("name", "desk"),
            ("ID", "a1-B_2"),
            ("v", "1"),
            ("future", "whatever"),
        ]));
        assert_eq!(
            r,
            Ok(Record::Device {
                id: "a1-B_2".into(),
                name: "desk".into()
            })
        );
    }

    #[test]
    fn a_nameplate_on_a_server_is_its_own_kind() {
        let r = parse_txt(txt(&[("v", "1"), ("snp", "42"), ("name", "desk")]));
        assert_eq!(
            r,
            Ok(Record::ServerTransfer {
                nameplate: "42".into(),
                name: "desk".into()
            })
        );
        let bad: [(&[(&str, &str)], &str); 4] = [
            (
                &[("v", "1"), ("snp", "42"), ("np", "42"), ("name", "a")],
                "both a direct and a server nameplate",
            ),
            (
                &[("v", "1"), ("snp", "42"), ("id", "x"), ("name", "a")],
                "both a nameplate and a device id",
            ),
            (
                &[("v", "1"), ("snp", "42-river"), ("name", "a")],
                "bad nameplate",
            ),
            (
                &[("v", "1"), ("snp", "1"), ("SNP", "2"), ("name", "a")],
                "duplicate TXT key",
            ),
        ];
        for (props, why) in bad {
            assert_eq!(parse_txt(txt(props)), Err(Invalid(why)), "{props:?}");
        }
        // What a reader of the `np`/`id`-only layout makes of it: a record without either
        // (ignored), never a sender to dial.
        let old_reader_view: Vec<(&str, &str)> = [("v", "1"), ("snp", "42"), ("name", "a")]
            .into_iter()
            .filter(|(k, _)| ["v", "np", "id", "name"].contains(k))
            .collect();
        assert_eq!(
            parse_txt(txt(&old_reader_view)),
            Err(Invalid("neither a nameplate nor a device id"))
        );
    }

    #[test]
    fn server_urls_from_record_addresses() {
        let url = |a: &str| signal_url_of(&a.parse().unwrap());
        assert_eq!(
            url("10.0.0.7:47231").as_deref(),
            Some("ws://10.0.0.7:47231/ws")
        );
        assert_eq!(
            url("[2001:db8::5]:47231").as_deref(),
            Some("ws://[2001:db8::5]:47231/ws")
        );
        // A URL cannot carry a link-local address's interface.
        assert_eq!(url("[fe80::1%3]:47231"), None);
        let d = LanDevice {
            id: "x".into(),
            name: "x".into(),
            addrs: vec![
                "10.0.0.7:1".parse().unwrap(),
                "[fe80::1%3]:1".parse().unwrap(),
            ],
        };
        assert_eq!(d.signal_urls(), ["ws://10.0.0.7:1/ws"]);
        assert!(LAN_SPACE.len() <= skiff_proto::signal::MAX_LABEL_LEN);
        assert!(skiff_proto::signal::SpaceName::try_from(LAN_SPACE.to_owned()).is_ok());
    }

    #[test]
    fn rejects_hostile_records() {
        let long_name = "n".repeat(MAX_NAME_BYTES + 1);
        let long_id = "i".repeat(MAX_ID_BYTES + 1);
        let big = "x".repeat(MAX_TXT_BYTES);
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (vec![("np", "417"), ("name", "a")], "no version"),
            (
                vec![("v", "2"), ("np", "417"), ("name", "a")],
                "unknown version",
            ),
            (vec![("v", "1"), ("np", "417")], "no name"),
            (vec![("v", "1"), ("np", "417"), ("name", "  ")], "bad name"),
            (
                vec![("v", "1"), ("np", "417"), ("name", &long_name)],
                "bad name",
            ),
            (
                vec![("v", "1"), ("np", "0417"), ("name", "a")],
                "bad nameplate",
            ),
            (vec![("v", "1"), ("np", ""), ("name", "a")], "bad nameplate"),
            (
                vec![("v", "1"), ("np", "1234567890"), ("name", "a")],
                "bad nameplate",
            ),
            (
                vec![("v", "1"), ("np", "41a"), ("name", "a")],
                "bad nameplate",
            ),
            (
                vec![("v", "1"), ("np", "-417"), ("name", "a")],
                "bad nameplate",
            ),
            (
                vec![
                    ("v", "1"),
                    ("np", "\u{ff14}\u{ff11}\u{ff17}"),
                    ("name", "a"),
                ],
                "bad nameplate",
            ),
            // Never a word of the code, and nothing that looks like one is accepted.
            (
                vec![("v", "1"), ("np", "417-river"), ("name", "a")],
                "bad nameplate",
            ),
            (
                vec![("v", "1"), ("id", "a b"), ("name", "a")],
                "bad device id",
            ),
            (
                vec![("v", "1"), ("id", "a/../b"), ("name", "a")],
                "bad device id",
            ),
            (
                vec![("v", "1"), ("id", &long_id), ("name", "a")],
                "bad device id",
            ),
            (
                vec![("v", "1"), ("id", "x"), ("np", "1"), ("name", "a")],
                "both a nameplate and a device id",
            ),
            (
                vec![("v", "1"), ("name", "a")],
                "neither a nameplate nor a device id",
            ),
            (
                vec![("v", "1"), ("np", "1"), ("NP", "2"), ("name", "a")],
                "duplicate TXT key",
            ),
            (
                vec![("v", "1"), ("np", "1"), ("name", "a"), ("pad", &big)],
                "TXT record too large",
            ),
        ];
        for (props, why) in cases {
            let got = parse_txt(props.iter().map(|(k, v)| (*k, Some(v.as_bytes()))));
            assert_eq!(got, Err(Invalid(why)), "{props:?}");
        }
        let raw: [(&str, Option<&[u8]>); 3] = [
            ("v", Some(&b"1"[..])),
            ("np", Some(&b"417"[..])),
            ("name", Some(b"\xff\xfe")),
        ];
        assert_eq!(parse_txt(raw), Err(Invalid("TXT value is not UTF-8")));
        let raw: [(&str, Option<&[u8]>); 3] = [
            ("v", Some(&b"1"[..])),
            ("np", None),
            ("name", Some(&b"a"[..])),
        ];
        assert_eq!(parse_txt(raw), Err(Invalid("TXT key without a value")));
        // Too many keys, even unknown ones.
        let many: Vec<String> = (0..=MAX_TXT_KEYS).map(|i| format!("k{i}")).collect();
        assert_eq!(
            parse_txt(many.iter().map(|k| (k.as_str(), None))),
            Err(Invalid("too many TXT keys"))
        );
    }

    #[test]
    fn names_from_the_network_are_escaped_for_display() {
        let r = parse_txt(txt(&[
            ("v", "1"),
            ("np", "9"),
            ("name", "evil\u{202e}txt.exe\x1b[2J"),
        ]));
        let Ok(Record::Transfer { name, .. }) = r else {
            panic!("{r:?}")
        };
        assert!(
            !name.contains('\u{202e}') && !name.contains('\x1b'),
            "{name}"
        );
        assert!(name.starts_with("evil\\u{202e}"), "{name}");
    }

    #[test]
    fn own_names_are_clamped_at_a_character_boundary() {
        assert_eq!(clamp_name("  laptop \n"), "laptop");
        assert_eq!(clamp_name(""), "skiff device");
        let long = "é".repeat(40); // 80 bytes
        let c = clamp_name(&long);
        assert!(
            c.len() <= MAX_NAME_BYTES && c.chars().all(|ch| ch == 'é'),
            "{c}"
        );
        // What we write, we accept.
        let r = parse_txt(txt(&[("v", "1"), ("np", "5"), ("name", &c)]));
        assert!(r.is_ok(), "{r:?}");
    }

    #[test]
    fn only_dialable_addresses_ipv4_first_and_bounded() {
        let ips: Vec<(IpAddr, u32)> = [
            ("fe80::1", 3),
            ("fe80::2", 0), // link-local without an interface: undialable
            ("2001:db8::5", 7),
            ("127.0.0.1", 0),
            ("0.0.0.0", 0),
            ("224.0.0.251", 0),
            ("255.255.255.255", 0),
            ("::1", 0),
            ("::", 0),
            ("ff02::fb", 0),
            ("::ffff:10.0.0.9", 0),
            ("192.168.1.20", 0),
            ("192.168.1.20", 0),
            ("10.0.0.7", 0),
        ]
        .iter()
        .map(|(s, scope)| (s.parse().unwrap(), *scope))
        .collect();
        let got: Vec<String> = usable_addrs(ips.clone(), 9000)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            [
                "10.0.0.7:9000",
                "192.168.1.20:9000",
                "[2001:db8::5]:9000",
                "[fe80::1%3]:9000"
            ]
        );
        // What we print, the dialer parses back (scope included).
        let back: SocketAddr = got[3].parse().unwrap();
        assert_eq!(scope_of(&back), 3);
        assert!(usable_addrs(ips, 0).is_empty());
        let many = (0..100u8).map(|i| (IpAddr::from([10, 0, 1, i]), 0));
        assert_eq!(usable_addrs(many, 1).len(), MAX_ADDRS);
    }

    #[test]
    fn adverts_need_a_lan_address_and_valid_fields() {
        let lo: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        assert!(!advertisable(&lo));
        assert!(!advertisable(&"0.0.0.0:0".parse().unwrap()));
        assert!(advertisable(&"0.0.0.0:9000".parse().unwrap()));
        // Refused before any daemon starts (so no packet leaves this machine).
        assert!(matches!(
            LanAdvert::transfer("417", lo, "x"),
            Err(Error::InvalidInput { .. })
        ));
        let any: SocketAddr = "0.0.0.0:9000".parse().unwrap();
        for np in ["", "0", "417-river", "1234567890"] {
            assert!(matches!(
                LanAdvert::transfer(np, any, "x"),
                Err(Error::InvalidInput { .. })
            ));
        }
        assert!(matches!(
            LanAdvert::device("no spaces", "x", any),
            Err(Error::InvalidInput { .. })
        ));
        assert!(matches!(
            LanAdvert::transfer_on_server("417", lo, "x"),
            Err(Error::InvalidInput { .. })
        ));
        assert!(matches!(
            LanAdvert::transfer_on_server("417-river", any, "x"),
            Err(Error::InvalidInput { .. })
        ));
    }
}
