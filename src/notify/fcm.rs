//! FCM HTTP v1: `POST {base}/v1/projects/{project}/messages:send`, authorized by an
//! OAuth2 access token from the service account (an RS256 JWT grant to its
//! `token_uri`), cached until a minute before it expires.
//!
//! (FCM's legacy API, which the original Armoricore used, was shut down in 2024.)

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::Failure;
use super::request::{Device, Platform, Push};

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// Why FCM cannot be set up from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum FcmError {
    #[error("service account {path}: {reason}")]
    Account { path: String, reason: String },
}

/// The fields of a Google service-account JSON file that FCM needs.
#[derive(Deserialize)]
struct ServiceAccount {
    project_id: String,
    client_email: String,
    private_key_id: String,
    private_key: String,
    token_uri: String,
}

#[derive(Serialize)]
struct Grant<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct Token {
    access_token: String,
    expires_in: u64,
}

/// An FCM sender for one Firebase project.
pub struct Fcm {
    client: reqwest::Client,
    send_url: String,
    account: ServiceAccount,
    key: EncodingKey,
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl Fcm {
    /// From the service-account JSON at `path` (read now: a bad file stops start-up).
    pub fn from_file(path: &str, base_url: &str, client: reqwest::Client) -> Result<Fcm, FcmError> {
        let err = |reason: String| FcmError::Account {
            path: path.to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let account: ServiceAccount = serde_json::from_str(&text)
            .map_err(|e| err(format!("not a service-account JSON: {e}")))?;
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .map_err(|e| err(format!("private_key: {e}")))?;
        let send_url = format!(
            "{}/v1/projects/{}/messages:send",
            base_url.trim_end_matches('/'),
            account.project_id
        );
        Ok(Fcm {
            client,
            send_url,
            account,
            key,
            token: tokio::sync::Mutex::new(None),
        })
    }

    pub fn project_id(&self) -> &str {
        &self.account.project_id
    }

    /// The cached access token, or a new one from the token endpoint.
    async fn access_token(&self) -> Result<String, Failure> {
        let mut cached = self.token.lock().await;
        if let Some((token, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let iat = unix_now();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.account.private_key_id.clone());
        let claims = Grant {
            iss: &self.account.client_email,
            scope: SCOPE,
            aud: &self.account.token_uri,
            iat,
            exp: iat + 3600,
        };
        let assertion =
            jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| Failure::Auth {
                reason: format!("fcm: cannot sign the OAuth grant: {e}"),
            })?;
        let response = self
            .client
            .post(&self.account.token_uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| Failure::from_http("fcm oauth", &e))?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = super::retry_after(response.headers());
            let body = response.text().await.unwrap_or_default();
            let reason = format!("fcm oauth: {status}: {}", body.trim());
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                Failure::Transient {
                    reason,
                    retry_after,
                }
            } else {
                Failure::Auth { reason }
            });
        }
        let token: Token = response
            .json()
            .await
            .map_err(|e| Failure::transient(format!("fcm oauth: unreadable answer: {e}")))?;
        let lifetime = Duration::from_secs(token.expires_in.saturating_sub(60).max(1));
        *cached = Some((token.access_token.clone(), Instant::now() + lifetime));
        Ok(token.access_token)
    }

    /// Send `push` to one device; FCM's message name on success.
    pub async fn send(&self, push: &Push, device: &Device) -> Result<String, Failure> {
        let token = self.access_token().await?;
        let response = self
            .client
            .post(&self.send_url)
            .bearer_auth(&token)
            .json(&message(push, device))
            .send()
            .await
            .map_err(|e| Failure::from_http("fcm", &e))?;
        let status = response.status();
        let retry_after = super::retry_after(response.headers());
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string());
        }
        let failure = classify(status.as_u16(), &body, retry_after);
        if status.as_u16() == 401 && matches!(failure, Failure::Transient { .. }) {
            // Our access token was refused: fetch another on the retry.
            *self.token.lock().await = None;
        }
        Err(failure)
    }
}

/// The v1 `message` for one device.
pub fn message(push: &Push, device: &Device) -> Value {
    let mut message = Map::new();
    message.insert("token".into(), json!(device.token));
    message.insert(
        "notification".into(),
        json!({"title": push.title, "body": push.body}),
    );
    if !push.data.is_empty() {
        let data: Map<String, Value> = push
            .data
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        message.insert("data".into(), Value::Object(data));
    }
    let mut android = Map::new();
    android.insert(
        "priority".into(),
        json!(if push.high_priority { "HIGH" } else { "NORMAL" }),
    );
    if let Some(ttl) = push.ttl_s {
        android.insert("ttl".into(), json!(format!("{ttl}s")));
    }
    if let Some(key) = &push.collapse_key {
        android.insert("collapse_key".into(), json!(key));
    }
    let mut apns_headers = Map::new();
    apns_headers.insert(
        "apns-priority".into(),
        json!(if push.high_priority { "10" } else { "5" }),
    );
    if let Some(ttl) = push.ttl_s {
        apns_headers.insert(
            "apns-expiration".into(),
            json!((unix_now() + ttl).to_string()),
        );
    }
    if let Some(key) = &push.collapse_key {
        apns_headers.insert("apns-collapse-id".into(), json!(key));
    }
    let mut webpush_headers = Map::new();
    webpush_headers.insert(
        "Urgency".into(),
        json!(if push.high_priority { "high" } else { "normal" }),
    );
    if let Some(ttl) = push.ttl_s {
        webpush_headers.insert("TTL".into(), json!(ttl.to_string()));
    }
    match device.platform {
        Platform::Android => {
            message.insert("android".into(), Value::Object(android));
        }
        Platform::Ios => {
            message.insert("apns".into(), json!({"headers": apns_headers}));
        }
        Platform::Web => {
            message.insert("webpush".into(), json!({"headers": webpush_headers}));
        }
    }
    json!({ "message": message })
}

