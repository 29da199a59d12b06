//! Signaling wire format: golden files, round trips, unknown input and decode robustness.

use rand::{Rng, SeedableRng};
use skiff_proto::signal::{
    ClientMsg, DeviceId, ErrorCode, IceServer, Nameplate, PeerId, PeerInfo, SealedBlob, ServerMsg,
    SpaceName, MAX_SIGNAL_MESSAGE, SIGNAL_VERSION,
};
use skiff_proto::ProtoError;

fn peer(s: &str) -> PeerId {
    PeerId::try_from(s).unwrap()
}

fn plate(n: u32) -> Nameplate {
    Nameplate::from_number(n).unwrap()
}

fn client_msgs() -> Vec<ClientMsg> {
    vec![
        ClientMsg::Hello {
            version: 1,
            device_id: DeviceId::try_from("d3v1ce").unwrap(),
            name: "Ada's laptop".into(),
            space: None,
        },
        ClientMsg::Hello {
            version: 1,
            device_id: DeviceId::try_from("d3v1ce").unwrap(),
            name: "Ada's laptop".into(),
            space: Some(SpaceName::try_from("office").unwrap()),
        },
        ClientMsg::Allocate,
        ClientMsg::Claim {
            nameplate: plate(42),
        },
        ClientMsg::Release {
            nameplate: plate(42),
        },
        ClientMsg::Send {
            to: peer("p2"),
            blob: SealedBlob("q83vEjRW".into()),
        },
        ClientMsg::RefreshIce,
        ClientMsg::Ping { id: 7 },
    ]
}

fn server_msgs() -> Vec<ServerMsg> {
    let info = PeerInfo {
        peer_id: peer("p2"),
        device_id: DeviceId::try_from("d3v1ce").unwrap(),
        name: "Bob".into(),
    };
    let turn = IceServer {
        urls: vec!["turn:203.0.113.10:3478?transport=udp".into()],
        username: Some("1700003600:p1".into()),
        credential: Some("c2VjcmV0".into()),
    };
    let stun = IceServer {
        urls: vec!["stun:203.0.113.10:3478".into()],
        username: None,
        credential: None,
    };
    vec![
        ServerMsg::Welcome {
            version: 1,
            peer_id: peer("p1"),
            ice_servers: vec![stun, turn.clone()],
            ice_ttl_secs: 3600,
        },
        ServerMsg::Peers {
            list: vec![info.clone()],
        },
        ServerMsg::PeerJoined { peer: info },
        ServerMsg::PeerLeft {
            peer_id: peer("p2"),
        },
        ServerMsg::Allocated {
            nameplate: plate(42),
        },
        ServerMsg::Claimed {
            nameplate: plate(42),
            peer: peer("p1"),
        },
        ServerMsg::NameplateJoined {
            nameplate: plate(42),
            peer: peer("p2"),
        },
        ServerMsg::NameplateLeft {
            nameplate: plate(42),
            peer: peer("p2"),
        },
        ServerMsg::Released {
            nameplate: plate(42),
        },
        ServerMsg::NameplateExpired {
            nameplate: plate(42),
        },
        ServerMsg::Message {
            from: peer("p1"),
            blob: SealedBlob("q83vEjRW".into()),
        },
        ServerMsg::IceServers {
            ice_servers: vec![turn],
            ice_ttl_secs: 3600,
        },
        ServerMsg::Pong { id: 7 },
        ServerMsg::error(
            ErrorCode::NameplateUnavailable,
            "no such nameplate, or it is full",
        ),
    ]
}

fn fixture(name: &str) -> Vec<serde_json::Value> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn client_messages_match_the_golden_file() {
    let golden = fixture("signal_client.json");
    let ours: Vec<_> = client_msgs()
        .iter()
        .map(|m| serde_json::to_value(m).unwrap())
        .collect();
    assert_eq!(
        ours, golden,
        "wire format changed: update the fixture and SIGNAL_VERSION"
    );
    for (value, msg) in golden.iter().zip(client_msgs()) {
        assert_eq!(ClientMsg::decode(&value.to_string()).unwrap(), msg);
        assert_eq!(ClientMsg::decode(&msg.encode()).unwrap(), msg);
    }
}

