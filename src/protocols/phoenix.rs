//! Phoenix Channels frames and the two JSON serializers phoenix.js speaks.
//!
//! ```text
//! V2 (vsn=2.0.0):  [join_ref, ref, topic, event, payload]
//! V1 (vsn=1.0.0):  {"join_ref": .., "ref": .., "topic": .., "event": .., "payload": ..}
//! ```
//!
//! `join_ref` and `ref` are strings or `null`; replies carry the ref of the push they
//! answer, broadcasts carry `null` for both. A broadcast is encoded once per
//! serializer ([`Fastlane`]) and the same bytes go to every subscriber.

use std::sync::OnceLock;

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An encoded text frame, ready for the socket. Cloning shares the bytes.
pub type Frame = Utf8Bytes;

/// Reserved event names of the protocol.
pub mod events {
    pub const JOIN: &str = "phx_join";
    pub const LEAVE: &str = "phx_leave";
    pub const REPLY: &str = "phx_reply";
    pub const ERROR: &str = "phx_error";
    pub const CLOSE: &str = "phx_close";
    pub const HEARTBEAT: &str = "heartbeat";
    /// The topic heartbeats are sent on.
    pub const HEARTBEAT_TOPIC: &str = "phoenix";
}

/// Serializer version, chosen by the client with the `vsn` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vsn {
    /// `vsn=1.0.0`: frames are JSON objects.
    V1,
    /// `vsn=2.0.0`: frames are JSON arrays (phoenix.js default).
    V2,
}

impl Vsn {
    /// Parse the `vsn` query parameter; phoenix.js before 1.4 sends none (V1).
    pub fn parse(vsn: Option<&str>) -> Option<Vsn> {
        match vsn {
            None | Some("1.0.0") => Some(Vsn::V1),
            Some("2.0.0") => Some(Vsn::V2),
            Some(_) => None,
        }
    }
}

/// One Phoenix message, inbound or outbound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub join_ref: Option<String>,
    #[serde(rename = "ref")]
    pub ref_: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: Value,
}

/// Why an inbound frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("binary frames are not supported by this server")]
    Binary,
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// A V2 frame as it appears on the wire, borrowed for encoding.
type V2Ref<'a> = (
    Option<&'a str>,
    Option<&'a str>,
    &'a str,
    &'a str,
    &'a Value,
);

/// A V1 frame as it appears on the wire, borrowed for encoding.
#[derive(Serialize)]
struct V1Ref<'a> {
    join_ref: Option<&'a str>,
    #[serde(rename = "ref")]
    ref_: Option<&'a str>,
    topic: &'a str,
    event: &'a str,
    payload: &'a Value,
}

/// Decode one text frame.
pub fn decode(vsn: Vsn, text: &str) -> Result<Message, DecodeError> {
    let malformed = |e: serde_json::Error| DecodeError::Malformed(e.to_string());
    match vsn {
        Vsn::V2 => {
            let (join_ref, ref_, topic, event, payload): (
                Option<String>,
                Option<String>,
                String,
                String,
                Value,
            ) = serde_json::from_str(text).map_err(malformed)?;
            Ok(Message {
                join_ref,
                ref_,
                topic,
                event,
                payload,
            })
        }
        Vsn::V1 => {
            // Extra keys are ignored, as Phoenix's V1 serializer does.
            #[derive(Deserialize)]
            struct V1 {
                #[serde(default)]
                join_ref: Option<String>,
                #[serde(rename = "ref")]
                ref_: Option<String>,
                topic: String,
                event: String,
                payload: Value,
            }
            let m: V1 = serde_json::from_str(text).map_err(malformed)?;
            Ok(Message {
                join_ref: m.join_ref,
                ref_: m.ref_,
                topic: m.topic,
                event: m.event,
                payload: m.payload,
            })
        }
    }
}

/// Encode one message for one client.
pub fn encode(
    vsn: Vsn,
    join_ref: Option<&str>,
    ref_: Option<&str>,
    topic: &str,
    event: &str,
    payload: &Value,
) -> Frame {
    let text = match vsn {
        Vsn::V2 => {
            let frame: V2Ref = (join_ref, ref_, topic, event, payload);
            serde_json::to_string(&frame)
        }
        Vsn::V1 => serde_json::to_string(&V1Ref {
            join_ref,
            ref_,
            topic,
            event,
            payload,
        }),
    };
    // Serializing a `Value` with string keys cannot fail.
    Frame::from(text.expect("JSON values always serialize"))
}

/// Encode one message whose payload is already-encoded JSON (a cached snapshot).
pub fn encode_raw(
    vsn: Vsn,
    join_ref: Option<&str>,
    ref_: Option<&str>,
    topic: &str,
    event: &str,
    payload_json: &str,
) -> Frame {
    let s = |v: Option<&str>| serde_json::to_string(&v).expect("strings always serialize");
    let text = match vsn {
        Vsn::V2 => format!(
            "[{},{},{},{},{payload_json}]",
            s(join_ref),
            s(ref_),
            s(Some(topic)),
            s(Some(event))
        ),
        Vsn::V1 => format!(
            r#"{{"join_ref":{},"ref":{},"topic":{},"event":{},"payload":{payload_json}}}"#,
            s(join_ref),
            s(ref_),
            s(Some(topic)),
            s(Some(event))
        ),
    };
    Frame::from(text)
}