/// Classify an FCM error answer from its `details[].errorCode`, else its status.
pub fn classify(status: u16, body: &Value, retry_after: Option<Duration>) -> Failure {
    let error = body.get("error");
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let code = error
        .and_then(|e| e.get("details"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find_map(|d| d.get("errorCode").and_then(Value::as_str));
    let reason = match code {
        Some(code) => format!("fcm {status} {code}: {message}"),
        None => format!("fcm {status}: {message}"),
    };
    match code {
        Some("UNREGISTERED") | Some("SENDER_ID_MISMATCH") => Failure::InvalidToken { reason },
        // About the token ("not a valid FCM registration token"), or the message.
        Some("INVALID_ARGUMENT") if message.to_ascii_lowercase().contains("token") => {
            Failure::InvalidToken { reason }
        }
        Some("INVALID_ARGUMENT") => Failure::Permanent { reason },
        Some("THIRD_PARTY_AUTH_ERROR") | Some("APNS_AUTH_ERROR") => Failure::Auth { reason },
        Some("QUOTA_EXCEEDED") | Some("UNAVAILABLE") | Some("INTERNAL") => Failure::Transient {
            reason,
            retry_after,
        },
        _ if status == 429 || status >= 500 || status == 401 => Failure::Transient {
            reason,
            retry_after,
        },
        _ if status == 403 => Failure::Auth { reason },
        _ => Failure::Permanent { reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(status: u16, code: &str, message: &str) -> Failure {
        let body = json!({"error": {"code": status, "message": message, "status": "X",
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}]}});
        classify(status, &body, Some(Duration::from_secs(3)))
    }

    #[test]
    fn error_codes_are_classified() {
        assert!(matches!(
            err(404, "UNREGISTERED", "Requested entity was not found."),
            Failure::InvalidToken { .. }
        ));
        assert!(matches!(
            err(
                400,
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token"
            ),
            Failure::InvalidToken { .. }
        ));
        assert!(matches!(
            err(400, "INVALID_ARGUMENT", "Invalid value at 'message.data'"),
            Failure::Permanent { .. }
        ));
        assert!(matches!(
            err(403, "SENDER_ID_MISMATCH", "SenderId mismatch"),
            Failure::InvalidToken { .. }
        ));
        assert!(matches!(
            err(401, "THIRD_PARTY_AUTH_ERROR", "Auth error from APNS"),
            Failure::Auth { .. }
        ));
        for (status, code) in [
            (429, "QUOTA_EXCEEDED"),
            (503, "UNAVAILABLE"),
            (500, "INTERNAL"),
        ] {
            assert_eq!(
                err(status, code, "m"),
                Failure::Transient {
                    reason: format!("fcm {status} {code}: m"),
                    retry_after: Some(Duration::from_secs(3))
                }
            );
        }
        // An expired access token: no FcmError, status UNAUTHENTICATED.
        let body = json!({"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}});
        assert!(matches!(
            classify(401, &body, None),
            Failure::Transient { .. }
        ));
        assert!(matches!(
            classify(502, &Value::Null, None),
            Failure::Transient { .. }
        ));
    }

    #[test]
    fn messages_carry_what_each_platform_reads() {
        let push = Push {
            title: "t".into(),
            body: "b".into(),
            data: vec![("room".into(), "3".into())],
            high_priority: true,
            ttl_s: Some(60),
            collapse_key: Some("c".into()),
        };
        let android = message(
            &push,
            &Device {
                platform: Platform::Android,
                token: "a".into(),
            },
        );
        assert_eq!(
            android["message"]["android"],
            json!({"priority": "HIGH", "ttl": "60s", "collapse_key": "c"})
        );
        assert_eq!(android["message"]["data"], json!({"room": "3"}));
        assert_eq!(android["message"]["token"], "a");
        let ios = message(
            &push,
            &Device {
                platform: Platform::Ios,
                token: "i".into(),
            },
        );
        assert_eq!(ios["message"]["apns"]["headers"]["apns-priority"], "10");
        assert_eq!(ios["message"]["apns"]["headers"]["apns-collapse-id"], "c");
        let web = message(
            &push,
            &Device {
                platform: Platform::Web,
                token: "w".into(),
            },
        );
        assert_eq!(
            web["message"]["webpush"]["headers"],
            json!({"Urgency": "high", "TTL": "60"})
        );
    }
}
