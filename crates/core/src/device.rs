//! This device's identity for peer-list sends, and the handshake that authenticates them.
//!
//! Owns: the device key (a Noise X25519 static key pair in `<data dir>/device.key`, 0600;
//! the device id shown to others is its public half in hex), the mutual-authentication
//! handshake between two devices (Noise XX via `snow`: both static keys are proven and the
//! session has forward secrecy), the session secret derived from its handshake hash (it
//! seeds the transfer exactly like a code's PAKE does), and the verification phrase both
//! screens show on first contact (from the handshake hash: a signaling server that ran
//! two handshakes of its own in the middle gets two different phrases).
//! Must not: send anything but Noise handshake messages before the handshake completes,
//! or accept a peer whose static key differs from the one pinned for it.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::crypto::Secret;
use crate::transport::Conn;
use crate::{Error, Result};

const NOISE: &str = "Noise_XX_25519_ChaChaPoly_SHA256";
/// Largest handshake message (the payloads are a short JSON hello).
const MAX_NOISE_MSG: usize = 2048;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Words in a verification phrase (44 bits).
pub const PHRASE_WORDS: usize = 4;

fn noise_err(e: impl std::fmt::Display) -> Error {
    Error::PeerVerification {
        reason: format!("device handshake: {e}"),
    }
}

/// This device's static key pair.
#[derive(Clone)]
pub struct DeviceKey {
    private: Vec<u8>,
    public: [u8; 32],
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceKey")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

impl DeviceKey {
    /// Loads `<data_dir>/device.key`, creating it (0600) on first use.
    pub fn load_or_create(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join("device.key");
        let io = |e: std::io::Error| Error::Io {
            context: format!("device key {}", path.display()),
            source: e,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let private = hex::decode(text.trim()).map_err(|_| Error::InvalidInput {
                    reason: format!(
                        "{} is damaged: delete it to make a new device key",
                        path.display()
                    ),
                })?;
                Self::from_private(private)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                crate::config::ensure_private_dir(data_dir)?;
                let kp = snow::Builder::new(params()?)
                    .generate_keypair()
                    .map_err(noise_err)?;
                let tmp = data_dir.join("device.key.tmp");
                {
                    use std::io::Write;
                    use std::os::unix::fs::OpenOptionsExt;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&tmp)
                        .map_err(io)?;
                    f.write_all(hex::encode(&kp.private).as_bytes())
                        .map_err(io)?;
                    f.sync_all().map_err(io)?;
                }
                // Two processes starting at once: the first rename wins, both read it.
                if std::fs::hard_link(&tmp, &path).is_err() && !path.exists() {
                    return Err(io(std::io::Error::other("cannot store the device key")));
                }
                let _ = std::fs::remove_file(&tmp);
                Self::load_or_create(data_dir)
            }
            Err(e) => Err(io(e)),
        }
    }

    fn from_private(private: Vec<u8>) -> Result<Self> {
        if private.len() != 32 {
            return Err(Error::InvalidInput {
                reason: "the device key has the wrong length".into(),
            });
        }
        let secret = x25519_public(&private)?;
        Ok(Self {
            private,
            public: secret,
        })
    }

    /// The device id others see: the public key in hex.
    pub fn id(&self) -> String {
        hex::encode(self.public)
    }
}

fn params() -> Result<snow::params::NoiseParams> {
    NOISE.parse().map_err(noise_err)
}

/// The X25519 public key of `private` (computed by running a throwaway handshake's key
/// setup, so that no curve arithmetic is done here).
fn x25519_public(private: &[u8]) -> Result<[u8; 32]> {
    let resolver = snow::resolvers::DefaultResolver;
    use snow::resolvers::CryptoResolver;
    let mut dh = resolver
        .resolve_dh(&snow::params::DHChoice::Curve25519)
        .ok_or_else(|| noise_err("no X25519"))?;
    dh.set(private);
    <[u8; 32]>::try_from(dh.pubkey()).map_err(noise_err)
}

