//! A hostile sender's offers against a real receiving `Node`: unsafe names and paths,
//! collisions with what is already in the destination, impossible sizes, oversized and
//! malformed manifests. Each refusal is clear, reaches the sender, and writes nothing.

use std::time::{Duration, Instant};

use skiff_core::{Error, Outcome};
use skiff_proto::manifest::{Entry, Manifest, MAX_ENTRIES};
use skiff_proto::peer::ReceiverMsg;

use crate::util::*;

/// What a hostile sender offers.
enum Offer {
    Manifest(Manifest),
    /// A raw control body (for what `SenderMsg` cannot express).
    Raw(Vec<u8>),
}

/// Offers `offer`; the receiver must refuse it with `kind` before writing anything, and the
/// sender must be told that same kind.
async fn refused(env: &Env, offer: Offer, kind: &str) -> Error {
    let l = hostile_sender().await;
    let (code, addr) = (l.code.clone(), l.addr.clone());
    let script = tokio::spawn(async move {
        let mut s = l.accept().await?;
        match offer {
            Offer::Manifest(m) => s.offer(&m).await?,
            Offer::Raw(body) => {
                // A failed write is fine: the receiver may hang up while this is in flight.
                let _ = s.ch.tx.send_control(&body).await;
            }
        }
        Ok::<_, Error>(s.error_kind().await)
    });
    let err = assert_err(env.receive(&code, &addr, SHORT_RECONNECT).await, kind);
    let told = within("script", script).await.unwrap().unwrap();
    if kind != "frame_too_large" {
        assert_eq!(told.as_deref(), Some(kind), "the sender was not told why");
    }
    assert_eq!(listing(&env.dest), Vec::<String>::new(), "{err}");
    env.assert_outside_untouched();
    err
}

async fn refused_paths(env: &Env, paths: &[&str], reason: &str) {
    for p in paths {
        let err = refused(env, Offer::Manifest(manifest(vec![file(p, 3)])), "bad_path").await;
        match &err {
            Error::BadPath { reason: r, .. } => assert_eq!(*r, reason, "{p:?}: {err}"),
            other => panic!("{p:?}: {other}"),
        }
    }
}

/// A hostile sender offers `m`, then honestly serves `files`; returns the outcome.
async fn served(env: &Env, m: Manifest, files: Vec<(u32, Vec<u8>)>) -> Outcome {
    let l = hostile_sender().await;
    let (code, addr) = (l.code.clone(), l.addr.clone());
    let script = tokio::spawn(async move {
        let mut s = l.accept().await?;
        s.offer(&m).await?;
        s.accepted().await?;
        s.serve(&files).await
    });
    let offer = env.receive(&code, &addr, SHORT_RECONNECT).await.unwrap();
    let out = env.wait(&offer.id).await;
    within("script", script).await.unwrap().unwrap();
    out
}

fn done_paths(out: &Outcome) -> Vec<String> {
    match out {
        Outcome::Done { files, .. } => files.iter().map(|f| f.path.clone()).collect(),
        other => panic!("transfer failed: {other:?}"),
    }
}

#[tokio::test]
async fn refuses_parent_components() {
    let mut env = Env::new().await;
    refused_paths(
        &env,
        &[
            "../x",
            "../../.ssh/authorized_keys",
            "a/../../x",
            "..",
            "photos/..",
        ],
        "`..` component",
    )
    .await;
    // No transfer was recorded, and the checkpoint store reopens.
    env.restart().await;
    assert!(env.node.list().await.unwrap().is_empty());
    env.assert_normal_transfer_works().await;
}

#[tokio::test]
async fn refuses_dot_and_empty_components() {
    let env = Env::new().await;
    refused_paths(&env, &["./x", "a/./b", "."], "`.` component").await;
    refused_paths(&env, &["", "a//b", "a/"], "empty component").await;
}

#[tokio::test]
async fn refuses_absolute_paths() {
    let env = Env::new().await;
    refused_paths(&env, &["/etc/x", "/tmp/x", "\\Windows\\x"], "absolute path").await;
    refused_paths(
        &env,
        &["\\\\server\\share\\x", "a/\\\\?\\C:\\x"],
        "UNC path",
    )
    .await;
}

#[tokio::test]
async fn refuses_drive_letters() {
    let env = Env::new().await;
    refused_paths(&env, &["C:x", "c:/x", "Z:\\x"], "drive letter").await;
}

