//! Notifications on the NATS bus, with real `armoricore` processes: a node killed
//! (`kill -9`) in the middle of a send leaves the job in JetStream, another node
//! gets it once the lease runs out, and the provider sees the notification at
//! most twice: the send in flight when the node died and the redelivery
//! (at-least-once; docs/notifications.md).

mod common;

use std::time::Duration;

use common::binary::{Server, armoricore};
use common::nats::NatsServer;
use common::push::{HOLD, fcm_stand_in};
use futures_util::StreamExt;
use serde_json::{Value, json};

async fn next_json(sub: &mut async_nats::Subscriber, within: Duration) -> Option<Value> {
    let m = tokio::time::timeout(within, sub.next()).await.ok()??;
    Some(serde_json::from_slice(&m.payload).unwrap())
}

/// Until the node has created the work stream and the notification consumer.
async fn work_queue_ready(client: &async_nats::Client) {
    let js = async_nats::jetstream::new(client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(stream) = js.get_stream("ARMORICORE_WORK").await
            && stream
                .consumer_info("armoricore-notification-requested")
                .await
                .is_ok()
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "work queue not created"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_node_killed_mid_send_leaves_the_notification_to_another_node() {
    let dir = tempfile::tempdir().unwrap();
    let (stand, base, account) = fcm_stand_in(dir.path()).await;
    // The first send to d1 is never answered: node A dies waiting for it.
    stand
        .seen
        .lock()
        .script
        .insert("d1".into(), vec![(HOLD, Value::Null, None)]);
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let mut sent = client.subscribe("notification.sent").await.unwrap();
    let mut failed = client.subscribe("notification.failed").await.unwrap();
    client.flush().await.unwrap();
    let node = |data: &std::path::Path| {
        let mut cmd = armoricore(data);
        cmd.env("ARMORICORE_BUS__URL", nats.url())
            .env("ARMORICORE_BUS__ACK_WAIT_MS", "1000")
            .env(
                "ARMORICORE_NOTIFICATIONS__FCM__SERVICE_ACCOUNT_FILE",
                &account,
            )
            .env("ARMORICORE_NOTIFICATIONS__FCM__BASE_URL", &base);
        Server::start(cmd)
    };
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = node(data_a.path()).await;
    work_queue_ready(&client).await;

    let event = json!({"event_id": "ev-k1", "event_type": "notification.requested",
        "timestamp": "2026-11-27T12:00:00Z", "source": "backend",
        "payload": {"user_id": "u1", "notification_id": "n-kill", "notification_type": "push",
            "title": "Hello", "body": "World", "tokens": [{"platform": "android", "token": "d1"}]}});
    let js = async_nats::jetstream::new(client.clone());
    js.publish("notification.requested", event.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    common::eventually("node A sends", || async {
        stand.seen.lock().requests.len() == 1
    })
    .await;
    a.child.kill().await.unwrap(); // SIGKILL: no hand-back, no goodbye

    let b = node(data_b.path()).await;
    let e = next_json(&mut sent, Duration::from_secs(15))
        .await
        .expect("notification.sent from node B");
    assert_eq!(e["payload"]["notification_id"], "n-kill");
    assert!(
        e["payload"]["provider_ids"][0]["id"]
            .as_str()
            .unwrap()
            .starts_with("projects/test-project/messages/")
    );
    // Several lease periods later: nothing more was sent or reported.
    assert!(
        next_json(&mut sent, Duration::from_secs(3)).await.is_none(),
        "reported sent once"
    );
    assert!(
        next_json(&mut failed, Duration::from_millis(10))
            .await
            .is_none()
    );
    {
        let seen = stand.seen.lock();
        assert_eq!(
            seen.requests.len(),
            2,
            "the send node A died in, and node B's: {:?}",
            seen.requests
        );
        assert!(seen.requests.iter().all(|r| r["message"]["token"] == "d1"));
    }
    // Acknowledged: the work queue holds nothing.
    let mut stream = js.get_stream("ARMORICORE_WORK").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 0);
    b.terminate();
    assert!(b.exit(Duration::from_secs(10)).await.success());
}
