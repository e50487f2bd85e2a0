//! A minimal Phoenix Channels V2 client connection, as phoenix.js behaves:
//! connect from a chosen source address, upgrade with `vsn=2.0.0&token=…`, join
//! topics (`[join_ref, ref, topic, "phx_join", {}]`, wait for `phx_reply` ok),
//! then stay connected with a heartbeat (`[null, ref, "phoenix", "heartbeat", {}]`)
//! every interval while draining whatever the server pushes.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// An upgraded client connection.
pub type Ws = WebSocketStream<TcpStream>;

/// Where to connect: the resolved address and the URL to upgrade on.
#[derive(Debug, Clone)]
pub struct Target {
    /// The server's socket address.
    pub addr: SocketAddr,
    /// `ws://host:port/path?` with the separator for the next query parameter.
    pub url_prefix: String,
}

impl Target {
    /// Parse `ws://host:port/path[?query]` and resolve the host.
    pub async fn resolve(url: &str) -> anyhow::Result<Target> {
        let rest = url
            .strip_prefix("ws://")
            .context("--url: only ws:// URLs are supported")?;
        let authority = rest.split(['/', '?']).next().unwrap_or(rest);
        let host_port = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = tokio::net::lookup_host(&host_port)
            .await
            .with_context(|| format!("cannot resolve {host_port}"))?
            .find(SocketAddr::is_ipv4)
            .with_context(|| format!("{host_port} has no IPv4 address"))?;
        let sep = if url.contains('?') { '&' } else { '?' };
        Ok(Target {
            addr,
            url_prefix: format!("{url}{sep}"),
        })
    }

    /// The upgrade URL for one token.
    pub fn url_for(&self, token: &str) -> String {
        format!("{}vsn=2.0.0&token={token}", self.url_prefix)
    }
}

/// Small buffers: a load generator holds thousands of mostly idle sockets.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(4 << 20))
        .max_frame_size(Some(4 << 20))
}

/// Why a connection attempt failed; [`Failure::kind`] is the key errors are counted by.
#[derive(Debug)]
pub enum Failure {
    /// Could not bind the source address.
    Bind,
    /// TCP connect failed.
    Connect,
    /// The upgrade was refused with this HTTP status.
    Http(u16),
    /// The upgrade failed otherwise.
    Handshake,
    /// A join was answered with an error.
    JoinRefused,
    /// The server closed the socket before every join was answered.
    Closed,
    /// The attempt took longer than allowed.
    Timeout,
}

impl Failure {
    /// A short stable name.
    pub fn kind(&self) -> String {
        match self {
            Failure::Bind => "bind".into(),
            Failure::Connect => "connect".into(),
            Failure::Http(status) => format!("http_{status}"),
            Failure::Handshake => "handshake".into(),
            Failure::JoinRefused => "join_refused".into(),
            Failure::Closed => "closed_before_join".into(),
            Failure::Timeout => "timeout".into(),
        }
    }
}

/// TCP connect from `source` to `addr` (TCP_NODELAY) and upgrade on `url`, with the
/// small client buffers every driver uses.
pub async fn open(addr: SocketAddr, source: IpAddr, url: &str) -> Result<Ws, Failure> {
    let socket = TcpSocket::new_v4().map_err(|_| Failure::Bind)?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|_| Failure::Bind)?;
    let stream = socket.connect(addr).await.map_err(|_| Failure::Connect)?;
    let _ = stream.set_nodelay(true);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config()))
        .await
        .map_err(|e| match e {
            WsError::Http(resp) => Failure::Http(resp.status().as_u16()),
            _ => Failure::Handshake,
        })?;
    Ok(ws)
}

/// Connect from `source`, upgrade with `token`, join every topic and wait for
/// all the `phx_reply` ok. Join refs are `1..=topics.len()`.
pub async fn connect_and_join(
    target: &Target,
    source: IpAddr,
    token: &str,
    topics: &[String],
) -> Result<Ws, Failure> {
    let mut ws = open(target.addr, source, &target.url_for(token)).await?;
    for (k, topic) in topics.iter().enumerate() {
        let r = (k + 1).to_string();
        let frame = serde_json::json!([r, r, topic, "phx_join", {}]).to_string();
        ws.feed(Message::text(frame))
            .await
            .map_err(|_| Failure::Closed)?;
    }
    ws.flush().await.map_err(|_| Failure::Closed)?;
    let mut pending = topics.len();
    while pending > 0 {
        let text = match ws.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Err(Failure::Closed),
            Some(Ok(_)) => continue,
        };
        match join_reply(&text, topics.len()) {
            Some(true) => pending -= 1,
            Some(false) => return Err(Failure::JoinRefused),
            None => {}
        }
    }
    Ok(ws)
}

