//! The long-poll transport at `/socket/longpoll`, as Phoenix's `LongPoll`
//! (phoenix.js uses it directly or after `longPollFallbackMs`).
//!
//! ```text
//! GET  ?vsn=2.0.0&token=JWT            → {"status": 410, "token": S}   new session S
//! GET  ?vsn=2.0.0&token=JWT&token=S    → {"status": 200, "token": S, "messages": [frame, ..]}
//!                                        {"status": 204, "token": S}   nothing within longpoll_poll_ms
//! POST ?vsn=2.0.0&token=JWT&token=S    body: frames, one per line (application/x-ndjson)
//!                                      → {"status": 200}
//! unknown or ended session             → {"status": 410}
//! refused token                        → {"status": 403, "reason": ..}
//! bad frame in a POST                  → {"status": 400 | 413, "reason": ..}  (session ended)
//! ```
//! Every answer is HTTP 200 with the status in the body, as Phoenix sends them:
//! phoenix.js reads only the body. phoenix.js appends the session token after the user's params, so the last `token`
//! naming a live session wins. A session is the same Session actor a WebSocket gets;
//! its outbox is drained by the GETs. No request for `longpoll_idle_ms` ends it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use dashmap::DashMap;
use parking_lot::Mutex;
use ractor::ActorRef;
use serde_json::{Value, json};

use super::auth::authenticate;
use super::transport::{Received, param, receive, start_session, vsn_of};
use crate::actors::session::SessionMsg;
use crate::hub::Hub;
use crate::protocols::phoenix::Vsn;
use crate::pubsub::Outbox;
use crate::pubsub::outbox::{self, Outbound, OutboxReceiver};

const TRANSPORT: &str = "longpoll";
/// Frames returned by one poll at most.
const POLL_BATCH: usize = 256;

/// One long-poll connection.
pub struct LongPollSession {
    session: ActorRef<SessionMsg>,
    vsn: Vsn,
    outbox: Outbox,
    rx: tokio::sync::Mutex<OutboxReceiver>,
    last_seen: Mutex<Instant>,
}

impl LongPollSession {
    fn touch(&self) {
        *self.last_seen.lock() = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        self.last_seen.lock().elapsed()
    }
}

/// Live long-poll sessions by session token.
#[derive(Default)]
pub struct Registry {
    sessions: DashMap<String, Arc<LongPollSession>>,
}

impl Registry {
    /// The live session named by one of the request's `token` values, last first.
    fn find(&self, query: &[(String, String)]) -> Option<(String, Arc<LongPollSession>)> {
        query
            .iter()
            .rev()
            .filter(|(k, _)| k == "token")
            .find_map(|(_, v)| self.sessions.get(v).map(|s| (v.clone(), s.clone())))
    }

    fn end(&self, token: &str) {
        if let Some((_, lp)) = self.sessions.remove(token) {
            lp.outbox.close(1000, "");
            lp.session.stop(None);
        }
    }

