//! Fuzz target: the Phoenix frame decoder and encoders, and WebSocket close reasons.
//!
//! The input is one inbound text frame (bytes that are not UTF-8 are replaced, as
//! only UTF-8 text reaches the decoder). For both serializers (V1 objects, V2 arrays):
//!
//! - `decode` never panics;
//! - a decoded message, encoded again with `encode` (either serializer), decodes to
//!   the very same `Message` (round trip);
//! - `encode_raw` with the payload's JSON text gives the same JSON as `encode` with
//!   the payload value, byte for byte when the text is serde_json's own; this is
//!   checked for every decoded payload and for the whole input when it is JSON;
//! - `close_reason` (the transports close with it, quoting the decode error) never
//!   panics and keeps the longest prefix that fits 120 bytes at a char boundary.

#![no_main]

use armoricore::http::transport::close_reason;
use armoricore::protocols::phoenix::{Message, Vsn, decode, encode, encode_raw};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const VSNS: [Vsn; 2] = [Vsn::V1, Vsn::V2];

/// Topic and event used when only the payload is under test: quotes, a backslash,
/// control characters and non-ASCII, so the string escaping of both encoders is used.
const TOPIC: &str = "room:\"lobby\"\\\u{1}\u{7f}é";
const EVENT: &str = "new_msg\n\u{2028}";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check_close_reason(&text);
    for vsn in VSNS {
        match decode(vsn, &text) {
            Ok(message) => {
                round_trip(&message);
                raw_matches_value(&message.payload.to_string(), &message.payload, true);
            }
            Err(e) => check_close_reason(&e.to_string()),
        }
    }
    // Any JSON value as a payload, in the client's own spelling (spaces, escapes,
    // exponents, duplicate keys) and in serde_json's.
    if let Ok(payload) = serde_json::from_str::<Value>(&text) {
        raw_matches_value(&text, &payload, false);
        raw_matches_value(&payload.to_string(), &payload, true);
    }
});

/// What decodes must come back unchanged through `encode`, in either serializer.
fn round_trip(m: &Message) {
    for vsn in VSNS {
        let frame = encode(
            vsn,
            m.join_ref.as_deref(),
            m.ref_.as_deref(),
            &m.topic,
            &m.event,
            &m.payload,
        );
        let again = decode(vsn, frame.as_str())
            .unwrap_or_else(|e| panic!("{vsn:?}: our own frame {frame:?} does not decode: {e}"));
        assert_eq!(&again, m, "{vsn:?} round trip changed the message");
    }
}

/// `encode_raw` (cached presence snapshots) must agree with `encode`; byte for byte
/// when `payload_json` is serde_json's own text of `payload` (`canonical`).
fn raw_matches_value(payload_json: &str, payload: &Value, canonical: bool) {
    for vsn in VSNS {
        for (join_ref, ref_) in [(Some("1"), Some("2")), (None, None)] {
            let raw = encode_raw(vsn, join_ref, ref_, TOPIC, EVENT, payload_json);
            let value = encode(vsn, join_ref, ref_, TOPIC, EVENT, payload);
            if canonical {
                assert_eq!(
                    raw.as_str(),
                    value.as_str(),
                    "{vsn:?}: encode_raw != encode"
                );
            }
            let parsed_raw = serde_json::from_str::<Value>(raw.as_str());
            let parsed_value = serde_json::from_str::<Value>(value.as_str());
            match (parsed_raw, parsed_value) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{vsn:?}: encode_raw and encode differ"),
                // A payload nested 128 deep parses alone, but not inside a frame
                // (serde_json's recursion limit); both encoders alike.
                (Err(a), Err(b)) if depth_limit(&a) && depth_limit(&b) => {}
                (a, b) => panic!("{vsn:?}: encode_raw gave {a:?}, encode gave {b:?}"),
            }
        }
    }
}

fn depth_limit(e: &serde_json::Error) -> bool {
    e.to_string().starts_with("recursion limit exceeded")
}

/// A close reason is the longest prefix of the text that fits in 120 bytes.
fn check_close_reason(text: &str) {
    let reason = close_reason(text);
    assert!(
        reason.len() <= 120,
        "close reason of {} bytes",
        reason.len()
    );
    assert!(text.starts_with(reason.as_str()), "not a prefix");
    if text.len() <= 120 {
        assert_eq!(reason, text, "a short text was cut");
    } else {
        // A char is at most 4 bytes: a cut at a boundary loses at most 3.
        assert!(reason.len() >= 117, "cut too short: {} bytes", reason.len());
    }
}
