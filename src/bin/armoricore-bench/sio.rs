//! A minimal Socket.IO v4 client over a raw WebSocket (Engine.IO v4 framing, no
//! long-polling), for the Socket.IO peer in `benches/peers/socketio/server.mjs`.
//!
//! The exchange, as socket.io-client does it with `transports: ["websocket"]`:
//! - upgrade on `ws://host:port/socket.io/?EIO=4&transport=websocket`;
//! - the server opens with Engine.IO `0{"sid":…,"pingInterval":…,"pingTimeout":…,"maxPayload":…}`;
//! - Socket.IO connect to the main namespace with auth `40{"token":"…"}`, answered
//!   `40{"sid":"…"}` (or `44{"message":…}` when refused);
//! - events `42["name",arg…]`, with an ack id `42<id>["name",arg…]`, acked `43<id>[arg…]`;
//! - the server pings (`2`) every `pingInterval`, the client pongs (`3`).
//!
//! The peer's events: `join` room and `broadcast` {room, event, payload}, both
//! acked `[{"ok":true}]`; a broadcast reaches every member of the room, the
//! sender included, as event `message` (see [`EVENT`]).

// Nothing calls this driver until `driver::Proto` gains its Socket.IO variant;
// the integration test below exercises all of it meanwhile.

use std::collections::VecDeque;
use std::fmt;
use std::io::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::phx::{self, Failure, Target, Ws};

/// The upgrade path and query of an Engine.IO v4 WebSocket-only connection.
pub const PATH: &str = "/socket.io/?EIO=4&transport=websocket";

/// The event a `broadcast` is delivered as.
pub const EVENT: &str = "message";

/// The Engine.IO open packet (`0{…}`).
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Handshake {
    /// Engine.IO session id.
    pub sid: String,
    /// The server pings this often (ms).
    pub ping_interval: u64,
    /// And closes the connection when no pong came within this (ms).
    pub ping_timeout: u64,
    /// Largest message the server accepts (bytes).
    #[serde(default)]
    pub max_payload: u64,
}

/// One Engine.IO / Socket.IO frame, borrowed from the text it came in; only
/// the first bytes are looked at (see [`parse`]).
#[derive(Debug, PartialEq, Eq)]
enum Frame<'a> {
    /// Engine.IO open `0{…}`: the JSON handshake.
    Open(&'a str),
    /// Engine.IO ping `2` (to be answered with pong `3`).
    Ping,
    /// Engine.IO close `1`, or Socket.IO disconnect `41` of the main namespace.
    Closed,
    /// Socket.IO connect `40{"sid":…}` of the main namespace.
    Connected,
    /// Socket.IO connect error `44{"message":…}`.
    Refused(&'a str),
    /// Socket.IO event `42[<id>]["name",arg…]`: the JSON array (the ack id, which
    /// this client never answers, skipped).
    Event(&'a str),
    /// Socket.IO ack `43<id>[arg…]`.
    Ack(u64, &'a str),
    /// Anything else: pong, noop, upgrade, binary events, other namespaces.
    Other,
}

/// Split leading ASCII digits off `s`: `(number, rest)`.
fn split_id(s: &str) -> (Option<u64>, &str) {
    let n = s.bytes().take_while(u8::is_ascii_digit).count();
    (s[..n].parse().ok(), &s[n..])
}

/// Classify a text frame by its one or two type digits.
fn parse(text: &str) -> Frame<'_> {
    let b = text.as_bytes();
    match b.first() {
        Some(b'0') => Frame::Open(&text[1..]),
        Some(b'1') => Frame::Closed,
        Some(b'2') => Frame::Ping,
        Some(b'4') if b.len() >= 2 => {
            // Both type bytes are ASCII, so index 2 is a char boundary.
            let body = &text[2..];
            // `/nsp,` prefix: a namespace other than the main one, not ours.
            let main_nsp = !body.starts_with('/');
            match b[1] {
                b'2' if main_nsp => match split_id(body).1 {
                    args if args.starts_with('[') => Frame::Event(args),
                    _ => Frame::Other,
                },
                b'3' if main_nsp => match split_id(body) {
                    (Some(id), args) if args.starts_with('[') => Frame::Ack(id, args),
                    _ => Frame::Other,
                },
                b'0' if main_nsp => Frame::Connected,
                b'1' if main_nsp => Frame::Closed,
                b'4' if main_nsp => Frame::Refused(body),
                _ => Frame::Other,
            }
        }
        _ => Frame::Other,
    }
}

/// The event name and first argument of an event array, in one pass: the
/// other arguments are skipped without being built.
struct EventArgs(String, Value);

impl<'de> Deserialize<'de> for EventArgs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EventArgs;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a Socket.IO event array ["name", arg…]"#)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EventArgs, A::Error> {
                let name: String = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let first: Value = seq.next_element()?.unwrap_or(Value::Null);
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(EventArgs(name, first))
            }
        }
        d.deserialize_seq(V)
    }
}

