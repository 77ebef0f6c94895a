//! A userspace TCP fault proxy: forwards connections from a listening address to an
//! upstream address, adding a configurable delay to every chunk in each direction, and
//! can stall (hold every byte and every new connection, as if packets were dropped) on
//! demand. The kernel here has no netem qdisc, so latency comes from this proxy.
//!
//! A proxy runs on its own thread with a single-threaded tokio runtime. Given a network
//! namespace, the thread enters it first (`setns`), so the listening socket and every
//! upstream connection live in that namespace. Upstream connections can carry a
//! firewall mark, so an iptables DNAT rule that steers a node's traffic into the proxy
//! can leave the proxy's own traffic alone. Everything is bounded: connections, chunks
//! in flight per direction, the delay; stopping the proxy closes every connection.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

/// Upper bound of the delay added per direction.
pub const DELAY_MAX: Duration = Duration::from_secs(5);
/// Connections forwarded at once; more wait in the listen backlog.
pub const CONNECTIONS_MAX: usize = 256;
/// Chunks read but not yet written, per direction (bounds memory to
/// `CHUNKS_IN_FLIGHT_MAX * CHUNK_BYTES_MAX` per direction and connection).
pub const CHUNKS_IN_FLIGHT_MAX: usize = 64;
pub const CHUNK_BYTES_MAX: usize = 16 * 1024;
/// How often a stalled direction looks whether it may go on.
const STALL_POLL: Duration = Duration::from_millis(20);

/// What the proxy does to traffic right now; changed while it runs.
#[derive(Debug, Default)]
pub struct Rules {
    /// Added to every chunk client -> upstream, in milliseconds.
    delay_up_ms: AtomicU64,
    /// Added to every chunk upstream -> client, in milliseconds.
    delay_down_ms: AtomicU64,
    /// Client -> upstream bytes are held (and new connections are not passed on).
    stall_up: AtomicBool,
    /// Upstream -> client bytes are held.
    stall_down: AtomicBool,
}

impl Rules {
    /// Sets the delay of each direction (clamped to [`DELAY_MAX`]).
    pub fn set_delay(&self, up: Duration, down: Duration) {
        let ms = |d: Duration| u64::try_from(d.min(DELAY_MAX).as_millis()).unwrap_or(0);
        self.delay_up_ms.store(ms(up), Ordering::Relaxed);
        self.delay_down_ms.store(ms(down), Ordering::Relaxed);
    }

    /// Holds (or releases) the bytes of each direction.
    pub fn set_stall(&self, up: bool, down: bool) {
        self.stall_up.store(up, Ordering::Relaxed);
        self.stall_down.store(down, Ordering::Relaxed);
    }

    fn delay(&self, up: bool) -> Duration {
        let ms = if up {
            &self.delay_up_ms
        } else {
            &self.delay_down_ms
        };
        Duration::from_millis(ms.load(Ordering::Relaxed))
    }

    fn stalled(&self, up: bool) -> bool {
        if up {
            self.stall_up.load(Ordering::Relaxed)
        } else {
            self.stall_down.load(Ordering::Relaxed)
        }
    }
}

/// Which node a connection comes from (by the client's address), if known.
pub type Resolver = Arc<dyn Fn(SocketAddr) -> Option<u64> + Send + Sync>;

/// Faults between nodes, shared by the proxies in front of every node (loopback
/// mode): cut links (`from` -> `to`: bytes held) and one node whose traffic is delayed.
#[derive(Default)]
pub struct Links {
    cut: Mutex<BTreeSet<(u64, u64)>>,
    delayed: Mutex<Option<(u64, Duration)>>,
}

impl Links {
    /// Holds every byte `from` sends to `to`.
    pub fn cut(&self, from: u64, to: u64) {
        self.cut.lock().unwrap().insert((from, to));
    }

    /// Delays every byte to and from `node` by `delay` (per direction).
    pub fn delay(&self, node: u64, delay: Duration) {
        *self.delayed.lock().unwrap() = Some((node, delay.min(DELAY_MAX)));
    }

    /// Removes every cut and delay.
    pub fn heal(&self) {
        self.cut.lock().unwrap().clear();
        *self.delayed.lock().unwrap() = None;
    }

    fn is_cut(&self, from: u64, to: u64) -> bool {
        self.cut.lock().unwrap().contains(&(from, to))
    }

    fn delay_of(&self, a: u64, b: u64) -> Duration {
        match *self.delayed.lock().unwrap() {
            Some((n, d)) if n == a || n == b => d,
            _ => Duration::ZERO,
        }
    }
}

/// The node a proxy stands in front of, the shared link faults, and how to tell which
/// node a client connection comes from.
#[derive(Clone)]
pub struct LinkView {
    pub node: u64,
    pub links: Arc<Links>,
    pub resolve: Resolver,
}

