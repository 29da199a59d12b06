//! The app's commands on tauri's mock runtime, against the real engine and the app's own
//! embedded signaling server: two app instances send a file to each other by code, and to
//! each other's device through the peer list (the request, its phrase, Accept + Trust).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skiff_app::network::EmbeddedOptions;
use tauri::test::{get_ipc_response, mock_builder, MockRuntime, INVOKE_KEY};
use tauri::{App, WebviewWindow, WebviewWindowBuilder};

struct TestApp {
    _app: App<MockRuntime>,
    window: WebviewWindow<MockRuntime>,
}

/// The embedded server on loopback (its fixed port, or a free one when taken): tests never
/// announce anything over mDNS on the host's network.
fn loopback(port: u16) -> EmbeddedOptions {
    EmbeddedOptions {
        host: std::net::Ipv4Addr::LOCALHOST.into(),
        port,
    }
}

fn start(data_dir: &Path) -> TestApp {
    start_on(data_dir, loopback(skiff_app::network::EMBEDDED_PORT))
}

fn start_on(data_dir: &Path, embedded: EmbeddedOptions) -> TestApp {
    // The app's real context (its capabilities decide which commands the window may call).
    let state = skiff_app::start_state_with(data_dir.to_owned(), embedded).expect("engine starts");
    let app = skiff_app::build(mock_builder(), state)
        .build(tauri::generate_context!())
        .expect("app builds");
    let window = WebviewWindowBuilder::new(&app, "main", Default::default())
        .build()
        .expect("window builds");
    TestApp { _app: app, window }
}

impl TestApp {
    fn call(&self, cmd: &str, args: Value) -> Result<Value, Value> {
        get_ipc_response(
            &self.window,
            tauri::webview::InvokeRequest {
                cmd: cmd.into(),
                callback: tauri::ipc::CallbackFn(0),
                error: tauri::ipc::CallbackFn(1),
                url: "tauri://localhost".parse().expect("url"),
                body: tauri::ipc::InvokeBody::Json(args),
                headers: Default::default(),
                invoke_key: INVOKE_KEY.to_string(),
            },
        )
        .map(|b| b.deserialize::<Value>().expect("json reply"))
    }

    fn ok(&self, cmd: &str, args: Value) -> Value {
        self.call(cmd, args)
            .unwrap_or_else(|e| panic!("{cmd} failed: {e}"))
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn starts_with_the_embedded_server_and_a_settings_file_in_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path());
    let info = app.ok("app_info", json!({}));
    assert_eq!(info["network"]["mode"], "embedded");
    let url = info["network"]["url"].as_str().unwrap();
    assert!(
        url.starts_with("ws://127.0.0.1:") && url.ends_with("/ws"),
        "{url}"
    );
    assert_eq!(info["dataDir"], dir.path().display().to_string());
    // The device is known by the engine's key, not by an id in the settings.
    assert!(
        !dir.path().join("settings.toml").exists() || {
            let toml = std::fs::read_to_string(dir.path().join("settings.toml")).unwrap();
            !toml.contains("device_id")
        }
    );
    let key_id = std::fs::metadata(dir.path().join("device.key")).is_ok();
    assert!(key_id, "the engine's device key exists");
    // The embedded server is a real skiff-signal: Test connection passes against it.
    let probe = app.ok("test_connection", json!({ "url": url }));
    assert_eq!(probe["ok"], true, "{probe}");
    assert_eq!(probe["rows"][0]["label"], "Reachable");
}

