//! Bad frames of every class get a close code with a reason — never a crash — and
//! the connections that did nothing wrong carry on.

mod common;

use std::time::Duration;

use common::{PhxClient, TestNode, WS_CONNECTIONS, close_of, eventually, healthy, still_serving};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Send `frame` on a fresh connection; the server must close it with `code`.
async fn send_expecting_close(node: &TestNode, frame: WsMessage, code: u16) -> String {
    let mut bad = node.connect("mallory").await;
    bad.heartbeat().await; // connected and served before the bad frame
    bad.send_raw(frame.clone()).await;
    let (got, reason) = close_of(&mut bad).await;
    assert_eq!(got, code, "close code after {frame:?} (reason {reason:?})");
    assert!(
        !reason.is_empty(),
        "close {code} after {frame:?} has a reason"
    );
    reason
}

// ---------------------------------------------------------------- frames

#[tokio::test]
async fn malformed_json_closes_1007_with_a_reason() {
    let node = TestNode::start().await;
    let mut ok = healthy(&node).await;
    for text in ["not json", r#"["1","2","chat:room:1","phx_join",{}"#, "{"] {
        let reason = send_expecting_close(&node, WsMessage::text(text), 1007).await;
        assert!(reason.contains("malformed"), "{text:?} → {reason:?}");
        still_serving(&node, &mut ok).await;
    }
    assert_eq!(
        node.metric(r#"armoricore_bad_frames_total{reason="malformed"}"#)
            .await,
        3.0
    );
    node.shutdown().await;
}

#[tokio::test]
async fn wrong_arity_closes_1007() {
    let node = TestNode::start().await;
    let mut ok = healthy(&node).await;
    for text in [
        r#"["1","2","t","e"]"#,
        r#"["1","2","t","e",{},6]"#,
        r#"[]"#,
        r#"{"topic":"t","event":"e","payload":{},"ref":"1"}"#, // a V1 object on a V2 socket
    ] {
        send_expecting_close(&node, WsMessage::text(text), 1007).await;
        still_serving(&node, &mut ok).await;
    }
    node.shutdown().await;
}

#[tokio::test]
async fn numeric_ref_closes_1007() {
    let node = TestNode::start().await;
    let mut ok = healthy(&node).await;
    for text in [
        r#"["1",2,"phoenix","heartbeat",{}]"#,
        r#"[1,"2","chat:room:1","phx_join",{}]"#,
    ] {
        send_expecting_close(&node, WsMessage::text(text), 1007).await;
        still_serving(&node, &mut ok).await;
    }
    node.shutdown().await;
}

#[tokio::test]
async fn v1_frame_missing_fields_closes_1007() {
    let node = TestNode::start().await;
    let mut ok = healthy(&node).await;
    let url = node.ws_url(&format!("vsn=1.0.0&token={}", node.token("mallory")));
    let mut bad = PhxClient::connect(&url).await.unwrap();
    bad.send_raw(WsMessage::text(r#"{"topic":"t"}"#)).await;
    let (code, reason) = close_of(&mut bad).await;
    assert_eq!(code, 1007, "{reason}");
    assert!(!reason.is_empty());
    still_serving(&node, &mut ok).await;
    node.shutdown().await;
}

#[tokio::test]
async fn binary_frame_closes_1003() {
    let node = TestNode::start().await;
    let mut ok = healthy(&node).await;
    let frame = WsMessage::binary(br#"[null,"1","phoenix","heartbeat",{}]"#.to_vec());
    send_expecting_close(&node, frame, 1003).await;
    assert_eq!(
        node.metric(r#"armoricore_bad_frames_total{reason="binary"}"#)
            .await,
        1.0
    );
    still_serving(&node, &mut ok).await;
    node.shutdown().await;
}

/// A well-formed `new_message` push of exactly `len` bytes.
fn message_of_len(len: usize) -> String {
    let empty = r#"[null,"9","chat:room:1","new_message",{"content":""}]"#;
    let content = "x".repeat(len - empty.len());
    let text = json!([null, "9", "chat:room:1", "new_message", {"content": content}]).to_string();
    assert_eq!(text.len(), len);
    text
}

#[tokio::test]
async fn oversize_frame_closes_1009() {
    let node = TestNode::start_with(|c| c.socket.max_frame_bytes = 1024).await;
    let mut ok = healthy(&node).await;

    // Just under the limit is served.
    let mut fits = node.connect("mallory").await;
    fits.join_ok("chat:room:1").await;
    fits.send_raw(WsMessage::text(message_of_len(1000))).await;
    assert_eq!(fits.assert_reply("9").await["status"], "ok");

    let reason = send_expecting_close(&node, WsMessage::text(message_of_len(4096)), 1009).await;
    assert!(reason.contains("too large"), "{reason}");
    assert_eq!(
        node.metric(r#"armoricore_bad_frames_total{reason="oversize"}"#)
            .await,
        1.0
    );
    assert_eq!(
        node.metric(r#"armoricore_bad_frames_total{reason="malformed"}"#)
            .await,
        0.0
    );
    fits.heartbeat().await;
    drop(fits);
    still_serving(&node, &mut ok).await;
    node.shutdown().await;
}

// ---------------------------------------------------------------- heartbeat timeout

#[tokio::test]
async fn silent_socket_is_closed_1001_and_a_heartbeating_one_stays() {
    let node = TestNode::start_with(|c| c.socket.heartbeat_timeout_ms = 300).await;
    let mut silent = node.connect("silent").await;
    let mut chatty = node.connect("chatty").await;
    let started = tokio::time::Instant::now();

    let silent_closed = async {
        let close = close_of(&mut silent).await;
        (close, started.elapsed())
    };
    let chatty_alive = async {
        // phoenix.js sends heartbeats on a timer; this is that timer, not a poll.
        while started.elapsed() < Duration::from_millis(1200) {
            chatty.heartbeat().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (((code, reason), after), ()) = tokio::join!(silent_closed, chatty_alive);
    assert_eq!(code, 1001, "{reason}");
    assert!(reason.contains("heartbeat"), "{reason}");
    assert!(
        after >= Duration::from_millis(250),
        "closed after {after:?}, before the 300 ms timeout"
    );
    assert!(
        after < Duration::from_secs(3),
        "closed only after {after:?}"
    );

    // Well past 1 s (four timeouts), the heartbeating client is still served.
    chatty.heartbeat().await;
    chatty.join_ok("chat:room:1").await;
    eventually("the silent connection is gone", || async {
        node.metric(WS_CONNECTIONS).await == 1.0
    })
    .await;
    node.shutdown().await;
}

#[tokio::test]
async fn invalid_utf8_text_frame_closes_1007() {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let node = TestNode::start().await;
    let mut ok = healthy(&node).await;
    // A text frame whose payload is not UTF-8 (RFC 6455 §8.1: fail with 1007).
    let frame = Frame::message(
        b"[null,\"1\",\"phoenix\",\"heartbeat\",\xff\xfe]".to_vec(),
        OpCode::Data(Data::Text),
        true,
    );
    send_expecting_close(&node, WsMessage::Frame(frame), 1007).await;
    still_serving(&node, &mut ok).await;
    node.shutdown().await;
}

#[tokio::test]
async fn a_long_multibyte_error_reason_is_cut_safely() {
    // serde's message quotes the client's string: 60 two-byte characters put the
    // 120-byte cut in the middle of one.
    let node = TestNode::start().await;
    let mut ok = healthy(&node).await;
    // Both parities, so one of them lands the cut mid-character.
    for prefix in ["", "a"] {
        let frame = serde_json::to_string(&format!("{prefix}{}", "é".repeat(60))).unwrap();
        let reason = send_expecting_close(&node, WsMessage::text(frame), 1007).await;
        assert!(reason.len() <= 123, "{reason}");
        still_serving(&node, &mut ok).await;
    }
    node.shutdown().await;
}

#[tokio::test]
async fn a_slow_consumer_is_closed_and_its_session_ends_at_once() {
    let node = TestNode::start_with(|c| {
        c.socket.outbound_queue_frames = 8;
        c.socket.max_frame_bytes = 256 * 1024;
        c.channels.max_content_chars = 200_000;
    })
    .await;
    let mut sender = node.connect("sender").await;
    sender.join_ok("comments:stream:1").await;
    // The victim joins, then never reads again.
    let mut victim = node.connect("victim").await;
    victim.join_ok("comments:stream:1").await;
    let big = "x".repeat(100_000);
    let hub = node.node().hub().clone();
    for _ in 0..200 {
        let r = sender
            .push(
                None,
                "comments:stream:1",
                "new_comment",
                json!({"content": big}),
            )
            .await;
        sender.assert_reply(&r).await;
        if hub.sessions.len() == 1 {
            break;
        }
    }
    eventually("the victim's session ended", || {
        let hub = hub.clone();
        async move { hub.sessions.len() == 1 && hub.pubsub.subscriber_count("comments:stream:1") == 1 }
    })
    .await;
    assert!(
        node.metric("armoricore_slow_consumer_disconnects_total")
            .await
            >= 1.0
    );
    sender.heartbeat().await;
    drop(victim);
    node.shutdown().await;
}
