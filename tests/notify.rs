//! Notification providers against local stand-ins that check what the real
//! services require: FCM HTTP v1 with its OAuth token endpoint and APNs (both
//! HTTP/2, as the real ones), and a real SMTP server (aiosmtpd).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use armoricore::config::{Config, NotificationsConfig};
use armoricore::metrics::Metrics;
use armoricore::notify::request::{Notification, Platform};
use armoricore::notify::sender::{Delivery, Provider, Sender};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use common::next_event;
use common::push::{Seen, SmtpServer, TLS_CA, apns_stand_in, fcm_error, fcm_stand_in, mails, pem};
use serde_json::{Value, json};

fn config() -> NotificationsConfig {
    let mut c = Config::defaults().notifications;
    c.retry_initial_ms = 20;
    c.retry_max_ms = 200;
    c.max_attempts = 3;
    c
}

fn push_to(devices: &[(&str, Platform)]) -> Notification {
    let tokens: Vec<Value> = devices
        .iter()
        .map(|(t, p)| json!({"platform": p.as_str(), "token": t}))
        .collect();
    let payload = json!({"user_id": "u1", "notification_id": "n1", "notification_type": "push",
        "title": "Hello", "body": "World", "priority": "high", "ttl_s": 60, "collapse_key": "chat",
        "data": {"room": 3}, "tokens": tokens});
    Notification::from_payload(payload.as_object().unwrap(), "ev").unwrap()
}

#[tokio::test]
async fn fcm_sends_with_a_cached_oauth_token_and_classifies_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (stand, base, account) = fcm_stand_in(dir.path()).await;
    {
        let mut seen = stand.seen.lock();
        seen.script.insert(
            "gone".into(),
            vec![(
                404,
                fcm_error(404, "UNREGISTERED", "Requested entity was not found."),
                None,
            )],
        );
        seen.script.insert(
            "bad".into(),
            vec![(
                400,
                fcm_error(
                    400,
                    "INVALID_ARGUMENT",
                    "The registration token is not a valid FCM registration token",
                ),
                None,
            )],
        );
        seen.script.insert(
            "quota".into(),
            vec![(
                429,
                fcm_error(429, "QUOTA_EXCEEDED", "Quota exceeded"),
                Some("1"),
            )],
        );
        seen.script.insert(
            "down".into(),
            vec![(503, fcm_error(503, "UNAVAILABLE", "x"), None); 5],
        );
    }
    let mut c = config();
    c.fcm.service_account_file = account.display().to_string();
    c.fcm.base_url = base;
    let sender = Sender::from_config(&c, Arc::new(Metrics::new()))
        .unwrap()
        .unwrap();
    let started = std::time::Instant::now();
    let reports = sender
        .deliver(&push_to(&[
            ("ok-android", Platform::Android),
            ("ok-ios", Platform::Ios),
            ("gone", Platform::Android),
            ("bad", Platform::Web),
            ("quota", Platform::Android),
            ("down", Platform::Android),
        ]))
        .await;
    let by_token: HashMap<String, (Delivery, u32)> = reports
        .into_iter()
        .map(|r| (r.device.unwrap().token, (r.delivery, r.attempts)))
        .collect();
    assert!(
        matches!(&by_token["ok-android"], (Delivery::Sent { provider: Provider::Fcm, id }, 1) if id.starts_with("projects/test-project/messages/"))
    );
    assert!(
        matches!(&by_token["ok-ios"].0, Delivery::Sent { .. }),
        "iOS through FCM without APNs"
    );
    assert!(
        matches!(&by_token["gone"], (Delivery::InvalidToken { .. }, 1)),
        "no retry of a dead token"
    );
    assert!(matches!(
        &by_token["bad"],
        (Delivery::InvalidToken { .. }, 1)
    ));
    assert!(
        matches!(&by_token["quota"], (Delivery::Sent { .. }, 2)),
        "{:?}",
        by_token["quota"]
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 honoured"
    );
    assert!(
        matches!(&by_token["down"], (Delivery::Failed { reason }, 3) if reason.contains("UNAVAILABLE"))
    );
    let seen = stand.seen.lock();
    assert_eq!(seen.tokens_issued, 1, "one OAuth token for every send");
    let android = seen
        .requests
        .iter()
        .find(|r| r["message"]["token"] == "ok-android")
        .unwrap();
    assert_eq!(
        android["message"]["android"],
        json!({"priority": "HIGH", "ttl": "60s", "collapse_key": "chat"})
    );
    assert_eq!(
        android["message"]["data"],
        json!({"room": "3"}),
        "data values are strings"
    );
    let ios = seen
        .requests
        .iter()
        .find(|r| r["message"]["token"] == "ok-ios")
        .unwrap();
    assert_eq!(ios["message"]["apns"]["headers"]["apns-priority"], "10");
}

