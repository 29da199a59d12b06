//! Other Skiff apps on the LAN, for the embedded mode: this app's device is announced over
//! mDNS with its embedded signaling server's port (`skiff_core::lan::LanAdvert::device`),
//! and the devices other apps announce are kept in a list (`browse_devices`), each with
//! the addresses of its own embedded server (`ws://ADDR:PORT/ws`, where it is online in
//! `skiff_core::lan::LAN_SPACE`).
//!
//! Owns: one task per run (on the app's `TaskTracker`, with a child token; [`Lan::stop`]
//! ends it and withdraws the record), and the published list ([`LanPeer`]s in a
//! `watch`, this device excluded, at most `skiff_core::lan::MAX_DEVICES`).
//! Must not: trust what a record says (ids, names and addresses are validated by
//! `skiff_core::lan`, names escaped for display; a transfer authenticates the device key),
//! run while the embedded server is off or bound to loopback (nothing to announce), or
//! block the runtime.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use skiff_core::lan::{self, LanAdvert, LanDevice, LanEvent};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Another Skiff app seen on the LAN. Its id and name are what it says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanPeer {
    /// Its device id (the public half of its device key), as `Node::send_to` takes it.
    pub device_id: String,
    /// Escaped for display.
    pub name: String,
    /// Its embedded server's addresses, IPv4 first.
    pub addrs: Vec<SocketAddr>,
}

impl LanPeer {
    /// The URL of its embedded server shown to the user (the first usable address).
    pub fn url(&self) -> Option<String> {
        self.addrs.iter().find_map(lan::signal_url_of)
    }
}

impl From<LanDevice> for LanPeer {
    fn from(d: LanDevice) -> Self {
        LanPeer {
            device_id: d.id,
            name: d.name,
            addrs: d.addrs,
        }
    }
}

/// What this app announces about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Me {
    pub device_id: String,
    pub name: String,
    /// Where the embedded server listens (e.g. `0.0.0.0:47231`).
    pub server: SocketAddr,
}

/// A running announcement and browse; see the module docs.
#[derive(Debug)]
pub struct Lan {
    me: Me,
    stop: CancellationToken,
}

impl Lan {
    /// Announces `me` and publishes the other apps on the LAN into `out` until stopped
    /// (or until `parent` is cancelled).
    pub fn start(
        tasks: &TaskTracker,
        parent: &CancellationToken,
        me: Me,
        out: watch::Sender<Vec<LanPeer>>,
    ) -> Lan {
        let stop = parent.child_token();
        tasks.spawn(run(me.clone(), out, stop.clone()));
        Lan { me, stop }
    }

    /// What it announces.
    pub fn me(&self) -> &Me {
        &self.me
    }

    /// Ends the task: the record is withdrawn (goodbye) and the list emptied.
    pub fn stop(self) {
        self.stop.cancel();
    }
}

async fn run(me: Me, out: watch::Sender<Vec<LanPeer>>, stop: CancellationToken) {
    let advert = LanAdvert::device(&me.device_id, &me.name, me.server)
        .inspect_err(|e| tracing::warn!("this device is not announced on the LAN: {e}"))
        .ok();
    match lan::browse_devices() {
        Ok(mut browser) => {
            let mut seen: BTreeMap<String, LanPeer> = BTreeMap::new();
            loop {
                let event = tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    e = browser.next() => e,
                };
                let changed = match event {
                    Some(LanEvent::Added(d)) if d.id != me.device_id => {
                        let peer = LanPeer::from(d);
                        seen.insert(peer.device_id.clone(), peer.clone()) != Some(peer)
                    }
                    Some(LanEvent::Removed { id }) => seen.remove(&id).is_some(),
                    Some(LanEvent::Added(_)) => false,
                    None => {
                        tracing::warn!("LAN discovery stopped: the mDNS daemon ended");
                        break;
                    }
                };
                if changed {
                    out.send_replace(publish(&seen));
                }
            }
        }
        Err(e) => tracing::warn!("cannot look for other apps on the LAN: {e}"),
    }
    // The browse may end early; the announcement lasts until the stop.
    stop.cancelled().await;
    out.send_replace(Vec::new());
    if let Some(a) = advert {
        a.close().await;
    }
}

/// The list as shown: by name (case-insensitively), then id; only apps with a usable URL.
fn publish(seen: &BTreeMap<String, LanPeer>) -> Vec<LanPeer> {
    let mut list: Vec<LanPeer> = seen
        .values()
        .filter(|p| p.url().is_some())
        .cloned()
        .collect();
    list.sort_by(|a, b| {
        (a.name.to_lowercase(), &a.device_id).cmp(&(b.name.to_lowercase(), &b.device_id))
    });
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str, name: &str, addrs: &[&str]) -> LanPeer {
        LanPeer {
            device_id: id.into(),
            name: name.into(),
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn the_list_is_sorted_by_name_and_keeps_only_reachable_servers() {
        let mut seen = BTreeMap::new();
        for p in [
            peer("b", "desk", &["10.0.0.2:47231"]),
            peer("a", "Attic", &["[fe80::1%2]:47231", "10.0.0.3:47231"]),
            peer("c", "only-link-local", &["[fe80::1%2]:47231"]),
        ] {
            seen.insert(p.device_id.clone(), p);
        }
        let list = publish(&seen);
        let names: Vec<&str> = list.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["Attic", "desk"]);
        assert_eq!(list[0].url().as_deref(), Some("ws://10.0.0.3:47231/ws"));
    }
}
