//! The operations page (docs/dashboard.md).
//!
//! ```text
//! GET /dashboard          the page (static/dashboard.html), with an admin token in it
//! GET /dashboard/token    {token, expires_in}: a fresh admin token for the page's socket
//! GET /assets/dashboard.js the page's script (no secrets; public like phoenix.mjs)
//! ```
//!
//! Both routes need `dashboard.password` (HTTP Basic, any user name) or the API
//! key (as the Basic password, or `Authorization: apikey <key>`); with neither
//! configured the dashboard is off. A refusal is 401 with a Basic challenge, so a
//! browser asks for the password.
//!
//! The page's token is an HS256 JWT with `kid: "armoricore-dashboard"` and the
//! `admin` claim, signed with a key derived from that credential: every node of a
//! cluster (same configuration) accepts it, whatever `auth.algorithm` is, and a
//! new password ends old tokens.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::{constant_time, hmac};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::json;

use crate::config::Config;
use crate::hub::Hub;

const PAGE: &str = include_str!("../../static/dashboard.html");
/// Where the page's token goes in the HTML.
const TOKEN_SLOT: &str = "{{ARMORICORE_TOKEN}}";

/// The credentials that open the dashboard: the password, then the API key.
fn credentials(config: &Config) -> Vec<&str> {
    [config.dashboard.password.as_str(), config.api.key.as_str()]
        .into_iter()
        .filter(|c| !c.is_empty())
        .collect()
}

/// The key dashboard tokens are signed with (none when the dashboard is off).
pub fn token_key(config: &Config) -> Option<Vec<u8>> {
    let credential = credentials(config).into_iter().next()?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, credential.as_bytes());
    Some(
        hmac::sign(&key, b"armoricore dashboard token key v1")
            .as_ref()
            .to_vec(),
    )
}

fn refuse(reason: &str) -> Response {
    let mut response = (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({"error": "unauthorized", "reason": reason})),
    )
        .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"Armoricore dashboard\", charset=\"UTF-8\""),
    );
    response
}

/// The secret a request presents: a Basic password or an `apikey`.
fn presented(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    if let Some(key) = value.strip_prefix("apikey ") {
        return Some(key.trim().to_string());
    }
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_user, password) = text.split_once(':')?;
    Some(password.to_string())
}

/// Let the request through, or say why not (answered 401).
fn authorize(hub: &Hub, headers: &HeaderMap) -> Result<(), &'static str> {
    let accepted = credentials(&hub.config);
    if accepted.is_empty() {
        return Err(
            "the dashboard is off: set dashboard.password (ARMORICORE_DASHBOARD__PASSWORD) or api.key",
        );
    }
    let given = presented(headers).ok_or("a password is required")?;
    let matches = accepted
        .iter()
        .any(|c| constant_time::verify_slices_are_equal(given.as_bytes(), c.as_bytes()).is_ok());
    if !matches {
        tracing::warn!("dashboard: wrong password");
        return Err("wrong password");
    }
    Ok(())
}

/// A fresh admin token for an authorized request, as `answer` wraps it.
fn with_token(hub: &Hub, headers: &HeaderMap, answer: impl FnOnce(String) -> Response) -> Response {
    if let Err(reason) = authorize(hub, headers) {
        return refuse(reason);
    }
    let ttl = Duration::from_secs(hub.config.dashboard.token_ttl_s);
    let mut response = match hub.verifier.mint_dashboard(ttl) {
        Ok(token) => answer(token),
        Err(e) => {
            tracing::error!(error = %e, "dashboard token not minted");
            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
    };
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /dashboard`.
pub async fn page(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    with_token(&hub, &headers, |token| {
        (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            PAGE.replace(TOKEN_SLOT, &token),
        )
            .into_response()
    })
}

/// `GET /dashboard/token`.
pub async fn fresh_token(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    let ttl = hub.config.dashboard.token_ttl_s;
    with_token(&hub, &headers, |token| {
        axum::Json(json!({"token": token, "expires_in": ttl})).into_response()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user_password: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let encoded = base64::engine::general_purpose::STANDARD.encode(user_password);
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {encoded}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn presented_secrets() {
        assert_eq!(presented(&basic("ops:s3cret")).as_deref(), Some("s3cret"));
        // The password may contain colons; only the first one splits.
        assert_eq!(presented(&basic("ops:a:b")).as_deref(), Some("a:b"));
        assert_eq!(presented(&basic("no-colon")), None);
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "apikey k1".parse().unwrap());
        assert_eq!(presented(&h).as_deref(), Some("k1"));
        h.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(presented(&h), None);
        assert_eq!(presented(&HeaderMap::new()), None);
    }

    #[test]
    fn token_key_follows_the_credential() {
        let mut config = Config::defaults();
        assert_eq!(token_key(&config), None);
        config.api.key = "api".into();
        let from_key = token_key(&config).unwrap();
        config.dashboard.password = "pw".into();
        let from_password = token_key(&config).unwrap();
        assert_ne!(from_key, from_password);
        assert_eq!(token_key(&config), Some(from_password));
    }
}