/// Encode a `phx_reply` to the push `ref_`.
pub fn reply(
    vsn: Vsn,
    join_ref: Option<&str>,
    ref_: Option<&str>,
    topic: &str,
    ok: bool,
    response: Value,
) -> Frame {
    let payload = serde_json::json!({
        "status": if ok { "ok" } else { "error" },
        "response": response,
    });
    encode(vsn, join_ref, ref_, topic, events::REPLY, &payload)
}

/// A broadcast encoded at most once per serializer: the fastlane.
///
/// Subscribers on the same serializer receive clones of the same [`Frame`].
pub struct Fastlane<'a> {
    topic: &'a str,
    event: &'a str,
    payload: &'a Value,
    v1: OnceLock<Frame>,
    v2: OnceLock<Frame>,
}

impl<'a> Fastlane<'a> {
    pub fn new(topic: &'a str, event: &'a str, payload: &'a Value) -> Self {
        Fastlane {
            topic,
            event,
            payload,
            v1: OnceLock::new(),
            v2: OnceLock::new(),
        }
    }

    /// The frame for one serializer, encoded on first use.
    pub fn frame(&self, vsn: Vsn) -> &Frame {
        let cell = match vsn {
            Vsn::V1 => &self.v1,
            Vsn::V2 => &self.v2,
        };
        cell.get_or_init(|| encode(vsn, None, None, self.topic, self.event, self.payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn v2_round_trip() {
        let m = decode(Vsn::V2, r#"["1","2","room:1","phx_join",{"a":1}]"#).unwrap();
        assert_eq!(m.join_ref.as_deref(), Some("1"));
        assert_eq!(m.ref_.as_deref(), Some("2"));
        assert_eq!(m.topic, "room:1");
        assert_eq!(m.payload, json!({"a": 1}));
        let f = encode(Vsn::V2, None, Some("2"), "room:1", "x", &json!({}));
        assert_eq!(f.as_str(), r#"[null,"2","room:1","x",{}]"#);
    }

    #[test]
    fn v1_round_trip() {
        let m = decode(
            Vsn::V1,
            r#"{"topic":"t","event":"e","payload":{},"ref":"3"}"#,
        )
        .unwrap();
        assert_eq!(m.join_ref, None);
        assert_eq!(m.ref_.as_deref(), Some("3"));
        let f = encode(Vsn::V1, Some("1"), None, "t", "e", &json!([]));
        let v: Value = serde_json::from_str(f.as_str()).unwrap();
        assert_eq!(
            v,
            json!({"join_ref":"1","ref":null,"topic":"t","event":"e","payload":[]})
        );
    }

    #[test]
    fn raw_payloads_encode_like_values() {
        let payload = json!({"a": {"metas": [1]}});
        for vsn in [Vsn::V1, Vsn::V2] {
            let raw = encode_raw(vsn, Some("1"), None, "t\"x", "e", &payload.to_string());
            let value = encode(vsn, Some("1"), None, "t\"x", "e", &payload);
            let raw: Value = serde_json::from_str(raw.as_str()).unwrap();
            let value: Value = serde_json::from_str(value.as_str()).unwrap();
            assert_eq!(raw, value);
        }
    }

    #[test]
    fn v1_ignores_extra_keys() {
        let m = decode(
            Vsn::V1,
            r#"{"topic":"t","event":"e","payload":{},"ref":"1","extra":true}"#,
        )
        .unwrap();
        assert_eq!(m.topic, "t");
    }

    #[test]
    fn bad_frames_are_errors() {
        for text in [
            "not json",
            "[]",
            r#"["1","2","t","e"]"#,
            r#"["1","2","t","e",{},6]"#,
            r#"[1,"2","t","e",{}]"#,
            r#"{"topic":"t"}"#,
        ] {
            let vsn = if text.starts_with('{') {
                Vsn::V1
            } else {
                Vsn::V2
            };
            assert!(decode(vsn, text).is_err(), "{text} should not decode");
        }
    }

    #[test]
    fn fastlane_encodes_once_per_serializer() {
        let payload = json!({"x": 1});
        let lane = Fastlane::new("t", "e", &payload);
        let a = lane.frame(Vsn::V2).clone();
        let b = lane.frame(Vsn::V2).clone();
        assert_eq!(a.as_ptr(), b.as_ptr(), "same bytes, not a re-encode");
        assert_ne!(lane.frame(Vsn::V1).as_str(), a.as_str());
    }

    #[test]
    fn vsn_parse() {
        assert_eq!(Vsn::parse(Some("2.0.0")), Some(Vsn::V2));
        assert_eq!(Vsn::parse(None), Some(Vsn::V1));
        assert_eq!(Vsn::parse(Some("3.0.0")), None);
    }
}
