//! Load generator for `skiff-signal` (security guide §2.6, S9). Loopback only, bounded in
//! count and time; it measures a separately started server process through /proc.
//!
//! Phases: (1) N idle connections → server RSS and fds; (2) pairings per second
//! (allocate, claim, 4 blobs, release) from W workers for T seconds; (3) relay latency
//! p50/p99 at a target total rate of 1 KiB blobs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use skiff_proto::signal::{
    ClientMsg, DeviceId, Nameplate, PeerId, SealedBlob, ServerMsg, SpaceName,
};
use tokio::net::TcpSocket;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Plain TCP or TLS, behind one type.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

type Ws = WebSocketStream<Box<dyn Io>>;

/// Set once from `--tls CERT.pem`: connect with TLS, trusting that certificate.
static TLS: std::sync::OnceLock<tokio_rustls::TlsConnector> = std::sync::OnceLock::new();

fn tls_connector(cert_pem: &str) -> Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(cert_pem)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

const STEP: Duration = Duration::from_secs(10);

struct Args {
    addr: SocketAddr,
    pid: u32,
    idle: usize,
    workers: usize,
    pair_secs: u64,
    rate: u64,
    relay_secs: u64,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        addr: "127.0.0.1:8080".parse()?,
        pid: 0,
        idle: 10_000,
        workers: 64,
        pair_secs: 10,
        rate: 5_000,
        relay_secs: 10,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let [k, v] = pair else {
            bail!("flags come in pairs: --name value")
        };
        match k.as_str() {
            "--addr" => a.addr = v.parse()?,
            "--pid" => a.pid = v.parse()?,
            "--idle" => a.idle = v.parse()?,
            "--workers" => a.workers = v.parse()?,
            "--pair-secs" => a.pair_secs = v.parse::<u64>()?.min(60),
            "--rate" => a.rate = v.parse()?,
            "--relay-secs" => a.relay_secs = v.parse::<u64>()?.min(60),
            "--tls" => {
                let _ = TLS.set(tls_connector(v)?);
            }
            _ => bail!("unknown flag {k}"),
        }
    }
    if a.pid == 0 {
        bail!("--pid of the server process is required");
    }
    a.idle = a.idle.min(11_000);
    Ok(a)
}

/// Source addresses spread over 127.0.0.0/8 (each reaches the server on 127.0.0.1).
fn source(i: usize) -> IpAddr {
    let n = 1 + (i / 1000) as u8;
    IpAddr::V4(Ipv4Addr::new(127, 0, 10 + n, 1 + (i % 200) as u8))
}

async fn connect(addr: SocketAddr, i: usize) -> Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source(i), 0))?;
    let tcp = timeout(STEP, socket.connect(addr)).await??;
    tcp.set_nodelay(true)?;
    let (io, url): (Box<dyn Io>, String) = match TLS.get() {
        None => (Box::new(tcp), format!("ws://{addr}/ws")),
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            let stream = timeout(STEP, tls.connect(name, tcp)).await??;
            (
                Box::new(stream),
                format!("wss://localhost:{}/ws", addr.port()),
            )
        }
    };
    let (ws, _) = timeout(STEP, tokio_tungstenite::client_async(url, io)).await??;
    Ok(ws)
}

async fn recv(ws: &mut Ws) -> Result<ServerMsg> {
    loop {
        match timeout(STEP, ws.next()).await?.context("closed")?? {
            Message::Text(t) => return Ok(ServerMsg::decode(t.as_str())?),
            Message::Close(f) => bail!("closed by server: {f:?}"),
            _ => continue,
        }
    }
}

async fn send(ws: &mut Ws, msg: &ClientMsg) -> Result<()> {
    ws.send(Message::text(msg.encode())).await?;
    Ok(())
}