#[tokio::test]
async fn apns_sends_with_one_provider_token_and_classifies_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (stand, base, key) = apns_stand_in(dir.path()).await;
    {
        let mut seen = stand.seen.lock();
        seen.script.insert(
            "bad".into(),
            vec![(400, json!({"reason": "BadDeviceToken"}), None)],
        );
        seen.script.insert(
            "gone".into(),
            vec![(
                410,
                json!({"reason": "Unregistered", "timestamp": 1764230000000u64}),
                None,
            )],
        );
        seen.script.insert(
            "busy".into(),
            vec![(429, json!({"reason": "TooManyRequests"}), None)],
        );
        seen.script.insert(
            "big".into(),
            vec![(413, json!({"reason": "PayloadTooLarge"}), None)],
        );
        seen.script.insert(
            "stale".into(),
            vec![(403, json!({"reason": "ExpiredProviderToken"}), None)],
        );
    }
    let mut c = config();
    c.apns.key_file = key.display().to_string();
    c.apns.key_id = "KEYID12345".into();
    c.apns.team_id = "TEAMID1234".into();
    c.apns.topic = "com.example.app".into();
    c.apns.base_url = base;
    let sender = Sender::from_config(&c, Arc::new(Metrics::new()))
        .unwrap()
        .unwrap();
    let reports = sender
        .deliver(&push_to(&[
            ("a0b1", Platform::Ios),
            ("bad", Platform::Ios),
            ("gone", Platform::Ios),
            ("busy", Platform::Ios),
            ("big", Platform::Ios),
            ("stale", Platform::Ios),
            ("droid", Platform::Android),
        ]))
        .await;
    let by_token: HashMap<String, (Delivery, u32)> = reports
        .into_iter()
        .map(|r| (r.device.unwrap().token, (r.delivery, r.attempts)))
        .collect();
    assert!(
        matches!(&by_token["a0b1"], (Delivery::Sent { provider: Provider::Apns, id }, 1) if id.len() == 36),
        "{:?}",
        by_token["a0b1"]
    );
    assert!(matches!(
        &by_token["bad"],
        (Delivery::InvalidToken { .. }, 1)
    ));
    assert!(matches!(
        &by_token["gone"],
        (Delivery::InvalidToken { .. }, 1)
    ));
    assert!(matches!(&by_token["busy"], (Delivery::Sent { .. }, 2)));
    assert!(
        matches!(&by_token["big"], (Delivery::Failed { reason }, 1) if reason.contains("PayloadTooLarge"))
    );
    assert!(
        matches!(&by_token["droid"].0, Delivery::Failed { reason } if reason.contains("no push provider"))
    );
    // ExpiredProviderToken: a new provider token, the push sent with it, and the
    // provider still up.
    assert!(matches!(&by_token["stale"], (Delivery::Sent { .. }, 1)));
    assert!(sender.status().iter().all(|(_, down)| down.is_none()));
    let jwts = |token: &str| -> Vec<String> {
        let seen = stand.seen.lock();
        seen.requests
            .iter()
            .filter(|r| r["token"] == token)
            .map(|r| r["jwt"].as_str().unwrap().to_string())
            .collect()
    };
    let stale = jwts("stale");
    assert_eq!(stale.len(), 2, "refused, then sent with a new token");
    assert_ne!(stale[0], stale[1]);
    assert_eq!(
        jwts("a0b1")[0],
        stale[0],
        "one provider token for all sends"
    );
    // The new provider token is kept for what follows.
    sender.deliver(&push_to(&[("later", Platform::Ios)])).await;
    assert_eq!(jwts("later"), vec![stale[1].clone()]);

    let seen = stand.seen.lock();
    let sent = seen.requests.iter().find(|r| r["token"] == "a0b1").unwrap();
    assert_eq!(sent["collapse"], "chat");
    assert_eq!(sent["body"]["room"], "3");
    assert!(sent["expiration"].as_str().unwrap().parse::<u64>().is_ok());
}