/// What each side says about itself inside the encrypted part of the handshake.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceHello {
    v: u16,
    name: String,
}

/// The other device, as the handshake proved it.
#[derive(Debug, Clone)]
pub struct PeerDevice {
    /// Its public key in hex (its device id).
    pub id: String,
    /// Its self-chosen name: untrusted, escape before showing.
    pub name: String,
    /// Both screens show this on first contact.
    pub phrase: String,
}

/// The outcome of a device handshake.
pub struct DeviceSession {
    pub peer: PeerDevice,
    /// Seeds the transfer: stored as its resume secret, like a code's PAKE result.
    pub secret: Secret,
}

/// The verification phrase of a handshake hash.
fn phrase(hash: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::new()
        .chain_update(b"skiff/1 verification phrase")
        .chain_update(hash)
        .finalize();
    let list = skiff_proto::code::wordlist();
    let bits = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
    (0..PHRASE_WORDS)
        .map(|i| list[((bits >> (64 - 11 * (i + 1))) & 0x7ff) as usize])
        .collect::<Vec<_>>()
        .join("-")
}

async fn send_msg(conn: &mut Conn, msg: &[u8]) -> Result<()> {
    conn.sink.send(msg.to_vec()).await
}

async fn recv_msg(conn: &mut Conn) -> Result<Vec<u8>> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.stream.recv(MAX_NOISE_MSG))
        .await
        .map_err(|_| Error::Timeout {
            what: "waiting for the other device during the handshake",
        })??
        .ok_or(Error::ConnectionClosed)
}

fn finish(hs: snow::HandshakeState, hello: &[u8]) -> Result<DeviceSession> {
    let hello: DeviceHello = serde_json::from_slice(hello).map_err(noise_err)?;
    if hello.v != 1 {
        return Err(Error::protocol(format!(
            "the other device speaks device protocol {}",
            hello.v
        )));
    }
    let remote = hs
        .get_remote_static()
        .ok_or_else(|| noise_err("no remote key"))?;
    let hash = hs.get_handshake_hash();
    Ok(DeviceSession {
        peer: PeerDevice {
            id: hex::encode(remote),
            name: hello.name.chars().take(64).collect(),
            phrase: phrase(hash),
        },
        secret: crate::crypto::peer_session_secret(hash),
    })
}

fn hello(name: &str) -> Vec<u8> {
    serde_json::to_vec(&DeviceHello {
        v: 1,
        name: name.chars().take(64).collect(),
    })
    .unwrap_or_default()
}

/// Initiator (the sending device): Noise XX over `conn`.
pub async fn initiate(conn: &mut Conn, key: &DeviceKey, name: &str) -> Result<DeviceSession> {
    let mut hs = snow::Builder::new(params()?)
        .local_private_key(&key.private)
        .build_initiator()
        .map_err(noise_err)?;
    let mut buf = vec![0u8; MAX_NOISE_MSG];
    let n = hs.write_message(&[], &mut buf).map_err(noise_err)?;
    send_msg(conn, &buf[..n]).await?;
    let msg = recv_msg(conn).await?;
    let mut payload = vec![0u8; MAX_NOISE_MSG];
    let p = hs.read_message(&msg, &mut payload).map_err(noise_err)?;
    let theirs = payload[..p].to_vec();
    let n = hs
        .write_message(&hello(name), &mut buf)
        .map_err(noise_err)?;
    send_msg(conn, &buf[..n]).await?;
    finish(hs, &theirs)
}

/// Responder (the listening device): Noise XX over `conn`, whose first message is `first`.
pub async fn respond(
    conn: &mut Conn,
    key: &DeviceKey,
    name: &str,
    first: &[u8],
) -> Result<DeviceSession> {
    let mut hs = snow::Builder::new(params()?)
        .local_private_key(&key.private)
        .build_responder()
        .map_err(noise_err)?;
    let mut payload = vec![0u8; MAX_NOISE_MSG];
    hs.read_message(first, &mut payload).map_err(noise_err)?;
    let mut buf = vec![0u8; MAX_NOISE_MSG];
    let n = hs
        .write_message(&hello(name), &mut buf)
        .map_err(noise_err)?;
    send_msg(conn, &buf[..n]).await?;
    let msg = recv_msg(conn).await?;
    let p = hs.read_message(&msg, &mut payload).map_err(noise_err)?;
    let theirs = payload[..p].to_vec();
    finish(hs, &theirs)
}

