//! The NATS bus, against a real `nats-server -js` on a random port: work in through
//! JetStream, results and realtime events out, dead letters, redelivery when a node
//! dies mid-job, and a NATS restart under a running node.

mod common;

use std::time::Duration;

use armoricore::config::Config;
use armoricore::jobs::Jobs;
use common::jobs::{Behaviour, TestJob, media_uploaded};
use common::nats::{NatsServer, Proxy};
use common::{TestNode, WAIT, eventually};
use futures_util::{FutureExt, StreamExt};
use serde_json::{Value, json};

/// Node settings for bus tests: short leases and retries so tests stay quick.
fn on(url: String) -> impl FnOnce(&mut Config) {
    move |c| {
        c.bus.url = url;
        c.bus.ack_wait_ms = 1000;
        c.bus.backoff_ms = vec![50];
    }
}

fn media_jobs(job: &TestJob) -> Jobs {
    Jobs::new().with("media.uploaded", job.clone())
}

/// Wait until the node has created the work stream and its consumers: only then
/// does a plain NATS publish of work land anywhere.
async fn work_queues_ready(client: &async_nats::Client) {
    let js = async_nats::jetstream::new(client.clone());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(stream) = js.get_stream("ARMORICORE_WORK").await
            && stream
                .consumer_info("armoricore-media-uploaded")
                .await
                .is_ok()
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "work queues not created"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Messages in a JetStream stream now.
async fn stream_len(client: &async_nats::Client, name: &str) -> u64 {
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js.get_stream(name).await.unwrap();
    stream.info().await.unwrap().state.messages
}

async fn subscribe(client: &async_nats::Client, subject: &str) -> async_nats::Subscriber {
    let sub = client.subscribe(subject.to_string()).await.unwrap();
    client.flush().await.unwrap();
    sub
}

async fn next_json(sub: &mut async_nats::Subscriber, within: Duration) -> Value {
    let m = tokio::time::timeout(within, sub.next())
        .await
        .unwrap_or_else(|_| panic!("nothing on {} in time", "subscription"))
        .unwrap();
    serde_json::from_slice(&m.payload).unwrap()
}

async fn publish(client: &async_nats::Client, subject: &str, body: &Value) {
    client
        .publish(subject.to_string(), body.to_string().into())
        .await
        .unwrap();
    client.flush().await.unwrap();
}

#[tokio::test]
async fn a_work_event_reaches_its_handler_and_the_result_comes_back() {
    let nats = NatsServer::start().await;
    let job = TestJob::new(Behaviour::Succeed);
    let node = TestNode::start_with_jobs(on(nats.url()), media_jobs(&job)).await;
    let client = nats.client().await;
    work_queues_ready(&client).await;
    let mut ready = subscribe(&client, "media.ready").await;
    let mut ws = node.connect("u1").await;
    ws.join_ok("user:u1").await;

    publish(&client, "media.uploaded", &media_uploaded("e1", "m1", "u1")).await;

    let result = next_json(&mut ready, WAIT).await;
    assert_eq!(result["event_type"], "media.ready");
    assert_eq!(result["source"], "armoricore");
    assert!(result["event_id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(result["payload"]["media_id"], "m1");
    assert_eq!(result["payload"]["user_id"], "u1");
    assert_eq!(
        result["payload"]["playback_urls"]["hls"],
        "https://cdn.example/m1/master.m3u8"
    );
    let push = ws.assert_push("user:u1", "media_ready").await;
    assert_eq!(push[4]["media_id"], "m1");
    assert_eq!(job.calls(), vec![("e1".to_string(), 1)]);
    // The owner may now follow the media's own topic.
    ws.join_ok("media:m1").await;
    eventually("the acknowledged message left the work queue", || {
        stream_len(&client, "ARMORICORE_WORK").map(|n| n == 0)
    })
    .await;
    assert_eq!(
        node.metric(r#"armoricore_jobs_total{result="done",subject="media.uploaded"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn chat_messages_and_presence_changes_are_published() {
    let nats = NatsServer::start().await;
    let node = TestNode::start_with(on(nats.url())).await;
    let client = nats.client().await;
    let mut chat = subscribe(&client, "chat.message").await;
    let mut presence = subscribe(&client, "presence.update").await;
    eventually("bus connected", || async {
        node.metric("armoricore_bus_connected").await == 1.0
    })
    .await;

    let mut ws = node.connect("alice").await;
    let jr = ws.join_ok("chat:room:lobby").await;
    let online = next_json(&mut presence, WAIT).await;
    assert_eq!(online["event_type"], "presence.update");
    assert_eq!(online["payload"]["user_id"], "alice");
    assert_eq!(online["payload"]["room_id"], "lobby");
    assert_eq!(online["payload"]["status"], "online");

    let r = ws
        .push(
            Some(&jr),
            "chat:room:lobby",
            "new_message",
            json!({"content": "hello"}),
        )
        .await;
    let reply = ws.assert_reply(&r).await;
    let event = next_json(&mut chat, WAIT).await;
    assert_eq!(event["event_type"], "chat.message");
    let p = &event["payload"];
    assert_eq!(p["room_id"], "lobby");
    assert_eq!(p["user_id"], "alice");
    assert_eq!(p["content"], "hello");
    assert_eq!(p["message_id"], reply["response"]["id"]);
    assert_eq!(p["offset"], reply["response"]["offset"]);

    let r = ws
        .push(Some(&jr), "chat:room:lobby", "phx_leave", json!({}))
        .await;
    ws.assert_reply(&r).await;
    let offline = next_json(&mut presence, WAIT).await;
    assert_eq!(offline["payload"]["status"], "offline");
}

#[tokio::test]
async fn an_invalid_event_lands_on_the_dead_letter_subject_with_its_reason() {
    let nats = NatsServer::start().await;
    let job = TestJob::new(Behaviour::Succeed);
    let node = TestNode::start_with_jobs(on(nats.url()), media_jobs(&job)).await;
    let client = nats.client().await;
    work_queues_ready(&client).await;
    let mut dlq = subscribe(&client, "armoricore.dlq.>").await;

    let mut event = media_uploaded("bad-1", "m1", "u1");
    event["payload"]
        .as_object_mut()
        .unwrap()
        .remove("file_path");
    publish(&client, "media.uploaded", &event).await;
    publish(&client, "media.uploaded", &json!("not an object")).await;

    let letter = next_json(&mut dlq, WAIT).await;
    assert_eq!(letter["subject"], "media.uploaded");
    assert!(
        letter["reason"].as_str().unwrap().contains("file_path"),
        "{letter}"
    );
    assert_eq!(
        letter["event"]["event_id"], "bad-1",
        "the event is kept whole"
    );
    let letter = next_json(&mut dlq, WAIT).await;
    assert!(
        letter["reason"].as_str().unwrap().contains("object"),
        "{letter}"
    );
    assert!(
        job.calls().is_empty(),
        "invalid events never reach the handler"
    );
    // Kept by the dead-letter stream, not merely published.
    assert_eq!(stream_len(&client, "ARMORICORE_DLQ").await, 2);
    assert_eq!(
        node.metric(
            r#"armoricore_bus_dead_letters_total{reason="invalid",subject="media.uploaded"}"#
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn a_node_killed_mid_job_leaves_the_work_to_another_node() {
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let mut ready = subscribe(&client, "media.ready").await;
    // Node A reaches NATS through a proxy: cutting it is node A dying (kill -9).
    let proxy = Proxy::start(nats.addr()).await;
    let hung = TestJob::new(Behaviour::Hang);
    let _a = TestNode::start_with_jobs(on(proxy.url()), media_jobs(&hung)).await;
    work_queues_ready(&client).await;
    publish(&client, "media.uploaded", &media_uploaded("e1", "m1", "u1")).await;
    hung.called(1).await;
    // Its lease is kept while it runs: longer than ack_wait, nothing moves.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let done = TestJob::new(Behaviour::Succeed);
    let _b = TestNode::start_with_jobs(on(nats.url()), media_jobs(&done)).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(done.calls().is_empty(), "node A still holds the job");

    proxy.cut().await;
    let result = next_json(&mut ready, Duration::from_secs(10)).await;
    assert_eq!(result["payload"]["media_id"], "m1");
    assert_eq!(done.calls(), vec![("e1".to_string(), 2)], "a redelivery");
}

#[tokio::test]
async fn a_stopping_node_hands_its_running_jobs_back_at_once() {
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let mut ready = subscribe(&client, "media.ready").await;
    // A 30 s ack wait: only a hand-back can bring the job to node B in time.
    let long_lease = |url: String| {
        move |c: &mut Config| {
            c.bus.url = url;
            c.bus.ack_wait_ms = 30_000;
        }
    };
    let hung = TestJob::new(Behaviour::Hang);
    let a = TestNode::start_with_jobs(long_lease(nats.url()), media_jobs(&hung)).await;
    work_queues_ready(&client).await;
    publish(&client, "media.uploaded", &media_uploaded("e1", "m1", "u1")).await;
    hung.called(1).await;
    let done = TestJob::new(Behaviour::Succeed);
    let _b = TestNode::start_with_jobs(long_lease(nats.url()), media_jobs(&done)).await;
    a.shutdown().await;
    // Well within the 30 s ack wait: the job was negatively acknowledged.
    let result = next_json(&mut ready, Duration::from_secs(5)).await;
    assert_eq!(result["payload"]["media_id"], "m1");
    // (nats-server 2.9 does not count a plain -NAK as a delivery attempt.)
    let calls = done.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, "e1");
}

#[tokio::test]
async fn a_failing_job_is_retried_then_reported_and_dead_lettered() {
    let nats = NatsServer::start().await;
    let job = TestJob::new(Behaviour::FailRetry);
    let node = TestNode::start_with_jobs(
        |c: &mut Config| {
            on(nats.url())(c);
            c.bus.max_deliver = 3;
        },
        media_jobs(&job),
    )
    .await;
    let client = nats.client().await;
    work_queues_ready(&client).await;
    let mut failed = subscribe(&client, "media.failed").await;
    let mut dlq = subscribe(&client, "armoricore.dlq.media.uploaded").await;

    publish(&client, "media.uploaded", &media_uploaded("e1", "m1", "u1")).await;

    let event = next_json(&mut failed, WAIT).await;
    assert_eq!(event["payload"]["media_id"], "m1");
    assert_eq!(event["payload"]["user_id"], "u1");
    assert_eq!(event["payload"]["reason"], "provider timed out");
    assert_eq!(event["payload"]["request_event_id"], "e1");
    let letter = next_json(&mut dlq, WAIT).await;
    assert_eq!(letter["delivered"], 3);
    assert_eq!(
        letter["reason"],
        "max deliveries reached: provider timed out"
    );
    let deliveries: Vec<u32> = job.calls().iter().map(|(_, d)| *d).collect();
    assert_eq!(deliveries, vec![1, 2, 3]);
    assert_eq!(
        node.metric(r#"armoricore_bus_redeliveries_total{subject="media.uploaded"}"#)
            .await,
        2.0
    );
}

#[tokio::test]
async fn a_message_whose_last_delivery_was_never_acknowledged_is_dead_lettered() {
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let mut dlq = subscribe(&client, "armoricore.dlq.media.uploaded").await;
    let once = |url: String| {
        move |c: &mut Config| {
            on(url)(c);
            c.bus.max_deliver = 1;
        }
    };
    let proxy = Proxy::start(nats.addr()).await;
    let hung = TestJob::new(Behaviour::Hang);
    let _a = TestNode::start_with_jobs(once(proxy.url()), media_jobs(&hung)).await;
    work_queues_ready(&client).await;
    publish(&client, "media.uploaded", &media_uploaded("e1", "m1", "u1")).await;
    hung.called(1).await;
    let done = TestJob::new(Behaviour::Succeed);
    let _b = TestNode::start_with_jobs(once(nats.url()), media_jobs(&done)).await;
    proxy.cut().await;

    let letter = next_json(&mut dlq, Duration::from_secs(10)).await;
    assert_eq!(
        letter["reason"],
        "max deliveries reached without acknowledgement"
    );
    assert_eq!(letter["event"]["event_id"], "e1");
    assert!(done.calls().is_empty(), "no delivery was left to run it");
    eventually("the dead letter left the work stream", || {
        stream_len(&client, "ARMORICORE_WORK").map(|n| n == 0)
    })
    .await;
}

#[tokio::test]
async fn a_repeated_event_id_is_handled_once() {
    let nats = NatsServer::start().await;
    let job = TestJob::new(Behaviour::Succeed);
    let node = TestNode::start_with_jobs(on(nats.url()), media_jobs(&job)).await;
    let client = nats.client().await;
    work_queues_ready(&client).await;
    let mut ready = subscribe(&client, "media.ready").await;
    publish(
        &client,
        "media.uploaded",
        &media_uploaded("same", "m1", "u1"),
    )
    .await;
    next_json(&mut ready, WAIT).await;
    publish(
        &client,
        "media.uploaded",
        &media_uploaded("same", "m1", "u1"),
    )
    .await;
    eventually("the repeat was acknowledged as a duplicate", || async {
        node.metric(r#"armoricore_bus_duplicates_total{subject="media.uploaded"}"#)
            .await
            == 1.0
    })
    .await;
    assert_eq!(job.calls().len(), 1);
}

#[tokio::test]
async fn the_node_rides_out_a_nats_restart() {
    let mut nats = NatsServer::start().await;
    let job = TestJob::new(Behaviour::Succeed);
    let node = TestNode::start_with_jobs(on(nats.url()), media_jobs(&job)).await;
    work_queues_ready(&nats.client().await).await;
    // The streams can be visible to the client a moment before the node marks its
    // work queues prepared.
    eventually("/ready says ready", || async {
        node.get("/ready").await.1.contains(r#""status":"ready""#)
    })
    .await;

    nats.kill();
    eventually("/ready reports the bus down", || async {
        let (status, body) = node.get("/ready").await;
        status == 200 && body.contains(r#""status":"degraded""#) && body.contains(r#""down""#)
    })
    .await;
    // Realtime keeps working meanwhile, and its events wait in the buffer.
    let mut ws = node.connect("alice").await;
    let jr = ws.join_ok("chat:room:lobby").await;

    nats.restart().await;
    eventually("/ready reports the bus up again", || async {
        node.get("/ready").await.1.contains(r#""status":"ready""#)
    })
    .await;
    assert!(node.metric("armoricore_bus_reconnects_total").await >= 1.0);
    let client = nats.client().await;
    let mut ready = subscribe(&client, "media.ready").await;
    let mut chat = subscribe(&client, "chat.message").await;
    publish(&client, "media.uploaded", &media_uploaded("e1", "m1", "u1")).await;
    let result = next_json(&mut ready, Duration::from_secs(10)).await;
    assert_eq!(result["payload"]["media_id"], "m1");
    let r = ws
        .push(
            Some(&jr),
            "chat:room:lobby",
            "new_message",
            json!({"content": "back"}),
        )
        .await;
    ws.assert_reply(&r).await;
    let event = next_json(&mut chat, WAIT).await;
    assert_eq!(event["payload"]["content"], "back");
}

#[tokio::test]
async fn a_node_starts_while_nats_is_down_and_connects_when_it_comes() {
    let mut nats = NatsServer::start().await;
    nats.kill();
    let job = TestJob::new(Behaviour::Succeed);
    let node = TestNode::start_with_jobs(on(nats.url()), media_jobs(&job)).await;
    let (status, body) = node.get("/ready").await;
    assert_eq!(status, 200, "serves its clients meanwhile");
    assert!(body.contains(r#""status":"degraded""#), "{body}");
    let mut ws = node.connect("alice").await;
    ws.join_ok("chat:room:lobby").await;

    nats.restart().await;
    let client = nats.client().await;
    work_queues_ready(&client).await;
    eventually("/ready reports the bus up", || async {
        node.get("/ready").await.1.contains(r#""status":"ready""#)
    })
    .await;
    let mut ready = subscribe(&client, "media.ready").await;
    publish(&client, "media.uploaded", &media_uploaded("e1", "m1", "u1")).await;
    assert_eq!(
        next_json(&mut ready, WAIT).await["payload"]["media_id"],
        "m1"
    );
}

#[tokio::test]
async fn a_node_told_not_to_answer_unsupported_work_leaves_it_to_others() {
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let mut failed = subscribe(&client, "notification.failed").await;
    let _quiet = TestNode::start_with(|c: &mut Config| {
        on(nats.url())(c);
        c.bus.answer_unsupported = false;
    })
    .await;
    work_queues_ready(&client).await;
    let request = json!({
        "event_id": "n1", "event_type": "notification.requested",
        "payload": {"user_id": "u1", "notification_type": "email", "title": "Hi",
                    "body": "There", "data": {"email": "u1@example.com"}}
    });
    publish(&client, "notification.requested", &request).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        stream_len(&client, "ARMORICORE_WORK").await,
        1,
        "left in the queue"
    );

    let _answering = TestNode::start_with(on(nats.url())).await;
    let event = next_json(&mut failed, WAIT).await;
    assert_eq!(event["payload"]["reason"], "not_supported");
    assert_eq!(event["payload"]["request_event_id"], "n1");
}
