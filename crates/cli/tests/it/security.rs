//! The share code is a secret: never in argv, never in logs.

use std::fs;

use crate::util::*;

fn cmdline(pid: i32) -> String {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).expect("reading /proc/PID/cmdline");
    String::from_utf8_lossy(&raw).replace('\0', " ")
}

#[test]
fn code_never_appears_in_argv_or_logs() {
    let t = tempdir();
    let (s_data, r_data, out) = (t.path().join("S"), t.path().join("R"), t.path().join("out"));
    fs::create_dir_all(&out).unwrap();
    let src = t.path().join("data.bin");
    let want = write_random(&src, 48 * MIB, 9);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let args = ["send", "--direct", &addr, src.to_str().unwrap()];
    let debug = [("SKIFF_LOG", "debug")];
    let mut s = Proc::spawn("sender", &s_data, &args, &debug, None);
    let code = s.wait_event("code", secs(30))["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let words: Vec<&str> = code.split('-').skip(1).collect();
    assert_eq!(words.len(), 3, "{code}");

    let dir = out.display().to_string();
    let rargs = ["receive", "--direct", &addr, "--dir", &dir, "--yes"];
    let mut r = Proc::spawn(
        "receiver",
        &r_data,
        &rargs,
        &[("SKIFF_CODE", &code), ("SKIFF_LOG", "debug")],
        None,
    );
    r.wait_event("offer", secs(30));
    for p in [&s, &r] {
        let cl = cmdline(p.pid());
        let passed = p.argv.join(" ");
        assert_eq!(
            cl.trim_end(),
            passed,
            "{}: cmdline is what we passed",
            p.name
        );
        assert!(!cl.contains(&code), "{}: the code is in argv: {cl}", p.name);
        for w in &words {
            assert!(
                !cl.contains(w) || passed.contains(w),
                "{}: code word {w:?} in argv: {cl}",
                p.name
            );
        }
    }
    let done = r.wait_event("done", secs(60));
    r.expect_success(secs(30));
    s.expect_success(secs(30));
    assert_eq!(done_sha(&done, "data.bin"), want);

    let spaced = words.join(" ");
    let dashed = words.join("-");
    for p in [&s, &r] {
        let log = p.stderr();
        for needle in [code.as_str(), &dashed, &spaced, &words[..2].join("-")] {
            assert!(
                !log.contains(needle),
                "{}: the code is in the logs:\n{log}",
                p.name
            );
        }
    }
    // The receiver never prints the code either, and the data dirs do not keep it.
    let r_out: String = r.seen.iter().map(|e| e.to_string()).collect();
    assert!(!r_out.contains(&dashed), "the receiver printed the code");
    for d in [&s_data, &r_data] {
        for e in fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                let bytes = fs::read(&p).unwrap();
                let hay = String::from_utf8_lossy(&bytes);
                assert!(
                    !hay.contains(&dashed),
                    "the code is stored in {}",
                    p.display()
                );
            }
        }
    }
}
