//! The hub: who is connected, which space each peer is in, and the nameplates.
//!
//! Owns: peer ids, presence per space, nameplate allocation/claim/release/expiry, the
//! relay rule ("only within a shared nameplate or space") and each peer's outbound queue.
//! Must not: await, do I/O, or read blobs; every method is a short critical section under
//! one mutex, and messages to peers go through their bounded [`Link`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rand::Rng;
use skiff_proto::signal::{
    DeviceId, ErrorCode, Nameplate, PeerId, PeerInfo, SealedBlob, ServerMsg, SpaceName,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::limits::IpKey;
use crate::metrics::Metrics;

/// Why the server ended a connection from outside its own task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kick {
    /// Its outbound queue passed the limit: drop it without waiting.
    SlowReader,
    /// The same device joined the same space again.
    Replaced,
}

/// The sending side of one connection: a byte-bounded queue of encoded messages.
#[derive(Debug)]
pub(crate) struct Link {
    tx: mpsc::UnboundedSender<String>,
    queued: AtomicUsize,
    max: usize,
    pub(crate) kicked: CancellationToken,
    kick: OnceLock<Kick>,
}

impl Link {
    pub(crate) fn new(max_bytes: usize) -> (Arc<Self>, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let link = Link {
            tx,
            queued: AtomicUsize::new(0),
            max: max_bytes,
            kicked: CancellationToken::new(),
            kick: OnceLock::new(),
        };
        (Arc::new(link), rx)
    }

    /// Queues a message; a reader too slow to keep the queue under the limit is kicked.
    pub(crate) fn push(&self, msg: &ServerMsg) -> bool {
        self.push_text(msg.encode())
    }

    pub(crate) fn push_text(&self, text: String) -> bool {
        let n = text.len();
        if self.kicked.is_cancelled() {
            return false;
        }
        if self.queued.fetch_add(n, Ordering::AcqRel) + n > self.max {
            self.kick(Kick::SlowReader);
            return false;
        }
        self.tx.send(text).is_ok()
    }

    /// Called by the writer once a message has left the queue.
    pub(crate) fn sent(&self, bytes: usize) {
        self.queued.fetch_sub(bytes, Ordering::AcqRel);
    }

    pub(crate) fn kick(&self, why: Kick) {
        let _ = self.kick.set(why);
        self.kicked.cancel();
    }

    pub(crate) fn kick_reason(&self) -> Option<Kick> {
        self.kick.get().copied()
    }
}

/// A presence space: the peers behind one public address, or a named space.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum SpaceKey {
    Ip(IpKey),
    Named(SpaceName),
}

#[derive(Debug)]
struct Member {
    info: PeerInfo,
    space: SpaceKey,
    link: Arc<Link>,
    rooms: Vec<u32>,
}

#[derive(Debug)]
struct Room {
    nameplate: Nameplate,
    members: Vec<PeerId>,
    /// Once a second peer has joined, nobody else ever can.
    claimed: bool,
    expires: Instant,
}

#[derive(Debug)]
pub(crate) struct Hub {
    ttl: Duration,
    max_rooms_per_peer: usize,
    metrics: Arc<Metrics>,
    peers: HashMap<PeerId, Member>,
    spaces: HashMap<SpaceKey, HashSet<PeerId>>,
    rooms: HashMap<u32, Room>,
}

const MAX_NAMEPLATE: u32 = 99_999_999;

