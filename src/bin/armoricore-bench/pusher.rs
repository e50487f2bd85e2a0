//! A minimal Pusher Channels (protocol 7) client connection, as pusher-js behaves,
//! for benchmarking Pusher-protocol peers such as Sockudo:
//!
//! - connect from a chosen source address and upgrade on
//!   `/app/{key}?protocol=7&client=armoricore-bench&version=1`; the server greets with
//!   `{"event":"pusher:connection_established","data":"{\"socket_id\":\"…\",\"activity_timeout\":120}"}`
//!   (`data` is a JSON-encoded *string*);
//! - join a room by subscribing to the private channel `private-{room}`, authorised
//!   locally with the app secret (`auth = "{key}:" + hex(HMAC-SHA256(secret, "{socket_id}:{channel}"))`),
//!   and wait for `pusher_internal:subscription_succeeded`;
//! - publish as a *client event* `client-message` on that channel: the server relays
//!   it over the WebSocket to every other subscriber (Pusher never echoes a client
//!   event back to its sender);
//! - answer the server's `pusher:ping` with `pusher:pong` while receiving.
//!
//! The server must allow client events for the app (Sockudo:
//! `SOCKUDO_DEFAULT_APP_ENABLE_CLIENT_MESSAGES=true`, and
//! `SOCKUDO_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SECOND=0` for no rate limit); see
//! `benches/peers/sockudo-run.sh`.

// Until the protocol-neutral driver (driver.rs) dispatches to it.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use aws_lc_rs::hmac;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::phx::{self, Failure, Target, Ws};

/// The client event [`Conn::publish`] sends (client events must start with `client-`).
pub const PUBLISH_EVENT: &str = "client-message";

const PING: &str = "pusher:ping";
const PONG_FRAME: &str = r#"{"event":"pusher:pong","data":{}}"#;
const PING_FRAME: &str = r#"{"event":"pusher:ping","data":{}}"#;

/// A Pusher app's credentials (Sockudo: `SOCKUDO_DEFAULT_APP_ID/KEY/SECRET`).
#[derive(Debug, Clone)]
pub struct App {
    /// Only needed to start the server (the integration test does).
    #[cfg_attr(not(test), allow(dead_code))]
    pub id: String,
    pub key: String,
    pub secret: String,
}

/// An open Pusher connection.
pub struct Conn {
    ws: Ws,
    socket_id: String,
    key: String,
    secret: hmac::Key,
    #[cfg_attr(not(test), allow(dead_code))]
    activity_timeout: Duration,
    /// Events that arrived while [`Conn::join`] waited for its confirmation.
    pending: VecDeque<(String, Value)>,
}

/// The upgrade URL for app `key` on `addr`.
fn url_for(addr: SocketAddr, key: &str) -> String {
    format!("ws://{addr}/app/{key}?protocol=7&client=armoricore-bench&version=1")
}

/// The channel a room maps to: private, so that clients may publish on it.
fn channel_name(room: &str) -> String {
    format!("private-{room}")
}

/// Lower-case hex.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// The `auth` field of a private-channel subscription:
/// `"{key}:" + hex(HMAC-SHA256(secret, "{socket_id}:{channel}"))`.
fn channel_auth(key: &str, secret: &hmac::Key, socket_id: &str, channel: &str) -> String {
    let tag = hmac::sign(secret, format!("{socket_id}:{channel}").as_bytes());
    format!("{key}:{}", hex(tag.as_ref()))
}

/// An incoming frame, borrowing what it can from the text.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(default)]
    data: Value,
}

/// Parse a server frame into (event, channel, data). Pusher servers JSON-encode
/// `data` into a string for their own events and server-published ones; a client
/// event's `data` may arrive as the object the publisher sent. Either way `data`
/// comes back parsed; a string that is not JSON stays a string.
fn parse_frame(text: &str) -> Option<(Cow<'_, str>, Option<Cow<'_, str>>, Value)> {
    let frame: Frame = serde_json::from_str(text).ok()?;
    let data = match frame.data {
        Value::String(s) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
        other => other,
    };
    Some((frame.event, frame.channel, data))
}

/// `(socket_id, activity_timeout)` from a `pusher:connection_established` data.
fn established(data: &Value) -> Option<(String, Duration)> {
    let socket_id = data.get("socket_id")?.as_str()?.to_string();
    let timeout = data
        .get("activity_timeout")
        .and_then(Value::as_u64)
        .unwrap_or(120);
    Some((socket_id, Duration::from_secs(timeout)))
}