    /// End every long-poll session (shutdown); pending polls drain what is queued.
    pub fn end_all(&self) {
        let tokens: Vec<String> = self.sessions.iter().map(|e| e.key().clone()).collect();
        for token in tokens {
            self.end(&token);
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

/// Phoenix's long-poll answers are HTTP 200 with the status in the JSON body, and
/// phoenix.js reads only the body: GETs must answer 200, 204, 410, 403 or 500.
fn status(body: Value) -> Response {
    Json(body).into_response()
}

fn gone() -> Response {
    status(json!({"status": 410}))
}

pub async fn poll(
    State(hub): State<Arc<Hub>>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let vsn = match vsn_of(&hub, TRANSPORT, &query) {
        Ok(v) => v,
        Err(refusal) => return status(json!({"status": 400, "reason": refusal.reason})),
    };
    match hub.longpoll.find(&query) {
        Some((token, lp)) => listen(&hub, token, lp).await,
        None => new_session(&hub, vsn, &query, &headers).await,
    }
}

async fn new_session(
    hub: &Arc<Hub>,
    vsn: Vsn,
    query: &[(String, String)],
    headers: &HeaderMap,
) -> Response {
    let user_token = param(query, "token");
    let claims = match authenticate(hub, TRANSPORT, headers, user_token) {
        Ok(c) => c,
        Err(refused) => {
            // phoenix.js understands 403 (and hangs on 401): every refusal is 403 here.
            return status(json!({"status": 403, "reason": refused.reason}));
        }
    };
    if hub.is_shutting_down() {
        return status(json!({"status": 500, "reason": "server shutting down"}));
    }
    let (outbox, rx) = outbox::bounded(
        hub.config.socket.outbound_queue_frames,
        hub.config.socket.outbound_queue_bytes,
    );
    let Some(session) = start_session(hub, Arc::new(claims), vsn, outbox.clone(), TRANSPORT).await
    else {
        return status(json!({"status": 500}));
    };
    hub.metrics
        .connects
        .with_label_values(&[TRANSPORT, "ok"])
        .inc();
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>());
    let lp = Arc::new(LongPollSession {
        session,
        vsn,
        outbox,
        rx: tokio::sync::Mutex::new(rx),
        last_seen: Mutex::new(Instant::now()),
    });
    hub.longpoll.sessions.insert(token.clone(), lp.clone());
    tokio::spawn(reap(hub.clone(), token.clone(), lp));
    status(json!({"status": 410, "token": token}))
}

/// End the session once it is closed or no request came for `longpoll_idle_ms`.
async fn reap(hub: Arc<Hub>, token: String, lp: Arc<LongPollSession>) {
    let idle = Duration::from_millis(hub.config.socket.longpoll_idle_ms);
    loop {
        tokio::time::sleep(idle / 4).await;
        if lp.outbox.is_closing() || lp.idle_for() > idle {
            hub.longpoll.end(&token);
            return;
        }
    }
}

async fn listen(hub: &Hub, token: String, lp: Arc<LongPollSession>) -> Response {
    lp.touch();
    let wait = Duration::from_millis(hub.config.socket.longpoll_poll_ms);
    let mut rx = lp.rx.lock().await;
    let first = match tokio::time::timeout(wait, rx.recv()).await {
        Err(_) => {
            lp.touch();
            return status(json!({"status": 204, "token": token}));
        }
        Ok(first) => first,
    };
    lp.touch();
    let mut messages = Vec::new();
    match first {
        Outbound::Frame(frame) => messages.push(frame),
        Outbound::Close(_) => {
            drop(rx);
            hub.longpoll.end(&token);
            return gone();
        }
    }
    while messages.len() < POLL_BATCH {
        match rx.try_recv() {
            Some(frame) => messages.push(frame),
            None => break,
        }
    }
    let messages: Vec<&str> = messages.iter().map(|f| f.as_str()).collect();
    status(json!({"status": 200, "token": token, "messages": messages}))
}

pub async fn publish(
    State(hub): State<Arc<Hub>>,
    Query(query): Query<Vec<(String, String)>>,
    body: String,
) -> Response {
    let Some((token, lp)) = hub.longpoll.find(&query) else {
        return gone();
    };
    lp.touch();
    let max = hub.config.socket.max_frame_bytes;
    for line in body.split('\n').filter(|l| !l.trim().is_empty()) {
        if line.len() > max {
            hub.metrics
                .bad_frames
                .with_label_values(&["oversize"])
                .inc();
            hub.longpoll.end(&token);
            return status(
                json!({"status": 413, "reason": format!("frame too large (max {max} bytes)")}),
            );
        }
        match receive(&hub, &lp.session, lp.vsn, line).await {
            Received::Handled => {}
            Received::SessionGone => {
                hub.longpoll.end(&token);
                return gone();
            }
            Received::Malformed(reason) => {
                hub.longpoll.end(&token);
                return status(json!({"status": 400, "reason": reason}));
            }
        }
    }
    status(json!({"status": 200}))
}
