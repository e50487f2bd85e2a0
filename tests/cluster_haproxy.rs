//! The cluster behind HAProxy, configured from cluster/haproxy.cfg: two real node
//! processes, clients connecting through the balancer land on different nodes
//! (round robin) and still share messages and presence. Skipped, with the reason
//! printed, only when haproxy is not installed.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::binary::{Server, armoricore};
use common::redis::RedisServer;
use common::{PhxClient, WAIT, http};
use serde_json::json;

const SECRET: &str = "haproxy-test-secret-0123456789";

fn haproxy() -> Option<&'static str> {
    ["haproxy", "/usr/sbin/haproxy"].into_iter().find(|bin| {
        std::process::Command::new(bin)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn token(user: &str) -> String {
    common::binary::token(SECRET, user)
}

async fn node(redis: &RedisServer, dir: &Path, name: &str) -> Server {
    let mut cmd = armoricore(dir);
    cmd.env("JWT_SECRET", SECRET)
        .env("REDIS_URL", redis.url())
        .env("ARMORICORE_CLUSTER__NODE_NAME", name)
        .env("ARMORICORE_CLUSTER__HEARTBEAT_MS", "200")
        .env("ARMORICORE_CLUSTER__NODE_TIMEOUT_MS", "2000");
    Server::start(cmd).await
}

#[tokio::test]
async fn clients_through_haproxy_share_messages_and_presence() {
    let Some(bin) = haproxy() else {
        eprintln!(
            "SKIPPED clients_through_haproxy_share_messages_and_presence: haproxy is not installed (apt-get install haproxy)"
        );
        return;
    };
    let redis = RedisServer::start().await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = node(&redis, dirs[0].path(), "a").await;
    let b = node(&redis, dirs[1].path(), "b").await;

    let lb_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let template =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/cluster/haproxy.cfg"))
            .unwrap();
    let servers = format!(
        "    server a {}\n    server b {}",
        format_args!("{} check", a.addr),
        format_args!("{} check", b.addr)
    );
    let cfg = template
        .replace("${LB_BIND}", &format!("127.0.0.1:{lb_port}"))
        .replace("    # SERVERS", &servers);
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg_path = cfg_dir.path().join("haproxy.cfg");
    std::fs::write(&cfg_path, cfg).unwrap();
    let mut lb = tokio::process::Command::new(bin)
        .arg("-f")
        .arg(&cfg_path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lb_addr: std::net::SocketAddr = format!("127.0.0.1:{lb_port}").parse().unwrap();
    common::eventually("HAProxy up with both nodes healthy", || async {
        tokio::net::TcpStream::connect(lb_addr).await.is_ok()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await; // rise 2 × inter 1 s

    let url = |user: &str| {
        format!(
            "ws://{lb_addr}/socket/websocket?vsn=2.0.0&token={}",
            token(user)
        )
    };
    let mut alice = PhxClient::connect(&url("alice")).await.unwrap();
    let mut bob = PhxClient::connect(&url("bob")).await.unwrap();
    let jr = alice.join_ok("chat:room:lb").await;
    bob.join_ok("chat:room:lb").await;
    // Round robin put them on different nodes.
    let count = |s: &Server| {
        let addr = s.addr;
        async move {
            let (_, m) = http(addr, "GET", "/metrics", &[], "").await;
            m.lines()
                .find_map(|l| l.strip_prefix(r#"armoricore_connections{transport="websocket"} "#))
                .map_or(0.0, |v| v.trim().parse::<f64>().unwrap())
        }
    };
    assert_eq!(
        (count(&a).await, count(&b).await),
        (1.0, 1.0),
        "one client per node"
    );

    bob.find("alice in bob's presence", |f| {
        (f[3] == "presence_state" || f[3] == "presence_diff")
            && (f[4].get("alice").is_some() || f[4]["joins"].get("alice").is_some())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = alice
        .push(
            Some(&jr),
            "chat:room:lb",
            "new_message",
            json!({"content": "via the balancer"}),
        )
        .await;
    alice.assert_reply(&r).await;
    let got = tokio::time::timeout(WAIT, bob.assert_push("chat:room:lb", "new_message"))
        .await
        .unwrap();
    assert_eq!(got[4]["content"], "via the balancer");

    // Bob drops; alice posts; bob reconnects through the balancer (to whichever
    // node it picks) and recovers what he missed.
    let seen = got[4]["offset"].as_u64().unwrap();
    drop(bob);
    for i in 0..2 {
        let r = alice
            .push(
                Some(&jr),
                "chat:room:lb",
                "new_message",
                json!({"content": format!("m{i}")}),
            )
            .await;
        alice.assert_reply(&r).await;
    }
    // The topic's epoch, as any join reply gives it (alice rejoins to read it).
    let (_, rejoined) = alice.join("chat:room:lb", json!({})).await;
    let epoch = rejoined["response"]["epoch"].clone();
    assert!(epoch.is_string(), "{rejoined}");
    let mut back = PhxClient::connect(&url("bob")).await.unwrap();
    let (_, reply) = back
        .join(
            "chat:room:lb",
            json!({"since": {"offset": seen, "epoch": epoch}}),
        )
        .await;
    assert_eq!(reply["response"]["recovered"], true, "{reply}");
    for i in 0..2 {
        let push = back.assert_push("chat:room:lb", "new_message").await;
        assert_eq!(push[4]["content"], format!("m{i}"));
    }
    let _ = lb.kill().await;
}
