//! A hostile sender in the data phase, against a real receiving `Node`: bad chunks, indexes
//! and lengths out of range, a wrong file digest, replayed / reordered / corrupted /
//! oversized / garbage frames, unknown messages, a flood that ignores credit.

use std::future::Future;
use std::io::Write as _;

use skiff_core::{Error, Outcome, Result};
use skiff_proto::frame::{COUNTER_LEN, MAX_FRAME};
use skiff_proto::manifest::Manifest;
use skiff_proto::peer::{decode_bitmap, ReceiverMsg, SenderMsg};

use crate::util::*;

const MIB: usize = 1 << 20;

/// Offers `m`, waits for `Accept`, runs `attack`; the hostile sender then stops listening.
/// Returns the receiver's outcome and the error kind it reported to the sender.
async fn attacked<F, Fut>(env: &Env, m: Manifest, attack: F) -> (Outcome, Option<String>)
where
    F: FnOnce(Script) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Script>> + Send + 'static,
{
    let l = hostile_sender().await;
    let (code, addr) = (l.code.clone(), l.addr.clone());
    let script = tokio::spawn(async move {
        let mut s = l.accept().await?;
        s.offer(&m).await?;
        s.accepted().await?;
        let mut s = attack(s).await?;
        Ok::<_, Error>(s.error_kind().await)
    });
    let offer = env.receive(&code, &addr, SHORT_RECONNECT).await.unwrap();
    let out = env.wait(&offer.id).await;
    let told = within("script", script).await.unwrap().unwrap();
    (out, told)
}

/// The attack failed the transfer with `kind`, told the sender so, created no file under
/// `final_name`, and touched nothing outside the destination.
#[track_caller]
fn assert_refused(
    env: &Env,
    (out, told): &(Outcome, Option<String>),
    kind: &str,
    final_name: &str,
) {
    assert_failed(out, kind);
    assert_eq!(told.as_deref(), Some(kind), "the sender was not told");
    let names = listing(&env.dest);
    assert!(
        !names
            .iter()
            .any(|n| n == final_name || n.ends_with(&format!("/{final_name}"))),
        "a failed file got its final name: {names:?}"
    );
    env.assert_outside_untouched();
}

async fn state_of(env: &Env, id_hint: usize) -> Vec<(String, Option<u64>)> {
    let list = env.node.list().await.unwrap();
    assert!(list.len() >= id_hint);
    list.into_iter().map(|t| (t.state, t.held)).collect()
}

#[tokio::test]
async fn bad_chunk_is_retried_then_fails() {
    let mut env = Env::new().await;
    let data = bytes(2 * MIB + 5, 1);
    let m = manifest(vec![file("photo.jpg", data.len() as u64)]);
    let d = data.clone();
    let r = attacked(&env, m, move |mut s| async move {
        s.chunk(0, 0, &d[..MIB]).await?;
        let good = &d[MIB..2 * MIB];
        let mut bad = good.to_vec();
        bad[7] ^= 0x10;
        for attempt in 0..3 {
            s.chunk_with(0, 1, &bad, sha256(good)).await?;
            if attempt < 2 {
                s.until(|m| matches!(m, ReceiverMsg::Retry { file: 0, index: 1 }).then_some(()))
                    .await?;
            }
        }
        Ok(s)
    })
    .await;
    assert_refused(&env, &r, "sender_data_corrupt", "photo.jpg");
    assert!(matches!(
        r.0,
        Outcome::Failed {
            resumable: false,
            ..
        }
    ));
    env.restart().await;
    assert_eq!(state_of(&env, 1).await[0].0, "failed");
    env.assert_normal_transfer_works().await;
}

#[tokio::test]
async fn chunk_index_out_of_range_fails() {
    let env = Env::new().await;
    let m = manifest(vec![dir("d"), file("d/x", 10)]);
    type Attack = fn(Script) -> std::pin::Pin<Box<dyn Future<Output = Result<Script>> + Send>>;
    let attacks: [(&str, Attack); 5] = [
        (
            "past the end (sender streams more than the size)",
            |mut s| {
                Box::pin(async move {
                    s.chunk(1, 0, &[7; 10]).await?;
                    s.chunk(1, 1, &[7; 10]).await?;
                    Ok(s)
                })
            },
        ),
        ("index u64::MAX", |mut s| {
            Box::pin(async move {
                s.chunk(1, u64::MAX, &[7; 10]).await?;
                Ok(s)
            })
        }),
        ("unknown file", |mut s| {
            Box::pin(async move {
                s.chunk(99, 0, &[7; 10]).await?;
                Ok(s)
            })
        }),
        ("a folder's id", |mut s| {
            Box::pin(async move {
                s.chunk(0, 0, &[7; 10]).await?;
                Ok(s)
            })
        }),
        ("file end of an unknown file", |mut s| {
            Box::pin(async move {
                let sha256 = sha_hex(b"");
                s.send(&SenderMsg::FileEnd {
                    file: u32::MAX,
                    sha256,
                })
                .await?;
                Ok(s)
            })
        }),
    ];
    for (what, attack) in attacks {
        let r = attacked(&env, m.clone(), attack).await;
        assert_refused(&env, &r, "protocol", "x");
        eprintln!("{what}: {:?}", r.0);
    }
    env.assert_normal_transfer_works().await;
}

