//! What the WebSocket and long-poll transports share: query parameters, the
//! serializer version, starting a Session, and handing it the client's frames.

use std::sync::Arc;

use axum::http::StatusCode;
use ractor::{Actor, ActorRef};

use super::Refusal;
use crate::actors::session::{Session, SessionArgs, SessionMsg};
use crate::hub::Hub;
use crate::protocols::jwt::Claims;
use crate::protocols::phoenix::{self, Vsn};
use crate::pubsub::Outbox;

/// The value of a query parameter (the first one when repeated).
pub fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Parse `vsn`, or refuse with 400.
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

/// What became of one inbound text frame.
#[derive(Debug, PartialEq)]
pub enum Received {
    /// Decoded and handled by the session.
    Handled,
    /// The session is gone.
    SessionGone,
    /// Not a Phoenix frame: the reason, ready to be a close reason.
    Malformed(String),
}

/// Decode one text frame and hand it to the session, waiting until it is handled
/// (so a fast client cannot queue without bound).
pub async fn receive(hub: &Hub, session: &ActorRef<SessionMsg>, vsn: Vsn, text: &str) -> Received {
    let msg = match phoenix::decode(vsn, text) {
        Ok(msg) => msg,
        Err(e) => {
            hub.metrics
                .bad_frames
                .with_label_values(&["malformed"])
                .inc();
            return Received::Malformed(close_reason(&e.to_string()));
        }
    };
    let handled = session
        .call(|reply| SessionMsg::Inbound(msg, reply), None)
        .await
        .map(|r| r.is_success())
        .unwrap_or(false);
    if handled {
        Received::Handled
    } else {
        Received::SessionGone
    }
}

/// A WebSocket close reason must fit in 123 bytes; cut at a character boundary
/// (error messages quote the client's own text, which may be any UTF-8).
pub fn close_reason(text: &str) -> String {
    const MAX: usize = 120;
    let mut end = text.len().min(MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_are_cut_at_a_char_boundary() {
        let long = "é".repeat(100); // 200 bytes, every other byte mid-character
        let cut = close_reason(&long);
        assert!(cut.len() <= 120);
        assert_eq!(cut, "é".repeat(60));
        assert_eq!(close_reason("short"), "short");
    }
}
