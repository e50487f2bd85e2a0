//! Persistence: messages, job records and retention on SQLite and on the
//! machine's PostgreSQL (a fresh database per test, dropped after).

mod common;

use std::sync::Arc;

use armoricore::config::{Config, RetentionRule};
use armoricore::jobs::Jobs;
use armoricore::metrics::Metrics;
use armoricore::store::{JobStatus, Store, StoredMessage};
use common::db::TestDb;
use common::jobs::{Behaviour, TestJob};
use common::{API_KEY, PhxClient, TestNode, http};
use serde_json::{Value, json};

async fn node_on(db: &TestDb) -> TestNode {
    let url = db.url();
    TestNode::start_with(move |c| c.database.url = url).await
}

async fn api(node: &TestNode, method: &str, path: &str) -> (u16, Value) {
    let auth = format!("apikey {API_KEY}");
    let (status, body) = http(node.addr, method, path, &[("Authorization", &auth)], "").await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// `GET path` until its body satisfies `done` (at most `common::WAIT`).
async fn api_until(node: &TestNode, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let (_, body) = api(node, "GET", path).await;
        if done(&body) {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "{path}: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Post `n` messages to `topic` (joined as `join_ref`); their replies `{id, offset}`.
async fn post(client: &mut PhxClient, join_ref: &str, topic: &str, n: usize) -> Vec<Value> {
    let mut replies = Vec::new();
    for i in 0..n {
        let r = client
            .push(
                Some(join_ref),
                topic,
                "new_message",
                json!({"content": format!("m{i}")}),
            )
            .await;
        let reply = client.assert_reply(&r).await;
        assert_eq!(reply["status"], "ok", "{reply}");
        replies.push(reply["response"].clone());
    }
    replies
}

fn offsets(messages: &Value) -> Vec<u64> {
    messages
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {messages}"))
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect()
}

async fn restart_keeps_and_pages(db: TestDb) {
    let kind = db.kind();
    let topic = "chat:room:persist";
    let node = node_on(&db).await;
    let mut alice = node.connect("alice").await;
    let (join_ref, reply) = alice.join(topic, json!({})).await;
    let epoch = reply["response"]["epoch"].as_str().unwrap().to_string();
    let sent = post(&mut alice, &join_ref, topic, 30).await;
    assert_eq!(sent[29]["offset"], 30, "{kind}");
    node.shutdown().await;

    // A new node on the same database: offsets, epoch and messages carry on.
    let node = node_on(&db).await;
    let mut bob = node.connect("bob").await;
    let (join_ref, reply) = bob.join(topic, json!({"history": {"limit": 10}})).await;
    let response = &reply["response"];
    assert_eq!(response["offset"], 30, "{kind}: {reply}");
    assert_eq!(
        response["epoch"],
        epoch.as_str(),
        "{kind}: the epoch survives"
    );
    assert_eq!(
        offsets(&response["messages"]),
        (21..=30).collect::<Vec<_>>(),
        "{kind}"
    );
    assert_eq!(response["messages"][9]["content"], "m29");
    assert_eq!(response["messages"][9]["user_id"], "alice");

    // A client that saw up to 25 before the restart recovers the rest.
    let mut carol = node.connect("carol").await;
    let (_, reply) = carol
        .join(topic, json!({"since": {"offset": 25, "epoch": epoch}}))
        .await;
    assert_eq!(reply["response"]["recovered"], true, "{kind}: {reply}");
    for expected in 26..=30 {
        let m = carol.assert_push(topic, "new_message").await;
        assert_eq!(m[4]["offset"], expected, "{kind}");
    }

    // Paging backwards over the channel, then over HTTP.
    let r = bob
        .push(
            Some(&join_ref),
            topic,
            "history",
            json!({"before": 21, "limit": 15}),
        )
        .await;
    let page = bob.assert_reply(&r).await;
    assert_eq!(
        offsets(&page["response"]["messages"]),
        (6..=20).collect::<Vec<_>>(),
        "{kind}"
    );
    assert_eq!(page["response"]["more"], true);
    let r = bob
        .push(
            Some(&join_ref),
            topic,
            "history",
            json!({"before": 6, "limit": 15}),
        )
        .await;
    let page = bob.assert_reply(&r).await;
    assert_eq!(offsets(&page["response"]["messages"]), vec![1, 2, 3, 4, 5]);
    assert_eq!(page["response"]["more"], false);
    let r = bob
        .push(Some(&join_ref), topic, "history", json!({"before": "x"}))
        .await;
    let bad = bob.assert_reply(&r).await;
    assert_eq!(bad["status"], "error", "{bad}");

    let (status, body) = api(
        &node,
        "GET",
        &format!("/api/history/{topic}?before=3&limit=5"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(offsets(&body["messages"]), vec![1, 2]);
    let (status, _) = api(&node, "GET", &format!("/api/history/{topic}?limit=-1")).await;
    assert_eq!(status, 400);

    // Numbering continues after the restart.
    let next = post(&mut bob, &join_ref, topic, 1).await;
    assert_eq!(next[0]["offset"], 31, "{kind}");
    bob.assert_push(topic, "new_message").await;

    // Moderation: the message goes from the database and the ring, and the
    // topic hears of it.
    let id = sent[29]["id"].as_str().unwrap();
    let (status, body) = api(&node, "DELETE", &format!("/api/messages/{id}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deleted"]["offset"], 30);
    let deleted = bob.assert_push(topic, "msg_deleted").await;
    assert_eq!(deleted[4], json!({"id": id, "offset": 30}));
    let (status, _) = api(&node, "DELETE", &format!("/api/messages/{id}")).await;
    assert_eq!(status, 404, "deleted once");
    let (_, body) = api(&node, "GET", &format!("/api/history/{topic}?limit=3")).await;
    assert_eq!(offsets(&body["messages"]), vec![28, 29, 31], "{kind}");
    let mut dave = node.connect("dave").await;
    let (dave_jr, reply) = dave
        .join(topic, json!({"since": {"offset": 29, "epoch": epoch}}))
        .await;
    assert_eq!(reply["response"]["recovered"], true);
    let m = dave.assert_push(topic, "new_message").await;
    assert_eq!(
        m[4]["offset"], 31,
        "{kind}: the deleted message is not replayed"
    );
    let r = dave
        .push(
            Some(&dave_jr),
            topic,
            "new_message",
            json!({"content": "a\u{0}b"}),
        )
        .await;
    assert_eq!(
        dave.assert_reply(&r).await["status"],
        "error",
        "NUL refused"
    );

    // Deleting the newest message never frees its offset, even across a restart.
    let id = next[0]["id"].as_str().unwrap();
    assert_eq!(
        api(&node, "DELETE", &format!("/api/messages/{id}")).await.0,
        200
    );
    node.shutdown().await;
    let node = node_on(&db).await;
    let mut erin = node.connect("erin").await;
    let (jr, _) = erin.join(topic, json!({})).await;
    let after = post(&mut erin, &jr, topic, 1).await;
    assert_eq!(after[0]["offset"], 32, "{kind}");
    node.shutdown().await;
}

#[tokio::test]
async fn messages_survive_a_restart_and_page_backwards_on_sqlite() {
    restart_keeps_and_pages(TestDb::sqlite()).await;
}

#[tokio::test]
async fn messages_survive_a_restart_and_page_backwards_on_postgres() {
    restart_keeps_and_pages(TestDb::postgres().await).await;
}

#[tokio::test]
async fn without_a_database_history_is_in_memory_and_the_api_says_so() {
    let node = TestNode::start_with(|c| c.database.url = "off".into()).await;
    let mut alice = node.connect("alice").await;
    let (join_ref, _) = alice.join("chat:room:1", json!({})).await;
    post(&mut alice, &join_ref, "chat:room:1", 3).await;
    // The join's `history` comes from the ring.
    let mut bob = node.connect("bob").await;
    let (_, reply) = bob
        .join("chat:room:1", json!({"history": {"limit": 2}}))
        .await;
    assert_eq!(offsets(&reply["response"]["messages"]), vec![2, 3]);
    let r = alice
        .push(Some(&join_ref), "chat:room:1", "history", json!({}))
        .await;
    let page = alice.assert_reply(&r).await;
    assert_eq!(page["status"], "error");
    assert!(
        page["response"]["reason"]
            .as_str()
            .unwrap()
            .contains("not kept")
    );
    let (status, _) = api(&node, "GET", "/api/jobs").await;
    assert_eq!(status, 503);
    node.shutdown().await;
}

async fn jobs_are_recorded(db: TestDb) {
    let kind = db.kind();
    let url = db.url();
    let ok = TestJob::new(Behaviour::Succeed);
    let node = TestNode::start_with_jobs(
        move |c| c.database.url = url,
        Jobs::new().with("media.uploaded", ok.clone()),
    )
    .await;
    let (status, _) = node
        .api_post(
            "/api/events",
            &json!({"event_type": "media.uploaded", "payload": {
                "media_id": "m1", "user_id": "u1", "file_path": "/x.mp4", "content_type": "video/mp4", "file_size": 1}}),
        )
        .await;
    assert_eq!(status, 202);
    ok.called(1).await;
    let media = api_until(&node, "/api/media/m1", |m| m["status"] == "done").await;
    assert_eq!(media["user_id"], "u1", "{kind}: {media}");
    assert_eq!(media["attempts"], 1);
    assert_eq!(
        media["playback_urls"]["hls"],
        "https://cdn.example/m1/master.m3u8"
    );
    assert!(media["finished_at"].is_string(), "{media}");
    assert_eq!(api(&node, "GET", "/api/media/nope").await.0, 404);
    let (status, body) = node
        .api_post(
            "/api/events",
            &json!({"event_type": "media.uploaded", "payload": {
                "media_id": "m\u{0}", "user_id": "u1", "file_path": "/x.mp4",
                "content_type": "video/mp4", "file_size": 1}}),
        )
        .await;
    assert_eq!(status, 422, "{kind}: NUL refused up front: {body}");
    node.shutdown().await;

    // A job that fails for good is listed with its reason.
    let url = db.url();
    let failing = TestJob::new(Behaviour::FailRetry);
    let node = TestNode::start_with_jobs(
        move |c| {
            c.database.url = url;
            c.bus.max_deliver = 2;
            c.bus.backoff_ms = vec![10];
        },
        Jobs::new().with("media.uploaded", failing.clone()),
    )
    .await;
    node.api_post(
        "/api/events",
        &json!({"event_type": "media.uploaded", "payload": {
            "media_id": "m2", "user_id": "u1", "file_path": "/y.mp4", "content_type": "video/mp4", "file_size": 1}}),
    )
    .await;
    let failed = api_until(&node, "/api/jobs?status=failed", |f| {
        f["jobs"].as_array().is_some_and(|j| !j.is_empty())
    })
    .await;
    let job = &failed["jobs"][0];
    assert_eq!(job["subject_id"], "m2", "{kind}: {failed}");
    assert_eq!(job["kind"], "media.uploaded");
    assert_eq!(job["attempts"], 2);
    assert_eq!(job["error"], "provider timed out", "{job}");
    let (_, done) = api(&node, "GET", "/api/jobs?status=done&kind=media.uploaded").await;
    assert_eq!(
        done["jobs"].as_array().unwrap().len(),
        1,
        "m1 from the first run"
    );
    assert_eq!(api(&node, "GET", "/api/jobs?status=lost").await.0, 400);
    node.shutdown().await;
}

#[tokio::test]
async fn job_states_are_recorded_on_sqlite() {
    jobs_are_recorded(TestDb::sqlite()).await;
}

#[tokio::test]
async fn job_states_are_recorded_on_postgres() {
    jobs_are_recorded(TestDb::postgres().await).await;
}

fn message(topic: &str, offset: u64, age_days: i64, now_ms: i64) -> StoredMessage {
    StoredMessage {
        msg_id: format!("{topic}/{offset}"),
        topic: topic.into(),
        offset,
        event: "new_message".into(),
        user_id: "u".into(),
        payload: Arc::new(json!({"offset": offset})),
        created_at_ms: now_ms - age_days * 86_400_000,
    }
}

async fn remaining(store: &Store, topic: &str) -> Vec<u64> {
    store
        .messages_before(topic, None, 1000)
        .await
        .unwrap()
        .iter()
        .map(|m| m.offset)
        .collect()
}

async fn retention(db: TestDb) {
    let kind = db.kind();
    let store = Store::open(
        &db.url(),
        &Config::defaults().database,
        Arc::new(Metrics::new()),
    )
    .await
    .unwrap();
    let now = armoricore::store::now_ms();
    let mut batch = Vec::new();
    for topic in ["chat:a", "chat:vip:b", "comments:c", "chat_x"] {
        store.topic_state(topic, "e0", 0).await.unwrap();
        // Offsets 1..=5 are 10 days old, 6..=10 fresh.
        for offset in 1..=10 {
            let age = if offset <= 5 { 10 } else { 0 };
            batch.push(message(topic, offset, age, now));
        }
    }
    store.insert_messages(&batch).await.unwrap();
    store.topic_state("chat:old", "e1", 0).await.unwrap();
    store
        .insert_messages(&[message("chat:old", 7, 30, now)])
        .await
        .unwrap();
    let rules = vec![
        RetentionRule {
            prefix: "chat:".into(),
            days: Some(7),
            count: None,
        },
        RetentionRule {
            prefix: "chat:vip:".into(),
            days: None,
            count: Some(3),
        },
    ];
    let deleted = store.enforce_retention(&rules, now).await.unwrap();
    assert_eq!(deleted, 5 + 7 + 1, "{kind}");
    assert_eq!(
        remaining(&store, "chat:a").await,
        (6..=10).collect::<Vec<_>>(),
        "{kind}: days"
    );
    assert_eq!(
        remaining(&store, "chat:vip:b").await,
        vec![8, 9, 10],
        "{kind}: the longer prefix's count, not chat:'s days"
    );
    assert_eq!(
        remaining(&store, "comments:c").await.len(),
        10,
        "{kind}: no rule"
    );
    assert_eq!(
        remaining(&store, "chat_x").await.len(),
        10,
        "{kind}: `_` is not a wildcard"
    );
    assert!(remaining(&store, "chat:old").await.is_empty());
    // A topic emptied by retention keeps its epoch and head: offsets never restart.
    let state = store.topic_state("chat:old", "other", 5).await.unwrap();
    assert_eq!((state.epoch.as_str(), state.head), ("e1", 7), "{kind}");
    assert!(state.recent.is_empty());
    assert_eq!(
        store.enforce_retention(&rules, now).await.unwrap(),
        0,
        "{kind}: idempotent"
    );

    // Finished jobs past their days go; unfinished ones stay.
    let payload = json!({"media_id": "m"});
    let payload = payload.as_object().unwrap();
    for (id, status) in [("j1", JobStatus::Done), ("j2", JobStatus::Running)] {
        let job = armoricore::store::jobs::NewJob {
            id,
            kind: "media.uploaded",
            payload,
            node: "n",
            bus: "memory",
            request: "{}",
        };
        store.job_started(&job).await.unwrap();
        store.job_status(id, status, None, None).await.unwrap();
    }
    assert_eq!(
        store.delete_finished_jobs(now - 1000).await.unwrap(),
        0,
        "{kind}: too recent"
    );
    assert_eq!(store.delete_finished_jobs(now + 60_000).await.unwrap(), 1);
    assert!(store.job("j1").await.unwrap().is_none());
    assert_eq!(
        store.job("j2").await.unwrap().unwrap().status,
        JobStatus::Running
    );
    store.close().await;
}

#[tokio::test]
async fn retention_deletes_what_it_should_and_nothing_else_on_sqlite() {
    retention(TestDb::sqlite()).await;
}

#[tokio::test]
async fn retention_deletes_what_it_should_and_nothing_else_on_postgres() {
    retention(TestDb::postgres().await).await;
}

#[tokio::test]
async fn a_bad_or_unreachable_database_stops_start_up_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let port = common::free_port();
    for (url, expected) in [
        (
            format!("postgres://nobody:secret@127.0.0.1:{port}/x"),
            "Connection refused",
        ),
        (format!("sqlite://{}/a.db", file.display()), "cannot create"),
    ] {
        let mut config = common::test_config(dir.path());
        config.database.url = url.clone();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let router = armoricore::channels::Router::standard(&config);
        let err = match armoricore::server::Node::start(config, router, listener).await {
            Ok(_) => panic!("{url}: started"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(expected), "{url}: {err}");
        assert!(!err.contains("secret"), "the password is not shown: {err}");
    }
    let e = Config::load_from(
        None,
        [("DATABASE_URL".to_string(), "mysql://x".to_string())],
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("database.url"), "{e}");
}

#[tokio::test]
async fn a_batch_of_concurrent_posts_is_numbered_and_broadcast_in_order() {
    let db = TestDb::sqlite();
    let node = node_on(&db).await;
    let topic = "chat:room:burst";
    let mut watcher = node.connect("watcher").await;
    watcher.join(topic, json!({})).await;
    let mut tasks = Vec::new();
    for u in 0..8 {
        let mut c = node.connect(&format!("u{u}")).await;
        tasks.push(tokio::spawn(async move {
            let (join_ref, _) = c.join(topic, json!({})).await;
            // Pushed back to back, replies read after: they reach the writer together.
            let mut sent = Vec::new();
            for i in 0..25 {
                sent.push(
                    c.push(
                        Some(&join_ref),
                        topic,
                        "new_message",
                        json!({"content": format!("{u}-{i}")}),
                    )
                    .await,
                );
            }
            for r in sent {
                let reply = c.assert_reply(&r).await;
                assert_eq!(reply["status"], "ok", "{reply}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..200 {
        seen.push(
            watcher.assert_push(topic, "new_message").await[4]["offset"]
                .as_u64()
                .unwrap(),
        );
    }
    assert_eq!(
        seen,
        (1..=200).collect::<Vec<_>>(),
        "broadcast in offset order"
    );
    let written = node.metric("armoricore_store_batch_messages_sum").await;
    assert_eq!(written, 200.0, "every message went through the writer");
    let (_, body) = api(&node, "GET", &format!("/api/history/{topic}?limit=100")).await;
    assert_eq!(offsets(&body["messages"]), (101..=200).collect::<Vec<_>>());
    node.shutdown().await;
}

fn ffmpeg_running_in(dir: &std::path::Path) -> bool {
    let out = std::process::Command::new("pgrep")
        .args(["-f", &dir.display().to_string()])
        .output()
        .unwrap();
    !out.stdout.is_empty()
}

/// `GET /api/media/{id}` on a node run as a process.
async fn media_of(addr: std::net::SocketAddr, id: &str) -> Value {
    let auth = format!("apikey {API_KEY}");
    let path = format!("/api/media/{id}");
    let (_, body) = http(addr, "GET", &path, &[("Authorization", &auth)], "").await;
    serde_json::from_str(&body).unwrap_or(Value::Null)
}

#[tokio::test]
async fn an_embedded_bus_node_killed_mid_transcode_requeues_the_job_on_start() {
    use common::binary::{Server, armoricore};
    let data = tempfile::tempdir().unwrap();
    let input = data.path().join("in.mp4");
    let made = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=s=1280x720:r=30:d=20",
        ])
        .args(["-f", "lavfi", "-i", "sine=f=440:d=20", "-c:v", "libx264"])
        .args(["-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac"])
        .arg(&input)
        .status()
        .expect("ffmpeg on PATH");
    assert!(made.success());
    let node = |preset: &str| {
        let mut cmd = armoricore(data.path());
        cmd.env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ARMORICORE_API__KEY", API_KEY)
            .env("ARMORICORE_MEDIA__PRESET", preset)
            .env("ARMORICORE_MEDIA__CONCURRENCY", "1");
        Server::start(cmd)
    };
    let mut first = node("veryslow").await;
    let event = json!({"event_type": "media.uploaded", "payload": {
        "media_id": "k1", "user_id": "u1", "file_path": input.display().to_string(),
        "content_type": "video/mp4", "file_size": 1}});
    let auth = format!("apikey {API_KEY}");
    let (status, body) = http(
        first.addr,
        "POST",
        "/api/events",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        &event.to_string(),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let work = data.path().join("media-work");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while !(work.exists() && ffmpeg_running_in(&work)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the transcode never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(media_of(first.addr, "k1").await["status"], "running");
    first.child.kill().await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while ffmpeg_running_in(&work) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ffmpeg outlived its node"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let second = node("ultrafast").await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(180);
    let media = loop {
        let media = media_of(second.addr, "k1").await;
        if media["status"] == "done" || media["status"] == "failed" {
            break media;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not re-run: {media}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(media["status"], "done", "{media}");
    assert_eq!(
        media["attempts"], 2,
        "one run killed, one finished: {media}"
    );
    let master = data.path().join("media/media/k1/hls/master.m3u8");
    assert!(master.exists(), "{media}");
    second.terminate();
    second.exit(std::time::Duration::from_secs(10)).await;
}

#[tokio::test]
async fn in_a_cluster_offsets_and_epoch_continue_from_the_database_when_redis_lost_them() {
    let mut redis = common::redis::RedisServer::start().await;
    let db = TestDb::postgres().await;
    let on = |name: &str| {
        let (redis_url, db_url, name) = (redis.url(), db.url(), name.to_string());
        TestNode::start_with(move |c| {
            c.cluster.redis_url = redis_url;
            c.cluster.node_name = name;
            c.cluster.heartbeat_ms = 100;
            c.database.url = db_url;
        })
    };
    let (a, b) = (on("a").await, on("b").await);
    let topic = "chat:room:shared";
    let mut alice = a.connect("alice").await;
    let (jr, reply) = alice.join(topic, json!({})).await;
    let epoch = reply["response"]["epoch"].clone();
    let sent = post(&mut alice, &jr, topic, 5).await;
    assert_eq!(sent[4]["offset"], 5);

    // Redis restarts empty: its heads and epochs are gone, the database's are not.
    redis.restart().await;
    for node in [&a, &b] {
        common::eventually("reconnected to Redis", || async {
            node.metric("armoricore_redis_connected").await == 1.0
        })
        .await;
    }
    let mut bob = b.connect("bob").await;
    // Right after a reconnect a join may still find Redis unusable (a script
    // timing out on a loaded machine): it then answers `epoch: "unavailable"`
    // and no offset, by design. Join again (a duplicate join) until Redis answers.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let (jr, reply) = loop {
        let (jr, reply) = bob.join(topic, json!({"history": {"limit": 3}})).await;
        if reply["response"]["epoch"] != "unavailable" || tokio::time::Instant::now() > deadline {
            break (jr, reply);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(reply["response"]["offset"], 5, "{reply}");
    assert_eq!(reply["response"]["epoch"], epoch, "the database's epoch");
    assert_eq!(offsets(&reply["response"]["messages"]), vec![3, 4, 5]);
    let next = post(&mut bob, &jr, topic, 1).await;
    assert_eq!(
        next[0]["offset"], 6,
        "numbering continues past the database's head"
    );
    let (_, body) = api(&a, "GET", &format!("/api/history/{topic}?limit=10")).await;
    assert_eq!(offsets(&body["messages"]), vec![1, 2, 3, 4, 5, 6]);
    a.shutdown().await;
    b.shutdown().await;
}
