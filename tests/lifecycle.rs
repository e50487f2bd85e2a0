//! The real binary, as an operator runs it: `serve` logging JSON, `token` minting
//! what `serve` accepts, a graceful SIGTERM, the generated secret, configuration
//! errors that name their key, and the operations endpoints.

mod common;

use std::process::{Output, Stdio};
use std::time::Duration;

use common::binary::{Server, armoricore};
use common::{Closed, WAIT, eventually};
use serde_json::Value;
use tokio::process::Command;

const SECRET: &str = "lifecycle-test-secret-0123456789";
/// How long a stopping node may take to exit after SIGTERM.
const EXIT_WITHIN: Duration = Duration::from_secs(5);

/// Run the binary to completion (bounded by `WAIT`).
async fn run(mut cmd: Command) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("armoricore exits in time")
        .unwrap()
}

/// `armoricore token --sub <sub>`: the printed token.
async fn mint(mut cmd: Command, sub: &str) -> String {
    cmd.args(["token", "--sub", sub]);
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token:?}");
    token
}

/// The upgrade is refused: (status, JSON body).
async fn refused(url: &str) -> (u16, Value) {
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake answered in time")
    {
        Ok(_) => panic!("upgrade accepted, expected a refusal"),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
            (response.status().as_u16(), json)
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
    }
}

/// The value of a `/metrics` series line, if present.
fn series(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(' '))
            .map(|v| v.trim().parse().unwrap())
    })
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let cmd = || {
        let mut c = armoricore(dir.path());
        c.env("JWT_SECRET", SECRET);
        c
    };
    let server = Server::start(cmd()).await;
    let token = mint(cmd(), "alice").await;
    let mut alice = server.connect(&token).await;
    alice.join_ok("chat:room:1").await;
    alice.join_ok("user:alice").await;
    alice.heartbeat().await;

    server.terminate();
    let started = tokio::time::Instant::now();
    match alice.closed().await {
        Closed::Frame(Some(f)) => assert_eq!(u16::from(f.code), 1001, "{f:?}"),
        other => panic!("expected a 1001 close frame, got {other:?}"),
    }
    drop(alice);
    let left = EXIT_WITHIN.saturating_sub(started.elapsed());
    let status = server.exit(left).await;
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn token_subcommand_signs_with_the_secret_serve_generated() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data"); // does not exist yet
    let server = Server::start(armoricore(&data)).await;

    let secret_file = data.join("jwt_secret");
    let meta = std::fs::metadata(&secret_file).expect("serve created <data_dir>/jwt_secret");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "jwt_secret mode {:o}",
        meta.permissions().mode()
    );
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    assert!(secret.trim().len() >= 32, "a real secret: {secret:?}");

    let token = mint(armoricore(&data), "bob").await;
    let mut bob = server.connect(&token).await;
    bob.join_ok("user:bob").await;
    bob.join_ok("chat:room:1").await;

    // A token signed with another data dir's secret is not accepted.
    let elsewhere = tempfile::tempdir().unwrap();
    let stranger = mint(armoricore(elsewhere.path()), "bob").await;
    let (status, body) = refused(&server.ws_url(&stranger)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["reason"], "invalid signature");

    // The secret is generated once: a restarted node still accepts the token.
    drop(bob);
    server.terminate();
    assert!(server.exit(EXIT_WITHIN).await.success());
    let server = Server::start(armoricore(&data)).await;
    assert_eq!(std::fs::read_to_string(&secret_file).unwrap(), secret);
    let mut bob = server.connect(&token).await;
    bob.join_ok("user:bob").await;
    drop(bob);
    server.terminate();
    assert!(server.exit(EXIT_WITHIN).await.success());
}

/// `serve` must refuse to start; returns its stderr.
async fn refuses_to_start(mut cmd: Command) -> String {
    cmd.arg("serve");
    let out = run(cmd).await;
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "started anyway; stderr: {stderr}");
    stderr
}

