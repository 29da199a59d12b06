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

/// A coturn (`turnserver`) on a loopback port with `use-auth-secret`, killed on drop.
struct Coturn {
    child: std::process::Child,
    port: u16,
    _dir: std::path::PathBuf,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

impl Coturn {
    /// None (and a note on stderr) when coturn is not installed.
    fn start(secret: &str) -> Option<Coturn> {
        let bin = ["/usr/bin/turnserver", "/usr/local/bin/turnserver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("skiff-coturn-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = std::process::Command::new(bin)
            .args([
                "-n",
                "--listening-ip=127.0.0.1",
                "--relay-ip=127.0.0.1",
                "--realm=skiff.test",
            ])
            .arg(format!("--listening-port={port}"))
            .args([
                "--use-auth-secret",
                &format!("--static-auth-secret={secret}"),
            ])
            .args([
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                "--no-tcp-relay",
                "--min-port=50000",
                "--max-port=50500",
            ])
            .arg(format!("--pidfile={}", dir.join("pid").display()))
            .arg(format!("--db={}", dir.join("turndb").display()))
            .args(["--log-file=stdout", "--simple-log"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        Some(Coturn {
            child,
            port,
            _dir: dir,
        })
    }
}

mod stun {
    //! Just enough STUN/TURN (RFC 5389/5766) to ask coturn for an allocation.

    use hmac::{Hmac, Mac};
    use md5::{Digest, Md5};
    use sha1::Sha1;

    pub const BINDING: u16 = 0x0001;
    pub const ALLOCATE: u16 = 0x0003;
    const COOKIE: u32 = 0x2112_A442;
    const USERNAME: u16 = 0x0006;
    const MESSAGE_INTEGRITY: u16 = 0x0008;
    const ERROR_CODE: u16 = 0x0009;
    const REALM: u16 = 0x0014;
    const NONCE: u16 = 0x0015;
    const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    const REQUESTED_TRANSPORT: u16 = 0x0019;

    pub struct Msg {
        pub class_method: u16,
        pub attrs: Vec<(u16, Vec<u8>)>,
    }

    impl Msg {
        pub fn attr(&self, t: u16) -> Option<&[u8]> {
            self.attrs
                .iter()
                .find(|(k, _)| *k == t)
                .map(|(_, v)| v.as_slice())
        }
        pub fn error_code(&self) -> Option<u16> {
            self.attr(ERROR_CODE)
                .map(|v| u16::from(v[2]) * 100 + u16::from(v[3]))
        }
        pub fn realm_nonce(&self) -> Option<(Vec<u8>, Vec<u8>)> {
            Some((self.attr(REALM)?.to_vec(), self.attr(NONCE)?.to_vec()))
        }
        pub fn relayed(&self) -> bool {
            self.attr(XOR_RELAYED_ADDRESS).is_some()
        }
    }

    fn push_attr(buf: &mut Vec<u8>, t: u16, v: &[u8]) {
        buf.extend_from_slice(&t.to_be_bytes());
        buf.extend_from_slice(&(v.len() as u16).to_be_bytes());
        buf.extend_from_slice(v);
        while buf.len() % 4 != 0 {
            buf.push(0);
        }
    }

    /// A request; with `auth = (username, password, realm, nonce)` it is signed (long-term
    /// credentials: key = MD5(username:realm:password)).
    pub fn request(method: u16, auth: Option<(&str, &str, &[u8], &[u8])>) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&method.to_be_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&COOKIE.to_be_bytes());
        b.extend_from_slice(&rand::random::<[u8; 12]>());
        if method == ALLOCATE {
            push_attr(&mut b, REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        }
        if let Some((user, pass, realm, nonce)) = auth {
            push_attr(&mut b, USERNAME, user.as_bytes());
            push_attr(&mut b, REALM, realm);
            push_attr(&mut b, NONCE, nonce);
            let len = (b.len() - 20 + 24) as u16;
            b[2..4].copy_from_slice(&len.to_be_bytes());
            let mut key = Md5::new();
            key.update(user.as_bytes());
            key.update(b":");
            key.update(realm);
            key.update(b":");
            key.update(pass.as_bytes());
            let mut mac = Hmac::<Sha1>::new_from_slice(&key.finalize()).unwrap();
            mac.update(&b);
            push_attr(&mut b, MESSAGE_INTEGRITY, &mac.finalize().into_bytes());
        }
        let len = (b.len() - 20) as u16;
        b[2..4].copy_from_slice(&len.to_be_bytes());
        b
    }

    pub fn parse(b: &[u8]) -> Msg {
        let class_method = u16::from_be_bytes([b[0], b[1]]);
        let mut attrs = Vec::new();
        let mut i = 20;
        while i + 4 <= b.len() {
            let t = u16::from_be_bytes([b[i], b[i + 1]]);
            let l = usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]]));
            attrs.push((t, b[i + 4..i + 4 + l].to_vec()));
            i += 4 + l.div_ceil(4) * 4;
        }
        Msg {
            class_method,
            attrs,
        }
    }
}

