//! A UDP relay between clients and a server, to cut a path, lose packets on it,
//! or stand for a 1:1 NAT: clients send to `addr`; each client gets its own
//! socket towards `upstream`, and what the server sends to that socket goes back
//! to the client from `addr`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use tokio::net::UdpSocket;

#[derive(Default)]
struct Faults {
    cut: AtomicBool,
    loss_permille: AtomicU32,
}

impl Faults {
    fn drop_one(&self) -> bool {
        self.cut.load(Ordering::Relaxed)
            || rand::random_range(0..1000) < self.loss_permille.load(Ordering::Relaxed)
    }
}

pub struct UdpRelay {
    /// Where clients send.
    pub addr: SocketAddr,
    faults: Arc<Faults>,
    task: tokio::task::JoinHandle<()>,
}

impl UdpRelay {
    /// A relay on a free loopback port.
    pub async fn start(upstream: SocketAddr) -> UdpRelay {
        UdpRelay::start_on("127.0.0.1:0".parse().unwrap(), upstream).await
    }

    /// A relay listening on `front`.
    pub async fn start_on(front: SocketAddr, upstream: SocketAddr) -> UdpRelay {
        let front = Arc::new(UdpSocket::bind(front).await.unwrap());
        let addr = front.local_addr().unwrap();
        let faults = Arc::new(Faults::default());
        let f = faults.clone();
        let task = tokio::spawn(async move {
            let mut backs: HashMap<SocketAddr, (Arc<UdpSocket>, tokio::task::JoinHandle<()>)> =
                HashMap::new();
            let mut buf = vec![0u8; 2048];
            while let Ok((n, client)) = front.recv_from(&mut buf).await {
                let back = match backs.get(&client) {
                    Some((b, _)) => b.clone(),
                    None => {
                        let b = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                        b.connect(upstream).await.unwrap();
                        let (b2, front, f) = (b.clone(), front.clone(), f.clone());
                        let down = tokio::spawn(async move {
                            let mut buf = vec![0u8; 2048];
                            while let Ok(n) = b2.recv(&mut buf).await {
                                if !f.drop_one() {
                                    let _ = front.send_to(&buf[..n], client).await;
                                }
                            }
                        });
                        backs.insert(client, (b.clone(), down));
                        b
                    }
                };
                if !f.drop_one() {
                    let _ = back.send(&buf[..n]).await;
                }
            }
            for (_, (_, t)) in backs {
                t.abort();
            }
        });
        UdpRelay { addr, faults, task }
    }

    /// Drop everything from now on, both ways (the clients "vanish").
    pub fn cut(&self) {
        self.faults.cut.store(true, Ordering::Relaxed);
    }

    /// Drop this fraction of datagrams, both ways, at random.
    #[allow(dead_code)]
    pub fn set_loss(&self, fraction: f64) {
        self.faults
            .loss_permille
            .store((fraction * 1000.0) as u32, Ordering::Relaxed);
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
