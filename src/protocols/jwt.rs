//! JWT authentication: verify connect tokens, mint development tokens.
//!
//! HS256 with a shared secret by default; RS256 or ES256 with a PEM public key.
//! The algorithm is fixed by configuration, never taken from the token, so
//! `alg: none` and algorithm-confusion tokens are refused.
//!
//! Claims we read:
//! ```text
//! sub | user_id   user id (string or number; user_id is the original Armoricore claim)
//! exp, nbf        checked with a small leeway
//! channels        optional list of topic patterns the token may join, `*` wildcard
//! name, meta      optional, copied into presence metas
//! armoricore_admin  optional, `true`: an operator, may join `admin:` topics (the
//!                  dashboard); any other value is ignored (a generic `admin` claim
//!                  is an application's, and gives nothing here)
//! ```
//!
//! Besides the configured key, a verifier may hold the dashboard key: HS256 tokens
//! with `kid: "armoricore-dashboard"`, minted by the node for its operations page
//! (always `admin`, always expiring; see `http::dashboard`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why a token was refused. [`AuthError::status`] gives the HTTP status to answer with.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("invalid signature")]
    BadSignature,
    #[error("token algorithm not accepted (expected {0:?})")]
    WrongAlgorithm(Algorithm),
    #[error("token has no subject (sub or user_id claim)")]
    NoSubject,
    #[error("invalid claims: {0}")]
    BadClaims(String),
}

impl AuthError {
    /// 401 when the client should get a new token; 403 when the token can never work here.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::WrongAlgorithm(_) | AuthError::NoSubject => 403,
            _ => 401,
        }
    }
}

/// Errors building a verifier or signer from configuration.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("unsupported algorithm {0:?}: expected HS256, RS256 or ES256")]
    Algorithm(String),
    #[error("cannot read public key {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid {alg:?} public key in {path}: {source}")]
    Pem {
        alg: Algorithm,
        path: String,
        source: jsonwebtoken::errors::Error,
    },
    #[error(
        "{0:?} tokens are signed by your identity provider; armoricore only mints HS256 tokens"
    )]
    CannotSign(Algorithm),
    #[error("signing failed: {0}")]
    Sign(jsonwebtoken::errors::Error),
}

/// The authenticated user of a connection, from a verified token.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Claims {
    pub user_id: String,
    /// Topic patterns the token may join; `None` means every public topic.
    pub channels: Option<Vec<String>>,
    pub name: Option<String>,
    pub meta: Option<Value>,
    /// An operator: may join `admin:` topics.
    pub admin: bool,
}

/// The `kid` of the tokens the node mints for its dashboard.
pub const DASHBOARD_KID: &str = "armoricore-dashboard";

/// A user id claim: phoenix backends often put integers there.
#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
enum Id {
    Str(String),
    Num(i64),
}

impl Id {
    fn into_string(self) -> String {
        match self {
            Id::Str(s) => s,
            Id::Num(n) => n.to_string(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
struct RawClaims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user_id: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    channels: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    meta: Option<Value>,
    /// Only JSON `true` counts; any other value is no admin, not a bad token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    armoricore_admin: Option<Value>,
}

impl RawClaims {
    fn into_claims(self) -> Result<Claims, AuthError> {
        let user_id = self
            .sub
            .or(self.user_id)
            .map(Id::into_string)
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::NoSubject)?;
        Ok(Claims {
            user_id,
            channels: self.channels,
            name: self.name,
            meta: self.meta,
            admin: self.armoricore_admin == Some(Value::Bool(true)),
        })
    }
}

/// The node's own HS256 key for dashboard tokens.
#[derive(Clone)]
struct DashboardKey {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
}

/// The key material and rules tokens are checked against.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    algorithm: Algorithm,
    /// HS256 secret, kept so `armoricore token` and tests can mint with it.
    secret: Option<Vec<u8>>,
    dashboard: Option<DashboardKey>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Parse a configured algorithm name.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, KeyError> {
    match name {
        "HS256" => Ok(Algorithm::HS256),
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        other => Err(KeyError::Algorithm(other.to_string())),
    }
}

impl Verifier {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8], leeway: Duration, require_exp: bool) -> Verifier {
        Verifier {
            key: DecodingKey::from_secret(secret),
            validation: validation(Algorithm::HS256, leeway, require_exp),
            algorithm: Algorithm::HS256,
            secret: Some(secret.to_vec()),
            dashboard: None,
        }
    }

