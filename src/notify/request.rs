//! A `notification.requested` payload, read into who gets what.
//!
//! Both shapes are accepted:
//!
//! ```text
//! original  {user_id, notification_type: "push"|"email", title, body,
//!            data: {device_token, platform, email, ...}}
//! ours      {..., notification_id, tokens: [{platform: "android"|"ios"|"web", token}],
//!            email: {to, subject, text, html?}, priority: "normal"|"high", ttl_s, collapse_key}
//! ```
//!
//! `data` (minus the original's addressing keys) travels with a push as FCM/APNs
//! custom data; FCM takes string values only, so other values are sent as JSON text.

use serde_json::{Map, Value};

/// Where a device token is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    Android,
    Ios,
    Web,
}

impl Platform {
    pub fn parse(s: &str) -> Option<Platform> {
        match s.to_ascii_lowercase().as_str() {
            "android" => Some(Platform::Android),
            "ios" | "apns" => Some(Platform::Ios),
            "web" | "webpush" => Some(Platform::Web),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Android => "android",
            Platform::Ios => "ios",
            Platform::Web => "web",
        }
    }
}

/// One device to push to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub platform: Platform,
    pub token: String,
}

/// An email to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Email {
    pub to: Vec<String>,
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
}

/// What a push carries, whatever the device.
#[derive(Debug, Clone, PartialEq)]
pub struct Push {
    pub title: String,
    pub body: String,
    /// Custom data, every value a string (FCM's rule).
    pub data: Vec<(String, String)>,
    pub high_priority: bool,
    pub ttl_s: Option<u64>,
    pub collapse_key: Option<String>,
}

/// A notification, read from its request.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub notification_id: String,
    pub user_id: String,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Push { push: Push, devices: Vec<Device> },
    Email(Email),
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Push { .. } => "push",
            Kind::Email(_) => "email",
        }
    }
}

/// Why a request cannot become a notification (never retried).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid notification: {0}")]
pub struct Invalid(pub String);

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Keys of the original's `data` that address the notification rather than ride with it.
const ADDRESSING: &[&str] = &["device_token", "platform", "email"];

impl Notification {
    /// Read a `notification.requested` payload; `event_id` names the notification
    /// when the payload has no `notification_id`.
    pub fn from_payload(
        payload: &Map<String, Value>,
        event_id: &str,
    ) -> Result<Notification, Invalid> {
        let field = |k: &str| payload.get(k).and_then(text);
        let user_id = field("user_id").ok_or_else(|| Invalid("user_id is required".into()))?;
        let notification_id = field("notification_id").unwrap_or_else(|| event_id.to_string());
        let title = payload
            .get("title")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let body = payload
            .get("body")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let data = payload.get("data").and_then(Value::as_object);
        let kind = match payload.get("notification_type").and_then(Value::as_str) {
            Some("push") => {
                let devices = devices(payload, data)?;
                let push = Push {
                    title: title.to_string(),
                    body: body.to_string(),
                    data: data
                        .into_iter()
                        .flatten()
                        .filter(|(k, _)| !ADDRESSING.contains(&k.as_str()))
                        .map(|(k, v)| {
                            let v = match v {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            };
                            (k.clone(), v)
                        })
                        .collect(),
                    high_priority: payload.get("priority").and_then(Value::as_str) == Some("high"),
                    ttl_s: payload.get("ttl_s").and_then(Value::as_u64),
                    collapse_key: field("collapse_key"),
                };
                Kind::Push { push, devices }
            }
            Some("email") => Kind::Email(email(payload, data, title, body)?),
            _ => {
                return Err(Invalid(
                    "notification_type must be \"push\" or \"email\"".into(),
                ));
            }
        };
        Ok(Notification {
            notification_id,
            user_id,
            kind,
        })
    }
}

/// Our `tokens`, or the original's `data.device_token` + `data.platform`.
fn devices(
    payload: &Map<String, Value>,
    data: Option<&Map<String, Value>>,
) -> Result<Vec<Device>, Invalid> {
    let mut devices = Vec::new();
    if let Some(tokens) = payload.get("tokens") {
        let tokens = tokens
            .as_array()
            .ok_or_else(|| Invalid("tokens must be a list of {platform, token}".into()))?;
        for t in tokens {
            let token = t
                .get("token")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty());
            let platform = t
                .get("platform")
                .and_then(Value::as_str)
                .and_then(Platform::parse);
            match (token, platform) {
                (Some(token), Some(platform)) => devices.push(Device {
                    platform,
                    token: token.to_string(),
                }),
                _ => {
                    return Err(Invalid(format!(
                        "each token must be {{platform: android|ios|web, token}}: got {t}"
                    )));
                }
            }
        }
    }
    if let Some(token) = data
        .and_then(|d| d.get("device_token"))
        .and_then(Value::as_str)
        && !token.is_empty()
    {
        let platform = match data.and_then(|d| d.get("platform")).and_then(Value::as_str) {
            None => Platform::Android,
            Some(p) => Platform::parse(p).ok_or_else(|| {
                Invalid(format!("data.platform {p:?}: expected android, ios or web"))
            })?,
        };
        if !devices.iter().any(|d| d.token == token) {
            devices.push(Device {
                platform,
                token: token.to_string(),
            });
        }
    }
    if devices.is_empty() {
        return Err(Invalid(
            "a push needs tokens [{platform, token}] or data.device_token".into(),
        ));
    }
    Ok(devices)
}