#[tokio::test]
async fn refuses_nul_bytes() {
    let env = Env::new().await;
    refused_paths(&env, &["a\0b", "dir\0/x"], "NUL byte").await;
}

#[tokio::test]
async fn refuses_overlong_and_deep_paths() {
    let env = Env::new().await;
    let component = "a".repeat(4097);
    let path = vec!["b".repeat(1000); 17].join("/");
    refused_paths(&env, &[&component, &path], "too long").await;
    let deep = vec!["d"; 33].join("/");
    refused_paths(&env, &[&deep], "too deep").await;
    // A 10 000-deep path is refused by its length before anything else looks at it.
    let very_deep = vec!["d"; 10_000].join("/");
    refused_paths(&env, &[&very_deep], "too long").await;
}

#[tokio::test]
async fn sanitises_control_ansi_and_bidi_names() {
    let env = Env::new().await;
    let cases = [
        ("\u{1b}[1Aevil\r.txt", "_[1Aevil_.txt"),
        ("\u{202E}gpj.exe", "_gpj.exe"),
        ("bell\u{7}\ttab.txt", "bell__tab.txt"),
        ("c1\u{85}x\u{9f}", "c1_x_"),
        ("iso\u{2066}late\u{200f}", "iso_late_"),
        ("a<b>c", "a_b_c"),
        ("what?.txt", "what_.txt"),
        ("CON", "_CON"),
        ("nul.txt", "_nul.txt"),
        ("   ", "_"),
        ("name. . ", "name"),
    ];
    let m = manifest(cases.iter().map(|(raw, _)| file(raw, 5)).collect());
    let files: Vec<(u32, Vec<u8>)> = (0..cases.len() as u32)
        .map(|i| (i, bytes(5, i as u8)))
        .collect();
    let out = served(&env, m, files.clone()).await;
    let got = done_paths(&out);
    let want: Vec<String> = cases.iter().map(|(_, s)| s.to_string()).collect();
    assert_eq!(got, want);
    let mut sorted = want.clone();
    sorted.sort();
    assert_eq!(listing(&env.dest), sorted);
    for ((_, name), (_, data)) in cases.iter().zip(&files) {
        assert_eq!(&std::fs::read(env.dest.join(name)).unwrap(), data, "{name}");
    }
    env.assert_outside_untouched();
}

#[tokio::test]
async fn truncates_overlong_names_keeping_the_extension() {
    let env = Env::new().await;
    let ascii = format!("{}.txt", "a".repeat(300));
    let emoji = format!("{}.txt", "😀".repeat(70));
    let m = manifest(vec![file(&ascii, 1), file(&emoji, 1)]);
    let out = served(&env, m, vec![(0, b"1".to_vec()), (1, b"2".to_vec())]).await;
    let got = done_paths(&out);
    assert_eq!(
        got,
        vec![
            format!("{}.txt", "a".repeat(251)),
            format!("{}.txt", "😀".repeat(62))
        ]
    );
    for name in &got {
        assert!(name.len() <= 255 && name.encode_utf16().count() <= 255);
        assert!(env.dest.join(name).is_file());
    }
    env.assert_outside_untouched();
}

#[tokio::test]
async fn refuses_duplicate_paths() {
    let env = Env::new().await;
    for entries in [
        vec![file("a.txt", 1), file("a.txt", 2)],
        vec![dir("d"), file("d/x", 1), file("d/x", 1)],
        vec![dir("d"), dir("d")],
    ] {
        refused(&env, Offer::Manifest(manifest(entries)), "bad_offer").await;
    }
}

#[tokio::test]
async fn refuses_a_file_and_a_directory_with_the_same_path() {
    let env = Env::new().await;
    for entries in [
        vec![dir("a"), file("a", 1)],
        vec![file("a", 1), dir("a")],
        // A file used as a folder: `a/b` below the file `a`.
        vec![file("a", 1), file("a/b", 1)],
        // A child listed before its folder.
        vec![file("a/b", 1), dir("a")],
    ] {
        refused(&env, Offer::Manifest(manifest(entries)), "bad_offer").await;
    }
    env.assert_normal_transfer_works().await;
}

#[tokio::test]
async fn case_variants_become_two_files() {
    let env = Env::new().await;
    let m = manifest(vec![file("a.txt", 1), file("A.TXT", 1)]);
    let out = served(&env, m, vec![(0, b"1".to_vec()), (1, b"2".to_vec())]).await;
    assert_eq!(done_paths(&out), vec!["a.txt", "A (1).TXT"]);
    assert_eq!(std::fs::read(env.dest.join("a.txt")).unwrap(), b"1");
    assert_eq!(std::fs::read(env.dest.join("A (1).TXT")).unwrap(), b"2");
}

