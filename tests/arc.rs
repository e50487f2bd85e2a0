//! ArcRTC (docs/arcrtc.md) through a real node: `arc-client` processes and the
//! client library over real WebSocket signaling and UDP on loopback, bridged
//! with `webrtc` crate peers (an implementation independent of the node's).

// Shared with tests/calls.rs, which uses what this file does not.
#[allow(dead_code)]
#[path = "common/call_client.rs"]
mod call_client;
mod common;
#[allow(dead_code)]
#[path = "common/udp_relay.rs"]
mod udp_relay;
#[path = "common/webrtc_peer.rs"]
mod webrtc_peer;

use std::net::SocketAddr;
use std::time::Duration;

use armoricore::calls::arc::client::{self, ClientConfig, Source, Summary, TrackStats};
use armoricore::calls::arc::media_file::MediaFile;
use armoricore::calls::arc::rtp::{self, Rtp};
use armoricore::calls::arc::srtp::{Keys, Profile, Session};
use armoricore::calls::peer::ArcExt;
use bytes::Bytes;
use call_client::CallClient;
use common::TestNode;
use serde_json::{Value, json};
use tokio::net::UdpSocket;
use udp_relay::UdpRelay;
use webrtc_peer::{Kind, PeerOptions};

async fn node() -> TestNode {
    node_with(|_| {}).await
}

async fn node_with(adjust: impl FnOnce(&mut armoricore::config::Config)) -> TestNode {
    TestNode::start_with(|c| {
        c.calls.addresses = vec!["127.0.0.1".parse().unwrap()];
        c.calls.empty_grace_ms = 200;
        adjust(c);
    })
    .await
}

fn config(node: &TestNode, user: &str, call: &str) -> ClientConfig {
    let url = format!("ws://{}/socket/websocket", node.addr);
    ClientConfig::new(&url, call, &node.token(user))
}

const TONE: &[u8] = include_bytes!("../static/tone.opus");

/// The track `user` published, as this summary received it.
fn from<'a>(summary: &'a Summary, user: &str) -> &'a TrackStats {
    summary
        .tracks
        .iter()
        .find(|t| t.user_id.as_deref() == Some(user))
        .unwrap_or_else(|| panic!("no track from {user}: {summary:?}"))
}

/// An `arc_join` payload publishing `publish` codecs.
fn arc_join(codecs: &[&str], publish: &[&str]) -> Value {
    let publish: Vec<Value> = publish.iter().map(|c| json!({"codec": c})).collect();
    json!({"version": 1, "codecs": codecs, "publish": publish,
           "srtp": ["AEAD_AES_128_GCM"], "receive": true})
}

