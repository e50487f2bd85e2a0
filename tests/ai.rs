//! AI jobs through a node, against local stand-ins of the OpenAI and Anthropic
//! APIs that check the exact requests (multipart fields, headers, JSON shapes)
//! and answer in the providers' recorded shapes, errors included; real ffmpeg
//! extracting and chunking generated audio (tones between silences).

mod common;

/// How long an AI job may take here (ffmpeg and a Retry-After included).
const WAIT: Duration = Duration::from_secs(60);

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use armoricore::ai::captions::parse_vtt;
use armoricore::config::Config;
use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use common::next_event;
use parking_lot::Mutex;
use serde_json::{Value, json};

/// A scripted answer: status, body, Retry-After.
type Answer = (u16, Value, Option<&'static str>);

#[derive(Default)]
struct Seen {
    transcriptions: Vec<Value>,
    chats: Vec<Value>,
    messages: Vec<Value>,
    moderations: Vec<Value>,
    /// Answers taken in order before the normal ones, by endpoint.
    script: std::collections::HashMap<&'static str, VecDeque<Answer>>,
}

#[derive(Clone, Default)]
struct Stand {
    seen: Arc<Mutex<Seen>>,
    /// `json` instead of `verbose_json` answers: text only.
    plain: bool,
    work: Arc<Option<PathBuf>>,
}

impl Stand {
    fn scripted(&self, endpoint: &'static str) -> Option<Response> {
        let (status, body, retry_after) = self.seen.lock().script.get_mut(endpoint)?.pop_front()?;
        let mut r = (StatusCode::from_u16(status).unwrap(), Json(body)).into_response();
        if let Some(ra) = retry_after {
            r.headers_mut().insert("retry-after", ra.parse().unwrap());
        }
        Some(r)
    }
}

fn refuse(reason: String) -> Response {
    (StatusCode::IM_A_TEAPOT, reason).into_response()
}

fn header<'a>(h: &'a HeaderMap, k: &str) -> &'a str {
    h.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

/// Spans of sound in `audio` (what a speech model would transcribe), seconds.
async fn sounds(audio: &Path) -> (f64, Vec<(f64, f64)>) {
    let probe = armoricore::media::probe::probe("ffprobe", audio, Duration::from_secs(20))
        .await
        .unwrap();
    let silences = armoricore::ai::audio::silences("ffmpeg", audio, -35, 0.3)
        .await
        .unwrap();
    let mut spans = Vec::new();
    let mut at = 0.0;
    for (s, e) in silences {
        if s - at > 0.2 {
            spans.push((at, s));
        }
        at = e;
    }
    if probe.duration - at > 0.2 {
        spans.push((at, probe.duration));
    }
    (probe.duration, spans)
}