#[test]
fn the_embedded_server_takes_its_fixed_port_and_falls_back_when_it_is_taken() {
    // The defaults: every interface (the LAN), port 47231; limits the server accepts.
    assert_eq!(skiff_app::network::EMBEDDED_PORT, 47231);
    let d = EmbeddedOptions::default();
    assert!(d.host.is_unspecified() && d.port == 47231, "{d:?}");
    skiff_app::network::embedded_config().validate().unwrap();

    // A free port stands in for 47231 (which another test, or app, may hold).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = start_on(d1.path(), loopback(port));
    let info = first.ok("app_info", json!({}));
    assert_eq!(info["network"]["mode"], "embedded");
    assert_eq!(info["network"]["url"], format!("ws://127.0.0.1:{port}/ws"));
    assert_eq!(info["network"]["note"], Value::Null, "{info}");
    // On loopback there is no LAN to find other apps on.
    assert_eq!(first.ok("get_lan_peers", json!({})), json!([]));

    // A second app: the port is taken, so a free one, and the status says why.
    let second = start_on(d2.path(), loopback(port));
    let info = second.ok("app_info", json!({}));
    assert_eq!(info["network"]["mode"], "embedded");
    let url = info["network"]["url"].as_str().unwrap().to_owned();
    assert!(
        url.starts_with("ws://127.0.0.1:") && url != format!("ws://127.0.0.1:{port}/ws"),
        "{url}"
    );
    let note = info["network"]["note"].as_str().unwrap_or_default();
    assert!(
        note.contains(&format!("port {port} is not available")),
        "{info}"
    );
    let notices = info["notices"].as_array().unwrap();
    assert!(
        notices.iter().any(|n| n["code"] == "embedded_port"),
        "{notices:?}"
    );
    // Both servers are real and serve.
    for u in [format!("ws://127.0.0.1:{port}/ws"), url] {
        let probe = second.ok("test_connection", json!({ "url": u }));
        assert_eq!(probe["ok"], true, "{probe}");
    }
    // Sending to an app that is not on the LAN list is refused in words.
    let err = second
        .call(
            "send_to_lan_peer",
            json!({ "deviceId": "nobody", "paths": [d2.path().join("x")] }),
        )
        .unwrap_err();
    assert_eq!(err["code"], "invalid_input", "{err}");
}

#[test]
fn check_code_normalises_good_codes_and_explains_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path());
    let good = app.ok("check_code", json!({ "text": "  42 River Olive Kitten " }));
    assert_eq!(good["valid"], true);
    assert_eq!(good["code"], "42-river-olive-kitten");
    let bad = app.ok("check_code", json!({ "text": "river olive kitten" }));
    assert_eq!(bad["valid"], false);
    assert!(bad["message"]
        .as_str()
        .unwrap()
        .contains("starts with a number"));
    let word = app.ok("check_code", json!({ "text": "42-river-olive-notaword" }));
    assert!(word["message"].as_str().unwrap().contains("notaword"));
}

#[test]
fn bad_settings_are_refused_and_good_ones_apply_and_persist() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path());
    let mut settings = app.ok("get_settings", json!({}));
    settings["signalUrl"] = json!("https://signal.example.org/ws");
    let err = app
        .call("save_settings", json!({ "settings": settings }))
        .unwrap_err();
    assert_eq!(err["code"], "invalid_input", "{err}");
    // Nothing was written (no file is made at first start either).
    assert!(!std::fs::read_to_string(dir.path().join("settings.toml"))
        .unwrap_or_default()
        .contains("signal_url"));

    settings["signalUrl"] = json!("ws://127.0.0.1:9/ws");
    settings["deviceName"] = json!("Ana's desktop");
    settings["theme"] = json!("dark");
    let info = app.ok("save_settings", json!({ "settings": settings }));
    assert_eq!(info["network"]["mode"], "custom");
    assert_eq!(info["network"]["url"], "ws://127.0.0.1:9/ws");
    let saved = skiff_core::settings::Settings::load(dir.path()).unwrap();
    assert_eq!(saved.signal_url.as_deref(), Some("ws://127.0.0.1:9/ws"));
    assert_eq!(saved.device_name.as_deref(), Some("Ana's desktop"));
    assert_eq!(saved.theme, skiff_core::settings::Theme::Dark);

    // A refused port is named in words.
    let probe = app.ok("test_connection", json!({ "url": "ws://127.0.0.1:9/ws" }));
    assert_eq!(probe["ok"], false);
    let detail = probe["rows"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("Nothing answers on port 9"), "{detail}");
    assert!(probe["rows"][0]["technical"]
        .as_str()
        .unwrap()
        .contains("refused"));
}

