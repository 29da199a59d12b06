//! Presence per space, peer events, version negotiation and relay rules.

use skiff_proto::signal::{close, ClientMsg, ErrorCode, PeerId, SealedBlob, ServerMsg};

use crate::util::*;

#[tokio::test]
async fn peers_behind_one_address_see_each_other_join_and_leave() {
    let server = start(roomy()).await;
    let mut a = Client::connect(server.addr, "dev-a").await;
    assert!(a.peers.is_empty());
    let b = Client::connect(server.addr, "dev-b").await;
    assert_eq!(b.peers.len(), 1);
    assert_eq!(b.peers[0].peer_id, a.peer_id);
    assert_eq!(b.peers[0].name, "dev-a name");
    match a.recv().await {
        ServerMsg::PeerJoined { peer } => assert_eq!(peer.peer_id, b.peer_id),
        other => panic!("{other:?}"),
    }
    let b_id = b.peer_id.clone();
    drop(b); // vanishes without a close frame
    assert_eq!(a.recv().await, ServerMsg::PeerLeft { peer_id: b_id });
    server.stop().await;
}

#[tokio::test]
async fn spaces_are_separate_by_address_and_by_name() {
    let server = start(roomy()).await;
    let home = "127.0.0.2".parse().unwrap();
    let office = "127.0.0.3".parse().unwrap();
    let mut a = Client::connect_in(server.addr, "a", None, home).await;
    let b = Client::connect_in(server.addr, "b", None, office).await;
    assert!(b.peers.is_empty(), "another address is another space");
    let c = Client::connect_in(server.addr, "c", Some("team"), home).await;
    assert!(c.peers.is_empty(), "a named space is not the address space");
    let d = Client::connect_in(server.addr, "d", Some("team"), office).await;
    assert_eq!(d.peers.len(), 1);
    assert_eq!(d.peers[0].peer_id, c.peer_id);
    // `a` heard nothing of b, c or d.
    a.ping(1).await;
    server.stop().await;
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let mut config = roomy();
    config.trusted_proxies = vec!["127.0.0.10".parse().unwrap()];
    let server = start(config).await;
    let proxy: std::net::IpAddr = "127.0.0.10".parse().unwrap();
    let spoofer: std::net::IpAddr = "127.0.0.11".parse().unwrap();
    let xff = [("x-forwarded-for", "198.51.100.77, 127.0.0.10")];
    let mut a = ws_from(server.addr, proxy, &xff).await.unwrap();
    send(&mut a, &hello("a", None)).await;
    assert!(matches!(recv(&mut a).await, ServerMsg::Welcome { .. }));
    assert_eq!(recv(&mut a).await, ServerMsg::Peers { list: vec![] });
    // The same header from an untrusted client does not put it in 198.51.100.77's space.
    let mut b = ws_from(
        server.addr,
        spoofer,
        &[("x-forwarded-for", "198.51.100.77")],
    )
    .await
    .unwrap();
    send(&mut b, &hello("b", None)).await;
    assert!(matches!(recv(&mut b).await, ServerMsg::Welcome { .. }));
    assert_eq!(recv(&mut b).await, ServerMsg::Peers { list: vec![] });
    // Through the proxy, a second client of 198.51.100.77 does share the space.
    let mut c = ws_from(server.addr, proxy, &xff).await.unwrap();
    send(&mut c, &hello("c", None)).await;
    assert!(matches!(recv(&mut c).await, ServerMsg::Welcome { .. }));
    let ServerMsg::Peers { list } = recv(&mut c).await else {
        panic!()
    };
    assert_eq!(list.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn same_device_reconnecting_replaces_its_old_session() {
    let server = start(roomy()).await;
    let mut watcher = Client::connect(server.addr, "watcher").await;
    let mut old = Client::connect(server.addr, "laptop").await;
    let ServerMsg::PeerJoined { peer } = watcher.recv().await else {
        panic!()
    };
    assert_eq!(peer.peer_id, old.peer_id);
    let new = Client::connect(server.addr, "laptop").await;
    assert_eq!(
        new.peers.len(),
        1,
        "no duplicate member: only the watcher is listed"
    );
    assert_eq!(
        watcher.recv().await,
        ServerMsg::PeerLeft {
            peer_id: old.peer_id.clone()
        }
    );
    let ServerMsg::PeerJoined { peer } = watcher.recv().await else {
        panic!()
    };
    assert_eq!(peer.peer_id, new.peer_id);
    let (code, _) = recv_close(&mut old.ws).await;
    assert_eq!(code, Some(close::POLICY));
    server.stop().await;
}

#[tokio::test]
async fn version_is_negotiated_and_an_impossible_one_refused() {
    let server = start(roomy()).await;
    let mut ws = ws_from(server.addr, localhost(), &[]).await.unwrap();
    let newer = ClientMsg::Hello {
        version: 9,
        device_id: "d".try_into().unwrap(),
        name: "n".into(),
        space: None,
    };
    send(&mut ws, &newer).await;
    let ServerMsg::Welcome { version, .. } = recv(&mut ws).await else {
        panic!()
    };
    assert_eq!(version, 1);
    let mut old = ws_from(server.addr, localhost(), &[]).await.unwrap();
    let ancient = ClientMsg::Hello {
        version: 0,
        device_id: "e".try_into().unwrap(),
        name: "n".into(),
        space: None,
    };
    send(&mut old, &ancient).await;
    let (code, seen) = recv_close(&mut old).await;
    assert!(
        matches!(
            seen[..],
            [ServerMsg::Error {
                code: ErrorCode::UnsupportedVersion,
                ..
            }]
        ),
        "{seen:?}"
    );
    assert_eq!(code, Some(close::POLICY));
    server.stop().await;
}

#[tokio::test]
async fn blobs_are_relayed_only_within_a_shared_space_or_nameplate() {
    let server = start(roomy()).await;
    let (home, away) = ("127.0.0.20".parse().unwrap(), "127.0.0.21".parse().unwrap());
    let mut a = Client::connect_in(server.addr, "a", None, home).await;
    let mut b = Client::connect_in(server.addr, "b", None, home).await;
    let mut far = Client::connect_in(server.addr, "far", None, away).await;
    let _ = a.recv().await; // b joined
    let blob = SealedBlob("b3BhcXVl".into());
    a.send(ClientMsg::Send {
        to: b.peer_id.clone(),
        blob: blob.clone(),
    })
    .await;
    assert_eq!(
        b.recv().await,
        ServerMsg::Message {
            from: a.peer_id.clone(),
            blob: blob.clone()
        }
    );
    // Outside the space: refused, and `far` gets nothing.
    far.send(ClientMsg::Send {
        to: a.peer_id.clone(),
        blob: blob.clone(),
    })
    .await;
    assert!(matches!(
        far.recv().await,
        ServerMsg::Error {
            code: ErrorCode::UnknownPeer,
            ..
        }
    ));
    let nobody = PeerId::try_from("0000000000000000").unwrap();
    a.send(ClientMsg::Send {
        to: nobody,
        blob: blob.clone(),
    })
    .await;
    assert!(matches!(
        a.recv().await,
        ServerMsg::Error {
            code: ErrorCode::UnknownPeer,
            ..
        }
    ));
    // A shared nameplate opens the path across spaces, in both directions.
    let plate = a.allocate().await;
    assert!(matches!(far.claim(&plate).await, ServerMsg::Claimed { .. }));
    assert!(matches!(a.recv().await, ServerMsg::NameplateJoined { .. }));
    far.send(ClientMsg::Send {
        to: a.peer_id.clone(),
        blob: blob.clone(),
    })
    .await;
    assert_eq!(
        a.recv().await,
        ServerMsg::Message {
            from: far.peer_id.clone(),
            blob: blob.clone()
        }
    );
    a.ping(9).await;
    b.ping(9).await;
    assert!(server.metric("skiff_signal_messages_relayed_total").await >= 2);
    server.stop().await;
}