#[derive(Serialize)]
struct SubscribeData<'a> {
    channel: &'a str,
    auth: &'a str,
}

#[derive(Serialize)]
struct OutFrame<'a, D: Serialize> {
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    data: D,
}

fn subscribe_frame(channel: &str, auth: &str) -> String {
    let frame = OutFrame {
        event: "pusher:subscribe",
        channel: None,
        data: SubscribeData { channel, auth },
    };
    serde_json::to_string(&frame).expect("a subscribe frame serialises")
}

fn publish_frame(channel: &str, payload: &Value) -> String {
    let frame = OutFrame {
        event: PUBLISH_EVENT,
        channel: Some(channel),
        data: payload,
    };
    serde_json::to_string(&frame).expect("a client event serialises")
}

/// Is this a refusal of the subscription to `channel`?
fn refuses(event: &str, frame_channel: Option<&str>, channel: &str) -> bool {
    (event == "pusher:subscription_error" || event == "pusher:error")
        && frame_channel.is_none_or(|c| c == channel)
}

impl Conn {
    /// Connect from `source` to `target.addr`, upgrade on `/app/{key}` (the URL is
    /// built from the address; `target.url_prefix` is not used) and wait for
    /// `pusher:connection_established`. A `pusher:error` instead (unknown app,
    /// over the connection quota…) is [`Failure::Handshake`].
    pub async fn connect(target: &Target, source: IpAddr, app: &App) -> Result<Conn, Failure> {
        let url = url_for(target.addr, &app.key);
        let mut ws = phx::open(target.addr, source, &url).await?;
        let (socket_id, activity_timeout) = loop {
            let text = next_text(&mut ws).await?;
            let Some((event, _, data)) = parse_frame(&text) else {
                continue;
            };
            match &*event {
                "pusher:connection_established" => {
                    break established(&data).ok_or(Failure::Handshake)?;
                }
                "pusher:error" => return Err(Failure::Handshake),
                _ => {}
            }
        };
        Ok(Conn {
            ws,
            socket_id,
            key: app.key.clone(),
            secret: hmac::Key::new(hmac::HMAC_SHA256, app.secret.as_bytes()),
            activity_timeout,
            pending: VecDeque::new(),
        })
    }

    /// The socket id the server assigned.
    #[cfg(test)]
    pub fn socket_id(&self) -> &str {
        &self.socket_id
    }

    /// The server's `activity_timeout`: it pings a connection silent that long.
    #[cfg(test)]
    pub fn activity_timeout(&self) -> Duration {
        self.activity_timeout
    }

    /// Subscribe to room `room` (channel `private-{room}`); resolves on
    /// `pusher_internal:subscription_succeeded`. A `pusher:subscription_error` or
    /// `pusher:error` for it is [`Failure::JoinRefused`]. Other events arriving
    /// meanwhile are kept for [`Conn::recv`].
    pub async fn join(&mut self, room: &str) -> Result<(), Failure> {
        let channel = channel_name(room);
        let auth = channel_auth(&self.key, &self.secret, &self.socket_id, &channel);
        self.send(subscribe_frame(&channel, &auth)).await?;
        self.subscribed(&channel).await.map(drop)
    }

    /// Subscribe to the presence channel `presence-{room}` as `user_id` (auth signs
    /// `{socket_id}:{channel}:{channel_data}`). The `subscription_succeeded` event,
    /// which lists the members, is kept for [`Conn::recv`], followed by
    /// `pusher_internal:member_added` / `member_removed` events.
    pub async fn join_presence(&mut self, room: &str, user_id: &str) -> Result<(), Failure> {
        let channel = format!("presence-{room}");
        // Sockudo's connection task panics on a presence subscribe without channel_data.
        let channel_data = serde_json::json!({"user_id": user_id, "user_info": {}}).to_string();
        let signed = format!("{}:{channel}:{channel_data}", self.socket_id);
        let tag = hmac::sign(&self.secret, signed.as_bytes());
        let frame = serde_json::json!({
            "event": "pusher:subscribe",
            "data": {
                "channel": channel,
                "auth": format!("{}:{}", self.key, hex(tag.as_ref())),
                "channel_data": channel_data,
            },
        });
        self.send(frame.to_string()).await?;
        let data = self.subscribed(&channel).await?;
        self.pending
            .push_front(("pusher_internal:subscription_succeeded".into(), data));
        Ok(())
    }

