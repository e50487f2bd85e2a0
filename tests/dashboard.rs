//! The operations dashboard (docs/dashboard.md) through a real node: the HTTP
//! routes and their password, the `admin:dashboard` channel's access rule, its
//! `snapshot` pushes (clients, topics, tree, jobs with transcode progress, calls
//! with bitrates, cluster nodes through a real Redis) and the operator's actions.
//! The page itself is driven in Chromium by tests/js/test/15-dashboard.test.mjs.

mod common;

use std::time::Duration;

use armoricore::calls::arc::client::{self, ClientConfig, Source};
use armoricore::protocols::jwt::Claims;
use base64::Engine;
use common::redis::RedisServer;
use common::{PhxClient, TestNode, close_of, http};
use serde_json::{Value, json};

const PASSWORD: &str = "dashboard-password-1";

async fn node() -> TestNode {
    node_with(|_| {}).await
}

async fn node_with(adjust: impl FnOnce(&mut armoricore::config::Config)) -> TestNode {
    TestNode::start_with(|c| {
        c.dashboard.password = PASSWORD.into();
        c.dashboard.interval_ms = 200;
        adjust(c);
    })
    .await
}

fn basic(password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("ops:{password}"));
    format!("Basic {encoded}")
}

/// `GET path` with an Authorization header → (status, headers and body).
async fn get_raw(node: &TestNode, path: &str, auth: Option<&str>) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    (text[9..12].parse().unwrap(), text)
}

