//! Calls through the SFU: real `webrtc` crate peers (an implementation
//! independent of the server's str0m) joining over the real WebSocket
//! signaling, media over real UDP on loopback.

#[path = "common/call_client.rs"]
mod call_client;
mod common;
#[path = "common/udp_relay.rs"]
mod udp_relay;
#[path = "common/webrtc_peer.rs"]
mod webrtc_peer;

use std::sync::Arc;
use std::time::Duration;

use call_client::CallClient;
use common::TestNode;
use serde_json::{Value, json};
use udp_relay::UdpRelay;
use webrtc_peer::{Kind, PeerOptions, Received, vp8_payload};

const AV: PeerOptions = PeerOptions {
    audio: true,
    video: true,
};

async fn node() -> TestNode {
    TestNode::start_with(|c| {
        c.calls.addresses = vec!["127.0.0.1".parse().unwrap()];
        c.calls.empty_grace_ms = 200;
    })
    .await
}

/// The payload `user` sends as packet `i` of `kind`: recognisable bytes, so a
/// receiver can check each one arrived intact.
fn payload(user: &str, kind: Kind, i: u32) -> Vec<u8> {
    let body: Vec<u8> = format!("{user}:{kind:?}:{i}:")
        .into_bytes()
        .into_iter()
        .chain((0..(i % 200) as u8).map(|b| b.wrapping_mul(31)))
        .collect();
    match kind {
        Kind::Audio => body,
        Kind::Video => vp8_payload(i.is_multiple_of(30), &body),
    }
}

