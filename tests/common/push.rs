//! Stand-ins for the notification providers: FCM HTTP v1 with its OAuth token
//! endpoint and APNs, both HTTP/2 as the real ones, checking what the real
//! services require (paths, headers, JWT algorithm and claims, JSON shape) and
//! answering as scripted; and a real SMTP server (aiosmtpd).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RsaKeyPair};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use serde_json::{Value, json};

pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A scripted answer: status, JSON body, Retry-After.
pub type Answer = (u16, Value, Option<&'static str>);

/// A scripted status that is never answered: the request hangs, as one to a
/// provider that a dying node never hears back from.
pub const HOLD: u16 = 0;

/// What a stand-in saw, and how it answers (by device token).
#[derive(Default)]
pub struct Seen {
    pub requests: Vec<Value>,
    pub tokens_issued: usize,
    /// Answers left per device token: (status, body, retry-after), taken in order;
    /// none left: 200.
    pub script: HashMap<String, Vec<Answer>>,
}

/// The answer to one request.
enum Next {
    Ok,
    Hold,
    Answer(Response),
}

impl Seen {
    /// Record `request` to `token` and take its next scripted answer.
    fn record(&mut self, token: &str, request: Value) -> Next {
        self.requests.push(request);
        let Some(answers) = self.script.get_mut(token).filter(|a| !a.is_empty()) else {
            return Next::Ok;
        };
        let (status, body, retry_after) = answers.remove(0);
        if status == HOLD {
            return Next::Hold;
        }
        let mut response = (StatusCode::from_u16(status).unwrap(), Json(body)).into_response();
        if let Some(ra) = retry_after {
            response
                .headers_mut()
                .insert("retry-after", ra.parse().unwrap());
        }
        Next::Answer(response)
    }
}

#[derive(Clone)]
pub struct Stand {
    pub seen: Arc<Mutex<Seen>>,
    /// The key that signs what the stand-in checks (FCM: the account's RSA public
    /// key, PKCS#1 DER; APNs: the EC public point).
    public: Arc<Vec<u8>>,
    aud: String,
}

pub async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

fn refuse(reason: String) -> Response {
    (StatusCode::IM_A_TEAPOT, reason).into_response()
}

/// `POST /token`: the OAuth JWT-bearer grant Google's token endpoint takes.
async fn fcm_token(
    State(s): State<Stand>,
    version: Version,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if version != Version::HTTP_2 {
        return refuse(format!("HTTP/2 expected, got {version:?}"));
    }
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return refuse(format!("grant_type: {form:?}"));
    }
    let assertion = form.get("assertion").cloned().unwrap_or_default();
    let header = jsonwebtoken::decode_header(&assertion).unwrap();
    if header.alg != Algorithm::RS256 || header.kid.as_deref() != Some("key-1") {
        return refuse(format!("header {header:?}"));
    }
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&[&s.aud]);
    let claims = match jsonwebtoken::decode::<Value>(
        &assertion,
        &DecodingKey::from_rsa_der(&s.public),
        &v,
    ) {
        Ok(t) => t.claims,
        Err(e) => return refuse(format!("assertion: {e}")),
    };
    let ok = claims["iss"] == "push@test-project.iam.gserviceaccount.com"
        && claims["scope"] == "https://www.googleapis.com/auth/firebase.messaging"
        && claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap() <= 3600;
    if !ok {
        return refuse(format!("claims {claims}"));
    }
    let mut seen = s.seen.lock();
    seen.tokens_issued += 1;
    Json(
        json!({"access_token": format!("ya29.test-{}", seen.tokens_issued),
        "expires_in": 3599, "token_type": "Bearer"}),
    )
    .into_response()
}

pub fn fcm_error(status: u16, code: &str, message: &str) -> Value {
    json!({"error": {"code": status, "message": message, "status": "X", "details": [
        {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}]}})
}

/// `POST /v1/projects/{project}/messages:send`.
async fn fcm_send(
    State(s): State<Stand>,
    Path(project): Path<String>,
    version: Version,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if version != Version::HTTP_2 || project != "test-project" {
        return refuse(format!("{version:?} {project}"));
    }
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !auth.starts_with("Bearer ya29.test-") {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": {"code": 401,
            "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}})))
        .into_response();
    }
    let message = &body["message"];
    let token = message["token"].as_str().unwrap_or_default().to_string();
    if token.is_empty() || !message["notification"]["title"].is_string() {
        return refuse(format!("message shape: {body}"));
    }
    let (next, n) = {
        let mut seen = s.seen.lock();
        (seen.record(&token, body.clone()), seen.requests.len())
    };
    match next {
        Next::Ok => {
            Json(json!({"name": format!("projects/test-project/messages/{n}")})).into_response()
        }
        Next::Hold => std::future::pending().await,
        Next::Answer(error) => error,
    }
}

