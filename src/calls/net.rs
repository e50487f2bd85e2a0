//! Media sockets. In the default mode one UDP socket per address serves every
//! participant (what a load balancer or a firewall wants: one port): a datagram
//! goes to the participant whose ICE ufrag its STUN USERNAME names, and after
//! that by its source address. With a port range, each participant binds its own
//! port and everything arriving there is its own.
//!
//! ```text
//! UdpSocket ─recv task─┬─ STUN "ourUfrag:theirUfrag" → by_ufrag ─┐
//!                      └─ anything else → by_addr[(local, source)] ─┴→ Peer mailbox
//! Peer ─Transmit{source, destination}→ the socket announced as `source` (try_send_to);
//!       the first datagram the Peer's WebRTC stack sends to an address adds that
//!       address to by_addr (so only checks it accepted, MESSAGE-INTEGRITY and all,
//!       route media to it).
//! ```
//!
//! With `calls.public_ip` (1:1 NAT) the socket's address is announced as the
//! public IP with the same port; datagrams reach the Peer addressed to the public
//! address, and what the Peer sends from it leaves from the socket. ICE-lite only
//! keeps host candidates, so this is how a NAT'd node is reachable.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use dashmap::DashMap;
use ractor::ActorRef;
use str0m::Candidate;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use super::CallError;
use super::peer::PeerMsg;
use crate::metrics::Metrics;

/// Kernel buffers asked for each media socket: bursts of video from many
/// participants arrive between two reads.
const SOCKET_BUFFER: usize = 4 << 20;
/// Larger than any datagram WebRTC sends (MTU-sized).
const RECV_BUFFER: usize = 2048;

/// One received datagram, as a participant gets it.
pub struct Datagram {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub at: Instant,
    pub data: Vec<u8>,
}

/// Datagrams that may wait in one Peer's mailbox; beyond, new ones are dropped
/// (a flood on one participant's address must not grow memory without bound).
const MAX_QUEUED: usize = 4096;

/// A Peer's mailbox, and how many datagrams wait in it.
#[derive(Clone)]
pub struct Inbox {
    pub peer: ActorRef<PeerMsg>,
    pub queued: Arc<AtomicUsize>,
}

impl Inbox {
    /// Queue a datagram unless too many wait already.
    pub(crate) fn deliver(&self, datagram: Datagram, metrics: &Metrics) {
        if self.queued.load(Ordering::Relaxed) >= MAX_QUEUED {
            metrics.rtc_dropped.with_label_values(&["peer_busy"]).inc();
            return;
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.peer.cast(PeerMsg::Datagram(datagram)).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            metrics.rtc_unrouted.inc();
        }
    }
}

#[derive(Default)]
struct Routes {
    by_ufrag: DashMap<String, Inbox>,
    by_addr: DashMap<(SocketAddr, SocketAddr), Inbox>,
}

impl Routes {
    fn route(&self, local: SocketAddr, source: SocketAddr, data: &[u8]) -> Option<Inbox> {
        if let Some(ufrag) = stun_local_ufrag(data)
            && let Some(inbox) = self.by_ufrag.get(ufrag)
        {
            return Some(inbox.clone());
        }
        self.by_addr.get(&(local, source)).map(|r| r.clone())
    }
}

/// A bound socket and the address it is announced as.
#[derive(Clone)]
pub(crate) struct Socket {
    pub(crate) udp: Arc<UdpSocket>,
    pub(crate) local: SocketAddr,
    pub(crate) announced: SocketAddr,
}

impl Socket {
    /// Send without waiting; a full socket buffer drops the datagram (UDP:
    /// the receiver recovers as from any loss).
    pub(crate) fn send(&self, data: &[u8], to: SocketAddr, metrics: &Metrics) {
        if let Err(e) = self.udp.try_send_to(data, to) {
            metrics.rtc_send_errors.inc();
            tracing::debug!(%to, error = %e, "media datagram not sent");
        }
    }

    pub(crate) fn new(udp: UdpSocket, public_ip: Option<IpAddr>) -> Result<Socket, CallError> {
        let local = udp.local_addr().map_err(CallError::Io)?;
        let announced = public_ip.map_or(local, |ip| SocketAddr::new(ip, local.port()));
        Ok(Socket {
            udp: Arc::new(udp),
            local,
            announced,
        })
    }
}

/// The node's media sockets.
pub struct Net {
    shared: Vec<Socket>,
    addresses: Vec<IpAddr>,
    range: Option<(u16, u16)>,
    public_ip: Option<IpAddr>,
    routes: Arc<Routes>,
    metrics: Arc<Metrics>,
    tasks: Vec<JoinHandle<()>>,
}