/// Sends a request and waits (bounded) for its answer, retrying lost datagrams.
async fn exchange(sock: &tokio::net::UdpSocket, req: &[u8]) -> Option<stun::Msg> {
    let mut buf = [0u8; 1500];
    for _ in 0..40 {
        // An ICMP "port unreachable" (coturn still starting) shows up as a send/recv error.
        if sock.send(req).await.is_err() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        }
        match tokio::time::timeout(std::time::Duration::from_millis(250), sock.recv(&mut buf)).await
        {
            Ok(Ok(n)) if n >= 20 && buf[8..20] == req[8..20] => {
                return Some(stun::parse(&buf[..n]))
            }
            Ok(Err(_)) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            _ => {}
        }
    }
    None
}

/// Allocate with the given credentials; returns the final answer.
async fn allocate(port: u16, user: &str, pass: &str) -> stun::Msg {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(("127.0.0.1", port)).await.unwrap();
    let challenge = exchange(&sock, &stun::request(stun::ALLOCATE, None))
        .await
        .expect("coturn answers");
    assert_eq!(
        challenge.error_code(),
        Some(401),
        "unauthenticated allocate is challenged"
    );
    let (realm, nonce) = challenge.realm_nonce().expect("realm and nonce");
    let req = stun::request(stun::ALLOCATE, Some((user, pass, &realm, &nonce)));
    exchange(&sock, &req).await.expect("coturn answers")
}

#[tokio::test]
async fn credentials_from_welcome_open_a_real_coturn_allocation() {
    let Some(coturn) = Coturn::start("netlab-secret") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install coturn (apt-get install coturn)"
        );
        eprintln!("SKIPPED: coturn is not installed (apt-get install coturn) — TURN credentials untested against coturn");
        return;
    };
    // Ready when it answers a STUN binding request.
    let probe = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    probe.connect(("127.0.0.1", coturn.port)).await.unwrap();
    assert!(
        exchange(&probe, &stun::request(stun::BINDING, None))
            .await
            .is_some(),
        "coturn did not start"
    );

    let url = format!("turn:127.0.0.1:{}?transport=udp", coturn.port);
    let server = start(turn_config("netlab-secret", &[url])).await;
    let c = Client::connect(server.addr, "t").await;
    let ServerMsg::Welcome { ice_servers, .. } = c.welcome.clone() else {
        panic!()
    };
    let turn = turn_entry(&ice_servers);
    let (user, pass) = (
        turn.username.clone().unwrap(),
        turn.credential.clone().unwrap(),
    );

    let ok = allocate(coturn.port, &user, &pass).await;
    assert_eq!(
        ok.class_method,
        0x0103,
        "allocate success, error {:?}",
        ok.error_code()
    );
    assert!(ok.relayed(), "a relayed address came back");

    // T2: a wrong HMAC and an expired credential are both refused with 401.
    let wrong = allocate(coturn.port, &user, "AAAAAAAAAAAAAAAAAAAAAAAAAAA=").await;
    assert_eq!(wrong.error_code(), Some(401));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired_user = format!("{}:someone", now - 60);
    let expired_pass = skiff_signal::turn_password("netlab-secret", &expired_user);
    let expired = allocate(coturn.port, &expired_user, &expired_pass).await;
    assert_eq!(expired.error_code(), Some(401));
    server.stop().await;
}
