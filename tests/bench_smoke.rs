//! Smoke runs of every `armoricore-bench` scenario against a node in this process:
//! a few hundred connections for a few seconds, so the harness keeps working.
//! (Speed is judged by `bench/compare.sh`, never here.)

mod common;

use std::process::Command;

use common::{SECRET, TestNode};
use serde_json::Value;

/// Run one scenario with `--json`; its last stdout line is the result.
fn bench(node: &TestNode, args: &[&str]) -> Value {
    let url = format!("ws://{}/socket/websocket", node.addr);
    let out = Command::new(env!("CARGO_BIN_EXE_armoricore-bench"))
        .args(args)
        .args([
            "--url",
            &url,
            "--secret",
            SECRET,
            "--procs",
            "2",
            "--json",
            "--timeout",
            "60s",
        ])
        .args(["--server-pid", &std::process::id().to_string()])
        .output()
        .expect("armoricore-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().expect("a result line");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_against_armoricore() {
    let node = TestNode::start().await;

    let idle = bench(&node, &["idle", "--connections", "200", "--hold", "1s"]);
    assert_eq!(idle["established"], 200, "{idle}");
    assert!(
        idle["server"]["rss_per_conn_kib"].as_f64().is_some(),
        "{idle}"
    );

    let connect = bench(&node, &["connect", "--connections", "200"]);
    assert_eq!(connect["established"], 200, "{connect}");
    assert!(connect["connects_per_s"].as_f64().unwrap() > 0.0);

    let fanout = bench(
        &node,
        &[
            "fanout",
            "--connections",
            "100",
            "--topic-prefix",
            "comments:stream:",
            "--publish-rate",
            "20",
            "--hold",
            "2s",
        ],
    );
    let published = fanout["published"].as_u64().unwrap();
    assert!(published >= 20, "{fanout}");
    // Every subscriber gets every message, the publisher included; allow the last
    // few in flight at stop.
    let delivered = fanout["delivered"].as_u64().unwrap();
    assert!(delivered >= (published - 2) * 100, "{fanout}");
    assert!(fanout["delivery_latency"]["p99_ms"].as_f64().is_some());

    let rooms = bench(
        &node,
        &[
            "rooms",
            "--connections",
            "150",
            "--rooms",
            "50",
            "--rate-per-user",
            "2",
            "--hold",
            "2s",
        ],
    );
    assert!(
        rooms["delivered"].as_u64().unwrap() >= rooms["published"].as_u64().unwrap() * 2,
        "{rooms}"
    );

    let presence = bench(
        &node,
        &[
            "presence",
            "--connections",
            "100",
            "--rate",
            "200",
            "--hold",
            "3s",
        ],
    );
    assert_eq!(presence["converged"], 100, "{presence}");
    node.shutdown().await;
}

#[test]
fn the_notify_scenario_runs_against_its_fcm_stand_in() {
    let out = Command::new(env!("CARGO_BIN_EXE_armoricore-bench"))
        .args(["notify", "--jobs", "300", "--window", "50", "--json"])
        .output()
        .expect("armoricore-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "notify failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(result["jobs"], 300);
    for run in ["baseline", "armoricore"] {
        let r = &result[run];
        assert!(r["sends_per_s"].as_f64().unwrap() > 0.0, "{result}");
        assert!(
            r["p50_ms"].as_f64().unwrap() <= r["p99_ms"].as_f64().unwrap(),
            "{result}"
        );
    }
}

#[test]
fn the_calls_scenario_forwards_through_the_sfu() {
    let out = Command::new(env!("CARGO_BIN_EXE_armoricore-bench"))
        .args([
            "calls",
            "--participants",
            "3",
            "--pps",
            "50",
            "--seconds",
            "2",
            "--json",
        ])
        .output()
        .expect("armoricore-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "calls failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let sfu = &result["armoricore"];
    // 3 participants × 2 subscribers × 50 pps, nearly all of it delivered.
    assert!(sfu["delivered_ratio"].as_f64().unwrap() > 0.9, "{result}");
    assert!(sfu["packets_per_cpu_s"].as_f64().unwrap() > 0.0, "{result}");
    assert!(
        sfu["latency"]["samples"].as_u64().unwrap() > 400,
        "{result}"
    );
    assert!(
        result["direct"]["samples"].as_u64().unwrap() > 50,
        "{result}"
    );
    // The same call with native ArcRTC clients, through the same node.
    let arc = &result["arcrtc"];
    assert!(arc["delivered_ratio"].as_f64().unwrap() > 0.9, "{result}");
    assert!(
        arc["latency"]["samples"].as_u64().unwrap() > 400,
        "{result}"
    );
}
