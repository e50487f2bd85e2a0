//! Nodes sharing broadcasts through a real `redis-server` on a random port:
//! clients on different nodes see each other's messages, in order per publisher,
//! and a Redis restart under running nodes only pauses what crosses nodes.

mod common;

use std::time::Duration;

use common::redis::RedisServer;
use common::{PhxClient, TestNode, WAIT, eventually};
use serde_json::json;

async fn node_on(redis: &RedisServer, name: &str) -> TestNode {
    let (url, name) = (redis.url(), name.to_string());
    TestNode::start_with(move |c| {
        c.cluster.redis_url = url;
        c.cluster.node_name = name;
        c.cluster.heartbeat_ms = 100;
        c.cluster.node_timeout_ms = 1000;
    })
    .await
}

/// Both nodes see each other (heartbeats), so their subscriptions are in place.
async fn clustered(a: &TestNode, b: &TestNode) {
    for node in [a, b] {
        eventually("both nodes in the cluster", || async {
            node.metric("armoricore_cluster_nodes").await == 2.0
        })
        .await;
    }
}

/// Join `topic` and wait until the node's Redis subscription has surely been made
/// (a subscribe is one round trip; heartbeats prove the link works).
async fn join(node: &TestNode, user: &str, topic: &str) -> (PhxClient, String) {
    let mut c = node.connect(user).await;
    let jr = c.join_ok(topic).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    (c, jr)
}

