//! The embedded bus and the server API: a node with nothing installed takes work
//! through `POST /api/events`, runs it, pushes results to its clients, publishes
//! chat and presence events, and dead-letters what it cannot read.

mod common;

use std::time::Duration;

use armoricore::jobs::Jobs;
use bytes::Bytes;
use common::jobs::{Behaviour, TestJob, media_uploaded};
use common::{API_KEY, TestNode, WAIT, http};
use futures_util::StreamExt;
use serde_json::{Value, json};

fn media_jobs(job: &TestJob) -> Jobs {
    Jobs::new().with("media.uploaded", job.clone())
}

async fn next_json(
    sub: &mut futures_util::stream::BoxStream<'static, armoricore::bus::Message>,
) -> Value {
    let m = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("an event in time")
        .unwrap();
    serde_json::from_slice(&m.body).unwrap()
}

#[tokio::test]
async fn api_events_reach_the_handler_and_results_reach_the_owner() {
    let job = TestJob::new(Behaviour::Succeed);
    let node = TestNode::start_with_jobs(|_| {}, media_jobs(&job)).await;
    let bus = node.node().hub().bus.clone();
    let mut ready = bus.subscribe("media.ready").await.unwrap();
    let mut ws = node.connect("u1").await;
    ws.join_ok("user:u1").await;

    let event = media_uploaded("e1", "m1", "u1");
    let (status, body) = node
        .api_post(
            "/api/events",
            &json!({"event_type": "media.uploaded", "event_id": "e1", "payload": event["payload"]}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["event_id"], "e1");

    let result = next_json(&mut ready).await;
    assert_eq!(result["payload"]["media_id"], "m1");
    let push = ws.assert_push("user:u1", "media_ready").await;
    assert_eq!(
        push[4]["playback_urls"]["hls"],
        "https://cdn.example/m1/master.m3u8"
    );
    assert_eq!(job.calls(), vec![("e1".to_string(), 1)]);
    ws.join_ok("media:m1").await;
    // Another user may not follow someone else's media.
    let mut other = node.connect("u2").await;
    let (_, reply) = other.join("media:m1", json!({})).await;
    assert_eq!(reply["status"], "error", "{reply}");
}

#[tokio::test]
async fn a_job_that_panics_is_redelivered_and_the_node_carries_on() {
    let job = TestJob::new(Behaviour::PanicFirst);
    let node = TestNode::start_with_jobs(
        |c| {
            c.bus.backoff_ms = vec![20];
        },
        media_jobs(&job),
    )
    .await;
    let mut ready = node
        .node()
        .hub()
        .bus
        .subscribe("media.ready")
        .await
        .unwrap();
    let payload = media_uploaded("e1", "m1", "u1")["payload"].clone();
    let (status, _) = node
        .api_post(
            "/api/events",
            &json!({"event_type": "media.uploaded", "payload": payload}),
        )
        .await;
    assert_eq!(status, 202);
    let result = next_json(&mut ready).await;
    assert_eq!(result["payload"]["media_id"], "m1");
    let deliveries: Vec<u32> = job.calls().iter().map(|(_, d)| *d).collect();
    assert_eq!(deliveries, vec![1, 2]);
    assert_eq!(node.get("/health").await.0, 200);
}

#[tokio::test]
async fn work_nobody_handles_is_answered_not_supported() {
    let node = TestNode::start().await;
    let bus = node.node().hub().bus.clone();
    let mut failed = bus.subscribe("notification.failed").await.unwrap();
    let (status, body) = node
        .api_post(
            "/api/events",
            &json!({"event_type": "notification.requested", "payload": {
                "user_id": "u1", "notification_type": "push", "title": "Hi", "body": "There",
                "data": {"device_token": "fcm-token-123", "platform": "android"}
            }}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let event = next_json(&mut failed).await;
    assert_eq!(event["event_type"], "notification.failed");
    assert_eq!(event["payload"]["reason"], "not_supported");
    assert_eq!(event["payload"]["user_id"], "u1");
    assert_eq!(event["payload"]["request_event_id"], body["event_id"]);
}

#[tokio::test]
async fn chat_and_presence_events_go_out_on_the_embedded_bus() {
    // A long flush period, so a join and its leave surely share one flush.
    let node = TestNode::start_with(|c| c.presence.broadcast_period_ms = 400).await;
    let bus = node.node().hub().bus.clone();
    let mut chat = bus.subscribe("chat.message").await.unwrap();
    let mut presence = bus.subscribe("presence.update").await.unwrap();
    let mut ws = node.connect("alice").await;
    let jr = ws.join_ok("presence:room:r1").await;
    assert_eq!(
        next_json(&mut presence).await["payload"]["status"],
        "online"
    );
    let r = ws
        .push(
            Some(&jr),
            "presence:room:r1",
            "update_status",
            json!({"status": "away"}),
        )
        .await;
    ws.assert_reply(&r).await;
    assert_eq!(next_json(&mut presence).await["payload"]["status"], "away");
    // A second tab leaving is not the user going offline: the remaining one's
    // status is what they are now.
    let mut tab = node.connect("alice").await;
    tab.join_ok("presence:room:r1").await;
    assert_eq!(
        next_json(&mut presence).await["payload"]["status"],
        "online"
    );
    drop(tab);
    assert_eq!(next_json(&mut presence).await["payload"]["status"], "away");
    // Joining and leaving within one presence flush: nothing to say.
    let mut blink = node.connect("bob").await;
    let jr_b = blink.join_ok("presence:room:r1").await;
    let r = blink
        .push(Some(&jr_b), "presence:room:r1", "phx_leave", json!({}))
        .await;
    blink.assert_reply(&r).await;
    let quiet = tokio::time::timeout(Duration::from_millis(300), presence.next()).await;
    assert!(
        quiet.is_err(),
        "no presence.update for a join undone in the same flush"
    );

    let jr = ws.join_ok("chat:room:lobby").await;
    next_json(&mut presence).await;
    let r = ws
        .push(
            Some(&jr),
            "chat:room:lobby",
            "new_message",
            json!({"content": "hi"}),
        )
        .await;
    ws.assert_reply(&r).await;
    let event = next_json(&mut chat).await;
    assert_eq!(event["payload"]["room_id"], "lobby");
    assert_eq!(event["payload"]["content"], "hi");
}

#[tokio::test]
async fn invalid_work_is_dead_lettered_by_the_embedded_bus() {
    let job = TestJob::new(Behaviour::Succeed);
    let node = TestNode::start_with_jobs(|_| {}, media_jobs(&job)).await;
    let bus = node.node().hub().bus.clone();
    let mut dlq = bus.subscribe("armoricore.dlq.>").await.unwrap();
    // As a backend on the same process bus would: no API validation in front.
    bus.enqueue(
        "media.uploaded",
        "bad-1",
        Bytes::from(
            r#"{"event_id":"bad-1","event_type":"media.uploaded","payload":{"media_id":"m1"}}"#,
        ),
    )
    .await
    .unwrap();
    let letter = next_json(&mut dlq).await;
    assert_eq!(letter["subject"], "media.uploaded");
    assert!(
        letter["reason"].as_str().unwrap().contains("user_id"),
        "{letter}"
    );
    assert_eq!(letter["event"]["event_id"], "bad-1");
    assert!(job.calls().is_empty());
}

#[tokio::test]
async fn the_api_refuses_bad_keys_bad_json_and_invalid_events() {
    let node = TestNode::start().await;
    let post = |headers: Vec<(&'static str, String)>, body: &'static str| {
        let addr = node.addr;
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (status, text) = http(addr, "POST", "/api/events", &h, body).await;
            (status, serde_json::from_str::<Value>(&text).unwrap())
        }
    };
    let (status, body) = post(vec![], "{}").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, body) = post(vec![("Authorization", "apikey wrong".into())], "{}").await;
    assert_eq!(status, 401);
    assert_eq!(body["reason"], "invalid API key");
    let key = vec![("Authorization", format!("apikey {API_KEY}"))];
    let (status, body) = post(key.clone(), "{not json").await;
    assert_eq!(status, 400);
    assert!(
        body["reason"].as_str().unwrap().starts_with("invalid JSON"),
        "{body}"
    );
    let (status, body) = post(
        key.clone(),
        r#"{"event_type":"media.uploaded","payload":{"media_id":"m1"}}"#,
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "invalid_event");
    assert!(
        body["reason"].as_str().unwrap().contains("user_id"),
        "{body}"
    );
    let (status, body) = post(key, r#"{"event_type":"no.such.subject","payload":{}}"#).await;
    assert_eq!(status, 422, "{body}");

    let off = TestNode::start_with(|c| c.api.key.clear()).await;
    let (status, body) = off.api_post("/api/broadcast", &json!({})).await;
    assert_eq!(status, 401);
    assert!(
        body["reason"].as_str().unwrap().contains("api.key"),
        "{body}"
    );
}

#[tokio::test]
async fn broadcast_presence_and_disconnect_through_the_api() {
    let node = TestNode::start().await;
    let mut ws = node.connect("alice").await;
    ws.join_ok("chat:room:lobby").await;

    let (status, body) = node
        .api_post(
            "/api/broadcast",
            &json!({"topic": "chat:room:lobby", "event": "announcement", "payload": {"text": "maintenance at 10"}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["subscribers"], 1);
    let push = ws.assert_push("chat:room:lobby", "announcement").await;
    assert_eq!(push[4]["text"], "maintenance at 10");
    let (status, _) = node
        .api_post(
            "/api/broadcast",
            &json!({"topic": "chat:room:lobby", "event": "phx_close"}),
        )
        .await;
    assert_eq!(status, 400);

    let auth = format!("apikey {API_KEY}");
    let (status, text) = http(
        node.addr,
        "GET",
        "/api/presence/chat:room:lobby",
        &[("Authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(status, 200);
    let list: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list["alice"]["metas"][0]["status"], "online");

    let mut other = node.connect("bob").await;
    let (status, body) = node
        .api_post("/api/disconnect", &json!({"user_id": "alice"}))
        .await;
    assert_eq!((status, body["disconnected"].as_u64()), (200, Some(1)));
    let (code, _) = common::close_of(&mut ws).await;
    assert_eq!(code, 1000);
    other.heartbeat().await;
}