#[tokio::test]
async fn chunk_of_the_wrong_length_fails() {
    let env = Env::new().await;
    let size = 2 * MIB + 10;
    let m = manifest(vec![file("f.bin", size as u64)]);
    for (index, len) in [(0u64, MIB - 1), (0, MIB + 1), (0, 0), (2, 11), (2, 9)] {
        let r = attacked(&env, m.clone(), move |mut s| async move {
            s.chunk(0, index, &vec![1; len]).await?;
            Ok(s)
        })
        .await;
        assert_refused(&env, &r, "protocol", "f.bin");
    }
}

#[tokio::test]
async fn wrong_file_digest_never_gets_the_final_name() {
    let mut env = Env::new().await;
    let data = bytes(100, 3);
    let m = manifest(vec![file("doc.txt", 100)]);
    let d = data.clone();
    let r = attacked(&env, m, move |mut s| async move {
        s.chunk(0, 0, &d).await?;
        s.send(&SenderMsg::FileEnd {
            file: 0,
            sha256: sha_hex(b"something else"),
        })
        .await?;
        Ok(s)
    })
    .await;
    assert_refused(&env, &r, "verification_failed", "doc.txt");
    assert_eq!(listing(&env.dest), vec!["doc.txt.skiff-part"]);
    env.restart().await;
    // Resumable, and the verified-then-mismatched chunks were dropped from the checkpoint.
    assert_eq!(
        state_of(&env, 1).await,
        vec![("interrupted".into(), Some(0))]
    );
}

