//! Session crypto: SPAKE2, the HKDF-SHA256 key schedule, key confirmation and the
//! AES-256-GCM frame sealer/opener.
//!
//! Owns: every key and nonce. A (key, nonce) pair is never reused: one key per
//! direction per connection, nonce = 0u32 ‖ counter, counter strictly increasing.
//! Must not: do I/O, log key material, or accept a frame whose counter is not the next one.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use skiff_proto::frame::{COUNTER_LEN, TAG_LEN};
use spake2::{Ed25519Group, Identity, Password, Spake2};

use crate::{Error, Result};

/// Which end of a transfer this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Sender,
    Receiver,
}

/// A 256-bit secret (SPAKE2 output, resume secret, derived keys).
pub type Secret = [u8; 32];

/// In-progress SPAKE2 exchange.
pub struct Pake {
    state: Spake2<Ed25519Group>,
}

impl Pake {
    /// Starts SPAKE2 for `role`; protocol version and nameplate are bound into the identities.
    pub fn start(role: Role, nameplate: &str, password: &str) -> (Self, Vec<u8>) {
        let pw = Password::new(password.as_bytes());
        let a = Identity::new(format!("skiff/1/sender/{nameplate}").as_bytes());
        let b = Identity::new(format!("skiff/1/receiver/{nameplate}").as_bytes());
        let (state, msg) = match role {
            Role::Sender => Spake2::<Ed25519Group>::start_a(&pw, &a, &b),
            Role::Receiver => Spake2::<Ed25519Group>::start_b(&pw, &a, &b),
        };
        (Self { state }, msg)
    }

    /// Finishes with the peer's message; the result is only trusted after key confirmation.
    pub fn finish(self, peer_msg: &[u8]) -> Result<Secret> {
        let key = self
            .state
            .finish(peer_msg)
            .map_err(|e| Error::protocol(format!("bad PAKE message: {e:?}")))?;
        key.as_slice()
            .try_into()
            .map_err(|_| Error::protocol("PAKE key has the wrong length"))
    }
}

/// Keys of one connection, derived from a base secret.
pub struct SessionKeys {
    s2r: Secret,
    r2s: Secret,
    confirm_s: Secret,
    confirm_r: Secret,
    /// Resume secret (meaningful for PAKE sessions; resumed sessions keep the stored one).
    pub resume: Secret,
}

fn expand(hk: &Hkdf<Sha256>, label: &[u8]) -> Secret {
    let mut out = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's 8160-byte output limit.
    let _ = hk.expand(label, &mut out);
    out
}

impl SessionKeys {
    /// Keys of a fresh session from the SPAKE2 output.
    pub fn from_pake(k: &Secret) -> Self {
        Self::derive(k)
    }

    /// Keys of a resumed session: fresh nonces from both ends make fresh keys.
    pub fn from_resume(
        resume_secret: &Secret,
        dialer_nonce: &[u8; 32],
        listener_nonce: &[u8; 32],
    ) -> Self {
        let mut salt = [0u8; 64];
        salt[..32].copy_from_slice(dialer_nonce);
        salt[32..].copy_from_slice(listener_nonce);
        let hk = Hkdf::<Sha256>::new(Some(&salt), resume_secret);
        let base = expand(&hk, b"skiff/1 resume session");
        let mut keys = Self::derive(&base);
        keys.resume = *resume_secret;
        keys
    }

    fn derive(base: &Secret) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(b"skiff/1"), base);
        Self {
            s2r: expand(&hk, b"skiff/1 data sender->receiver"),
            r2s: expand(&hk, b"skiff/1 data receiver->sender"),
            confirm_s: expand(&hk, b"skiff/1 confirm sender"),
            confirm_r: expand(&hk, b"skiff/1 confirm receiver"),
            resume: expand(&hk, b"skiff/1 resume"),
        }
    }

    /// This side's key confirmation value.
    pub fn confirm_mine(&self, role: Role) -> Secret {
        confirm_mac(match role {
            Role::Sender => &self.confirm_s,
            Role::Receiver => &self.confirm_r,
        })
    }

    /// Checks the peer's key confirmation in constant time.
    pub fn check_theirs(&self, role: Role, theirs: &[u8]) -> Result<()> {
        let key = match role {
            Role::Sender => &self.confirm_r,
            Role::Receiver => &self.confirm_s,
        };
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(key).map_err(|_| Error::CodeMismatch)?;
        mac.update(b"skiff/1 key confirmation");
        mac.verify_slice(theirs).map_err(|_| Error::CodeMismatch)
    }

    /// The sealer for frames this side sends and the opener for frames it receives.
    pub fn into_ciphers(self, role: Role) -> (Sealer, Opener) {
        let (tx, rx) = match role {
            Role::Sender => (self.s2r, self.r2s),
            Role::Receiver => (self.r2s, self.s2r),
        };
        (Sealer::new(&tx), Opener::new(&rx))
    }
}

