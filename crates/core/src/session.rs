//! Authenticated sessions over a transport: the handshake (SPAKE2 or resume secret, key
//! confirmation) and the sealed channel that carries every later frame.
//!
//! Owns: the one "secure" transition; after it, no cleartext frame is sent or accepted.
//! Must not: send names, sizes or data before key confirmation succeeded both ways.

use std::time::Duration;

use skiff_proto::code::ShareCode;
use skiff_proto::frame::{COUNTER_LEN, KIND_CONTROL, MAX_FRAME};
use skiff_proto::handshake::{hex_field, Confirm, DialHello, ListenHello, MAX_HANDSHAKE_FRAME};
use skiff_proto::PEER_VERSION;

use crate::crypto::{Opener, Pake, Role, Sealer, Secret, SessionKeys};
use crate::transport::{Conn, FrameSink, FrameStream, PathKind};
use crate::{Error, Result};

/// Deadline for every handshake step.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames at least this large are sealed/opened on the blocking pool.
const OFFLOAD_BYTES: usize = 64 * 1024;

/// Sealed sending half.
pub struct SealedTx {
    sink: Box<dyn FrameSink>,
    sealer: Sealer,
}

/// Sealed receiving half.
pub struct SealedRx {
    stream: Box<dyn FrameStream>,
    opener: Opener,
}

/// An authenticated, encrypted session with the peer.
pub struct Channel {
    pub tx: SealedTx,
    pub rx: SealedRx,
    pub path: PathKind,
    pub remote: String,
}

/// A buffer with room for the counter in front, ready for [`SealedTx::send_frame`].
pub fn frame_buffer(capacity: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(COUNTER_LEN + capacity + skiff_proto::frame::TAG_LEN);
    v.resize(COUNTER_LEN, 0);
    v
}

impl SealedTx {
    /// Seals and sends a control message.
    pub async fn send_control(&mut self, body: &[u8]) -> Result<()> {
        let mut frame = frame_buffer(1 + body.len());
        frame.push(KIND_CONTROL);
        frame.extend_from_slice(body);
        self.send_frame(frame).await
    }

    /// Seals and sends a frame built with [`frame_buffer`].
    pub async fn send_frame(&mut self, mut frame: Vec<u8>) -> Result<()> {
        let job = self.sealer.reserve();
        if frame.len() >= OFFLOAD_BYTES {
            frame = tokio::task::spawn_blocking(move || job.seal(&mut frame).map(|()| frame))
                .await
                .map_err(|_| Error::protocol("sealing task failed"))??;
        } else {
            job.seal(&mut frame)?;
        }
        self.sink.send(frame).await
    }

    pub async fn close(&mut self) {
        let _ = self.sink.close().await;
    }
}

impl SealedRx {
    /// The next frame, opened: the plaintext is `frame[COUNTER_LEN..]`. `None` on close.
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>> {
        let Some(mut frame) = self.stream.recv(MAX_FRAME).await? else {
            return Ok(None);
        };
        let job = self.opener.reserve(&frame)?;
        if frame.len() >= OFFLOAD_BYTES {
            frame = tokio::task::spawn_blocking(move || job.open(&mut frame).map(|()| frame))
                .await
                .map_err(|_| Error::protocol("opening task failed"))??;
        } else {
            job.open(&mut frame)?;
        }
        Ok(Some(frame))
    }
}

async fn recv_clear(conn: &mut Conn) -> Result<Vec<u8>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.stream.recv(MAX_HANDSHAKE_FRAME)).await {
        Err(_) => Err(Error::Timeout {
            what: "waiting for the peer during the handshake",
        }),
        Ok(Ok(Some(f))) => Ok(f),
        Ok(Ok(None)) => Err(Error::ConnectionClosed),
        Ok(Err(e)) => Err(e),
    }
}

async fn send_clear(conn: &mut Conn, bytes: Vec<u8>) -> Result<()> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.sink.send(bytes)).await {
        Err(_) => Err(Error::Timeout {
            what: "sending the handshake",
        }),
        Ok(r) => r,
    }
}

fn into_channel(conn: Conn, keys: SessionKeys, role: Role) -> Channel {
    let (sealer, opener) = keys.into_ciphers(role);
    Channel {
        tx: SealedTx {
            sink: conn.sink,
            sealer,
        },
        rx: SealedRx {
            stream: conn.stream,
            opener,
        },
        path: conn.path,
        remote: conn.remote,
    }
}

fn proto(e: skiff_proto::ProtoError) -> Error {
    Error::protocol(e.to_string())
}

