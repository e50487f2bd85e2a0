//! `signaling:call:{id}`: WebRTC signaling, with the original Armoricore's event
//! names (docs/calls.md).
//!
//! | client → server | reply | server → client |
//! |---|---|---|
//! | join | `{call_id, participant_id, participants, ice_servers}` | `participant_joined`, `participant_left` |
//! | `call_offer {sdp, type}` | `{}` | `call_answer {sdp, type}` |
//! | `call_answer {sdp, type, offer_id}` | `{}` | `call_offer {sdp, type, offer_id, tracks}` (new tracks) |
//! | `ice_candidate {candidate, sdp_mid, sdp_m_line_index}` | `{}` | — (ICE-lite: the server's candidates are in its SDP) |
//! | `track_muted {kind?, mid?, muted}` | `{}` | `track_muted {participant_id, track_id, kind, muted, reason}` |
//! | `call_end` | `{}` | `call_end {reason}` when the server drops you, `track_ended` |

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};
use str0m::media::MediaKind;

use super::{Channel, ChannelCtx, ChannelError, Reply};
use crate::calls::{CallError, Calls, Signal, SignalTarget, TOPIC_PREFIX};
use crate::hub::Hub;
use crate::pubsub::SessionId;

pub struct CallSignaling;

fn call_id(topic: &str) -> &str {
    topic.strip_prefix(TOPIC_PREFIX).unwrap_or(topic)
}

fn calls<'a>(ctx: &'a ChannelCtx<'_>) -> Result<&'a Arc<Calls>, CallError> {
    ctx.hub.calls.as_ref().ok_or(CallError::Disabled)
}

/// `payload.sdp`, and `payload.type` when given must be `expected`.
fn sdp(payload: &Value, expected: &str) -> Result<String, String> {
    if let Some(t) = payload.get("type")
        && t.as_str() != Some(expected)
    {
        return Err(format!("type must be {expected:?}"));
    }
    match payload.get("sdp").and_then(Value::as_str) {
        Some(s) if !s.trim().is_empty() => Ok(s.to_string()),
        _ => Err("sdp must be a non-empty string".into()),
    }
}

fn signal(event: &str, payload: &Value) -> Result<Signal, String> {
    match event {
        "call_offer" => sdp(payload, "offer").map(Signal::Offer),
        "call_answer" => {
            let offer_id = match payload.get("offer_id") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_u64().ok_or("offer_id must be a number")?),
            };
            Ok(Signal::Answer {
                sdp: sdp(payload, "answer")?,
                offer_id,
            })
        }
        "ice_candidate" => match payload.get("candidate") {
            // null or "": end of candidates.
            None | Some(Value::Null) => Ok(Signal::Candidate(String::new())),
            Some(Value::String(c)) => Ok(Signal::Candidate(c.clone())),
            // RTCIceCandidate.toJSON() sent whole.
            Some(Value::Object(o)) => match o.get("candidate") {
                Some(Value::String(c)) => Ok(Signal::Candidate(c.clone())),
                _ => Err("candidate must be a string".into()),
            },
            Some(_) => Err("candidate must be a string".into()),
        },
        "track_muted" => {
            let muted = payload
                .get("muted")
                .and_then(Value::as_bool)
                .ok_or("muted must be true or false")?;
            let kind = match payload.get("kind").and_then(Value::as_str) {
                None => None,
                Some("audio") => Some(MediaKind::Audio),
                Some("video") => Some(MediaKind::Video),
                Some(_) => return Err("kind must be \"audio\" or \"video\"".into()),
            };
            let mid = payload
                .get("mid")
                .and_then(Value::as_str)
                .map(str::to_string);
            Ok(Signal::Mute { kind, mid, muted })
        }
        other => Err(format!("unknown event {other:?}")),
    }
}

#[async_trait]
impl Channel for CallSignaling {
    async fn join(&self, ctx: &ChannelCtx<'_>, _payload: &Value) -> Result<Value, Value> {
        let refuse = |e: CallError| match &e {
            CallError::Elsewhere(node) => json!({"reason": e.to_string(), "node": node}),
            _ => json!({"reason": e.to_string()}),
        };
        let calls = calls(ctx).map_err(refuse)?;
        let id = call_id(ctx.topic);
        if id.len() > 128 || id.chars().any(|c| c.is_control()) {
            return Err(json!({"reason": "call id must be at most 128 printable characters"}));
        }
        let target = SignalTarget {
            outbox: ctx.outbox.clone(),
            vsn: ctx.vsn,
            join_ref: ctx.join_ref.map(str::to_string),
            topic: Arc::from(ctx.topic),
            metrics: ctx.hub.metrics.clone(),
        };
        let user: Arc<str> = Arc::from(ctx.user.user_id.as_str());
        calls
            .join(id, ctx.session, user, target)
            .await
            .map_err(refuse)
    }

    async fn handle_in(
        &self,
        ctx: &ChannelCtx<'_>,
        event: &str,
        payload: Value,
    ) -> Result<Option<Reply>, ChannelError> {
        let calls = match calls(ctx) {
            Ok(c) => c,
            Err(e) => return Ok(Some(Reply::error(e.to_string()))),
        };
        let id = call_id(ctx.topic);
        if event == "call_end" {
            calls.leave(id, ctx.session, "left");
            return Ok(Some(Reply::Ok(json!({}))));
        }
        let signal = match signal(event, &payload) {
            Ok(s) => s,
            Err(e) => return Ok(Some(Reply::error(e))),
        };
        Ok(Some(match calls.signal(id, ctx.session, signal).await {
            Ok(()) => Reply::Ok(json!({})),
            Err(e) => Reply::error(e.to_string()),
        }))
    }

    fn terminate(&self, hub: &Arc<Hub>, topic: &str, session: SessionId) {
        if let Some(calls) = &hub.calls {
            calls.leave(call_id(topic), session, "left");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_checked_before_reaching_the_call() {
        assert!(matches!(
            signal("call_offer", &json!({"sdp": "v=0", "type": "offer"})),
            Ok(Signal::Offer(s)) if s == "v=0"
        ));
        assert_eq!(
            signal("call_offer", &json!({"sdp": "v=0", "type": "answer"})).err(),
            Some("type must be \"offer\"".into())
        );
        assert!(signal("call_offer", &json!({"sdp": 3})).is_err());
        assert!(signal("call_offer", &json!({"sdp": "  "})).is_err());
        assert!(matches!(
            signal("call_answer", &json!({"sdp": "v=0", "offer_id": 2})),
            Ok(Signal::Answer {
                offer_id: Some(2),
                ..
            })
        ));
        assert!(signal("call_answer", &json!({"sdp": "v=0", "offer_id": "2"})).is_err());
        assert!(matches!(
            signal("ice_candidate", &json!({"candidate": {"candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host"}})),
            Ok(Signal::Candidate(c)) if c.starts_with("candidate:1")
        ));
        assert!(matches!(
            signal("ice_candidate", &json!({"candidate": null})),
            Ok(Signal::Candidate(c)) if c.is_empty()
        ));
        assert!(signal("ice_candidate", &json!({"candidate": 5})).is_err());
        assert!(matches!(
            signal("track_muted", &json!({"kind": "video", "muted": true})),
            Ok(Signal::Mute {
                kind: Some(MediaKind::Video),
                mid: None,
                muted: true
            })
        ));
        assert!(signal("track_muted", &json!({"kind": "smell", "muted": true})).is_err());
        assert!(signal("track_muted", &json!({"kind": "audio"})).is_err());
        assert!(signal("hello", &json!({})).is_err());
    }
}
