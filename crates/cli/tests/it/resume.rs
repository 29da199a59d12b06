//! SIGKILL of either side at random moments, resumed each time; disk full then resumed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::util::*;

const KILLS: usize = 10;
const FILE_SIZE: u64 = 512 * MIB;
/// The receiver commits (fdatasync + checkpoint) at least every this many bytes.
const SYNC_BYTES: u64 = 8 * MIB;
/// The receiver's `--limit-rate` in the kill loops: slow enough that every random kill
/// (each up to ~0.5 s into a run, ≤ 30 MB) always land before the 512 MiB end, on any
/// machine; fast enough that each run writes several checkpoints.
const KILL_RATE: [&str; 2] = ["--limit-rate", "48MiB"];

#[test]
fn receiver_killed_ten_times_resumes_to_identical_file() {
    let _g = heavy();
    let started = Instant::now();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed("receiver_killed"));
    let t = tempdir();
    let (s_data, r_data, out) = (t.path().join("S"), t.path().join("R"), t.path().join("out"));
    fs::create_dir_all(&out).unwrap();
    let src = t.path().join("movie.bin");
    let want = write_random(&src, FILE_SIZE, rng.gen());

    let port = free_port();
    let (mut s, code, id) = send(&s_data, port, &[&src]);
    let mut r = receive_with(&r_data, port, &out, &code, CodeVia::Env, &KILL_RATE);
    let mut run_start = bytes_of(&r.wait_event("progress", secs(60)));
    assert_eq!(run_start, 0);
    let mut starts = Vec::new();
    for kill in 1..=KILLS {
        // Mostly while data flows, sometimes right after the (re)connection.
        if rng.gen_ratio(3, 4) {
            r.wait_for("data flowing", secs(60), |e| {
                ev_is(e, "progress") && bytes_of(e) > run_start
            });
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..400)));
        } else {
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..100)));
        }
        r.drain();
        assert!(
            r.running(),
            "the transfer finished before kill #{kill}; make the file bigger\n{}",
            r.dump()
        );
        r.kill9();
        let seen = r.max_progress();
        // The sender keeps serving; the receiver comes back from its checkpoint.
        let t0 = Instant::now();
        r = resume_with(
            "receiver(resumed)",
            &r_data,
            Some(&id),
            Some(60),
            &KILL_RATE,
        );
        let first = r.wait_for("the first progress after a resume", secs(60), |e| {
            ev_is(e, "progress")
        });
        let start = bytes_of(&first);
        eprintln!(
            "kill #{kill}: saw {seen} bytes before the kill; resumed at {start} after {:?}",
            t0.elapsed()
        );
        assert!(
            start >= run_start,
            "resume #{kill} lost committed data: started at {start}, the run before at {run_start}"
        );
        if seen >= run_start + SYNC_BYTES + MIB {
            assert!(
                start >= run_start + SYNC_BYTES,
                "resume #{kill} started at {start} although {seen} bytes were written \
                 (from {run_start}): a checkpoint was committed but not used"
            );
        }
        assert!(
            start < FILE_SIZE,
            "resume #{kill} claims everything already"
        );
        let connected = r.events("connected");
        assert!(
            connected.iter().all(|c| c["resumed"] == true),
            "a resume must reconnect with the stored secret: {connected:?}"
        );
        starts.push(start);
        run_start = start;
    }
    assert!(
        starts.iter().any(|&b| b > 0),
        "no resume started from a checkpoint: {starts:?}"
    );
    let done = r.wait_event("done", secs(120));
    r.expect_success(secs(30));
    s.wait_event("done", secs(30));
    s.expect_success(secs(30));
    assert_eq!(done_sha(&done, "movie.bin"), want);
    assert_eq!(sha256_file(&out.join("movie.bin")), want);
    let names: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "no part file left: {names:?}");
    eprintln!(
        "receiver killed {KILLS} times, resumed starts {starts:?}, in {:?}",
        started.elapsed()
    );
}

