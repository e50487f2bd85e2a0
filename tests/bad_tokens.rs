//! Bad tokens of every class are refused at upgrade with an HTTP status and a JSON
//! reason, wherever the token was put, for HS256, RS256 and ES256 nodes.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::{PhxClient, SECRET, TestNode, WAIT, healthy, still_serving};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An hour from now: a valid `exp`.
fn later() -> u64 {
    now() + 3600
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

/// Sign `claims` with `alg` and `key`.
fn sign(alg: Algorithm, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

/// HS256 with the test nodes' secret.
fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
}

fn rs256(claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(&fixture_bytes("rs256-private.pem")).unwrap();
    sign(Algorithm::RS256, claims, &key)
}

fn es256(claims: &Value) -> String {
    let key = EncodingKey::from_ec_pem(&fixture_bytes("es256-private.pem")).unwrap();
    sign(Algorithm::ES256, claims, &key)
}

/// The upgrade must be refused: (HTTP status, JSON body).
async fn refused(request: impl IntoClientRequest + Unpin) -> (u16, Value) {
    let outcome = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("handshake answered in time");
    match outcome {
        Ok((_, response)) => panic!(
            "upgrade accepted ({}), expected a refusal",
            response.status()
        ),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response.body().clone().unwrap_or_default();
            let json = serde_json::from_slice(&body).unwrap_or_else(|e| {
                panic!(
                    "refusal {status} body is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(&body)
                )
            });
            (status, json)
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
    }
}

/// Upgrade with `token` in the query (vsn 2.0.0), expecting a refusal.
async fn refused_token(node: &TestNode, token: &str) -> (u16, Value) {
    refused(node.ws_url(&format!("vsn=2.0.0&token={token}"))).await
}

/// Connect with `token` in the query (vsn 2.0.0); the upgrade must succeed.
async fn connect_token(node: &TestNode, token: &str) -> PhxClient {
    PhxClient::connect(&node.ws_url(&format!("vsn=2.0.0&token={token}")))
        .await
        .unwrap_or_else(|e| panic!("connect refused: {e}"))
}

// ---------------------------------------------------------------- tokens

#[tokio::test]
async fn missing_token_is_401_with_a_json_reason() {
    let node = TestNode::start().await;
    let mut ok = healthy(&node).await;
    for query in ["vsn=2.0.0", "vsn=2.0.0&token="] {
        let (status, body) = refused(node.ws_url(query)).await;
        assert_eq!(status, 401, "{query}");
        assert_eq!(
            body,
            json!({"error": "unauthorized", "reason": "missing token"}),
            "{query}"
        );
    }
    assert_eq!(
        node.metric(r#"armoricore_connects_total{result="unauthorized",transport="websocket"}"#)
            .await,
        2.0
    );
    still_serving(&node, &mut ok).await;
    node.shutdown().await;
}

#[tokio::test]
async fn garbage_token_is_401() {
    let node = TestNode::start().await;
    let mut ok = healthy(&node).await;
    for token in ["garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.%%%.x"] {
        let (status, body) = refused_token(&node, token).await;
        assert_eq!(status, 401, "{token}: {body}");
        assert_eq!(body["error"], "unauthorized", "{token}");
        let reason = body["reason"].as_str().unwrap_or_default();
        assert!(!reason.is_empty() && reason != "missing token", "{body}");
    }
    still_serving(&node, &mut ok).await;
    node.shutdown().await;
}

#[tokio::test]
async fn expired_token_is_401_beyond_the_leeway() {
    let node = TestNode::start_with(|c| c.auth.leeway_s = 5).await;
    let mut ok = healthy(&node).await;
    let (status, body) =
        refused_token(&node, &hs256(&json!({"sub": "alice", "exp": now() - 60}))).await;
    assert_eq!(status, 401);
    assert_eq!(
        body,
        json!({"error": "unauthorized", "reason": "token expired"})
    );
    // Within the leeway it still works.
    let mut within = connect_token(&node, &hs256(&json!({"sub": "alice", "exp": now() - 1}))).await;
    within.join_ok("user:alice").await;
    drop(within);
    still_serving(&node, &mut ok).await;
    node.shutdown().await;
}

#[tokio::test]
async fn token_not_yet_valid_is_401() {
    let node = TestNode::start_with(|c| c.auth.leeway_s = 5).await;
    let mut ok = healthy(&node).await;
    let claims = json!({"sub": "alice", "exp": later(), "nbf": now() + 120});
    let (status, body) = refused_token(&node, &hs256(&claims)).await;
    assert_eq!(status, 401);
    assert_eq!(
        body,
        json!({"error": "unauthorized", "reason": "token not yet valid"})
    );
    let claims = json!({"sub": "alice", "exp": later(), "nbf": now() + 1});
    let mut within = connect_token(&node, &hs256(&claims)).await;
    within.join_ok("user:alice").await;
    drop(within);
    still_serving(&node, &mut ok).await;
    node.shutdown().await;
}

#[tokio::test]
async fn token_signed_with_another_secret_is_401() {
    let node = TestNode::start().await;
    let mut ok = healthy(&node).await;
    let other = EncodingKey::from_secret(b"some-other-secret-some-other-secret");
    let token = sign(
        Algorithm::HS256,
        &json!({"sub": "alice", "exp": later()}),
        &other,
    );
    let (status, body) = refused_token(&node, &token).await;
    assert_eq!(status, 401);
    assert_eq!(
        body,
        json!({"error": "unauthorized", "reason": "invalid signature"})
    );
    still_serving(&node, &mut ok).await;
    node.shutdown().await;
}

#[tokio::test]
async fn alg_none_token_is_refused() {
    let node = TestNode::start().await;
    let mut ok = healthy(&node).await;
    let payload = B64.encode(json!({"sub": "alice", "exp": later()}).to_string());
    for alg in ["none", "None", "NONE"] {
        let header = B64.encode(json!({"alg": alg, "typ": "JWT"}).to_string());
        // Unsigned, and "signed" with an empty or a bogus signature.
        for sig in ["", "AAAA"] {
            let token = format!("{header}.{payload}.{sig}");
            let (status, body) = refused_token(&node, &token).await;
            assert!(status == 401 || status == 403, "alg {alg}: {status} {body}");
            assert!(
                body["error"] == "unauthorized" || body["error"] == "forbidden",
                "{body}"
            );
        }
    }
    still_serving(&node, &mut ok).await;
    node.shutdown().await;
}

#[tokio::test]
async fn asymmetric_token_to_an_hs256_node_is_403() {
    let node = TestNode::start().await;
    let mut ok = healthy(&node).await;
    let claims = json!({"sub": "alice", "exp": later()});
    for token in [rs256(&claims), es256(&claims)] {
        let (status, body) = refused_token(&node, &token).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"], "forbidden");
        assert!(
            body["reason"].as_str().unwrap().contains("algorithm"),
            "{body}"
        );
    }
    still_serving(&node, &mut ok).await;
    node.shutdown().await;
}

#[tokio::test]
async fn token_without_a_subject_is_403() {
    let node = TestNode::start().await;
    let mut ok = healthy(&node).await;
    for claims in [
        json!({"exp": later()}),
        json!({"exp": later(), "name": "Alice"}),
        json!({"exp": later(), "sub": ""}),
    ] {
        let (status, body) = refused_token(&node, &hs256(&claims)).await;
        assert_eq!(status, 403, "{claims}: {body}");
        assert_eq!(body["error"], "forbidden");
        assert!(!body["reason"].as_str().unwrap().is_empty());
    }
    still_serving(&node, &mut ok).await;
    node.shutdown().await;
}

#[tokio::test]
async fn unknown_vsn_is_400() {
    let node = TestNode::start().await;
    let mut ok = healthy(&node).await;
    let token = node.token("alice");
    for vsn in ["3.0.0", "2", "garbage"] {
        let (status, body) = refused(node.ws_url(&format!("vsn={vsn}&token={token}"))).await;
        assert_eq!(status, 400, "vsn {vsn}: {body}");
        assert_eq!(body["error"], "bad_request");
        assert!(body["reason"].as_str().unwrap().contains("vsn"), "{body}");
    }
    still_serving(&node, &mut ok).await;
    node.shutdown().await;
}

// ---------------------------------------------------------------- where the token is

#[tokio::test]
async fn token_in_the_subprotocol_header_selects_phoenix() {
    let node = TestNode::start().await;
    let mut request = node.ws_url("vsn=2.0.0").into_client_request().unwrap();
    let protocols = format!(
        "phoenix, base64url.bearer.phx.{}",
        B64.encode(node.token("alice"))
    );
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&protocols).unwrap(),
    );
    let (mut c, response) = PhxClient::connect_request(request).await.unwrap();
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("phoenix")
    );
    // The connection is alice's: her private topic is hers to join.
    c.join_ok("user:alice").await;
    let (_, reply) = c.join("user:bob", json!({})).await;
    assert_eq!(reply["response"]["reason"], "unauthorized");

    // A bad token there is refused like a bad query token.
    let mut request = node.ws_url("vsn=2.0.0").into_client_request().unwrap();
    let protocols = format!("phoenix, base64url.bearer.phx.{}", B64.encode("garbage"));
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&protocols).unwrap(),
    );
    let (status, body) = refused(request).await;
    assert_eq!(status, 401);
    assert_ne!(body["reason"], "missing token", "{body}");
    c.heartbeat().await;
    node.shutdown().await;
}

