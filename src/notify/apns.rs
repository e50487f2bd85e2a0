//! APNs over HTTP/2 with token authentication: `POST {host}/3/device/{token}` with
//! an ES256 provider JWT (`iss` team id, `kid` key id, signed with the `.p8` key),
//! made once and reused for 50 minutes (Apple refuses tokens older than an hour and
//! throttles ones renewed more often than every 20 minutes).
//!
//! Not the `a2` crate: it always brings `ring`, a second `rustls` (0.22) and
//! `webpki-roots`, OpenSSL by default, and only the two fixed Apple hosts (no stand-in
//! for tests, no relay).

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::Failure;
use super::request::Push;

/// How long a provider token is used before a new one is made.
const TOKEN_LIFETIME: Duration = Duration::from_secs(50 * 60);

pub const PRODUCTION: &str = "https://api.push.apple.com";
pub const SANDBOX: &str = "https://api.sandbox.push.apple.com";

#[derive(Debug, thiserror::Error)]
pub enum ApnsError {
    #[error("APNs key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("APNs: {0} is required")]
    Missing(&'static str),
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: u64,
}

/// An APNs sender for one app (`topic`, its bundle id).
pub struct Apns {
    client: reqwest::Client,
    base_url: String,
    topic: String,
    key_id: String,
    team_id: String,
    key: EncodingKey,
    token: parking_lot::Mutex<Option<(String, Instant)>>,
}

/// Where to reach APNs and as whom.
pub struct ApnsSettings<'a> {
    pub key_file: &'a str,
    pub key_id: &'a str,
    pub team_id: &'a str,
    pub topic: &'a str,
    pub base_url: &'a str,
}

impl Apns {
    pub fn new(s: &ApnsSettings<'_>, client: reqwest::Client) -> Result<Apns, ApnsError> {
        for (value, name) in [
            (s.key_id, "notifications.apns.key_id"),
            (s.team_id, "notifications.apns.team_id"),
            (s.topic, "notifications.apns.topic"),
        ] {
            if value.is_empty() {
                return Err(ApnsError::Missing(name));
            }
        }
        let err = |reason: String| ApnsError::Key {
            path: s.key_file.to_string(),
            reason,
        };
        let pem = std::fs::read(s.key_file).map_err(|e| err(e.to_string()))?;
        let key = EncodingKey::from_ec_pem(&pem)
            .map_err(|e| err(format!("not a PKCS#8 P-256 key (.p8): {e}")))?;
        Ok(Apns {
            client,
            base_url: s.base_url.trim_end_matches('/').to_string(),
            topic: s.topic.to_string(),
            key_id: s.key_id.to_string(),
            team_id: s.team_id.to_string(),
            key,
            token: parking_lot::Mutex::new(None),
        })
    }

    /// The provider token in use, or a new one once it is 50 minutes old.
    fn provider_token(&self, renew: bool) -> Result<String, Failure> {
        let mut cached = self.token.lock();
        if !renew
            && let Some((token, made)) = cached.as_ref()
            && made.elapsed() < TOKEN_LIFETIME
        {
            return Ok(token.clone());
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let iat = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            iss: &self.team_id,
            iat,
        };
        let token =
            jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| Failure::Auth {
                reason: format!("apns: cannot sign the provider token: {e}"),
            })?;
        *cached = Some((token.clone(), Instant::now()));
        Ok(token)
    }

    /// Send `push` to the device `token`; the `apns-id` on success.
    pub async fn send(&self, push: &Push, token: &str) -> Result<String, Failure> {
        match self.send_once(push, token, false).await {
            // Our token aged out early (clock skew): one new one, once.
            Err(Failure::Auth { reason }) if reason.contains("ExpiredProviderToken") => {
                self.send_once(push, token, true).await
            }
            other => other,
        }
    }

    async fn send_once(&self, push: &Push, token: &str, renew: bool) -> Result<String, Failure> {
        let jwt = self.provider_token(renew)?;
        let mut request = self
            .client
            .post(format!("{}/3/device/{token}", self.base_url))
            .header("authorization", format!("bearer {jwt}"))
            .header("apns-topic", &self.topic)
            .header("apns-push-type", "alert")
            .header("apns-priority", if push.high_priority { "10" } else { "5" })
            .json(&payload(push));
        if let Some(ttl) = push.ttl_s {
            let at = std::time::SystemTime::now() + Duration::from_secs(ttl);
            let at = at
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            request = request.header("apns-expiration", at.to_string());
        }
        if let Some(key) = &push.collapse_key {
            request = request.header("apns-collapse-id", key);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Failure::from_http("apns", &e))?;
        let status = response.status().as_u16();
        let retry_after = super::retry_after(response.headers());
        let apns_id = response
            .headers()
            .get("apns-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if status == 200 {
            return Ok(apns_id);
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let reason = body
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or_default();
        Err(classify(status, reason, retry_after))
    }
}

/// The APNs JSON payload: `aps.alert`, and the custom data beside `aps`.
pub fn payload(push: &Push) -> Value {
    let mut payload = Map::new();
    for (k, v) in &push.data {
        if k != "aps" {
            payload.insert(k.clone(), Value::String(v.clone()));
        }
    }
    payload.insert(
        "aps".into(),
        json!({"alert": {"title": push.title, "body": push.body}, "sound": "default"}),
    );
    Value::Object(payload)
}

/// Classify an APNs error answer from its `reason`, else its status.
pub fn classify(status: u16, reason: &str, retry_after: Option<Duration>) -> Failure {
    let text = format!("apns {status} {reason}");
    match (status, reason) {
        (400, "BadDeviceToken") | (400, "DeviceTokenNotForTopic") | (410, _) => {
            Failure::InvalidToken { reason: text }
        }
        (403, "ExpiredProviderToken")
        | (403, "InvalidProviderToken")
        | (403, "MissingProviderToken")
        | (403, "UnrelatedKeyIdInToken")
        | (403, "BadCertificate")
        | (403, "BadCertificateEnvironment")
        | (400, "TopicDisallowed")
        | (400, "BadTopic") => Failure::Auth { reason: text },
        (429, _) | (500.., _) => Failure::Transient {
            reason: text,
            retry_after,
        },
        _ => Failure::Permanent { reason: text },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_classified() {
        for (status, reason) in [
            (400, "BadDeviceToken"),
            (400, "DeviceTokenNotForTopic"),
            (410, "Unregistered"),
        ] {
            assert!(
                matches!(classify(status, reason, None), Failure::InvalidToken { .. }),
                "{reason}"
            );
        }
        for (status, reason) in [(403, "ExpiredProviderToken"), (403, "InvalidProviderToken")] {
            assert!(
                matches!(classify(status, reason, None), Failure::Auth { .. }),
                "{reason}"
            );
        }
        for (status, reason) in [
            (429, "TooManyRequests"),
            (500, "InternalServerError"),
            (503, "ServiceUnavailable"),
        ] {
            assert!(
                matches!(classify(status, reason, None), Failure::Transient { .. }),
                "{reason}"
            );
        }
        assert!(matches!(
            classify(413, "PayloadTooLarge", None),
            Failure::Permanent { .. }
        ));
    }

    #[test]
    fn the_payload_has_aps_and_the_data_beside_it() {
        let push = Push {
            title: "t".into(),
            body: "b".into(),
            data: vec![("room".into(), "3".into()), ("aps".into(), "no".into())],
            high_priority: false,
            ttl_s: None,
            collapse_key: None,
        };
        assert_eq!(
            payload(&push),
            json!({"aps": {"alert": {"title": "t", "body": "b"}, "sound": "default"}, "room": "3"})
        );
    }
}
