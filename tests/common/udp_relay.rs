//! A UDP relay between a client and a server, to cut a path or lose packets on
//! it: the client sends to `addr`, the relay forwards to `upstream` from its own
//! socket and sends the server's datagrams back to the last client address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use tokio::net::UdpSocket;

pub struct UdpRelay {
    /// Where the client sends.
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    loss_permille: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<()>,
}

impl UdpRelay {
    pub async fn start(upstream: SocketAddr) -> UdpRelay {
        let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        back.connect(upstream).await.unwrap();
        let addr = front.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let loss_permille = Arc::new(AtomicU32::new(0));
        let (c, l) = (cut.clone(), loss_permille.clone());
        let task = tokio::spawn(async move {
            let mut client = None;
            let (mut up, mut down) = (vec![0u8; 2048], vec![0u8; 2048]);
            loop {
                let lost = |c: &AtomicBool, l: &AtomicU32| {
                    c.load(Ordering::Relaxed)
                        || rand::random_range(0..1000) < l.load(Ordering::Relaxed)
                };
                tokio::select! {
                    Ok((n, from)) = front.recv_from(&mut up) => {
                        client = Some(from);
                        if !lost(&c, &l) {
                            let _ = back.send(&up[..n]).await;
                        }
                    }
                    Ok(n) = back.recv(&mut down) => {
                        if let Some(to) = client && !lost(&c, &l) {
                            let _ = front.send_to(&down[..n], to).await;
                        }
                    }
                }
            }
        });
        UdpRelay {
            addr,
            cut,
            loss_permille,
            task,
        }
    }

    /// Drop everything from now on, both ways (the client "vanishes").
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
    }

    /// Drop this fraction of datagrams, both ways, at random.
    #[allow(dead_code)]
    pub fn set_loss(&self, fraction: f64) {
        self.loss_permille
            .store((fraction * 1000.0) as u32, Ordering::Relaxed);
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