/// One forwarded connection: the proxy's rules plus, when its client is a known node,
/// the link faults between that node and the proxied one.
struct Conn {
    rules: Arc<Rules>,
    link: Option<(u64, LinkView)>,
}

impl Conn {
    /// `up` is client -> upstream, i.e. from the client node to the proxied node.
    fn stalled(&self, up: bool) -> bool {
        self.rules.stalled(up)
            || self.link.as_ref().is_some_and(|(from, v)| {
                if up {
                    v.links.is_cut(*from, v.node)
                } else {
                    v.links.is_cut(v.node, *from)
                }
            })
    }

    fn delay(&self, up: bool) -> Duration {
        let link = self
            .link
            .as_ref()
            .map_or(Duration::ZERO, |(from, v)| v.links.delay_of(*from, v.node));
        self.rules.delay(up) + link
    }
}

/// Where a proxy listens and forwards to.
#[derive(Debug, Clone)]
pub struct ProxySpec {
    /// Network namespace to run in (`ip netns` name), or the runner's own.
    pub netns: Option<String>,
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    /// Firewall mark (`SO_MARK`) set on upstream connections.
    pub mark: Option<u32>,
    /// Per-link faults, when the proxy stands in front of a node (loopback mode).
    pub link: Option<LinkView>,
}

impl std::fmt::Debug for LinkView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LinkView(node {})", self.node)
    }
}

