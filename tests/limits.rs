//! Rate limits on client events (per connection, per user) and idempotent publish.

mod common;

use common::TestNode;
use serde_json::json;

#[tokio::test]
async fn events_beyond_the_connection_bucket_are_refused_with_a_reason() {
    let node = TestNode::start_with(|c| {
        c.limits.connection_events_per_s = 0;
        c.limits.connection_events_burst = 3;
    })
    .await;
    let mut a = node.connect("alice").await;
    a.join_ok("chat:room:1").await;
    for i in 0..3 {
        let r = a
            .push(
                None,
                "chat:room:1",
                "new_message",
                json!({"content": format!("m{i}")}),
            )
            .await;
        assert_eq!(a.assert_reply(&r).await["status"], "ok");
    }
    let r = a
        .push(
            None,
            "chat:room:1",
            "new_message",
            json!({"content": "one too many"}),
        )
        .await;
    assert_eq!(
        a.assert_reply(&r).await,
        json!({"status": "error", "response": {"reason": "rate_limited"}})
    );
    // Heartbeats and joins are not client events: still answered.
    a.heartbeat().await;
    a.join_ok("chat:room:2").await;
    assert_eq!(node.metric("armoricore_rate_limited_total").await, 1.0);
    node.shutdown().await;
}

#[tokio::test]
async fn a_users_sockets_share_one_bucket() {
    let node = TestNode::start_with(|c| {
        c.limits.user_events_per_s = 0;
        c.limits.user_events_burst = 4;
    })
    .await;
    let mut tab1 = node.connect("alice").await;
    let mut tab2 = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    for c in [&mut tab1, &mut tab2, &mut bob] {
        c.join_ok("chat:room:1").await;
    }
    for _ in 0..2 {
        for c in [&mut tab1, &mut tab2] {
            let r = c.push(None, "chat:room:1", "typing_start", json!({})).await;
            assert_eq!(c.assert_reply(&r).await["status"], "ok");
        }
    }
    let r = tab1
        .push(None, "chat:room:1", "typing_stop", json!({}))
        .await;
    assert_eq!(
        tab1.assert_reply(&r).await["response"]["reason"],
        "rate_limited"
    );
    // Another user is not affected.
    let r = bob
        .push(None, "chat:room:1", "typing_start", json!({}))
        .await;
    assert_eq!(bob.assert_reply(&r).await["status"], "ok");
    node.shutdown().await;
}

#[tokio::test]
async fn a_retried_push_with_the_same_idempotency_key_is_one_message() {
    let node = TestNode::start().await;
    let mut a = node.connect("alice").await;
    let mut b = node.connect("bob").await;
    a.join_ok("chat:room:1").await;
    b.join_ok("chat:room:1").await;
    let push = json!({"content": "once", "idempotency_key": "k-1"});
    let r = a
        .push(None, "chat:room:1", "new_message", push.clone())
        .await;
    let first = a.assert_reply(&r).await;
    assert_eq!(first["status"], "ok");
    // The client did not see the reply (say) and retries.
    let r = a.push(None, "chat:room:1", "new_message", push).await;
    let retry = a.assert_reply(&r).await;
    assert_eq!(retry, first, "the original reply, same id and offset");
    b.assert_push("chat:room:1", "new_message").await;
    b.refute_push(
        "chat:room:1",
        "new_message",
        std::time::Duration::from_millis(200),
    )
    .await;
    // A bad key is refused, not ignored.
    let r = a
        .push(
            None,
            "chat:room:1",
            "new_message",
            json!({"content": "x", "idempotency_key": 7}),
        )
        .await;
    assert_eq!(a.assert_reply(&r).await["status"], "error");
    node.shutdown().await;
}
