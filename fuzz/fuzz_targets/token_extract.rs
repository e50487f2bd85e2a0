//! Fuzz target: finding the connect token in a request, verifying it, topic patterns.
//!
//! The input is lines (split at `\n`; a missing line, or one that is no valid header
//! value such as `\0`, is an absent header; an empty line is an empty header):
//!
//! ```text
//! 0  Sec-WebSocket-Protocol value (`\x1f` splits it into several header lines)
//! 1  X-Phoenix-AuthToken value
//! 2  Authorization value
//! 3  the `token` query parameter
//! 4  a `channels` topic pattern
//! 5  a topic
//! 6  byte pairs (position, new byte) applied to a freshly minted valid token
//! ```
//!
//! Checks: `find_token`, `Verifier::verify` (HS256, secret `b"secret"`, 5 s leeway,
//! `exp` required) and `topic_matches` never panic; whatever `verify` accepts (the
//! found token, every line taken as a token) carries a correct HMAC-SHA256 of its
//! `header.payload` under the secret; a minted token with any byte changed is
//! refused; `topic_matches` agrees with a plain glob matcher (`*` matches any run of
//! characters, so `*` alone matches every topic). At start-up every one-byte change
//! of a minted token (each position, each of the 256 values) is tried once.

#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use armoricore::http::auth::find_token;
use armoricore::protocols::jwt::{Claims, Verifier, topic_matches};
use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"secret";

static VERIFIER: LazyLock<Verifier> =
    LazyLock::new(|| Verifier::hs256(SECRET, Duration::from_secs(5), true));

/// A valid token (a day to live) and what it verifies to.
static MINTED: LazyLock<(String, Claims)> = LazyLock::new(|| {
    let claims = Claims {
        user_id: "alice".into(),
        channels: Some(vec!["chat:room:*".into(), "user:alice".into()]),
        name: Some("Alice".into()),
        meta: Some(serde_json::json!({"role": "admin"})),
        admin: false,
    };
    let token = VERIFIER
        .mint(&claims, Some(Duration::from_secs(86_400)))
        .expect("HS256 mints");
    let verified = VERIFIER.verify(&token).expect("a minted token verifies");
    assert_eq!(verified, claims);
    one_byte_sweep(&token, &claims);
    (token, verified)
});

fuzz_target!(|data: &[u8]| {
    let (token, claims) = &*MINTED;
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let line = |i: usize| lines.get(i).copied();
    let text = |i: usize| line(i).map(String::from_utf8_lossy);

    let mut headers = HeaderMap::new();
    if let Some(protocols) = line(0) {
        for value in protocols.split(|&b| b == 0x1f) {
            if let Ok(v) = HeaderValue::from_bytes(value) {
                headers.append("sec-websocket-protocol", v);
            }
        }
    }
    for (i, name) in [(1, "x-phoenix-authtoken"), (2, "authorization")] {
        if let Some(Ok(v)) = line(i).map(HeaderValue::from_bytes) {
            headers.insert(name, v);
        }
    }
    let query = text(3);
    if let Some(found) = find_token(&headers, query.as_deref()) {
        check_verify(&found);
    }
    for i in 0..lines.len().min(4) {
        check_verify(&text(i).unwrap());
    }

    let pattern = text(4).unwrap_or_default();
    let topic = text(5).unwrap_or_default();
    check_topic(&pattern, &topic);

    if let Some(changes) = line(6) {
        let mut bytes = token.clone().into_bytes();
        for pair in changes.chunks_exact(2) {
            let at = pair[0] as usize % bytes.len();
            bytes[at] = pair[1];
        }
        if let Ok(changed) = String::from_utf8(bytes) {
            check_changed(token, claims, &changed);
        }
    }
});

/// Whatever verifies must be signed with the secret; nothing may panic.
fn check_verify(candidate: &str) {
    if let Ok(claims) = VERIFIER.verify(candidate) {
        assert!(
            signed_with_secret(candidate),
            "FORGERY: {candidate:?} verified without a valid signature"
        );
        assert!(
            !claims.user_id.is_empty(),
            "a token without a user verified"
        );
    }
}

/// The independent check: HMAC-SHA256(secret, "header.payload") == signature.
fn signed_with_secret(token: &str) -> bool {
    let Some((message, signature)) = token.rsplit_once('.') else {
        return false;
    };
    let Ok(signature) = URL_SAFE_NO_PAD.decode(signature) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET);
    hmac::verify(&key, message.as_bytes(), &signature).is_ok()
}

/// A minted token, changed: refused, unless the change is to base64's unused
/// trailing bits so that every part still decodes to the same bytes (reported).
fn check_changed(token: &str, claims: &Claims, changed: &str) {
    if changed == token {
        return;
    }
    if let Ok(got) = VERIFIER.verify(changed) {
        assert!(
            same_decoded_parts(token, changed),
            "FORGERY: changed token {changed:?} verified (original {token:?})"
        );
        assert_eq!(&got, claims);
        eprintln!(
            "note: {changed:?} verified: it differs from the minted token only in base64 padding bits"
        );
    }
}

/// Do both tokens decode, part by part, to the same bytes (base64 ignoring unused bits)?
fn same_decoded_parts(a: &str, b: &str) -> bool {
    let lenient = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_encode_padding(false)
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone)
            .with_decode_allow_trailing_bits(true),
    );
    let parts = |t: &str| -> Option<Vec<Vec<u8>>> {
        t.split('.').map(|p| lenient.decode(p).ok()).collect()
    };
    matches!((parts(a), parts(b)), (Some(x), Some(y)) if x == y)
}

/// Every single-byte change of the minted token, once per process.
fn one_byte_sweep(token: &str, claims: &Claims) {
    for at in 0..token.len() {
        for byte in 0..=255u8 {
            let mut bytes = token.as_bytes().to_vec();
            bytes[at] = byte;
            if let Ok(changed) = String::from_utf8(bytes) {
                check_changed(token, claims, &changed);
            }
        }
    }
}

/// `topic_matches` against a plain glob matcher.
fn check_topic(pattern: &str, topic: &str) {
    let got = topic_matches(pattern, topic);
    assert!(topic_matches("*", topic), "`*` must match {topic:?}");
    assert!(topic_matches("*", pattern), "`*` must match {pattern:?}");
    if !topic.contains('*') {
        assert!(topic_matches(topic, topic), "{topic:?} must match itself");
    }
    // The oracle is quadratic: keep it to inputs of a reasonable size.
    if pattern.len() * topic.len() <= 1 << 16 {
        let want = glob(pattern.as_bytes(), topic.as_bytes());
        assert_eq!(got, want, "topic_matches({pattern:?}, {topic:?})");
    }
}

/// `*` matches any run of bytes (for UTF-8 text the same as any run of characters).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    // matches[j]: does the pattern so far match text[..j]?
    let mut matches = vec![false; text.len() + 1];
    matches[0] = true;
    for &p in pattern {
        if p == b'*' {
            for j in 1..=text.len() {
                matches[j] = matches[j] || matches[j - 1];
            }
        } else {
            for j in (1..=text.len()).rev() {
                matches[j] = matches[j - 1] && text[j - 1] == p;
            }
            matches[0] = false;
        }
    }
    matches[text.len()]
}