#[tokio::test]
async fn token_in_the_authorization_header() {
    let node = TestNode::start().await;
    let mut request = node.ws_url("vsn=2.0.0").into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", node.token("bob"))).unwrap(),
    );
    let (mut c, _) = PhxClient::connect_request(request).await.unwrap();
    c.join_ok("user:bob").await;

    let mut request = node.ws_url("vsn=2.0.0").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", HeaderValue::from_static("Bearer garbage"));
    let (status, body) = refused(request).await;
    assert_eq!(status, 401);
    assert_ne!(body["reason"], "missing token", "{body}");
    c.heartbeat().await;
    node.shutdown().await;
}

// ---------------------------------------------------------------- RS256 / ES256 nodes

async fn asymmetric_node(alg: &str, public_key: &str) -> TestNode {
    let alg = alg.to_string();
    let path = fixture(public_key);
    TestNode::start_with(move |c| {
        c.auth.algorithm = alg;
        c.auth.public_key_file = path;
    })
    .await
}

/// Replace a token's payload, keeping its header and signature.
fn tampered(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let payload = B64.encode(claims.to_string());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

/// The node accepts `good` (user alice) and refuses every token in `wrong_alg` with 403.
async fn check_asymmetric_node(node: &TestNode, good: &str, wrong_alg: &[String]) {
    let mut alice = connect_token(node, good).await;
    alice.join_ok("chat:room:1").await;
    alice.join_ok("user:alice").await;
    let (_, reply) = alice.join("user:bob", json!({})).await;
    assert_eq!(reply["response"]["reason"], "unauthorized");

    for token in wrong_alg {
        let (status, body) = refused_token(node, token).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"], "forbidden");
    }
    let forged = tampered(good, &json!({"sub": "bob", "exp": later()}));
    let (status, body) = refused_token(node, &forged).await;
    assert_eq!(status, 401);
    assert_eq!(body["reason"], "invalid signature");
    alice.heartbeat().await;
}

#[tokio::test]
async fn rs256_node_accepts_rs256_tokens_only() {
    let node = asymmetric_node("RS256", "rs256-public.pem").await;
    let claims = json!({"sub": "alice", "exp": later()});
    // Algorithm confusion: HS256 "signed" with the RSA public key as the secret.
    let confused = sign(
        Algorithm::HS256,
        &claims,
        &EncodingKey::from_secret(&fixture_bytes("rs256-public.pem")),
    );
    let wrong = [hs256(&claims), confused, es256(&claims)];
    check_asymmetric_node(&node, &rs256(&claims), &wrong).await;
    node.shutdown().await;
}

#[tokio::test]
async fn es256_node_accepts_es256_tokens_only() {
    let node = asymmetric_node("ES256", "es256-public.pem").await;
    let claims = json!({"sub": "alice", "exp": later()});
    let confused = sign(
        Algorithm::HS256,
        &claims,
        &EncodingKey::from_secret(&fixture_bytes("es256-public.pem")),
    );
    let wrong = [hs256(&claims), confused, rs256(&claims)];
    check_asymmetric_node(&node, &es256(&claims), &wrong).await;
    node.shutdown().await;
}