/// Connects and says hello in a space of its own; returns the socket and peer id.
async fn session(addr: SocketAddr, i: usize, space: String) -> Result<(Ws, PeerId)> {
    let mut ws = connect(addr, i).await?;
    let hello = ClientMsg::Hello {
        version: skiff_proto::signal::SIGNAL_VERSION,
        device_id: DeviceId::try_from(format!("bench-{i}")).map_err(anyhow::Error::msg)?,
        name: format!("bench {i}"),
        space: Some(SpaceName::try_from(space).map_err(anyhow::Error::msg)?),
    };
    send(&mut ws, &hello).await?;
    let ServerMsg::Welcome { peer_id, .. } = recv(&mut ws).await? else {
        bail!("no welcome")
    };
    let ServerMsg::Peers { .. } = recv(&mut ws).await? else {
        bail!("no peers")
    };
    Ok((ws, peer_id))
}

struct Proc {
    rss_kib: u64,
    fds: usize,
    cpu_ticks: u64,
}

fn proc_stats(pid: u32) -> Result<Proc> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("VmRSS")?
        .parse()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let cpu_ticks = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(Proc {
        rss_kib,
        fds,
        cpu_ticks,
    })
}

/// CPU percent of one core between two samples (USER_HZ = 100 on Linux).
fn cpu_percent(before: &Proc, after: &Proc, wall: Duration) -> f64 {
    (after.cpu_ticks - before.cpu_ticks) as f64 / 100.0 / wall.as_secs_f64() * 100.0
}

async fn idle_phase(a: &Args) -> Result<()> {
    let base = proc_stats(a.pid)?;
    let started = Instant::now();
    let mut conns = Vec::with_capacity(a.idle);
    // Open in batches of 200 concurrent handshakes.
    let mut i = 0;
    while i < a.idle {
        let batch: Vec<_> = (i..(i + 200).min(a.idle))
            .map(|j| tokio::spawn(session(a.addr, j, format!("idle-{}", j % 500))))
            .collect();
        for h in batch {
            conns.push(h.await??);
        }
        i += 200;
    }
    let opened = started.elapsed();
    // Let the server settle, then sample.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = proc_stats(a.pid)?;
    println!(
        "| idle connections | {} open in {:.1} s | server RSS {:.1} MiB (baseline {:.1} MiB) | {} fds | {:.1} KiB per connection |",
        conns.len(),
        opened.as_secs_f64(),
        s.rss_kib as f64 / 1024.0,
        base.rss_kib as f64 / 1024.0,
        s.fds,
        (s.rss_kib - base.rss_kib) as f64 / conns.len() as f64,
    );
    drop(conns);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = proc_stats(a.pid)?;
    println!(
        "| after closing them | | server RSS {:.1} MiB | {} fds | |",
        after.rss_kib as f64 / 1024.0,
        after.fds
    );
    Ok(())
}

async fn pair_worker(
    addr: SocketAddr,
    w: usize,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> Result<()> {
    let (mut a, a_id) = session(addr, 20_000 + 2 * w, format!("pa-{w}")).await?;
    let (mut b, b_id) = session(addr, 20_001 + 2 * w, format!("pb-{w}")).await?;
    let blob = SealedBlob("x".repeat(256));
    while !stop.load(Ordering::Relaxed) {
        send(&mut a, &ClientMsg::Allocate).await?;
        let ServerMsg::Allocated { nameplate } = recv(&mut a).await? else {
            bail!("allocate")
        };
        send(
            &mut b,
            &ClientMsg::Claim {
                nameplate: nameplate.clone(),
            },
        )
        .await?;
        let ServerMsg::Claimed { .. } = recv(&mut b).await? else {
            bail!("claim")
        };
        let ServerMsg::NameplateJoined { .. } = recv(&mut a).await? else {
            bail!("joined")
        };
        for k in 0..4 {
            let (from, to, to_id) = if k % 2 == 0 {
                (&mut a, &mut b, &b_id)
            } else {
                (&mut b, &mut a, &a_id)
            };
            send(
                from,
                &ClientMsg::Send {
                    to: to_id.clone(),
                    blob: blob.clone(),
                },
            )
            .await?;
            let ServerMsg::Message { .. } = recv(to).await? else {
                bail!("message")
            };
        }
        release(&mut b, &nameplate).await?;
        let ServerMsg::NameplateLeft { .. } = recv(&mut a).await? else {
            bail!("left")
        };
        release(&mut a, &nameplate).await?;
        done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

async fn release(ws: &mut Ws, nameplate: &Nameplate) -> Result<()> {
    send(
        ws,
        &ClientMsg::Release {
            nameplate: nameplate.clone(),
        },
    )
    .await?;
    let ServerMsg::Released { .. } = recv(ws).await? else {
        bail!("release")
    };
    Ok(())
}

async fn pairing_phase(a: &Args) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..a.workers)
        .map(|w| tokio::spawn(pair_worker(a.addr, w, stop.clone(), done.clone())))
        .collect();
    // Warm-up: every worker connected.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = proc_stats(a.pid)?;
    let n0 = done.load(Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.pair_secs)).await;
    let n = done.load(Ordering::Relaxed) - n0;
    let wall = t0.elapsed();
    let after = proc_stats(a.pid)?;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await??;
    }
    println!(
        "| pairings (allocate, claim, 4 blobs, release) | {} workers, {:.0} s | **{:.0} pairings/s** | server CPU {:.0} % | |",
        a.workers,
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64(),
        cpu_percent(&before, &after, wall),
    );
    Ok(())
}