#[tokio::test]
async fn refused_credentials_mark_the_provider_down_and_fail_fast() {
    let dir = tempfile::tempdir().unwrap();
    let (_stand, base, _key) = apns_stand_in(dir.path()).await;
    // A key the stand-in does not know: every provider token is refused.
    let other = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let wrong = dir.path().join("wrong.p8");
    std::fs::write(
        &wrong,
        pem("PRIVATE KEY", other.to_pkcs8v1().unwrap().as_ref()),
    )
    .unwrap();
    let mut c = config();
    c.apns.key_file = wrong.display().to_string();
    c.apns.key_id = "KEYID12345".into();
    c.apns.team_id = "TEAMID1234".into();
    c.apns.topic = "com.example.app".into();
    c.apns.base_url = base;
    let sender = Sender::from_config(&c, Arc::new(Metrics::new()))
        .unwrap()
        .unwrap();
    let first = sender.deliver(&push_to(&[("a0b1", Platform::Ios)])).await;
    assert!(
        matches!(&first[0].delivery, Delivery::Failed { reason } if reason.contains("InvalidProviderToken"))
    );
    assert!(
        sender
            .status()
            .iter()
            .any(|(p, down)| *p == "apns" && down.is_some()),
        "/ready can say so"
    );
    let second = sender.deliver(&push_to(&[("c2d3", Platform::Ios)])).await;
    assert!(
        matches!(&second[0], r if r.attempts == 0 && matches!(&r.delivery, Delivery::Failed { reason } if reason.starts_with("apns is down")))
    );
}

#[test]
fn a_bad_service_account_or_key_is_a_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sa.json");
    std::fs::write(&path, "{}").unwrap();
    let mut c = config();
    c.fcm.service_account_file = path.display().to_string();
    let err = Sender::from_config(&c, Arc::new(Metrics::new()))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("service account") && err.contains("sa.json"),
        "{err}"
    );
    let mut c = config();
    c.apns.key_file = path.display().to_string();
    c.apns.key_id = "K".into();
    c.apns.team_id = "T".into();
    c.apns.topic = "t".into();
    let err = Sender::from_config(&c, Arc::new(Metrics::new()))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("P-256"), "{err}");
    let mut c = smtp_config(25);
    c.email.tls = "starttls".into();
    c.email.ca_file = dir.path().join("missing.pem").display().to_string();
    let err = Sender::from_config(&c, Arc::new(Metrics::new()))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.starts_with("notifications.email.ca_file:") && err.contains("missing.pem"),
        "{err}"
    );
    assert!(
        Sender::from_config(&config(), Arc::new(Metrics::new()))
            .unwrap()
            .is_none(),
        "nothing configured"
    );
}

fn email_to(to: &str, html: bool) -> Notification {
    let mut email = json!({"to": to, "subject": "Welcome aboard", "text": "Hello in text"});
    if html {
        email["html"] = json!("<p>Hello in <b>HTML</b></p>");
    }
    let payload = json!({"user_id": "u1", "notification_type": "email", "title": "t", "body": "b",
        "email": email});
    Notification::from_payload(payload.as_object().unwrap(), "ev").unwrap()
}

fn smtp_config(port: u16) -> NotificationsConfig {
    let mut c = config();
    c.email.smtp_host = "127.0.0.1".into();
    c.email.smtp_port = port;
    c.email.tls = "none".into();
    c.email.username = "user".into();
    c.email.password = "pass".into();
    c.email.from = "Armoricore <noreply@example.com>".into();
    c.email.reply_to = "support@example.com".into();
    c.email.timeout_s = 5;
    c
}

#[tokio::test]
async fn email_goes_out_over_smtp_with_text_and_html() {
    let out = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let _server = SmtpServer::start(port, out.path());
    let sender = Sender::from_config(&smtp_config(port), Arc::new(Metrics::new()))
        .unwrap()
        .unwrap();
    let report = sender
        .deliver(&email_to("Alice <alice@example.com>", true))
        .await;
    assert!(
        matches!(&report[0].delivery, Delivery::Sent { provider: Provider::Email, id } if id.contains("queued as")),
        "{report:?}"
    );
    let mails = mails(out.path());
    assert_eq!(mails.len(), 1);
    let m = &mails[0];
    for header in [
        "From: Armoricore <noreply@example.com>",
        "Reply-To: support@example.com",
        "To: Alice <alice@example.com>",
        "Subject: Welcome aboard",
        "Content-Type: multipart/alternative",
    ] {
        assert!(m.contains(header), "{header} in:\n{m}");
    }
    assert!(
        m.contains("Hello in text") && m.contains("<b>HTML</b>"),
        "{m}"
    );

    // 5xx: permanent, once. 4xx: retried, then given up.
    let report = sender.deliver(&email_to("perm@example.com", false)).await;
    assert!(
        matches!(&report[0], r if r.attempts == 1 && matches!(&r.delivery, Delivery::Failed { reason } if reason.contains("550"))),
        "{report:?}"
    );
    let report = sender.deliver(&email_to("temp@example.com", false)).await;
    assert!(
        matches!(&report[0], r if r.attempts == 3 && matches!(&r.delivery, Delivery::Failed { reason } if reason.contains("451"))),
        "{report:?}"
    );
}

