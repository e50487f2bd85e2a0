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
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
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
use crate::pubsub::outbox::{self, Outbound, OutboxReceiver};

const TRANSPORT: &str = "websocket";
/// How long the writer may take to flush and close once the connection ends.
const WRITER_GRACE: Duration = Duration::from_secs(5);
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

async fn serve(hub: Arc<Hub>, user: Arc<Claims>, vsn: Vsn, socket: WebSocket) {
    let (outbox, rx) = outbox::bounded(
        hub.config.socket.outbound_queue_frames,
        hub.config.socket.outbound_queue_bytes,
    );
    let (sink, stream) = socket.split();
    let mut writer = tokio::spawn(write_loop(sink, rx));
    if let Some(session) = start_session(&hub, user, vsn, outbox.clone(), TRANSPORT).await {
        tokio::select! {
            // The server closed the connection (slow consumer, crash, shutdown): stop
            // reading, so the session ends now, not when the client next goes quiet.
            _ = outbox.closed() => {}
            _ = read_loop(&hub, &session, vsn, &outbox, stream) => {}
        }
        session.stop(None);
    } else {
        outbox.close_now(1011, "cannot start session");
    }
    // Whatever ended the loop, make sure the writer closes the socket and ends; a
    // peer that stops reading gets a bounded wait, then the socket is dropped.
    outbox.close(1000, "");
    if tokio::time::timeout(WRITER_GRACE, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

/// Read frames and hand them to the session until the client leaves or a bad
/// frame or the heartbeat timeout closes the connection.
async fn read_loop(
    hub: &Hub,
    session: &ActorRef<SessionMsg>,
    vsn: Vsn,
    outbox: &Outbox,
    mut stream: SplitStream<WebSocket>,
) {
    let heartbeat = hub.config.heartbeat_timeout();
    let max = hub.config.socket.max_frame_bytes;
    loop {
        let next = match tokio::time::timeout(heartbeat, stream.next()).await {
            Err(_) => return outbox.close_now(1001, "heartbeat timeout"),
            Ok(None) => return,
            Ok(Some(next)) => next,
        };
        let text = match next {
            Ok(WsMessage::Text(text)) => text,
            Ok(WsMessage::Ping(_) | WsMessage::Pong(_)) => continue,
            Ok(WsMessage::Close(_)) => return,
            Ok(WsMessage::Binary(_)) => {
                hub.metrics.bad_frames.with_label_values(&["binary"]).inc();
                return outbox.close(1003, "binary frames are not supported");
            }
            Err(e) => {
                if let Some((code, label, reason)) = read_error_close(&e, max) {
                    hub.metrics.bad_frames.with_label_values(&[label]).inc();
                    outbox.close_now(code, reason);
                }
                return;
            }
        };
        match receive(hub, session, vsn, &text).await {
            Received::Handled => {}
            Received::SessionGone => return,
            Received::Malformed(reason) => return outbox.close(1007, reason),
        }
    }
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
