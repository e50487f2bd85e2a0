//! The WebSocket transport: `GET /socket/websocket?vsn=2.0.0&token=JWT`.
//!
//! Authentication happens before the upgrade (401/403 with a JSON reason). Each
//! connection then has a Session actor and one task (this one) that owns the
//! socket: it drains the connection's [`Outbox`] in batches (`feed` several
//! frames, then one `flush`), reads and decodes frames for the session, and
//! enforces the heartbeat timeout and the limits. One task rather than a reader
//! and a writer: less memory per connection, no lock around a split socket.
//!
//! Close codes: 1001 server shutting down or heartbeat timeout, 1002 WebSocket
//! protocol error, 1003 binary frame, 1007 malformed frame or invalid UTF-8,
//! 1008 slow consumer, 1009 frame too large, 1011 internal error.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use ractor::ActorRef;

use super::Refusal;
use super::auth::authenticate;
use super::transport::{Received, close_reason, param, receive, start_session, vsn_of};
use crate::actors::session::SessionMsg;
use crate::hub::Hub;
use crate::protocols::jwt::Claims;
use crate::protocols::phoenix::Vsn;
use crate::pubsub::Outbox;
use crate::pubsub::outbox::{self, Close, Outbound, OutboxReceiver};

const TRANSPORT: &str = "websocket";
/// How long sending the close frame may take once the connection ends.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Frames written per flush at most.
const WRITE_BATCH: usize = 64;

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
        // No max_write_buffer_size: what we send is already bounded by the outbox,
        // and one frame bigger than that limit (a large room's presence_state)
        // would fail the connection.
        .max_message_size(socket.max_frame_bytes)
        .max_frame_size(socket.max_frame_bytes)
        .on_upgrade(move |socket| serve(hub, Arc::new(claims), vsn, socket))
}

async fn serve(hub: Arc<Hub>, user: Arc<Claims>, vsn: Vsn, mut socket: WebSocket) {
    let (outbox, mut rx) = outbox::bounded(
        hub.config.socket.outbound_queue_frames,
        hub.config.socket.outbound_queue_bytes,
    );
    let close = match start_session(&hub, user, vsn, outbox.clone(), TRANSPORT).await {
        Some(session) => {
            let close = pump(&hub, &session, vsn, &outbox, &mut rx, &mut socket).await;
            session.stop(None);
            close
        }
        None => Some(Close {
            code: 1011,
            reason: "cannot start session".into(),
        }),
    };
    // Send the close frame (or answer the client's), with a bounded wait: a peer
    // that stops reading must not hold the connection.
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        if let Some(close) = close {
            let frame = CloseFrame {
                code: close.code,
                reason: close.reason.as_ref().into(),
            };
            let _ = socket.send(WsMessage::Close(Some(frame))).await;
        }
        let _ = socket.close().await;
    })
    .await;
}

/// The connection's one task: write what the outbox holds (in batches: `feed`
/// several frames, then one `flush`), read frames and hand them to the session,
/// and enforce the heartbeat timeout. Returns the close to send, or `None` when
/// the client left first.
async fn pump(
    hub: &Hub,
    session: &ActorRef<SessionMsg>,
    vsn: Vsn,
    outbox: &Outbox,
    rx: &mut OutboxReceiver,
    socket: &mut WebSocket,
) -> Option<Close> {
    let heartbeat = hub.config.heartbeat_timeout();
    let max = hub.config.socket.max_frame_bytes;
    let mut deadline = tokio::time::Instant::now() + heartbeat;
    loop {
        tokio::select! {
            biased;
            out = rx.recv() => match out {
                Outbound::Close(close) => return Some(close),
                Outbound::Frame(frame) => {
                    // A stalled client must not block an urgent close decided
                    // meanwhile (slow consumer, crash); a graceful one waits its turn.
                    let written = tokio::select! {
                        written = write_batch(socket, rx, frame) => written,
                        _ = outbox.closed_now() => Ok(()),
                    };
                    if written.is_err() {
                        return None;
                    }
                }
            },
            _ = tokio::time::sleep_until(deadline) => {
                outbox.close_now(1001, "heartbeat timeout");
            }
            next = socket.next() => {
                deadline = tokio::time::Instant::now() + heartbeat;
                let text = match next {
                    None | Some(Ok(WsMessage::Close(_))) => return None,
                    Some(Ok(WsMessage::Text(text))) => text,
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                    Some(Ok(WsMessage::Binary(_))) => {
                        hub.metrics.bad_frames.with_label_values(&["binary"]).inc();
                        outbox.close(1003, "binary frames are not supported");
                        continue;
                    }
                    Some(Err(e)) => match read_error_close(&e, max) {
                        Some((code, label, reason)) => {
                            hub.metrics.bad_frames.with_label_values(&[label]).inc();
                            outbox.close_now(code, reason);
                            continue;
                        }
                        None => return None,
                    },
                };
                match receive(hub, session, vsn, &text).await {
                    Received::Handled => {}
                    Received::SessionGone => return Some(Close { code: 1011, reason: "internal error".into() }),
                    Received::Malformed(reason) => outbox.close(1007, reason),
                }
            }
        }
    }
}

/// Write `first` and whatever else is queued (up to [`WRITE_BATCH`]), then flush.
async fn write_batch(
    socket: &mut WebSocket,
    rx: &mut OutboxReceiver,
    first: crate::protocols::phoenix::Frame,
) -> Result<(), axum::Error> {
    socket.feed(WsMessage::Text(first)).await?;
    for _ in 1..WRITE_BATCH {
        let Some(frame) = rx.try_recv() else { break };
        socket.feed(WsMessage::Text(frame)).await?;
    }
    socket.flush().await
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
                return Some((
                    1002,
                    "protocol",
                    close_reason(&format!("protocol error: {p}")),
                ));
            }
            Some(_) => return None,
            None => source = err.source(),
        }
    }
    None
}
