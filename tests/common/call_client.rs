//! A call participant for tests: a Phoenix connection on `signaling:call:{id}`
//! and a `webrtc` crate peer connection, with signaling driven as a browser app
//! would: offer on join, answer the server's renegotiation offers, trickle
//! candidates. Every server push is recorded for the test to look at.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::common::TestNode;
use crate::webrtc_peer::{PeerOptions, WebrtcPeer};

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>;

/// Changes the server's SDP before the peer sees it (to route media through a relay).
pub type Rewrite = Arc<dyn Fn(&str) -> String + Send + Sync>;

pub struct CallClient {
    pub peer: Arc<WebrtcPeer>,
    pub user: String,
    pub topic: String,
    /// The join reply's `response`.
    pub joined: Value,
    pub participant_id: String,
    out: mpsc::UnboundedSender<Value>,
    waiters: Waiters,
    next_ref: Arc<Mutex<u64>>,
    join_ref: String,
    /// Every push from the server: (event, payload).
    pub events: Arc<Mutex<Vec<(String, Value)>>>,
    /// Error replies the driver got to its own pushes (answers, candidates).
    pub errors: Arc<Mutex<Vec<Value>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl CallClient {
    /// Connect as `user`, join call `call`, offer the local tracks.
    pub async fn join(node: &TestNode, user: &str, call: &str, options: PeerOptions) -> CallClient {
        CallClient::join_with(node, user, call, options, None).await
    }

    /// Join with the server's SDP rewritten by `rewrite` before the peer applies it.
    pub async fn join_with(
        node: &TestNode,
        user: &str,
        call: &str,
        options: PeerOptions,
        rewrite: Option<Rewrite>,
    ) -> CallClient {
        let client = CallClient::connect(node, user, call, options, rewrite).await;
        let offer = client.peer.create_offer().await.unwrap();
        let reply = client
            .request("call_offer", json!({"sdp": offer, "type": "offer"}))
            .await;
        assert_eq!(reply["status"], "ok", "call_offer: {reply}");
        client
    }

    /// Connect and join the channel only (the test offers itself).
    pub async fn connect(
        node: &TestNode,
        user: &str,
        call: &str,
        options: PeerOptions,
        rewrite: Option<Rewrite>,
    ) -> CallClient {
        let url = node.ws_url(&format!("token={}&vsn=2.0.0", node.token(user)));
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Value>();
        let writer = tokio::spawn(async move {
            while let Some(frame) = out_rx.recv().await {
                if sink.send(WsMessage::text(frame.to_string())).await.is_err() {
                    return;
                }
            }
            let _ = sink.close().await;
        });
        let peer = Arc::new(WebrtcPeer::new(options).await.unwrap());
        let waiters: Waiters = Arc::default();
        let events: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let errors: Arc<Mutex<Vec<Value>>> = Arc::default();
        let next_ref = Arc::new(Mutex::new(0u64));
        let topic = format!("signaling:call:{call}");
        let join_ref = "1".to_string();
        *next_ref.lock() = 1;

        let reader = {
            let (peer, waiters, events, errors) = (
                peer.clone(),
                waiters.clone(),
                events.clone(),
                errors.clone(),
            );
            let (out, next_ref, topic, join_ref) = (
                out.clone(),
                next_ref.clone(),
                topic.clone(),
                join_ref.clone(),
            );
            tokio::spawn(async move {
                let sdp_of = |p: &Value| {
                    let sdp = p["sdp"].as_str().unwrap_or_default();
                    rewrite.as_ref().map_or_else(|| sdp.to_string(), |r| r(sdp))
                };
                while let Some(Ok(msg)) = stream.next().await {
                    let WsMessage::Text(text) = msg else { continue };
                    let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                    let (r, event, payload) =
                        (frame[1].clone(), frame[3].clone(), frame[4].clone());
                    let event = event.as_str().unwrap_or_default().to_string();
                    if event == "phx_reply" {
                        let waiter = r.as_str().and_then(|r| waiters.lock().remove(r));
                        match waiter {
                            Some(w) => {
                                let _ = w.send(payload);
                            }
                            None if payload["status"] != "ok" => errors.lock().push(payload),
                            None => {}
                        }
                        continue;
                    }
                    events.lock().push((event.clone(), payload.clone()));
                    match event.as_str() {
                        "call_answer" => {
                            if let Err(e) = peer.apply_answer(&sdp_of(&payload)).await {
                                errors.lock().push(json!({"apply_answer": e.to_string()}));
                            }
                        }
                        "call_offer" => match peer.apply_offer(&sdp_of(&payload)).await {
                            Ok(answer) => {
                                let r = {
                                    let mut n = next_ref.lock();
                                    *n += 1;
                                    n.to_string()
                                };
                                let _ = out.send(json!([join_ref, r, topic, "call_answer",
                                    {"sdp": answer, "type": "answer", "offer_id": payload["offer_id"]}]));
                            }
                            Err(e) => errors.lock().push(json!({"apply_offer": e.to_string()})),
                        },
                        _ => {}
                    }
                }
            })
        };
        let mut client = CallClient {
            peer: peer.clone(),
            user: user.to_string(),
            topic: topic.clone(),
            joined: Value::Null,
            participant_id: String::new(),
            out: out.clone(),
            waiters,
            next_ref,
            join_ref: join_ref.clone(),
            events,
            errors,
            tasks: vec![writer, reader],
        };
        let (tx, rx) = oneshot::channel();
        client.waiters.lock().insert(join_ref.clone(), tx);
        out.send(json!([join_ref, join_ref, topic, "phx_join", {}]))
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply["status"], "ok", "join {topic}: {reply}");
        client.joined = reply["response"].clone();
        client.participant_id = client.joined["participant_id"]
            .as_str()
            .unwrap()
            .to_string();

        // Trickle our candidates as a browser app does from onicecandidate.
        let mut candidates = peer.candidates();
        let c = client.sender();
        client.tasks.push(tokio::spawn(async move {
            while let Some(cand) = candidates.recv().await {
                c.push(
                    "ice_candidate",
                    json!({"candidate": cand.candidate, "sdp_mid": cand.sdp_mid,
                           "sdp_m_line_index": cand.sdp_m_line_index}),
                );
            }
        }));
        client
    }

