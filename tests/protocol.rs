//! Phoenix Channels protocol rules, with a real client over a real socket.

mod common;

use std::time::Duration;

use armoricore::protocols::jwt::Claims;
use common::{PhxClient, TestNode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const QUIET: Duration = Duration::from_millis(200);

#[tokio::test]
async fn heartbeat_is_answered_with_its_ref() {
    let node = TestNode::start().await;
    let mut c = node.connect("alice").await;
    let r = c.push(None, "phoenix", "heartbeat", json!({})).await;
    let frame = c.find("heartbeat reply", |f| f[1] == json!(r)).await;
    assert_eq!(
        frame,
        json!([null, r, "phoenix", "phx_reply", {"status": "ok", "response": {}}])
    );
    node.shutdown().await;
}

#[tokio::test]
async fn join_reply_carries_join_ref_and_ref() {
    let node = TestNode::start().await;
    let mut c = node.connect("alice").await;
    c.send_raw(WsMessage::text(r#"["7","8","chat:room:1","phx_join",{}]"#))
        .await;
    let frame = c.find("join reply", |f| f[3] == "phx_reply").await;
    assert_eq!(frame[0], "7");
    assert_eq!(frame[1], "8");
    assert_eq!(frame[2], "chat:room:1");
    assert_eq!(frame[4]["status"], "ok");
    node.shutdown().await;
}

#[tokio::test]
async fn v1_object_frames_are_served() {
    let node = TestNode::start().await;
    let url = node.ws_url(&format!("vsn=1.0.0&token={}", node.token("alice")));
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    use futures_util::{SinkExt, StreamExt};
    let join = json!({"topic": "chat:room:1", "event": "phx_join", "payload": {}, "ref": "1", "join_ref": "1"});
    ws.send(WsMessage::text(join.to_string())).await.unwrap();
    loop {
        let msg = ws.next().await.unwrap().unwrap();
        let v: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
        assert!(v.is_object(), "V1 frames are objects: {v}");
        if v["event"] == "phx_reply" {
            assert_eq!(v["ref"], "1");
            assert_eq!(v["payload"]["status"], "ok");
            break;
        }
    }
    node.shutdown().await;
}

#[tokio::test]
async fn new_message_replies_and_broadcasts_once_encoded() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    let a_ref = alice.join_ok("chat:room:1").await;
    bob.join_ok("chat:room:1").await;

    let r = alice
        .push(
            Some(&a_ref),
            "chat:room:1",
            "new_message",
            json!({"content": "hi"}),
        )
        .await;
    let reply = alice.assert_reply(&r).await;
    assert_eq!(reply["status"], "ok");
    let id = reply["response"]["id"].as_str().unwrap().to_string();
    let offset = reply["response"]["offset"].as_u64().unwrap();

    for client in [&mut alice, &mut bob] {
        let frame = client.assert_push("chat:room:1", "new_message").await;
        assert_eq!(frame[0], Value::Null, "broadcasts carry null join_ref");
        assert_eq!(frame[1], Value::Null, "broadcasts carry null ref");
        let p = &frame[4];
        assert_eq!(p["id"], json!(id));
        assert_eq!(p["offset"], json!(offset));
        assert_eq!(p["user_id"], "alice");
        assert_eq!(p["content"], "hi");
        assert!(humantime::parse_rfc3339(p["timestamp"].as_str().unwrap()).is_ok());
    }

    // Offsets increase per topic.
    let r = bob
        .push(None, "chat:room:1", "new_message", json!({"content": "yo"}))
        .await;
    let reply = bob.assert_reply(&r).await;
    assert_eq!(reply["response"]["offset"].as_u64().unwrap(), offset + 1);
    node.shutdown().await;
}

#[tokio::test]
async fn invalid_message_content_gets_an_error_reply() {
    let node = TestNode::start_with(|c| c.channels.max_content_chars = 5).await;
    let mut c = node.connect("alice").await;
    c.join_ok("chat:room:1").await;
    for payload in [
        json!({}),
        json!({"content": ""}),
        json!({"content": 5}),
        json!({"content": "toolong"}),
    ] {
        let r = c
            .push(None, "chat:room:1", "new_message", payload.clone())
            .await;
        let reply = c.assert_reply(&r).await;
        assert_eq!(reply["status"], "error", "{payload}");
        assert!(
            reply["response"]["reason"]
                .as_str()
                .unwrap()
                .contains("content")
        );
    }
    c.refute_push("chat:room:1", "new_message", QUIET).await;
    node.shutdown().await;
}

#[tokio::test]
async fn typing_goes_to_others_only() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    alice.join_ok("chat:room:1").await;
    bob.join_ok("chat:room:1").await;
    let r = alice
        .push(None, "chat:room:1", "typing_start", json!({}))
        .await;
    assert_eq!(alice.assert_reply(&r).await["status"], "ok");
    let frame = bob.assert_push("chat:room:1", "user_typing").await;
    assert_eq!(frame[4], json!({"user_id": "alice", "typing": true}));
    alice
        .push(None, "chat:room:1", "typing_stop", json!({}))
        .await;
    let frame = bob.assert_push("chat:room:1", "user_typing").await;
    assert_eq!(frame[4], json!({"user_id": "alice", "typing": false}));
    alice.refute_push("chat:room:1", "user_typing", QUIET).await;
    node.shutdown().await;
}

#[tokio::test]
async fn comments_stream() {
    let node = TestNode::start().await;
    let mut a = node.connect("alice").await;
    let mut b = node.connect("bob").await;
    a.join_ok("comments:stream:7").await;
    b.join_ok("comments:stream:7").await;
    let r = a
        .push(
            None,
            "comments:stream:7",
            "new_comment",
            json!({"content": "first"}),
        )
        .await;
    let reply = a.assert_reply(&r).await;
    assert_eq!(reply["status"], "ok");
    assert_eq!(reply["response"]["offset"], 1);
    let frame = b.assert_push("comments:stream:7", "new_comment").await;
    assert_eq!(frame[4]["content"], "first");
    assert_eq!(frame[4]["user_id"], "alice");
    node.shutdown().await;
}

#[tokio::test]
async fn leave_replies_then_closes_and_stops_delivery() {
    let node = TestNode::start().await;
    let mut a = node.connect("alice").await;
    let mut b = node.connect("bob").await;
    let join_ref = a.join_ok("chat:room:1").await;
    b.join_ok("chat:room:1").await;
    let r = a
        .push(Some(&join_ref), "chat:room:1", "phx_leave", json!({}))
        .await;
    assert_eq!(a.assert_reply(&r).await["status"], "ok");
    let close = a.assert_push("chat:room:1", "phx_close").await;
    assert_eq!(close[0], json!(join_ref));
    let r = b
        .push(
            None,
            "chat:room:1",
            "new_message",
            json!({"content": "after"}),
        )
        .await;
    b.assert_reply(&r).await;
    a.refute_push("chat:room:1", "new_message", QUIET).await;
    // Pushing to a topic left is a push to a topic not joined.
    let r = a
        .push(
            Some(&join_ref),
            "chat:room:1",
            "new_message",
            json!({"content": "x"}),
        )
        .await;
    let reply = a.assert_reply(&r).await;
    assert_eq!(
        reply,
        json!({"status": "error", "response": {"reason": "unmatched topic"}})
    );
    node.shutdown().await;
}

#[tokio::test]
async fn duplicate_join_closes_the_old_channel() {
    let node = TestNode::start().await;
    let mut a = node.connect("alice").await;
    let first = a.join_ok("chat:room:9").await;
    let (second, reply) = a.join("chat:room:9", json!({})).await;
    assert_eq!(reply["status"], "ok");
    let close = a.assert_push("chat:room:9", "phx_close").await;
    assert_eq!(close[0], json!(first), "phx_close names the old join_ref");
    assert_ne!(first, second);
    // Still one subscription: one broadcast, one delivery.
    let r = a
        .push(
            Some(&second),
            "chat:room:9",
            "new_message",
            json!({"content": "once"}),
        )
        .await;
    a.assert_reply(&r).await;
    a.assert_push("chat:room:9", "new_message").await;
    a.refute_push("chat:room:9", "new_message", QUIET).await;
    node.shutdown().await;
}

#[tokio::test]
async fn unknown_topics_and_events_get_error_replies() {
    let node = TestNode::start().await;
    let mut a = node.connect("alice").await;
    let (_, reply) = a.join("nowhere:1", json!({})).await;
    assert_eq!(
        reply,
        json!({"status": "error", "response": {"reason": "unmatched topic"}})
    );
    let r = a
        .push(None, "chat:room:5", "new_message", json!({"content": "x"}))
        .await;
    assert_eq!(
        a.assert_reply(&r).await["response"]["reason"],
        "unmatched topic"
    );
    a.join_ok("chat:room:5").await;
    let r = a.push(None, "chat:room:5", "bogus_event", json!({})).await;
    let reply = a.assert_reply(&r).await;
    assert_eq!(reply["status"], "error");
    assert!(
        reply["response"]["reason"]
            .as_str()
            .unwrap()
            .contains("unknown event")
    );
    a.heartbeat().await;
    node.shutdown().await;
}

#[tokio::test]
async fn private_user_topic_is_only_for_its_user() {
    let node = TestNode::start().await;
    let mut a = node.connect("alice").await;
    a.join_ok("user:alice").await;
    let (_, reply) = a.join("user:bob", json!({})).await;
    assert_eq!(
        reply,
        json!({"status": "error", "response": {"reason": "unauthorized"}})
    );
    node.shutdown().await;
}

#[tokio::test]
async fn channels_claim_limits_topics() {
    let node = TestNode::start().await;
    let token = node.token_for(Claims {
        user_id: "alice".into(),
        channels: Some(vec!["chat:room:1".into(), "comments:*".into()]),
        name: None,
        meta: None,
        admin: false,
    });
    let mut a = PhxClient::connect(&node.ws_url(&format!("vsn=2.0.0&token={token}")))
        .await
        .unwrap();
    a.join_ok("chat:room:1").await;
    a.join_ok("comments:stream:3").await;
    let (_, reply) = a.join("chat:room:2", json!({})).await;
    assert_eq!(reply["response"]["reason"], "unauthorized");
    node.shutdown().await;
}

#[tokio::test]
async fn legacy_user_id_claim_is_accepted() {
    let node = TestNode::start().await;
    // {"user_id": 42, "exp": far future}, signed with the node's secret.
    let claims = json!({"user_id": 42, "exp": 4_000_000_000u64});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(common::SECRET.as_bytes()),
    )
    .unwrap();
    let mut a = PhxClient::connect(&node.ws_url(&format!("vsn=2.0.0&token={token}")))
        .await
        .unwrap();
    a.join_ok("user:42").await;
    node.shutdown().await;
}

#[tokio::test]
async fn too_many_channels_and_join_rate() {
    let node = TestNode::start_with(|c| {
        c.socket.max_channels = 2;
        c.socket.join_burst = 3;
        c.socket.join_rate_per_s = 0;
    })
    .await;
    let mut a = node.connect("alice").await;
    a.join_ok("chat:room:1").await;
    a.join_ok("chat:room:2").await;
    let (_, reply) = a.join("chat:room:3", json!({})).await;
    assert!(
        reply["response"]["reason"]
            .as_str()
            .unwrap()
            .contains("too many channels"),
        "{reply}"
    );
    // Two of the burst of three used; the join refused for the channel limit took none.
    let r = a.push(None, "chat:room:1", "phx_leave", json!({})).await;
    a.assert_reply(&r).await;
    a.join_ok("chat:room:3").await;
    let r = a.push(None, "chat:room:3", "phx_leave", json!({})).await;
    a.assert_reply(&r).await;
    let (_, reply) = a.join("chat:room:4", json!({})).await;
    assert!(
        reply["response"]["reason"]
            .as_str()
            .unwrap()
            .contains("join rate"),
        "{reply}"
    );
    a.heartbeat().await;
    node.shutdown().await;
}