#[tokio::test]
async fn clients_on_different_nodes_see_each_others_messages_in_order() {
    let redis = RedisServer::start().await;
    let a = node_on(&redis, "a").await;
    let b = node_on(&redis, "b").await;
    clustered(&a, &b).await;
    let (mut alice, jr) = join(&a, "alice", "comments:stream:1").await;
    let (mut bob, _) = join(&b, "bob", "comments:stream:1").await;

    for i in 0..50 {
        let r = alice
            .push(
                Some(&jr),
                "comments:stream:1",
                "new_comment",
                json!({"content": format!("c{i}")}),
            )
            .await;
        alice.assert_reply(&r).await;
    }
    for i in 0..50 {
        let push = bob.assert_push("comments:stream:1", "new_comment").await;
        assert_eq!(
            push[4]["content"],
            format!("c{i}"),
            "in order per publisher"
        );
        assert_eq!(push[4]["user_id"], "alice");
    }
    assert!(b.metric("armoricore_redis_messages_in_total").await >= 50.0);

    // The server API's broadcast reaches every node's subscribers.
    let (status, _) = b
        .api_post(
            "/api/broadcast",
            &json!({"topic": "comments:stream:1", "event": "announcement", "payload": {"x": 1}}),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(
        alice.assert_push("comments:stream:1", "announcement").await[4]["x"],
        1
    );
    assert_eq!(
        bob.assert_push("comments:stream:1", "announcement").await[4]["x"],
        1
    );
}

#[tokio::test]
async fn a_node_receives_only_the_topics_its_clients_joined() {
    let redis = RedisServer::start().await;
    let a = node_on(&redis, "a").await;
    let b = node_on(&redis, "b").await;
    clustered(&a, &b).await;
    let (mut alice, jr) = join(&a, "alice", "comments:stream:busy").await;
    let (mut carol, _) = join(&a, "carol", "comments:stream:busy").await;
    let before = b.metric("armoricore_redis_messages_in_total").await;
    for _ in 0..5 {
        let r = alice
            .push(
                Some(&jr),
                "comments:stream:busy",
                "new_comment",
                json!({"content": "x"}),
            )
            .await;
        alice.assert_reply(&r).await;
        carol
            .assert_push("comments:stream:busy", "new_comment")
            .await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        b.metric("armoricore_redis_messages_in_total").await,
        before,
        "node b has no subscriber of that topic and did not subscribe to it"
    );
}

#[tokio::test]
async fn a_redis_restart_pauses_only_what_crosses_nodes() {
    let mut redis = RedisServer::start().await;
    let a = node_on(&redis, "a").await;
    let b = node_on(&redis, "b").await;
    clustered(&a, &b).await;
    let (mut alice, jr) = join(&a, "alice", "comments:stream:2").await;
    let (mut carol, _) = join(&a, "carol", "comments:stream:2").await;
    let (mut bob, _) = join(&b, "bob", "comments:stream:2").await;
    let (_alice_room, _) = join(&a, "alice", "chat:room:r").await;
    let (_bob_room, _) = join(&b, "bob", "chat:room:r").await;

    redis.kill();
    eventually("/ready reports Redis down", || async {
        let (status, body) = a.get("/ready").await;
        status == 200
            && body.contains(r#""status":"degraded""#)
            && body.contains(r#""redis":{"status":"down"}"#)
    })
    .await;
    // A join while Redis is away must reach the other node afterwards.
    let (_carol_room, _) = join(&a, "carol", "chat:room:r").await;
    // Local delivery goes on.
    let r = alice
        .push(
            Some(&jr),
            "comments:stream:2",
            "new_comment",
            json!({"content": "local"}),
        )
        .await;
    alice.assert_reply(&r).await;
    assert_eq!(
        carol.assert_push("comments:stream:2", "new_comment").await[4]["content"],
        "local"
    );

    redis.restart().await;
    eventually("/ready reports Redis up", || async {
        a.get("/ready")
            .await
            .1
            .contains(r#""redis":{"status":"up"}"#)
            && b.get("/ready")
                .await
                .1
                .contains(r#""redis":{"status":"up"}"#)
    })
    .await;
    clustered(&a, &b).await;
    // Resubscribed: messages cross nodes again (retry while subscriptions settle).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = alice
            .push(
                Some(&jr),
                "comments:stream:2",
                "new_comment",
                json!({"content": "again"}),
            )
            .await;
        alice.assert_reply(&r).await;
        let got = tokio::time::timeout(
            Duration::from_millis(300),
            bob.find("a message after the restart", |f| {
                f[3] == "new_comment" && f[4]["content"] == "again"
            }),
        )
        .await;
        if got.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no cross-node delivery after Redis restarted"
        );
    }
    assert!(a.metric("armoricore_redis_reconnects_total").await >= 2.0);
    // Presence resynced: no lost join, no ghost, the same on both nodes.
    let all: Vec<String> = ["alice", "bob", "carol"].map(String::from).to_vec();
    for node in [&a, &b] {
        eventually("presence resynced after the Redis restart", || async {
            presence_keys(node, "chat:room:r").await == all
        })
        .await;
    }
}

/// The presence list of `topic` as `node` has it (`/api/presence`), as sorted keys.
async fn presence_keys(node: &TestNode, topic: &str) -> Vec<String> {
    let auth = format!("apikey {}", common::API_KEY);
    let (_, body) = common::http(
        node.addr,
        "GET",
        &format!("/api/presence/{topic}"),
        &[("Authorization", &auth)],
        "",
    )
    .await;
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut keys: Vec<String> = list.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn presence_is_the_same_on_every_node_and_a_silent_node_leaves_it() {
    let redis = RedisServer::start().await;
    let a = node_on(&redis, "a").await;
    let b = node_on(&redis, "b").await;
    clustered(&a, &b).await;
    let (mut alice, _) = join(&a, "alice", "chat:room:p").await;
    let (mut bob, _) = join(&b, "bob", "chat:room:p").await;
    let both = vec!["alice".to_string(), "bob".to_string()];
    for node in [&a, &b] {
        eventually("both nodes list alice and bob", || async {
            presence_keys(node, "chat:room:p").await == both
        })
        .await;
    }
    // Alice's client learns of bob through a presence_diff from the other node.
    alice
        .find("bob's join", |f| {
            f[3] == "presence_diff" && f[4]["joins"].get("bob").is_some()
        })
        .await;
    // A node joining later gets the full state.
    let c = node_on(&redis, "c").await;
    eventually("node c lists both", || async {
        presence_keys(&c, "chat:room:p").await == both
    })
    .await;

    // Node b goes silent (no goodbye, as with kill -9): its presences leave.
    let started = std::time::Instant::now();
    b.node().hub().pubsub.cluster().unwrap().stop().await;
    alice
        .find("bob's leave", |f| {
            f[3] == "presence_diff" && f[4]["leaves"].get("bob").is_some()
        })
        .await;
    let purge = started.elapsed();
    assert!(
        purge < Duration::from_secs(3),
        "purged after {purge:?} (timeout 1 s)"
    );
    for node in [&a, &c] {
        eventually("bob gone everywhere", || async {
            presence_keys(node, "chat:room:p").await == vec!["alice".to_string()]
        })
        .await;
    }
    let _ = bob.heartbeat().await;
}

#[tokio::test]
async fn offsets_are_shared_and_a_client_recovers_on_another_node() {
    let redis = RedisServer::start().await;
    let a = node_on(&redis, "a").await;
    let b = node_on(&redis, "b").await;
    clustered(&a, &b).await;
    let mut alice = a.connect("alice").await;
    let (jr_a, joined) = alice.join("chat:room:h", json!({})).await;
    let epoch = joined["response"]["epoch"].clone();
    let mut bob = b.connect("bob").await;
    let (jr_b, joined_b) = bob.join("chat:room:h", json!({})).await;
    assert_eq!(
        joined_b["response"]["epoch"], epoch,
        "one history for the topic"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Messages from both nodes get one sequence of offsets.
    for i in 0..3 {
        for (client, jr, who) in [(&mut alice, &jr_a, "a"), (&mut bob, &jr_b, "b")] {
            let r = client
                .push(
                    Some(jr),
                    "chat:room:h",
                    "new_message",
                    json!({"content": format!("{who}{i}")}),
                )
                .await;
            client.assert_reply(&r).await;
        }
    }
    let mut offsets = Vec::new();
    for _ in 0..6 {
        offsets.push(
            bob.assert_push("chat:room:h", "new_message").await[4]["offset"]
                .as_u64()
                .unwrap(),
        );
    }
    offsets.sort();
    assert_eq!(offsets, vec![1, 2, 3, 4, 5, 6]);

    // Bob goes away; alice posts three more; bob comes back on the OTHER node.
    let r = bob
        .push(Some(&jr_b), "chat:room:h", "phx_leave", json!({}))
        .await;
    bob.assert_reply(&r).await;
    for i in 0..3 {
        let r = alice
            .push(
                Some(&jr_a),
                "chat:room:h",
                "new_message",
                json!({"content": format!("missed{i}")}),
            )
            .await;
        alice.assert_reply(&r).await;
    }
    let mut back = a.connect("bob").await;
    let (_, reply) = back
        .join(
            "chat:room:h",
            json!({"since": {"offset": 6, "epoch": epoch}}),
        )
        .await;
    assert_eq!(reply["response"]["recovered"], true, "{reply}");
    assert_eq!(reply["response"]["offset"], 9);
    for (i, offset) in [7, 8, 9].into_iter().enumerate() {
        let push = back.assert_push("chat:room:h", "new_message").await;
        assert_eq!(push[4]["offset"], offset);
        assert_eq!(push[4]["content"], format!("missed{i}"));
    }
    // A position the history no longer has (another epoch) cannot be recovered.
    let mut stale = b.connect("carol").await;
    let (_, reply) = stale
        .join(
            "chat:room:h",
            json!({"since": {"offset": 2, "epoch": "other"}}),
        )
        .await;
    assert_eq!(reply["response"]["recovered"], false, "{reply}");
}

#[tokio::test]
async fn a_node_started_while_redis_is_down_joins_when_it_comes() {
    let mut redis = RedisServer::start().await;
    let a = node_on(&redis, "a").await;
    redis.kill();
    let b = node_on(&redis, "b").await;
    let (status, body) = b.get("/ready").await;
    assert_eq!(status, 200, "serves its clients meanwhile");
    assert!(body.contains(r#""redis":{"status":"down"}"#), "{body}");
    redis.restart().await;
    clustered(&a, &b).await;
    let (mut alice, jr) = join(&a, "alice", "comments:stream:late").await;
    let (mut bob, _) = join(&b, "bob", "comments:stream:late").await;
    let r = alice
        .push(
            Some(&jr),
            "comments:stream:late",
            "new_comment",
            json!({"content": "hi"}),
        )
        .await;
    alice.assert_reply(&r).await;
    assert_eq!(
        bob.assert_push("comments:stream:late", "new_comment").await[4]["content"],
        "hi"
    );
}

#[tokio::test]
async fn a_presence_that_comes_and_goes_within_one_flush_leaves_no_ghost() {
    let redis = RedisServer::start().await;
    let slow_flush = |name: &'static str| {
        let url = redis.url();
        move |c: &mut armoricore::config::Config| {
            c.cluster.redis_url = url;
            c.cluster.node_name = name.into();
            c.cluster.heartbeat_ms = 100;
            c.cluster.node_timeout_ms = 1000;
            c.presence.broadcast_period_ms = 300;
        }
    };
    let a = TestNode::start_with(slow_flush("a")).await;
    let b = TestNode::start_with(slow_flush("b")).await;
    clustered(&a, &b).await;
    let (_alice, _) = join(&a, "alice", "presence:room:g").await;
    // Bob joins, changes status twice and leaves, all within one 300 ms flush.
    let mut bob = a.connect("bob").await;
    let jr = bob.join_ok("presence:room:g").await;
    for status in ["away", "busy"] {
        let r = bob
            .push(
                Some(&jr),
                "presence:room:g",
                "update_status",
                json!({"status": status}),
            )
            .await;
        bob.assert_reply(&r).await;
    }
    let r = bob
        .push(Some(&jr), "presence:room:g", "phx_leave", json!({}))
        .await;
    bob.assert_reply(&r).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    for node in [&a, &b] {
        assert_eq!(
            presence_keys(node, "presence:room:g").await,
            vec!["alice".to_string()],
            "no ghost of bob"
        );
    }
}

#[tokio::test]
async fn a_call_is_hosted_by_one_node_and_the_others_say_which() {
    let redis = RedisServer::start().await;
    let on = |name: &str| {
        let (url, name) = (redis.url(), name.to_string());
        TestNode::start_with(move |c| {
            c.cluster.redis_url = url;
            c.cluster.node_name = name;
            c.cluster.heartbeat_ms = 100;
            c.calls.addresses = vec!["127.0.0.1".parse().unwrap()];
            c.calls.empty_grace_ms = 100;
        })
    };
    let (a, b) = (on("a").await, on("b").await);
    clustered(&a, &b).await;

    // Alice starts call 7 on node a; Bob, sent to node b, is told where it is.
    let mut alice = a.connect("alice").await;
    alice.join_ok("signaling:call:7").await;
    let mut bob = b.connect("bob").await;
    let (_, reply) = bob.join("signaling:call:7", json!({})).await;
    assert_eq!(reply["status"], "error", "{reply}");
    assert_eq!(reply["response"]["node"], "a");
    assert_eq!(
        reply["response"]["reason"],
        "the call is hosted on node a: connect to that node to join it"
    );
    // Another call is free to start on b.
    bob.join_ok("signaling:call:8").await;

    // Alice leaves: the call ends on a and its id is free; Bob can host it on b.
    drop(alice);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, reply) = bob.join("signaling:call:7", json!({})).await;
        if reply["status"] == "ok" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "call 7 never freed: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.shutdown().await;
    b.shutdown().await;
}