    /// Wait for `pusher_internal:subscription_succeeded` on `channel`; its data.
    async fn subscribed(&mut self, channel: &str) -> Result<Value, Failure> {
        loop {
            let text = next_text(&mut self.ws).await?;
            let Some((event, frame_channel, data)) = parse_frame(&text) else {
                continue;
            };
            let frame_channel = frame_channel.as_deref();
            if event == "pusher_internal:subscription_succeeded" && frame_channel == Some(channel) {
                return Ok(data);
            }
            if refuses(&event, frame_channel, channel) {
                return Err(Failure::JoinRefused);
            }
            match &*event {
                PING => self.send(PONG_FRAME.to_string()).await?,
                "pusher:pong" => {}
                _ => self.pending.push_back((event.into_owned(), data)),
            }
        }
    }

    /// Broadcast `payload` (a JSON object) to room `room` as the client event
    /// [`PUBLISH_EVENT`] on `private-{room}`. The server delivers it to every
    /// other subscriber of the room, not back to this connection.
    pub async fn publish(&mut self, room: &str, payload: &Value) -> Result<(), Failure> {
        let frame = publish_frame(&channel_name(room), payload);
        self.send(frame).await
    }

    /// Send `pusher:ping` (the server answers `pusher:pong`, which [`Conn::recv`]
    /// skips). Not needed while `recv` runs, as the server pings idle connections.
    pub async fn keepalive(&mut self) -> Result<(), Failure> {
        self.send(PING_FRAME.to_string()).await
    }

    /// The next event from the server: (event name, data parsed as JSON). Answers
    /// `pusher:ping` and skips `pusher:pong`; every other event is returned,
    /// `pusher:error` and `pusher_internal:*` included, so callers match the name.
    pub async fn recv(&mut self) -> Result<(String, Value), Failure> {
        if let Some(event) = self.pending.pop_front() {
            return Ok(event);
        }
        loop {
            let text = next_text(&mut self.ws).await?;
            let Some((event, _, data)) = parse_frame(&text) else {
                continue;
            };
            match &*event {
                PING => self.send(PONG_FRAME.to_string()).await?,
                "pusher:pong" => {}
                _ => return Ok((event.into_owned(), data)),
            }
        }
    }

