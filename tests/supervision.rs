//! Failures are contained: a crashing channel gets `phx_error`, a crashing session
//! gets its socket closed, restarts are counted, and everyone else carries on.
//! The failures are provoked through `test:crash:*`, a channel only tests register.

mod common;

use std::time::Duration;

use armoricore::supervisors::root::Child;
use common::{TestNode, eventually};
use serde_json::json;

#[tokio::test]
async fn a_panicking_handler_errors_its_channel_only() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    let crash_ref = alice.join_ok("test:crash:1").await;
    alice.join_ok("chat:room:1").await;
    bob.join_ok("chat:room:1").await;

    alice
        .push(Some(&crash_ref), "test:crash:1", "panic", json!({}))
        .await;
    let err = alice.assert_push("test:crash:1", "phx_error").await;
    assert_eq!(
        err[0],
        json!(crash_ref),
        "phx_error carries the channel's join_ref"
    );
    assert_eq!(err[1], json!(crash_ref));
    assert_eq!(
        node.metric("armoricore_actor_restarts_total{supervisor=\"channels\"}")
            .await,
        1.0
    );

    // The same connection's other channel still works, and so does bob.
    let r = alice
        .push(
            None,
            "chat:room:1",
            "new_message",
            json!({"content": "still here"}),
        )
        .await;
    assert_eq!(alice.assert_reply(&r).await["status"], "ok");
    bob.assert_push("chat:room:1", "new_message").await;
    // The crashed channel is gone: pushes to it are to a topic not joined.
    let r = alice.push(None, "test:crash:1", "echo", json!({})).await;
    assert_eq!(
        alice.assert_reply(&r).await["response"]["reason"],
        "unmatched topic"
    );
    // The client rejoins, as phoenix.js does after phx_error.
    let rejoin = alice.join_ok("test:crash:1").await;
    let r = alice
        .push(Some(&rejoin), "test:crash:1", "echo", json!({"n": 1}))
        .await;
    assert_eq!(
        alice.assert_reply(&r).await,
        json!({"status": "ok", "response": {"n": 1}})
    );
    node.shutdown().await;
}

#[tokio::test]
async fn an_erroring_handler_and_a_crashing_join() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice").await;
    alice.join_ok("test:crash:2").await;
    alice.push(None, "test:crash:2", "fail", json!({})).await;
    alice.assert_push("test:crash:2", "phx_error").await;

    let (_, reply) = alice.join("test:crash:3", json!({"crash": true})).await;
    assert_eq!(
        reply,
        json!({"status": "error", "response": {"reason": "join crashed"}})
    );
    assert_eq!(
        node.metric("armoricore_actor_restarts_total{supervisor=\"channels\"}")
            .await,
        2.0
    );
    alice.heartbeat().await;
    node.shutdown().await;
}

#[tokio::test]
async fn a_failing_session_is_closed_and_cleaned_up_alone() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    alice.join_ok("chat:room:1").await;
    alice.join_ok("test:crash:1").await;
    bob.join_ok("chat:room:1").await;
    bob.assert_push("chat:room:1", "presence_state").await;

    alice.push(None, "test:crash:1", "fatal", json!({})).await;
    let closed = alice.closed().await;
    assert_eq!(closed.code(), Some(1011), "{closed:?}");
    assert_eq!(
        node.metric("armoricore_actor_restarts_total{supervisor=\"sessions\"}")
            .await,
        1.0
    );
    // The supervisor removed the crashed session's presence everywhere.
    let diff = bob
        .find("alice's leave", |f| {
            f[3] == "presence_diff" && f[4]["leaves"].get("alice").is_some()
        })
        .await;
    assert_eq!(diff[2], "chat:room:1");
    let hub = node.node().hub().clone();
    eventually("session forgotten", || {
        let hub = hub.clone();
        async move { hub.sessions.len() == 1 && hub.pubsub.subscriber_count("chat:room:1") == 1 }
    })
    .await;
    // Bob carries on.
    let r = bob
        .push(
            None,
            "chat:room:1",
            "new_message",
            json!({"content": "alone"}),
        )
        .await;
    assert_eq!(bob.assert_reply(&r).await["status"], "ok");
    // And alice can reconnect.
    let mut again = node.connect("alice").await;
    again.join_ok("chat:room:1").await;
    node.shutdown().await;
}

#[tokio::test]
async fn the_root_restarts_a_failed_service() {
    let node = TestNode::start().await;
    let before = node
        .node()
        .child(Child::Presence)
        .await
        .expect("presence running");
    before.kill();
    eventually("presence tracker restarted", || async {
        matches!(node.node().child(Child::Presence).await, Some(c) if c.get_id() != before.get_id())
    })
    .await;
    assert_eq!(
        node.metric("armoricore_actor_restarts_total{supervisor=\"root\"}")
            .await,
        1.0
    );
    // Presence works after the restart.
    let mut alice = node.connect("alice").await;
    alice.join_ok("chat:room:1").await;
    let state = alice.assert_push("chat:room:1", "presence_state").await;
    assert!(state[4].get("alice").is_some(), "{state}");
    node.shutdown().await;
}

#[tokio::test]
async fn restart_intensity_exceeded_stops_the_node() {
    let mut node = TestNode::start_with(|c| {
        c.supervision.max_restarts = 2;
        c.supervision.window_ms = 60_000;
    })
    .await;
    for _ in 0..3 {
        let child = node.node().child(Child::Presence).await;
        let Some(child) = child else { break };
        let id = child.get_id();
        child.kill();
        // Wait for the restart (or the root giving up) before the next kill.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match node.node().child(Child::Presence).await {
                    Some(c) if c.get_id() != id => break,
                    None => break,
                    _ => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        })
        .await;
    }
    let stopped = tokio::time::timeout(common::WAIT, async {
        let n = node.node_mut();
        n.stopped().await
    })
    .await;
    assert!(
        stopped.is_ok(),
        "root should give up after 3 restarts with max_restarts = 2"
    );
}