fn confirm_mac(key: &Secret) -> Secret {
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) else {
        return [0; 32]; // HMAC takes keys of any length: unreachable
    };
    mac.update(b"skiff/1 key confirmation");
    mac.finalize().into_bytes().into()
}

/// Rendezvous id of a transfer: public, derived one-way from the resume secret.
pub fn rendezvous(resume_secret: &Secret) -> Secret {
    let hk = Hkdf::<Sha256>::new(Some(b"skiff/1"), resume_secret);
    expand(&hk, b"skiff/1 rendezvous")
}

/// A device session's secret (peer-list sends), from its Noise handshake hash: it plays
/// the part of a code's PAKE key (resume secret of the transfer).
pub fn peer_session_secret(handshake_hash: &[u8]) -> Secret {
    let hk = Hkdf::<Sha256>::new(Some(b"skiff/1"), handshake_hash);
    expand(&hk, b"skiff/1 device session")
}

/// Signaling space where the two ends of a transfer meet again (resume, new paths):
/// public, one-way from the resume secret, and distinct from [`rendezvous`].
pub fn rendezvous_space(resume_secret: &Secret) -> String {
    let hk = Hkdf::<Sha256>::new(Some(b"skiff/1"), resume_secret);
    let space = expand(&hk, b"skiff/1 rendezvous space");
    format!("rv-{}", hex::encode(&space[..24]))
}

fn nonce(counter: u64) -> Nonce<aes_gcm::aead::consts::U12> {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n.into()
}

/// Seals outgoing frames; owns the send counter.
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
    next: u64,
}

impl Sealer {
    fn new(key: &Secret) -> Self {
        Self {
            cipher: Aes256Gcm::new(key.into()),
            next: 0,
        }
    }

    /// Reserves the next counter and returns a one-shot sealer for it, so the
    /// (CPU-heavy) sealing can run off the async runtime while order is kept.
    pub fn reserve(&mut self) -> SealJob {
        let counter = self.next;
        self.next += 1;
        SealJob {
            cipher: self.cipher.clone(),
            counter,
        }
    }
}

/// Sealing of one frame with a reserved counter.
pub struct SealJob {
    cipher: Aes256Gcm,
    counter: u64,
}

impl SealJob {
    /// `frame` holds `COUNTER_LEN` reserved bytes followed by the plaintext; on return it
    /// is the sealed frame `counter ‖ ciphertext ‖ tag`.
    pub fn seal(self, frame: &mut Vec<u8>) -> Result<()> {
        if frame.len() < COUNTER_LEN {
            return Err(Error::protocol("frame without counter room"));
        }
        frame[..COUNTER_LEN].copy_from_slice(&self.counter.to_be_bytes());
        let (head, body) = frame.split_at_mut(COUNTER_LEN);
        let tag = self
            .cipher
            .encrypt_in_place_detached(&nonce(self.counter), &ad(head), body)
            .map_err(|_| Error::protocol("frame too large to seal"))?;
        frame.extend_from_slice(&tag);
        Ok(())
    }
}

fn ad(counter: &[u8]) -> [u8; 15] {
    let mut ad = [0u8; 15];
    ad[..7].copy_from_slice(b"skiff/1");
    ad[7..].copy_from_slice(counter);
    ad
}

/// Opens incoming frames; accepts only the next counter.
#[derive(Clone)]
pub struct Opener {
    cipher: Aes256Gcm,
    next: u64,
}

impl Opener {
    fn new(key: &Secret) -> Self {
        Self {
            cipher: Aes256Gcm::new(key.into()),
            next: 0,
        }
    }

    /// Checks the counter and reserves it; the returned job decrypts off the runtime.
    pub fn reserve(&mut self, frame: &[u8]) -> Result<OpenJob> {
        let (counter, _) =
            skiff_proto::frame::split_sealed(frame).map_err(|e| Error::protocol(e.to_string()))?;
        if counter != self.next {
            return Err(Error::Replay {
                expected: self.next,
                got: counter,
            });
        }
        self.next += 1;
        Ok(OpenJob {
            cipher: self.cipher.clone(),
            counter,
        })
    }
}

/// Decryption of one frame whose counter was checked.
pub struct OpenJob {
    cipher: Aes256Gcm,
    counter: u64,
}