impl Net {
    /// Bind the shared sockets (or, with a port range, nothing yet).
    pub fn start(
        config: &super::config::CallsConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Net, CallError> {
        let addresses = config.bind_addresses();
        let public_ip = config.public_ip();
        let routes = Arc::new(Routes::default());
        let mut shared = Vec::new();
        let mut tasks = Vec::new();
        if config.port_range().is_none() {
            // With port 0 the first address picks the port and the others follow it.
            let mut port = config.udp_port;
            for ip in &addresses {
                let socket = Socket::new(bind(SocketAddr::new(*ip, port))?, public_ip)?;
                port = socket.local.port();
                let (routes, local) = (routes.clone(), socket.local);
                tasks.push(tokio::spawn(receive(
                    socket.clone(),
                    move |data, source| routes.route(local, source, data),
                    metrics.clone(),
                )));
                shared.push(socket);
            }
        }
        Ok(Net {
            shared,
            addresses,
            range: config.port_range(),
            public_ip,
            routes,
            metrics,
            tasks,
        })
    }

    /// The shared sockets' bound addresses (none with a port range).
    pub fn shared_addresses(&self) -> Vec<SocketAddr> {
        self.shared.iter().map(|s| s.local).collect()
    }

    /// Sockets for one participant whose local ICE ufrag is `ufrag`.
    pub fn endpoint(&self, ufrag: &str, inbox: Inbox) -> Result<Endpoint, CallError> {
        let mut endpoint = Endpoint {
            sockets: Vec::new(),
            ufrag: ufrag.to_string(),
            inbox: inbox.clone(),
            routes: self.routes.clone(),
            shared: self.range.is_none(),
            learned: HashSet::new(),
            tasks: Vec::new(),
            metrics: self.metrics.clone(),
        };
        match self.range {
            None => {
                endpoint.sockets = self.shared.clone();
                self.routes.by_ufrag.insert(ufrag.to_string(), inbox);
            }
            Some((min, max)) => {
                for ip in &self.addresses {
                    let socket = Socket::new(bind_in_range(*ip, min, max)?, self.public_ip)?;
                    // Its own port: everything arriving there is its own.
                    let owner = inbox.clone();
                    endpoint.tasks.push(tokio::spawn(receive(
                        socket.clone(),
                        move |_, _| Some(owner.clone()),
                        self.metrics.clone(),
                    )));
                    endpoint.sockets.push(socket);
                }
            }
        }
        Ok(endpoint)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One participant's view of the media sockets; dropping it forgets its routes.
pub struct Endpoint {
    sockets: Vec<Socket>,
    ufrag: String,
    inbox: Inbox,
    routes: Arc<Routes>,
    /// On the shared sockets (routed by ufrag and address), not its own.
    shared: bool,
    /// (local socket, remote) pairs already routed to this participant.
    learned: HashSet<(SocketAddr, SocketAddr)>,
    tasks: Vec<JoinHandle<()>>,
    metrics: Arc<Metrics>,
}

impl Endpoint {
    /// ICE host candidates: each socket as it is announced (its own address, or
    /// the public IP). ICE-lite keeps host candidates only.
    pub fn candidates(&self) -> Vec<Candidate> {
        let mut out = Vec::new();
        for socket in &self.sockets {
            match Candidate::host(socket.announced, "udp") {
                Ok(c) => out.push(c),
                Err(e) => {
                    tracing::warn!(addr = %socket.announced, error = %e, "no host candidate for this address")
                }
            }
        }
        out
    }

    /// The ICE username changed (an ICE restart): route checks by the new one.
    pub fn set_ufrag(&mut self, ufrag: &str) {
        if ufrag == self.ufrag || !self.shared {
            return;
        }
        let id = self.inbox.peer.get_id();
        self.routes
            .by_ufrag
            .remove_if(&self.ufrag, |_, r| r.peer.get_id() == id);
        self.routes
            .by_ufrag
            .insert(ufrag.to_string(), self.inbox.clone());
        self.ufrag = ufrag.to_string();
    }

    /// Send from the socket announced as `source`; a full socket buffer drops
    /// the datagram (UDP: the receiver recovers as from any loss). The first
    /// datagram to an address routes what comes back from it to this participant.
    pub fn send(&mut self, source: SocketAddr, destination: SocketAddr, contents: &[u8]) {
        let Some(socket) = self.sockets.iter().find(|s| s.announced == source) else {
            tracing::debug!(%source, "no socket for this source address");
            return;
        };
        let pair = (socket.local, destination);
        if self.shared && !self.learned.contains(&pair) {
            self.routes.by_addr.insert(pair, self.inbox.clone());
            self.learned.insert(pair);
        }
        socket.send(contents, destination, &self.metrics);
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let id = self.inbox.peer.get_id();
        self.routes
            .by_ufrag
            .remove_if(&self.ufrag, |_, r| r.peer.get_id() == id);
        for pair in &self.learned {
            self.routes
                .by_addr
                .remove_if(pair, |_, r| r.peer.get_id() == id);
        }
    }
}

pub(crate) fn bind(addr: SocketAddr) -> Result<UdpSocket, CallError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(CallError::Io)?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true).map_err(CallError::Io)?;
    socket
        .bind(&addr.into())
        .map_err(|e| CallError::Bind(addr, e))?;
    UdpSocket::from_std(socket.into()).map_err(CallError::Io)
}

/// A free port in `min..=max`, starting from a random one.
fn bind_in_range(ip: IpAddr, min: u16, max: u16) -> Result<UdpSocket, CallError> {
    let span = u32::from(max - min) + 1;
    let start = rand::random_range(0..span);
    for i in 0..span {
        let port = min + ((start + i) % span) as u16;
        if let Ok(socket) = bind(SocketAddr::new(ip, port)) {
            return Ok(socket);
        }
    }
    Err(CallError::NoPort(ip, min, max))
}

/// Read `socket` until aborted, handing each datagram to the inbox `route`
/// names for it (`route(data, source)`), or counting it unrouted.
pub(crate) async fn receive(
    socket: Socket,
    route: impl Fn(&[u8], SocketAddr) -> Option<Inbox>,
    metrics: Arc<Metrics>,
) {
    let local = socket.local;
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        let (n, source) = match socket.udp.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors surface here (ECONNREFUSED from an earlier send): not
                // fatal; a persistent error must not spin.
                tracing::debug!(%local, error = %e, "media socket read error");
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                continue;
            }
        };
        let at = Instant::now();
        let data = &buf[..n];
        let Some(inbox) = route(data, source) else {
            metrics.rtc_unrouted.inc();
            continue;
        };
        let datagram = Datagram {
            source,
            destination: socket.announced,
            at,
            data: data.to_vec(),
        };
        inbox.deliver(datagram, &metrics);
    }
}