/// The token the page was served with.
async fn page_token(node: &TestNode) -> String {
    let auth = basic(PASSWORD);
    let (status, body) = http(
        node.addr,
        "GET",
        "/dashboard/token",
        &[("Authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["expires_in"], 3600);
    v["token"].as_str().unwrap().to_string()
}

/// An operator's socket joined to `admin:dashboard`.
async fn operator(node: &TestNode) -> (PhxClient, String) {
    let token = page_token(node).await;
    let mut c = PhxClient::connect(&node.ws_url(&format!("vsn=2.0.0&token={token}")))
        .await
        .unwrap();
    let (join_ref, reply) = c.join("admin:dashboard", json!({})).await;
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(reply["response"]["interval_ms"], 200);
    (c, join_ref)
}

/// The next snapshot for which `check` holds (snapshots come every 200 ms).
async fn snapshot_where(c: &mut PhxClient, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no snapshot with {what}"
        );
        let frame = c.assert_push("admin:dashboard", "snapshot").await;
        if check(&frame[4]) {
            return frame[4].clone();
        }
    }
}

async fn reply(c: &mut PhxClient, join_ref: &str, event: &str, payload: Value) -> Value {
    let r = c
        .push(Some(join_ref), "admin:dashboard", event, payload)
        .await;
    c.assert_reply(&r).await
}

#[tokio::test]
async fn the_page_and_its_token_need_the_password_or_the_api_key() {
    let node = node().await;
    let (status, raw) = get_raw(&node, "/dashboard", None).await;
    assert_eq!(status, 401);
    assert!(
        raw.to_lowercase()
            .contains("www-authenticate: basic realm=\"armoricore dashboard\""),
        "{raw}"
    );
    assert_eq!(
        get_raw(&node, "/dashboard", Some(&basic("wrong"))).await.0,
        401
    );
    assert_eq!(get_raw(&node, "/dashboard/token", None).await.0, 401);
    assert_eq!(
        get_raw(&node, "/dashboard/token", Some("Bearer x")).await.0,
        401
    );
    let (status, raw) = get_raw(&node, "/dashboard", Some(&basic(PASSWORD))).await;
    assert_eq!(status, 200);
    assert!(raw.contains("<title>Armoricore dashboard</title>"));
    let lower = raw.to_lowercase();
    assert!(lower.contains("cache-control: no-store"));
    assert!(lower.contains("x-frame-options: deny"));
    assert!(lower.contains("content-security-policy: default-src 'self'"));
    assert!(
        !raw.contains("{{ARMORICORE_TOKEN}}"),
        "the token is filled in"
    );
    // The API key opens it too, as the Basic password or as `apikey`.
    let key = common::API_KEY;
    assert_eq!(get_raw(&node, "/dashboard", Some(&basic(key))).await.0, 200);
    let apikey = format!("apikey {key}");
    assert_eq!(get_raw(&node, "/dashboard", Some(&apikey)).await.0, 200);
    // The password is not an API key.
    let wrong = format!("apikey {PASSWORD}");
    assert_eq!(get_raw(&node, "/dashboard", Some(&wrong)).await.0, 401);
    // The script is public and has no secret in it; everything comes from the socket.
    let (status, js) = node.get("/assets/dashboard.js").await;
    assert_eq!(status, 200);
    assert!(js.contains("admin:dashboard"));
    node.shutdown().await;

    // Neither a password nor an API key: the dashboard is off.
    let off = TestNode::start_with(|c| c.api.key = String::new()).await;
    let (status, raw) = get_raw(&off, "/dashboard", Some(&basic(""))).await;
    assert_eq!(status, 401);
    assert!(raw.contains("the dashboard is off"), "{raw}");
    off.shutdown().await;
}

#[tokio::test]
async fn only_admin_tokens_join_the_dashboard_channel() {
    let node = node().await;
    let mut alice = node.connect("alice").await;
    let (_, refused) = alice.join("admin:dashboard", json!({})).await;
    assert_eq!(refused["status"], "error");
    assert_eq!(refused["response"]["reason"], "unauthorized");
    // An application's own admin token (the `admin` claim) is accepted...
    let ops = node.token_for(Claims {
        user_id: "ops".into(),
        admin: true,
        ..Claims::default()
    });
    let mut c = PhxClient::connect(&node.ws_url(&format!("vsn=2.0.0&token={ops}")))
        .await
        .unwrap();
    c.join_ok("admin:dashboard").await;
    let (_, other) = c.join("admin:other", json!({})).await;
    assert_eq!(other["status"], "error", "{other}");
    // ...and so is the page's token.
    let (_c, _) = operator(&node).await;
    // A page token from a node with another password opens nothing here.
    let elsewhere = TestNode::start_with(|c| c.dashboard.password = "another".into()).await;
    let foreign = elsewhere
        .node()
        .hub()
        .verifier
        .mint_dashboard("ops", Duration::from_secs(60))
        .unwrap();
    let refused = PhxClient::connect(&node.ws_url(&format!("vsn=2.0.0&token={foreign}"))).await;
    assert!(refused.is_err(), "a forged dashboard token connected");
    // Without a dashboard credential no node accepts dashboard tokens at all.
    let off = TestNode::start_with(|c| c.api.key = String::new()).await;
    let refused = PhxClient::connect(&off.ws_url(&format!("vsn=2.0.0&token={foreign}"))).await;
    assert!(refused.is_err());
    elsewhere.shutdown().await;
    off.shutdown().await;
    node.shutdown().await;
}

#[tokio::test]
async fn snapshots_show_clients_topics_and_the_tree_and_actions_work() {
    let node = node().await;
    let (mut ops, jr) = operator(&node).await;
    let mut alice = node.connect("alice").await;
    let alice_ref = alice.join_ok("chat:room:1").await;
    let r = alice
        .push(
            Some(&alice_ref),
            "chat:room:1",
            "new_message",
            json!({"content": "hi"}),
        )
        .await;
    alice.assert_reply(&r).await;

    let s = snapshot_where(&mut ops, "alice and chat:room:1", |s| {
        s["clients"]["top"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["user_id"] == "alice")
            && s["topics"]["busiest"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["topic"] == "chat:room:1")
    })
    .await;
    let topic = s["topics"]["busiest"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "chat:room:1")
        .unwrap();
    assert_eq!(topic["subscribers"], 1);
    assert!(topic["broadcasts"].as_u64().unwrap() >= 1, "{topic}");
    assert_eq!(s["clients"]["connections"], 2, "alice and the operator");
    assert!(
        s["clients"]["top"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["user_id"] == "ops"),
        "the operator is named after its Basic user name"
    );
    assert_eq!(s["nodes"][0]["self"], true);
    assert_eq!(s["nodes"][0]["summary"]["connections"], 2);
    assert_eq!(s["services"]["bus"]["kind"], "memory");
    assert_eq!(s["services"]["bus"]["up"], true);
    assert_eq!(s["services"]["database"]["kind"], "sqlite");
    assert_eq!(s["services"]["redis"], Value::Null);
    assert!(!s["series"].as_array().unwrap().is_empty());
    let tree = &s["tree"];
    assert_eq!(tree["name"], "root");
    let names: Vec<&str> = tree["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for name in ["gateway", "sessions", "presence", "bus_bridge", "dashboard"] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    let sessions = tree["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "sessions")
        .unwrap();
    assert_eq!(sessions["children"], 2, "one Session actor per connection");
    // The charts' rates: the messages above were counted.
    let sent = s["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["messages_in_per_s"].as_f64().unwrap())
        .sum::<f64>();
    assert!(sent > 0.0, "{}", s["series"]);
    let joined = s["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["joins_per_s"].as_f64().unwrap())
        .sum::<f64>();
    assert!(joined > 0.0, "{}", s["series"]);

    // A child that dies is restarted by the root, and the tree says so.
    let presence = node
        .node()
        .child(armoricore::supervisors::root::Child::Presence)
        .await
        .unwrap();
    presence.kill();
    let restarted = |s: &Value| {
        s["tree"]["children"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "presence" && c["restarts"] == 1)
    };
    let s = snapshot_where(&mut ops, "presence restarted once", restarted).await;
    assert_eq!(s["tree"]["restarts"], 1, "the root's restarts");
    let others_restarted = s["tree"]["children"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] != "presence")
        .any(|c| c["restarts"] != 0);
    assert!(!others_restarted, "{}", s["tree"]);

    // Presence of a chosen topic.
    let p = reply(&mut ops, &jr, "presence", json!({"topic": "chat:room:1"})).await;
    assert_eq!(p["status"], "ok");
    assert_eq!(
        p["response"]["presences"]["alice"]["metas"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // A test message to a topic reaches its subscribers.
    let b = reply(
        &mut ops,
        &jr,
        "broadcast",
        json!({"topic": "chat:room:1", "event": "test_message", "payload": {"body": "ping"}}),
    )
    .await;
    assert_eq!(b["response"]["subscribers"], 1, "{b}");
    let got = alice.assert_push("chat:room:1", "test_message").await;
    assert_eq!(got[4]["body"], "ping");
    for (bad, why) in [
        (
            json!({"topic": "chat:room:1", "event": "phx_close"}),
            "reserved",
        ),
        (
            json!({"topic": "admin:dashboard", "event": "x"}),
            "reserved",
        ),
        (
            json!({"topic": "chat:room:1", "event": "x", "payload": [1]}),
            "JSON object",
        ),
        (json!({"event": "x"}), "topic must be"),
    ] {
        let r = reply(&mut ops, &jr, "broadcast", bad).await;
        assert_eq!(r["status"], "error");
        let reason = r["response"]["reason"].as_str().unwrap();
        assert!(reason.contains(why), "{reason}");
    }
    let r = reply(&mut ops, &jr, "reboot", json!({})).await;
    assert_eq!(r["response"]["reason"], "unknown event \"reboot\"");
    // Disconnect a user: its sockets close with 1000.
    let d = reply(&mut ops, &jr, "disconnect", json!({"user_id": "alice"})).await;
    assert_eq!(d["response"]["disconnected"], 1);
    assert_eq!(close_of(&mut alice).await.0, 1000);
    snapshot_where(&mut ops, "alice gone", |s| s["clients"]["connections"] == 1).await;
    node.shutdown().await;
}

/// A 720p input slow enough (veryslow) to watch and cancel.
fn slow_input(dir: &std::path::Path) -> std::path::PathBuf {
    let input = dir.join("in.mp4");
    let status = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc2=s=1280x720:r=30:d=20")
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ])
        .arg(&input)
        .status()
        .expect("ffmpeg on PATH");
    assert!(status.success());
    input
}

fn jobs<'a>(s: &'a Value, status: &str) -> &'a Vec<Value> {
    s["jobs"][status].as_array().unwrap()
}

