//! The `webrtc` runtime for one connection: tokio underneath, with two changes.
//!
//! - Every task the stack spawns (the peer-connection driver and its helpers) goes onto the
//!   connection's [`TaskTracker`], so the connection can prove that nothing outlives it.
//! - Every ICE UDP socket gets `SO_RCVBUF`/`SO_SNDBUF` of the configured size before the
//!   driver uses it (performance guide §4.3 item 1: the default 208 KiB receive buffer
//!   overflows and stalls SCTP). The granted size is read back and logged.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio_util::task::TaskTracker;
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, Runtime,
    TokioRuntime,
};

/// Socket buffer sizes actually granted by the kernel (as `getsockopt` reports them; Linux
/// reports twice the usable size it books).
#[derive(Debug, Default)]
pub struct Granted {
    /// Smallest receive buffer over all sockets so far (0: none yet).
    pub rcvbuf: AtomicUsize,
    /// Smallest send buffer over all sockets so far (0: none yet).
    pub sndbuf: AtomicUsize,
}

impl Granted {
    fn record(slot: &AtomicUsize, v: usize) {
        let _ = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| {
            (cur == 0 || v < cur).then_some(v)
        });
    }
}

pub struct ConnRuntime {
    tokio: TokioRuntime,
    tracker: TaskTracker,
    udp_buffer: usize,
    pub granted: Arc<Granted>,
}

impl fmt::Debug for ConnRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnRuntime")
            .field("udp_buffer", &self.udp_buffer)
            .finish_non_exhaustive()
    }
}

impl ConnRuntime {
    pub fn new(tracker: TaskTracker, udp_buffer: usize) -> Self {
        Self {
            tokio: TokioRuntime,
            tracker,
            udp_buffer,
            granted: Arc::new(Granted::default()),
        }
    }
}

struct TrackedHandle(tokio::task::JoinHandle<()>);

impl JoinHandle for TrackedHandle {
    fn detach(&self) {}
    fn abort(&self) {
        self.0.abort();
    }
    fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

/// Sets one buffer, falling back to the privileged `*FORCE` option (root, or
/// `CAP_NET_ADMIN`) when `net.core.[rw]mem_max` capped the plain request.
fn size_buffer(sock: &std::net::UdpSocket, want: usize, recv: bool) -> Option<usize> {
    let s = socket2::SockRef::from(sock);
    let read = |s: &socket2::SockRef<'_>| {
        if recv {
            s.recv_buffer_size()
        } else {
            s.send_buffer_size()
        }
    };
    let set = if recv {
        s.set_recv_buffer_size(want)
    } else {
        s.set_send_buffer_size(want)
    };
    if let Err(e) = set {
        tracing::debug!("webrtc: setting socket buffer: {e}");
    }
    let mut got = read(&s).ok()?;
    if usable(got) < want && force_buffer(sock, want, recv) {
        got = read(&s).ok()?;
    }
    Some(got)
}

/// The usable part of a reported buffer size: Linux books, and reports, twice the request.
pub fn usable(reported: usize) -> usize {
    if cfg!(target_os = "linux") {
        reported / 2
    } else {
        reported
    }
}

#[cfg(target_os = "linux")]
fn force_buffer(sock: &std::net::UdpSocket, want: usize, recv: bool) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(v) = libc::c_int::try_from(want) else {
        return false;
    };
    let opt = if recv {
        libc::SO_RCVBUFFORCE
    } else {
        libc::SO_SNDBUFFORCE
    };
    // SAFETY: the fd is a live socket owned by `sock`; the option value is a c_int whose
    // address and exact size are passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            std::ptr::from_ref(&v).cast::<libc::c_void>(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

#[cfg(not(target_os = "linux"))]
fn force_buffer(_sock: &std::net::UdpSocket, _want: usize, _recv: bool) -> bool {
    false
}

impl Runtime for ConnRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        Box::new(TrackedHandle(self.tracker.spawn(future)))
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        if self.udp_buffer > 0 {
            let rcv = size_buffer(&socket, self.udp_buffer, true);
            let snd = size_buffer(&socket, self.udp_buffer, false);
            let addr = socket.local_addr().ok();
            if let Some(r) = rcv {
                Granted::record(&self.granted.rcvbuf, r);
            }
            if let Some(s) = snd {
                Granted::record(&self.granted.sndbuf, s);
            }
            if rcv.map_or(0, usable) < self.udp_buffer || snd.map_or(0, usable) < self.udp_buffer {
                tracing::warn!(
                    "webrtc: UDP socket {addr:?}: asked for {} byte buffers, the kernel granted \
                     rcvbuf {rcv:?} sndbuf {snd:?} (raise net.core.rmem_max/wmem_max); \
                     expect drops and stalls",
                    self.udp_buffer
                );
            } else {
                tracing::info!(
                    "webrtc: UDP socket {addr:?}: rcvbuf {rcv:?} sndbuf {snd:?} \
                     (asked {}; Linux reports double)",
                    self.udp_buffer
                );
            }
        }
        self.tokio.wrap_udp_socket(socket)
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.tokio.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.tokio.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.tokio.resolve_host(host)
    }

    fn now(&self) -> Instant {
        self.tokio.now()
    }

    fn sleep(
        &self,
        duration: std::time::Duration,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.tokio.sleep(duration)
    }

    fn interval(&self, period: std::time::Duration) -> Box<dyn AsyncInterval> {
        self.tokio.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.tokio.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.tokio.yield_now()
    }

    fn name(&self) -> &'static str {
        "skiff-tokio"
    }
}