    fn sender(&self) -> Sender {
        Sender {
            out: self.out.clone(),
            next_ref: self.next_ref.clone(),
            topic: self.topic.clone(),
            join_ref: self.join_ref.clone(),
        }
    }

    /// Push `event` and wait for its reply (`{status, response}`).
    pub async fn request(&self, event: &str, payload: Value) -> Value {
        let (tx, rx) = oneshot::channel();
        let r = {
            let mut n = self.next_ref.lock();
            *n += 1;
            n.to_string()
        };
        self.waiters.lock().insert(r.clone(), tx);
        self.out
            .send(json!([self.join_ref, r, self.topic, event, payload]))
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .unwrap_or_else(|_| panic!("no reply to {event}"))
            .unwrap()
    }

    /// Pushes of `event` so far.
    pub fn pushed(&self, event: &str) -> Vec<Value> {
        self.events
            .lock()
            .iter()
            .filter(|(e, _)| e == event)
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Wait until a push of `event` matches `pred`.
    pub async fn wait_push(
        &self,
        event: &str,
        pred: impl Fn(&Value) -> bool,
        within: Duration,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(p) = self.pushed(event).into_iter().find(&pred) {
                return p;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{}: no matching {event} in {within:?}; got {:?}",
                    self.user,
                    self.events.lock()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for CallClient {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Pushes without waiting for replies (errors land in `CallClient::errors`).
#[derive(Clone)]
struct Sender {
    out: mpsc::UnboundedSender<Value>,
    next_ref: Arc<Mutex<u64>>,
    topic: String,
    join_ref: String,
}

impl Sender {
    fn push(&self, event: &str, payload: Value) {
        let r = {
            let mut n = self.next_ref.lock();
            *n += 1;
            n.to_string()
        };
        let _ = self
            .out
            .send(json!([self.join_ref, r, self.topic, event, payload]));
    }
}