    /// RS256 or ES256 with a PEM public key read from `path`.
    pub fn from_public_key_file(
        alg: Algorithm,
        path: &str,
        leeway: Duration,
        require_exp: bool,
    ) -> Result<Verifier, KeyError> {
        let pem = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.to_string(),
            source,
        })?;
        let key = match alg {
            Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
            Algorithm::ES256 => DecodingKey::from_ec_pem(&pem),
            other => return Err(KeyError::Algorithm(format!("{other:?}"))),
        }
        .map_err(|source| KeyError::Pem {
            alg,
            path: path.to_string(),
            source,
        })?;
        Ok(Verifier {
            key,
            validation: validation(alg, leeway, require_exp),
            algorithm: alg,
            secret: None,
            dashboard: None,
        })
    }

    /// Also accept the dashboard's tokens, signed with `secret` (see [`DASHBOARD_KID`]).
    pub fn with_dashboard_key(mut self, secret: &[u8]) -> Verifier {
        let mut validation = validation(Algorithm::HS256, Duration::ZERO, true);
        validation.leeway = self.validation.leeway;
        self.dashboard = Some(DashboardKey {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
            validation,
        });
        self
    }

    /// Verify a token and extract the user it names.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if header.kid.as_deref() == Some(DASHBOARD_KID) {
            let key = self.dashboard.as_ref().ok_or(AuthError::BadSignature)?;
            if header.alg != Algorithm::HS256 {
                return Err(AuthError::WrongAlgorithm(Algorithm::HS256));
            }
            return decode(token, &key.decoding, &key.validation)?.into_claims();
        }
        if header.alg != self.algorithm {
            return Err(AuthError::WrongAlgorithm(self.algorithm));
        }
        decode(token, &self.key, &self.validation)?.into_claims()
    }

    /// Mint a dashboard token for `operator` (its `sub`, what the node's logs name
    /// for its actions): an admin, for `admin:` topics only, valid for `ttl`.
    pub fn mint_dashboard(&self, operator: &str, ttl: Duration) -> Result<String, KeyError> {
        let key = self
            .dashboard
            .as_ref()
            .ok_or(KeyError::CannotSign(Algorithm::HS256))?;
        let now = unix_now();
        let raw = RawClaims {
            sub: Some(Id::Str(operator.into())),
            user_id: None,
            exp: Some(now + ttl.as_secs().max(1)),
            iat: Some(now),
            channels: Some(vec!["admin:*".into()]),
            name: Some("dashboard".into()),
            meta: None,
            armoricore_admin: Some(Value::Bool(true)),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(DASHBOARD_KID.into());
        jsonwebtoken::encode(&header, &raw, &key.encoding).map_err(KeyError::Sign)
    }

    /// Mint an HS256 token with the configured secret (development tokens, tests).
    pub fn mint(&self, claims: &Claims, ttl: Option<Duration>) -> Result<String, KeyError> {
        let secret = self
            .secret
            .as_ref()
            .ok_or(KeyError::CannotSign(self.algorithm))?;
        let now = unix_now();
        let raw = RawClaims {
            sub: Some(Id::Str(claims.user_id.clone())),
            user_id: None,
            exp: ttl.map(|ttl| now + ttl.as_secs()),
            iat: Some(now),
            channels: claims.channels.clone(),
            name: claims.name.clone(),
            meta: claims.meta.clone(),
            armoricore_admin: claims.admin.then_some(Value::Bool(true)),
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &raw,
            &EncodingKey::from_secret(secret),
        )
        .map_err(KeyError::Sign)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Check a token's signature and times with `key`.
fn decode(token: &str, key: &DecodingKey, validation: &Validation) -> Result<RawClaims, AuthError> {
    let algorithm = validation.algorithms[0];
    jsonwebtoken::decode::<RawClaims>(token, key, validation)
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidAlgorithm => AuthError::WrongAlgorithm(algorithm),
            ErrorKind::MissingRequiredClaim(c) => {
                AuthError::BadClaims(format!("missing required claim `{c}`"))
            }
            ErrorKind::Json(e) => AuthError::BadClaims(e.to_string()),
            _ => AuthError::Malformed,
        })
}

fn validation(alg: Algorithm, leeway: Duration, require_exp: bool) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = leeway.as_secs();
    v.validate_nbf = true;
    v.validate_exp = true;
    v.validate_aud = false;
    let required: &[&str] = if require_exp { &["exp"] } else { &[] };
    v.set_required_spec_claims(required);
    v
}