#[tokio::test]
async fn a_transcode_shows_progress_and_is_cancelled_and_a_failed_job_is_retried() {
    let node = node_with(|c| c.media.preset = "veryslow".into()).await;
    let src = tempfile::tempdir().unwrap();
    let input = slow_input(src.path());
    let (mut ops, jr) = operator(&node).await;
    let upload = json!({"event_type": "media.uploaded", "payload": {"media_id": "m1",
        "user_id": "u1", "file_path": input.display().to_string(),
        "content_type": "video/mp4", "file_size": 1}});
    assert_eq!(node.api_post("/api/events", &upload).await.0, 202);

    // Progress moves while it runs.
    let percent = |s: &Value| {
        jobs(s, "running")
            .iter()
            .find(|j| j["subject_id"] == "m1")
            .and_then(|j| j["progress"]["percent"].as_f64())
    };
    let first = snapshot_where(&mut ops, "m1 running with progress", |s| {
        percent(s).is_some_and(|p| p > 0.0)
    })
    .await;
    let started = percent(&first).unwrap();
    let later = snapshot_where(&mut ops, "m1 further along", |s| {
        percent(s).is_some_and(|p| p > started)
    })
    .await;
    let job = jobs(&later, "running")
        .iter()
        .find(|j| j["subject_id"] == "m1")
        .unwrap()
        .clone();
    assert_eq!(job["kind"], "media.uploaded");
    assert_eq!(job["user_id"], "u1");
    let job_id = job["id"].as_str().unwrap().to_string();
    let transcode = later["tree"]["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "transcode")
        .unwrap();
    assert_eq!(transcode["children"], 1, "one TranscodeJob actor");

    // Cancel it from the channel: it ends as failed, "cancelled".
    let mut failed = node.events("media.failed").await;
    let c = reply(&mut ops, &jr, "cancel_job", json!({"job_id": job_id})).await;
    assert_eq!(c["status"], "ok", "{c}");
    assert_eq!(c["response"]["media_id"], "m1");
    let event = common::next_event(&mut failed, common::WAIT).await;
    assert_eq!(event["payload"]["reason"], "cancelled");
    let s = snapshot_where(&mut ops, "m1 failed", |s| {
        jobs(s, "failed").iter().any(|j| j["id"] == job_id.as_str())
    })
    .await;
    let row = jobs(&s, "failed")
        .iter()
        .find(|j| j["id"] == job_id.as_str())
        .unwrap();
    assert!(
        row["error"].as_str().unwrap().contains("cancelled"),
        "{row}"
    );
    assert!(jobs(&s, "running").is_empty());
    // A finished job is not cancelled again; a job that is not media never is.
    let again = reply(&mut ops, &jr, "cancel_job", json!({"job_id": job_id})).await;
    assert_eq!(again["status"], "error");
    assert!(
        again["response"]["reason"]
            .as_str()
            .unwrap()
            .contains("failed already")
    );
    let missing = reply(&mut ops, &jr, "cancel_job", json!({"job_id": "nope"})).await;
    assert_eq!(missing["response"]["reason"], "no job \"nope\"");

    // Retry the failed job: its request goes out again as a new job, which runs.
    let r = reply(&mut ops, &jr, "retry_job", json!({"job_id": job_id})).await;
    assert_eq!(r["status"], "ok", "{r}");
    let new_id = r["response"]["job_id"].as_str().unwrap().to_string();
    assert_ne!(new_id, job_id);
    let s = snapshot_where(&mut ops, "the retried job running", |s| {
        jobs(s, "running")
            .iter()
            .any(|j| j["id"] == new_id.as_str())
    })
    .await;
    let retried = jobs(&s, "running")
        .iter()
        .find(|j| j["id"] == new_id.as_str())
        .unwrap();
    assert_eq!(retried["subject_id"], "m1");
    // Only failed jobs are retried.
    let not_failed = reply(&mut ops, &jr, "retry_job", json!({"job_id": new_id})).await;
    assert_eq!(not_failed["status"], "error");
    assert!(
        not_failed["response"]["reason"]
            .as_str()
            .unwrap()
            .contains("only failed jobs")
    );
    // The retry is cancelled by media id (what the page sends without a record).
    let c = reply(&mut ops, &jr, "cancel_job", json!({"media_id": "m1"})).await;
    assert_eq!(c["status"], "ok");
    let event = common::next_event(&mut failed, common::WAIT).await;
    assert_eq!(event["payload"]["reason"], "cancelled");
    node.shutdown().await;
}

#[tokio::test]
async fn calls_show_their_participants_and_bitrates() {
    let node = node_with(|c| {
        c.calls.addresses = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let (mut ops, _) = operator(&node).await;
    let url = format!("ws://{}/socket/websocket", node.addr);
    let talker = |user: &str| {
        let mut c = ClientConfig::new(&url, "standup", &node.token(user));
        c.send = Some(Source::Tone);
        c.duration = Some(Duration::from_secs(5));
        client::run(c, |_| {})
    };
    let (a, b) = (talker("ann"), talker("bob"));
    let clients = tokio::spawn(async move { tokio::join!(a, b) });
    let s = snapshot_where(&mut ops, "a call with two talking participants", |s| {
        s["calls"].as_array().is_some_and(|calls| {
            calls.iter().any(|c| {
                c["id"] == "standup"
                    && c["participants"].as_array().unwrap().len() == 2
                    && c["participants"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|p| p["kbps_in"].as_f64().unwrap() > 10.0)
            })
        })
    })
    .await;
    let call = &s["calls"].as_array().unwrap()[0];
    for p in call["participants"].as_array().unwrap() {
        assert_eq!(p["transport"], "arcrtc");
        assert_eq!(p["tracks"], 1);
        // 50 Opus packets a second each way: tens of kbit/s, not megabits.
        let (kin, kout) = (
            p["kbps_in"].as_f64().unwrap(),
            p["kbps_out"].as_f64().unwrap(),
        );
        assert!(kin < 500.0 && kout > 10.0 && kout < 500.0, "{p}");
    }
    let (a, b) = clients.await.unwrap();
    a.unwrap();
    b.unwrap();
    snapshot_where(&mut ops, "the call gone", |s| {
        s["calls"].as_array().is_some_and(|c| c.is_empty())
    })
    .await;
    node.shutdown().await;
}

#[tokio::test]
async fn every_node_of_a_cluster_is_listed_with_its_summary() {
    let redis = RedisServer::start().await;
    let on = |name: &'static str| {
        let url = redis.url();
        node_with(move |c| {
            c.cluster.redis_url = url;
            c.cluster.node_name = name.into();
            c.cluster.heartbeat_ms = 100;
            c.cluster.node_timeout_ms = 1000;
        })
    };
    let (a, b) = (on("alpha").await, on("beta").await);
    let _bob = b.connect("bob").await;
    let (mut ops, _) = operator(&a).await;
    let s = snapshot_where(&mut ops, "both nodes, beta with bob", |s| {
        let nodes = s["nodes"].as_array().unwrap();
        nodes.len() == 2
            && nodes.iter().any(|n| {
                n["id"].as_str().unwrap().starts_with("beta-") && n["summary"]["connections"] == 1
            })
    })
    .await;
    let nodes = s["nodes"].as_array().unwrap();
    assert!(nodes[0]["id"].as_str().unwrap().starts_with("alpha-"));
    assert_eq!(nodes[0]["self"], true);
    assert!(nodes.iter().all(|n| n["alive"] == true));
    assert_eq!(s["services"]["redis"]["up"], true);
    assert_eq!(s["services"]["redis"]["nodes"], 2);
    // The page's token, minted by alpha, opens beta too (same password).
    let token = page_token(&a).await;
    let mut c = PhxClient::connect(&b.ws_url(&format!("vsn=2.0.0&token={token}")))
        .await
        .unwrap();
    c.join_ok("admin:dashboard").await;
    // A node that goes away is shown silent.
    b.shutdown().await;
    snapshot_where(&mut ops, "beta silent", |s| {
        s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"].as_str().unwrap().starts_with("beta-") && n["alive"] == false)
    })
    .await;
    a.shutdown().await;
}
