//! Test helpers: a node on 127.0.0.1:0 and a Phoenix client that acts as the
//! transport (`assert_reply`, `assert_push`), as Phoenix's ChannelTest does.
#![allow(dead_code)]

pub mod binary;
pub mod db;
pub mod jobs;
pub mod nats;
pub mod push;
pub mod redis;
pub mod s3;

/// A TCP port free on 127.0.0.1 (for servers the tests start).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use armoricore::channels::{Access, Channel, ChannelCtx, ChannelError, Reply, Router};
use armoricore::config::Config;
use armoricore::jobs::Jobs;
use armoricore::protocols::jwt::Claims;
use armoricore::server::Node;
use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "integration-test-secret-0123456789";
/// The server API key of test nodes.
pub const API_KEY: &str = "test-api-key";
/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);

/// A channel that fails on demand — registered by tests only, never by the binary.
pub struct CrashChannel;

#[async_trait]
impl Channel for CrashChannel {
    async fn join(&self, _ctx: &ChannelCtx<'_>, payload: &Value) -> Result<Value, Value> {
        if payload["crash"] == json!(true) {
            panic!("join blew up");
        }
        Ok(json!({"joined": true}))
    }

    async fn handle_in(
        &self,
        _ctx: &ChannelCtx<'_>,
        event: &str,
        payload: Value,
    ) -> Result<Option<Reply>, ChannelError> {
        match event {
            "panic" => panic!("handler blew up"),
            "fail" => Err(ChannelError::Failed("handler returned an error".into())),
            "fatal" => Err(ChannelError::Fatal("session cannot continue".into())),
            _ => Ok(Some(Reply::Ok(payload))),
        }
    }
}

/// A running node and the temp dir it keeps its data in.
pub struct TestNode {
    node: Option<Node>,
    pub addr: SocketAddr,
    pub config: Config,
    _dir: tempfile::TempDir,
}

pub fn test_config(dir: &std::path::Path) -> Config {
    let mut config = Config::defaults();
    config.server.host = "127.0.0.1".into();
    config.server.port = 0;
    config.server.data_dir = dir.to_path_buf();
    config.auth.jwt_secret = SECRET.into();
    // Test clients do not always answer the close handshake; don't wait long for them.
    config.server.shutdown_timeout_ms = 300;
    config
}

impl TestNode {
    pub async fn start() -> TestNode {
        TestNode::start_with(|_| {}).await
    }

    /// Start with adjusted config; routes are the standard ones plus `test:crash:*`.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestNode {
        TestNode::start_with_jobs(adjust, Jobs::new()).await
    }

    /// Start with adjusted config and the job handlers in `jobs`.
    pub async fn start_with_jobs(adjust: impl FnOnce(&mut Config), jobs: Jobs) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        config.api.key = API_KEY.into();
        adjust(&mut config);
        let router = Router::standard(&config).route("test:crash:", Access::Public, CrashChannel);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let node = Node::start_with_jobs(config.clone(), router, jobs, listener)
            .await
            .unwrap();
        TestNode {
            addr: node.addr(),
            node: Some(node),
            config,
            _dir: dir,
        }
    }

    pub fn node(&self) -> &Node {
        self.node.as_ref().unwrap()
    }

    pub fn token(&self, user: &str) -> String {
        self.token_for(Claims {
            user_id: user.into(),
            channels: None,
            name: None,
            meta: None,
            admin: false,
        })
    }

    pub fn token_for(&self, claims: Claims) -> String {
        self.node()
            .hub()
            .verifier
            .mint(&claims, Some(Duration::from_secs(600)))
            .unwrap()
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/socket/websocket?{}", self.addr, query)
    }

    /// Connect `user` with vsn 2.0.0.
    pub async fn connect(&self, user: &str) -> PhxClient {
        let url = self.ws_url(&format!("vsn=2.0.0&token={}", self.token(user)));
        PhxClient::connect(&url).await.unwrap()
    }

    /// `GET path` → (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        http(self.addr, "GET", path, &[], "").await
    }

    /// `POST path` with the test API key and a JSON body → (status, JSON body).
    pub async fn api_post(&self, path: &str, body: &Value) -> (u16, Value) {
        let auth = format!("apikey {API_KEY}");
        let (status, text) = http(
            self.addr,
            "POST",
            path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            &body.to_string(),
        )
        .await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The events the node's bus carries on `subject`, as JSON envelopes.
    pub async fn events(&self, subject: &str) -> futures_util::stream::BoxStream<'static, Value> {
        self.node()
            .hub()
            .bus
            .subscribe(subject)
            .await
            .unwrap()
            .map(|m| serde_json::from_slice(&m.body).unwrap())
            .boxed()
    }

    /// The value of a metric series line (`name{labels}`), 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.get("/metrics").await;
        body.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }

    pub async fn shutdown(mut self) {
        self.node.take().unwrap().shutdown().await;
    }
}