/// Whether `peer` is a pinned device (`Ok(true)`), new (`Ok(false)`), or claims the name
/// of a pinned device with another key (refused).
pub fn check_pinned(pinned: &[(String, String)], peer: &PeerDevice) -> Result<bool> {
    if pinned.iter().any(|(id, _)| id == &peer.id) {
        return Ok(true);
    }
    if let Some((id, name)) = pinned
        .iter()
        .find(|(_, name)| name.eq_ignore_ascii_case(&peer.name))
    {
        return Err(Error::PeerVerification {
            reason: format!(
                "this device calls itself {:?} but is not the {:?} you trusted (key {}…, trusted {}…)",
                crate::names::display_escape(&peer.name),
                crate::names::display_escape(name),
                &peer.id[..12.min(peer.id.len())],
                &id[..12.min(id.len())]
            ),
        });
    }
    Ok(false)
}

/// First message of a connection, for a responder.
pub async fn first_message(conn: &mut Conn) -> Result<Vec<u8>> {
    recv_msg(conn).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::mem;

    #[tokio::test]
    async fn two_devices_authenticate_each_other_and_agree() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let ka = DeviceKey::load_or_create(da.path()).unwrap();
        let kb = DeviceKey::load_or_create(db.path()).unwrap();
        // Stable across loads.
        assert_eq!(DeviceKey::load_or_create(da.path()).unwrap().id(), ka.id());
        assert_ne!(ka.id(), kb.id());
        let (mut a, mut b) = mem::pair(8);
        let kb2 = kb.clone();
        let responder = tokio::spawn(async move {
            let first = first_message(&mut b).await.unwrap();
            respond(&mut b, &kb2, "bob", &first).await
        });
        let sa = initiate(&mut a, &ka, "alice").await.unwrap();
        let sb = responder.await.unwrap().unwrap();
        assert_eq!(sa.peer.id, kb.id());
        assert_eq!(sb.peer.id, ka.id());
        assert_eq!(sa.peer.name, "bob");
        assert_eq!(sb.peer.name, "alice");
        assert_eq!(sa.peer.phrase, sb.peer.phrase);
        assert_eq!(sa.peer.phrase.split('-').count(), PHRASE_WORDS);
        assert_eq!(sa.secret, sb.secret);
    }

    #[tokio::test]
    async fn a_tampered_handshake_fails_as_peer_verification() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let ka = DeviceKey::load_or_create(da.path()).unwrap();
        let kb = DeviceKey::load_or_create(db.path()).unwrap();
        let (mut a, mut b) = mem::pair(8);
        let responder = tokio::spawn(async move {
            let first = first_message(&mut b).await.unwrap();
            // Flip a bit of the responder's reply on its way out.
            let (mut c, mut d) = mem::pair(8);
            let r = respond(&mut c, &kb, "bob", &first);
            let relay = async {
                let mut m = d.stream.recv(MAX_NOISE_MSG).await.unwrap().unwrap();
                let last = m.len() - 1;
                m[last] ^= 1;
                b.sink.send(m).await.unwrap();
            };
            let (r, ()) = tokio::join!(tokio::time::timeout(Duration::from_millis(300), r), relay);
            drop(r);
        });
        let sa = initiate(&mut a, &ka, "alice").await;
        let e = sa.err().unwrap();
        assert_eq!(e.code(), "peer_verification_failed", "{e}");
        responder.await.unwrap();
    }

    #[test]
    fn a_damaged_key_file_is_an_error_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("device.key"), "not hex").unwrap();
        assert!(DeviceKey::load_or_create(d.path()).is_err());
    }
}
