//! Nameplates: allocate, claim, exactly two members, release, the failed-claim limit.

use skiff_proto::signal::{ClientMsg, ErrorCode, Nameplate, SealedBlob, ServerMsg};

use crate::util::*;

#[tokio::test]
async fn pairing_allocates_claims_exchanges_and_releases() {
    let server = start(roomy()).await;
    let (x, y) = ("127.0.1.1".parse().unwrap(), "127.0.1.2".parse().unwrap());
    let mut sender = Client::connect_in(server.addr, "s", None, x).await;
    let mut receiver = Client::connect_in(server.addr, "r", None, y).await;
    let plate = sender.allocate().await;
    assert!(
        plate.as_str().len() <= 3,
        "short while few are live: {plate}"
    );
    assert_eq!(
        receiver.claim(&plate).await,
        ServerMsg::Claimed {
            nameplate: plate.clone(),
            peer: sender.peer_id.clone()
        }
    );
    assert_eq!(
        sender.recv().await,
        ServerMsg::NameplateJoined {
            nameplate: plate.clone(),
            peer: receiver.peer_id.clone()
        }
    );
    for i in 0..4 {
        let blob = SealedBlob(format!("blob{i}"));
        let (from, to) = if i % 2 == 0 {
            (&mut sender, &mut receiver)
        } else {
            (&mut receiver, &mut sender)
        };
        from.send(ClientMsg::Send {
            to: to.peer_id.clone(),
            blob: blob.clone(),
        })
        .await;
        assert_eq!(
            to.recv().await,
            ServerMsg::Message {
                from: from.peer_id.clone(),
                blob
            }
        );
    }
    assert_eq!(server.metric("skiff_signal_nameplates").await, 1);
    receiver
        .send(ClientMsg::Release {
            nameplate: plate.clone(),
        })
        .await;
    assert_eq!(
        receiver.recv().await,
        ServerMsg::Released {
            nameplate: plate.clone()
        }
    );
    assert_eq!(
        sender.recv().await,
        ServerMsg::NameplateLeft {
            nameplate: plate.clone(),
            peer: receiver.peer_id.clone()
        }
    );
    // After release the path is closed again.
    receiver
        .send(ClientMsg::Send {
            to: sender.peer_id.clone(),
            blob: SealedBlob("x".into()),
        })
        .await;
    assert!(matches!(
        receiver.recv().await,
        ServerMsg::Error {
            code: ErrorCode::UnknownPeer,
            ..
        }
    ));
    sender
        .send(ClientMsg::Release {
            nameplate: plate.clone(),
        })
        .await;
    assert_eq!(
        sender.recv().await,
        ServerMsg::Released {
            nameplate: plate.clone()
        }
    );
    assert_eq!(
        server.metric("skiff_signal_nameplates").await,
        0,
        "freed when both left"
    );
    assert_eq!(server.metric("skiff_signal_pairings_total").await, 1);
    server.stop().await;
}

#[tokio::test]
async fn third_client_cannot_claim_a_full_nameplate_and_unknown_looks_the_same() {
    let server = start(roomy()).await;
    let mut a = Client::connect(server.addr, "a").await;
    let mut b = Client::connect_in(server.addr, "b", Some("s1"), localhost()).await;
    let mut c = Client::connect_in(server.addr, "c", Some("s2"), localhost()).await;
    let plate = a.allocate().await;
    assert!(matches!(b.claim(&plate).await, ServerMsg::Claimed { .. }));
    assert!(matches!(a.recv().await, ServerMsg::NameplateJoined { .. }));
    let full = c.claim(&plate).await;
    let unknown = c.claim(&Nameplate::from_number(99_999_999).unwrap()).await;
    assert_eq!(
        full, unknown,
        "full and unknown nameplates are indistinguishable"
    );
    assert!(matches!(
        full,
        ServerMsg::Error {
            code: ErrorCode::NameplateUnavailable,
            ..
        }
    ));
    // Claiming your own nameplate: also unavailable.
    let own = a.allocate().await;
    assert_eq!(a.claim(&own).await, unknown);
    // The two members carry on.
    b.send(ClientMsg::Send {
        to: a.peer_id.clone(),
        blob: SealedBlob("hi".into()),
    })
    .await;
    assert_eq!(
        a.recv().await,
        ServerMsg::Message {
            from: b.peer_id.clone(),
            blob: SealedBlob("hi".into())
        }
    );
    server.stop().await;
}

#[tokio::test]
async fn a_member_that_vanishes_frees_its_place_and_tells_the_other() {
    let server = start(roomy()).await;
    let mut a = Client::connect_in(server.addr, "a", Some("x"), localhost()).await;
    let mut b = Client::connect_in(server.addr, "b", Some("y"), localhost()).await;
    let plate = a.allocate().await;
    assert!(matches!(b.claim(&plate).await, ServerMsg::Claimed { .. }));
    let _joined = a.recv().await;
    let b_id = b.peer_id.clone();
    drop(b);
    assert_eq!(
        a.recv().await,
        ServerMsg::NameplateLeft {
            nameplate: plate.clone(),
            peer: b_id
        }
    );
    // The room was used once: nobody else can take the empty seat.
    let mut c = Client::connect_in(server.addr, "c", Some("x"), localhost()).await;
    assert!(matches!(
        c.claim(&plate).await,
        ServerMsg::Error {
            code: ErrorCode::NameplateUnavailable,
            ..
        }
    ));
    let a_id = a.peer_id.clone();
    drop(a);
    // The hub drops presence and nameplates in one step, so after peer_left both are gone.
    assert_eq!(c.recv().await, ServerMsg::PeerLeft { peer_id: a_id });
    assert_eq!(server.metric("skiff_signal_nameplates").await, 0);
    server.stop().await;
}

#[tokio::test]
async fn ten_failed_claims_block_claims_from_that_address_only() {
    let server = start(roomy()).await;
    let guesser_ip = "127.0.2.1".parse().unwrap();
    let mut guesser = Client::connect_in(server.addr, "g", None, guesser_ip).await;
    let mut honest = Client::connect_in(server.addr, "h", None, "127.0.2.2".parse().unwrap()).await;
    let mut owner = Client::connect_in(server.addr, "o", None, "127.0.2.3".parse().unwrap()).await;
    let real = owner.allocate().await;
    let mut codes = Vec::new();
    for n in 0..12u32 {
        let guess = Nameplate::from_number(50_000_000 + n).unwrap();
        match guesser.claim(&guess).await {
            ServerMsg::Error { code, .. } => codes.push(code),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(codes[..10], [ErrorCode::NameplateUnavailable; 10]);
    assert_eq!(codes[10..], [ErrorCode::TooManyAttempts; 2]);
    // Even the right nameplate is refused while blocked, and no list route exists.
    assert!(matches!(
        guesser.claim(&real).await,
        ServerMsg::Error {
            code: ErrorCode::TooManyAttempts,
            ..
        }
    ));
    for path in ["/nameplates", "/peers", "/ws/peers", "/list", "/api/rooms"] {
        assert_eq!(server.get(path).await.0, 404, "{path}");
    }
    // Another address is unaffected.
    assert!(matches!(
        honest.claim(&real).await,
        ServerMsg::Claimed { .. }
    ));
    server.stop().await;
}
