//! A real `nats-server -js` on a random port, restartable with its store, and a
//! TCP proxy that can cut a node off from it as abruptly as `kill -9`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// A nats-server process with JetStream; killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    store: tempfile::TempDir,
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        let mut server = NatsServer {
            child: None,
            port: super::free_port(),
            store: tempfile::tempdir().unwrap(),
        };
        server.spawn().await;
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    async fn spawn(&mut self) {
        let store: PathBuf = self.store.path().to_path_buf();
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server on PATH (scripts/test installs it)");
        self.child = Some(child);
        // Ready when JetStream answers, not merely when the port accepts.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let last = match async_nats::connect(self.url()).await {
                Ok(client) => match client.request("$JS.API.INFO", "".into()).await {
                    Ok(m) if !String::from_utf8_lossy(&m.payload).contains("\"error\"") => return,
                    Ok(m) => String::from_utf8_lossy(&m.payload).into_owned(),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not start: {last}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kill the server (SIGKILL) and wait for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same port with the same store.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url()).await.unwrap()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Forwards TCP connections to `target` until cut: then every connection drops at
/// once and new ones are refused, as when the process behind them is killed.
pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(Notify::new());
        let stop = cut.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = stop.notified() => break,
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { break };
                        conns.spawn(async move {
                            if let Ok(mut outbound) = TcpStream::connect(target).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            }
                        });
                    }
                }
            }
            conns.abort_all();
        });
        Proxy { addr, cut, task }
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Drop every connection through the proxy and stop accepting.
    pub async fn cut(self) {
        self.cut.notify_one();
        let _ = self.task.await;
    }
}
