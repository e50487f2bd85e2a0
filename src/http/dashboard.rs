//! The operations page (docs/dashboard.md).
//!
//! ```text
//! GET /dashboard          the page (static/dashboard.html), with an admin token in it
//! GET /dashboard/token    {token, expires_in}: a fresh admin token for the page's socket
//! GET /assets/dashboard.js the page's script (no secrets; public like phoenix.mjs)
//! ```
//!
//! Both routes need `dashboard.password` or the API key as an HTTP Basic password
//! (the user name names the operator in the logs), or `Authorization: apikey
//! <api.key>`; with neither configured the dashboard is off. A refusal is 401
//! with a Basic challenge, so a browser asks for the password. The page may not
//! be framed and loads nothing from elsewhere (CSP).
//!
//! The page's token is an HS256 JWT with `kid: "armoricore-dashboard"` and
//! `armoricore_admin: true`, signed with a key stretched (PBKDF2) from that
//! credential: every node of a cluster (same configuration) accepts it, whatever
//! `auth.algorithm` is, and after a password change new connections need new tokens.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::{constant_time, digest, pbkdf2};
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
/// The page loads nothing from elsewhere and may not be framed (clickjacking).
const CSP: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   frame-ancestors 'none'; base-uri 'none'; form-action 'none'";
/// PBKDF2 rounds for the token key: a captured page token must not make guessing
/// the password cheap (computed once at start).
const KEY_ROUNDS: u32 = 100_000;

/// The key dashboard tokens are signed with (none when the dashboard is off),
/// stretched from the dashboard credential: the password, else the API key.
pub fn token_key(config: &Config) -> Option<Vec<u8>> {
    let credential = [config.dashboard.password.as_str(), config.api.key.as_str()]
        .into_iter()
        .find(|c| !c.is_empty())?;
    let mut key = vec![0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(KEY_ROUNDS).expect("non-zero"),
        b"armoricore dashboard token key v1",
        credential.as_bytes(),
        &mut key,
    );
    Some(key)
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

/// What a request presents.
#[derive(Debug, PartialEq)]
enum Presented {
    /// HTTP Basic: the user name names the operator; the password is checked.
    Basic { user: String, password: String },
    /// `Authorization: apikey <key>`.
    ApiKey(String),
}

fn presented(headers: &HeaderMap) -> Option<Presented> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    if let Some(key) = value.strip_prefix("apikey ") {
        return Some(Presented::ApiKey(key.trim().to_string()));
    }
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some(Presented::Basic {
        user: user.to_string(),
        password: password.to_string(),
    })
}

/// `given` equals one of `accepted`, in time independent of where they differ
/// or of their lengths (digests are compared, every one of them).
fn matches_any(given: &str, accepted: &[&str]) -> bool {
    let given = digest::digest(&digest::SHA256, given.as_bytes());
    accepted
        .iter()
        .filter(|c| !c.is_empty())
        .fold(false, |found, c| {
            let c = digest::digest(&digest::SHA256, c.as_bytes());
            constant_time::verify_slices_are_equal(given.as_ref(), c.as_ref()).is_ok() | found
        })
}

/// The operator a request is from, or why it is refused (answered 401).
fn authorize(config: &Config, headers: &HeaderMap) -> Result<String, &'static str> {
    let (password, key) = (config.dashboard.password.as_str(), config.api.key.as_str());
    if password.is_empty() && key.is_empty() {
        return Err(
            "the dashboard is off: set dashboard.password (ARMORICORE_DASHBOARD__PASSWORD) or api.key",
        );
    }
    let operator = match presented(headers).ok_or("a password is required")? {
        Presented::Basic { user, password: p } if matches_any(&p, &[password, key]) => {
            let user: String = user.chars().filter(|c| !c.is_control()).take(64).collect();
            if user.is_empty() {
                "dashboard".to_string()
            } else {
                user
            }
        }
        Presented::ApiKey(k) if matches_any(&k, &[key]) => "api-key".to_string(),
        _ => {
            tracing::warn!("dashboard: wrong password");
            return Err("wrong password");
        }
    };
    Ok(operator)
}

/// A fresh admin token for an authorized request, as `answer` wraps it.
fn with_token(hub: &Hub, headers: &HeaderMap, answer: impl FnOnce(String) -> Response) -> Response {
    let operator = match authorize(&hub.config, headers) {
        Ok(operator) => operator,
        Err(reason) => return refuse(reason),
    };
    let ttl = Duration::from_secs(hub.config.dashboard.token_ttl_s);
    let mut response = match hub.verifier.mint_dashboard(&operator, ttl) {
        Ok(token) => answer(token),
        Err(e) => {
            tracing::error!(error = %e, "dashboard token not minted");
            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
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

    fn apikey(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("apikey {key}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn presented_secrets() {
        let b = |u: &str, p: &str| {
            Some(Presented::Basic {
                user: u.into(),
                password: p.into(),
            })
        };
        assert_eq!(presented(&basic("ops:s3cret")), b("ops", "s3cret"));
        // The password may contain colons; only the first one splits.
        assert_eq!(presented(&basic("ops:a:b")), b("ops", "a:b"));
        assert_eq!(presented(&basic("no-colon")), None);
        assert_eq!(
            presented(&apikey("k1")),
            Some(Presented::ApiKey("k1".into()))
        );
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(presented(&h), None);
        assert_eq!(presented(&HeaderMap::new()), None);
    }

    #[test]
    fn who_gets_in() {
        let mut config = Config::defaults();
        assert!(
            authorize(&config, &basic("ops:"))
                .unwrap_err()
                .contains("off")
        );
        config.dashboard.password = "pw".into();
        config.api.key = "key".into();
        assert_eq!(authorize(&config, &basic("ops:pw")).unwrap(), "ops");
        assert_eq!(authorize(&config, &basic(":key")).unwrap(), "dashboard");
        assert_eq!(authorize(&config, &apikey("key")).unwrap(), "api-key");
        // The password is no API key.
        assert!(authorize(&config, &apikey("pw")).is_err());
        assert!(authorize(&config, &basic("ops:pw2")).is_err());
        assert!(authorize(&config, &basic("ops:p")).is_err());
        assert!(authorize(&config, &HeaderMap::new()).is_err());
        // An empty credential never matches an empty password.
        config.dashboard.password = String::new();
        assert!(authorize(&config, &basic("ops:")).is_err());
        assert!(matches_any("a", &["b", "a"]));
        assert!(!matches_any("", &["", "x"]));
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
        assert_eq!(from_password.len(), 32);
        assert_eq!(token_key(&config), Some(from_password));
    }
}