#[test]
fn server_messages_match_the_golden_file() {
    let golden = fixture("signal_server.json");
    let ours: Vec<_> = server_msgs()
        .iter()
        .map(|m| serde_json::to_value(m).unwrap())
        .collect();
    assert_eq!(
        ours, golden,
        "wire format changed: update the fixture and SIGNAL_VERSION"
    );
    for (value, msg) in golden.iter().zip(server_msgs()) {
        assert_eq!(ServerMsg::decode(&value.to_string()).unwrap(), msg);
    }
}

#[test]
fn client_decodes_unknown_server_news_as_unknown() {
    for value in fixture("signal_unknown.json") {
        let msg = ServerMsg::decode(&value.to_string()).unwrap();
        assert!(
            matches!(
                msg,
                ServerMsg::Unknown
                    | ServerMsg::Error {
                        code: ErrorCode::Unknown,
                        ..
                    }
            ),
            "{value}: {msg:?}"
        );
    }
}

#[test]
fn server_refuses_unknown_client_types() {
    for value in fixture("signal_unknown.json") {
        assert!(matches!(
            ClientMsg::decode(&value.to_string()),
            Err(ProtoError::Malformed { .. })
        ));
    }
}

#[test]
fn decode_rejects_oversized_message() {
    let blob = "A".repeat(MAX_SIGNAL_MESSAGE);
    let text = ClientMsg::Send {
        to: peer("p"),
        blob: SealedBlob(blob),
    }
    .encode();
    assert!(matches!(
        ClientMsg::decode(&text),
        Err(ProtoError::TooLarge { .. })
    ));
}

#[test]
fn decode_rejects_bad_fields_and_deep_nesting() {
    let bad = [
        "",
        "null",
        "{",
        "[]",
        r#"{"type":1}"#,
        r#"{"version":1}"#,
        r#"{"type":"hello","version":"1","device_id":"d","name":"n"}"#,
        r#"{"type":"hello","version":70000,"device_id":"d","name":"n"}"#,
        r#"{"type":"hello","version":1,"device_id":"","name":"n"}"#,
        r#"{"type":"hello","version":1,"device_id":"d\u0000","name":"n"}"#,
        r#"{"type":"claim","nameplate":"007"}"#,
        r#"{"type":"claim","nameplate":42}"#,
        r#"{"type":"send","to":"p"}"#,
        r#"{"type":"send","to":"p","blob":{"x":1}}"#,
    ];
    for text in bad {
        assert!(ClientMsg::decode(text).is_err(), "{text:?} decoded");
    }
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(ClientMsg::decode(&deep).is_err());
    let deep_obj = format!(
        r#"{{"type":"ping","id":{}1{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    assert!(ClientMsg::decode(&deep_obj).is_err());
    assert_eq!(SIGNAL_VERSION, 1);
}

/// Property: decoding never panics, whatever the bytes (random, and mutations of valid
/// messages), and anything that decodes re-encodes to something that decodes the same.
#[test]
fn decode_never_panics_on_any_input() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let seeds: Vec<String> = client_msgs()
        .iter()
        .map(ClientMsg::encode)
        .chain(server_msgs().iter().map(ServerMsg::encode))
        .collect();
    for round in 0..20_000 {
        let bytes: Vec<u8> = if round % 2 == 0 {
            let len = rng.gen_range(0..200);
            (0..len).map(|_| rng.gen()).collect()
        } else {
            let mut b = seeds[rng.gen_range(0..seeds.len())].clone().into_bytes();
            for _ in 0..rng.gen_range(1..6) {
                let i = rng.gen_range(0..b.len());
                match rng.gen_range(0..3) {
                    0 => b[i] = rng.gen(),
                    1 => {
                        b.remove(i);
                    }
                    _ => b.insert(i, *b"{}[]\",:0\\".get(rng.gen_range(0..9)).unwrap()),
                }
            }
            b
        };
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(msg) = ClientMsg::decode(&text) {
            assert_eq!(ClientMsg::decode(&msg.encode()).unwrap(), msg);
        }
        if let Ok(msg) = ServerMsg::decode(&text) {
            assert_eq!(ServerMsg::decode(&msg.encode()).unwrap(), msg);
        }
    }
}