fn check_version(version: u16) -> Result<()> {
    if version == PEER_VERSION {
        Ok(())
    } else {
        Err(Error::protocol(format!(
            "peer speaks protocol {version}, this build speaks {PEER_VERSION}"
        )))
    }
}

fn refused(kind: String, message: String) -> Error {
    match kind.as_str() {
        "code_mismatch" => Error::CodeMismatch,
        "unknown_transfer" => Error::UnknownTransfer { id: message },
        _ => Error::Remote { kind, message },
    }
}

/// Receiver: dials with a share code. Returns the channel and the new resume secret.
pub async fn dial_pake(mut conn: Conn, code: &ShareCode) -> Result<(Channel, Secret)> {
    let (pake, msg) = Pake::start(Role::Receiver, code.nameplate(), &code.password());
    let hello = DialHello::Pake {
        version: PEER_VERSION,
        nameplate: code.nameplate().to_owned(),
        msg: hex::encode(msg),
    };
    send_clear(&mut conn, hello.encode()).await?;
    let reply = ListenHello::decode(&recv_clear(&mut conn).await?).map_err(proto)?;
    let (version, their_msg, confirm) = match reply {
        ListenHello::Pake {
            version,
            msg,
            confirm,
        } => (version, msg, confirm),
        ListenHello::Refused { kind, message } => return Err(refused(kind, message)),
        ListenHello::Resume { .. } => return Err(Error::protocol("unexpected resume reply")),
    };
    check_version(version)?;
    let their_msg = hex::decode(their_msg).map_err(|e| Error::protocol(e.to_string()))?;
    let keys = SessionKeys::from_pake(&pake.finish(&their_msg)?);
    let theirs = hex_field::<32>(&confirm).map_err(proto)?;
    // Send ours even when theirs is wrong, so that both sides report the mismatch.
    let ours = Confirm {
        confirm: hex::encode(keys.confirm_mine(Role::Receiver)),
    };
    send_clear(&mut conn, ours.encode()).await?;
    keys.check_theirs(Role::Receiver, &theirs)?;
    let resume = keys.resume;
    Ok((into_channel(conn, keys, Role::Receiver), resume))
}

/// Receiver: dials to resume with a stored secret (no code needed).
pub async fn dial_resume(mut conn: Conn, resume_secret: &Secret) -> Result<Channel> {
    let nonce: [u8; 32] = rand::random();
    let rendezvous = crate::crypto::rendezvous(resume_secret);
    let hello = DialHello::Resume {
        version: PEER_VERSION,
        rendezvous: hex::encode(rendezvous),
        nonce: hex::encode(nonce),
    };
    send_clear(&mut conn, hello.encode()).await?;
    let reply = ListenHello::decode(&recv_clear(&mut conn).await?).map_err(proto)?;
    let (version, their_nonce, confirm) = match reply {
        ListenHello::Resume {
            version,
            nonce,
            confirm,
        } => (version, nonce, confirm),
        ListenHello::Refused { kind, message } => return Err(refused(kind, message)),
        ListenHello::Pake { .. } => return Err(Error::protocol("unexpected PAKE reply")),
    };
    check_version(version)?;
    let their_nonce = hex_field::<32>(&their_nonce).map_err(proto)?;
    let keys = SessionKeys::from_resume(resume_secret, &nonce, &their_nonce);
    let theirs = hex_field::<32>(&confirm).map_err(proto)?;
    let ours = Confirm {
        confirm: hex::encode(keys.confirm_mine(Role::Receiver)),
    };
    send_clear(&mut conn, ours.encode()).await?;
    keys.check_theirs(Role::Receiver, &theirs)
        .map_err(|_| Error::PeerVerification {
            reason: "the resume keys did not match".into(),
        })?;
    Ok(into_channel(conn, keys, Role::Receiver))
}

/// Sender: reads the dialer's first frame.
pub async fn read_hello(conn: &mut Conn) -> Result<DialHello> {
    let hello = DialHello::decode(&recv_clear(conn).await?).map_err(proto)?;
    match &hello {
        DialHello::Pake { version, .. } | DialHello::Resume { version, .. } => {
            if let Err(e) = check_version(*version) {
                refuse(conn, "version", &e.to_string()).await;
                return Err(e);
            }
        }
    }
    Ok(hello)
}

/// Sender: tells the dialer why it will not talk, then drops the connection.
pub async fn refuse(conn: &mut Conn, kind: &str, message: &str) {
    let reply = ListenHello::Refused {
        kind: kind.to_owned(),
        message: message.to_owned(),
    };
    let _ = send_clear(conn, reply.encode()).await;
    let _ = conn.sink.close().await;
}