fn endpoint(reply: &Value) -> SocketAddr {
    let e = &reply["response"]["endpoint"];
    format!("{}:{}", e["host"].as_str().unwrap(), e["port"])
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_arc_client_processes_exchange_audio_through_the_node() {
    let node = node().await;
    let url = format!("ws://{}/socket/websocket", node.addr);
    let spawn = |user: &str, secs: &str| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_armoricore"))
            .args(["arc-client", "--url", &url, "--call", "duo", "--tone"])
            .args(["--receive", "--json", "--duration", secs])
            .env("ARMORICORE_TOKEN", node.token(user))
            .kill_on_drop(true)
            .output()
    };
    let (alice, bob) = tokio::join!(spawn("alice", "5s"), spawn("bob", "5s"));
    let summary = |out: std::process::Output, who: &str| -> Value {
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{who}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // Per-second lines, then the summary.
        assert!(lines.len() >= 4, "{who}: {text}");
        assert!(lines[1]["second"]["sent_packets"].as_u64().unwrap() >= 45);
        lines.last().unwrap()["summary"].clone()
    };
    let (alice, bob) = (
        summary(alice.unwrap(), "alice"),
        summary(bob.unwrap(), "bob"),
    );
    for (me, other, s) in [("alice", "bob", &alice), ("bob", "alice", &bob)] {
        let t = s["tracks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["user_id"] == other)
            .unwrap_or_else(|| panic!("{me} got nothing from {other}: {s}"));
        assert_eq!(t["codec"], "opus");
        // ~50 packets a second for the ~4.5 s both were in the call.
        assert!(t["packets"].as_u64().unwrap() >= 180, "{me}: {t}");
        assert_eq!(t["lost"], 0, "{me}: {t}");
        assert!(t["latency_p50_ms"].as_f64().unwrap() < 50.0, "{me}: {t}");
        assert_eq!(s["srtp_failures"], 0);
        assert_eq!(s["ended"], "duration");
    }
    assert!(node.metric("armoricore_rtc_packets_forwarded_total").await >= 360.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arcrtc_and_webrtc_participants_hear_each_other_through_the_bridge() {
    let node = node().await;
    let audio = PeerOptions {
        audio: true,
        video: false,
    };
    let web = CallClient::join(&node, "web", "bridge", audio).await;
    web.peer
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap();
    let mut c = config(&node, "native", "bridge");
    c.send = Some(Source::Tone);
    c.duration = Some(Duration::from_secs(5));
    let native = tokio::spawn(client::run(c, |_| {}));
    // The browser side talks the whole time.
    let talking = async {
        for i in 0u32.. {
            let payload = format!("web-opus-{i}").into_bytes();
            web.peer.send(Kind::Audio, &payload, true).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let summary = tokio::select! {
        r = native => r.unwrap().unwrap(),
        _ = talking => unreachable!(),
    };
    // WebRTC → ArcRTC: the browser's audio reached the native client, every packet.
    let heard = from(&summary, "web");
    assert!(heard.packets >= 150, "{heard:?}");
    assert_eq!((heard.lost, heard.codec.as_deref()), (0, Some("opus")));
    // ArcRTC → WebRTC: the tone's Opus frames, byte for byte and in order.
    let tone: Vec<Vec<u8>> = MediaFile::parse(TONE)
        .unwrap()
        .frames
        .into_iter()
        .map(|f| f.data)
        .collect();
    let got = web
        .peer
        .received()
        .into_iter()
        .find(|r| r.kind == Kind::Audio)
        .expect("the WebRTC participant got the native audio track");
    assert!(got.packets.len() >= 150, "{} packets", got.packets.len());
    let mut at = tone
        .iter()
        .position(|f| *f == got.packets[0].payload)
        .expect("the first payload is a tone frame");
    for p in &got.packets {
        assert_eq!(p.payload, tone[at], "tone frame {at}");
        at = (at + 1) % tone.len();
    }
    // Mapped to the browser's Opus payload type, its own SSRC, no gaps.
    assert!(got.packets.windows(2).all(|w| {
        w[1].sequence_number == w[0].sequence_number.wrapping_add(1) && w[1].ssrc == w[0].ssrc
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_vp8_reaches_a_webrtc_participant_whose_keyframe_requests_reach_the_native_side() {
    // A real VP8 stream: one second of ffmpeg's test pattern, keyframe every second.
    let dir = tempfile::tempdir().unwrap();
    let ivf = dir.path().join("pattern.ivf");
    let made = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=30",
        ])
        .args(["-t", "1", "-c:v", "libvpx", "-b:v", "300k", "-g", "30"])
        .arg(&ivf)
        .status()
        .expect("ffmpeg runs");
    assert!(made.success());
    let node = node().await;
    let audio = PeerOptions {
        audio: true,
        video: false,
    };
    let web = CallClient::join(&node, "web", "video", audio).await;
    web.peer
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap();
    let mut c = config(&node, "camera", "video");
    c.send = Some(Source::File(ivf));
    c.receive = false;
    c.duration = Some(Duration::from_secs(4));
    let summary = client::run(c, |_| {}).await.unwrap();
    let got = web
        .peer
        .received()
        .into_iter()
        .find(|r| r.kind == Kind::Video)
        .expect("the WebRTC participant got the native video track");
    // 30 frames a second, each one or more packets.
    assert!(got.packets.len() >= 60, "{} packets", got.packets.len());
    assert!(
        got.packets
            .iter()
            .all(|p| p.payload_type == got.packets[0].payload_type)
    );
    // The frames' ends are marked, in order.
    assert!(got.packets.iter().filter(|p| p.marker).count() >= 60);
    // The subscriber's keyframe requests (PLI when its m-line opened) came back
    // through the bridge as RTCP to the native publisher.
    assert!(summary.keyframe_requests >= 1, "{summary:?}");
    assert!(node.metric("armoricore_rtc_keyframe_requests_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_receivers_pli_reaches_the_browser_publisher() {
    let node = node_with(|c| c.calls.keyframe_interval_ms = 50).await;
    let camera = PeerOptions {
        audio: false,
        video: true,
    };
    let web = CallClient::join(&node, "web", "pli", camera).await;
    web.peer
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap();
    // A native viewer, driven by hand so the test decides when it sends a PLI.
    let viewer = CallClient::connect(&node, "viewer", "pli", PeerOptions::default(), None).await;
    let reply = viewer.request("arc_join", arc_join(&["vp8"], &[])).await;
    assert_eq!(reply["status"], "ok", "{reply}");
    let r = &reply["response"];
    let track = &r["receive"][0];
    assert_eq!(track["codec"], "vp8", "{reply}");
    let media = track["ssrc"].as_u64().unwrap() as u32;
    let rtcp_ssrc = r["rtcp_ssrc"].as_u64().unwrap() as u32;
    let client_keys = Keys::from_json(&r["srtp"]["client"]).unwrap();
    let node_keys = Keys::from_json(&r["srtp"]["node"]).unwrap();
    let mut srtp = Session::new(Profile::AeadAes128Gcm, &client_keys, &node_keys).unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.connect(endpoint(&reply)).await.unwrap();
    let hello = rtp::receiver_report(rtcp_ssrc, Vec::new());
    udp.send(&srtp.protect_rtcp(&hello).unwrap()).await.unwrap();
    let mut buf = [0u8; 2048];
    tokio::time::timeout(Duration::from_secs(2), udp.recv(&mut buf))
        .await
        .expect("hello answered")
        .unwrap();
    // Let the requests of the set-up (connection up, subscription) settle.
    let requests = || node.metric("armoricore_rtc_keyframe_requests_total");
    let mut settled = requests().await;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = requests().await;
        if now == settled {
            break;
        }
        settled = now;
    }
    // The native PLI for the browser's track becomes the browser's keyframe request.
    let pli = rtp::keyframe_request(rtcp_ssrc, media, None);
    udp.send(&srtp.protect_rtcp(&pli).unwrap()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while requests().await < settled + 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the PLI never reached the publisher's peer connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A PLI for an SSRC the viewer does not receive goes nowhere.
    let stray = rtp::keyframe_request(rtcp_ssrc, media ^ 1, None);
    udp.send(&srtp.protect_rtcp(&stray).unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(requests().await, settled + 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codecs_a_participant_lacks_are_announced_not_sent() {
    let node = node().await;
    let none = PeerOptions::default();
    // A native publisher of H.265 video and Opus.
    let hevc = CallClient::connect(&node, "hevc", "codecs", none, None).await;
    let reply = hevc
        .request(
            "arc_join",
            arc_join(&["opus", "h265", "vp8"], &["opus", "h265"]),
        )
        .await;
    assert_eq!(reply["status"], "ok", "{reply}");
    let published = reply["response"]["publish"].as_array().unwrap();
    assert_eq!(published[1]["pt"], 104);
    let h265 = published[1]["track_id"].clone();
    // A browser: Opus yes, H.265 never.
    let web = CallClient::join(
        &node,
        "web",
        "codecs",
        PeerOptions {
            audio: true,
            video: false,
        },
    )
    .await;
    let unavailable = web
        .wait_push(
            "track_unavailable",
            |p| p["track_id"] == h265,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(unavailable["codec"], "h265");
    assert_eq!(
        unavailable["reason"],
        "codec \"h265\" not supported by this participant"
    );
    // A native client that only decodes Opus: the same, the audio is offered.
    let opus_only = CallClient::connect(&node, "opus", "codecs", none, None).await;
    let reply = opus_only
        .request("arc_join", arc_join(&["opus"], &[]))
        .await;
    let receive = reply["response"]["receive"].as_array().unwrap().clone();
    assert_eq!(receive.len(), 1, "{reply}");
    assert_eq!(receive[0]["codec"], "opus");
    assert_eq!(opus_only.pushed("track_unavailable")[0]["track_id"], h265);
    // One that has H.265 gets both, under ArcRTC's payload types.
    let full = CallClient::connect(&node, "full", "codecs", none, None).await;
    let reply = full
        .request("arc_join", arc_join(&["opus", "h265"], &[]))
        .await;
    let mut pts: Vec<u64> = reply["response"]["receive"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["pt"].as_u64().unwrap())
        .collect();
    pts.sort();
    assert_eq!(pts, [104, 111]);
    // One transport per participant; ArcRTC requests need arc_join.
    let err = |r: &Value| {
        r["response"]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let r = web.request("arc_join", arc_join(&["opus"], &[])).await;
    assert_eq!(err(&r), "transport already chosen");
    let r = hevc
        .request("call_offer", json!({"sdp": "v=0", "type": "offer"}))
        .await;
    assert_eq!(err(&r), "transport already chosen");
    let r = web
        .request("arc_publish", json!({"kind": "audio", "codec": "opus"}))
        .await;
    assert_eq!(err(&r), "not an ArcRTC participant: send arc_join first");
    let fresh = CallClient::connect(&node, "fresh", "codecs", none, None).await;
    let r = fresh
        .request("arc_join", json!({"version": 2, "codecs": [], "srtp": []}))
        .await;
    assert_eq!(err(&r), "unsupported ArcRTC version");
    // arc_publish / arc_unpublish later in the session.
    let r = full
        .request("arc_publish", json!({"kind": "video", "codec": "vp8"}))
        .await;
    assert_eq!(r["response"]["pt"], 96, "{r}");
    let vp8 = r["response"]["track_id"].clone();
    hevc.wait_push(
        "arc_track_added",
        |p| p["track_id"] == vp8,
        Duration::from_secs(5),
    )
    .await;
    let r = full
        .request("arc_unpublish", json!({"track_id": vp8}))
        .await;
    assert_eq!(r["status"], "ok", "{r}");
    hevc.wait_push(
        "arc_track_removed",
        |p| p["track_id"] == vp8,
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_with_a_wrong_key_or_replayed_are_refused_and_counted() {
    let node = node().await;
    let none = PeerOptions::default();
    let mallory = CallClient::connect(&node, "mallory", "keys", none, None).await;
    let reply = mallory
        .request("arc_join", arc_join(&["opus"], &["opus"]))
        .await;
    assert_eq!(reply["status"], "ok", "{reply}");
    let r = &reply["response"];
    let ssrc = r["publish"][0]["ssrc"].as_u64().unwrap() as u32;
    let rtcp_ssrc = r["rtcp_ssrc"].as_u64().unwrap() as u32;
    let listener = CallClient::connect(&node, "listener", "keys", none, None).await;
    let heard = listener.request("arc_join", arc_join(&["opus"], &[])).await;
    assert_eq!(heard["status"], "ok");

    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.connect(endpoint(&reply)).await.unwrap();
    let packet = |seq: u16| Rtp {
        pt: 111,
        seq,
        timestamp: u32::from(seq) * 960,
        ssrc,
        marker: false,
        ext: ArcExt::default(),
        payload: Bytes::from_static(b"forged"),
    };
    // Right SSRCs, keys of our own: refused, counted, nothing answered.
    let stranger = Keys::generate(Profile::AeadAes128Gcm).unwrap();
    let mut forger = Session::new(Profile::AeadAes128Gcm, &stranger, &stranger).unwrap();
    let before = node
        .metric("armoricore_rtc_dropped_total{reason=\"srtp\"}")
        .await;
    for seq in 0..20 {
        udp.send(&forger.protect_rtp(&packet(seq).to_bytes()).unwrap())
            .await
            .unwrap();
    }
    let hello = rtp::receiver_report(rtcp_ssrc, Vec::new());
    udp.send(&forger.protect_rtcp(&hello).unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 2048];
    let answered = tokio::time::timeout(Duration::from_millis(500), udp.recv(&mut buf)).await;
    assert!(answered.is_err(), "the node answered a forged hello");
    let counted = node
        .metric("armoricore_rtc_dropped_total{reason=\"srtp\"}")
        .await;
    assert_eq!(counted - before, 21.0);

    // The session's real keys: the hello is answered, media goes through once.
    let client_keys = Keys::from_json(&r["srtp"]["client"]).unwrap();
    let node_keys = Keys::from_json(&r["srtp"]["node"]).unwrap();
    let mut real = Session::new(Profile::AeadAes128Gcm, &client_keys, &node_keys).unwrap();
    udp.send(&real.protect_rtcp(&hello).unwrap()).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(2), udp.recv(&mut buf))
        .await
        .expect("the node answers the hello")
        .unwrap();
    assert!(real.unprotect_rtcp(&buf[..n]).is_ok());
    let valid = real.protect_rtp(&packet(100).to_bytes()).unwrap();
    udp.send(&valid).await.unwrap();
    udp.send(&valid).await.unwrap(); // a replay
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        node.metric("armoricore_rtc_dropped_total{reason=\"srtp\"}")
            .await
            - counted,
        1.0,
        "the replayed packet is refused"
    );
    assert_eq!(
        node.metric("armoricore_rtc_packets_received_total").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_percent_loss_is_repaired_by_nack() {
    let node = node().await;
    // Find the node's ArcRTC port from a first session.
    let probe = CallClient::connect(&node, "probe", "lossy", PeerOptions::default(), None).await;
    let reply = probe.request("arc_join", arc_join(&["opus"], &[])).await;
    let arc = endpoint(&reply);
    probe.request("arc_leave", json!({})).await;

    // The talker is on a clean path; two listeners on paths losing 5 % both ways:
    // one NACKs (and its own tone is NACKed by the node), one does not.
    let repaired_path = UdpRelay::start(arc).await;
    repaired_path.set_loss(0.05);
    let lossy_path = UdpRelay::start(arc).await;
    lossy_path.set_loss(0.05);
    let secs = Duration::from_secs(8);
    let mut talker = config(&node, "talker", "lossy");
    talker.send = Some(Source::Tone);
    talker.duration = Some(secs + Duration::from_secs(1));
    let mut repaired = config(&node, "repaired", "lossy");
    repaired.send = Some(Source::Tone);
    repaired.endpoint = Some(repaired_path.addr);
    repaired.duration = Some(secs);
    let mut unrepaired = config(&node, "unrepaired", "lossy");
    unrepaired.endpoint = Some(lossy_path.addr);
    unrepaired.nack = false;
    unrepaired.duration = Some(secs);
    let (talker, repaired, unrepaired) = tokio::join!(
        client::run(talker, |_| {}),
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            client::run(repaired, |_| {}).await
        },
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            client::run(unrepaired, |_| {}).await
        },
    );
    let (talker, repaired, unrepaired) = (talker.unwrap(), repaired.unwrap(), unrepaired.unwrap());
    // ~375 packets each way: 5 % is ~19 lost on the way.
    let down = from(&repaired, "talker");
    assert!(down.packets >= 330, "{down:?}");
    assert!(down.recovered >= 5, "NACKs repaired losses: {down:?}");
    assert!(down.lost <= 3, "{down:?}");
    let control = from(&unrepaired, "talker");
    eprintln!(
        "5 % loss: with NACK {} played, {} recovered, {} lost; without {} played, {} lost; {} resent upstream",
        down.packets,
        down.recovered,
        down.lost,
        control.packets,
        control.lost,
        repaired.resent_packets
    );
    assert!(
        control.lost >= 5,
        "without NACKs the same path loses: {control:?}"
    );
    // Upstream: the node NACKed the repaired client's tone; the talker heard it whole.
    assert!(repaired.resent_packets >= 5, "{repaired:?}");
    let up = from(&talker, "repaired");
    assert!(up.lost <= 4, "{up:?}");
    assert!(node.metric("armoricore_rtc_nacks_total").await >= 10.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_session_times_out_and_leaves_the_call() {
    let node = node_with(|c| c.calls.arc_timeout_s = 1).await;
    let none = PeerOptions::default();
    let stays = CallClient::connect(&node, "stays", "quiet", none, None).await;
    let silent = CallClient::connect(&node, "silent", "quiet", none, None).await;
    let reply = silent.request("arc_join", arc_join(&["opus"], &[])).await;
    assert_eq!(reply["status"], "ok");
    // It never says hello.
    let end = silent
        .wait_push("call_end", |_| true, Duration::from_secs(5))
        .await;
    assert_eq!(end["reason"], "timeout");
    let left = stays
        .wait_push(
            "participant_left",
            |p| p["user_id"] == "silent",
            Duration::from_secs(2),
        )
        .await;
    assert_eq!(left["reason"], "timeout");
}