#[tokio::test]
async fn email_waits_out_an_smtp_server_that_is_down_then_up() {
    let out = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut c = smtp_config(port);
    c.retry_initial_ms = 300;
    c.retry_max_ms = 1000;
    c.max_attempts = 6;
    let sender = Sender::from_config(&c, Arc::new(Metrics::new()))
        .unwrap()
        .unwrap();
    let delivering =
        tokio::spawn(async move { sender.deliver(&email_to("bob@example.com", false)).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(mails(out.path()).is_empty());
    let _server = SmtpServer::start(port, out.path());
    let report = delivering.await.unwrap();
    assert!(
        matches!(&report[0].delivery, Delivery::Sent { .. }),
        "{report:?}"
    );
    assert!(
        report[0].attempts >= 2,
        "connection refused first: {report:?}"
    );
    assert_eq!(mails(out.path()).len(), 1, "sent once");
}

#[tokio::test]
async fn email_goes_out_over_starttls_or_implicit_tls_to_a_relay_with_a_private_ca() {
    for mode in ["starttls", "tls"] {
        let out = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let _server = SmtpServer::start_tls(port, out.path(), mode);
        let mut c = smtp_config(port);
        c.email.tls = mode.into();
        // The relay's certificate is checked: unknown CA, nothing sent.
        let untrusted = Sender::from_config(&c, Arc::new(Metrics::new()))
            .unwrap()
            .unwrap();
        let report = untrusted
            .deliver(&email_to("alice@example.com", false))
            .await;
        assert!(
            matches!(&report[0].delivery, Delivery::Failed { reason } if reason.contains("certificate")),
            "{mode}: {report:?}"
        );
        assert!(mails(out.path()).is_empty());

        c.email.ca_file = TLS_CA.into();
        let sender = Sender::from_config(&c, Arc::new(Metrics::new()))
            .unwrap()
            .unwrap();
        let report = sender.deliver(&email_to("alice@example.com", true)).await;
        assert!(
            matches!(&report[0], r if r.attempts == 1 && matches!(&r.delivery, Delivery::Sent { .. })),
            "{mode}: {report:?}"
        );
        let mails = mails(out.path());
        assert_eq!(mails.len(), 1, "{mode}");
        assert!(
            mails[0].starts_with("X-Test-TLS: yes") && mails[0].contains("To: alice@example.com"),
            "{mode}: {}",
            mails[0]
        );
    }
}

#[tokio::test]
async fn a_node_sends_an_email_job_posted_as_an_event_in_the_original_shape() {
    let out = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let _server = SmtpServer::start(port, out.path());
    let email = smtp_config(port).email;
    let node = common::TestNode::start_with(move |c| c.notifications.email = email).await;
    let (_, ready) = node.get("/ready").await;
    assert!(ready.contains(r#""email":{"status":"up"}"#), "{ready}");
    let mut sent = node.events("notification.sent").await;
    let event = json!({"event_id": "ev-mail-1", "event_type": "notification.requested",
        "timestamp": "2025-01-15T10:30:00Z", "source": "php-backend",
        "payload": {"user_id": "u7", "notification_type": "email", "title": "Your video is ready",
            "body": "It can be watched now.", "data": {"email": "carol@example.com"}}});
    let (status, body) = node.api_post("/api/events", &event).await;
    assert_eq!(status, 202, "{body}");
    let e = next_event(&mut sent, Duration::from_secs(10)).await;
    assert_eq!(e["payload"]["user_id"], "u7");
    assert_eq!(e["payload"]["notification_type"], "email");
    assert_eq!(e["payload"]["provider_ids"][0]["provider"], "email");
    let mails = mails(out.path());
    assert_eq!(mails.len(), 1);
    for part in [
        "To: carol@example.com",
        "Subject: Your video is ready",
        "It can be watched now.",
    ] {
        assert!(mails[0].contains(part), "{part} in:\n{}", mails[0]);
    }
    node.shutdown().await;
}

#[tokio::test]
async fn a_node_sends_notifications_as_jobs_and_reports_each_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let (stand, base, account) = fcm_stand_in(dir.path()).await;
    stand.seen.lock().script.insert(
        "gone".into(),
        vec![
            (
                404,
                fcm_error(404, "UNREGISTERED", "Requested entity was not found."),
                None
            );
            3
        ],
    );
    let node = common::TestNode::start_with(move |c| {
        c.notifications.fcm.service_account_file = account.display().to_string();
        c.notifications.fcm.base_url = base;
    })
    .await;
    let (_, ready) = node.get("/ready").await;
    assert!(
        ready.contains(r#""notifications":{"fcm":{"status":"up"}}"#),
        "{ready}"
    );
    let mut sent = node.events("notification.sent").await;
    let mut invalid = node.events("notification.token_invalid").await;
    let mut failed = node.events("notification.failed").await;
    let mut dead = node.events("armoricore.dlq.notification.requested").await;
    let mut alice = node.connect("u1").await;
    alice.join("user:u1", json!({})).await;

    // One good token, one dead: sent, and the dead one reported.
    let request = json!({"user_id": "u1", "notification_id": "n-1", "notification_type": "push",
        "title": "Hi", "body": "There", "tokens": [
            {"platform": "android", "token": "good"}, {"platform": "ios", "token": "gone"}]});
    let (status, body) = node.api_post("/api/notify", &request).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["notification_id"], "n-1");
    let e = next_event(&mut sent, Duration::from_secs(10)).await;
    let p = &e["payload"];
    assert_eq!(
        (p["user_id"].as_str(), p["notification_id"].as_str()),
        (Some("u1"), Some("n-1"))
    );
    assert_eq!(p["provider_ids"][0]["provider"], "fcm");
    assert!(
        p["provider_ids"][0]["id"]
            .as_str()
            .unwrap()
            .starts_with("projects/test-project/messages/")
    );
    assert_eq!(p["failed"][0]["target"]["token"], "gone");
    let e = next_event(&mut invalid, Duration::from_secs(10)).await;
    assert_eq!(e["payload"]["token"], "gone");
    assert_eq!(e["payload"]["platform"], "ios");
    let pushed = alice.assert_push("user:u1", "notification").await;
    assert_eq!(pushed[4]["notification_id"], "n-1");

    // The same notification_id again: not sent again.
    let (status, _) = node.api_post("/api/notify", &request).await;
    assert_eq!(status, 202);
    let again = next_event(&mut sent, Duration::from_secs(10)).await;
    assert_eq!(again["payload"]["notification_id"], "n-1");
    let to_good = |s: &Seen| {
        s.requests
            .iter()
            .filter(|r| r["message"]["token"] == "good")
            .count()
    };
    assert_eq!(to_good(&stand.seen.lock()), 1, "sent once");

    // Nothing deliverable: notification.failed, and the dead letters keep it.
    let only_dead = json!({"user_id": "u1", "notification_type": "push", "title": "t", "body": "b",
        "data": {"device_token": "gone", "platform": "android"}});
    node.api_post("/api/notify", &only_dead).await;
    let e = next_event(&mut failed, Duration::from_secs(10)).await;
    assert!(
        e["payload"]["reason"]
            .as_str()
            .unwrap()
            .contains("UNREGISTERED"),
        "{e}"
    );
    assert_eq!(e["payload"]["attempts"], 1);
    let letter = next_event(&mut dead, Duration::from_secs(10)).await;
    assert_eq!(letter["event"]["payload"]["data"]["device_token"], "gone");

    // A request that cannot be a notification is refused up front.
    let (status, body) = node
        .api_post(
            "/api/notify",
            &json!({"user_id": "u1", "notification_type": "push",
            "title": "t", "body": "b", "tokens": [{"platform": "sms", "token": "x"}]}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    node.shutdown().await;
}

#[tokio::test]
async fn a_notification_id_done_before_a_restart_is_not_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let (stand, base, account) = fcm_stand_in(dir.path()).await;
    let db = format!("sqlite://{}/notify.db", dir.path().display());
    let start = || {
        let (account, base, db) = (account.display().to_string(), base.clone(), db.clone());
        common::TestNode::start_with(move |c| {
            c.notifications.fcm.service_account_file = account;
            c.notifications.fcm.base_url = base;
            c.database.url = db;
        })
    };
    let request = json!({"user_id": "u1", "notification_id": "n-2", "notification_type": "push",
        "title": "Hi", "body": "There", "tokens": [{"platform": "android", "token": "t2"}]});
    let node = start().await;
    let mut sent = node.events("notification.sent").await;
    node.api_post("/api/notify", &request).await;
    let first = next_event(&mut sent, Duration::from_secs(10)).await;
    node.shutdown().await;
    let node = start().await;
    let mut sent = node.events("notification.sent").await;
    node.api_post("/api/notify", &request).await;
    let again = next_event(&mut sent, Duration::from_secs(10)).await;
    assert_eq!(
        again["payload"]["provider_ids"], first["payload"]["provider_ids"],
        "the first result"
    );
    let sends = stand.seen.lock().requests.len();
    assert_eq!(sends, 1, "sent once across the restart");
    node.shutdown().await;
}

#[tokio::test]
async fn a_provider_rate_paces_its_sends() {
    let dir = tempfile::tempdir().unwrap();
    let (stand, base, account) = fcm_stand_in(dir.path()).await;
    let mut c = config();
    c.fcm.service_account_file = account.display().to_string();
    c.fcm.base_url = base;
    c.fcm.rate_per_s = 5;
    let sender = Sender::from_config(&c, Arc::new(Metrics::new()))
        .unwrap()
        .unwrap();
    let tokens: Vec<(String, Platform)> = (0..10)
        .map(|i| (format!("t{i}"), Platform::Android))
        .collect();
    let tokens: Vec<(&str, Platform)> = tokens.iter().map(|(t, p)| (t.as_str(), *p)).collect();
    let started = std::time::Instant::now();
    let reports = sender.deliver(&push_to(&tokens)).await;
    assert!(
        reports
            .iter()
            .all(|r| matches!(r.delivery, Delivery::Sent { .. }))
    );
    // A burst of 5, then 5 more at 5 per second.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(stand.seen.lock().requests.len(), 10);
}

#[tokio::test]
async fn fcm_sender_mismatch_is_a_dead_token_internal_retries_and_third_party_auth_downs_fcm() {
    let dir = tempfile::tempdir().unwrap();
    let (stand, base, account) = fcm_stand_in(dir.path()).await;
    {
        let mut seen = stand.seen.lock();
        seen.script.insert(
            "other-project".into(),
            vec![(
                403,
                fcm_error(403, "SENDER_ID_MISMATCH", "SenderId mismatch"),
                None,
            )],
        );
        seen.script.insert(
            "flaky".into(),
            vec![(500, fcm_error(500, "INTERNAL", "Internal error"), None)],
        );
        seen.script.insert(
            "ios-app".into(),
            vec![(
                401,
                fcm_error(
                    401,
                    "THIRD_PARTY_AUTH_ERROR",
                    "Auth error from APNS or Web Push Service",
                ),
                None,
            )],
        );
    }
    let mut c = config();
    c.fcm.service_account_file = account.display().to_string();
    c.fcm.base_url = base;
    let sender = Sender::from_config(&c, Arc::new(Metrics::new()))
        .unwrap()
        .unwrap();
    let first = sender
        .deliver(&push_to(&[
            ("other-project", Platform::Android),
            ("flaky", Platform::Android),
        ]))
        .await;
    assert!(
        matches!(&first[0], r if r.attempts == 1 && matches!(r.delivery, Delivery::InvalidToken { .. })),
        "{first:?}"
    );
    assert!(
        matches!(&first[1], r if r.attempts == 2 && matches!(r.delivery, Delivery::Sent { .. })),
        "{first:?}"
    );
    let auth = sender
        .deliver(&push_to(&[("ios-app", Platform::Ios)]))
        .await;
    assert!(
        matches!(&auth[0].delivery, Delivery::Failed { reason } if reason.contains("THIRD_PARTY_AUTH_ERROR")),
        "{auth:?}"
    );
    assert!(
        sender
            .status()
            .iter()
            .any(|(p, down)| *p == "fcm" && down.is_some())
    );
    let next = sender
        .deliver(&push_to(&[("fine", Platform::Android)]))
        .await;
    assert_eq!(
        next[0].attempts, 0,
        "failed fast while FCM is down: {next:?}"
    );
}
