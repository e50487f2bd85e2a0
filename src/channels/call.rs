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
use crate::calls::arc::codec::ArcCodec;
use crate::calls::arc::srtp::Profile;
use crate::calls::peer::MAX_PUBLISHED;
use crate::calls::{ArcJoin, ArcRequest, CallError, Calls, Signal, SignalTarget, TOPIC_PREFIX};
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
            // WebRTC names a track by its m-line, ArcRTC by its track id.
            let mid = match (payload.get("mid"), payload.get("track_id")) {
                (Some(Value::String(m)), _) => Some(m.clone()),
                (_, Some(Value::Number(n))) => Some(n.to_string()),
                _ => None,
            };
            Ok(Signal::Mute { kind, mid, muted })
        }
        other => Err(format!("unknown event {other:?}")),
    }
}

fn arc_codec(v: &Value) -> Result<&'static ArcCodec, String> {
    let name = v.as_str().ok_or("codecs are named by strings")?;
    ArcCodec::by_name(name).ok_or_else(|| format!("unknown codec {name:?}"))
}

/// A `{kind, codec}` track to publish.
fn arc_track(v: &Value) -> Result<&'static ArcCodec, String> {
    let codec = arc_codec(v.get("codec").unwrap_or(&Value::Null))?;
    match v.get("kind").and_then(Value::as_str) {
        None => Ok(codec),
        Some(k) if k == crate::calls::kind_name(codec.kind) => Ok(codec),
        Some(k) => Err(format!("codec {:?} is not {k}", codec.name)),
    }
}

/// The ArcRTC events (docs/arcrtc.md §2), checked.
fn arc_request(event: &str, payload: &Value) -> Option<Result<ArcRequest, String>> {
    let list = |key: &str| payload.get(key).and_then(Value::as_array);
    Some(match event {
        "arc_join" => (|| {
            if payload.get("version").and_then(Value::as_u64) != Some(1) {
                return Err("unsupported ArcRTC version".to_string());
            }
            let codecs = match list("codecs") {
                Some(l) => l.iter().map(arc_codec).collect::<Result<Vec<_>, _>>()?,
                None => return Err("codecs must be a list of codec names".into()),
            };
            let publish = match list("publish") {
                Some(l) => l.iter().map(arc_track).collect::<Result<Vec<_>, _>>()?,
                None if payload.get("publish").is_none() => Vec::new(),
                None => return Err("publish must be a list of {kind, codec}".into()),
            };
            if publish.len() > MAX_PUBLISHED {
                return Err(format!("too many tracks (at most {MAX_PUBLISHED})"));
            }
            let profiles = list("srtp").ok_or("srtp must be a list of profile names")?;
            let profile = Profile::choose(profiles.iter().filter_map(Value::as_str))
                .ok_or("no common SRTP profile")?;
            let receive = match payload.get("receive") {
                None => true,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err("receive must be true or false".into()),
            };
            Ok(ArcRequest::Join(ArcJoin {
                codecs,
                publish,
                profile,
                receive,
            }))
        })(),
        "arc_publish" => arc_track(payload).map(ArcRequest::Publish),
        "arc_unpublish" => payload
            .get("track_id")
            .and_then(Value::as_u64)
            .map(ArcRequest::Unpublish)
            .ok_or_else(|| "track_id must be a number".to_string()),
        _ => return None,
    })
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
        if event == "call_end" || event == "arc_leave" {
            calls.leave(id, ctx.session, "left");
            return Ok(Some(Reply::Ok(json!({}))));
        }
        if let Some(request) = arc_request(event, &payload) {
            return Ok(Some(match request {
                Err(e) => Reply::error(e),
                Ok(r) => match calls.arc(id, ctx.session, r).await {
                    Ok(v) => Reply::Ok(v),
                    Err(e) => Reply::error(e.to_string()),
                },
            }));
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

    #[test]
    fn arc_requests_are_checked_before_reaching_the_call() {
        let join = |p: Value| match arc_request("arc_join", &p) {
            Some(Ok(ArcRequest::Join(j))) => Ok(j),
            Some(Err(e)) => Err(e),
            _ => Err("not a join".into()),
        };
        let ok = join(json!({"version": 1, "codecs": ["opus", "h265"],
            "publish": [{"kind": "audio", "codec": "opus"}],
            "srtp": ["SRTP_NULL", "AES_CM_128_HMAC_SHA1_80"]}))
        .unwrap();
        assert_eq!(ok.codecs.len(), 2);
        assert_eq!(ok.publish[0].name, "opus");
        assert_eq!(ok.profile, Profile::AesCm128HmacSha1_80);
        assert!(ok.receive);
        let err = |p: Value| join(p).unwrap_err();
        assert_eq!(err(json!({"version": 2})), "unsupported ArcRTC version");
        assert_eq!(
            err(json!({"version": 1, "codecs": ["theora"], "srtp": []})),
            "unknown codec \"theora\""
        );
        assert_eq!(
            err(json!({"version": 1, "codecs": [], "srtp": ["SRTP_NULL"]})),
            "no common SRTP profile"
        );
        assert_eq!(
            err(
                json!({"version": 1, "codecs": [], "srtp": ["AEAD_AES_128_GCM"],
                "publish": [{"kind": "video", "codec": "opus"}]})
            ),
            "codec \"opus\" is not video"
        );
        let five = vec![json!({"codec": "opus"}); 5];
        assert_eq!(
            err(json!({"version": 1, "codecs": [], "srtp": ["AEAD_AES_128_GCM"], "publish": five})),
            "too many tracks (at most 4)"
        );
        assert!(matches!(
            arc_request("arc_unpublish", &json!({"track_id": 3})),
            Some(Ok(ArcRequest::Unpublish(3)))
        ));
        assert!(matches!(
            arc_request("arc_unpublish", &json!({})),
            Some(Err(_))
        ));
        assert!(arc_request("call_offer", &json!({})).is_none());
    }
}