#[test]
fn pausing_or_sending_to_an_unknown_target_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path());
    let err = app
        .call("pause_transfer", json!({ "id": "x" }))
        .unwrap_err();
    assert_eq!(err["code"], "unknown_transfer", "{err}");
    let err = app
        .call("send_to_peer", json!({ "deviceId": "d", "paths": [] }))
        .unwrap_err();
    assert_eq!(err["code"], "invalid_input", "{err}");
}

#[test]
fn two_apps_send_a_file_by_code_through_the_commands() {
    let (a_dir, b_dir, files, downloads) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let sender = start(a_dir.path());
    let receiver = start(b_dir.path());
    let name = "<img src=x onerror=alert(1)> ü.bin";
    let file = files.path().join(name);
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &data).unwrap();

    // The receiver uses the sender's embedded server.
    let url = sender.ok("app_info", json!({}))["network"]["url"].clone();
    let mut settings = receiver.ok("get_settings", json!({}));
    settings["signalUrl"] = url;
    settings["downloadDir"] = json!(downloads.path().display().to_string());
    receiver.ok("save_settings", json!({ "settings": settings }));

    let share = sender.ok("send_paths", json!({ "paths": [file] }));
    assert_eq!(share["totalFiles"], 1);
    assert_eq!(share["totalBytes"], 3_000_000);
    assert_eq!(share["items"][0]["name"], name);
    let id = share["id"].as_str().unwrap().to_owned();
    let listed = sender.ok("list_transfers", json!({}));
    let row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id.as_str())
        .unwrap();
    assert_eq!(row["running"], true);
    assert_eq!(row["state"], "waiting");

    let offer = receiver.ok(
        "start_receive",
        json!({ "code": share["code"], "address": null }),
    );
    assert_eq!(offer["files"], 1);
    assert_eq!(offer["total"], 3_000_000);
    assert_eq!(offer["downloadDir"], downloads.path().display().to_string());
    let entries = receiver.ok(
        "offer_entries",
        json!({ "id": offer["id"], "offset": 0, "limit": 10 }),
    );
    // The engine's sanitiser names the local file (no `<` or `>` on any platform).
    let local = "_img src=x onerror=alert(1)_ ü.bin";
    assert_eq!(entries[0]["path"], local);
    receiver.ok(
        "decide_offer",
        json!({ "id": offer["id"], "accept": true, "dir": null }),
    );
    let got = downloads.path().join(local);
    wait_until("the received file", || got.exists());
    wait_until("completed on both sides", || {
        let done = |app: &TestApp, id: &Value| {
            app.ok("list_transfers", json!({}))
                .as_array()
                .unwrap()
                .iter()
                .any(|t| &t["id"] == id && t["state"] == "completed")
        };
        done(&receiver, &offer["id"]) && done(&sender, &json!(id))
    });
    assert_eq!(std::fs::read(&got).unwrap(), data);
    // A decided offer is gone.
    let err = receiver
        .call(
            "decide_offer",
            json!({ "id": offer["id"], "accept": false, "dir": null }),
        )
        .unwrap_err();
    assert_eq!(err["code"], "no_such_offer");
}

