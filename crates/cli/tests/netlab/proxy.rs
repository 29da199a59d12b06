//! A tampering signaling server: a WebSocket man in the middle in front of the real
//! `skiff-signal`, listening in the lab's `srv` namespace, rewriting the `blob` of the
//! clients' `send` messages on their way to the server.
//!
//! It runs in the test process on a thread of its own that has entered `srv`'s network
//! namespace (`setns` changes only the calling thread), with a current-thread runtime,
//! so every socket it makes lives in `srv`.
//!
//! Only client → server `send` frames are touched: a blob crosses the proxy twice (from
//! the sender's socket and to the receiver's) and tampering both legs could cancel out.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// What the proxy does to relayed blobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tamper {
    /// Replaces the SPAKE2 message of every cleartext handshake blob (JSON with a hex `msg`)
    /// with one the proxy made itself for a guessed password: a valid group element, so
    /// only key confirmation can notice. This is what an active attacker on the server does.
    PakeSubstitute,
    /// Changes one hex digit of the SPAKE2 message so that it is not a valid group
    /// element: the first peer to read one can only give up.
    PakeGarble,
    /// Leaves the handshake alone (the PAKE succeeds) and flips a byte in every sealed
    /// (non-JSON) blob after it: the path offer, SDP and ICE candidates.
    Sealed,
}

