//! Turning a [`Run`] into what a person reads (one summary line) and what a
//! script reads (one JSON object, with `--json`).

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::CommonArgs;
use crate::coordinator::Run;

/// A scenario's result.
pub struct Report {
    /// One human line.
    pub line: String,
    /// The full result.
    pub json: Value,
}

/// Print the line, then the JSON when asked.
pub fn print(report: &Report, json: bool) {
    println!("{}", report.line);
    if json {
        println!("{}", report.json);
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// p50/p90/p99/p99.9/max/mean of a µs histogram, in ms.
pub fn latency_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0});
    }
    json!({
        "count": h.len(),
        "mean_ms": round(h.mean() / 1000.0, 3),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

fn latency_line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no latency samples".into();
    }
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max())
    )
}

fn failed(run: &Run) -> u64 {
    run.errors.values().sum()
}

fn rate(run: &Run) -> f64 {
    let s = run.storm.as_secs_f64();
    if s > 0.0 { run.ok as f64 / s } else { 0.0 }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Server RSS growth per joined connection, KiB.
fn per_conn_kib(run: &Run, after: Option<u64>) -> Option<f64> {
    let (before, after) = (run.before.rss_kib?, after?);
    (run.ok > 0).then(|| (after as f64 - before as f64) / run.ok as f64)
}

/// `value` with `digits` decimals, or `n/a`.
fn opt(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "n/a".into(), |v| format!("{v:.digits$}"))
}

fn cpu_delta(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(b? - a?)
}

/// SYNs dropped by full listen backlogs while connecting (system-wide counter).
fn listen_overflows(run: &Run) -> Option<u64> {
    Some(run.joined.listen_overflows? - run.at_go.listen_overflows?)
}

fn overflow_note(run: &Run) -> String {
    match listen_overflows(run) {
        Some(n) if n > 0 => format!(" [{n} listen-backlog overflows: 1 s SYN retries]"),
        _ => String::new(),
    }
}

fn common_json(args: &CommonArgs, run: &Run) -> Value {
    json!({
        "scenario": run.scenario.name(),
        "url": args.url,
        "procs": args.procs,
        "connections": run.requested,
        "topics_per_conn": args.topics_per_conn,
        "rooms": args.rooms,
        "rate": args.rate,
        "concurrency": args.concurrency,
        "established": run.ok,
        "failed": failed(run),
        "errors": run.errors,
        "dropped": run.dropped,
        "closed": run.closed,
        "timed_out": run.timed_out,
        "setup_s": round(run.storm.as_secs_f64(), 3),
        "connects_per_s": round(rate(run), 1),
        "latency": latency_json(&run.latency_us),
        "listen_overflows": listen_overflows(run),
        "client_rss_kib": run.client_rss_kib,
        "client_rss_per_conn_kib": (run.ok > 0)
            .then(|| round(run.client_rss_kib as f64 / run.ok as f64, 2)),
        "server_pid": args.server_pid,
    })
}

/// The `idle` result: server RSS per connection and CPU per connection-hour.
pub fn idle(args: &CommonArgs, run: &Run) -> Report {
    let hold_s = run.hold.as_secs_f64();
    let cpu_hold = cpu_delta(run.joined.cpu_s, run.after_hold.cpu_s);
    let conn_hours = run.ok as f64 * hold_s / 3600.0;
    let cpu_per_conn_hour = cpu_hold
        .filter(|_| conn_hours > 0.0)
        .map(|c| c / conn_hours);
    let joined_kib = per_conn_kib(run, run.joined.rss_kib);
    let held_kib = per_conn_kib(run, run.after_hold.rss_kib);
    let mut json = common_json(args, run);
    json["hold_s"] = json!(round(hold_s, 3));
    json["server"] = json!({
        "rss_before_kib": run.before.rss_kib,
        "rss_joined_kib": run.joined.rss_kib,
        "rss_after_hold_kib": run.after_hold.rss_kib,
        "rss_per_conn_kib": joined_kib.map(|v| round(v, 2)),
        "rss_per_conn_after_hold_kib": held_kib.map(|v| round(v, 2)),
        "cpu_setup_s": cpu_delta(run.at_go.cpu_s, run.joined.cpu_s).map(|v| round(v, 3)),
        "cpu_hold_s": cpu_hold.map(|v| round(v, 3)),
        "cpu_s_per_conn_hour": cpu_per_conn_hour.map(|v| round(v, 6)),
    });
    let server = match (
        run.before.rss_kib,
        run.joined.rss_kib,
        run.after_hold.rss_kib,
    ) {
        (Some(b), Some(j), Some(h)) => format!(
            "server RSS {:.1} MiB -> {:.1} MiB joined ({} KiB/conn), {:.1} MiB after {:.0}s hold ({} KiB/conn); \
             CPU {}s over hold = {} CPU-s per conn-hour",
            mib(b),
            mib(j),
            opt(joined_kib, 1),
            mib(h),
            hold_s,
            opt(held_kib, 1),
            opt(cpu_hold, 3),
            opt(cpu_per_conn_hour, 6),
        ),
        _ => "server not sampled (no --server-pid)".into(),
    };
    let line = format!(
        "idle: {}/{} joined ({} failed, {} dropped) over {} procs in {:.2}s | {} | setup {}{}",
        run.ok,
        run.requested,
        failed(run),
        run.dropped,
        args.procs,
        run.storm.as_secs_f64(),
        server,
        latency_line(&run.latency_us),
        overflow_note(run),
    );
    Report { line, json }
}

