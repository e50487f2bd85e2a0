//! Presence with Phoenix.Presence semantics: presence_state after join, diffs on
//! change, one meta per connection, metas removed when a socket closes.

mod common;

use armoricore::protocols::jwt::Claims;
use common::{PhxClient, TestNode};
use serde_json::{Value, json};

fn metas<'a>(state: &'a Value, key: &str) -> &'a Vec<Value> {
    state[key]["metas"]
        .as_array()
        .unwrap_or_else(|| panic!("no metas for {key} in {state}"))
}

#[tokio::test]
async fn state_then_diffs() {
    let node = TestNode::start().await;
    let token = node.token_for(Claims {
        user_id: "alice".into(),
        channels: None,
        name: Some("Alice".into()),
        meta: Some(json!({"avatar": "a.png"})),
        admin: false,
    });
    let mut alice = PhxClient::connect(&node.ws_url(&format!("vsn=2.0.0&token={token}")))
        .await
        .unwrap();
    let join_ref = alice.join_ok("chat:room:1").await;
    let state = alice.assert_push("chat:room:1", "presence_state").await;
    assert_eq!(
        state[0],
        json!(join_ref),
        "presence_state is pushed on the channel's join_ref"
    );
    let meta = &metas(&state[4], "alice")[0];
    assert_eq!(meta["status"], "online");
    assert_eq!(meta["name"], "Alice");
    assert_eq!(meta["meta"], json!({"avatar": "a.png"}));
    assert!(meta["phx_ref"].is_string());
    assert!(meta["online_at"].is_u64());

    let mut bob = node.connect("bob").await;
    bob.join_ok("chat:room:1").await;
    let state = bob.assert_push("chat:room:1", "presence_state").await;
    assert_eq!(state[4].as_object().unwrap().len(), 2, "{state}");
    let diff = alice
        .find("bob's join", |f| {
            f[3] == "presence_diff" && f[4]["joins"].get("bob").is_some()
        })
        .await;
    assert_eq!(diff[0], Value::Null);
    assert_eq!(diff[4]["leaves"], json!({}));

    // Bob leaves: alice sees the leave with bob's phx_ref.
    let bob_ref = metas(&state[4], "bob")[0]["phx_ref"].clone();
    let r = bob.push(None, "chat:room:1", "phx_leave", json!({})).await;
    bob.assert_reply(&r).await;
    let diff = alice
        .find("bob's leave", |f| {
            f[3] == "presence_diff" && f[4]["leaves"].get("bob").is_some()
        })
        .await;
    assert_eq!(metas(&diff[4]["leaves"], "bob")[0]["phx_ref"], bob_ref);
    node.shutdown().await;
}

#[tokio::test]
async fn two_sockets_of_one_user_are_two_metas() {
    let node = TestNode::start().await;
    let mut watcher = node.connect("bob").await;
    watcher.join_ok("presence:room:1").await;
    let mut tab1 = node.connect("alice").await;
    let mut tab2 = node.connect("alice").await;
    tab1.join_ok("presence:room:1").await;
    tab2.join_ok("presence:room:1").await;
    let state = tab2.assert_push("presence:room:1", "presence_state").await;
    assert_eq!(metas(&state[4], "alice").len(), 2, "{state}");

    drop(tab2); // the socket closes
    let diff = watcher
        .find("tab2's leave", |f| {
            f[3] == "presence_diff" && f[4]["leaves"].get("alice").is_some()
        })
        .await;
    assert_eq!(metas(&diff[4]["leaves"], "alice").len(), 1);
    let hub = node.node().hub().clone();
    let table = hub.presence.list("presence:room:1");
    assert_eq!(metas(&table, "alice").len(), 1);
    assert_eq!(metas(&table, "bob").len(), 1);
    tab1.heartbeat().await;
    node.shutdown().await;
}

#[tokio::test]
async fn update_status_is_a_leave_and_a_join() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    alice.join_ok("presence:room:3").await;
    bob.join_ok("presence:room:3").await;
    let state = bob.assert_push("presence:room:3", "presence_state").await;
    let old_ref = metas(&state[4], "alice")[0]["phx_ref"].clone();

    let r = alice
        .push(
            None,
            "presence:room:3",
            "update_status",
            json!({"status": "away"}),
        )
        .await;
    assert_eq!(alice.assert_reply(&r).await["status"], "ok");
    let diff = bob
        .find("alice's update", |f| {
            f[3] == "presence_diff"
                && f[4]["joins"].get("alice").is_some()
                && f[4]["leaves"].get("alice").is_some()
        })
        .await;
    // Changes within one broadcast period share a diff, so alice's join may be in
    // it too: the update is the meta that replaces the old one.
    let joined = metas(&diff[4]["joins"], "alice")
        .iter()
        .find(|m| m["phx_ref_prev"] == old_ref)
        .unwrap_or_else(|| panic!("no meta replacing {old_ref} in {diff}"));
    assert_eq!(joined["status"], "away");
    assert_eq!(joined["phx_ref_prev"], old_ref);
    assert_eq!(metas(&diff[4]["leaves"], "alice")[0]["phx_ref"], old_ref);

    let r = alice
        .push(
            None,
            "presence:room:3",
            "update_status",
            json!({"status": "bogus"}),
        )
        .await;
    let reply = alice.assert_reply(&r).await;
    assert_eq!(reply["status"], "error");
    node.shutdown().await;
}