#[tokio::test]
async fn replayed_frame_is_rejected_and_the_transfer_resumes() {
    let mut env = Env::new().await;
    let mut events = env.node.events();
    let data = bytes(2 * MIB + 3, 4);
    let m = manifest(vec![file("big.bin", data.len() as u64)]);
    let l = hostile_sender().await;
    let (code, addr) = (l.code.clone(), l.addr.clone());
    let d = data.clone();
    let script = tokio::spawn(async move {
        let mut s = l.accept_one(&l.code).await?;
        s.offer(&m).await?;
        s.accepted().await?;
        // Chunk 0 arrives twice with the same counter.
        s.tap.set(|f| vec![f.clone(), f]);
        s.chunk(0, 0, &d[..MIB]).await?;
        s.tap.clear();
        let told = s.error_kind().await;
        // The receiver comes back with its resume secret; chunk 0 is held already.
        let mut s2 = l.accept_resume(&s.secret).await?;
        s2.transfer = s.transfer.clone();
        s2.offer(&m).await?;
        let have = s2.accepted().await?;
        s2.chunk(0, 1, &d[MIB..2 * MIB]).await?;
        s2.chunk(0, 2, &d[2 * MIB..]).await?;
        s2.send(&SenderMsg::FileEnd {
            file: 0,
            sha256: chunk_root(&d),
        })
        .await?;
        s2.until(|m| matches!(m, ReceiverMsg::Complete).then_some(()))
            .await?;
        Ok::<_, Error>((told, have))
    });
    let offer = env
        .receive(&code, &addr, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let out = env.wait(&offer.id).await;
    let (told, have) = within("script", script).await.unwrap().unwrap();
    assert_eq!(told.as_deref(), Some("replay"));
    assert!(matches!(out, Outcome::Done { .. }), "{out:?}");
    assert_eq!(error_kinds(&mut events, &offer.id), vec!["replay"]);
    assert_eq!(have.len(), 1);
    assert_eq!(decode_bitmap(&have[0].chunks, 3).unwrap(), vec![0b001]);
    assert_eq!(std::fs::read(env.dest.join("big.bin")).unwrap(), data);
    env.assert_outside_untouched();
    env.restart().await;
    assert_eq!(state_of(&env, 1).await[0].0, "completed");
}

#[tokio::test]
async fn reordered_frame_fails_with_replay() {
    let mut env = Env::new().await;
    let m = manifest(vec![file("two.bin", 2 * MIB as u64)]);
    let r = attacked(&env, m, |mut s| async move {
        let mut held: Option<Vec<u8>> = None;
        s.tap.set(move |f| match held.take() {
            None => {
                held = Some(f);
                vec![]
            }
            Some(first) => vec![f, first],
        });
        let data = bytes(2 * MIB, 5);
        s.chunk(0, 0, &data[..MIB]).await?;
        s.chunk(0, 1, &data[MIB..]).await?;
        s.tap.clear();
        Ok(s)
    })
    .await;
    assert_refused(&env, &r, "replay", "two.bin");
    assert!(matches!(
        r.0,
        Outcome::Failed {
            resumable: true,
            ..
        }
    ));
    env.restart().await;
    assert_eq!(
        state_of(&env, 1).await,
        vec![("interrupted".into(), Some(0))]
    );
    env.assert_normal_transfer_works().await;
}

#[tokio::test]
async fn flipped_ciphertext_bit_fails_with_decrypt() {
    let env = Env::new().await;
    let m = manifest(vec![file("f.txt", 10)]);
    // A bit in the ciphertext, then one in the tag.
    for at in [COUNTER_LEN + 3, usize::MAX] {
        let r = attacked(&env, m.clone(), move |mut s| async move {
            s.tap.set(move |mut f| {
                let i = if at == usize::MAX { f.len() - 1 } else { at };
                f[i] ^= 0x01;
                vec![f]
            });
            s.chunk(0, 0, b"0123456789").await?;
            s.tap.clear();
            Ok(s)
        })
        .await;
        assert_refused(&env, &r, "decrypt", "f.txt");
    }
    // A flipped counter bit is a replay/gap, caught before decryption.
    let r = attacked(&env, m.clone(), |mut s| async move {
        s.tap.set(|mut f| {
            f[COUNTER_LEN - 1] ^= 0x04;
            vec![f]
        });
        s.chunk(0, 0, b"0123456789").await?;
        s.tap.clear();
        Ok(s)
    })
    .await;
    assert_refused(&env, &r, "replay", "f.txt");
}

#[tokio::test]
async fn oversized_frame_fails_with_frame_too_large() {
    let env = Env::new().await;
    let m = manifest(vec![file("f.txt", 10)]);
    // A sealed frame one byte over the limit.
    let r = attacked(&env, m.clone(), |mut s| async move {
        s.tap.set(|_| vec![vec![0u8; MAX_FRAME + 1]]);
        let _ = s.chunk(0, 0, b"0123456789").await;
        s.tap.clear();
        Ok(s)
    })
    .await;
    assert_failed(&r.0, "frame_too_large");
    // A length prefix of 4 GiB with nothing behind it: refused before any allocation.
    let r = attacked(&env, m, |mut s| async move {
        let _ = s.raw.write_all(&u32::MAX.to_be_bytes());
        Ok(s)
    })
    .await;
    assert_refused(&env, &r, "frame_too_large", "f.txt");
}

#[tokio::test]
async fn garbage_frames_fail_cleanly() {
    let env = Env::new().await;
    let m = manifest(vec![file("f.txt", 10)]);
    // Shorter than counter + tag.
    let r = attacked(&env, m.clone(), |mut s| async move {
        let _ = s.raw.write_all(&[0, 0, 0, 5, 1, 2, 3, 4, 5]);
        Ok(s)
    })
    .await;
    assert_refused(&env, &r, "protocol", "f.txt");
    // Random bytes in place of the next sealed frame (counter kept): fails to open.
    let r = attacked(&env, m.clone(), |mut s| async move {
        s.tap.set(|f| {
            let mut g = f[..COUNTER_LEN].to_vec();
            g.extend((0..200).map(|_| rand::random::<u8>()));
            vec![g]
        });
        s.chunk(0, 0, b"0123456789").await?;
        s.tap.clear();
        Ok(s)
    })
    .await;
    assert_refused(&env, &r, "decrypt", "f.txt");
}

#[tokio::test]
async fn unknown_message_fails_with_protocol() {
    let env = Env::new().await;
    let m = manifest(vec![file("f.txt", 10)]);
    let bodies: Vec<Vec<u8>> = vec![
        br#"{"type":"launch_missiles"}"#.to_vec(),
        br#"{"type":"exec","cmd":"rm -rf ~"}"#.to_vec(),
        format!(
            r#"{{"type":"file_end","file":0,"sha256":"{}","unpack":true}}"#,
            "00".repeat(32)
        )
        .into_bytes(),
        b"\xff\xfe not json".to_vec(),
        b"".to_vec(),
    ];
    for body in bodies {
        let r = attacked(&env, m.clone(), move |mut s| async move {
            s.ch.tx.send_control(&body).await?;
            Ok(s)
        })
        .await;
        assert_refused(&env, &r, "protocol", "f.txt");
    }
    // An unknown plaintext kind byte.
    let r = attacked(&env, m.clone(), |mut s| async move {
        let mut f = skiff_core::session::frame_buffer(8);
        f.extend_from_slice(&[9, 1, 2, 3]);
        s.ch.tx.send_frame(f).await?;
        Ok(s)
    })
    .await;
    assert_refused(&env, &r, "protocol", "f.txt");
    // A second offer in the middle of the transfer.
    let again = m.clone();
    let r = attacked(&env, m, move |mut s| async move {
        s.offer(&again).await?;
        Ok(s)
    })
    .await;
    assert_refused(&env, &r, "protocol", "f.txt");
    env.assert_normal_transfer_works().await;
}

#[tokio::test]
async fn sender_ignoring_credit_is_held_back_by_backpressure() {
    // The sender pushes 24 MiB (more than the 16 MiB first grant) without reading a single
    // credit message. The receiver's pipeline is bounded (reader queue, writer queue,
    // socket), so it is never more than a few chunks behind: the excess waits in the
    // socket, the grants catch up, and the transfer completes intact.
    let env = Env::new().await;
    let data = bytes(24 * MIB, 6);
    let m = manifest(vec![file("flood.bin", data.len() as u64)]);
    let l = hostile_sender().await;
    let (code, addr) = (l.code.clone(), l.addr.clone());
    let d = data.clone();
    let script = tokio::spawn(async move {
        let mut s = l.accept().await?;
        s.offer(&m).await?;
        s.send_file(0, &d).await?;
        // Only now read what the receiver said: Accept, grants, FileOk, Complete.
        loop {
            match s.recv().await? {
                Some(ReceiverMsg::Complete) => break,
                Some(ReceiverMsg::Error { kind, message }) => {
                    return Err(Error::Remote { kind, message })
                }
                Some(_) => {}
                None => return Err(Error::ConnectionClosed),
            }
        }
        Ok::<_, Error>(s.credit)
    });
    let offer = env.receive(&code, &addr, SHORT_RECONNECT).await.unwrap();
    let out = env.wait(&offer.id).await;
    let credit = within("script", script).await.unwrap().unwrap();
    assert!(matches!(out, Outcome::Done { .. }), "{out:?}");
    assert!(credit >= data.len() as u64, "granted {credit}");
    assert_eq!(std::fs::read(env.dest.join("flood.bin")).unwrap(), data);
    env.assert_outside_untouched();
}

#[tokio::test]
async fn resume_with_a_swapped_offer_is_refused() {
    // The first session is accepted and breaks (a replayed frame); on resume the sender
    // offers other names, sizes or another transfer id. The receiver checks the offer
    // against its checkpoint and refuses: nothing is written under the new names.
    let mut env = Env::new().await;
    let data = bytes(2 * MIB, 7);
    let m1 = manifest(vec![file("a.txt", data.len() as u64)]);
    let swaps = [
        (
            manifest(vec![file("../../a.txt", data.len() as u64)]),
            false,
        ),
        (manifest(vec![file("a.txt", 3 * MIB as u64)]), false),
        (manifest(vec![dir("a.txt"), file("a.txt/x", 1)]), false),
        (m1.clone(), true),
    ];
    for (n, (m2, other_id)) in swaps.into_iter().enumerate() {
        let l = hostile_sender().await;
        let (code, addr) = (l.code.clone(), l.addr.clone());
        let (d, m) = (data.clone(), m1.clone());
        let script = tokio::spawn(async move {
            let mut s = l.accept_one(&l.code).await?;
            s.offer(&m).await?;
            s.accepted().await?;
            s.chunk(0, 0, &d[..MIB]).await?;
            s.tap.set(|f| vec![f.clone(), f]);
            s.chunk(0, 1, &d[MIB..]).await?;
            s.tap.clear();
            let first = s.error_kind().await;
            let mut s2 = l.accept_resume(&s.secret).await?;
            s2.transfer = if other_id {
                hex::encode(rand::random::<[u8; 16]>())
            } else {
                s.transfer.clone()
            };
            s2.offer(&m2).await?;
            Ok::<_, Error>((first, s2.error_kind().await))
        });
        let offer = env
            .receive(&code, &addr, std::time::Duration::from_secs(5))
            .await
            .unwrap();
        let out = env.wait(&offer.id).await;
        let (first, second) = within("script", script).await.unwrap().unwrap();
        assert_eq!(first.as_deref(), Some("replay"));
        assert_eq!(second.as_deref(), Some("source_changed"), "swap {n}");
        assert_failed(&out, "source_changed");
        let names = listing(&env.dest);
        assert!(
            names.iter().all(|p| p.ends_with(".skiff-part")),
            "swap {n}: {names:?}"
        );
        env.assert_outside_untouched();
    }
    env.restart().await;
    let states = state_of(&env, 4).await;
    assert!(states.iter().all(|(s, _)| s == "failed"), "{states:?}");
}
