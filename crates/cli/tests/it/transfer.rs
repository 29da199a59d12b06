//! Whole transfers between two real processes: a large file, a big folder, name clashes.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;

use rand::{Rng, SeedableRng};

use crate::util::*;

#[test]
fn sends_a_1_gib_file_byte_identical() {
    let _g = heavy();
    let t = tempdir();
    let (s_data, r_data, out) = (t.path().join("S"), t.path().join("R"), t.path().join("out"));
    fs::create_dir_all(&out).unwrap();
    let src = t.path().join("big.bin");
    let started = Instant::now();
    let want = write_random(&src, 1 << 30, 0x5eed1);
    eprintln!("generated 1 GiB in {:?}", started.elapsed());

    let port = free_port();
    let started = Instant::now();
    let (mut s, code, id) = send(&s_data, port, &[&src]);
    let mut r = receive(&r_data, port, &out, &code, CodeVia::Env);
    let done = r.wait_event("done", secs(200));
    r.expect_success(secs(30));
    let s_done = s.wait_event("done", secs(30));
    s.expect_success(secs(30));
    eprintln!("1 GiB transferred in {:?}", started.elapsed());

    assert_eq!(done["transfer"], id.as_str());
    assert_eq!(s_done["transfer"], id.as_str());
    // The hash the receiver reports is the real one, and so is the file on disk.
    assert_eq!(done_sha(&done, "big.bin"), want, "receiver's done sha256");
    assert_eq!(done_sha(&s_done, "big.bin"), want, "sender's done sha256");
    let got = out.join("big.bin");
    assert_eq!(fs::metadata(&got).unwrap().len(), 1 << 30);
    assert_eq!(sha256_file(&got), want, "file on disk");
    let names: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names.len(),
        1,
        "only the file, no part file left: {names:?}"
    );
    // Progress went up to the total, monotonically.
    let prog: Vec<u64> = r.events("progress").iter().map(|e| bytes_of(e)).collect();
    assert!(
        prog.windows(2).all(|w| w[0] <= w[1]),
        "progress not monotonic"
    );
    assert_eq!(prog.last().copied(), Some(1 << 30));
    r.assert_all_json();
    s.assert_all_json();
}

const NAMES: &[&str] = &[
    "café",
    "naïve résumé",
    "日本語のファイル",
    "Ελληνικά",
    "emoji 🎉 party",
    "Ünïcödé",
    "with space",
    "dash-and_underscore",
    "кириллица",
    "עברית",
    "ñandú",
    "한국어",
];

