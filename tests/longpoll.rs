//! The long-poll transport, driven with plain HTTP the way phoenix.js's LongPoll does.

mod common;

use common::{TestNode, http};
use serde_json::{Value, json};

struct Poller<'a> {
    node: &'a TestNode,
    jwt: String,
    session: Option<String>,
}

impl Poller<'_> {
    fn path(&self) -> String {
        let mut p = format!("/socket/longpoll?vsn=2.0.0&token={}", self.jwt);
        if let Some(s) = &self.session {
            p.push_str(&format!("&token={s}"));
        }
        p
    }

    async fn get(&mut self) -> Value {
        let (_, body) = http(self.node.addr, "GET", &self.path(), &[], "").await;
        serde_json::from_str(&body).unwrap()
    }

    async fn post(&self, frames: &[Value]) -> (u16, Value) {
        let body: Vec<String> = frames.iter().map(Value::to_string).collect();
        let headers = [("content-type", "application/x-ndjson")];
        let (status, body) = http(
            self.node.addr,
            "POST",
            &self.path(),
            &headers,
            &body.join("\n"),
        )
        .await;
        (status, serde_json::from_str(&body).unwrap())
    }

    /// Poll until `pred` matches a message; returns it.
    async fn find(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..10 {
            let resp = self.get().await;
            for m in resp["messages"].as_array().into_iter().flatten() {
                let frame: Value = serde_json::from_str(m.as_str().unwrap()).unwrap();
                if pred(&frame) {
                    return frame;
                }
            }
        }
        panic!("message not received");
    }
}

#[tokio::test]
async fn session_join_push_and_broadcast() {
    let node = TestNode::start_with(|c| c.socket.longpoll_poll_ms = 500).await;
    let mut lp = Poller {
        node: &node,
        jwt: node.token("alice"),
        session: None,
    };
    let opened = lp.get().await;
    assert_eq!(opened["status"], 410, "{opened}");
    lp.session = Some(opened["token"].as_str().unwrap().to_string());
    assert_eq!(
        node.metric("armoricore_connections{transport=\"longpoll\"}")
            .await,
        1.0
    );

    let (status, resp) = lp
        .post(&[
            json!(["1", "1", "chat:room:1", "phx_join", {}]),
            json!([null, "2", "phoenix", "heartbeat", {}]),
        ])
        .await;
    assert_eq!((status, resp), (200, json!({"status": 200})));
    let reply = lp.find(|f| f[1] == "1" && f[3] == "phx_reply").await;
    assert_eq!(reply[4]["status"], "ok");

    // A WebSocket client's message reaches the long-poll client.
    let mut bob = node.connect("bob").await;
    bob.join_ok("chat:room:1").await;
    let r = bob
        .push(
            None,
            "chat:room:1",
            "new_message",
            json!({"content": "to lp"}),
        )
        .await;
    bob.assert_reply(&r).await;
    let msg = lp.find(|f| f[3] == "new_message").await;
    assert_eq!(msg[4]["content"], "to lp");

    // And the other way round.
    lp.post(&[json!(["1", "3", "chat:room:1", "new_message", {"content": "from lp"}])])
        .await;
    let frame = bob
        .find("lp message", |f| {
            f[3] == "new_message" && f[4]["content"] == "from lp"
        })
        .await;
    assert_eq!(frame[4]["user_id"], "alice");

    // Nothing more to say: 204 after the poll window.
    let idle = lp.get().await;
    assert!(idle["status"] == 204 || idle["status"] == 200, "{idle}");
    node.shutdown().await;
}

#[tokio::test]
async fn refusals() {
    let node = TestNode::start().await;
    let mut bad = Poller {
        node: &node,
        jwt: "not-a-token".into(),
        session: None,
    };
    let resp = bad.get().await;
    assert_eq!(
        resp["status"], 403,
        "phoenix.js only understands 403: {resp}"
    );
    assert_eq!(resp["reason"], "malformed token");
    let frames = [json!([null, "1", "phoenix", "heartbeat", {}])];
    let (status, resp) = bad.post(&frames).await;
    assert_eq!(
        (status, resp["status"].clone()),
        (200, json!(410)),
        "POST without a session"
    );

    let mut lp = Poller {
        node: &node,
        jwt: node.token("alice"),
        session: None,
    };
    lp.session = lp.get().await["token"].as_str().map(str::to_string);
    let headers = [("content-type", "application/x-ndjson")];
    let (_, resp) = http(node.addr, "POST", &lp.path(), &headers, "{not json").await;
    let resp: Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(resp["status"], 400, "{resp}");
    // The session was ended by the bad frame.
    let (_, resp) = lp.post(&frames).await;
    assert_eq!(resp["status"], 410);
    node.shutdown().await;
}

#[tokio::test]
async fn idle_session_is_reaped() {
    let node = TestNode::start_with(|c| {
        c.socket.longpoll_poll_ms = 100;
        c.socket.longpoll_idle_ms = 300;
    })
    .await;
    let mut lp = Poller {
        node: &node,
        jwt: node.token("alice"),
        session: None,
    };
    lp.session = lp.get().await["token"].as_str().map(str::to_string);
    let hub = node.node().hub().clone();
    assert_eq!(hub.sessions.len(), 1);
    common::eventually("idle long-poll session ended", || {
        let hub = hub.clone();
        async move { hub.sessions.is_empty() && hub.longpoll.is_empty() }
    })
    .await;
    node.shutdown().await;
}
