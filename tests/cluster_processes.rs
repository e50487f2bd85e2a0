//! Real `armoricore` processes in a cluster over a real `redis-server`: messages
//! cross processes, and `kill -9` of one node purges its presences from the
//! others within `cluster.node_timeout_ms` (the time taken is printed).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::binary::{Server, armoricore};
use common::redis::RedisServer;
use common::{API_KEY, eventually, http};
use serde_json::{Value, json};

const SECRET: &str = "cluster-test-secret-0123456789";
const NODE_TIMEOUT_MS: u64 = 2000;

async fn node(redis: &RedisServer, dir: &Path, name: &str) -> Server {
    let mut cmd = armoricore(dir);
    cmd.env("JWT_SECRET", SECRET)
        .env("REDIS_URL", redis.url())
        .env("ARMORICORE_API__KEY", API_KEY)
        .env("ARMORICORE_CLUSTER__NODE_NAME", name)
        .env("ARMORICORE_CLUSTER__HEARTBEAT_MS", "200")
        .env(
            "ARMORICORE_CLUSTER__NODE_TIMEOUT_MS",
            NODE_TIMEOUT_MS.to_string(),
        );
    Server::start(cmd).await
}

fn token(user: &str) -> String {
    common::binary::token(SECRET, user)
}

async fn presence_keys(server: &Server, topic: &str) -> Vec<String> {
    let auth = format!("apikey {API_KEY}");
    let (_, body) = http(
        server.addr,
        "GET",
        &format!("/api/presence/{topic}"),
        &[("Authorization", &auth)],
        "",
    )
    .await;
    let list: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let mut keys: Vec<String> = list
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    keys.sort();
    keys
}

#[tokio::test]
async fn kill_9_of_a_node_purges_its_presences_everywhere() {
    let redis = RedisServer::start().await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = node(&redis, dirs[0].path(), "a").await;
    let mut b = node(&redis, dirs[1].path(), "b").await;

    let mut alice = a.connect(&token("alice")).await;
    let jr = alice.join_ok("chat:room:k").await;
    let mut bob = b.connect(&token("bob")).await;
    bob.join_ok("chat:room:k").await;
    let both = vec!["alice".to_string(), "bob".to_string()];
    for server in [&a, &b] {
        eventually("both nodes list alice and bob", || async {
            presence_keys(server, "chat:room:k").await == both
        })
        .await;
    }
    // A message crosses processes.
    let r = alice
        .push(
            Some(&jr),
            "chat:room:k",
            "new_message",
            json!({"content": "hi bob"}),
        )
        .await;
    alice.assert_reply(&r).await;
    let got = bob.assert_push("chat:room:k", "new_message").await;
    assert_eq!(got[4]["content"], "hi bob");

    b.child.start_kill().unwrap(); // SIGKILL: no goodbye of any kind
    let killed = Instant::now();
    alice
        .find("bob's leave, pushed by node a", |f| {
            f[3] == "presence_diff" && f[4]["leaves"].get("bob").is_some()
        })
        .await;
    let purge = killed.elapsed();
    eprintln!("presence purge after kill -9: {purge:?} (node_timeout_ms {NODE_TIMEOUT_MS})");
    assert!(
        purge <= Duration::from_millis(NODE_TIMEOUT_MS + 1500),
        "purged after {purge:?}"
    );
    assert_eq!(
        presence_keys(&a, "chat:room:k").await,
        vec!["alice".to_string()]
    );
    let _ = b.child.wait().await;
}