#[test]
fn a_device_in_the_peer_list_sends_and_the_request_waits_with_its_phrase() {
    let (a_dir, b_dir, files, downloads) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let a = start(a_dir.path());
    let b = start(b_dir.path());
    let url = a.ok("app_info", json!({}))["network"]["url"].clone();
    let mut settings = a.ok("get_settings", json!({}));
    settings["deviceName"] = json!("alpha");
    a.ok("save_settings", json!({ "settings": settings }));
    let mut settings = b.ok("get_settings", json!({}));
    settings["signalUrl"] = url;
    // alpha's built-in server keeps its devices in the LAN space (`network::listen_space`).
    settings["space"] = json!(skiff_core::lan::LAN_SPACE);
    settings["deviceName"] = json!("beta");
    settings["downloadDir"] = json!(downloads.path().display().to_string());
    b.ok("save_settings", json!({ "settings": settings }));

    // Both are online under their device keys and see each other.
    let a_id = a.ok("get_peers", json!({}))["meId"]
        .as_str()
        .unwrap()
        .to_owned();
    let b_id = b.ok("get_peers", json!({}))["meId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(a_id.len(), 64, "{a_id}");
    assert_ne!(a_id, b_id);
    let sees = |app: &TestApp, id: &str, name: &str| {
        let p = app.ok("get_peers", json!({}));
        p["status"] == "online"
            && p["peers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["deviceId"] == id && x["name"] == name && x["trusted"] == false)
    };
    wait_until("alpha sees beta", || sees(&a, &b_id, "beta"));
    wait_until("beta sees alpha", || sees(&b, &a_id, "alpha"));

    let file = files.path().join("to beta.bin");
    let data: Vec<u8> = (0..1_500_000u32).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let share = a.ok("send_to_peer", json!({ "deviceId": b_id, "paths": [file] }));
    assert_eq!(share["to"], b_id.as_str());

    // Not auto-accepted: the request waits at beta with the sender and its phrase.
    let mut request = Value::Null;
    wait_until("the request at beta", || {
        request = b.ok("pending_requests", json!({}))[0].clone();
        !request.is_null()
    });
    assert_eq!(request["peer"], "alpha");
    assert_eq!(request["device"], a_id.as_str());
    assert_eq!(request["trusted"], false);
    assert_eq!(request["phrase"].as_str().unwrap().split('-').count(), 4);
    assert_eq!(request["offer"]["files"], 1);
    assert_eq!(
        request["offer"]["downloadDir"],
        downloads.path().display().to_string()
    );
    let entries = b.ok(
        "offer_entries",
        json!({ "id": request["offer"]["id"], "offset": 0, "limit": 10 }),
    );
    assert_eq!(entries[0]["path"], "to beta.bin");
    // Sending kept alpha online (its send did not replace its own listen connection).
    assert!(sees(&b, &a_id, "alpha"));

    b.ok(
        "decide_offer",
        json!({ "id": request["offer"]["id"], "accept": true, "dir": null, "trust": true }),
    );
    let got = downloads.path().join("to beta.bin");
    wait_until("identical bytes at beta", || {
        std::fs::read(&got).map(|d| d == data).unwrap_or(false)
    });
    assert!(b
        .ok("pending_requests", json!({}))
        .as_array()
        .unwrap()
        .is_empty());
    // Trusted through the engine: the peer list marks it; Forget unpins it.
    let trusted = |app: &TestApp, id: &str, yes: bool| {
        app.ok("get_peers", json!({}))["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["deviceId"] == id && x["trusted"] == yes)
    };
    wait_until("alpha trusted at beta", || trusted(&b, &a_id, true));
    b.ok(
        "set_peer_trust",
        json!({ "deviceId": a_id, "trusted": false }),
    );
    wait_until("alpha forgotten at beta", || trusted(&b, &a_id, false));
    a.ok(
        "set_peer_trust",
        json!({ "deviceId": b_id, "trusted": true }),
    );
    wait_until("beta trusted at alpha", || trusted(&a, &b_id, true));
    let err = a
        .call(
            "set_peer_trust",
            json!({ "deviceId": "f".repeat(64), "trusted": true }),
        )
        .unwrap_err();
    assert_eq!(err["code"], "invalid_input", "{err}");
}