async fn relay_phase(a: &Args) -> Result<()> {
    let pairs = 50usize;
    let per_pair = (a.rate / pairs as u64).max(1);
    let blob_len = 1024;
    let mut handles = Vec::new();
    let epoch = Instant::now();
    let before = proc_stats(a.pid)?;
    for p in 0..pairs {
        let space = format!("relay-{p}");
        let (mut tx, _) = session(a.addr, 30_000 + 2 * p, space.clone()).await?;
        let (mut rx, rx_id) = session(a.addr, 30_001 + 2 * p, space).await?;
        let _joined = recv(&mut tx).await?;
        let secs = a.relay_secs;
        let sender = tokio::spawn(async move {
            let interval = Duration::from_micros(1_000_000 / per_pair);
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let total = per_pair * secs;
            for _ in 0..total {
                tick.tick().await;
                let stamp = epoch.elapsed().as_micros() as u64;
                let mut body = format!("{stamp:020}");
                body.push_str(&"b".repeat(blob_len - 20));
                send(
                    &mut tx,
                    &ClientMsg::Send {
                        to: rx_id.clone(),
                        blob: SealedBlob(body),
                    },
                )
                .await?;
            }
            anyhow::Ok(tx)
        });
        let receiver = tokio::spawn(async move {
            let total = per_pair * secs;
            let mut lat = Vec::with_capacity(total as usize);
            while (lat.len() as u64) < total {
                let ServerMsg::Message { blob, .. } = recv(&mut rx).await? else {
                    continue;
                };
                let sent: u64 = blob.0[..20].parse()?;
                lat.push(epoch.elapsed().as_micros() as u64 - sent);
            }
            anyhow::Ok(lat)
        });
        handles.push((sender, receiver));
    }
    let t0 = Instant::now();
    let mut all = Vec::new();
    let mut keep = Vec::new();
    for (s, r) in handles {
        keep.push(s.await??);
        all.extend(r.await??);
    }
    let wall = t0.elapsed();
    let after = proc_stats(a.pid)?;
    all.sort_unstable();
    let pct = |q: f64| all[((all.len() as f64 - 1.0) * q) as usize] as f64 / 1000.0;
    println!(
        "| relay, 1 KiB blobs | {} msg in {:.1} s = {:.0} msg/s over {pairs} pairs | **p50 {:.2} ms, p99 {:.2} ms**, max {:.1} ms | server CPU {:.0} % | RSS {:.1} MiB |",
        all.len(),
        wall.as_secs_f64(),
        all.len() as f64 / wall.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        pct(1.0),
        cpu_percent(&before, &after, wall),
        after.rss_kib as f64 / 1024.0,
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = parse_args()?;
    println!("| phase | load | result | server | |");
    println!("| --- | --- | --- | --- | --- |");
    idle_phase(&a).await.context("idle phase")?;
    pairing_phase(&a).await.context("pairing phase")?;
    relay_phase(&a).await.context("relay phase")?;
    Ok(())
}