/// `POST /v1/audio/transcriptions`, multipart, as OpenAI takes it.
async fn transcriptions(
    State(s): State<Stand>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Response {
    if header(&headers, "authorization") != "Bearer sk-test"
        || header(&headers, "openai-organization") != "org-test"
    {
        return (
            StatusCode::UNAUTHORIZED,
            Json(
                json!({"error": {"message": "Incorrect API key provided: sk-***.",
                "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}),
            ),
        )
            .into_response();
    }
    let mut fields = serde_json::Map::new();
    let mut file = None;
    while let Some(field) = form.next_field().await.unwrap() {
        let name = field.name().unwrap_or_default().to_string();
        if name == "file" {
            let file_name = field.file_name().unwrap_or_default().to_string();
            let mime = field.content_type().unwrap_or_default().to_string();
            fields.insert("file_name".into(), json!(file_name));
            fields.insert("mime".into(), json!(mime));
            file = Some(field.bytes().await.unwrap());
        } else {
            fields.insert(name, json!(field.text().await.unwrap()));
        }
    }
    let Some(file) = file else {
        return refuse("no file part".into());
    };
    if fields["model"] != "whisper-1" || fields["temperature"] != "0" {
        return refuse(format!("fields {fields:?}"));
    }
    let dir = s.work.as_ref().clone().unwrap();
    let n = s.seen.lock().transcriptions.len();
    let path = dir.join(format!(
        "upload-{n}-{}",
        fields["file_name"].as_str().unwrap()
    ));
    std::fs::write(&path, &file).unwrap();
    let (duration, spans) = sounds(&path).await;
    fields.insert("duration".into(), json!(duration));
    fields.insert("bytes".into(), json!(file.len()));
    s.seen
        .lock()
        .transcriptions
        .push(Value::Object(fields.clone()));
    if let Some(r) = s.scripted("transcriptions") {
        return r;
    }
    let text: Vec<String> = spans
        .iter()
        .map(|(a, b)| format!("Sound from {a:.1} to {b:.1}."))
        .collect();
    if s.plain || fields["response_format"] == "json" {
        return Json(json!({"text": text.join(" ")})).into_response();
    }
    if fields["response_format"] != "verbose_json"
        || fields["timestamp_granularities[]"] != "segment"
    {
        return refuse(format!("fields {fields:?}"));
    }
    let segments: Vec<Value> = spans
        .iter()
        .zip(&text)
        .enumerate()
        .map(|(i, ((a, b), t))| {
            json!({"id": i, "seek": 0, "start": a, "end": b, "text": format!(" {t}"),
                "tokens": [50364, 2425], "temperature": 0.0, "avg_logprob": -0.25,
                "compression_ratio": 1.1, "no_speech_prob": 0.01})
        })
        .collect();
    Json(
        json!({"task": "transcribe", "language": "english", "duration": duration,
        "text": text.join(" "), "segments": segments}),
    )
    .into_response()
}

/// The `{"segments": [{id, text}]}` a translation request carries, and the target.
fn translation_request(system: &str, user: &str) -> Option<(String, Vec<(u64, String)>)> {
    let to = system
        .split("into \"")
        .nth(1)?
        .split('"')
        .next()?
        .to_string();
    let v: Value = serde_json::from_str(user).ok()?;
    let items = v["segments"]
        .as_array()?
        .iter()
        .map(|i| Some((i["id"].as_u64()?, i["text"].as_str()?.to_string())))
        .collect::<Option<Vec<_>>>()?;
    Some((to, items))
}

fn translated(to: &str, items: &[(u64, String)]) -> String {
    let out: Vec<Value> = items
        .iter()
        .map(|(id, t)| json!({"id": id, "text": format!("[{to}] {t}")}))
        .collect();
    json!({ "segments": out }).to_string()
}

/// `POST /v1/chat/completions`.
async fn chat(State(s): State<Stand>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    if header(&headers, "authorization") != "Bearer sk-test" {
        return refuse("authorization".into());
    }
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    if body["model"] != "gpt-4o-mini"
        || body["response_format"]["type"] != "json_object"
        || messages.len() != 2
        || messages[0]["role"] != "system"
        || messages[1]["role"] != "user"
    {
        return refuse(format!("body {body}"));
    }
    let Some((to, items)) = translation_request(
        messages[0]["content"].as_str().unwrap_or_default(),
        messages[1]["content"].as_str().unwrap_or_default(),
    ) else {
        return refuse(format!("content {body}"));
    };
    s.seen.lock().chats.push(body.clone());
    if let Some(r) = s.scripted("chat") {
        return r;
    }
    let mut content = translated(&to, &items);
    // Scripted "drop": the reply leaves out the last segment.
    if s.seen
        .lock()
        .script
        .get_mut("chat-drop")
        .and_then(VecDeque::pop_front)
        .is_some()
    {
        content = translated(&to, &items[..items.len() - 1]);
    }
    Json(
        json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1764230000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content,
            "refusal": null}, "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140}}),
    )
    .into_response()
}

/// `POST /v1/messages`, as Anthropic takes it.
async fn messages(State(s): State<Stand>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    if header(&headers, "x-api-key") != "sk-ant-test"
        || header(&headers, "anthropic-version") != "2023-06-01"
        || !header(&headers, "content-type").starts_with("application/json")
    {
        return (
            StatusCode::UNAUTHORIZED,
            Json(
                json!({"type": "error", "error": {"type": "authentication_error",
                "message": "invalid x-api-key"}}),
            ),
        )
            .into_response();
    }
    let user = &body["messages"][0];
    if body["model"] != "claude-sonnet-4-5"
        || !body["max_tokens"].is_u64()
        || user["role"] != "user"
        || body["messages"].as_array().map(Vec::len) != Some(1)
    {
        return refuse(format!("body {body}"));
    }
    let Some((to, items)) = translation_request(
        body["system"].as_str().unwrap_or_default(),
        user["content"].as_str().unwrap_or_default(),
    ) else {
        return refuse(format!("content {body}"));
    };
    s.seen.lock().messages.push(body.clone());
    if let Some(r) = s.scripted("messages") {
        return r;
    }
    let mut text = format!("```json\n{}\n```", translated(&to, &items));
    // Scripted "merge": the first two segments come back as one.
    if s.seen
        .lock()
        .script
        .get_mut("messages-merge")
        .and_then(VecDeque::pop_front)
        .is_some()
    {
        let mut merged = items[1..].to_vec();
        merged[0].1 = format!("{} {}", items[0].1, items[1].1);
        text = translated(&to, &merged);
    }
    Json(
        json!({"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
        "stop_sequence": null, "usage": {"input_tokens": 120, "output_tokens": 50}}),
    )
    .into_response()
}

/// `POST /v1/moderations`: flags any input with "badword" in it.
async fn moderations(
    State(s): State<Stand>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if header(&headers, "authorization") != "Bearer sk-test" {
        return refuse("authorization".into());
    }
    let Some(input) = body["input"].as_str() else {
        return refuse(format!("body {body}"));
    };
    if body["model"] != "omni-moderation-latest" {
        return refuse(format!("body {body}"));
    }
    s.seen.lock().moderations.push(body.clone());
    if let Some(r) = s.scripted("moderations") {
        return r;
    }
    let bad = input.contains("badword");
    Json(json!({"id": "modr-1", "model": "omni-moderation-latest", "results": [{
        "flagged": bad,
        "categories": {"harassment": bad, "hate": false, "violence": false},
        "category_scores": {"harassment": if bad { 0.93 } else { 0.01 }, "hate": 0.001, "violence": 0.002},
        "category_applied_input_types": {"harassment": ["text"], "hate": ["text"], "violence": ["text"]}}]}))
    .into_response()
}

async fn stand_in(stand: Stand) -> SocketAddr {
    let router = Router::new()
        .route("/v1/moderations", post(moderations))
        .route("/v1/audio/transcriptions", post(transcriptions))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/messages", post(messages))
        .with_state(stand);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// Tones of `tone_s` seconds with `gap_s` of silence between them; with a test
/// picture when `video`.
fn tones(path: &Path, count: usize, tone_s: f64, gap_s: f64, video: bool) {
    let mut args: Vec<String> = vec!["-v".into(), "error".into(), "-y".into()];
    let mut filter = String::new();
    for i in 0..count {
        args.extend(["-f", "lavfi", "-i"].map(String::from));
        args.push(format!(
            "sine=f={}:d={tone_s}:sample_rate=44100",
            440 + 110 * i
        ));
        filter.push_str(&format!("[{}:a]", 2 * i));
        args.extend(["-f", "lavfi", "-i"].map(String::from));
        args.push(format!("anullsrc=r=44100:cl=mono:d={gap_s}"));
        filter.push_str(&format!("[{}:a]", 2 * i + 1));
    }
    filter.push_str(&format!("concat=n={}:v=0:a=1[a]", 2 * count));
    if video {
        let total = count as f64 * (tone_s + gap_s);
        args.extend(["-f", "lavfi", "-i"].map(String::from));
        args.push(format!("testsrc2=s=320x240:r=10:d={total}"));
    }
    args.extend([
        "-filter_complex".into(),
        filter,
        "-map".into(),
        "[a]".into(),
    ]);
    if video {
        let map = format!("{}:v", 2 * count);
        args.extend(["-map", &map, "-c:v", "libx264", "-preset", "ultrafast"].map(String::from));
    }
    args.extend(["-c:a", "aac"].map(String::from));
    args.push(path.display().to_string());
    let status = std::process::Command::new("ffmpeg")
        .args(&args)
        .status()
        .expect("ffmpeg on PATH");
    assert!(status.success(), "ffmpeg {args:?}");
}

fn with_providers(base: String) -> impl FnOnce(&mut Config) {
    move |c| {
        c.ai.openai.base_url = base.clone();
        c.ai.openai.api_key = "sk-test".into();
        c.ai.openai.organization = "org-test".into();
        c.ai.anthropic.base_url = base;
        c.ai.anthropic.api_key = "sk-ant-test".into();
        c.ai.retry_initial_ms = 50;
        c.ai.retry_max_ms = 200;
        c.bus.backoff_ms = vec![100];
    }
}

fn event(subject: &str, payload: Value) -> Value {
    json!({"event_id": uuid(), "event_type": subject, "timestamp": "2026-11-27T12:00:00Z",
        "source": "backend", "payload": payload})
}

fn uuid() -> String {
    format!(
        "ev-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 0.25
}

#[tokio::test]
async fn a_video_is_transcribed_in_chunks_cut_in_silences_then_captioned_and_translated() {
    let dir = tempfile::tempdir().unwrap();
    let stand = Stand {
        work: Arc::new(Some(dir.path().to_path_buf())),
        ..Stand::default()
    };
    {
        let mut seen = stand.seen.lock();
        seen.script.insert(
            "transcriptions",
            VecDeque::from([(
                429,
                json!({"error": {"message": "Rate limit reached for whisper-1 in organization org-test on requests per min (RPM): Limit 50, Used 50, Requested 1.",
                    "type": "requests", "param": null, "code": "rate_limit_exceeded"}}),
                Some("1"),
            )]),
        );
        seen.script
            .insert("chat-drop", VecDeque::from([(0, Value::Null, None)]));
    }
    let addr = stand_in(stand.clone()).await;
    // Four 2 s tones, 1.5 s apart: sound at 0–2, 3.5–5.5, 7–9, 10.5–12.5.
    let input = dir.path().join("talk.mp4");
    tones(&input, 4, 2.0, 1.5, true);
    let node = common::TestNode::start_with(move |c| {
        with_providers(format!("http://{addr}"))(c);
        c.ai.chunk_max_s = 5;
        c.ai.silence_search_s = 3;
        c.ai.caption_languages = vec!["fr".into()];
    })
    .await;
    let (_, ready) = node.get("/ready").await;
    assert!(
        ready.contains(r#""ai":{"providers":["openai","anthropic"]}"#),
        "{ready}"
    );
    let mut done = node.events("transcription.complete").await;
    let mut captioned = node.events("captioning.complete").await;
    let request = event(
        "transcription.requested",
        json!({"media_id": "m1", "user_id": "u1", "file_path": input.display().to_string()}),
    );
    let (status, body) = node.api_post("/api/events", &request).await;
    assert_eq!(status, 202, "{body}");

    let e = next_event(&mut done, WAIT).await;
    let p = &e["payload"];
    assert_eq!(p["media_id"], "m1");
    assert_eq!(p["language"], "en", "whisper's \"english\" as a code");
    assert_eq!(p["timings"], "segment");
    assert_eq!(p["chunks"], 4, "{p}");
    let segments = p["segments"].as_array().unwrap();
    let times: Vec<(f64, f64)> = segments
        .iter()
        .map(|s| (s["start"].as_f64().unwrap(), s["end"].as_f64().unwrap()))
        .collect();
    let expected = [(0.0, 2.0), (3.5, 5.5), (7.0, 9.0), (10.5, 12.5)];
    assert_eq!(times.len(), 4, "{times:?}");
    for ((s, e), (xs, xe)) in times.iter().zip(expected) {
        assert!(close(*s, xs) && close(*e, xe), "{times:?} vs {expected:?}");
    }
    assert!(close(p["duration"].as_f64().unwrap(), 14.0), "{p}");
    assert!(
        p["transcription"]
            .as_str()
            .unwrap()
            .starts_with("Sound from 0.0 to 2.0.")
    );

    // What the provider got: four mp3 chunks under 5 s each (the first asked
    // twice: 429, then after its Retry-After), the text so far as the prompt.
    {
        let seen = stand.seen.lock();
        let t = &seen.transcriptions;
        assert_eq!(t.len(), 5, "{t:?}");
        for r in t {
            assert_eq!(r["mime"], "audio/mpeg");
            assert!(r["file_name"].as_str().unwrap().ends_with(".mp3"));
            assert!(r["duration"].as_f64().unwrap() <= 5.05, "{r}");
        }
        assert!(
            t[1].get("prompt").is_none(),
            "nothing before the first chunk"
        );
        assert!(
            t[2]["prompt"].as_str().unwrap().contains("Sound from"),
            "{}",
            t[2]
        );
        // A reply that dropped a segment was asked again.
        assert_eq!(seen.chats.len(), 2);
    }
    assert_eq!(
        node.metric(
            r#"armoricore_ai_requests_total{op="transcribe",provider="openai",result="transient"}"#
        )
        .await,
        1.0
    );

    // Captions: the transcript's language, then French with the same timing.
    let en = next_event(&mut captioned, WAIT).await;
    let fr = next_event(&mut captioned, WAIT).await;
    assert_eq!(en["payload"]["language"], "en");
    assert_eq!(fr["payload"]["language"], "fr");
    assert_eq!(fr["payload"]["translated_from"], "en");
    let fetch = |url: &str| {
        let url = url.to_string();
        let node = &node;
        async move {
            let (status, body) = node.get(&url).await;
            assert_eq!(status, 200, "{url}");
            body
        }
    };
    let en_cues = parse_vtt(&fetch(en["payload"]["vtt_url"].as_str().unwrap()).await).unwrap();
    let fr_cues = parse_vtt(&fetch(fr["payload"]["vtt_url"].as_str().unwrap()).await).unwrap();
    assert_eq!(en_cues.len(), 4);
    assert_eq!(en_cues.len(), fr_cues.len());
    for (a, b) in en_cues.iter().zip(&fr_cues) {
        assert_eq!(
            (a.start, a.end),
            (b.start, b.end),
            "the translation keeps the timing"
        );
        assert!(b.lines.join(" ").starts_with("[fr] Sound from"), "{b:?}");
    }
    let srt = fetch(en["payload"]["srt_url"].as_str().unwrap()).await;
    assert!(srt.starts_with("1\n00:00:0"), "{srt}");
    assert!(srt.contains(" --> ") && srt.contains(','), "{srt}");
    assert_eq!(p["captions"].as_array().unwrap().len(), 2);
    node.shutdown().await;
}

#[tokio::test]
async fn segments_are_translated_through_anthropic_keeping_their_timing() {
    let stand = Stand::default();
    {
        let mut seen = stand.seen.lock();
        seen.script.insert(
            "messages",
            VecDeque::from([(
                529,
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
                None,
            )]),
        );
        seen.script
            .insert("messages-merge", VecDeque::from([(0, Value::Null, None)]));
    }
    let addr = stand_in(stand.clone()).await;
    let node = common::TestNode::start_with(with_providers(format!("http://{addr}"))).await;
    let mut done = node.events("translation.complete").await;
    let segments = json!([
        {"start": 0.0, "end": 1.5, "text": "Good morning."},
        {"start": 1.5, "end": 3.25, "text": "How are you"},
        {"start": 3.25, "end": 4.0, "text": "today?"}]);
    let request = event(
        "translation.requested",
        json!({"request_id": "r1", "to_language": "de", "from_language": "en",
            "provider": "anthropic", "segments": segments}),
    );
    node.api_post("/api/events", &request).await;
    let e = next_event(&mut done, WAIT).await;
    let p = &e["payload"];
    assert_eq!(p["request_id"], "r1");
    assert_eq!(p["provider"], "anthropic");
    assert_eq!(p["original_text"], "Good morning. How are you today?");
    let out = p["segments"].as_array().unwrap();
    assert_eq!(out.len(), 3, "merged segments were never published: {p}");
    assert_eq!(
        out[1],
        json!({"start": 1.5, "end": 3.25, "text": "[de] How are you"})
    );
    assert_eq!(
        p["translated_text"],
        "[de] Good morning. [de] How are you [de] today?"
    );
    // 529, then a merged reply, then a good one.
    assert_eq!(stand.seen.lock().messages.len(), 3);
    assert_eq!(p["usage"]["input_tokens"], 240, "the two answered requests");
    assert_eq!(
        node.metric(r#"armoricore_ai_tokens_total{direction="output",provider="anthropic"}"#)
            .await,
        100.0
    );

    // The original shape, through OpenAI by default.
    let request = event(
        "translation.requested",
        json!({"text": "Bonjour", "to_language": "en", "user_id": "u1"}),
    );
    node.api_post("/api/events", &request).await;
    let e = next_event(&mut done, WAIT).await;
    assert_eq!(e["payload"]["translated_text"], "[en] Bonjour");
    assert_eq!(e["payload"]["from_language"], "auto");
    assert!(e["payload"].get("segments").is_none());
    node.shutdown().await;
}

#[tokio::test]
async fn a_server_without_segments_gives_coarse_timings() {
    let dir = tempfile::tempdir().unwrap();
    let stand = Stand {
        work: Arc::new(Some(dir.path().to_path_buf())),
        plain: true,
        ..Stand::default()
    };
    let addr = stand_in(stand.clone()).await;
    let input = dir.path().join("voice.m4a");
    tones(&input, 2, 1.0, 1.0, false);
    let node = common::TestNode::start_with(move |c| {
        with_providers(format!("http://{addr}"))(c);
        c.ai.openai.response_format = "json".into();
        c.ai.captions = false;
    })
    .await;
    let mut done = node.events("transcription.complete").await;
    let request = event(
        "transcription.requested",
        json!({"media_id": 7, "file_path": input.display().to_string(), "language": "en"}),
    );
    node.api_post("/api/events", &request).await;
    let p = next_event(&mut done, WAIT).await["payload"].clone();
    assert_eq!(p["media_id"], 7);
    assert_eq!(p["timings"], "coarse");
    assert_eq!(p["language"], "en", "the hint");
    let segments = p["segments"].as_array().unwrap();
    assert_eq!(segments.len(), 1, "one per chunk: {p}");
    assert_eq!(segments[0]["start"], 0.0);
    assert!(p.get("captions").is_none());
    let seen = stand.seen.lock();
    assert_eq!(seen.transcriptions[0]["language"], "en");
    assert_eq!(seen.transcriptions[0]["response_format"], "json");
    assert!(
        seen.transcriptions[0]
            .get("timestamp_granularities[]")
            .is_none()
    );
}

#[tokio::test]
async fn bad_input_and_refused_credentials_fail_the_job_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let stand = Stand {
        work: Arc::new(Some(dir.path().to_path_buf())),
        ..Stand::default()
    };
    let addr = stand_in(stand.clone()).await;
    let silent_video = dir.path().join("silent.mp4");
    let status = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=s=160x120:r=5:d=1",
        ])
        .args(["-c:v", "libx264", "-preset", "ultrafast"])
        .arg(&silent_video)
        .status()
        .unwrap();
    assert!(status.success());
    let broken = dir.path().join("broken.mp3");
    std::fs::write(&broken, b"not audio at all").unwrap();
    let speech = dir.path().join("speech.m4a");
    tones(&speech, 1, 1.0, 0.5, false);

    let base = format!("http://{addr}");
    let node = common::TestNode::start_with(move |c| {
        with_providers(base)(c);
        c.ai.openai.api_key = "sk-wrong".into();
        c.ai.anthropic.api_key = String::new();
    })
    .await;
    let mut failed = node.events("transcription.failed").await;
    let mut translation_failed = node.events("translation.failed").await;
    for (media, path) in [
        ("no-audio", &silent_video),
        ("broken", &broken),
        ("refused", &speech),
    ] {
        let request = event(
            "transcription.requested",
            json!({"media_id": media, "user_id": "u1", "file_path": path.display().to_string()}),
        );
        node.api_post("/api/events", &request).await;
        let e = next_event(&mut failed, WAIT).await;
        let reason = e["payload"]["reason"].as_str().unwrap().to_string();
        assert_eq!(e["payload"]["media_id"], media);
        match media {
            "no-audio" => assert_eq!(reason, "the source has no audio"),
            "broken" => assert!(
                reason.starts_with("ffmpeg could not read the source"),
                "{reason}"
            ),
            _ => assert!(reason.contains("401 invalid_api_key"), "{reason}"),
        }
    }
    assert_eq!(
        stand.seen.lock().transcriptions.len(),
        0,
        "the key was refused before any upload was kept"
    );
    let request = event(
        "translation.requested",
        json!({"text": "Hallo", "to_language": "fr", "provider": "anthropic"}),
    );
    node.api_post("/api/events", &request).await;
    let e = next_event(&mut translation_failed, WAIT).await;
    assert_eq!(
        e["payload"]["reason"],
        "anthropic is not configured on this node"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn flagged_chat_messages_are_refused_before_or_deleted_after_their_broadcast() {
    let stand = Stand::default();
    let addr = stand_in(stand.clone()).await;
    let base = format!("http://{addr}");

    // Before the broadcast: a flagged message is refused and never seen.
    let node = common::TestNode::start_with({
        let base = base.clone();
        move |c| {
            with_providers(base)(c);
            c.ai.moderation.mode = "before".into();
        }
    })
    .await;
    let mut flagged = node.events("moderation.flagged").await;
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    let join = alice.join_ok("chat:room:1").await;
    bob.join_ok("chat:room:1").await;
    let r = alice
        .push(
            Some(&join),
            "chat:room:1",
            "new_message",
            json!({"content": "hello all"}),
        )
        .await;
    assert_eq!(alice.assert_reply(&r).await["status"], "ok");
    bob.assert_push("chat:room:1", "new_message").await;
    let r = alice
        .push(
            Some(&join),
            "chat:room:1",
            "new_message",
            json!({"content": "you badword"}),
        )
        .await;
    let reply = alice.assert_reply(&r).await;
    assert_eq!(reply["status"], "error", "{reply}");
    assert_eq!(reply["response"]["reason"], "message flagged by moderation");
    assert_eq!(reply["response"]["categories"], json!(["harassment"]));
    bob.refute_push("chat:room:1", "new_message", Duration::from_millis(300))
        .await;
    let e = next_event(&mut flagged, WAIT).await;
    let p = &e["payload"];
    assert_eq!(
        (p["topic"].as_str(), p["user_id"].as_str()),
        (Some("chat:room:1"), Some("alice"))
    );
    assert_eq!(p["withheld"], true);
    assert_eq!(p["mode"], "before");
    assert!(p.get("message_id").is_none(), "never published: {p}");
    // One check per message.
    assert_eq!(stand.seen.lock().moderations.len(), 2);
    node.shutdown().await;

    // After the broadcast: published at once, then deleted once flagged.
    let node = common::TestNode::start_with(move |c| {
        with_providers(base)(c);
        c.ai.moderation.mode = "after".into();
    })
    .await;
    let mut flagged = node.events("moderation.flagged").await;
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    let join = alice.join_ok("chat:room:2").await;
    bob.join_ok("chat:room:2").await;
    let r = alice
        .push(
            Some(&join),
            "chat:room:2",
            "new_message",
            json!({"content": "so badword"}),
        )
        .await;
    let reply = alice.assert_reply(&r).await;
    assert_eq!(reply["status"], "ok", "{reply}");
    let id = reply["response"]["id"].clone();
    let seen = bob.assert_push("chat:room:2", "new_message").await;
    assert_eq!(seen[4]["id"], id);
    let deleted = bob.assert_push("chat:room:2", "msg_deleted").await;
    assert_eq!(deleted[4]["id"], id);
    let e = next_event(&mut flagged, WAIT).await;
    assert_eq!(e["payload"]["message_id"], id);
    assert_eq!(e["payload"]["withheld"], true);
    assert_eq!(e["payload"]["mode"], "after");
    // Gone from the history too.
    let auth = format!("apikey {}", common::API_KEY);
    let (status, body) = common::http(
        node.addr,
        "GET",
        "/api/history/chat:room:2?limit=10",
        &[("Authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["messages"], json!([]), "{body}");
    node.shutdown().await;
}

#[tokio::test]
async fn a_moderation_outage_publishes_unchecked_or_refuses_as_configured() {
    let stand = Stand::default();
    stand.seen.lock().script.insert(
        "moderations",
        VecDeque::from(vec![
            (
                500,
                json!({"error": {"message": "The server had an error", "type": "server_error",
                "param": null, "code": null}}),
                None
            );
            2
        ]),
    );
    let addr = stand_in(stand.clone()).await;
    for fail_open in [true, false] {
        let base = format!("http://{addr}");
        let node = common::TestNode::start_with(move |c| {
            with_providers(base)(c);
            c.ai.moderation.mode = "before".into();
            c.ai.moderation.fail_open = fail_open;
        })
        .await;
        let mut alice = node.connect("alice").await;
        let join = alice.join_ok("chat:room:3").await;
        let r = alice
            .push(
                Some(&join),
                "chat:room:3",
                "new_message",
                json!({"content": "hi"}),
            )
            .await;
        let reply = alice.assert_reply(&r).await;
        if fail_open {
            assert_eq!(reply["status"], "ok", "{reply}");
        } else {
            assert_eq!(reply["status"], "error", "{reply}");
            let reason = reply["response"]["reason"].as_str().unwrap();
            assert!(
                reason.starts_with("moderation unavailable: openai: 500"),
                "{reason}"
            );
        }
        node.shutdown().await;
    }
}
