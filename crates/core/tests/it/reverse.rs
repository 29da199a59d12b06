//! A hostile receiver against a real sending `Node` (it asks for files, offsets and bitmaps
//! outside the frozen manifest, sends file data, speaks unknown messages), and wrong codes
//! in both directions.

use std::future::Future;
use std::time::{Duration, Instant};

use skiff_core::session::{self, Channel};
use skiff_core::transport::tcp;
use skiff_core::{Error, Outcome, SendOptions, SendStarted};
use skiff_proto::code::ShareCode;
use skiff_proto::frame::{ChunkHeader, Plain, COUNTER_LEN};
use skiff_proto::manifest::{chunk_count, Entry, Manifest};
use skiff_proto::peer::{Have, ReceiverMsg, SenderMsg};

use crate::util::*;

const MARKER: &[u8] = b"TOP-SECRET-MARKER-7f3a9c";

fn sources(env: &Env) {
    std::fs::create_dir_all(env.src.join("sub")).unwrap();
    std::fs::write(env.src.join("a.bin"), bytes(3 * (1 << 20) + 7, 9)).unwrap();
    std::fs::write(env.src.join("sub/b.txt"), b"bee").unwrap();
}

async fn start_send(env: &Env) -> SendStarted {
    within(
        "send",
        env.node.send(
            vec![env.src.clone()],
            SendOptions {
                listen: "127.0.0.1:0".into(),
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap()
}

fn index_of(m: &Manifest, suffix: &str) -> u32 {
    m.entries
        .iter()
        .position(|e| e.path().ends_with(suffix))
        .unwrap_or_else(|| panic!("{suffix} not in {m:?}")) as u32
}

async fn send_msg(ch: &mut Channel, m: &ReceiverMsg) {
    // A failed write is fine: the sender may already have hung up.
    let _ = ch.tx.send_control(&m.encode()).await;
}

/// Everything the sender says until it closes: its error kind, and the chunks it sent,
/// each checked to lie inside the manifest.
async fn sender_replies(ch: &mut Channel, m: &Manifest) -> (Option<String>, Vec<Vec<u8>>) {
    let mut kind = None;
    let mut chunks = Vec::new();
    loop {
        let frame = match within("sender reply", ch.rx.recv()).await {
            Ok(Some(f)) => f,
            Ok(None) | Err(_) => return (kind, chunks),
        };
        match Plain::parse(&frame[COUNTER_LEN..]).unwrap() {
            Plain::Control(body) => {
                if let SenderMsg::Error { kind: k, .. } = SenderMsg::decode(body).unwrap() {
                    kind = Some(k);
                }
            }
            Plain::Chunk { header, data } => {
                let Some(Entry::File { size, .. }) = m.entries.get(header.file as usize) else {
                    panic!("chunk of a non-file {header:?}");
                };
                assert!(header.index < chunk_count(*size, m.chunk_size));
                chunks.push(data.to_vec());
            }
        }
    }
}

/// No descriptor of this process points at the file outside the manifest.
fn assert_secret_not_open(env: &Env) {
    let secret = env.home.join("secret.txt");
    for fd in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if let Ok(target) = std::fs::read_link(fd.path()) {
            assert_ne!(
                target, secret,
                "the sender opened a path outside its manifest"
            );
        }
    }
}

/// A real sender offers `env.src`; a hostile receiver authenticates with the right code,
/// reads the offer and runs `attack`. The sender must answer with a `protocol` error,
/// report it, send no byte from outside its manifest, and stay cancellable.
async fn reverse_attack<F, Fut>(env: &Env, attack: F) -> Option<String>
where
    F: FnOnce(Channel, Manifest) -> Fut,
    Fut: Future<Output = Channel>,
{
    let kind = attack_sender(env, attack).await;
    env.assert_outside_untouched();
    kind
}

/// [`reverse_attack`] without the final check that nothing changed outside `dest`.
async fn attack_sender<F, Fut>(env: &Env, attack: F) -> Option<String>
where
    F: FnOnce(Channel, Manifest) -> Fut,
    Fut: Future<Output = Channel>,
{
    let mut events = env.node.events();
    let started = start_send(env).await;
    let conn = tcp::dial(&started.listen).await.unwrap();
    let code = ShareCode::parse(&started.code).unwrap();
    let (mut ch, _) = within("dial", session::dial_pake(conn, &code))
        .await
        .unwrap();
    let frame = within("offer", ch.rx.recv()).await.unwrap().unwrap();
    let Plain::Control(body) = Plain::parse(&frame[COUNTER_LEN..]).unwrap() else {
        panic!("no offer")
    };
    let SenderMsg::Offer { manifest, .. } = SenderMsg::decode(body).unwrap() else {
        panic!("no offer")
    };
    let mut ch = attack(ch, manifest.clone()).await;
    let (kind, chunks) = sender_replies(&mut ch, &manifest).await;
    for c in &chunks {
        assert!(!c.windows(MARKER.len()).any(|w| w == MARKER));
    }
    if let Some(k) = &kind {
        wait_error_event(&mut events, &started.id, k).await;
    }
    assert_secret_not_open(env);
    // A resumable failure keeps the sender waiting for the receiver: cancel it. A final
    // one (say, the source changed) has ended the transfer already.
    let _ = within("cancel", env.node.cancel(&started.id)).await;
    match env.wait(&started.id).await {
        Outcome::Failed { kind: k, .. } => {
            assert!(k == "cancelled" || Some(&k) == kind.as_ref(), "{k}")
        }
        other => panic!("{other:?}"),
    }
    kind
}

fn accept_none() -> ReceiverMsg {
    ReceiverMsg::Accept { have: Vec::new() }
}

#[tokio::test]
async fn sender_rejects_retry_for_an_unknown_file() {
    let mut env = Env::new().await;
    sources(&env);
    env.mark();
    for target in ["999", "sub"] {
        let kind = reverse_attack(&env, |mut ch, m| async move {
            let file = target.parse().unwrap_or_else(|_| index_of(&m, target));
            send_msg(&mut ch, &accept_none()).await;
            send_msg(&mut ch, &ReceiverMsg::Retry { file, index: 0 }).await;
            ch
        })
        .await;
        assert_eq!(kind.as_deref(), Some("protocol"), "{target}");
    }
}

#[tokio::test]
async fn sender_rejects_chunk_index_past_eof() {
    let mut env = Env::new().await;
    sources(&env);
    env.mark();
    for index in [4, 1 << 63, u64::MAX] {
        let kind = reverse_attack(&env, |mut ch, m| async move {
            let file = index_of(&m, "a.bin");
            send_msg(&mut ch, &accept_none()).await;
            send_msg(&mut ch, &ReceiverMsg::Retry { file, index }).await;
            ch
        })
        .await;
        assert_eq!(kind.as_deref(), Some("protocol"), "{index}");
    }
}

#[tokio::test]
async fn sender_rejects_a_huge_bitmap() {
    let mut env = Env::new().await;
    sources(&env);
    env.mark();
    for chunks in ["A".repeat(1 << 20), "AAAAAAAA".into(), "!!".into()] {
        let kind = reverse_attack(&env, |mut ch, m| async move {
            let file = index_of(&m, "a.bin");
            let have = vec![Have {
                file,
                complete: false,
                chunks,
            }];
            send_msg(&mut ch, &ReceiverMsg::Accept { have }).await;
            ch
        })
        .await;
        assert_eq!(kind.as_deref(), Some("protocol"));
    }
}

#[tokio::test]
async fn sender_rejects_have_for_an_unknown_file() {
    let mut env = Env::new().await;
    sources(&env);
    env.mark();
    for target in ["4000000000", "sub"] {
        let kind = reverse_attack(&env, |mut ch, m| async move {
            let file = target.parse().unwrap_or_else(|_| index_of(&m, target));
            let have = vec![Have {
                file,
                complete: true,
                chunks: String::new(),
            }];
            send_msg(&mut ch, &ReceiverMsg::Accept { have }).await;
            ch
        })
        .await;
        assert_eq!(kind.as_deref(), Some("protocol"), "{target}");
    }
}

#[tokio::test]
async fn sender_rejects_file_data_from_the_receiver() {
    let mut env = Env::new().await;
    sources(&env);
    env.mark();
    for after_accept in [false, true] {
        let kind = reverse_attack(&env, |mut ch, _| async move {
            if after_accept {
                send_msg(&mut ch, &accept_none()).await;
            }
            let data = b"#!/bin/sh\nrm -rf ~\n";
            let mut f = session::frame_buffer(64);
            ChunkHeader {
                file: 0,
                index: 0,
                sha256: sha256(data),
            }
            .write_prefix(&mut f);
            f.extend_from_slice(data);
            let _ = ch.tx.send_frame(f).await;
            ch
        })
        .await;
        assert_eq!(kind.as_deref(), Some("protocol"));
    }
    // Nothing was written next to the sources.
    assert_eq!(listing(&env.src), vec!["a.bin", "sub", "sub/b.txt"]);
}

#[tokio::test]
async fn sender_rejects_unknown_message_types() {
    let mut env = Env::new().await;
    sources(&env);
    env.mark();
    let cases: [(bool, &[u8]); 4] = [
        (false, br#"{"type":"push_file","path":"/etc/passwd"}"#),
        (
            false,
            br#"{"type":"accept","have":[],"path":"/etc/shadow"}"#,
        ),
        (true, br#"{"type":"get","path":"../secret.txt"}"#),
        (true, b"not json at all"),
    ];
    for (after_accept, body) in cases {
        let kind = reverse_attack(&env, |mut ch, _| async move {
            if after_accept {
                send_msg(&mut ch, &accept_none()).await;
            }
            let _ = ch.tx.send_control(body).await;
            ch
        })
        .await;
        assert_eq!(kind.as_deref(), Some("protocol"));
    }
}

#[tokio::test]
async fn sender_never_serves_a_swapped_in_symlink() {
    // After the offer froze `a.bin`, it is replaced by a symlink to a secret file.
    let mut env = Env::new().await;
    sources(&env);
    env.mark();
    let (src, secret) = (env.src.join("a.bin"), env.home.join("secret.txt"));
    let kind = attack_sender(&env, |mut ch, _| async move {
        std::fs::remove_file(&src).unwrap();
        std::os::unix::fs::symlink(&secret, &src).unwrap();
        send_msg(&mut ch, &accept_none()).await;
        send_msg(&mut ch, &ReceiverMsg::Credit { bytes: 64 << 20 }).await;
        ch
    })
    .await;
    assert!(
        matches!(kind.as_deref(), Some("source_changed")),
        "{kind:?}"
    );
    // The secret itself is intact (the symlink the test planted is the only change).
    assert_eq!(
        std::fs::read(env.home.join("secret.txt")).unwrap(),
        MARKER.to_vec()
    );
    assert_no_engine_panic();
}

#[tokio::test]
async fn wrong_code_fails_fast_on_both_sides() {
    // A real sender, and a receiver with one word wrong.
    let mut env = Env::new().await;
    sources(&env);
    env.mark();
    let started = start_send(&env).await;
    let code = wrong_code(&ShareCode::parse(&started.code).unwrap());
    let t = Instant::now();
    let conn = tcp::dial(&started.listen).await.unwrap();
    let r = within("dial", session::dial_pake(conn, &code)).await;
    assert!(matches!(r, Err(Error::CodeMismatch)), "{:?}", r.err());
    assert_failed(&env.wait(&started.id).await, "code_mismatch");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    // A hostile sender, and a real receiver whose code differs from the sender's.
    let l = hostile_sender().await;
    let theirs = wrong_code(&l.code);
    let addr = l.addr.clone();
    let script = tokio::spawn(async move { l.accept().await.map(|_| ()) });
    let t = Instant::now();
    assert_err(
        env.receive(&theirs, &addr, SHORT_RECONNECT).await,
        "code_mismatch",
    );
    let r = within("script", script).await.unwrap();
    assert!(matches!(r, Err(Error::CodeMismatch)), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(listing(&env.dest), Vec::<String>::new());
    env.assert_outside_untouched();
    assert!(matches!(
        env.node.list().await.unwrap().as_slice(),
        [t] if t.state == "failed"
    ));
}

#[tokio::test]
async fn garbage_handshake_fails_cleanly() {
    // A "sender" that answers the receiver's hello with junk, oversized or unexpected
    // handshake frames: a clear error, before any name or byte is exchanged.
    use skiff_proto::handshake::ListenHello;
    let env = Env::new().await;
    let replies: Vec<(Vec<u8>, &str)> = vec![
        (b"not json".to_vec(), "protocol"),
        (vec![b'{'; 5000], "frame_too_large"),
        (
            ListenHello::Resume {
                version: 1,
                nonce: "00".repeat(32),
                confirm: "00".repeat(32),
            }
            .encode(),
            "protocol",
        ),
        (
            ListenHello::Pake {
                version: 1,
                msg: "zz".into(),
                confirm: "00".repeat(32),
            }
            .encode(),
            "protocol",
        ),
        (
            ListenHello::Refused {
                kind: "busy".into(),
                message: "\u{1b}[2J\u{1b}[Hall good".into(),
            }
            .encode(),
            "remote",
        ),
    ];
    for (reply, kind) in replies {
        let l = hostile_sender().await;
        let (code, addr) = (l.code.clone(), l.addr.clone());
        let script = tokio::spawn(async move {
            let (stream, _) = l.listener.accept().await.unwrap();
            let mut conn = tcp::wrap(stream);
            let hello = session::read_hello(&mut conn).await;
            let _ = conn.sink.send(reply).await;
            // Hold the connection until the receiver hangs up.
            let _ = conn.stream.recv(1 << 20).await;
            hello.is_ok()
        });
        let t = Instant::now();
        assert_err(env.receive(&code, &addr, SHORT_RECONNECT).await, kind);
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(within("script", script).await.unwrap());
    }
    assert_eq!(listing(&env.dest), Vec::<String>::new());
    env.assert_outside_untouched();
    assert!(env.node.list().await.unwrap().is_empty());
}