#[test]
fn sender_killed_ten_times_resumes_to_identical_file() {
    let _g = heavy();
    let started = Instant::now();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed("sender_killed"));
    let t = tempdir();
    let (s_data, r_data, out) = (t.path().join("S"), t.path().join("R"), t.path().join("out"));
    fs::create_dir_all(&out).unwrap();
    let src = t.path().join("movie.bin");
    let want = write_random(&src, FILE_SIZE, rng.gen());

    let port = free_port();
    let (mut s, code, id) = send(&s_data, port, &[&src]);
    let mut r = receive_with(&r_data, port, &out, &code, CodeVia::Env, &KILL_RATE);
    s.wait_event("progress", secs(60));
    let mut run_start = 0;
    let mut starts = Vec::new();
    let mut receiver_restarts = 0;
    for kill in 1..=KILLS {
        std::thread::sleep(Duration::from_millis(rng.gen_range(50..600)));
        assert!(
            s.running(),
            "the transfer finished before kill #{kill}; make the file bigger\n{}",
            s.dump()
        );
        r.drain();
        s.kill9();
        // Everything the receiver reported written is committed when the session ends.
        let seen = r.max_progress();
        // `skiff resume` (no id: every interrupted transfer) listens again at the same address.
        let t0 = Instant::now();
        s = resume("sender(resumed)", &s_data, None, None);
        if !r.running() {
            // The receiver gave up (it should not within 300 s): bring it back too.
            receiver_restarts += 1;
            eprintln!("receiver exited after kill #{kill}\n{}", r.dump());
            r = resume_with(
                "receiver(resumed)",
                &r_data,
                Some(&id),
                Some(60),
                &KILL_RATE,
            );
        }
        let first = s.wait_for("the first progress after a resume", secs(60), |e| {
            ev_is(e, "progress")
        });
        let start = bytes_of(&first);
        eprintln!(
            "kill #{kill}: receiver had {seen} bytes; sender resumed at {start} after {:?}",
            t0.elapsed()
        );
        assert!(
            start >= run_start.max(seen),
            "resume #{kill} started at {start}: the receiver had written {seen} (run before \
             started at {run_start})"
        );
        assert!(
            start < FILE_SIZE,
            "resume #{kill} claims everything already"
        );
        starts.push(start);
        run_start = start;
    }
    assert!(
        starts.iter().any(|&b| b > 0),
        "no resume started from a checkpoint: {starts:?}"
    );
    let done = r.wait_event("done", secs(120));
    r.expect_success(secs(30));
    s.wait_event("done", secs(30));
    s.expect_success(secs(30));
    assert_eq!(
        receiver_restarts, 0,
        "the receiver should reconnect by itself"
    );
    let reconnects = r
        .events("connected")
        .iter()
        .filter(|c| c["resumed"] == true)
        .count();
    assert!(
        reconnects >= KILLS,
        "receiver reconnected {reconnects} times"
    );
    assert_eq!(done_sha(&done, "movie.bin"), want);
    assert_eq!(sha256_file(&out.join("movie.bin")), want);
    eprintln!(
        "sender killed {KILLS} times, resumed starts {starts:?}, in {:?}",
        started.elapsed()
    );
}

/// Unmounts on drop (lazily, so a failing test never leaves a busy mount behind).
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn free_bytes(p: &Path) -> u64 {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs fills the struct we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    assert_eq!(rc, 0, "statvfs {}", p.display());
    st.f_bavail as u64 * st.f_frsize as u64
}