/// A minimal HTTP/1.1 request → (status, body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("HTTP response in time")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Poll `check` until it holds or `WAIT` passes.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// What a client saw when the server ended the connection.
#[derive(Debug)]
pub enum Closed {
    Frame(Option<CloseFrame>),
    Dropped,
}

impl Closed {
    pub fn code(&self) -> Option<u16> {
        match self {
            Closed::Frame(Some(f)) => Some(f.code.into()),
            _ => None,
        }
    }
}

/// A Phoenix V2 client over a real socket.
pub struct PhxClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_ref: u64,
    /// Frames received but not yet asserted on.
    pending: VecDeque<Value>,
}

impl PhxClient {
    pub async fn connect(url: &str) -> Result<PhxClient, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(PhxClient {
            ws,
            next_ref: 0,
            pending: VecDeque::new(),
        })
    }

    pub async fn send_raw(&mut self, msg: WsMessage) {
        self.ws.send(msg).await.unwrap();
    }

    /// Push an event; returns its ref.
    pub async fn push(
        &mut self,
        join_ref: Option<&str>,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> String {
        self.next_ref += 1;
        let r = self.next_ref.to_string();
        let frame = json!([join_ref, r, topic, event, payload]);
        self.send_raw(WsMessage::text(frame.to_string())).await;
        r
    }

    /// Join `topic`; returns (join_ref, reply payload `{status, response}`).
    pub async fn join(&mut self, topic: &str, payload: Value) -> (String, Value) {
        self.next_ref += 1;
        let join_ref = self.next_ref.to_string();
        let frame = json!([join_ref, join_ref, topic, "phx_join", payload]);
        self.send_raw(WsMessage::text(frame.to_string())).await;
        let reply = self.assert_reply(&join_ref).await;
        (join_ref, reply)
    }

    /// Join and assert the reply is ok; returns the join_ref.
    pub async fn join_ok(&mut self, topic: &str) -> String {
        let (join_ref, reply) = self.join(topic, json!({})).await;
        assert_eq!(reply["status"], "ok", "join {topic}: {reply}");
        join_ref
    }

    async fn next_frame(&mut self, timeout: Duration) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(timeout, self.ws.next()).await.ok()??;
            match msg {
                Ok(WsMessage::Text(t)) => return Some(serde_json::from_str(t.as_str()).unwrap()),
                Ok(WsMessage::Close(f)) => panic!("connection closed: {f:?}"),
                Ok(_) => continue,
                Err(e) => panic!("socket error: {e}"),
            }
        }
    }

    /// Wait for a frame matching `pred`, keeping the others for later asserts.
    pub async fn find(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.pending.iter().position(&pred) {
            return self.pending.remove(i).unwrap();
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(frame) = self.next_frame(left).await else {
                panic!(
                    "timed out waiting for {what}; unmatched frames: {:?}",
                    self.pending
                );
            };
            if pred(&frame) {
                return frame;
            }
            self.pending.push_back(frame);
        }
    }

    /// The `phx_reply` to push `r`: `{status, response}`.
    pub async fn assert_reply(&mut self, r: &str) -> Value {
        let frame = self
            .find(&format!("reply to ref {r}"), |f| {
                f[1] == json!(r) && f[3] == "phx_reply"
            })
            .await;
        frame[4].clone()
    }

    /// The next `event` on `topic`; returns the whole frame.
    pub async fn assert_push(&mut self, topic: &str, event: &str) -> Value {
        self.find(&format!("{event} on {topic}"), |f| {
            f[2] == json!(topic) && f[3] == json!(event)
        })
        .await
    }

    /// No `event` on `topic` arrives within `within`.
    pub async fn refute_push(&mut self, topic: &str, event: &str, within: Duration) {
        let matches = |f: &Value| f[2] == json!(topic) && f[3] == json!(event);
        assert!(
            !self.pending.iter().any(matches),
            "unexpected {event} on {topic}"
        );
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match self.next_frame(left).await {
                Some(f) if matches(&f) => panic!("unexpected {event} on {topic}: {f}"),
                Some(f) => self.pending.push_back(f),
                None => return,
            }
        }
    }

    /// Wait for the server to close the connection.
    pub async fn closed(&mut self) -> Closed {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => panic!("connection not closed in time"),
                Ok(None) | Ok(Some(Err(_))) => return Closed::Dropped,
                Ok(Some(Ok(WsMessage::Close(f)))) => return Closed::Frame(f),
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Heartbeat round trip: proves the connection is alive and responsive.
    pub async fn heartbeat(&mut self) {
        let r = self.push(None, "phoenix", "heartbeat", json!({})).await;
        let reply = self.assert_reply(&r).await;
        assert_eq!(reply["status"], "ok");
    }
}