/// Sender: answers a PAKE hello. A wrong code gives [`Error::CodeMismatch`].
pub async fn accept_pake(
    mut conn: Conn,
    code: &ShareCode,
    dial_msg: &str,
) -> Result<(Channel, Secret)> {
    let their_msg = hex::decode(dial_msg).map_err(|e| Error::protocol(e.to_string()))?;
    let (pake, msg) = Pake::start(Role::Sender, code.nameplate(), &code.password());
    let keys = SessionKeys::from_pake(&pake.finish(&their_msg)?);
    let reply = ListenHello::Pake {
        version: PEER_VERSION,
        msg: hex::encode(msg),
        confirm: hex::encode(keys.confirm_mine(Role::Sender)),
    };
    send_clear(&mut conn, reply.encode()).await?;
    let confirm = Confirm::decode(&recv_clear(&mut conn).await?).map_err(proto)?;
    let theirs = hex_field::<32>(&confirm.confirm).map_err(proto)?;
    keys.check_theirs(Role::Sender, &theirs)?;
    let resume = keys.resume;
    Ok((into_channel(conn, keys, Role::Sender), resume))
}

/// Sender: answers a resume hello for the transfer whose secret matched the rendezvous.
pub async fn accept_resume(
    mut conn: Conn,
    resume_secret: &Secret,
    dial_nonce: &str,
) -> Result<Channel> {
    let their_nonce = hex_field::<32>(dial_nonce).map_err(proto)?;
    let nonce: [u8; 32] = rand::random();
    let keys = SessionKeys::from_resume(resume_secret, &their_nonce, &nonce);
    let reply = ListenHello::Resume {
        version: PEER_VERSION,
        nonce: hex::encode(nonce),
        confirm: hex::encode(keys.confirm_mine(Role::Sender)),
    };
    send_clear(&mut conn, reply.encode()).await?;
    let confirm = Confirm::decode(&recv_clear(&mut conn).await?).map_err(proto)?;
    let theirs = hex_field::<32>(&confirm.confirm).map_err(proto)?;
    keys.check_theirs(Role::Sender, &theirs)
        .map_err(|_| Error::PeerVerification {
            reason: "the resume keys did not match".into(),
        })?;
    Ok(into_channel(conn, keys, Role::Sender))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::mem;

    async fn handshake(
        sender_code: &str,
        receiver_code: &str,
    ) -> (Result<(Channel, Secret)>, Result<(Channel, Secret)>) {
        let (a, mut b) = mem::pair(8);
        let sc = ShareCode::parse(sender_code).unwrap();
        let rc = ShareCode::parse(receiver_code).unwrap();
        let recv = tokio::spawn(async move { dial_pake(a, &rc).await });
        let hello = read_hello(&mut b).await.unwrap();
        let DialHello::Pake { msg, .. } = hello else {
            panic!("not pake")
        };
        let send = accept_pake(b, &sc, &msg).await;
        (send, recv.await.unwrap())
    }

    #[tokio::test]
    async fn wrong_code_is_a_mismatch_on_both_sides() {
        let (s, r) = handshake("42-river-olive-kitten", "42-river-olive-mango").await;
        assert!(
            matches!(s, Err(Error::CodeMismatch)),
            "sender: {:?}",
            s.err()
        );
        assert!(
            matches!(r, Err(Error::CodeMismatch)),
            "receiver: {:?}",
            r.err()
        );
    }

    #[tokio::test]
    async fn right_code_gives_a_working_channel_and_shared_resume_secret() {
        let (s, r) = handshake("42-river-olive-kitten", "42-river-olive-kitten").await;
        let (mut s, ss) = s.unwrap();
        let (mut r, rs) = r.unwrap();
        assert_eq!(ss, rs);
        s.tx.send_control(b"hello").await.unwrap();
        let f = r.rx.recv().await.unwrap().unwrap();
        assert_eq!(&f[COUNTER_LEN..], b"\x01hello");
        // And a resume with the stored secret works without the code.
        let (a, mut b) = mem::pair(8);
        let dial = tokio::spawn(async move { dial_resume(a, &rs).await });
        let DialHello::Resume {
            rendezvous, nonce, ..
        } = read_hello(&mut b).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(rendezvous, hex::encode(crate::crypto::rendezvous(&ss)));
        let mut s2 = accept_resume(b, &ss, &nonce).await.unwrap();
        let mut r2 = dial.await.unwrap().unwrap();
        r2.tx.send_control(b"again").await.unwrap();
        assert_eq!(
            &s2.rx.recv().await.unwrap().unwrap()[COUNTER_LEN..],
            b"\x01again"
        );
    }
}
