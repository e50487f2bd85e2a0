//! Property tests ("fuzzing" on stable Rust) of everything that parses client input:
//! the Phoenix frame decoder (V1, V2), token extraction and verification, topic
//! patterns, close reasons and bus events (envelope and payload schemas). Nothing may panic; what decodes must round-trip;
//! no token not signed with the secret may verify.
//!
//! Cases per property: `PROPTEST_CASES` (the test script runs the default, 256;
//! `PROPTEST_CASES=100000 cargo test --release --test fuzz_props` by hand).

use std::time::Duration;

use armoricore::http::auth::find_token;
use armoricore::http::transport::close_reason;
use armoricore::protocols::jwt::{Claims, Verifier, topic_matches};
use armoricore::protocols::phoenix::{Vsn, decode, encode, encode_raw};
use axum::http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Arbitrary JSON values, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::hash_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Near-valid V2 frames: arrays of 0-7 arbitrary JSON values.
fn v2_like() -> impl Strategy<Value = String> {
    prop::collection::vec(json_value(), 0..7).prop_map(|v| Value::Array(v).to_string())
}

/// Near-valid V1 frames: objects with some of the expected keys.
fn v1_like() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("join_ref".to_string()),
        Just("ref".to_string()),
        Just("topic".to_string()),
        Just("event".to_string()),
        Just("payload".to_string()),
        ".{0,6}",
    ];
    prop::collection::hash_map(key, json_value(), 0..7)
        .prop_map(|m| Value::Object(m.into_iter().collect()).to_string())
}

fn verifier() -> Verifier {
    Verifier::hs256(
        b"property-secret-property-secret!",
        Duration::from_secs(5),
        true,
    )
}

proptest! {
    #[test]
    fn decode_never_panics_on_any_text(text in ".{0,200}") {
        let _ = decode(Vsn::V1, &text);
        let _ = decode(Vsn::V2, &text);
    }

    #[test]
    fn decoded_frames_round_trip(text in prop_oneof![v2_like(), v1_like()]) {
        for vsn in [Vsn::V1, Vsn::V2] {
            if let Ok(m) = decode(vsn, &text) {
                let frame = encode(vsn, m.join_ref.as_deref(), m.ref_.as_deref(), &m.topic, &m.event, &m.payload);
                let again = decode(vsn, frame.as_str()).expect("what we encode decodes");
                prop_assert_eq!(again, m);
            }
        }
    }

    #[test]
    fn raw_and_value_encodings_agree(payload in json_value(), topic in ".{0,12}", event in ".{0,12}") {
        for vsn in [Vsn::V1, Vsn::V2] {
            let raw = encode_raw(vsn, Some("1"), None, &topic, &event, &payload.to_string());
            let value = encode(vsn, Some("1"), None, &topic, &event, &payload);
            let raw: Value = serde_json::from_str(raw.as_str()).unwrap();
            let value: Value = serde_json::from_str(value.as_str()).unwrap();
            prop_assert_eq!(raw, value);
        }
    }

    #[test]
    fn token_extraction_never_panics(
        protocol in ".{0,80}",
        header in ".{0,80}",
        bearer in ".{0,80}",
        query in proptest::option::of(".{0,80}"),
    ) {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("sec-websocket-protocol", format!("phoenix, base64url.bearer.phx.{protocol}")),
            ("x-phoenix-authtoken", header),
            ("authorization", format!("Bearer {bearer}")),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
        let _ = find_token(&headers, query.as_deref());
    }

    #[test]
    fn verify_never_panics(token in ".{0,300}") {
        let _ = verifier().verify(&token);
    }

    #[test]
    fn a_changed_token_never_verifies(at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let v = verifier();
        let claims = Claims { user_id: "alice".into(), ..Claims::default() };
        let token = v.mint(&claims, Some(Duration::from_secs(600))).unwrap();
        let mut bytes = token.clone().into_bytes();
        let i = at.index(bytes.len());
        bytes[i] = if bytes[i] == byte { byte.wrapping_add(1) } else { byte };
        let Ok(changed) = String::from_utf8(bytes) else { return Ok(()) };
        // Base64's last character may carry unused bits: a change there can decode
        // to the very same bytes, which is the same token, not a forgery.
        if let Ok(c) = v.verify(&changed) {
            prop_assert_eq!(c, v.verify(&token).unwrap());
            let last = changed.rfind('.').unwrap();
            prop_assert!(i == changed.len() - 1 || i == last - 1, "a forged token verified: changed byte {i}");
        }
    }

    #[test]
    fn topic_patterns_never_panic(pattern in ".{0,20}", topic in ".{0,20}") {
        let _ = topic_matches(&pattern, &topic);
        prop_assert!(topic_matches("*", &topic));
        prop_assert!(topic_matches(&topic, &topic) || topic.contains('*'));
    }

    #[test]
    fn close_reasons_are_short_valid_utf8(text in ".{0,300}") {
        let reason = close_reason(&text);
        prop_assert!(reason.len() <= 120);
        prop_assert!(text.starts_with(&reason));
    }
}

proptest! {
    /// Any bytes on any subject: a clear refusal or an envelope, never a panic.
    #[test]
    fn event_parsing_never_panics(subject in prop::sample::select(SUBJECTS), body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = armoricore::bus::events::parse(subject, &body);
    }

    /// JSON-shaped events with arbitrary payload values: accepted events keep
    /// their payload exactly; refused ones say why.
    #[test]
    fn event_payloads_are_kept_or_refused_with_a_reason(subject in prop::sample::select(SUBJECTS), payload in json_object()) {
        let body = serde_json::json!({
            "event_id": "e1", "event_type": subject, "payload": payload.clone(),
        });
        match armoricore::bus::events::parse(subject, body.to_string().as_bytes()) {
            Ok(env) => prop_assert_eq!(serde_json::Value::Object(env.payload), payload),
            Err(invalid) => prop_assert!(!invalid.reason.is_empty()),
        }
    }
}

const SUBJECTS: &[&str] = &[
    "media.uploaded",
    "media.ready",
    "media.progress",
    "media.failed",
    "notification.requested",
    "notification.sent",
    "transcription.requested",
    "transcription.complete",
    "translation.requested",
    "translation.complete",
    "chat.message",
    "presence.update",
    "other.subject",
];

/// JSON objects whose keys are often the schema's own field names.
fn json_object() -> impl Strategy<Value = serde_json::Value> {
    let key = prop::sample::select(
        &[
            "media_id",
            "user_id",
            "file_path",
            "content_type",
            "file_size",
            "title",
            "body",
            "notification_type",
            "text",
            "to_language",
            "progress",
            "playback_urls",
            "extra",
        ][..],
    );
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        "[a-z0-9 ]{0,12}".prop_map(serde_json::Value::from),
    ];
    prop::collection::btree_map(key, leaf, 0..10).prop_map(|m| {
        serde_json::Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    })
}