impl TestNode {
    pub fn node_mut(&mut self) -> &mut Node {
        self.node.as_mut().unwrap()
    }
}

impl PhxClient {
    /// Connect with a prepared handshake request (extra headers, subprotocols);
    /// also returns the server's handshake response, to check its headers.
    pub async fn connect_request(
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Result<
        (
            PhxClient,
            tokio_tungstenite::tungstenite::handshake::client::Response,
        ),
        tokio_tungstenite::tungstenite::Error,
    > {
        let (ws, response) = tokio_tungstenite::connect_async(request).await?;
        let client = PhxClient {
            ws,
            next_ref: 0,
            pending: VecDeque::new(),
        };
        Ok((client, response))
    }
}

/// The `armoricore_connections` series of WebSocket connections.
pub const WS_CONNECTIONS: &str = r#"armoricore_connections{transport="websocket"}"#;

/// The close frame the server ended the connection with: (code, reason).
pub async fn close_of(c: &mut PhxClient) -> (u16, String) {
    match c.closed().await {
        Closed::Frame(Some(f)) => (f.code.into(), f.reason.to_string()),
        other => panic!("expected a close frame with a code, got {other:?}"),
    }
}

/// The node still serves: the healthy client's heartbeat is answered, its channel
/// still delivers, a new client connects and joins, and only the healthy
/// connection is still counted.
pub async fn still_serving(node: &TestNode, healthy: &mut PhxClient) {
    healthy.heartbeat().await;
    let r = healthy
        .push(
            None,
            "chat:room:1",
            "new_message",
            json!({"content": "still here"}),
        )
        .await;
    assert_eq!(healthy.assert_reply(&r).await["status"], "ok");
    healthy
        .find("its own broadcast", |f| {
            f[2] == "chat:room:1" && f[3] == "new_message" && f[4]["content"] == "still here"
        })
        .await;
    {
        let mut fresh = node.connect("carol").await;
        fresh.join_ok("chat:room:2").await;
        fresh.heartbeat().await;
    }
    eventually("only the healthy connection is left", || async {
        node.metric(WS_CONNECTIONS).await == 1.0
    })
    .await;
}

/// A healthy client that joined `chat:room:1`, before anything bad happens.
pub async fn healthy(node: &TestNode) -> PhxClient {
    let mut c = node.connect("healthy").await;
    c.join_ok("chat:room:1").await;
    c
}

/// The next event of `stream`, within `within`.
pub async fn next_event(
    stream: &mut futures_util::stream::BoxStream<'static, Value>,
    within: Duration,
) -> Value {
    tokio::time::timeout(within, stream.next())
        .await
        .expect("an event in time")
        .expect("the subscription is open")
}