impl Hub {
    pub(crate) fn new(ttl: Duration, max_rooms_per_peer: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            ttl,
            max_rooms_per_peer,
            metrics,
            peers: HashMap::new(),
            spaces: HashMap::new(),
            rooms: HashMap::new(),
        }
    }

    pub(crate) fn space_count(&self) -> usize {
        self.spaces.len()
    }

    pub(crate) fn nameplate_count(&self) -> usize {
        self.rooms.len()
    }

    #[cfg(test)]
    pub(crate) fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Adds a peer to its space and tells the others. Returns its id and a snapshot of the
    /// space. An older connection of the same device in the same space is replaced.
    pub(crate) fn join(
        &mut self,
        device_id: DeviceId,
        name: String,
        space: SpaceKey,
        link: Arc<Link>,
    ) -> (PeerId, Vec<PeerInfo>) {
        let stale: Vec<PeerId> = self
            .spaces
            .get(&space)
            .into_iter()
            .flatten()
            .filter(|id| {
                self.peers
                    .get(*id)
                    .is_some_and(|m| m.info.device_id == device_id)
            })
            .cloned()
            .collect();
        for id in stale {
            if let Some(m) = self.peers.get(&id) {
                m.link.kick(Kick::Replaced);
            }
            self.leave(&id);
        }
        let peer_id = loop {
            let id: u64 = rand::thread_rng().gen();
            let id = PeerId::try_from(format!("{id:016x}")).unwrap_or_else(|_| unreachable!());
            if !self.peers.contains_key(&id) {
                break id;
            }
        };
        let info = PeerInfo {
            peer_id: peer_id.clone(),
            device_id,
            name,
        };
        let members = self.spaces.entry(space.clone()).or_default();
        let mut snapshot = Vec::with_capacity(members.len());
        let joined = ServerMsg::PeerJoined { peer: info.clone() }.encode();
        for id in members.iter() {
            if let Some(m) = self.peers.get(id) {
                snapshot.push(m.info.clone());
                m.link.push_text(joined.clone());
            }
        }
        members.insert(peer_id.clone());
        self.peers.insert(
            peer_id.clone(),
            Member {
                info,
                space,
                link,
                rooms: Vec::new(),
            },
        );
        (peer_id, snapshot)
    }

    /// Removes a peer everywhere and tells whoever shared a space or nameplate with it.
    pub(crate) fn leave(&mut self, id: &PeerId) {
        let Some(member) = self.peers.remove(id) else {
            return;
        };
        if let Some(set) = self.spaces.get_mut(&member.space) {
            set.remove(id);
            if set.is_empty() {
                self.spaces.remove(&member.space);
            } else {
                let left = ServerMsg::PeerLeft {
                    peer_id: id.clone(),
                }
                .encode();
                for other in set.iter() {
                    if let Some(m) = self.peers.get(other) {
                        m.link.push_text(left.clone());
                    }
                }
            }
        }
        for n in member.rooms {
            self.remove_from_room(n, id);
        }
    }

    fn remove_from_room(&mut self, n: u32, id: &PeerId) {
        let Some(room) = self.rooms.get_mut(&n) else {
            return;
        };
        room.members.retain(|m| m != id);
        let nameplate = room.nameplate.clone();
        match room.members.first().cloned() {
            None => {
                self.rooms.remove(&n);
            }
            Some(other) => {
                if let Some(m) = self.peers.get(&other) {
                    m.link.push(&ServerMsg::NameplateLeft {
                        nameplate,
                        peer: id.clone(),
                    });
                }
            }
        }
    }

    fn pick_number(&self) -> u32 {
        let mut rng = rand::thread_rng();
        let live = u32::try_from(self.rooms.len()).unwrap_or(MAX_NAMEPLATE);
        // Short while few are live: 3 digits up to 100 live nameplates, 4 up to 1000, ...
        let mut upper = 999u32;
        while upper < MAX_NAMEPLATE && live.saturating_mul(10) > upper {
            upper = upper * 10 + 9;
        }
        loop {
            for _ in 0..32 {
                let n = rng.gen_range(1..=upper);
                if !self.rooms.contains_key(&n) {
                    return n;
                }
            }
            if upper >= MAX_NAMEPLATE {
                // 10⁸ live rooms cannot happen under the connection caps; scan to be total.
                return (1..=MAX_NAMEPLATE)
                    .find(|n| !self.rooms.contains_key(n))
                    .unwrap_or(1);
            }
            upper = upper * 10 + 9;
        }
    }

    pub(crate) fn allocate(&mut self, id: &PeerId, now: Instant) -> Result<Nameplate, ErrorCode> {
        let held = self.peers.get(id).map_or(0, |m| m.rooms.len());
        if held >= self.max_rooms_per_peer {
            return Err(ErrorCode::TooManyNameplates);
        }
        let n = self.pick_number();
        let nameplate = Nameplate::from_number(n).ok_or(ErrorCode::NameplateUnavailable)?;
        let room = Room {
            nameplate: nameplate.clone(),
            members: vec![id.clone()],
            claimed: false,
            expires: now + self.ttl,
        };
        self.rooms.insert(n, room);
        if let Some(m) = self.peers.get_mut(id) {
            m.rooms.push(n);
        }
        Ok(nameplate)
    }

    /// Joins a waiting nameplate. Unknown, expired, full and own nameplates all give
    /// the same error, so the answer reveals nothing about other rooms.
    pub(crate) fn claim(
        &mut self,
        id: &PeerId,
        nameplate: &Nameplate,
    ) -> Result<PeerId, ErrorCode> {
        let held = self.peers.get(id).map_or(0, |m| m.rooms.len());
        let n = nameplate.number();
        let room = self
            .rooms
            .get_mut(&n)
            .ok_or(ErrorCode::NameplateUnavailable)?;
        if room.claimed || room.members.len() != 1 || room.members[0] == *id {
            return Err(ErrorCode::NameplateUnavailable);
        }
        if held >= self.max_rooms_per_peer {
            return Err(ErrorCode::TooManyNameplates);
        }
        let allocator = room.members[0].clone();
        room.members.push(id.clone());
        room.claimed = true;
        if let Some(m) = self.peers.get_mut(id) {
            m.rooms.push(n);
        }
        if let Some(m) = self.peers.get(&allocator) {
            m.link.push(&ServerMsg::NameplateJoined {
                nameplate: nameplate.clone(),
                peer: id.clone(),
            });
        }
        Metrics::inc(&self.metrics.pairings);
        Ok(allocator)
    }

    pub(crate) fn release(&mut self, id: &PeerId, nameplate: &Nameplate) -> Result<(), ErrorCode> {
        let n = nameplate.number();
        let member = self.peers.get_mut(id).ok_or(ErrorCode::NotInNameplate)?;
        let before = member.rooms.len();
        member.rooms.retain(|r| *r != n);
        if member.rooms.len() == before {
            return Err(ErrorCode::NotInNameplate);
        }
        self.remove_from_room(n, id);
        Ok(())
    }

    /// Relays a blob if `from` and `to` share a nameplate or a space.
    pub(crate) fn relay(
        &self,
        from: &PeerId,
        to: &PeerId,
        blob: SealedBlob,
    ) -> Result<(), ErrorCode> {
        if from == to {
            return Err(ErrorCode::UnknownPeer);
        }
        let (Some(sender), Some(target)) = (self.peers.get(from), self.peers.get(to)) else {
            return Err(ErrorCode::UnknownPeer);
        };
        let shared =
            sender.space == target.space || sender.rooms.iter().any(|r| target.rooms.contains(r));
        if !shared {
            return Err(ErrorCode::UnknownPeer);
        }
        let bytes = blob.0.len() as u64;
        if target.link.push(&ServerMsg::Message {
            from: from.clone(),
            blob,
        }) {
            Metrics::inc(&self.metrics.messages_relayed);
            self.metrics
                .bytes_relayed
                .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// Frees nameplates whose second member did not come within the TTL.
    pub(crate) fn expire(&mut self, now: Instant) -> usize {
        let due: Vec<u32> = self
            .rooms
            .iter()
            .filter(|(_, r)| !r.claimed && r.expires <= now)
            .map(|(n, _)| *n)
            .collect();
        for n in &due {
            if let Some(room) = self.rooms.remove(n) {
                for id in &room.members {
                    if let Some(m) = self.peers.get_mut(id) {
                        m.rooms.retain(|r| r != n);
                        m.link.push(&ServerMsg::NameplateExpired {
                            nameplate: room.nameplate.clone(),
                        });
                    }
                }
            }
        }
        due.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Hub {
        Hub::new(Duration::from_secs(600), 4, Arc::new(Metrics::default()))
    }

    fn peer(hub: &mut Hub, device: &str, space: &str) -> (PeerId, mpsc::UnboundedReceiver<String>) {
        let (link, rx) = Link::new(256 * 1024);
        let space = SpaceKey::Named(SpaceName::try_from(space).unwrap());
        let (id, _) = hub.join(
            DeviceId::try_from(device).unwrap(),
            device.into(),
            space,
            link,
        );
        (id, rx)
    }

    #[tokio::test(start_paused = true)]
    async fn nameplates_are_short_random_and_freed() {
        let mut hub = hub();
        let (a, _rx) = peer(&mut hub, "a", "s");
        let now = Instant::now();
        let mut seen = HashSet::new();
        for _ in 0..4 {
            let np = hub.allocate(&a, now).unwrap();
            assert!(np.as_str().len() <= 3, "{np}");
            seen.insert(np);
        }
        assert_eq!(seen.len(), 4);
        assert_eq!(hub.allocate(&a, now), Err(ErrorCode::TooManyNameplates));
        for np in &seen {
            hub.release(&a, np).unwrap();
        }
        assert_eq!(hub.nameplate_count(), 0);
        assert_eq!(
            hub.release(&a, seen.iter().next().unwrap()),
            Err(ErrorCode::NotInNameplate)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unclaimed_nameplate_expires_and_claimed_one_does_not() {
        let mut hub = hub();
        let (a, mut rx_a) = peer(&mut hub, "a", "s1");
        let (b, _rx_b) = peer(&mut hub, "b", "s2");
        let now = Instant::now();
        let waiting = hub.allocate(&a, now).unwrap();
        let paired = hub.allocate(&a, now).unwrap();
        hub.claim(&b, &paired).unwrap();
        assert_eq!(hub.expire(now + Duration::from_secs(599)), 0);
        assert_eq!(hub.expire(now + Duration::from_secs(600)), 1);
        assert_eq!(hub.nameplate_count(), 1);
        assert_eq!(
            hub.claim(&b, &waiting),
            Err(ErrorCode::NameplateUnavailable)
        );
        let mut got = Vec::new();
        while let Ok(m) = rx_a.try_recv() {
            got.push(ServerMsg::decode(&m).unwrap());
        }
        assert!(got.contains(&ServerMsg::NameplateExpired { nameplate: waiting }));
    }

    #[test]
    fn slow_reader_is_kicked_instead_of_buffered() {
        let (link, _rx) = Link::new(1000);
        let big = ServerMsg::Pong { id: 1 }.encode();
        let mut pushed = 0;
        while link.push_text(big.clone()) {
            pushed += big.len();
            assert!(pushed <= 1000);
        }
        assert_eq!(link.kick_reason(), Some(Kick::SlowReader));
        assert!(link.kicked.is_cancelled());
    }
}