/// A running proxy. Dropping it stops it.
pub struct Proxy {
    pub spec: ProxySpec,
    pub rules: Arc<Rules>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Starts the proxy and returns once it listens (or failed to).
    pub fn start(spec: ProxySpec, rules: Arc<Rules>) -> Result<Proxy> {
        let (stop, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let (s, r) = (spec.clone(), rules.clone());
        let thread = std::thread::Builder::new()
            .name(format!("proxy-{}", spec.listen))
            .spawn(move || {
                let listener = (|| -> Result<(tokio::runtime::Runtime, std::net::TcpListener)> {
                    if let Some(ns) = &s.netns {
                        enter_netns(ns)?;
                    }
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    let l = std::net::TcpListener::bind(s.listen)
                        .with_context(|| format!("proxy binding {}", s.listen))?;
                    l.set_nonblocking(true)?;
                    Ok((rt, l))
                })();
                match listener {
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                    Ok((rt, l)) => {
                        let _ = ready_tx.send(Ok(()));
                        rt.block_on(async move {
                            match TcpListener::from_std(l) {
                                Ok(l) => serve(l, s, r, stop_rx).await,
                                Err(e) => eprintln!("berth-chaos: proxy: {e}"),
                            }
                        });
                    }
                }
            })?;
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(Proxy {
                spec,
                rules,
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => bail!("proxy on {} did not start", spec.listen),
        }
    }

    /// Stops accepting, closes every connection and joins the thread.
    pub fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Moves the calling thread into a named network namespace. One of the two places
/// berth-chaos calls into libc directly: std has no `setns`.
#[allow(unsafe_code)]
fn enter_netns(ns: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    let path = format!("/var/run/netns/{ns}");
    let f = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns with a valid namespace fd only changes this thread's namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns {ns}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sets `SO_MARK` (std and tokio have no setter for it).
#[allow(unsafe_code)]
fn set_mark(socket: &TcpSocket, mark: u32) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: SO_MARK takes a u32 value of the given length on a valid socket fd.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&raw const mark).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("SO_MARK: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

async fn serve(
    l: TcpListener,
    spec: ProxySpec,
    rules: Arc<Rules>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            a = l.accept() => a,
            _ = stop.changed() => return,
        };
        let Ok((client, peer)) = accepted else {
            continue;
        };
        let (spec, rules) = (spec.clone(), rules.clone());
        conns.spawn(async move {
            let _permit = permit;
            let link = spec
                .link
                .as_ref()
                .and_then(|v| (v.resolve)(peer).map(|from| (from, v.clone())));
            let conn = Arc::new(Conn { rules, link });
            let _ = forward(client, &spec, conn).await;
        });
        while conns.try_join_next().is_some() {}
    }
}

async fn forward(client: TcpStream, spec: &ProxySpec, conn: Arc<Conn>) -> Result<()> {
    // A stalled proxy passes no new connection on either (like a dropped SYN).
    while conn.stalled(true) {
        tokio::time::sleep(STALL_POLL).await;
    }
    let socket = if spec.upstream.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(m) = spec.mark {
        set_mark(&socket, m)?;
    }
    let upstream = tokio::time::timeout(Duration::from_secs(5), socket.connect(spec.upstream))
        .await
        .context("upstream connect timed out")??;
    client.set_nodelay(true)?;
    upstream.set_nodelay(true)?;
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let up = pipe(cr, uw, conn.clone(), true);
    let down = pipe(ur, cw, conn, false);
    let _ = tokio::join!(up, down);
    Ok(())
}

/// Copies one direction: a reader stamps each chunk with its due time, a writer sends
/// it once due (and not stalled), so the delay adds latency without cutting throughput.
async fn pipe<R, W>(mut r: R, mut w: W, rules: Arc<Conn>, up: bool)
where
    R: AsyncReadExt + Unpin + Send + 'static,
    W: AsyncWriteExt + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT_MAX);
    let reader_rules = rules.clone();
    let reader = async move {
        let mut buf = vec![0u8; CHUNK_BYTES_MAX];
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let due = Instant::now() + reader_rules.delay(up);
            if tx.send((due, buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            while rules.stalled(up) {
                tokio::time::sleep(STALL_POLL).await;
            }
            if w.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    fn free_addr() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    async fn round_trip(addr: SocketAddr) -> Duration {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let t = Instant::now();
        s.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        t.elapsed()
    }

    /// The proxy forwards bytes unchanged, adds the configured delay in each
    /// direction, and a stall holds bytes until it is lifted.
    #[tokio::test]
    async fn the_proxy_delays_each_direction_and_stalls_on_demand() {
        let upstream = echo_server().await;
        let rules = Arc::new(Rules::default());
        let spec = ProxySpec {
            netns: None,
            listen: free_addr(),
            upstream,
            mark: None,
            link: None,
        };
        let mut proxy = Proxy::start(spec.clone(), rules.clone()).unwrap();

        let direct = round_trip(spec.listen).await;
        assert!(direct < Duration::from_millis(150), "{direct:?}");

        rules.set_delay(Duration::from_millis(150), Duration::from_millis(100));
        let delayed = round_trip(spec.listen).await;
        assert!(delayed >= Duration::from_millis(250), "{delayed:?}");
        assert!(delayed < Duration::from_secs(2), "{delayed:?}");

        rules.set_delay(Duration::ZERO, Duration::ZERO);
        let mut s = TcpStream::connect(spec.listen).await.unwrap();
        rules.set_stall(false, true);
        s.write_all(b"held").await.unwrap();
        let mut got = [0u8; 4];
        let early = tokio::time::timeout(Duration::from_millis(400), s.read_exact(&mut got)).await;
        assert!(early.is_err(), "bytes passed a stalled proxy");
        rules.set_stall(false, false);
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut got))
            .await
            .expect("released after the stall")
            .unwrap();
        assert_eq!(&got, b"held");

        // A 1 MiB transfer arrives intact through a delayed proxy.
        rules.set_delay(Duration::from_millis(20), Duration::from_millis(20));
        let mut s = TcpStream::connect(spec.listen).await.unwrap();
        let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        let (mut r, mut w) = s.split();
        let send = async {
            w.write_all(&data).await.unwrap();
        };
        let mut back = vec![0u8; data.len()];
        let recv = async { r.read_exact(&mut back).await.unwrap() };
        tokio::join!(send, recv);
        assert!(back == data);

        proxy.stop();
        assert!(TcpStream::connect(spec.listen).await.is_err());
    }

    /// In front of node 2, with every client taken for node 1: a cut 1 -> 2 holds the
    /// requests, a cut 2 -> 1 holds the answers, a delayed node 1 slows both, and a
    /// heal lifts everything.
    #[tokio::test]
    async fn link_faults_apply_per_direction_between_the_nodes() {
        let upstream = echo_server().await;
        let links = Arc::new(Links::default());
        let spec = ProxySpec {
            netns: None,
            listen: free_addr(),
            upstream,
            mark: None,
            link: Some(LinkView {
                node: 2,
                links: links.clone(),
                resolve: Arc::new(|_| Some(1)),
            }),
        };
        let _proxy = Proxy::start(spec.clone(), Arc::new(Rules::default())).unwrap();
        let held = |cut: (u64, u64)| {
            let links = links.clone();
            async move {
                let mut s = TcpStream::connect(spec.listen).await.unwrap();
                links.cut(cut.0, cut.1);
                s.write_all(b"ping").await.unwrap();
                let mut got = [0u8; 4];
                let early =
                    tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut got)).await;
                links.heal();
                if early.is_err() {
                    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut got))
                        .await
                        .expect("released by the heal")
                        .unwrap();
                }
                assert_eq!(&got, b"ping");
                early.is_err()
            }
        };
        assert!(held((1, 2)).await, "a cut 1 -> 2 let bytes through");
        assert!(held((2, 1)).await, "a cut 2 -> 1 let bytes through");
        assert!(!held((3, 2)).await, "a cut between other nodes held bytes");

        links.delay(1, Duration::from_millis(120));
        let delayed = round_trip(spec.listen).await;
        assert!(delayed >= Duration::from_millis(240), "{delayed:?}");
        links.heal();
        assert!(round_trip(spec.listen).await < Duration::from_millis(150));
    }
}