#[tokio::test]
async fn bad_environment_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();

    let mut cmd = armoricore(dir.path());
    cmd.env("JWT_SECRET", SECRET).env("PORT", "http");
    let stderr = refuses_to_start(cmd).await;
    assert!(stderr.contains("server.port"), "{stderr}");

    let mut cmd = armoricore(dir.path());
    cmd.env("JWT_SECRET", SECRET)
        .env("ARMORICORE_SOCKET__NOPE", "1");
    let stderr = refuses_to_start(cmd).await;
    assert!(stderr.contains("socket.nope"), "{stderr}");

    let mut cmd = armoricore(dir.path());
    cmd.env("JWT_SECRET", SECRET)
        .env("ARMORICORE_SOCKET__MAX_CHANNELS", "lots");
    let stderr = refuses_to_start(cmd).await;
    assert!(stderr.contains("socket.max_channels"), "{stderr}");

    let mut cmd = armoricore(dir.path());
    cmd.env("JWT_SECRET", SECRET)
        .env("MESSAGE_BUS_URL", "redis://127.0.0.1:6379");
    let stderr = refuses_to_start(cmd).await;
    assert!(stderr.contains("bus.url: expected nats://"), "{stderr}");

    let mut cmd = armoricore(dir.path());
    cmd.env("JWT_SECRET", SECRET)
        .env("MESSAGE_BUS_URL", "nats://127.0.0.1:notaport");
    let stderr = refuses_to_start(cmd).await;
    assert!(stderr.contains("invalid bus URL"), "{stderr}");
}

#[tokio::test]
async fn bad_config_file_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("armoricore.toml");
    for (contents, key) in [
        ("[socket]\nmax_chanels = 3\n", "socket.max_chanels"),
        ("[sockets]\nmax_channels = 3\n", "sockets"),
        ("[socket]\nmax_channels = \"x\"\n", "socket.max_channels"),
    ] {
        std::fs::write(&file, contents).unwrap();
        let mut cmd = armoricore(dir.path());
        cmd.env("JWT_SECRET", SECRET).arg("--config").arg(&file);
        let stderr = refuses_to_start(cmd).await;
        assert!(stderr.contains(key), "{contents:?}: {stderr}");
    }
    // The same file, corrected, starts.
    std::fs::write(&file, "[socket]\nmax_channels = 3\n").unwrap();
    let mut cmd = armoricore(dir.path());
    cmd.env("JWT_SECRET", SECRET).arg("--config").arg(&file);
    let server = Server::start(cmd).await;
    assert_eq!(server.get("/health").await.0, 200);
}

#[tokio::test]
async fn health_ready_and_metrics_on_a_running_node() {
    let dir = tempfile::tempdir().unwrap();
    let cmd = || {
        let mut c = armoricore(dir.path());
        c.env("JWT_SECRET", SECRET);
        c
    };
    let server = Server::start(cmd()).await;
    let (status, _) = server.get("/health").await;
    assert_eq!(status, 200);
    let (status, body) = server.get("/ready").await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = server.get("/nowhere").await;
    assert_eq!(status, 404);

    const CONNECTIONS: &str = r#"armoricore_connections{transport="websocket"}"#;
    const JOINS_OK: &str = r#"armoricore_joins_total{result="ok"}"#;
    let token = mint(cmd(), "alice").await;
    let mut alice = server.connect(&token).await;
    alice.join_ok("chat:room:1").await;
    eventually("one websocket connection counted", || async {
        let (status, body) = server.get("/metrics").await;
        assert_eq!(status, 200);
        series(&body, CONNECTIONS) == Some(1.0)
    })
    .await;
    let (_, metrics) = server.get("/metrics").await;
    assert!(metrics.contains(&format!("{CONNECTIONS} 1\n")), "{metrics}");
    assert_eq!(series(&metrics, JOINS_OK), Some(1.0), "{metrics}");
    let (status, body) = server.get("/ready").await;
    assert_eq!(status, 200, "{body}");

    drop(alice);
    eventually("the connection is no longer counted", || async {
        let (_, body) = server.get("/metrics").await;
        series(&body, CONNECTIONS) == Some(0.0)
    })
    .await;
    server.terminate();
    assert!(server.exit(EXIT_WITHIN).await.success());
}