impl OpenJob {
    /// Decrypts in place; the plaintext is `frame[COUNTER_LEN..]` afterwards (the tag is cut).
    pub fn open(self, frame: &mut Vec<u8>) -> Result<()> {
        if frame.len() < COUNTER_LEN + TAG_LEN {
            return Err(Error::Decrypt);
        }
        let tag_at = frame.len() - TAG_LEN;
        let tag = Tag::clone_from_slice(&frame[tag_at..]);
        frame.truncate(tag_at);
        let (head, body) = frame.split_at_mut(COUNTER_LEN);
        self.cipher
            .decrypt_in_place_detached(&nonce(self.counter), &ad(head), body, &tag)
            .map_err(|_| Error::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(pw_s: &str, pw_r: &str) -> (SessionKeys, SessionKeys) {
        let (s, ms) = Pake::start(Role::Sender, "42", pw_s);
        let (r, mr) = Pake::start(Role::Receiver, "42", pw_r);
        let ks = s.finish(&mr).unwrap();
        let kr = r.finish(&ms).unwrap();
        (SessionKeys::from_pake(&ks), SessionKeys::from_pake(&kr))
    }

    #[test]
    fn same_code_confirms_and_wrong_code_mismatches() {
        let (s, r) = pair("river-olive-kitten", "river-olive-kitten");
        r.check_theirs(Role::Receiver, &s.confirm_mine(Role::Sender))
            .unwrap();
        s.check_theirs(Role::Sender, &r.confirm_mine(Role::Receiver))
            .unwrap();
        assert_eq!(s.resume, r.resume);
        let (s, r) = pair("river-olive-kitten", "river-olive-mango");
        assert!(matches!(
            r.check_theirs(Role::Receiver, &s.confirm_mine(Role::Sender)),
            Err(Error::CodeMismatch)
        ));
        // A reflected confirmation never passes.
        assert!(s
            .check_theirs(Role::Sender, &s.confirm_mine(Role::Sender))
            .is_err());
    }

    fn sealed(sealer: &mut Sealer, plain: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; COUNTER_LEN];
        f.extend_from_slice(plain);
        sealer.reserve().seal(&mut f).unwrap();
        f
    }

    #[test]
    fn frames_open_in_order_only() {
        let (s, r) = pair("a-b-c", "a-b-c");
        let (mut tx, _) = s.into_ciphers(Role::Sender);
        let (_, mut rx) = r.into_ciphers(Role::Receiver);
        let f0 = sealed(&mut tx, b"zero");
        let f1 = sealed(&mut tx, b"one");
        // Reordered: refused before decryption.
        assert!(matches!(
            rx.reserve(&f1),
            Err(Error::Replay {
                expected: 0,
                got: 1
            })
        ));
        let mut g0 = f0.clone();
        rx.reserve(&g0).unwrap().open(&mut g0).unwrap();
        assert_eq!(&g0[COUNTER_LEN..], b"zero");
        // Replayed.
        assert!(matches!(rx.reserve(&f0), Err(Error::Replay { .. })));
        let mut g1 = f1.clone();
        rx.reserve(&g1).unwrap().open(&mut g1).unwrap();
        assert_eq!(&g1[COUNTER_LEN..], b"one");
    }

    #[test]
    fn any_bit_flip_fails_to_open() {
        let (s, r) = pair("a-b-c", "a-b-c");
        let (mut tx, _) = s.into_ciphers(Role::Sender);
        let (_, rx) = r.into_ciphers(Role::Receiver);
        let frame = sealed(&mut tx, b"attack at dawn");
        for byte in 0..frame.len() {
            for bit in 0..8 {
                let mut f = frame.clone();
                f[byte] ^= 1 << bit;
                let mut o = rx.clone();
                let ok = o.reserve(&f).and_then(|job| job.open(&mut f)).is_ok();
                assert!(!ok, "flip of bit {bit} in byte {byte} went unnoticed");
            }
        }
    }

    #[test]
    fn directions_use_different_keys() {
        let (s, _) = pair("a-b-c", "a-b-c");
        let (mut tx, mut rx_same_side) = s.into_ciphers(Role::Sender);
        let mut f = sealed(&mut tx, b"x");
        // A frame reflected back at its sender does not open.
        let job = rx_same_side.reserve(&f).unwrap();
        assert!(job.open(&mut f).is_err());
    }

    #[test]
    fn resumed_sessions_get_fresh_keys() {
        let secret = [7u8; 32];
        let a = SessionKeys::from_resume(&secret, &[1; 32], &[2; 32]);
        let b = SessionKeys::from_resume(&secret, &[1; 32], &[3; 32]);
        assert_ne!(a.confirm_mine(Role::Sender), b.confirm_mine(Role::Sender));
        assert_eq!(a.resume, secret);
        assert_ne!(rendezvous(&secret), secret);
    }
}