/// `Some(ok)` when `text` is the `phx_reply` to one of the joins (refs `1..=joins`).
fn join_reply(text: &str, joins: usize) -> Option<bool> {
    let frame: Value = serde_json::from_str(text).ok()?;
    let frame = frame.as_array()?;
    if frame.get(3)?.as_str()? != "phx_reply" {
        return None;
    }
    let r: usize = frame.get(1)?.as_str()?.parse().ok()?;
    if r == 0 || r > joins {
        return None;
    }
    Some(frame.get(4)?.get("status")?.as_str()? == "ok")
}

/// A joined Phoenix connection, as the protocol-neutral driver uses it.
pub struct Conn {
    ws: Ws,
    /// `topic → join_ref` of the joins (refs `1..=topics`).
    joins: Vec<(String, String)>,
    next_ref: u64,
}

impl Conn {
    /// Connect and join `topics` (see [`connect_and_join`]).
    pub async fn connect(
        target: &Target,
        source: IpAddr,
        token: &str,
        topics: &[String],
    ) -> Result<Conn, Failure> {
        let ws = connect_and_join(target, source, token, topics).await?;
        let joins = topics
            .iter()
            .enumerate()
            .map(|(k, t)| (t.clone(), (k + 1).to_string()))
            .collect();
        Ok(Conn {
            ws,
            joins,
            next_ref: topics.len() as u64 + 1,
        })
    }

    fn take_ref(&mut self) -> u64 {
        self.next_ref += 1;
        self.next_ref - 1
    }

    /// Push `event` with `payload` (a JSON object, already encoded) to a joined topic.
    pub async fn publish(
        &mut self,
        topic: &str,
        event: &str,
        payload: &str,
    ) -> Result<(), Failure> {
        let r = self.take_ref();
        let join_ref = self
            .joins
            .iter()
            .find(|(t, _)| t == topic)
            .map(|(_, r)| r.as_str())
            .unwrap_or("null");
        let topic = serde_json::to_string(topic).unwrap_or_default();
        let frame = format!(r#"["{join_ref}","{r}",{topic},"{event}",{payload}]"#);
        self.ws
            .send(Message::text(frame))
            .await
            .map_err(|_| Failure::Closed)
    }

    /// The heartbeat phoenix.js sends every 30 s.
    pub async fn heartbeat(&mut self) -> Result<(), Failure> {
        let r = self.take_ref();
        let frame = format!(r#"[null,"{r}","phoenix","heartbeat",{{}}]"#);
        self.ws
            .send(Message::text(frame))
            .await
            .map_err(|_| Failure::Closed)
    }

    /// The next text frame (replies and pushes alike); `Err` when the connection ended.
    pub async fn recv(&mut self) -> Result<tokio_tungstenite::tungstenite::Utf8Bytes, Failure> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => return Ok(text),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Err(Failure::Closed),
                Some(Ok(_)) => {}
            }
        }
    }

    /// Close politely.
    pub async fn close(self) {
        close(self.ws).await
    }
}

/// Send a close frame and wait (briefly) for the server to end the connection.
async fn close(mut ws: Ws) {
    if ws.close(None).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_join_replies() {
        let ok = r#"["1","1","chat:room:1","phx_reply",{"status":"ok","response":{}}]"#;
        let err = r#"["2","2","chat:room:2","phx_reply",{"status":"error","response":{}}]"#;
        let push = r#"["1",null,"chat:room:1","presence_state",{}]"#;
        let hb = r#"[null,"9","phoenix","phx_reply",{"status":"ok","response":{}}]"#;
        assert_eq!(join_reply(ok, 2), Some(true));
        assert_eq!(join_reply(err, 2), Some(false));
        assert_eq!(join_reply(push, 2), None);
        assert_eq!(join_reply(hb, 2), None);
    }

    #[tokio::test]
    async fn resolves_targets() {
        let t = Target::resolve("ws://127.0.0.1:4000/socket/websocket")
            .await
            .unwrap();
        assert_eq!(t.addr.port(), 4000);
        assert_eq!(
            t.url_for("T"),
            "ws://127.0.0.1:4000/socket/websocket?vsn=2.0.0&token=T"
        );
        let t = Target::resolve("ws://localhost:1/s?x=1").await.unwrap();
        assert_eq!(t.url_for("T"), "ws://localhost:1/s?x=1&vsn=2.0.0&token=T");
    }
}