/// A folder of exactly 1000 files: unicode names, empty files, nested and empty folders,
/// sizes around the chunk boundary, a few executables.
fn make_folder(root: &Path, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    fs::create_dir_all(root).unwrap();
    // Empty folders, some nested, some inside non-empty ones.
    for d in ["empty", "empty/inner/deeper", "a/empty here", "日本/空"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    let dirs: Vec<String> = (0..20)
        .map(|i| {
            let depth = i % 4;
            let mut p = format!("d{i} {}", NAMES[i % NAMES.len()]);
            for k in 0..depth {
                p.push_str(&format!("/sub{k} {}", NAMES[(i + k + 1) % NAMES.len()]));
            }
            fs::create_dir_all(root.join(&p)).unwrap();
            p
        })
        .collect();
    let special: [u64; 5] = [MIB, MIB - 1, MIB + 1, 2 * MIB + 12345, 3 * MIB];
    for n in 0..1000usize {
        let dir = if n < 20 {
            String::new()
        } else {
            dirs[n % dirs.len()].clone()
        };
        let name = format!("{n:04} {}.txt", NAMES[n % NAMES.len()]);
        let path = if dir.is_empty() {
            root.join(&name)
        } else {
            root.join(&dir).join(&name)
        };
        let size = if n % 17 == 0 {
            0
        } else if n % 199 == 0 {
            special[(n / 199) % special.len()]
        } else {
            rng.gen_range(1..16_000)
        };
        write_random(&path, size, seed ^ n as u64);
        if n % 50 == 7 {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
}

#[test]
fn sends_a_folder_of_1000_files_with_nested_and_empty_dirs() {
    let _g = heavy();
    let t = tempdir();
    let (s_data, r_data, out) = (t.path().join("S"), t.path().join("R"), t.path().join("out"));
    fs::create_dir_all(&out).unwrap();
    let src = t.path().join("src").join("My Folder ✓");
    make_folder(&src, 42);
    let files = tree(&src)
        .values()
        .filter(|n| matches!(n, Node::File { .. }))
        .count();
    assert_eq!(files, 1000);

    let started = Instant::now();
    let port = free_port();
    let (mut s, code, id) = send(&s_data, port, &[&src]);
    // This one reads the code from stdin.
    let mut r = receive(&r_data, port, &out, &code, CodeVia::Stdin);
    let done = r.wait_event("done", secs(150));
    r.expect_success(secs(30));
    s.wait_event("done", secs(30));
    s.expect_success(secs(30));
    eprintln!("1000 files transferred in {:?}", started.elapsed());

    assert_eq!(done["transfer"], id.as_str());
    assert_eq!(done["files"].as_array().unwrap().len(), 1000);
    assert_same_tree(&src, &out.join("My Folder ✓"));
    // Each reported digest is the file's real hash.
    for f in done["files"].as_array().unwrap() {
        let p = out.join(f["path"].as_str().unwrap());
        assert_eq!(
            sha256_file(&p),
            f["sha256"].as_str().unwrap(),
            "{}",
            p.display()
        );
    }
}

/// `--limit-rate` on either side holds the transfer to the rate. Only a lower bound on the
/// time is asserted (a loaded machine can make it slower, never faster).
#[test]
fn limit_rate_paces_the_sender_or_the_receiver() {
    let t = tempdir();
    let src = t.path().join("paced.bin");
    let size = 12 * MIB;
    let want = write_random(&src, size, 0x9ace);
    let rate = ["--limit-rate", "4MiB"];
    for limited in ["sender", "receiver"] {
        let (s_data, r_data) = (
            t.path().join(format!("S-{limited}")),
            t.path().join(format!("R-{limited}")),
        );
        let out = t.path().join(format!("out-{limited}"));
        fs::create_dir_all(&out).unwrap();
        let (s_extra, r_extra): (&[&str], &[&str]) = if limited == "sender" {
            (&rate, &[])
        } else {
            (&[], &rate)
        };
        let port = free_port();
        let (mut s, code, _) = send_with(&s_data, port, &[&src], s_extra);
        let mut r = receive_with(&r_data, port, &out, &code, CodeVia::Env, r_extra);
        r.wait_event("progress", secs(30));
        let started = Instant::now();
        let done = r.wait_event("done", secs(60));
        let took = started.elapsed();
        r.expect_success(secs(30));
        s.wait_event("done", secs(30));
        s.expect_success(secs(30));
        assert_eq!(done_sha(&done, "paced.bin"), want);
        // 12 MiB at 4 MiB/s is 3 s; allow the 100 ms burst and the receiver's window of
        // buffered frames on the sender-limited side's first second.
        assert!(
            took.as_secs_f64() >= 2.4,
            "{limited} limited to 4 MiB/s moved 12 MiB in {took:?}"
        );
        eprintln!("{limited} limited to 4 MiB/s: 12 MiB in {took:?}");
    }
}

#[test]
fn a_rate_below_the_floor_is_refused_before_anything_starts() {
    let t = tempdir();
    let src = t.path().join("x.bin");
    fs::write(&src, b"x").unwrap();
    let src_s = src.display().to_string();
    let mut p = Proc::spawn(
        "sender",
        &t.path().join("S"),
        &["send", "--limit-rate", "1K", &src_s],
        &[],
        None,
    );
    let status = p.wait_exit(secs(30));
    assert!(!status.success());
    assert!(
        p.stderr().contains("below the lowest limit"),
        "{}",
        p.dump()
    );
}

/// Connections that never say hello (a port scanner, an abandoned attempt) must not hold
/// up the real receiver: handshakes run side by side. Three idle ones used to cost it 30 s
/// (10 s handshake timeout each, in turn).
#[test]
fn idle_connections_do_not_hold_up_the_receiver() {
    let t = tempdir();
    let (s_data, r_data, out) = (t.path().join("S"), t.path().join("R"), t.path().join("out"));
    fs::create_dir_all(&out).unwrap();
    let src = t.path().join("x.bin");
    let want = write_random(&src, MIB, 0x1d1e);
    let port = free_port();
    let (mut s, code, _) = send(&s_data, port, &[&src]);
    let idle: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let started = Instant::now();
    let mut r = receive(&r_data, port, &out, &code, CodeVia::Env);
    let done = r.wait_event("done", secs(60));
    let took = started.elapsed();
    r.expect_success(secs(30));
    s.wait_event("done", secs(30));
    s.expect_success(secs(30));
    assert_eq!(done_sha(&done, "x.bin"), want);
    assert!(
        took < std::time::Duration::from_secs(20),
        "the receiver waited {took:?} behind idle connections"
    );
    drop(idle);
}

#[test]
fn existing_file_is_never_overwritten() {
    let t = tempdir();
    let (s_data, r_data, out) = (t.path().join("S"), t.path().join("R"), t.path().join("out"));
    fs::create_dir_all(&out).unwrap();
    fs::create_dir_all(t.path().join("src")).unwrap();
    let src = t.path().join("src").join("report.pdf");
    let new = write_random(&src, 3 * MIB + 7, 7);
    let old_bytes = b"%PDF-1.4 the old report, keep me".to_vec();
    fs::write(out.join("report.pdf"), &old_bytes).unwrap();

    let port = free_port();
    let (mut s, code, _id) = send(&s_data, port, &[&src]);
    let mut r = receive(&r_data, port, &out, &code, CodeVia::Env);
    let done = r.wait_event("done", secs(60));
    r.expect_success(secs(30));
    s.expect_success(secs(30));

    assert_eq!(
        fs::read(out.join("report.pdf")).unwrap(),
        old_bytes,
        "old file intact"
    );
    assert_eq!(sha256_file(&out.join("report (1).pdf")), new);
    assert_eq!(done_sha(&done, "report (1).pdf"), new);
    let mut names: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["report (1).pdf", "report.pdf"]);
}
