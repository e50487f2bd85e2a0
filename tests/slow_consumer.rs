//! A client that stops reading while 20 MB is broadcast to its topic is closed as a
//! slow consumer; the server's memory stays flat and the other subscribers get every
//! message. (Alone in its file: it reads this process's RSS.)

mod common;

use std::time::Duration;

use common::TestNode;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const TOPIC: &str = "comments:stream:flood";
const MESSAGES: usize = 200;
const CONTENT: usize = 100_000; // 200 × 100 KB = 20 MB

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connect and join `TOPIC`, waiting for the join reply.
async fn joined(node: &TestNode, user: &str) -> Ws {
    let url = node.ws_url(&format!("vsn=2.0.0&token={}", node.token(user)));
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let join = json!(["1", "1", TOPIC, "phx_join", {}]).to_string();
    ws.send(WsMessage::text(join)).await.unwrap();
    while let Some(Ok(msg)) = ws.next().await {
        if msg.to_text().unwrap_or("").contains("phx_reply") {
            return ws;
        }
    }
    panic!("no join reply");
}

/// Read until `n` broadcasts of `TOPIC` arrived; their offsets, in arrival order.
async fn offsets(ws: &mut Ws, n: usize) -> Vec<u64> {
    let mut seen = Vec::new();
    while seen.len() < n {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("messages keep coming")
            .expect("open")
            .expect("no error");
        let Ok(text) = msg.to_text() else { continue };
        let frame: Value = serde_json::from_str(text).unwrap();
        if frame[3] == "new_comment" {
            seen.push(frame[4]["offset"].as_u64().unwrap());
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_closed_and_memory_stays_flat() {
    let node = TestNode::start_with(|c| {
        c.socket.max_frame_bytes = 256 * 1024;
        c.channels.max_content_chars = CONTENT;
        // No history and no database: the ring would keep 100 × 100 KB on purpose,
        // and SQLite's page cache (32 MB per connection) would fill with the 20 MB
        // written; neither is what this test measures.
        c.history.rules.clear();
        c.database.url = "off".into();
        // The sender pushes 200 messages at once.
        c.limits.connection_events_burst = 1000;
        c.limits.user_events_burst = 1000;
    })
    .await;
    let mut victim = joined(&node, "victim").await;
    let mut bob = joined(&node, "bob").await;
    let bob_reads = tokio::spawn(async move { offsets(&mut bob, MESSAGES).await });
    let sender = joined(&node, "sender").await;
    let before = rss_kib();

    // The sender pushes 20 MB and reads everything it gets back.
    let content = "x".repeat(CONTENT);
    let (mut tx, mut rx) = sender.split();
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
    for i in 0..MESSAGES {
        let push = json!(["1", i.to_string(), TOPIC, "new_comment", {"content": content}]);
        tx.send(WsMessage::text(push.to_string())).await.unwrap();
    }
    let got = bob_reads.await.unwrap();
    let after = rss_kib();

    // Bob got every message, in order, no gap.
    let first = got[0];
    assert_eq!(got, (first..first + MESSAGES as u64).collect::<Vec<_>>());
    // The victim was closed as a slow consumer (frames the kernel had already
    // buffered come first).
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), victim.next()).await {
            Ok(Some(Ok(WsMessage::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let close = close.expect("a close code");
    assert_eq!(u16::from(close.code), 1008, "{close:?}");
    assert!(close.reason.contains("slow consumer"), "{close:?}");
    assert_eq!(
        node.metric("armoricore_slow_consumer_disconnects_total")
            .await,
        1.0
    );
    let growth_mib = after.saturating_sub(before) as f64 / 1024.0;
    eprintln!(
        "RSS {before} KiB -> {after} KiB while 20 MB went to a stalled client: +{growth_mib:.1} MiB"
    );
    assert!(growth_mib < 8.0, "RSS grew by {growth_mib:.1} MiB");
    drain.abort();
    node.shutdown().await;
}
