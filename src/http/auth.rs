//! Finding and checking the connect token of a socket request.
//!
//! Looked for, in order: the `Sec-WebSocket-Protocol` value
//! `base64url.bearer.phx.<base64url(token)>` (phoenix.js 1.8 `authToken`), the
//! `X-Phoenix-AuthToken` header (long-poll with `authToken`), `Authorization: Bearer`,
//! then the `token` query parameter (phoenix.js `params`).

use axum::http::{HeaderMap, StatusCode};
use base64::Engine;

use super::Refusal;
use crate::hub::Hub;
use crate::protocols::jwt::{AuthError, Claims};

/// The subprotocol prefix phoenix.js uses to carry `authToken`.
pub const AUTH_PROTOCOL_PREFIX: &str = "base64url.bearer.phx.";

/// The token from the subprotocol header, if one carries it.
fn from_subprotocol(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| p.strip_prefix(AUTH_PROTOCOL_PREFIX))
        .and_then(|encoded| {
            // phoenix.js sends btoa(token) without padding: the standard alphabet,
            // despite the name. Accept both alphabets.
            let url_safe: String = encoded
                .trim_end_matches('=')
                .chars()
                .map(|c| match c {
                    '+' => '-',
                    '/' => '_',
                    c => c,
                })
                .collect();
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(url_safe)
                .ok()
        })
        .and_then(|bytes| String::from_utf8(bytes).ok())
}

/// The connect token of a request, wherever the client put it.
pub fn find_token(headers: &HeaderMap, query_token: Option<&str>) -> Option<String> {
    from_subprotocol(headers)
        .or_else(|| {
            headers
                .get("x-phoenix-authtoken")
                .and_then(|v| v.to_str().ok())
                .filter(|t| !t.is_empty())
                .map(str::to_string)
        })
        .or_else(|| {
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
        })
        .or_else(|| query_token.map(str::to_string))
}

/// Verify the request's token; the error is the HTTP answer (401/403, JSON reason).
pub fn authenticate(
    hub: &Hub,
    transport: &'static str,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Claims, Refusal> {
    let result = match find_token(headers, query_token) {
        None => Err(AuthError::Missing),
        Some(token) => hub.verifier.verify(&token),
    };
    result.map_err(|e| {
        let (status, label) = if e.status() == 403 {
            (StatusCode::FORBIDDEN, "forbidden")
        } else {
            (StatusCode::UNAUTHORIZED, "unauthorized")
        };
        hub.metrics
            .connects
            .with_label_values(&[transport, label])
            .inc();
        tracing::debug!(transport, reason = %e, "connection refused");
        Refusal::new(status, label, e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subprotocol_token() {
        let mut h = HeaderMap::new();
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("a.b.c");
        h.insert(
            "sec-websocket-protocol",
            format!("phoenix, {AUTH_PROTOCOL_PREFIX}{encoded}")
                .parse()
                .unwrap(),
        );
        assert_eq!(find_token(&h, Some("q")).as_deref(), Some("a.b.c"));
        // The standard alphabet (what btoa gives) decodes too: "?>?" is "Pz4/".
        let mut h = HeaderMap::new();
        h.insert(
            "sec-websocket-protocol",
            format!("{AUTH_PROTOCOL_PREFIX}Pz4/").parse().unwrap(),
        );
        assert_eq!(find_token(&h, None).as_deref(), Some("?>?"));
        assert_eq!(
            find_token(&HeaderMap::new(), Some("q")).as_deref(),
            Some("q")
        );
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer xyz".parse().unwrap());
        assert_eq!(find_token(&h, None).as_deref(), Some("xyz"));
        // An empty header is no token: the next source is used (found by fuzzing).
        let mut h = HeaderMap::new();
        h.insert("x-phoenix-authtoken", "".parse().unwrap());
        h.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(find_token(&h, Some("q")).as_deref(), Some("q"));
    }
}
