//! The WebSocket transport: `GET /socket/websocket?vsn=2.0.0&token=JWT`.
//!
//! Authentication happens before the upgrade (401/403 with a JSON reason). Each
//! connection then has a Session actor, a reader (this task: decode, heartbeat
//! timeout, limits) and a writer task that alone writes to the socket, draining the
//! connection's [`Outbox`] in batches (`feed` several frames, then one `flush`).
//!
//! Close codes: 1001 server shutting down or heartbeat timeout, 1002 WebSocket
//! protocol error, 1003 binary frame, 1007 malformed frame or invalid UTF-8,
//! 1008 slow consumer, 1009 frame too large, 1011 internal error.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use ractor::{Actor, ActorRef};

use super::Refusal;
use super::auth::authenticate;
use crate::actors::session::{Session, SessionArgs, SessionMsg};
use crate::hub::Hub;
use crate::protocols::jwt::Claims;
use crate::protocols::phoenix::{self, Vsn};
use crate::pubsub::Outbox;
use crate::pubsub::outbox::{self, Outbound, OutboxReceiver};

const TRANSPORT: &str = "websocket";
/// Frames written per flush at most.
const WRITE_BATCH: usize = 64;

/// The value of a query parameter (the first one when repeated).
pub fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Parse `vsn`, or answer 400.
pub fn vsn_of(
    hub: &Hub,
    transport: &'static str,
    query: &[(String, String)],
) -> Result<Vsn, Refusal> {
    Vsn::parse(param(query, "vsn")).ok_or_else(|| {
        hub.metrics
            .connects
            .with_label_values(&[transport, "bad_request"])
            .inc();
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "unsupported vsn: expected 1.0.0 or 2.0.0",
        )
    })
}

pub async fn upgrade(
    State(hub): State<Arc<Hub>>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let vsn = match vsn_of(&hub, TRANSPORT, &query) {
        Ok(v) => v,
        Err(refusal) => return refusal.into_response(),
    };
    let claims = match authenticate(&hub, TRANSPORT, &headers, param(&query, "token")) {
        Ok(c) => c,
        Err(refusal) => return refusal.into_response(),
    };
    if hub.is_shutting_down() {
        let refusal = Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "server shutting down",
        );
        return refusal.into_response();
    }
    hub.metrics
        .connects
        .with_label_values(&[TRANSPORT, "ok"])
        .inc();
    let socket = &hub.config.socket;
    ws.protocols(["phoenix"])
        .read_buffer_size(socket.read_buffer_bytes)
        .write_buffer_size(socket.write_buffer_bytes)
        .max_write_buffer_size(socket.write_buffer_bytes.max(1) * 64 + socket.max_frame_bytes)
        .max_message_size(socket.max_frame_bytes)
        .max_frame_size(socket.max_frame_bytes)
        .on_upgrade(move |socket| serve(hub, Arc::new(claims), vsn, socket))
}

/// Start a Session linked to the SessionSupervisor.
pub async fn start_session(
    hub: &Arc<Hub>,
    user: Arc<Claims>,
    vsn: Vsn,
    outbox: Outbox,
    transport: &'static str,
) -> Option<ActorRef<SessionMsg>> {
    let supervisor = hub.session_supervisor()?;
    let args = SessionArgs {
        hub: hub.clone(),
        user,
        vsn,
        outbox,
        transport,
    };
    match Actor::spawn_linked(None, Session, args, supervisor).await {
        Ok((session, _)) => Some(session),
        Err(e) => {
            tracing::error!(error = %e, "cannot start session");
            None
        }
    }
}

/// Hand a decoded frame to the session and wait until it is handled.
/// `false` when the session is gone.
pub async fn deliver(session: &ActorRef<SessionMsg>, msg: phoenix::Message) -> bool {
    session
        .call(|reply| SessionMsg::Inbound(msg, reply), None)
        .await
        .map(|r| r.is_success())
        .unwrap_or(false)
}

async fn serve(hub: Arc<Hub>, user: Arc<Claims>, vsn: Vsn, socket: WebSocket) {
    let (outbox, rx) = outbox::channel(hub.config.socket.outbound_queue_frames);
    let (sink, mut stream) = socket.split();
    let writer = tokio::spawn(write_loop(sink, rx));
    let Some(session) = start_session(&hub, user, vsn, outbox.clone(), TRANSPORT).await else {
        outbox.close_now(1011, "cannot start session");
        let _ = writer.await;
        return;
    };
    let heartbeat = hub.config.heartbeat_timeout();
    let max = hub.config.socket.max_frame_bytes;
    loop {
        let next = match tokio::time::timeout(heartbeat, stream.next()).await {
            Err(_) => {
                outbox.close(1001, "heartbeat timeout");
                break;
            }
            Ok(None) => break,
            Ok(Some(next)) => next,
        };
        let text = match next {
            Ok(WsMessage::Text(text)) => text,
            Ok(WsMessage::Ping(_) | WsMessage::Pong(_)) => continue,
            Ok(WsMessage::Close(_)) => break,
            Ok(WsMessage::Binary(_)) => {
                hub.metrics.bad_frames.with_label_values(&["binary"]).inc();
                outbox.close(1003, "binary frames are not supported");
                break;
            }
            Err(e) => {
                if let Some((code, label, reason)) = read_error_close(&e, max) {
                    hub.metrics.bad_frames.with_label_values(&[label]).inc();
                    outbox.close_now(code, reason);
                }
                break;
            }
        };
        match phoenix::decode(vsn, &text) {
            Ok(msg) => {
                if !deliver(&session, msg).await {
                    break;
                }
            }
            Err(e) => {
                hub.metrics
                    .bad_frames
                    .with_label_values(&["malformed"])
                    .inc();
                let mut reason = e.to_string();
                reason.truncate(120); // close reasons must fit in 123 bytes
                outbox.close(1007, reason);
                break;
            }
        }
    }
    session.stop(None);
    // If the session was already gone (crashed), make sure the writer ends.
    outbox.close(1000, "");
    let _ = writer.await;
}

/// The close to answer a read error with: (code, metric label, reason); `None` when
/// the connection is simply gone.
fn read_error_close(e: &axum::Error, max: usize) -> Option<(u16, &'static str, String)> {
    use tungstenite::Error as WsError;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        match err.downcast_ref::<WsError>() {
            Some(WsError::Capacity(_)) => {
                return Some((
                    1009,
                    "oversize",
                    format!("frame too large (max {max} bytes)"),
                ));
            }
            Some(WsError::Utf8(_)) => {
                return Some((1007, "malformed", "text frame is not valid UTF-8".into()));
            }
            Some(WsError::Protocol(p)) => {
                let mut reason = format!("protocol error: {p}");
                reason.truncate(120);
                return Some((1002, "protocol", reason));
            }
            Some(_) => return None,
            None => source = err.source(),
        }
    }
    None
}

async fn write_loop(mut sink: SplitSink<WebSocket, WsMessage>, mut rx: OutboxReceiver) {
    loop {
        match rx.recv().await {
            Outbound::Frame(frame) => {
                if sink.feed(WsMessage::Text(frame)).await.is_err() {
                    return;
                }
                for _ in 1..WRITE_BATCH {
                    let Some(frame) = rx.try_recv() else { break };
                    if sink.feed(WsMessage::Text(frame)).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
            Outbound::Close(close) => {
                let frame = CloseFrame {
                    code: close.code,
                    reason: close.reason.as_ref().into(),
                };
                let _ = sink.send(WsMessage::Close(Some(frame))).await;
                let _ = sink.close().await;
                return;
            }
        }
    }
}