const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const B64_PAD: GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A running proxy; stops when dropped.
pub struct Proxy {
    /// Blobs relayed from clients, and how many of them were altered.
    pub relayed: Arc<AtomicUsize>,
    pub tampered: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Listens on `listen` inside namespace `ns` and forwards to `ws://upstream/ws`.
    pub fn start(ns: &str, listen: SocketAddr, upstream: SocketAddr, mode: Tamper) -> Proxy {
        let relayed = Arc::new(AtomicUsize::new(0));
        let tampered = Arc::new(AtomicUsize::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let ns_path = format!("/run/netns/{ns}");
        let (r, t) = (relayed.clone(), tampered.clone());
        let thread = std::thread::spawn(move || {
            let enter = || -> Result<(), String> {
                let f = std::fs::File::open(&ns_path).map_err(|e| format!("{ns_path}: {e}"))?;
                // SAFETY: setns on a valid namespace fd; affects only this thread.
                if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(format!(
                        "setns {ns_path}: {}",
                        std::io::Error::last_os_error()
                    ));
                }
                Ok(())
            };
            if let Err(e) = enter() {
                let _ = ready_tx.send(Err(e));
                return;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = match TcpListener::bind(listen).await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("bind {listen}: {e}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                tokio::pin!(stopped);
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        acc = listener.accept() => {
                            let Ok((sock, from)) = acc else { continue };
                            let (r, t) = (r.clone(), t.clone());
                            tokio::spawn(async move {
                                if let Err(e) = relay(sock, from, upstream, mode, r, t).await {
                                    eprintln!("tampering proxy: connection from {from}: {e}");
                                }
                            });
                        }
                    }
                }
            });
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("tampering proxy: {e}"),
            Err(_) => panic!("tampering proxy did not start"),
        }
        Proxy {
            relayed,
            tampered,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn relay(
    sock: TcpStream,
    from: SocketAddr,
    upstream: SocketAddr,
    mode: Tamper,
    relayed: Arc<AtomicUsize>,
    tampered: Arc<AtomicUsize>,
) -> Result<(), String> {
    let client = tokio_tungstenite::accept_async(sock)
        .await
        .map_err(|e| format!("accepting: {e}"))?;
    let mut req = format!("ws://{upstream}/ws")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    req.headers_mut().insert(
        "x-forwarded-for",
        from.ip().to_string().parse().map_err(|_| "header")?,
    );
    let up = TcpStream::connect(upstream)
        .await
        .map_err(|e| format!("connecting to {upstream}: {e}"))?;
    let (server, _) = tokio_tungstenite::client_async(req, up)
        .await
        .map_err(|e| format!("upstream handshake: {e}"))?;
    let (mut c_tx, mut c_rx) = client.split();
    let (mut s_tx, mut s_rx) = server.split();
    let to_server = async {
        while let Some(Ok(msg)) = c_rx.next().await {
            let msg = match msg {
                Message::Text(text) => {
                    relayed.fetch_add(1, Ordering::Relaxed);
                    match rewrite(text.as_str(), mode) {
                        Some(new) => {
                            tampered.fetch_add(1, Ordering::Relaxed);
                            Message::text(new)
                        }
                        None => Message::Text(text),
                    }
                }
                other => other,
            };
            let close = msg.is_close();
            if s_tx.send(msg).await.is_err() || close {
                break;
            }
        }
        let _ = s_tx.close().await;
    };
    let to_client = async {
        while let Some(Ok(msg)) = s_rx.next().await {
            let close = msg.is_close();
            if c_tx.send(msg).await.is_err() || close {
                break;
            }
        }
        let _ = c_tx.close().await;
    };
    // Either side ending ends both (like a server that drops the connection).
    tokio::select! {
        () = to_server => {}
        () = to_client => {}
    }
    Ok(())
}

/// The rewritten frame, if this one is a `send` whose blob `mode` alters.
fn rewrite(text: &str, mode: Tamper) -> Option<String> {
    let mut msg: Value = serde_json::from_str(text).ok()?;
    if msg["type"] != "send" {
        return None;
    }
    let blob = msg["blob"].as_str()?.to_owned();
    let padded = blob.ends_with('=');
    let mut bytes = B64.decode(blob.as_bytes()).ok()?;
    let clear: Option<Value> = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .filter(Value::is_object);
    let new_bytes = match (mode, clear) {
        (Tamper::PakeSubstitute | Tamper::PakeGarble, Some(mut hs)) => {
            let pake_msg = hs.get("msg")?.as_str()?.to_owned();
            let new = if mode == Tamper::PakeSubstitute {
                substitute_pake(&pake_msg)?
            } else {
                garble_hex(&pake_msg)
            };
            hs["msg"] = Value::String(new);
            serde_json::to_vec(&hs).ok()?
        }
        (Tamper::Sealed, None) if !bytes.is_empty() => {
            let i = bytes.len() / 2;
            bytes[i] ^= 0x20;
            bytes
        }
        _ => return None,
    };
    let enc = if padded {
        B64_PAD.encode(&new_bytes)
    } else {
        B64.encode(&new_bytes)
    };
    msg["blob"] = Value::String(enc);
    Some(msg.to_string())
}

/// A fresh SPAKE2 (Ed25519) message for the same side as `hex_msg`, made with a
/// password the attacker guessed: well formed, but from the wrong password.
fn substitute_pake(hex_msg: &str) -> Option<String> {
    use spake2::{Ed25519Group, Identity, Password, Spake2};
    let orig = hex::decode(hex_msg).ok()?;
    let guess = Password::new(b"42-guessed-wrong-words");
    let (a, b) = (Identity::new(b"a"), Identity::new(b"b"));
    let (_, msg) = match orig.first()? {
        b'A' => Spake2::<Ed25519Group>::start_a(&guess, &a, &b),
        b'B' => Spake2::<Ed25519Group>::start_b(&guess, &a, &b),
        _ => Spake2::<Ed25519Group>::start_symmetric(&guess, &a),
    };
    Some(hex::encode(msg))
}

/// `hex_msg` with one hex digit changed so that it is no longer a valid group element
/// (checked with a throwaway SPAKE2 state of the other side), so the peer that reads it
/// can only refuse: deterministic, unlike a random flip that may land on a valid point.
fn garble_hex(hex_msg: &str) -> String {
    use spake2::{Ed25519Group, Identity, Password, Spake2};
    let invalid = |candidate: &str| -> bool {
        let Ok(bytes) = hex::decode(candidate) else {
            return false;
        };
        let (pw, a, b) = (
            Password::new(b"x"),
            Identity::new(b"a"),
            Identity::new(b"b"),
        );
        let (reader, _) = match bytes.first() {
            Some(b'A') => Spake2::<Ed25519Group>::start_b(&pw, &a, &b),
            Some(b'B') => Spake2::<Ed25519Group>::start_a(&pw, &a, &b),
            _ => Spake2::<Ed25519Group>::start_symmetric(&pw, &a),
        };
        reader.finish(&bytes).is_err()
    };
    let chars: Vec<char> = hex_msg.chars().collect();
    // Skip the side byte (two hex digits); try each digit of the element in turn.
    for i in (2..chars.len()).rev() {
        for d in ['0', '5', 'a', 'f'] {
            if chars[i] == d {
                continue;
            }
            let mut c = chars.clone();
            c[i] = d;
            let candidate: String = c.into_iter().collect();
            if invalid(&candidate) {
                return candidate;
            }
        }
    }
    panic!("tampering proxy: no single-digit change makes {hex_msg} invalid");
}
