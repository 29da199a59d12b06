//! Wrong codes, malformed input, and `skiff list`: clear JSON errors, non-zero exits.

use std::fs;
use std::time::Instant;

use crate::util::*;

/// A few words of the BIP-39 list, to swap one word of a code for another valid one.
const OTHER_WORDS: &[&str] = &["abandon", "zoo", "ocean"];

#[test]
fn wrong_code_fails_fast_with_code_mismatch() {
    let t = tempdir();
    let (s_data, r_data, out) = (t.path().join("S"), t.path().join("R"), t.path().join("out"));
    fs::create_dir_all(&out).unwrap();
    let src = t.path().join("secret.txt");
    write_random(&src, 100_000, 1);
    let port = free_port();
    let (mut s, code, id) = send(&s_data, port, &[&src]);
    let mut parts: Vec<String> = code.split('-').map(str::to_owned).collect();
    assert_eq!(parts.len(), 4, "code {code:?} is nameplate-word-word-word");
    let last = parts[3].clone();
    parts[3] = OTHER_WORDS
        .iter()
        .find(|w| **w != last)
        .unwrap()
        .to_string();
    let wrong = parts.join("-");

    let started = Instant::now();
    let mut r = receive(&r_data, port, &out, &wrong, CodeVia::Env);
    let r_err = r.wait_event("error", secs(20));
    let r_st = r.wait_exit(secs(20));
    let s_err = s.wait_event("error", secs(20));
    let s_st = s.wait_exit(secs(20));
    let took = started.elapsed();
    eprintln!("wrong code: both sides failed in {took:?}");
    assert!(
        !r_st.success() && !s_st.success(),
        "both must exit non-zero"
    );
    assert_eq!(r_err["kind"], "code_mismatch", "{r_err}");
    assert_eq!(s_err["kind"], "code_mismatch", "{s_err}");
    assert_eq!(s_err["transfer"], id.as_str());
    assert!(took < secs(10), "not fast: {took:?}");
    // Nothing crossed: no offer, no file.
    assert!(
        r.events("offer").is_empty(),
        "the offer crossed before key confirmation"
    );
    assert_empty_dir(&out);
    r.assert_all_json();
    s.assert_all_json();
}

#[test]
fn json_errors_for_bad_input() {
    let t = tempdir();
    let data = t.path().join("D");
    let out = t.path().join("out");
    fs::create_dir_all(&out).unwrap();
    let port = free_port();

    // A malformed code fails before anything is dialled.
    for bad in [
        "not a code",
        "42-notaword-river-olive",
        "kitten-river-olive",
    ] {
        let mut r = receive(&data, port, &out, bad, CodeVia::Env);
        let st = r.wait_exit(secs(20));
        assert!(!st.success(), "{bad:?} accepted\n{}", r.dump());
        r.assert_all_json();
        let errs = r.events("error");
        assert_eq!(errs.len(), 1, "{bad:?}: {:?}", r.seen);
        assert_eq!(errs[0]["kind"], "bad_code", "{bad:?}: {}", errs[0]);
        assert!(errs[0]["transfer"].is_null());
        assert!(!errs[0]["message"].as_str().unwrap_or("").is_empty());
        // The code is not echoed back in the error.
        assert!(!r.stderr().contains(bad) && !errs[0]["message"].as_str().unwrap().contains(bad));
    }
    // An empty code on stdin.
    let mut p = Proc::spawn(
        "receiver",
        &data,
        &[
            "receive",
            "--direct",
            &format!("127.0.0.1:{port}"),
            "--dir",
            out.to_str().unwrap(),
            "--yes",
        ],
        &[],
        Some("\n"),
    );
    assert!(!p.wait_exit(secs(20)).success());
    assert_eq!(p.events("error").len(), 1, "{:?}", p.seen);

    // A valid code but nobody listening: a clear error, not a hang.
    let mut r = receive(&data, port, &out, "42-abandon-zoo-ocean", CodeVia::Env);
    assert!(!r.wait_exit(secs(30)).success(), "{}", r.dump());
    assert_eq!(r.events("error").len(), 1, "{:?}", r.seen);

    // Resuming an unknown transfer.
    let mut p = resume(
        "resume",
        &data,
        Some("00112233445566778899aabbccddeeff"),
        Some(1),
    );
    assert!(!p.wait_exit(secs(20)).success());
    let errs = p.events("error");
    assert_eq!(errs.len(), 1, "{:?}", p.seen);
    assert_eq!(errs[0]["kind"], "unknown_transfer", "{}", errs[0]);
    p.assert_all_json();

    // Sending a path that does not exist.
    let missing = t.path().join("no such file");
    let mut p = Proc::spawn(
        "sender",
        &data,
        &[
            "send",
            "--direct",
            &format!("127.0.0.1:{}", free_port()),
            missing.to_str().unwrap(),
        ],
        &[],
        None,
    );
    assert!(!p.wait_exit(secs(20)).success());
    assert_eq!(p.events("error").len(), 1, "{:?}", p.seen);
    assert!(p.events("code").is_empty());
    p.assert_all_json();

    // Nothing was written by any of these.
    assert_empty_dir(&out);
}

#[test]
fn list_shows_transfers() {
    let t = tempdir();
    let (s_data, r_data, out) = (t.path().join("S"), t.path().join("R"), t.path().join("out"));
    fs::create_dir_all(&out).unwrap();
    assert!(
        list(&t.path().join("fresh")).is_empty(),
        "a fresh data dir lists nothing"
    );

    let src = t.path().join("notes.txt");
    write_random(&src, 2 * MIB + 5, 3);
    let port = free_port();
    let (mut s, code, id) = send(&s_data, port, &[&src]);
    // While the sender waits, it lists its transfer as waiting.
    let rows = list(&s_data);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["id"], id.as_str());
    assert_eq!(rows[0]["state"], "waiting");

    let mut r = receive(&r_data, port, &out, &code, CodeVia::Env);
    r.expect_success(secs(60));
    s.expect_success(secs(30));
    for (data, direction) in [(&s_data, "send"), (&r_data, "receive")] {
        let rows = list(data);
        assert_eq!(rows.len(), 1, "{rows:?}");
        let row = &rows[0];
        assert_eq!(row["id"], id.as_str());
        assert_eq!(row["state"], "completed", "{row}");
        assert_eq!(row["direction"], direction, "{row}");
        assert_eq!(row["files"], 1, "{row}");
        assert_eq!(row["total"], 2 * MIB + 5, "{row}");
    }
    let rows = list(&r_data);
    assert_eq!(rows[0]["held"], 2 * MIB + 5, "{}", rows[0]);
    // The data dir can also come from the environment.
    let mut p = std::process::Command::new(BIN)
        .args(["--json", "list"])
        .env("SKIFF_DATA_DIR", &r_data)
        .output()
        .unwrap();
    assert!(p.status.success());
    let text = String::from_utf8(std::mem::take(&mut p.stdout)).unwrap();
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(v["event"], "transfer");
    assert_eq!(v["id"], id.as_str());
}