#[tokio::test]
async fn symlinks_in_the_destination_are_never_followed() {
    let mut env = Env::new().await;
    let link = |target: &std::path::Path, name: &str| {
        std::os::unix::fs::symlink(target, env.dest.join(name)).unwrap();
    };
    link(&env.canary, "photos");
    link(&env.canary.join("x"), "report.pdf");
    link(&env.canary.join("x"), "new.bin.skiff-part");
    link(&env.canary.join(".ssh"), "ssh-link");
    env.mark();
    let m = manifest(vec![
        dir("photos"),
        file("photos/x", 4),
        file("report.pdf", 4),
        file("new.bin", 4),
        dir("ssh-link"),
        file("ssh-link/authorized_keys", 4),
    ]);
    let files = vec![
        (1, b"pic!".to_vec()),
        (2, b"pdf!".to_vec()),
        (3, b"new!".to_vec()),
        (5, b"key!".to_vec()),
    ];
    let out = served(&env, m, files).await;
    assert_eq!(
        done_paths(&out),
        vec![
            "photos (1)/x",
            "report (1).pdf",
            "new (1).bin",
            "ssh-link (1)/authorized_keys"
        ]
    );
    assert_eq!(
        std::fs::read(env.dest.join("photos (1)/x")).unwrap(),
        b"pic!"
    );
    for l in ["photos", "report.pdf", "new.bin.skiff-part", "ssh-link"] {
        assert!(std::fs::symlink_metadata(env.dest.join(l))
            .unwrap()
            .file_type()
            .is_symlink());
    }
    env.assert_outside_untouched();
}

#[tokio::test]
async fn never_overwrites_an_existing_file_or_folder() {
    let env = Env::new().await;
    std::fs::write(env.dest.join("report.pdf"), b"old report").unwrap();
    std::fs::write(env.dest.join("report (1).pdf"), b"old report 1").unwrap();
    std::fs::create_dir(env.dest.join("photos")).unwrap();
    std::fs::write(env.dest.join("photos/a.jpg"), b"old photo").unwrap();
    let m = manifest(vec![
        file("report.pdf", 3),
        dir("photos"),
        file("photos/a.jpg", 3),
    ]);
    let out = served(&env, m, vec![(0, b"new".to_vec()), (2, b"pic".to_vec())]).await;
    assert_eq!(done_paths(&out), vec!["report (2).pdf", "photos (1)/a.jpg"]);
    assert_eq!(
        std::fs::read(env.dest.join("report.pdf")).unwrap(),
        b"old report"
    );
    assert_eq!(
        std::fs::read(env.dest.join("report (1).pdf")).unwrap(),
        b"old report 1"
    );
    assert_eq!(
        std::fs::read(env.dest.join("photos/a.jpg")).unwrap(),
        b"old photo"
    );
    assert_eq!(
        std::fs::read(env.dest.join("report (2).pdf")).unwrap(),
        b"new"
    );
    assert_eq!(
        std::fs::read(env.dest.join("photos (1)/a.jpg")).unwrap(),
        b"pic"
    );
    env.assert_outside_untouched();
}

#[tokio::test]
async fn refuses_sizes_that_overflow() {
    let env = Env::new().await;
    let m = manifest(vec![file("a", u64::MAX), file("b", 1)]);
    refused(&env, Offer::Manifest(m), "offer_too_large").await;
    let m = manifest(vec![
        file("a", u64::MAX / 2 + 1),
        file("b", u64::MAX / 2 + 1),
    ]);
    refused(&env, Offer::Manifest(m), "offer_too_large").await;
}