#[test]
fn disk_full_is_clear_and_resumable() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED disk_full_is_clear_and_resumable: needs root to mount a tmpfs");
        return;
    }
    let _g = heavy();
    let t = tempdir();
    let (s_data, r_data) = (t.path().join("S"), t.path().join("R"));
    let mnt = t.path().join("small");
    fs::create_dir_all(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    if !st.success() {
        eprintln!("SKIPPED disk_full_is_clear_and_resumable: cannot mount a tmpfs ({st})");
        return;
    }
    let _mount = Mount(mnt.clone());
    let out = mnt.join("in");
    fs::create_dir_all(&out).unwrap();
    let src = t.path().join("three");
    fs::create_dir_all(&src).unwrap();
    for i in 0..3 {
        write_random(&src.join(format!("part{i}.bin")), 20 * MIB, 100 + i);
    }

    let port = free_port();
    let (mut s, code, id) = send(&s_data, port, &[&src]);
    let mut r = receive(&r_data, port, &out, &code, CodeVia::Env);
    r.wait_for("progress with data", secs(60), |e| {
        ev_is(e, "progress") && bytes_of(e) > 0
    });
    r.kill9();
    assert!(
        r.events("done").is_empty(),
        "finished before the kill\n{}",
        r.dump()
    );

    // Fill the disk, leaving ~5 MiB.
    let filler = mnt.join("filler");
    {
        let free = free_bytes(&mnt);
        let n = free.saturating_sub(5 * MIB);
        let f = fs::File::create(&filler).unwrap();
        use std::io::Write;
        let mut w = std::io::BufWriter::new(f);
        let block = vec![0xa5u8; MIB as usize];
        let mut left = n;
        while left > 0 {
            let k = left.min(MIB) as usize;
            w.write_all(&block[..k]).unwrap();
            left -= k as u64;
        }
        w.flush().unwrap();
    }
    eprintln!("free after filling: {} bytes", free_bytes(&mnt));

    let mut r = resume("receiver(disk full)", &r_data, Some(&id), Some(20));
    let err = r.wait_event("error", secs(60));
    let st = r.wait_exit(secs(60));
    assert!(
        !st.success(),
        "resume on a full disk must fail\n{}",
        r.dump()
    );
    assert_eq!(err["kind"], "disk_full", "{err}");
    let msg = err["message"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        msg.contains("space") || msg.contains("full"),
        "unclear disk-full message: {msg}"
    );
    assert_eq!(err["transfer"], id.as_str());
    // The checkpoint is intact: still resumable, the part file still there.
    let rows = list(&r_data);
    let row = rows
        .iter()
        .find(|t| t["id"] == id.as_str())
        .expect("transfer listed");
    assert!(
        ["interrupted", "transferring"].contains(&row["state"].as_str().unwrap_or("")),
        "state after disk full: {row}"
    );
    assert!(
        row["held"].as_u64().unwrap_or(0) > 0
            || fs::read_dir(out.join("three")).unwrap().count() > 0,
        "nothing kept after disk full: {row}"
    );

    fs::remove_file(&filler).unwrap();
    let mut r = resume("receiver(space freed)", &r_data, Some(&id), Some(60));
    let done = r.wait_event("done", secs(90));
    r.expect_success(secs(30));
    s.wait_event("done", secs(30));
    s.expect_success(secs(30));
    assert_eq!(done["files"].as_array().unwrap().len(), 3);
    assert_same_tree(&src, &out.join("three"));
}

#[test]
fn both_sides_killed_resume_to_identical_file() {
    let _g = heavy();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed("both_killed"));
    let t = tempdir();
    let (s_data, r_data, out) = (t.path().join("S"), t.path().join("R"), t.path().join("out"));
    fs::create_dir_all(&out).unwrap();
    let src = t.path().join("both.bin");
    let want = write_random(&src, 160 * MIB, rng.gen());
    let port = free_port();
    let (mut s, code, id) = send(&s_data, port, &[&src]);
    let mut r = receive_with(&r_data, port, &out, &code, CodeVia::Env, &KILL_RATE);
    let mut start = 0;
    for kill in 1..=3 {
        r.wait_for("data flowing", secs(60), |e| {
            ev_is(e, "progress") && bytes_of(e) > start
        });
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..300)));
        assert!(r.running() && s.running(), "finished before kill #{kill}");
        // Receiver first or sender first, then the other.
        if rng.gen() {
            r.kill9();
            s.kill9();
        } else {
            s.kill9();
            r.kill9();
        }
        // Restart in either order: the receiver keeps dialling until the sender is back.
        if rng.gen() {
            r = resume_with("receiver(resumed)", &r_data, None, Some(60), &KILL_RATE);
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..800)));
            s = resume("sender(resumed)", &s_data, None, None);
        } else {
            s = resume("sender(resumed)", &s_data, None, None);
            r = resume_with("receiver(resumed)", &r_data, None, Some(60), &KILL_RATE);
        }
        let first = r.wait_event("progress", secs(60));
        assert!(
            bytes_of(&first) >= start,
            "resume #{kill} lost data: {first}"
        );
        start = bytes_of(&first);
    }
    assert!(start > 0, "no resume started from a checkpoint");
    let done = r.wait_event("done", secs(120));
    r.expect_success(secs(30));
    s.wait_event("done", secs(30));
    s.expect_success(secs(30));
    assert_eq!(done["transfer"], id.as_str());
    assert_eq!(done_sha(&done, "both.bin"), want);
    assert_eq!(sha256_file(&out.join("both.bin")), want);
}