/// `(name, first argument)` of an event array (`Value::Null` when it has none).
fn decode_event(json: &str) -> Option<(String, Value)> {
    serde_json::from_str::<EventArgs>(json)
        .ok()
        .map(|EventArgs(name, arg)| (name, arg))
}

/// Whether an ack array is the peer's `[{"ok":true}]`.
fn ack_ok(json: &str) -> bool {
    #[derive(Deserialize)]
    struct Reply {
        ok: bool,
    }
    matches!(
        serde_json::from_str::<(Reply,)>(json),
        Ok((Reply { ok: true },))
    )
}

/// Socket.IO connect to the main namespace with auth `{"token": token}`.
fn connect_frame(token: &str) -> String {
    format!("40{}", serde_json::json!({ "token": token }))
}

/// `42<id>["join",room]`.
fn join_frame(id: u64, room: &str) -> String {
    let room = serde_json::to_string(room).expect("a str always serializes");
    format!(r#"42{id}["join",{room}]"#)
}

/// `42<id>["broadcast",{"room":…,"event":"message","payload":…}]`.
fn broadcast_frame(id: u64, room: &str, payload: &Value) -> String {
    #[derive(Serialize)]
    struct Broadcast<'a> {
        room: &'a str,
        event: &'a str,
        payload: &'a Value,
    }
    let mut buf = Vec::with_capacity(64 + room.len());
    let _ = write!(buf, r#"42{id}["broadcast","#);
    let body = Broadcast {
        room,
        event: EVENT,
        payload,
    };
    serde_json::to_writer(&mut buf, &body).expect("JSON values always serialize");
    buf.push(b']');
    String::from_utf8(buf).expect("serde_json writes UTF-8")
}

/// A connected Socket.IO client (main namespace), as the protocol-neutral driver uses it.
pub struct Conn {
    ws: Ws,
    handshake: Handshake,
    /// The next ack id.
    next_id: u64,
    /// Events that arrived while `join` waited for its ack; `recv` hands them out first.
    early: VecDeque<(String, Value)>,
    /// A ping came and its pong is not written yet (`recv` may be cancelled
    /// between the two: the next call writes it).
    pong_due: bool,
}

impl Conn {
    /// TCP connect from `source` to `target.addr`, upgrade on the Socket.IO path of
    /// that address, wait for the Engine.IO open, Socket.IO connect with
    /// `{"token": token}` and wait for its answer.
    ///
    /// Failures: [`Failure::Bind`], [`Failure::Connect`], [`Failure::Http`] (upgrade
    /// refused), [`Failure::Handshake`] (upgrade failed, no or bad Engine.IO open,
    /// or the Socket.IO connect refused with `44`, e.g. a bad token), and
    /// [`Failure::Closed`].
    pub async fn connect(target: &Target, source: IpAddr, token: &str) -> Result<Conn, Failure> {
        let url = format!("ws://{}{PATH}", target.addr);
        let ws = phx::open(target.addr, source, &url).await?;
        let mut conn = Conn {
            ws,
            handshake: Handshake {
                sid: String::new(),
                ping_interval: 0,
                ping_timeout: 0,
                max_payload: 0,
            },
            next_id: 1,
            early: VecDeque::new(),
            pong_due: false,
        };
        let open = conn.next_text().await?;
        conn.handshake = match parse(&open) {
            Frame::Open(json) => serde_json::from_str(json).map_err(|_| Failure::Handshake)?,
            _ => return Err(Failure::Handshake),
        };
        conn.send(connect_frame(token)).await?;
        loop {
            let text = conn.next_text().await?;
            match parse(&text) {
                Frame::Connected => return Ok(conn),
                Frame::Refused(_) => return Err(Failure::Handshake),
                Frame::Ping => conn.pong().await?,
                Frame::Closed => return Err(Failure::Closed),
                _ => {}
            }
        }
    }

    /// The server's Engine.IO open packet.
    #[cfg(test)]
    pub fn handshake(&self) -> &Handshake {
        &self.handshake
    }

    fn take_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id - 1
    }

    async fn send(&mut self, frame: String) -> Result<(), Failure> {
        self.ws
            .send(Message::text(frame))
            .await
            .map_err(|_| Failure::Closed)
    }

    /// Answer a ping; `pong_due` stays set until the pong is handed to the socket.
    async fn pong(&mut self) -> Result<(), Failure> {
        self.pong_due = true;
        self.ws
            .feed(Message::text("3"))
            .await
            .map_err(|_| Failure::Closed)?;
        self.pong_due = false;
        self.ws.flush().await.map_err(|_| Failure::Closed)
    }

    /// The next text frame; WebSocket pings are answered by tungstenite itself.
    async fn next_text(&mut self) -> Result<Utf8Bytes, Failure> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => return Ok(text),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Err(Failure::Closed),
                Some(Ok(_)) => {}
            }
        }
    }

    /// Join a room; resolves when the server acked it ([`Failure::JoinRefused`]
    /// when the ack is not `{"ok":true}`). Events of rooms already joined that
    /// arrive meanwhile are kept for [`Conn::recv`].
    pub async fn join(&mut self, room: &str) -> Result<(), Failure> {
        let id = self.take_id();
        self.send(join_frame(id, room)).await?;
        loop {
            if self.pong_due {
                self.pong().await?;
            }
            let text = self.next_text().await?;
            match parse(&text) {
                Frame::Ack(got, json) if got == id => {
                    return if ack_ok(json) {
                        Ok(())
                    } else {
                        Err(Failure::JoinRefused)
                    };
                }
                Frame::Event(json) => {
                    if let Some(event) = decode_event(json) {
                        self.early.push_back(event);
                    }
                }
                Frame::Ping => self.pong_due = true,
                Frame::Closed => return Err(Failure::Closed),
                _ => {}
            }
        }
    }

    /// Ask the server to broadcast `payload` (a JSON object) as event
    /// [`EVENT`] to `room` (sender included). The ack is requested, as a
    /// Phoenix push gets its reply, but not waited for: `recv` drains it.
    pub async fn publish(&mut self, room: &str, payload: &Value) -> Result<(), Failure> {
        let id = self.take_id();
        self.send(broadcast_frame(id, room, payload)).await
    }

    /// The next application event: (event name, first argument). Answers
    /// Engine.IO pings and skips acks meanwhile. Cancel-safe: a frame is either
    /// returned or not read yet, and a pong interrupted before it was written
    /// is written by the next call.
    pub async fn recv(&mut self) -> Result<(String, Value), Failure> {
        if let Some(event) = self.early.pop_front() {
            return Ok(event);
        }
        loop {
            if self.pong_due {
                self.pong().await?;
            }
            let text = self.next_text().await?;
            match parse(&text) {
                Frame::Event(json) => {
                    if let Some(event) = decode_event(json) {
                        return Ok(event);
                    }
                }
                Frame::Ping => self.pong_due = true,
                Frame::Closed => return Err(Failure::Closed),
                _ => {}
            }
        }
    }

    /// Disconnect the namespace (`41`, as socket.io-client does), send a
    /// WebSocket close and wait (briefly) for the server to end the connection.
    pub async fn close(mut self) {
        if self.send("41".into()).await.is_err() || self.ws.close(None).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn classifies_frames() {
        let open = r#"0{"sid":"YgWQ","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
        assert_eq!(parse(open), Frame::Open(&open[1..]));
        assert_eq!(parse("2"), Frame::Ping);
        assert_eq!(parse("3"), Frame::Other);
        assert_eq!(parse("6"), Frame::Other);
        assert_eq!(parse("1"), Frame::Closed);
        assert_eq!(parse(""), Frame::Other);
        assert_eq!(parse("4"), Frame::Other);
        assert_eq!(parse(r#"40{"sid":"KTKF"}"#), Frame::Connected);
        assert_eq!(parse("41"), Frame::Closed);
        assert_eq!(
            parse(r#"44{"message":"unauthorized"}"#),
            Frame::Refused(r#"{"message":"unauthorized"}"#)
        );
        assert_eq!(
            parse(r#"42["message",{"t":123}]"#),
            Frame::Event(r#"["message",{"t":123}]"#)
        );
        assert_eq!(parse(r#"4217["ev"]"#), Frame::Event(r#"["ev"]"#));
        assert_eq!(
            parse(r#"431[{"ok":true}]"#),
            Frame::Ack(1, r#"[{"ok":true}]"#)
        );
        assert_eq!(parse("43123[]"), Frame::Ack(123, "[]"));
        // No id, or not an array: malformed.
        assert_eq!(parse("43[]"), Frame::Other);
        assert_eq!(parse("42{}"), Frame::Other);
        // Other namespaces and binary events are not ours.
        assert_eq!(parse(r#"42/admin,["x"]"#), Frame::Other);
        assert_eq!(parse(r#"43/admin,1[]"#), Frame::Other);
        assert_eq!(parse("40/admin,"), Frame::Other);
        assert_eq!(
            parse(r#"451-["x",{"_placeholder":true,"num":0}]"#),
            Frame::Other
        );
    }

    #[test]
    fn reads_the_open_packet() {
        let open = r#"{"sid":"YgWQ","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
        let h: Handshake = serde_json::from_str(open).unwrap();
        assert_eq!(
            h,
            Handshake {
                sid: "YgWQ".into(),
                ping_interval: 25000,
                ping_timeout: 20000,
                max_payload: 1_000_000
            }
        );
    }

    #[test]
    fn decodes_events() {
        assert_eq!(
            decode_event(r#"["message",{"t":123}]"#),
            Some(("message".into(), json!({"t": 123})))
        );
        // Further arguments are skipped, a missing one is null, names are unescaped.
        assert_eq!(
            decode_event(r#"["a\"b",[1,{"x":[2]}],"more",{"and":"more"}]"#),
            Some((r#"a"b"#.into(), json!([1, {"x": [2]}])))
        );
        assert_eq!(
            decode_event(r#"["ping"]"#),
            Some(("ping".into(), Value::Null))
        );
        assert_eq!(decode_event("[]"), None);
        assert_eq!(decode_event("[1,2]"), None);
        assert_eq!(decode_event(r#"{"a":1}"#), None);
        assert_eq!(decode_event(r#"["x",1"#), None);
    }

    #[test]
    fn reads_acks() {
        assert!(ack_ok(r#"[{"ok":true}]"#));
        assert!(!ack_ok(
            r#"[{"ok":false,"error":"room must be a non-empty string"}]"#
        ));
        assert!(!ack_ok("[]"));
        assert!(!ack_ok(r#"["ok"]"#));
    }

    #[test]
    fn encodes_frames() {
        assert_eq!(connect_frame("a.b.c"), r#"40{"token":"a.b.c"}"#);
        assert_eq!(connect_frame(r#"q"t"#), r#"40{"token":"q\"t"}"#);
        assert_eq!(join_frame(1, "r1"), r#"421["join","r1"]"#);
        assert_eq!(join_frame(42, "a\"b"), r#"4242["join","a\"b"]"#);
        assert_eq!(
            broadcast_frame(2, "r1", &json!({"t": 123})),
            r#"422["broadcast",{"room":"r1","event":"message","payload":{"t":123}}]"#
        );
        // What we encode, the parser reads back.
        let frame = broadcast_frame(7, "r1", &json!({"t": 1}));
        let Frame::Event(json) = parse(&frame) else {
            panic!("{frame}")
        };
        assert_eq!(
            decode_event(json),
            Some((
                "broadcast".into(),
                json!({"room": "r1", "event": "message", "payload": {"t": 1}})
            ))
        );
    }

    /// Starts `benches/peers/socketio/server.mjs` and talks to it: connect with an
    /// HS256 token, join, publish, receive (the sender too), survive pings, get
    /// refused with a bad token, and the server exits 0 on SIGTERM.
    #[tokio::test]
    #[ignore = "needs node and the peer's node_modules"]
    async fn talks_to_the_socketio_peer() {
        use tokio::io::{AsyncBufReadExt, BufReader};
        use tokio::time::timeout;

        const SECRET: &str = "sio-test-secret";
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers/socketio");
        assert!(
            dir.join("node_modules/socket.io").is_dir(),
            "run `npm ci --prefix benches/peers/socketio` first"
        );
        let mut server = tokio::process::Command::new("node")
            .arg("server.mjs")
            .current_dir(&dir)
            .env("PORT", "0")
            .env("JWT_SECRET", SECRET)
            .env("PING_INTERVAL_MS", "200")
            .env("PING_TIMEOUT_MS", "300")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node");
        let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
        let line = timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("server ready in time")
            .unwrap()
            .expect("one line");
        let ready: Value = serde_json::from_str(&line).unwrap();
        let addr = ready["listening"].as_str().expect("listening").to_string();
        let target = Target::resolve(&format!("ws://{addr}/socket.io/"))
            .await
            .unwrap();
        let token = |sub: &str| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let exp = now + 600;
            jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &json!({"sub": sub, "exp": exp}),
                &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .unwrap()
        };
        let step = Duration::from_secs(5);

        let mut a = timeout(
            step,
            Conn::connect(&target, "127.0.0.2".parse().unwrap(), &token("a")),
        )
        .await
        .unwrap()
        .unwrap();
        let mut b = timeout(
            step,
            Conn::connect(&target, "127.0.0.3".parse().unwrap(), &token("b")),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(a.handshake().ping_interval, 200);
        assert_eq!(a.handshake().max_payload, 1_000_000);
        timeout(step, a.join("r1")).await.unwrap().unwrap();
        timeout(step, b.join("r1")).await.unwrap().unwrap();
        assert!(matches!(
            timeout(step, a.join("")).await.unwrap(),
            Err(Failure::JoinRefused)
        ));

        a.publish("r1", &json!({"t": 123})).await.unwrap();
        let want = (EVENT.to_string(), json!({"t": 123}));
        assert_eq!(timeout(step, a.recv()).await.unwrap().unwrap(), want);
        assert_eq!(timeout(step, b.recv()).await.unwrap().unwrap(), want);

        // Idle through several ping intervals (200 ms, 300 ms to pong), with
        // recv cancelled now and then: the connections must stay up.
        for _ in 0..8 {
            let (ra, rb) = tokio::join!(
                timeout(Duration::from_millis(150), a.recv()),
                timeout(Duration::from_millis(150), b.recv())
            );
            assert!(
                ra.is_err() && rb.is_err(),
                "no event expected: {ra:?} {rb:?}"
            );
        }
        // A broadcast to a room b never joined is refused (the nack is skipped);
        // the next one to r1 arrives.
        b.publish("r2", &json!({"t": 0})).await.unwrap();
        b.publish("r1", &json!({"t": 456})).await.unwrap();
        let want = (EVENT.to_string(), json!({"t": 456}));
        assert_eq!(timeout(step, a.recv()).await.unwrap().unwrap(), want);
        assert_eq!(timeout(step, b.recv()).await.unwrap().unwrap(), want);

        // Bad tokens (not a JWT, empty, signature cut short) are refused at
        // the Socket.IO connect.
        let good = token("a");
        for bad in ["not-a-jwt", "", &good[..good.len() - 2]] {
            let refused = timeout(
                step,
                Conn::connect(&target, "127.0.0.2".parse().unwrap(), bad),
            )
            .await
            .unwrap();
            assert!(matches!(refused, Err(Failure::Handshake)), "{bad:?}");
        }

        a.close().await;
        // SIGTERM with b still connected: b sees the end, the server exits 0.
        let pid = server.id().unwrap().to_string();
        let kill = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(kill.success());
        assert!(matches!(
            timeout(step, b.recv()).await.unwrap(),
            Err(Failure::Closed)
        ));
        let status = timeout(step, server.wait()).await.unwrap().unwrap();
        assert!(status.success(), "{status:?}");
    }
}