/// Send `count` packets of each local kind, 10 ms apart.
async fn send_media(c: &CallClient, kinds: &[Kind], from: u32, count: u32) {
    for i in from..from + count {
        for kind in kinds {
            c.peer
                .send(*kind, &payload(&c.user, *kind, i), true)
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The track `from` publishes of `kind`, as `to` receives it.
fn track_of(to: &CallClient, from: &CallClient, kind: Kind) -> Option<Received> {
    to.peer
        .received()
        .into_iter()
        .find(|r| r.stream_id == from.participant_id && r.kind == kind)
}

/// Every payload `to` got from `from`'s `kind` track is one `from` sent, intact
/// and in order; returns how many.
fn check_intact(to: &CallClient, from: &CallClient, kind: Kind) -> usize {
    let Some(track) = track_of(to, from, kind) else {
        return 0;
    };
    let mut last = None;
    for p in &track.packets {
        let text = String::from_utf8_lossy(&p.payload).to_string();
        let prefix = format!("{}:{kind:?}:", from.user);
        let at = text.find(&prefix).unwrap_or_else(|| {
            panic!(
                "{} got a {kind:?} packet not from {}: {:?}",
                to.user, from.user, p.payload
            )
        });
        let i: u32 = text[at + prefix.len()..]
            .split(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            p.payload,
            payload(&from.user, kind, i),
            "{} ← {} {kind:?} #{i}",
            to.user,
            from.user
        );
        if let Some(last) = last {
            assert!(
                i > last,
                "{} ← {} {kind:?}: #{i} after #{last}",
                to.user,
                from.user
            );
        }
        last = Some(i);
    }
    track.packets.len()
}

/// Everyone sends audio and video (numbered from `from`) until each has 20
/// packets of each kind from each other one.
async fn exchange(clients: &[&CallClient], from: u32) {
    let sending = clients
        .iter()
        .map(|c| send_media(c, &[Kind::Audio, Kind::Video], from, 1000));
    tokio::select! {
        _ = futures_util::future::join_all(sending) => panic!("sent all before media arrived"),
        _ = wait_media(clients, 20, Duration::from_secs(20)) => {}
    }
}

/// Server SDP rewritten so that this client's media goes through `relay`.
fn via(node: &TestNode, relay: &UdpRelay) -> call_client::Rewrite {
    let server = media_addr(node).to_string().replace(':', " ");
    let relayed = relay.addr.to_string().replace(':', " ");
    Arc::new(move |sdp: &str| sdp.replace(&server, &relayed))
}

async fn wait_media(clients: &[&CallClient], at_least: usize, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut short = Vec::new();
        for to in clients {
            for from in clients {
                if to.user == from.user {
                    continue;
                }
                for kind in [Kind::Audio, Kind::Video] {
                    let n = check_intact(to, from, kind);
                    if n < at_least {
                        short.push(format!("{}←{} {kind:?}: {n}", to.user, from.user));
                    }
                }
            }
        }
        if short.is_empty() {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("media missing after {within:?}: {short:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_participants_receive_each_others_audio_and_video_intact() {
    let node = node().await;
    let alice = CallClient::join(&node, "alice", "c1", AV).await;
    assert_eq!(alice.joined["participants"], json!([]));
    assert_eq!(alice.joined["ice_servers"], json!([]));
    let bob = CallClient::join(&node, "bob", "c1", AV).await;
    assert_eq!(
        bob.joined["participants"],
        json!([{"participant_id": alice.participant_id, "user_id": "alice"}])
    );
    alice
        .wait_push(
            "participant_joined",
            |p| p["user_id"] == "bob",
            Duration::from_secs(5),
        )
        .await;
    let carol = CallClient::join(&node, "carol", "c1", AV).await;
    for c in [&alice, &bob, &carol] {
        c.peer
            .wait_connected(Duration::from_secs(10))
            .await
            .unwrap();
    }

    // Send until everyone has 40 packets of each kind from each other one.
    let all = [&alice, &bob, &carol];
    let senders = all.map(|c| send_media(c, &[Kind::Audio, Kind::Video], 0, 400));
    let wait = wait_media(&all, 40, Duration::from_secs(20));
    tokio::select! {
        _ = futures_util::future::join_all(senders) => panic!("all packets sent before 40 of each arrived"),
        _ = wait => {}
    }
    for c in all {
        assert!(
            c.errors.lock().is_empty(),
            "{}: {:?}",
            c.user,
            c.errors.lock()
        );
        // The others' tracks came in server offers.
        assert!(!c.pushed("call_offer").is_empty(), "{}", c.user);
    }
    // Each forwarded track names its publisher in the server's offer.
    let offer = alice.pushed("call_offer").pop().unwrap();
    let tracks = offer["tracks"].as_array().unwrap();
    assert!(
        tracks
            .iter()
            .any(|t| t["participant_id"] == bob.participant_id.as_str() && t["kind"] == "video")
    );

    let metric = node.metric("armoricore_rtc_packets_forwarded_total").await;
    assert!(metric >= 6.0 * 2.0 * 40.0, "forwarded {metric}");
    assert_eq!(node.metric("armoricore_rtc_participants").await, 3.0);
    assert_eq!(node.metric("armoricore_rtc_calls").await, 1.0);
}

/// The node's shared media address.
fn media_addr(node: &TestNode) -> std::net::SocketAddr {
    let calls = node.node().hub().calls.clone().unwrap();
    calls.net.shared_addresses()[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_and_rejoin_and_the_call_ends_with_its_last_participant() {
    let node = node().await;
    let mut bus = node.events("call.>").await;
    let alice = CallClient::join(&node, "alice", "c2", AV).await;
    let bob = CallClient::join(&node, "bob", "c2", AV).await;
    exchange(&[&alice, &bob], 0).await;

    // Bob leaves with call_end: Alice is told, and the server takes his tracks
    // out of her connection (a new offer with those m-lines stopped).
    let offers_before = alice.pushed("call_offer").len();
    let reply = bob.request("call_end", json!({})).await;
    assert_eq!(reply["status"], "ok");
    let left = alice
        .wait_push(
            "participant_left",
            |p| p["user_id"] == "bob",
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(left["participant_id"], bob.participant_id.as_str());
    assert_eq!(left["reason"], "left");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while alice.pushed("call_offer").len() == offers_before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no renegotiation after bob left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Bob's channel is still joined but he is out of the call.
    let again = bob
        .request("call_offer", json!({"sdp": "v=0", "type": "offer"}))
        .await;
    assert_eq!(again["status"], "error");
    assert_eq!(
        again["response"]["reason"],
        "not in this call: join the channel again"
    );
    drop(bob);

    // Bob comes back on a new connection: media flows both ways again.
    let bob = CallClient::join(&node, "bob", "c2", AV).await;
    assert_eq!(bob.joined["participants"].as_array().unwrap().len(), 1);
    exchange(&[&alice, &bob], 1000).await;

    // The bus saw it all, in order.
    let mut seen: Vec<(String, Value)> = Vec::new();
    while seen.len() < 5 {
        let e = common::next_event(&mut bus, Duration::from_secs(5)).await;
        seen.push((
            e["event_type"].as_str().unwrap().to_string(),
            e["payload"].clone(),
        ));
    }
    let kinds: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "call.started",
            "call.participant_joined",
            "call.participant_joined",
            "call.participant_left",
            "call.participant_joined",
        ]
    );
    assert_eq!(seen[3].1["reason"], "left");
    assert_eq!(seen[3].1["call_id"], "c2");

    // Everyone leaves the channel: the call ends after its grace period.
    drop(alice);
    drop(bob);
    let mut ended = None;
    for _ in 0..3 {
        let e = common::next_event(&mut bus, Duration::from_secs(5)).await;
        if e["event_type"] == "call.ended" {
            ended = Some(e);
            break;
        }
    }
    let ended = ended.expect("call.ended");
    assert_eq!(ended["payload"]["participants_total"], 3);
    common::eventually("no call left", || async {
        node.metric("armoricore_rtc_calls").await == 0.0
            && node.metric("armoricore_rtc_participants").await == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_that_vanishes_is_dropped_when_its_ice_times_out() {
    let node = node().await;
    let relay = UdpRelay::start(media_addr(&node)).await;
    let to_relay = via(&node, &relay);
    let alice = CallClient::join(&node, "alice", "c3", AV).await;
    let bob = CallClient::join_with(&node, "bob", "c3", AV, Some(to_relay)).await;
    exchange(&[&alice, &bob], 0).await;

    // Bob's network goes away; his WebSocket stays open and he never leaves.
    relay.cut();
    let left = alice
        .wait_push(
            "participant_left",
            |p| p["user_id"] == "bob",
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(left["reason"], "ice_timeout");
    let end = bob
        .wait_push("call_end", |_| true, Duration::from_secs(5))
        .await;
    assert_eq!(end["reason"], "ice_timeout");
    assert_eq!(node.metric("armoricore_rtc_participants").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_bad_signaling_get_clear_errors() {
    let node = TestNode::start_with(|c| {
        c.calls.addresses = vec!["127.0.0.1".parse().unwrap()];
        c.calls.max_participants = 2;
        c.calls.max_calls = 1;
    })
    .await;
    let alice = CallClient::connect(&node, "alice", "full", AV, None).await;
    let _bob = CallClient::connect(&node, "bob", "full", AV, None).await;

    // A third participant, and a second call, are refused at the join.
    let mut carol = node.connect("carol").await;
    let (_, reply) = carol.join("signaling:call:full", json!({})).await;
    assert_eq!(reply["status"], "error");
    assert_eq!(
        reply["response"]["reason"],
        "the call is full (2 participants, calls.max_participants)"
    );
    let (_, reply) = carol.join("signaling:call:other", json!({})).await;
    assert_eq!(
        reply["response"]["reason"],
        "this node already hosts 1 calls (calls.max_calls)"
    );

    // Malformed signaling: refused with a reason, the participant stays.
    let cases = [
        (
            "call_offer",
            json!({"sdp": "not sdp", "type": "offer"}),
            "invalid SDP",
        ),
        (
            "call_offer",
            json!({"sdp": "v=0", "type": "answer"}),
            "type must be \"offer\"",
        ),
        ("call_offer", json!({}), "sdp must be a non-empty string"),
        (
            "call_answer",
            json!({"sdp": "v=0", "type": "answer"}),
            "no offer is waiting for an answer",
        ),
        (
            "ice_candidate",
            json!({"candidate": "candidate:garbage"}),
            "invalid ICE candidate",
        ),
        (
            "ice_candidate",
            json!({"candidate": 7}),
            "candidate must be a string",
        ),
        ("call_dance", json!({}), "unknown event"),
    ];
    for (event, payload, reason) in cases {
        let reply = alice.request(event, payload.clone()).await;
        assert_eq!(reply["status"], "error", "{event} {payload}");
        let got = reply["response"]["reason"].as_str().unwrap();
        assert!(got.starts_with(reason), "{event} {payload}: {got}");
    }
    // Still in the call: a real offer is answered.
    let offer = alice.peer.create_offer().await.unwrap();
    let reply = alice
        .request("call_offer", json!({"sdp": offer, "type": "offer"}))
        .await;
    assert_eq!(reply["status"], "ok");
    alice
        .wait_push("call_answer", |_| true, Duration::from_secs(5))
        .await;
    // An end-of-candidates marker is fine.
    let reply = alice
        .request("ice_candidate", json!({"candidate": ""}))
        .await;
    assert_eq!(reply["status"], "ok");
}

#[tokio::test]
async fn calls_can_be_turned_off() {
    let node = TestNode::start_with(|c| c.calls.enabled = false).await;
    let mut c = node.connect("alice").await;
    let (_, reply) = c.join("signaling:call:x", json!({})).await;
    assert_eq!(reply["status"], "error");
    assert_eq!(
        reply["response"]["reason"],
        "calls are not enabled on this node"
    );
}

/// The port of the server's host candidate in an SDP.
fn candidate_port(sdp: &str) -> u16 {
    let line = sdp
        .lines()
        .find(|l| l.starts_with("a=candidate:") && l.contains(" typ host"))
        .unwrap_or_else(|| panic!("no host candidate in {sdp}"));
    line.split_whitespace().nth(5).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_range_gives_each_participant_its_own_port_and_mutes_reach_the_others() {
    let base = 20_000 + (std::process::id() % 2_000) as u16 * 10;
    let node = TestNode::start_with(|c| {
        c.calls.addresses = vec!["127.0.0.1".parse().unwrap()];
        c.calls.port_min = base;
        c.calls.port_max = base + 9;
    })
    .await;
    assert!(
        node.node()
            .hub()
            .calls
            .as_ref()
            .unwrap()
            .net
            .shared_addresses()
            .is_empty()
    );
    let alice = CallClient::join(&node, "alice", "ports", AV).await;
    let bob = CallClient::join(&node, "bob", "ports", AV).await;
    exchange(&[&alice, &bob], 0).await;
    let port = |c: &CallClient| candidate_port(c.pushed("call_answer")[0]["sdp"].as_str().unwrap());
    let (a, b) = (port(&alice), port(&bob));
    assert!(
        (base..=base + 9).contains(&a) && (base..=base + 9).contains(&b),
        "{a} {b}"
    );
    assert_ne!(a, b);

    // Bob says he muted his camera: Alice is told.
    let reply = bob
        .request("track_muted", json!({"kind": "video", "muted": true}))
        .await;
    assert_eq!(reply["status"], "ok", "{reply}");
    let muted = alice
        .wait_push(
            "track_muted",
            |p| p["reason"] == "client",
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(muted["participant_id"], bob.participant_id.as_str());
    assert_eq!(
        (muted["kind"].as_str(), muted["muted"].as_bool()),
        (Some("video"), Some(true))
    );

    // Bob's video stops without a word (audio goes on): after 1.5 s the SFU
    // tells Alice it paused, and that it resumed when it comes back.
    send_media(&bob, &[Kind::Audio], 1000, 250).await;
    let paused = alice
        .wait_push(
            "track_muted",
            |p| p["reason"] == "paused",
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(
        (paused["kind"].as_str(), paused["muted"].as_bool()),
        (Some("video"), Some(true))
    );
    send_media(&bob, &[Kind::Audio, Kind::Video], 1250, 50).await;
    alice
        .wait_push(
            "track_muted",
            |p| p["reason"] == "paused" && p["muted"] == false,
            Duration::from_secs(5),
        )
        .await;
    let none = bob
        .request("track_muted", json!({"mid": "nope", "muted": true}))
        .await;
    assert_eq!(none["response"]["reason"], "no published track matches");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_one_to_one_nat_the_public_address_is_announced_and_works() {
    // The node binds 127.0.0.1:P and announces 127.0.0.2:P; a relay on
    // 127.0.0.2:P stands for the NAT (each client through its own mapping).
    let node = TestNode::start_with(|c| {
        c.calls.addresses = vec!["127.0.0.1".parse().unwrap()];
        c.calls.public_ip = "127.0.0.2".into();
    })
    .await;
    let private = media_addr(&node);
    let public: std::net::SocketAddr = format!("127.0.0.2:{}", private.port()).parse().unwrap();
    let _nat = UdpRelay::start_on(public, private).await;
    let alice = CallClient::join(&node, "alice", "nat", AV).await;
    let bob = CallClient::join(&node, "bob", "nat", AV).await;
    let answer = alice
        .wait_push("call_answer", |_| true, Duration::from_secs(5))
        .await;
    let sdp = answer["sdp"].as_str().unwrap();
    assert!(
        sdp.contains(&format!("127.0.0.2 {} typ host", private.port())),
        "{sdp}"
    );
    assert!(!sdp.contains("127.0.0.1"), "{sdp}");
    exchange(&[&alice, &bob], 0).await;
}

/// The packet numbers `to` received from `from`'s `kind` track, in arrival order.
fn numbers(to: &CallClient, from: &CallClient, kind: Kind) -> Vec<u32> {
    let Some(track) = track_of(to, from, kind) else {
        return Vec::new();
    };
    let prefix = format!("{}:{kind:?}:", from.user);
    track
        .packets
        .iter()
        .filter_map(|p| {
            let text = String::from_utf8_lossy(&p.payload).to_string();
            let at = text.find(&prefix)?;
            text[at + prefix.len()..].split(':').next()?.parse().ok()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_lost_on_the_way_to_a_subscriber_is_retransmitted_on_nack() {
    let node = node().await;
    let relay = UdpRelay::start(media_addr(&node)).await;
    let to_relay = via(&node, &relay);
    let alice = CallClient::join(&node, "alice", "lossy", AV).await;
    let bob = CallClient::join_with(&node, "bob", "lossy", AV, Some(to_relay)).await;
    exchange(&[&alice, &bob], 0).await;
    // 5 % of Bob's datagrams are lost, both ways, while Alice sends 300 frames.
    relay.set_loss(0.05);
    send_media(&alice, &[Kind::Video], 1000, 300).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    relay.set_loss(0.0);
    send_media(&alice, &[Kind::Video], 1300, 20).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let got: std::collections::HashSet<u32> = numbers(&bob, &alice, Kind::Video)
        .into_iter()
        .filter(|i| (1000..1300).contains(i))
        .collect();
    let nacks = node.metric("armoricore_rtc_nacks_total").await;
    assert!(nacks > 0.0, "no NACK reached the node");
    // Without retransmission about 15 would be missing; allow what a NACK
    // itself lost twice.
    assert!(
        got.len() >= 297,
        "bob has {} of 300 frames after {nacks} NACKs",
        got.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_whose_actor_dies_leaves_alone_and_the_call_goes_on() {
    let node = node().await;
    let alice = CallClient::join(&node, "alice", "c4", AV).await;
    let bob = CallClient::join(&node, "bob", "c4", AV).await;
    exchange(&[&alice, &bob], 0).await;

    // Bob's Peer actor is killed (as if its WebRTC stack had crashed).
    let calls = node.node().hub().calls.clone().unwrap();
    let roster = calls.roster("c4").await;
    assert_eq!(roster.len(), 2);
    let bob_peer = roster
        .iter()
        .find(|m| *m.participant_id == *bob.participant_id)
        .unwrap();
    assert_eq!(&*bob_peer.user_id, "bob");
    bob_peer.peer.kill();
    let left = alice
        .wait_push(
            "participant_left",
            |p| p["user_id"] == "bob",
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(left["participant_id"], bob.participant_id.as_str());
    bob.wait_push("call_end", |_| true, Duration::from_secs(5))
        .await;

    // The call and Alice's connection carry on: Carol joins and they talk.
    let carol = CallClient::join(&node, "carol", "c4", AV).await;
    assert_eq!(carol.joined["participants"].as_array().unwrap().len(), 1);
    exchange(&[&alice, &carol], 1000).await;
    assert_eq!(node.metric("armoricore_rtc_calls").await, 1.0);
    assert_eq!(calls.roster("c4").await.len(), 2);
}