/// Our `email {to, subject, text, html?}`, or the original's `data.email` with the
/// title as subject and the body as text.
fn email(
    payload: &Map<String, Value>,
    data: Option<&Map<String, Value>>,
    title: &str,
    body: &str,
) -> Result<Email, Invalid> {
    if let Some(e) = payload.get("email").and_then(Value::as_object) {
        let to = match e.get("to") {
            Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
            Some(Value::Array(a)) => a.iter().filter_map(text).collect(),
            _ => Vec::new(),
        };
        if to.is_empty() {
            return Err(Invalid(
                "email.to must be an address or a list of them".into(),
            ));
        }
        let get = |k: &str| e.get(k).and_then(Value::as_str).map(str::to_string);
        return Ok(Email {
            to,
            subject: get("subject").unwrap_or_else(|| title.to_string()),
            text: get("text").unwrap_or_else(|| body.to_string()),
            html: get("html"),
        });
    }
    let to = data
        .and_then(|d| d.get("email"))
        .and_then(Value::as_str)
        .or_else(|| payload.get("email").and_then(Value::as_str))
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Invalid("an email needs email {to, subject, text} or data.email".into()))?;
    Ok(Email {
        to: vec![to.to_string()],
        subject: title.to_string(),
        text: body.to_string(),
        html: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(v: Value) -> Result<Notification, Invalid> {
        Notification::from_payload(v.as_object().unwrap(), "ev1")
    }

    #[test]
    fn the_original_shape_still_works() {
        let n = read(
            json!({"user_id": 7, "notification_type": "push", "title": "Hi",
            "body": "New message", "data": {"device_token": "tok", "platform": "ios", "room": 3}}),
        )
        .unwrap();
        assert_eq!(
            (n.user_id.as_str(), n.notification_id.as_str()),
            ("7", "ev1")
        );
        let Kind::Push { push, devices } = n.kind else {
            panic!("a push")
        };
        assert_eq!(
            devices,
            vec![Device {
                platform: Platform::Ios,
                token: "tok".into()
            }]
        );
        assert_eq!(push.data, vec![("room".to_string(), "3".to_string())]);
        let n = read(
            json!({"user_id": "u", "notification_type": "email", "title": "Welcome",
            "body": "Hello", "data": {"email": "a@example.com"}}),
        )
        .unwrap();
        assert_eq!(
            n.kind,
            Kind::Email(Email {
                to: vec!["a@example.com".into()],
                subject: "Welcome".into(),
                text: "Hello".into(),
                html: None
            })
        );
    }

    #[test]
    fn our_shape_and_its_refusals() {
        let n = read(json!({"user_id": "u", "notification_id": "n1", "notification_type": "push",
            "title": "t", "body": "b", "priority": "high", "ttl_s": 60, "collapse_key": "c",
            "tokens": [{"platform": "android", "token": "a1"}, {"platform": "web", "token": "w1"}]}))
        .unwrap();
        assert_eq!(n.notification_id, "n1");
        let Kind::Push { push, devices } = n.kind else {
            panic!("a push")
        };
        assert_eq!(devices.len(), 2);
        assert!(push.high_priority);
        assert_eq!(
            (push.ttl_s, push.collapse_key.as_deref()),
            (Some(60), Some("c"))
        );
        for bad in [
            json!({"user_id": "u", "notification_type": "push", "title": "t", "body": "b"}),
            json!({"user_id": "u", "notification_type": "push", "tokens": [{"token": "x"}]}),
            json!({"user_id": "u", "notification_type": "sms"}),
            json!({"notification_type": "email", "email": {"to": "a@b"}}),
            json!({"user_id": "u", "notification_type": "email", "email": {"subject": "s"}}),
        ] {
            assert!(read(bad.clone()).is_err(), "{bad}");
        }
    }
}