/// The local ufrag a STUN binding request is addressed to: its USERNAME is
/// `"<receiver ufrag>:<sender ufrag>"` (RFC 8445 §7.2.2).
pub fn stun_local_ufrag(data: &[u8]) -> Option<&str> {
    const MAGIC: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
    const USERNAME: u16 = 0x0006;
    // RFC 7983: STUN's first byte is 0..=3; the header is 20 bytes with the cookie.
    if data.len() < 20 || data[0] > 3 || data[4..8] != MAGIC {
        return None;
    }
    let length = usize::from(u16::from_be_bytes([data[2], data[3]]));
    let body = data.get(20..20 + length)?;
    let mut at = 0;
    while at + 4 <= body.len() {
        let kind = u16::from_be_bytes([body[at], body[at + 1]]);
        let len = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        let value = body.get(at + 4..at + 4 + len)?;
        if kind == USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next().filter(|u| !u.is_empty());
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun(attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (kind, value) in attrs {
            body.extend_from_slice(&kind.to_be_bytes());
            body.extend_from_slice(&(value.len() as u16).to_be_bytes());
            body.extend_from_slice(value);
            body.resize(body.len().div_ceil(4) * 4, 0);
        }
        let mut out = vec![0x00, 0x01];
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        out.extend_from_slice(&[7; 12]);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn username_names_the_receiver_first() {
        // PRIORITY (4 bytes) then USERNAME with padding, as Chrome orders them.
        let m = stun(&[(0x0024, &[0, 0, 0, 1]), (0x0006, b"srv1:cli")]);
        assert_eq!(stun_local_ufrag(&m), Some("srv1"));
        let odd = stun(&[(0x8029, &[1; 8]), (0x0006, b"abc:defgh")]);
        assert_eq!(stun_local_ufrag(&odd), Some("abc"));
    }

    #[test]
    fn other_packets_and_broken_stun_are_not_routed_by_ufrag() {
        assert_eq!(stun_local_ufrag(&stun(&[(0x0024, &[0, 0, 0, 1])])), None);
        // RTP (first byte 0x80), DTLS (22), too short, wrong cookie, truncated attribute.
        let mut rtp = stun(&[(0x0006, b"a:b")]);
        rtp[0] = 0x80;
        assert_eq!(stun_local_ufrag(&rtp), None);
        assert_eq!(stun_local_ufrag(&[22; 40]), None);
        assert_eq!(stun_local_ufrag(&[0; 10]), None);
        let mut cookie = stun(&[(0x0006, b"a:b")]);
        cookie[4] = 0;
        assert_eq!(stun_local_ufrag(&cookie), None);
        let mut cut = stun(&[(0x0006, b"abcdefgh:ij")]);
        cut.truncate(30);
        assert_eq!(stun_local_ufrag(&cut), None);
        assert_eq!(stun_local_ufrag(&stun(&[(0x0006, b":x")])), None);
    }
}