/// The `connect` result: connects/s and latency.
pub fn connect(args: &CommonArgs, run: &Run) -> Report {
    let cpu = cpu_delta(run.at_go.cpu_s, run.joined.cpu_s);
    let cpu_ms_per_connect = cpu
        .filter(|_| run.ok > 0)
        .map(|c| c * 1000.0 / run.ok as f64);
    let mut json = common_json(args, run);
    json["server"] = json!({
        "rss_before_kib": run.before.rss_kib,
        "rss_joined_kib": run.joined.rss_kib,
        "cpu_storm_s": cpu.map(|v| round(v, 3)),
        "cpu_ms_per_connect": cpu_ms_per_connect.map(|v| round(v, 4)),
    });
    let server = match cpu {
        Some(c) => format!(
            " | server CPU {c:.2}s ({} ms/connect)",
            opt(cpu_ms_per_connect, 3)
        ),
        None => String::new(),
    };
    let line = format!(
        "connect: {}/{} joined ({} failed) over {} procs in {:.2}s = {:.0} connects/s | latency {}{}{}",
        run.ok,
        run.requested,
        failed(run),
        args.procs,
        run.storm.as_secs_f64(),
        rate(run),
        latency_line(&run.latency_us),
        overflow_note(run),
        server,
    );
    Report { line, json }
}

/// The `fanout` and `rooms` result: deliveries/s and delivery latency.
pub fn traffic(args: &CommonArgs, run: &Run) -> Report {
    let secs = run.hold.as_secs_f64().max(1e-9);
    let per_s = run.delivered as f64 / secs;
    let mut json = common_json(args, run);
    json["hold_s"] = json!(round(secs, 3));
    json["published"] = json!(run.published);
    json["delivered"] = json!(run.delivered);
    json["deliveries_per_s"] = json!(round(per_s, 1));
    json["published_per_s"] = json!(round(run.published as f64 / secs, 1));
    json["delivery_latency"] = latency_json(&run.delivery_us);
    let cpu = cpu_delta(run.joined.cpu_s, run.after_hold.cpu_s);
    json["server"] = json!({
        "rss_joined_kib": run.joined.rss_kib,
        "cpu_traffic_s": cpu.map(|v| round(v, 3)),
        // Deliveries per second of server CPU: efficiency, whatever the client's share.
        "deliveries_per_cpu_s": cpu.filter(|c| *c > 0.0).map(|c| round(run.delivered as f64 / c, 0)),
    });
    let line = format!(
        "{}: {}/{} joined over {} procs | {} published in {:.1}s, {} delivered = {:.0} deliveries/s | delivery {}{}",
        run.scenario.name(),
        run.ok,
        run.requested,
        args.procs,
        run.published,
        secs,
        run.delivered,
        per_s,
        latency_line(&run.delivery_us),
        if failed(run) > 0 {
            format!(" | {} failed to join", failed(run))
        } else {
            String::new()
        },
    );
    Report { line, json }
}

/// The `presence` result: how long until every client's view listed every user.
pub fn presence(args: &CommonArgs, run: &Run) -> Report {
    let converged = run.delivered;
    let mut json = common_json(args, run);
    json["converged"] = json!(converged);
    json["convergence"] = latency_json(&run.delivery_us);
    let all = if run.delivery_us.is_empty() {
        "none".to_string()
    } else {
        format!("{:.2}s", run.delivery_us.max() as f64 / 1e6)
    };
    let line = format!(
        "presence: {}/{} joined over {} procs in {:.2}s | {converged}/{} views converged; all converged after {all} \
         (from the first connect; median view {:.2}s)",
        run.ok,
        run.requested,
        args.procs,
        run.storm.as_secs_f64(),
        run.ok,
        run.delivery_us.value_at_quantile(0.5) as f64 / 1e6,
    );
    Report { line, json }
}