/// An FCM stand-in, and a service-account file pointing at it.
pub async fn fcm_stand_in(dir: &std::path::Path) -> (Stand, String, std::path::PathBuf) {
    let key = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let der = key.as_der().unwrap();
    let stand = Stand {
        seen: Arc::default(),
        public: Arc::new(key.public_key().as_ref().to_vec()),
        aud: String::new(),
    };
    // The audience is the token URI, known once the server is bound.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let stand = Stand {
        aud: format!("{base}/token"),
        ..stand
    };
    let router = Router::new()
        .route("/token", post(fcm_token))
        .route("/v1/projects/{project}/messages:send", post(fcm_send))
        .with_state(stand.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let account = json!({
        "type": "service_account", "project_id": "test-project", "private_key_id": "key-1",
        "private_key": pem("PRIVATE KEY", der.as_ref()),
        "client_email": "push@test-project.iam.gserviceaccount.com",
        "token_uri": format!("{base}/token"),
    });
    let path = dir.join("service-account.json");
    std::fs::write(&path, account.to_string()).unwrap();
    (stand, base, path)
}

/// `POST /3/device/{token}`: what APNs requires of a token-authenticated push.
async fn apns_send(
    State(s): State<Stand>,
    Path(token): Path<String>,
    version: Version,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if version != Version::HTTP_2 {
        return refuse(format!("HTTP/2 expected, got {version:?}"));
    }
    let h = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let jwt = h("authorization")
        .strip_prefix("bearer ")
        .unwrap_or_default();
    let header = match jsonwebtoken::decode_header(jwt) {
        Ok(h) => h,
        Err(_) => {
            return (
                StatusCode::FORBIDDEN,
                Json(json!({"reason": "MissingProviderToken"})),
            )
                .into_response();
        }
    };
    let mut v = Validation::new(Algorithm::ES256);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_aud = false;
    let claims = jsonwebtoken::decode::<Value>(jwt, &DecodingKey::from_ec_der(&s.public), &v);
    let valid = header.alg == Algorithm::ES256
        && header.kid.as_deref() == Some("KEYID12345")
        && claims.is_ok_and(|c| c.claims["iss"] == "TEAMID1234" && c.claims["iat"].is_u64());
    if !valid {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({"reason": "InvalidProviderToken"})),
        )
            .into_response();
    }
    if h("apns-topic") != "com.example.app"
        || h("apns-push-type") != "alert"
        || !["5", "10"].contains(&h("apns-priority"))
        || !body["aps"]["alert"]["title"].is_string()
    {
        return refuse(format!("headers {headers:?} body {body}"));
    }
    let request = json!({"token": token, "body": body, "jwt": jwt,
        "collapse": h("apns-collapse-id"), "expiration": h("apns-expiration")});
    let (next, n) = {
        let mut seen = s.seen.lock();
        (seen.record(&token, request), seen.requests.len())
    };
    match next {
        Next::Ok => {
            let mut ok = StatusCode::OK.into_response();
            ok.headers_mut().insert(
                "apns-id",
                format!("00000000-0000-0000-0000-{n:012}").parse().unwrap(),
            );
            ok
        }
        Next::Hold => std::future::pending().await,
        Next::Answer(error) => error,
    }
}

pub async fn apns_stand_in(dir: &std::path::Path) -> (Stand, String, std::path::PathBuf) {
    let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let p8 = key.to_pkcs8v1().unwrap();
    let stand = Stand {
        seen: Arc::default(),
        public: Arc::new(key.public_key().as_ref().to_vec()),
        aud: String::new(),
    };
    let router = Router::new()
        .route("/3/device/{token}", post(apns_send))
        .with_state(stand.clone());
    let addr = serve(router).await;
    let path = dir.join("AuthKey_KEYID12345.p8");
    std::fs::write(&path, pem("PRIVATE KEY", p8.as_ref())).unwrap();
    (stand, format!("http://{addr}"), path)
}

/// The CA that signed the SMTP server's TLS certificate (for 127.0.0.1).
pub const TLS_CA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls-ca.pem");

/// A real SMTP server (aiosmtpd) on `port`, saving each message in `out`.
pub struct SmtpServer {
    child: std::process::Child,
}

impl SmtpServer {
    /// Plain SMTP, AUTH allowed without TLS (a local relay).
    pub fn start(port: u16, out: &std::path::Path) -> SmtpServer {
        SmtpServer::start_tls(port, out, "none")
    }

    /// `tls`: `none`, `starttls` (required before MAIL and AUTH) or `tls` (implicit).
    pub fn start_tls(port: u16, out: &std::path::Path, tls: &str) -> SmtpServer {
        use std::io::BufRead;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/smtp_server.py");
        let mut child = std::process::Command::new("python3")
            .args([script, &port.to_string(), &out.display().to_string(), tls])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 with aiosmtpd (pip install aiosmtpd)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "aiosmtpd did not start");
        SmtpServer { child }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn mails(out: &std::path::Path) -> Vec<String> {
    let mut files: Vec<_> = std::fs::read_dir(out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}