#[tokio::test]
async fn refuses_an_offer_larger_than_free_space() {
    let env = Env::new().await;
    for entries in [
        vec![file("huge.bin", 1 << 50)],
        // 10 TB spread over many files.
        (0..10)
            .map(|i| file(&format!("{i}.bin"), 1_000_000_000_000))
            .collect(),
        vec![file("max.bin", u64::MAX)],
    ] {
        let l = hostile_sender().await;
        let (code, addr) = (l.code.clone(), l.addr.clone());
        let m = manifest(entries);
        let script = tokio::spawn(async move {
            let mut s = l.accept().await?;
            s.offer(&m).await?;
            Ok::<_, Error>(s.error_kind().await)
        });
        let started = Instant::now();
        let offer = env.receive(&code, &addr, SHORT_RECONNECT).await.unwrap();
        let out = env.wait(&offer.id).await;
        assert_failed(&out, "disk_full");
        let Outcome::Failed { message, .. } = &out else {
            unreachable!()
        };
        assert!(message.contains("needs"), "{message}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let told = within("script", script).await.unwrap().unwrap();
        assert_eq!(told.as_deref(), Some("disk_full"));
        assert_eq!(listing(&env.dest), Vec::<String>::new());
    }
    env.assert_outside_untouched();
    env.assert_normal_transfer_works().await;
}

#[tokio::test]
async fn refuses_symlink_and_special_entries() {
    let env = Env::new().await;
    for kind in ["symlink", "hardlink", "fifo", "device", "socket"] {
        let body = format!(
            r#"{{"type":"offer","transfer":"{}","sender":"x","manifest":{{"chunk_size":1048576,"entries":[{{"kind":"dir","path":"d","mode":493}},{{"kind":"{kind}","path":"d/l","target":"/etc/passwd"}}]}}}}"#,
            "ab".repeat(16)
        );
        refused(&env, Offer::Raw(body.into_bytes()), "bad_offer").await;
    }
}

#[tokio::test]
async fn refuses_malformed_offer_fields() {
    let env = Env::new().await;
    let mut m = manifest(vec![file("a", 1)]);
    m.chunk_size = 4096;
    refused(&env, Offer::Manifest(m), "bad_offer").await;
    refused(&env, Offer::Manifest(manifest(vec![])), "bad_offer").await;
    let body = format!(
        r#"{{"type":"offer","transfer":"../../{}","sender":"x","manifest":{{"chunk_size":1048576,"entries":[{{"kind":"file","path":"a","size":1,"mode":420,"mtime":0}}]}}}}"#,
        "ab".repeat(13)
    );
    refused(&env, Offer::Raw(body.into_bytes()), "bad_offer").await;
    let body = br#"{"type":"offer","transfer":"x","manifest":{"chunk_size":-1,"entries":[]}}"#;
    refused(&env, Offer::Raw(body.to_vec()), "bad_offer").await;
}

#[tokio::test]
async fn refuses_too_many_entries_quickly() {
    let env = Env::new().await;
    let entries: Vec<Entry> = (0..=MAX_ENTRIES).map(|i| dir(&format!("d{i}"))).collect();
    let started = Instant::now();
    let err = refused(&env, Offer::Manifest(manifest(entries)), "bad_offer").await;
    assert!(err.to_string().contains("100000"), "{err}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[tokio::test]
async fn refuses_a_manifest_over_16_mib_quickly() {
    let env = Env::new().await;
    // A million entries: about 37 MB encoded, over the frame limit.
    let entry = r#"{"kind":"dir","path":"d","mode":493},"#;
    let mut body = format!(
        r#"{{"type":"offer","transfer":"{}","sender":"x","manifest":{{"chunk_size":1048576,"entries":["#,
        "cd".repeat(16)
    );
    body.reserve(entry.len() * 1_000_000);
    for _ in 0..1_000_000 {
        body.push_str(entry);
    }
    body.pop();
    body.push_str("]}}");
    assert!(body.len() > 16 << 20);
    let started = Instant::now();
    refused(&env, Offer::Raw(body.into_bytes()), "frame_too_large").await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    env.assert_normal_transfer_works().await;
}

#[tokio::test]
async fn one_bad_path_refuses_the_whole_offer() {
    // The sender's first answer is the error: never an `Accept`, nothing created.
    let env = Env::new().await;
    let l = hostile_sender().await;
    let (code, addr) = (l.code.clone(), l.addr.clone());
    let script = tokio::spawn(async move {
        let mut s = l.accept().await?;
        s.offer(&manifest(vec![file("ok.txt", 1), file("../bad", 1)]))
            .await?;
        s.recv().await
    });
    assert_err(env.receive(&code, &addr, SHORT_RECONNECT).await, "bad_path");
    let first = within("script", script).await.unwrap().unwrap();
    assert!(
        matches!(&first, Some(ReceiverMsg::Error { kind, .. }) if kind == "bad_path"),
        "{first:?}"
    );
    assert_eq!(listing(&env.dest), Vec::<String>::new());
}