#[test]
fn resume_from_another_directory_keeps_the_destination() {
    let _g = heavy();
    let t = tempdir();
    let (s_data, r_data) = (t.path().join("S"), t.path().join("R"));
    let (work, elsewhere) = (t.path().join("work"), t.path().join("elsewhere"));
    fs::create_dir_all(work.join("out")).unwrap();
    fs::create_dir_all(&elsewhere).unwrap();
    let src = t.path().join("rel.bin");
    let want = write_random(&src, 96 * MIB, 77);
    let port = free_port();
    let (mut s, code, id) = send(&s_data, port, &[&src]);
    // A relative --dir, resolved against the receiver's working directory.
    let addr = format!("127.0.0.1:{port}");
    let args = ["receive", "--direct", &addr, "--dir", "out", "--yes"];
    let mut r = Proc::spawn_in(
        Some(&work),
        "receiver",
        &r_data,
        &args,
        &[("SKIFF_CODE", &code)],
        None,
    );
    r.wait_for("data flowing", secs(60), |e| {
        ev_is(e, "progress") && bytes_of(e) > 0
    });
    r.kill9();
    assert!(r.events("done").is_empty(), "finished before the kill");
    let mut r = Proc::spawn_in(
        Some(&elsewhere),
        "receiver(resumed elsewhere)",
        &r_data,
        &["resume", &id, "--wait", "60"],
        &[],
        None,
    );
    r.wait_event("done", secs(90));
    r.expect_success(secs(30));
    s.expect_success(secs(30));
    assert_eq!(sha256_file(&work.join("out").join("rel.bin")), want);
    assert_empty_dir(&elsewhere);
    let names: Vec<_> = fs::read_dir(work.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "no part file left behind: {names:?}");
}

#[test]
fn changed_source_is_reported_on_both_sides() {
    let _g = heavy();
    let t = tempdir();
    let (s_data, r_data, out) = (t.path().join("S"), t.path().join("R"), t.path().join("out"));
    fs::create_dir_all(&out).unwrap();
    let src = t.path().join("draft.bin");
    write_random(&src, 96 * MIB, 5);
    let port = free_port();
    let (mut s, code, id) = send(&s_data, port, &[&src]);
    let mut r = receive(&r_data, port, &out, &code, CodeVia::Env);
    r.wait_for("data flowing", secs(60), |e| {
        ev_is(e, "progress") && bytes_of(e) > 0
    });
    r.kill9();
    assert!(r.events("done").is_empty(), "finished before the kill");
    // The user edits the file meanwhile (same size, new bytes near the end).
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&src).unwrap();
        f.write_all_at(b"edited", 90 * MIB).unwrap();
    }
    let mut r = resume("receiver(resumed)", &r_data, Some(&id), Some(30));
    // The receiver learns why (and stops retrying), quickly.
    let started = Instant::now();
    let r_err = r.wait_for("a source_changed error", secs(20), |e| {
        ev_is(e, "error") && e["kind"] == "source_changed"
    });
    let st = r.wait_exit(secs(10));
    assert!(!st.success(), "{}", r.dump());
    assert!(started.elapsed() < secs(10), "took {:?}", started.elapsed());
    let msg = r_err["message"].as_str().unwrap();
    assert_eq!(
        msg.matches("changed").count(),
        1,
        "the message says it once: {msg}"
    );
    assert!(msg.contains("draft.bin"), "names the file: {msg}");
    let where_ = t.path().display().to_string();
    assert!(
        !msg.contains(&where_),
        "the sender's folders stay private: {msg}"
    );
    let s_err = s.wait_for("source_changed", secs(30), |e| {
        ev_is(e, "error") && e["kind"] == "source_changed"
    });
    assert_eq!(s_err["transfer"], id.as_str());
    assert!(!s.wait_exit(secs(30)).success(), "{}", s.dump());
    assert!(
        !out.join("draft.bin").exists(),
        "a file that cannot be verified is never put in place"
    );
}