    /// Send a close frame and wait (briefly) for the server to end the connection.
    pub async fn close(mut self) {
        if self.ws.close(None).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    async fn send(&mut self, frame: String) -> Result<(), Failure> {
        self.ws
            .send(Message::text(frame))
            .await
            .map_err(|_| Failure::Closed)
    }
}

/// The next text frame; WebSocket pings are answered by tungstenite itself.
async fn next_text(ws: &mut Ws) -> Result<tokio_tungstenite::tungstenite::Utf8Bytes, Failure> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text),
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Err(Failure::Closed),
            Some(Ok(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The worked example of Pusher's authentication docs.
    #[test]
    fn signs_private_channel_auth() {
        let secret = hmac::Key::new(hmac::HMAC_SHA256, b"7ad3773142a6692b25b8");
        assert_eq!(
            channel_auth(
                "278d425bdf160c739803",
                &secret,
                "1234.1234",
                "private-foobar"
            ),
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
    }

    #[test]
    fn encodes_hex() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }

    #[test]
    fn parses_server_frames() {
        let hello = r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"123.456\",\"activity_timeout\":30}"}"#;
        let (event, channel, data) = parse_frame(hello).unwrap();
        assert_eq!(event, "pusher:connection_established");
        assert_eq!(channel, None);
        assert_eq!(
            established(&data),
            Some(("123.456".to_string(), Duration::from_secs(30)))
        );

        // Data as an encoded string (server events) or as an object (relayed client events).
        let encoded = r#"{"event":"client-message","channel":"private-r1","data":"{\"t\":1}"}"#;
        let object = r#"{"channel":"private-r1","event":"client-message","data":{"t":1}}"#;
        for text in [encoded, object] {
            let (event, channel, data) = parse_frame(text).unwrap();
            assert_eq!(event, "client-message");
            assert_eq!(channel.as_deref(), Some("private-r1"));
            assert_eq!(data, json!({"t": 1}));
        }

        let ping = r#"{"event":"pusher:ping"}"#;
        let (event, _, data) = parse_frame(ping).unwrap();
        assert_eq!(event, PING);
        assert_eq!(data, Value::Null);

        let plain = r#"{"event":"e","data":"not json"}"#;
        assert_eq!(parse_frame(plain).unwrap().2, json!("not json"));
        assert!(parse_frame("[1,2]").is_none());
        assert!(parse_frame(r#"{"data":{}}"#).is_none());
    }

    #[test]
    fn recognises_refusals() {
        let ch = "private-r1";
        assert!(refuses("pusher:subscription_error", Some(ch), ch));
        assert!(refuses("pusher:error", None, ch));
        assert!(!refuses("pusher:error", Some("private-r2"), ch));
        assert!(!refuses("client-message", Some(ch), ch));
    }

    #[test]
    fn builds_client_frames() {
        let sub: Value = serde_json::from_str(&subscribe_frame("private-r1", "k:abc")).unwrap();
        assert_eq!(
            sub,
            json!({"event": "pusher:subscribe", "data": {"channel": "private-r1", "auth": "k:abc"}})
        );
        let publ: Value =
            serde_json::from_str(&publish_frame("private-r1", &json!({"t": 1}))).unwrap();
        assert_eq!(
            publ,
            json!({"event": "client-message", "channel": "private-r1", "data": {"t": 1}})
        );
        assert_eq!(
            url_for("127.0.0.1:6001".parse().unwrap(), "k"),
            "ws://127.0.0.1:6001/app/k?protocol=7&client=armoricore-bench&version=1"
        );
    }

    /// Sends SIGTERM to `benches/peers/sockudo-run.sh` (which stops Sockudo) when dropped.
    struct Server(std::process::Child);

    impl Drop for Server {
        fn drop(&mut self) {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
            let _ = self.0.wait();
        }
    }

    /// Start Sockudo on a free port; returns the guard and the port.
    fn start_sockudo(app: &App) -> (Server, u16) {
        use std::io::BufRead;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/peers/sockudo-run.sh");
        let mut child = std::process::Command::new(script)
            .env("PORT", port.to_string())
            .env("APP_ID", &app.id)
            .env("APP_KEY", &app.key)
            .env("APP_SECRET", &app.secret)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run benches/peers/sockudo-run.sh");
        let stdout = child.stdout.take().unwrap();
        let server = Server(child);
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), port.to_string(), "sockudo did not start");
        (server, port)
    }

    #[tokio::test]
    #[ignore = "needs Sockudo: benches/peers/sockudo.sh builds /var/tmp/sockudo/bin/sockudo"]
    async fn pusher_round_trip_with_sockudo() {
        let app = App {
            id: "bench-test".into(),
            key: "bench-test-key".into(),
            secret: "bench-test-secret".into(),
        };
        let (_server, port) = start_sockudo(&app);
        let target = Target {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            url_prefix: format!("ws://127.0.0.1:{port}?"),
        };
        let source: IpAddr = "127.0.0.1".parse().unwrap();
        let wait = Duration::from_secs(5);
        let short = Duration::from_millis(300);

        let mut a = Conn::connect(&target, source, &app).await.unwrap();
        let mut b = Conn::connect(&target, source, &app).await.unwrap();
        assert_ne!(a.socket_id(), b.socket_id());
        assert!(a.activity_timeout() > Duration::ZERO);
        a.join("room1").await.unwrap();
        b.join("room1").await.unwrap();

        let payload = json!({"t": 12345, "pad": "xxxx"});
        a.publish("room1", &payload).await.unwrap();
        let got = tokio::time::timeout(wait, b.recv()).await.unwrap().unwrap();
        assert_eq!(got, (PUBLISH_EVENT.to_string(), payload.clone()));
        // Pusher does not echo a client event to its sender.
        assert!(tokio::time::timeout(short, a.recv()).await.is_err());

        // The other way round, and a ping answered with a pong that recv skips.
        b.keepalive().await.unwrap();
        b.publish("room1", &json!({"t": 2})).await.unwrap();
        let got = tokio::time::timeout(wait, a.recv()).await.unwrap().unwrap();
        assert_eq!(got, (PUBLISH_EVENT.to_string(), json!({"t": 2})));
        assert!(tokio::time::timeout(short, b.recv()).await.is_err());

        // A connection not subscribed to the room receives nothing.
        let mut c = Conn::connect(&target, source, &app).await.unwrap();
        c.join("room2").await.unwrap();
        a.publish("room1", &payload).await.unwrap();
        tokio::time::timeout(wait, b.recv()).await.unwrap().unwrap();
        assert!(tokio::time::timeout(short, c.recv()).await.is_err());

        // A subscription signed with the wrong secret is refused.
        let wrong = App {
            secret: "not-the-secret".into(),
            ..app.clone()
        };
        let mut d = Conn::connect(&target, source, &wrong).await.unwrap();
        assert!(matches!(
            tokio::time::timeout(wait, d.join("room1")).await.unwrap(),
            Err(Failure::JoinRefused)
        ));

        for conn in [a, b, c, d] {
            conn.close().await;
        }
    }
}
