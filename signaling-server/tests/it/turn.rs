//! TURN REST credentials in `welcome` and `ice_servers`, checked against the formula and,
//! where coturn is installed, against a real coturn started on loopback by the test.

use std::time::{SystemTime, UNIX_EPOCH};

use skiff_proto::signal::{ClientMsg, ErrorCode, IceServer, ServerMsg};
use skiff_signal::Config;

use crate::util::*;

fn turn_config(secret: &str, urls: &[String]) -> Config {
    let mut c = roomy();
    c.turn.secret = Some(secret.into());
    c.turn.urls = urls.to_vec();
    c
}

fn turn_entry(servers: &[IceServer]) -> &IceServer {
    servers
        .iter()
        .find(|s| s.username.is_some())
        .expect("a TURN entry with credentials")
}

#[tokio::test]
async fn welcome_carries_ephemeral_turn_credentials() {
    let urls = vec![
        "stun:127.0.0.1:3478".to_owned(),
        "turn:127.0.0.1:3478?transport=udp".to_owned(),
    ];
    let server = start(turn_config("netlab-secret", &urls)).await;
    let mut c = Client::connect(server.addr, "t").await;
    let ServerMsg::Welcome {
        ice_servers,
        ice_ttl_secs,
        peer_id,
        ..
    } = c.welcome.clone()
    else {
        panic!()
    };
    assert_eq!(ice_ttl_secs, 3600);
    assert_eq!(
        ice_servers[0],
        IceServer {
            urls: vec![urls[0].clone()],
            username: None,
            credential: None
        }
    );
    let turn = turn_entry(&ice_servers);
    assert_eq!(turn.urls, vec![urls[1].clone()]);
    let user = turn.username.clone().unwrap();
    let (expiry, id) = user.split_once(':').unwrap();
    assert_eq!(id, peer_id.as_str());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry: u64 = expiry.parse().unwrap();
    assert!(expiry > now && expiry <= now + 3600 + 1);
    assert_eq!(
        turn.credential.clone().unwrap(),
        skiff_signal::turn_password("netlab-secret", &user)
    );
    c.send(ClientMsg::RefreshIce).await;
    let ServerMsg::IceServers {
        ice_servers,
        ice_ttl_secs,
    } = c.recv().await
    else {
        panic!()
    };
    assert_eq!(ice_ttl_secs, 3600);
    assert!(turn_entry(&ice_servers).username.is_some());
    server.stop().await;
}

#[tokio::test]
async fn without_a_secret_there_are_no_turn_credentials() {
    let server = start(roomy()).await;
    let mut c = Client::connect(server.addr, "t").await;
    let ServerMsg::Welcome {
        ice_servers,
        ice_ttl_secs,
        ..
    } = c.welcome.clone()
    else {
        panic!()
    };
    assert!(ice_servers.is_empty());
    assert_eq!(ice_ttl_secs, 0);
    c.send(ClientMsg::RefreshIce).await;
    assert!(matches!(
        c.recv().await,
        ServerMsg::Error {
            code: ErrorCode::NoTurn,
            ..
        }
    ));
    server.stop().await;
}

#[tokio::test]
async fn credential_refreshes_are_rate_limited_per_address() {
    let urls = vec!["turn:127.0.0.1:3478".to_owned()];
    let server = start(turn_config("s3cret", &urls)).await;
    let mut c = Client::connect(server.addr, "t").await;
    let mut limited = false;
    for _ in 0..10 {
        c.send(ClientMsg::RefreshIce).await;
        if let ServerMsg::Error {
            code: ErrorCode::RateLimited,
            ..
        } = c.recv().await
        {
            limited = true;
            break;
        }
    }
    assert!(limited, "refreshes must be limited");
    server.stop().await;
}
