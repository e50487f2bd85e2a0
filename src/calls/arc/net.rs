//! The ArcRTC socket (docs/arcrtc.md §3): one UDP port per node address
//! (`calls.arc_port`) serves every session. A datagram goes to the session
//! whose SSRC it carries (RTP: its SSRC; RTCP: the sender SSRC), which checks
//! it before anything else; the node hands out every SSRC a client sends with.

use std::net::SocketAddr;
use std::sync::Arc;

use dashmap::DashMap;
use ractor::ActorId;
use tokio::task::JoinHandle;

use super::wire::{Packet, classify};
use crate::calls::CallError;
use crate::calls::config::CallsConfig;
use crate::calls::net::{Inbox, Socket, bind, receive};
use crate::metrics::Metrics;

pub struct ArcNet {
    sockets: Vec<Socket>,
    routes: Arc<DashMap<u32, Inbox>>,
    metrics: Arc<Metrics>,
    tasks: Vec<JoinHandle<()>>,
}

impl ArcNet {
    /// Bind `calls.arc_port` on every call address (port 0: the first address
    /// picks a free port and the others follow it).
    pub fn start(config: &CallsConfig, metrics: Arc<Metrics>) -> Result<ArcNet, CallError> {
        let routes: Arc<DashMap<u32, Inbox>> = Arc::new(DashMap::new());
        let mut sockets = Vec::new();
        let mut tasks = Vec::new();
        let mut port = config.arc_port;
        for ip in config.bind_addresses() {
            let socket = Socket::new(bind(SocketAddr::new(ip, port))?, config.public_ip())?;
            port = socket.local.port();
            let routes = routes.clone();
            // By the SSRC of RTP, the sender SSRC of RTCP; anything else is unrouted.
            let route = move |data: &[u8], _| match classify(data)? {
                Packet::Rtp { ssrc } | Packet::Rtcp { ssrc } => {
                    routes.get(&ssrc).map(|r| r.clone())
                }
            };
            tasks.push(tokio::spawn(receive(
                socket.clone(),
                route,
                metrics.clone(),
            )));
            sockets.push(socket);
        }
        Ok(ArcNet {
            sockets,
            routes,
            metrics,
            tasks,
        })
    }

    /// The addresses clients send to, as announced (the public IP when set);
    /// routable ones first.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        let mut out: Vec<_> = self.sockets.iter().map(|s| s.announced).collect();
        out.sort_by_key(|a| a.ip().is_loopback());
        out
    }

    pub fn bound(&self) -> Vec<SocketAddr> {
        self.sockets.iter().map(|s| s.local).collect()
    }

    /// A fresh SSRC, unique on this node, routed to `inbox`.
    pub fn assign_ssrc(&self, inbox: &Inbox) -> u32 {
        loop {
            let ssrc: u32 = rand::random();
            if ssrc == 0 {
                continue;
            }
            if let dashmap::Entry::Vacant(v) = self.routes.entry(ssrc) {
                v.insert(inbox.clone());
                return ssrc;
            }
        }
    }

    /// Stop routing `ssrc` (only if it is still `owner`'s).
    pub fn release_ssrc(&self, ssrc: u32, owner: ActorId) {
        self.routes
            .remove_if(&ssrc, |_, r| r.peer.get_id() == owner);
    }

    /// Send from the socket announced as `local`; a full buffer drops it (UDP).
    pub fn send(&self, local: SocketAddr, to: SocketAddr, data: &[u8]) {
        let Some(socket) = self.sockets.iter().find(|s| s.announced == local) else {
            return;
        };
        socket.send(data, to, &self.metrics);
    }
}

impl Drop for ArcNet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