/// Does `topic` match a `channels` pattern? `*` matches any run of characters.
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = topic.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(user: &str) -> Claims {
        Claims {
            user_id: user.into(),
            channels: None,
            name: None,
            meta: None,
            admin: false,
        }
    }

    #[test]
    fn mint_then_verify() {
        let v = Verifier::hs256(
            b"secret-secret-secret-secret-32by",
            Duration::from_secs(5),
            true,
        );
        let t = v
            .mint(&claims("alice"), Some(Duration::from_secs(60)))
            .unwrap();
        assert_eq!(v.verify(&t).unwrap().user_id, "alice");
        let other = Verifier::hs256(b"another-secret-another-secret-32", Duration::ZERO, true);
        assert_eq!(other.verify(&t), Err(AuthError::BadSignature));
    }

    #[test]
    fn exp_is_required_when_configured() {
        let v = Verifier::hs256(b"k", Duration::ZERO, true);
        let t = v.mint(&claims("a"), None).unwrap();
        assert!(matches!(v.verify(&t), Err(AuthError::BadClaims(_))));
        let lax = Verifier::hs256(b"k", Duration::ZERO, false);
        assert!(lax.verify(&t).is_ok());
    }

    #[test]
    fn alg_none_is_refused() {
        // {"alg":"none","typ":"JWT"} . {"sub":"a","exp":9999999999} . (empty)
        let t = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        let v = Verifier::hs256(b"k", Duration::ZERO, true);
        assert!(v.verify(t).is_err());
    }

    #[test]
    fn patterns() {
        assert!(topic_matches("chat:room:*", "chat:room:1"));
        assert!(topic_matches("chat:*:1", "chat:room:1"));
        assert!(topic_matches("*", "anything"));
        assert!(topic_matches("chat:room:1", "chat:room:1"));
        assert!(!topic_matches("chat:room:1", "chat:room:10"));
        assert!(!topic_matches("chat:room:*", "comments:stream:1"));
        assert!(!topic_matches("a*b*c", "abx"));
        assert!(topic_matches("a*b*c", "aXbYc"));
    }

    #[test]
    fn dashboard_tokens() {
        let app = Verifier::hs256(b"app-secret", Duration::ZERO, true);
        let v = app.clone().with_dashboard_key(b"dashboard-key");
        let t = v.mint_dashboard("ops", Duration::from_secs(60)).unwrap();
        let header = jsonwebtoken::decode_header(&t).unwrap();
        assert_eq!(header.kid.as_deref(), Some(DASHBOARD_KID));
        let c = v.verify(&t).unwrap();
        assert_eq!(c.user_id, "ops");
        assert!(c.admin);
        assert_eq!(c.channels, Some(vec!["admin:*".to_string()]));
        // Not without the dashboard key, nor with another one.
        assert_eq!(app.verify(&t), Err(AuthError::BadSignature));
        let other = app.clone().with_dashboard_key(b"another-key");
        assert_eq!(other.verify(&t), Err(AuthError::BadSignature));
        // The kid does not make an app-signed token a dashboard token.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(DASHBOARD_KID.into());
        let raw = RawClaims {
            sub: Some(Id::Str("mallory".into())),
            user_id: None,
            exp: Some(unix_now() + 60),
            iat: None,
            channels: None,
            name: None,
            meta: None,
            armoricore_admin: Some(Value::Bool(true)),
        };
        let forged =
            jsonwebtoken::encode(&header, &raw, &EncodingKey::from_secret(b"app-secret")).unwrap();
        assert_eq!(v.verify(&forged), Err(AuthError::BadSignature));
        // An app token is admin only when it says so.
        let plain = v
            .mint(&claims("alice"), Some(Duration::from_secs(60)))
            .unwrap();
        assert!(!v.verify(&plain).unwrap().admin);
        let ops = Claims {
            admin: true,
            ..claims("ops")
        };
        let admin = v.mint(&ops, Some(Duration::from_secs(60))).unwrap();
        assert!(v.verify(&admin).unwrap().admin);
        // Only `armoricore_admin: true` makes an operator; a generic `admin` claim
        // or another value is ignored, and the token still works.
        let sign = |claims: Value| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(b"app-secret"),
            )
            .unwrap()
        };
        let exp = unix_now() + 60;
        for (claims, admin) in [
            (
                serde_json::json!({"sub": "a", "exp": exp, "admin": true}),
                false,
            ),
            (
                serde_json::json!({"sub": "a", "exp": exp, "armoricore_admin": "true"}),
                false,
            ),
            (
                serde_json::json!({"sub": "a", "exp": exp, "armoricore_admin": 1}),
                false,
            ),
            (
                serde_json::json!({"sub": "a", "exp": exp, "armoricore_admin": true}),
                true,
            ),
        ] {
            assert_eq!(
                v.verify(&sign(claims.clone())).unwrap().admin,
                admin,
                "{claims}"
            );
        }
        // Expired dashboard tokens are refused like any other.
        let raw = RawClaims {
            sub: Some(Id::Str("dashboard".into())),
            exp: Some(unix_now() - 10),
            armoricore_admin: Some(Value::Bool(true)),
            ..raw
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(DASHBOARD_KID.into());
        let old = jsonwebtoken::encode(&header, &raw, &EncodingKey::from_secret(b"dashboard-key"))
            .unwrap();
        assert_eq!(v.verify(&old), Err(AuthError::Expired));
    }
}
