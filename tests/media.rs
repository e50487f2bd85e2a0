//! The media pipeline against the real ffmpeg/ffprobe: inputs made with lavfi,
//! outputs checked with ffprobe; S3 through a real S3-compatible server (moto)
//! with injected failures; cancel and kill through a running node.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use armoricore::config::Config;
use armoricore::media::{MediaError, Profile, Request, Transcoder};
use common::s3::{FaultProxy, S3Server};
use common::{TestNode, next_event, test_config};
use serde_json::{Map, Value, json};

const WAIT: Duration = Duration::from_secs(120);

/// Make a test input with ffmpeg's lavfi sources.
fn make_input(out: &Path, video: Option<&str>, audio: bool, secs: f32, extra: &[&str]) {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-y"]);
    if let Some(v) = video {
        cmd.args(["-f", "lavfi", "-i", &format!("{v}:d={secs}")]);
    }
    if audio {
        cmd.args(["-f", "lavfi", "-i", &format!("sine=f=440:d={secs}")]);
    }
    if video.is_some() {
        cmd.args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ]);
    }
    cmd.args(extra).arg(out);
    let status = cmd.status().expect("ffmpeg on PATH");
    assert!(status.success(), "making {}", out.display());
}

fn ffprobe(args: &[&str], file: &Path) -> Value {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-of", "json"])
        .args(args)
        .arg(file)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn request(media_id: &str, file: &Path) -> Request {
    let mut p = Map::new();
    p.insert("media_id".into(), json!(media_id));
    p.insert("user_id".into(), json!("u1"));
    p.insert("file_path".into(), json!(file.display().to_string()));
    Request::from_payload(&p).unwrap()
}

async fn transcoder(dir: &Path, adjust: impl FnOnce(&mut Config)) -> (Transcoder, Config) {
    let mut config = test_config(dir);
    adjust(&mut config);
    (Transcoder::new(&config).await.unwrap(), config)
}

async fn run(t: &Transcoder, req: &Request) -> Result<Map<String, Value>, MediaError> {
    let (_tx, cancel) = tokio::sync::watch::channel(false);
    t.run(req, &mut |_| {}, cancel).await
}

/// `EXTINF` durations of a playlist.
fn segment_durations(playlist: &Path) -> Vec<f64> {
    std::fs::read_to_string(playlist)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("#EXTINF:"))
        .map(|d| d.trim_end_matches(',').parse().unwrap())
        .collect()
}

/// Keyframe timestamps of a rendition.
fn keyframes(playlist: &Path) -> Vec<String> {
    let v = ffprobe(
        &[
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=pts_time,flags",
        ],
        playlist,
    );
    v["packets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["flags"].as_str().unwrap_or("").contains('K'))
        .map(|p| p["pts_time"].as_str().unwrap().to_string())
        .collect()
}

fn stream(file: &Path, kind: &str) -> Value {
    let v = ffprobe(&["-show_streams"], file);
    v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["codec_type"] == kind)
        .cloned()
        .unwrap_or(Value::Null)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                out.extend(files_under(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[tokio::test]
async fn video_ladder_aligned_playable_with_mp4_thumbnails_and_sprite() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.mp4");
    make_input(
        &input,
        Some("testsrc2=s=854x480:r=30"),
        true,
        10.0,
        &["-c:a", "aac"],
    );
    let (t, config) = transcoder(dir.path(), |c| c.media.segment_s = 4).await;
    let ready = run(&t, &request("v1", &input)).await.unwrap();
    let root = dir.path().join("media/media/v1");

    assert_eq!(ready["resolutions"], json!(["360p", "480p"]));
    assert_eq!(ready["playback_urls"]["hls"], "/media/v1/hls/master.m3u8");
    assert_eq!(
        ready["playback_urls"]["mp4"]["480p"],
        "/media/v1/mp4/480p.mp4"
    );
    assert!(
        (ready["duration"].as_f64().unwrap() - 10.0).abs() < 0.2,
        "{ready:?}"
    );

    let master = std::fs::read_to_string(root.join("hls/master.m3u8")).unwrap();
    assert_eq!(master.matches("#EXT-X-STREAM-INF").count(), 2, "{master}");
    assert!(master.contains("TYPE=AUDIO,GROUP-ID=\"audio\""), "{master}");
    assert!(master.contains("RESOLUTION=640x360"), "{master}");
    assert!(master.contains("RESOLUTION=854x480"), "{master}");
    assert!(master.contains("CODECS=\"avc1.64"), "{master}");

    let mut reference: Option<Vec<String>> = None;
    for (rung, w, h) in [("360p", 640, 360), ("480p", 854, 480)] {
        let playlist = root.join(format!("hls/{rung}/playlist.m3u8"));
        let v = stream(&playlist, "video");
        assert_eq!(
            (v["width"].as_u64(), v["height"].as_u64()),
            (Some(w), Some(h)),
            "{rung}"
        );
        assert_eq!(v["codec_name"], "h264");
        let d = segment_durations(&playlist);
        assert_eq!(d.len(), 3, "{rung}: {d:?}");
        assert!(
            d[..2].iter().all(|s| (s - 4.0).abs() < 0.05),
            "{rung}: {d:?}"
        );
        // Keyframes every 2 s, on the same timestamps in every rung.
        let k = keyframes(&playlist);
        assert_eq!(k.len(), 5, "{rung}: {k:?}");
        match &reference {
            None => reference = Some(k),
            Some(r) => assert_eq!(r, &k, "keyframes aligned across rungs"),
        }
        // BANDWIDTH is the measured peak (video + audio), above the nominal.
        let r = ready["renditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == rung)
            .unwrap();
        let line = master
            .lines()
            .find(|l| l.contains(&format!("RESOLUTION={w}x{h}")))
            .unwrap();
        let bandwidth: u64 = line
            .split("BANDWIDTH=")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            bandwidth > r["peak_bitrate"].as_u64().unwrap(),
            "{line} vs {r}"
        );
        assert!(r["size_bytes"].as_u64().unwrap() > 0);
    }
    let audio = stream(&root.join("hls/audio/playlist.m3u8"), "audio");
    assert_eq!(audio["codec_name"], "aac");

    // The whole master plays: every segment of every rendition decodes.
    let play = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(root.join("hls/master.m3u8"))
        .args(["-map", "0", "-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        play.status.success() && play.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&play.stderr)
    );

    // MP4 with faststart: moov before mdat; video and audio.
    let mp4 = std::fs::read(root.join("mp4/480p.mp4")).unwrap();
    let at = |tag: &[u8]| mp4.windows(4).position(|w| w == tag).unwrap();
    assert!(at(b"moov") < at(b"mdat"), "faststart");
    assert_eq!(
        stream(&root.join("mp4/480p.mp4"), "audio")["codec_name"],
        "aac"
    );

    // Thumbnails, poster, sprite and its WebVTT track.
    assert_eq!(
        ready["thumbnail_urls"].as_array().unwrap().len(),
        config.media.thumbnails as usize
    );
    assert!(root.join("thumbnails/poster.jpg").exists());
    assert_eq!(
        ready["sprite_urls"],
        json!(["/media/v1/thumbnails/sprite_001.jpg"])
    );
    let vtt = std::fs::read_to_string(root.join("thumbnails/sprite.vtt")).unwrap();
    assert!(vtt.starts_with("WEBVTT"));
    assert_eq!(vtt.matches(" --> ").count(), 2, "{vtt}");
    let sprite = stream(&root.join("thumbnails/sprite_001.jpg"), "video");
    assert_eq!(sprite["width"], 160 * config.media.sprite_columns);
    // Nothing left in the work directory.
    assert!(files_under(t.work_root()).is_empty());
}

#[tokio::test]
async fn above_1080p_is_hevc_in_fmp4() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.mp4");
    make_input(&input, Some("testsrc2=s=2560x1440:r=24"), false, 1.0, &[]);
    let (t, _) = transcoder(dir.path(), |c| {
        c.media
            .rungs
            .retain(|r| r.height == 360 || r.height == 1440);
        c.media.thumbnails = 0;
    })
    .await;
    let ready = run(&t, &request("hd", &input)).await.unwrap();
    let root = dir.path().join("media/media/hd/hls");
    let master = std::fs::read_to_string(root.join("master.m3u8")).unwrap();
    assert!(
        master.contains("RESOLUTION=2560x1440,FRAME-RATE=24.000,CODECS=\"hvc1.1.6.L"),
        "{master}"
    );
    assert!(
        root.join("1440p/init.mp4").exists() && root.join("360p/init.mp4").exists(),
        "fMP4 throughout"
    );
    assert_eq!(
        stream(&root.join("1440p/playlist.m3u8"), "video")["codec_name"],
        "hevc"
    );
    assert_eq!(ready["renditions"][1]["codec"], "h265");
    assert_eq!(ready["source"]["audio"], Value::Null);
}

#[tokio::test]
async fn rotated_and_odd_sized_sources() {
    let dir = tempfile::tempdir().unwrap();
    let rotated = dir.path().join("rot.mov");
    let upright = dir.path().join("upright.mp4");
    make_input(&upright, Some("testsrc2=s=640x360:r=25"), false, 2.0, &[]);
    // A phone's portrait video: landscape pixels and a display rotation.
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(&upright)
        .args(["-c", "copy", "-metadata:s:v:0", "rotate=90"])
        .arg(&rotated)
        .status()
        .unwrap();
    assert!(status.success());
    let odd = dir.path().join("odd.mp4");
    make_input(
        &odd,
        Some("testsrc2=s=321x241:r=25"),
        true,
        2.0,
        &["-vf", "scale=321:241", "-pix_fmt", "yuv444p"],
    );
    let (t, _) = transcoder(dir.path(), |c| c.media.thumbnails = 2).await;

    let ready = run(&t, &request("rot", &rotated)).await.unwrap();
    let rotation = ready["source"]["rotation"].as_u64().unwrap();
    assert!(rotation == 90 || rotation == 270, "{ready:?}");
    assert_eq!(
        ready["thumbnail_urls"].as_array().unwrap().len(),
        2,
        "{ready:?}"
    );
    assert_eq!(
        ready["sprite_urls"].as_array().unwrap().len(),
        1,
        "a clip shorter than one interval still gets its tile"
    );
    assert_eq!(ready["renditions"][0]["width"], 360);
    assert_eq!(ready["renditions"][0]["height"], 640);
    let v = stream(
        &dir.path().join("media/media/rot/hls/360p/playlist.m3u8"),
        "video",
    );
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(360), Some(640)),
        "portrait, upright"
    );

    let ready = run(&t, &request("odd", &odd)).await.unwrap();
    assert_eq!(
        ready["resolutions"],
        json!(["240p"]),
        "one rung at the source's size, even"
    );
    let v = stream(
        &dir.path().join("media/media/odd/hls/240p/playlist.m3u8"),
        "video",
    );
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(320), Some(240))
    );
}

#[tokio::test]
async fn audio_only_renditions_and_downloads() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.wav");
    make_input(&input, None, true, 5.0, &[]);
    let (t, config) = transcoder(dir.path(), |_| {}).await;
    let ready = run(&t, &request("a1", &input)).await.unwrap();
    assert_eq!(ready["audio_only"], true);
    let root = dir.path().join("media/media/a1");
    let master = std::fs::read_to_string(root.join("hls/master.m3u8")).unwrap();
    assert_eq!(
        master.matches("#EXT-X-STREAM-INF").count(),
        config.media.audio.len(),
        "{master}"
    );
    for codecs in ["mp4a.40.2", "Opus", "mp4a.40.34", "fLaC"] {
        assert!(
            master.contains(&format!("CODECS=\"{codecs}\"")),
            "{codecs}: {master}"
        );
    }
    for (name, codec) in [
        ("aac_128k", "aac"),
        ("opus_96k", "opus"),
        ("mp3_192k", "mp3"),
        ("flac", "flac"),
        ("vorbis_160k", "vorbis"),
    ] {
        let s = stream(&root.join(format!("hls/{name}/playlist.m3u8")), "audio");
        assert_eq!(s["codec_name"], codec, "{name}");
    }
    let downloads = ready["audio_urls"]["downloads"].as_object().unwrap();
    assert_eq!(downloads.len(), 5, "{ready:?}");
    for (codec, file) in [
        ("aac", "aac.m4a"),
        ("opus", "opus.opus"),
        ("mp3", "mp3.mp3"),
        ("flac", "flac.flac"),
        ("vorbis", "vorbis.ogg"),
    ] {
        let s = stream(&root.join("audio").join(file), "audio");
        assert_eq!(s["codec_name"], codec, "{file}");
        assert_eq!(downloads[codec], format!("/media/a1/audio/{file}"));
    }
    // The download is encoded at its codec's highest rendition bitrate (256k
    // asked; ffmpeg's AAC encoder gives a mono sine ~130k), not the 64k one.
    let aac = stream(&root.join("audio/aac.m4a"), "audio");
    assert!(
        aac["bit_rate"].as_str().unwrap().parse::<u64>().unwrap() > 100_000,
        "{aac}"
    );

    // A video source with profile "audio" gets the same, no ladder.
    let video = dir.path().join("v.mp4");
    make_input(
        &video,
        Some("testsrc2=s=320x240:r=10"),
        true,
        2.0,
        &["-c:a", "aac"],
    );
    let mut req = request("a2", &video);
    req.profile = Profile::Audio;
    let ready = run(&t, &req).await.unwrap();
    assert_eq!(
        (ready["audio_only"].clone(), ready["resolutions"].clone()),
        (json!(true), json!([]))
    );
}

#[tokio::test]
async fn broken_inputs_fail_fast_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.mp4");
    make_input(
        &good,
        Some("testsrc2=s=320x240:r=25"),
        true,
        3.0,
        &["-c:a", "aac"],
    );
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.mp4");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let text = dir.path().join("notes.mp4");
    std::fs::write(&text, "this is not a video\n".repeat(100)).unwrap();
    let (t, _) = transcoder(dir.path(), |_| {}).await;
    for (name, file) in [("truncated", &truncated), ("text", &text)] {
        let started = Instant::now();
        let err = run(&t, &request(name, file)).await.unwrap_err();
        assert!(matches!(err, MediaError::NotMedia(_)), "{name}: {err}");
        assert!(!err.retryable());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name} took {:?}",
            started.elapsed()
        );
    }
    let missing = run(&t, &request("missing", &dir.path().join("nope.mp4")))
        .await
        .unwrap_err();
    assert!(matches!(missing, MediaError::Input(_)), "{missing}");
    let err = run(&t, &{
        let mut r = request("vvc", &good);
        r.video_codec = Some("vvc".into());
        r
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("unsupported codec vvc: this ffmpeg encodes h264 (libx264)"),
        "{err}"
    );
    assert!(
        files_under(t.work_root()).is_empty(),
        "temporary files removed"
    );
    assert!(
        files_under(&dir.path().join("media")).is_empty(),
        "nothing stored"
    );
}

#[tokio::test]
async fn input_dirs_restrict_local_paths() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.mp4");
    make_input(&input, Some("testsrc2=s=320x240:r=10"), false, 1.0, &[]);
    let allowed = dir.path().join("uploads");
    std::fs::create_dir_all(&allowed).unwrap();
    let (t, _) = transcoder(dir.path(), |c| {
        c.media.input_dirs = vec![allowed.display().to_string()]
    })
    .await;
    let err = run(&t, &request("x", &input))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("outside media.input_dirs"), "{err}");
}

/// Every event on `subject` of a node's bus.
async fn upload(node: &TestNode, media_id: &str, file_path: &str) {
    let event = json!({"event_type": "media.uploaded", "payload": {"media_id": media_id,
        "user_id": "u1", "file_path": file_path, "content_type": "video/mp4", "file_size": 1}});
    // A node just started on NATS answers 503 until its streams exist.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = node.api_post("/api/events", &event).await;
        if status == 503 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        assert_eq!(status, 202, "{body}");
        return;
    }
}

/// Serve one file over HTTP/1.0, for `http://` inputs.
async fn serve_file(bytes: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            let bytes = bytes.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nContent-Type: video/mp4\r\n\r\n",
                    bytes.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&bytes).await;
            });
        }
    });
    format!("http://{addr}/upload/in.mp4")
}

#[tokio::test]
async fn node_transcodes_an_http_input_and_serves_the_hls() {
    let node = TestNode::start_with(|c| c.media.thumbnails = 1).await;
    let src = tempfile::tempdir().unwrap();
    let input = src.path().join("in.mp4");
    make_input(
        &input,
        Some("testsrc2=s=640x360:r=25"),
        true,
        3.0,
        &["-c:a", "aac"],
    );
    let url = serve_file(std::fs::read(&input).unwrap()).await;
    let mut ready = node.events("media.ready").await;
    let mut progress = node.events("media.progress").await;
    upload(&node, "web1", &url).await;
    let event = next_event(&mut ready, WAIT).await;
    let p = &event["payload"];
    assert_eq!(
        (p["media_id"].as_str(), p["user_id"].as_str()),
        (Some("web1"), Some("u1")),
        "{event}"
    );
    let master_url = p["playback_urls"]["hls"].as_str().unwrap();
    assert_eq!(master_url, "/media/web1/hls/master.m3u8");
    let first = next_event(&mut progress, WAIT).await;
    assert_eq!(first["payload"]["stage"], "preparing");
    assert_eq!(first["payload"]["media_id"], "web1");

    // Served by the node, with the type players expect.
    let resp = reqwest::get(format!("http://{}{master_url}", node.addr))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "application/vnd.apple.mpegurl"
    );
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    assert!(resp.text().await.unwrap().contains("360p/playlist.m3u8"));
    let seg = reqwest::get(format!(
        "http://{}/media/web1/hls/360p/seg_00000.ts",
        node.addr
    ))
    .await
    .unwrap();
    assert_eq!(seg.headers()["content-type"], "video/mp2t");
    assert_eq!(
        node.get("/media/web1/../../jwt_secret").await.0,
        404,
        "no way out of the media dir"
    );
}

/// A transcode slow enough to act on mid-job (veryslow preset).
async fn slow_node(adjust: impl FnOnce(&mut Config)) -> (TestNode, tempfile::TempDir, PathBuf) {
    let node = TestNode::start_with(|c| {
        c.media.preset = "veryslow".into();
        c.bus.backoff_ms = vec![100];
        adjust(c);
    })
    .await;
    let src = tempfile::tempdir().unwrap();
    let input = src.path().join("in.mp4");
    make_input(
        &input,
        Some("testsrc2=s=1280x720:r=30"),
        true,
        20.0,
        &["-c:a", "aac"],
    );
    (node, src, input)
}

fn ffmpeg_running_in(dir: &Path) -> bool {
    let out = Command::new("pgrep")
        .args(["-f", &dir.display().to_string()])
        .output()
        .unwrap();
    !out.stdout.is_empty()
}

/// Wait for a progress event of `stage`.
async fn stage(
    progress: &mut futures_util::stream::BoxStream<'static, Value>,
    stage: &str,
) -> Value {
    loop {
        let e = next_event(progress, WAIT).await;
        if e["payload"]["stage"] == stage {
            return e;
        }
    }
}

#[tokio::test]
async fn cancel_kills_ffmpeg_and_cleans_up() {
    let (node, _src, input) = slow_node(|_| {}).await;
    let mut progress = node.events("media.progress").await;
    let mut failed = node.events("media.failed").await;
    upload(&node, "c1", &input.display().to_string()).await;
    stage(&mut progress, "transcoding").await;
    let work = node.config.server.data_dir.join("media-work");
    assert_eq!(
        std::fs::read_dir(&work).unwrap().count(),
        1,
        "the job's work dir"
    );
    assert!(ffmpeg_running_in(&work));
    let (status, _) = node
        .api_post(
            "/api/events",
            &json!({"event_type": "media.cancel", "payload": {"media_id": "c1"}}),
        )
        .await;
    assert_eq!(status, 202);
    let event = next_event(&mut failed, WAIT).await;
    assert_eq!(event["payload"]["reason"], "cancelled");
    assert_eq!(event["payload"]["media_id"], "c1");
    assert!(!ffmpeg_running_in(&work), "ffmpeg killed");
    assert!(files_under(&work).is_empty(), "temporary files removed");
    assert!(files_under(&node.config.server.data_dir.join("media/media")).is_empty());
}

#[tokio::test]
async fn a_killed_job_actor_is_retried_from_the_start() {
    let (node, _src, input) = slow_node(|_| {}).await;
    let mut progress = node.events("media.progress").await;
    let mut failed = node.events("media.failed").await;
    upload(&node, "k1", &input.display().to_string()).await;
    stage(&mut progress, "transcoding").await;
    let work = node.config.server.data_dir.join("media-work");
    let first_dir = std::fs::read_dir(&work)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let media = node.node().hub().media.clone().unwrap();
    let sup = media.supervisor().unwrap();
    let job = ractor::call!(
        sup,
        armoricore::actors::transcode::TranscodeMsg::JobActor,
        "k1".to_string()
    )
    .unwrap()
    .expect("the job's actor");
    job.kill();
    // Attempt 2 starts from the beginning, in a fresh work dir; the first is gone.
    stage(&mut progress, "preparing").await;
    stage(&mut progress, "transcoding").await;
    assert!(!first_dir.exists(), "the killed attempt's files removed");
    assert!(
        !ffmpeg_running_in(&first_dir),
        "the killed attempt's ffmpeg killed"
    );
    let metrics = node.get("/metrics").await.1;
    assert!(
        metrics.contains("armoricore_actor_restarts_total{supervisor=\"transcode\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("armoricore_jobs_total{result=\"retry\",subject=\"media.uploaded\"} 1"),
        "{metrics}"
    );
    // End it.
    node.api_post(
        "/api/events",
        &json!({"event_type": "media.cancel", "payload": {"media_id": "k1"}}),
    )
    .await;
    assert_eq!(
        next_event(&mut failed, WAIT).await["payload"]["reason"],
        "cancelled"
    );
}

#[tokio::test]
async fn the_bridge_takes_no_more_jobs_than_transcode_slots() {
    let (node, _src, input) = slow_node(|c| c.media.concurrency = 1).await;
    let mut failed = node.events("media.failed").await;
    let mut progress = node.events("media.progress").await;
    upload(&node, "q1", &input.display().to_string()).await;
    upload(&node, "q2", &input.display().to_string()).await;
    let first = stage(&mut progress, "transcoding").await;
    let first_id = first["payload"]["media_id"].as_str().unwrap().to_string();
    let hub = node.node().hub().clone();
    let sup = hub.media.clone().unwrap().supervisor().unwrap();
    let (running, queued) =
        ractor::call!(sup, armoricore::actors::transcode::TranscodeMsg::Jobs).unwrap();
    assert_eq!((running, queued), (vec![first_id.clone()], vec![]));
    // The other job is still on the bus, free for another node (and its timeout
    // not running), not taken and queued here.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hub.bus.backlog("media.uploaded").await.unwrap().pending, 1);
    let cancel = |id: String| json!({"event_type": "media.cancel", "payload": {"media_id": id}});
    node.api_post("/api/events", &cancel(first_id.clone()))
        .await;
    assert_eq!(
        next_event(&mut failed, WAIT).await["payload"]["media_id"],
        first_id.as_str()
    );
    // The slot freed: the second starts.
    let second = stage(&mut progress, "transcoding").await;
    let second_id = second["payload"]["media_id"].as_str().unwrap().to_string();
    assert_ne!(second_id, first_id);
    node.api_post("/api/events", &cancel(second_id)).await;
    assert_eq!(
        next_event(&mut failed, WAIT).await["payload"]["reason"],
        "cancelled"
    );
}

#[tokio::test]
async fn s3_upload_absorbs_injected_failures_and_reads_storage_keys() {
    let s3 = S3Server::start().await;
    s3.create_bucket("media").await;
    let proxy = FaultProxy::start(s3.addr(), 2).await;
    let endpoint = proxy.endpoint();
    let node = TestNode::start_with(|c| {
        c.storage.endpoint = endpoint.clone();
        c.storage.bucket = "media".into();
        c.storage.access_key = "test".into();
        c.storage.secret_key = "test".into();
        c.storage.retry_initial_ms = 20;
        c.media.thumbnails = 1;
    })
    .await;
    // The input is a key in the same store, put there before the job.
    let src = tempfile::tempdir().unwrap();
    let input = src.path().join("in.mp4");
    make_input(
        &input,
        Some("testsrc2=s=640x360:r=25"),
        true,
        3.0,
        &["-c:a", "aac"],
    );
    let direct = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(s3.endpoint())
        .with_bucket_name("media")
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_allow_http(true)
        .build()
        .unwrap();
    use object_store::ObjectStoreExt;
    direct
        .put(
            &"uploads/in.mp4".into(),
            std::fs::read(&input).unwrap().into(),
        )
        .await
        .unwrap();

    let mut ready = node.events("media.ready").await;
    upload(&node, "s3m", "uploads/in.mp4").await;
    let event = next_event(&mut ready, WAIT).await;
    let p = &event["payload"];
    assert_eq!(p["storage"], "s3");
    assert_eq!(
        p["playback_urls"]["hls"],
        format!("{endpoint}/media/media/s3m/hls/master.m3u8")
    );
    assert_eq!(proxy.injected(), 2, "two uploads failed and were retried");
    let keys = s3.list("media", "media/s3m/").await;
    for key in [
        "media/s3m/hls/master.m3u8",
        "media/s3m/hls/360p/playlist.m3u8",
        "media/s3m/hls/audio/playlist.m3u8",
        "media/s3m/mp4/360p.mp4",
        "media/s3m/thumbnails/poster.jpg",
        "media/s3m/thumbnails/sprite.vtt",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} in {keys:?}");
    }
    let master = s3.get("media", "media/s3m/hls/master.m3u8").await.unwrap();
    assert!(
        String::from_utf8(master)
            .unwrap()
            .contains("#EXT-X-STREAM-INF")
    );
    // Every segment of the playlist is there.
    let playlist = String::from_utf8(
        s3.get("media", "media/s3m/hls/360p/playlist.m3u8")
            .await
            .unwrap(),
    )
    .unwrap();
    for seg in playlist.lines().filter(|l| l.ends_with(".ts")) {
        assert!(keys.contains(&format!("media/s3m/hls/360p/{seg}")), "{seg}");
    }
}

#[tokio::test]
async fn large_files_go_up_in_parts_through_failures() {
    let s3 = S3Server::start().await;
    s3.create_bucket("big").await;
    let proxy = FaultProxy::start(s3.addr(), 1).await;
    let mut config = Config::defaults();
    config.storage.endpoint = proxy.endpoint();
    config.storage.bucket = "big".into();
    config.storage.access_key = "k".into();
    config.storage.secret_key = "s".into();
    config.storage.multipart_threshold_mb = 5;
    config.storage.retry_initial_ms = 20;
    let dir = tempfile::tempdir().unwrap();
    let storage =
        armoricore::media::storage::Storage::from_config(&config.storage, dir.path()).unwrap();
    let file = dir.path().join("big.bin");
    let data: Vec<u8> = (0..11u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&file, &data).unwrap();
    let size = storage
        .upload_file(&file, "media/x/mp4/big.bin")
        .await
        .unwrap();
    assert_eq!(size, data.len() as u64);
    assert_eq!(proxy.injected(), 1);
    assert_eq!(s3.get("big", "media/x/mp4/big.bin").await.unwrap(), data);
}

#[tokio::test]
async fn a_job_the_bridge_gives_up_on_is_stopped() {
    let (node, _src, input) = slow_node(|c| {
        c.bus.job_timeout_s = 2;
        c.bus.max_deliver = 1;
    })
    .await;
    let mut failed = node.events("media.failed").await;
    upload(&node, "t1", &input.display().to_string()).await;
    let event = next_event(&mut failed, WAIT).await;
    assert_eq!(event["payload"]["reason"], "job timed out");
    let work = node.config.server.data_dir.join("media-work");
    let deadline = Instant::now() + Duration::from_secs(5);
    while (ffmpeg_running_in(&work) || std::fs::read_dir(&work).unwrap().count() > 0)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !ffmpeg_running_in(&work),
        "the transcode stopped with the job"
    );
    assert_eq!(
        std::fs::read_dir(&work).unwrap().count(),
        0,
        "its files removed"
    );
}

#[tokio::test]
async fn a_failing_hardware_encoder_falls_back_to_software() {
    use armoricore::media::ladder::Hw;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.mp4");
    make_input(&input, Some("testsrc2=s=320x240:r=10"), false, 1.0, &[]);
    // Asked for at start: the test encode fails here (no GPU), so software it is.
    let (t, _) = transcoder(dir.path(), |c| c.media.hwaccel = "auto".into()).await;
    assert_eq!(t.encoders().hw, None);
    // Forced: the job's NVENC encode fails, and it is run again in software.
    assert!(
        t.encoders().available.contains("h264_nvenc"),
        "Debian's ffmpeg lists NVENC"
    );
    let t = t.force_hw(Some(Hw::Nvenc));
    let ready = run(&t, &request("hw", &input)).await.unwrap();
    assert_eq!(ready["renditions"][0]["codec"], "h264");
    let v = stream(
        &dir.path().join("media/media/hw/hls/240p/playlist.m3u8"),
        "video",
    );
    assert_eq!(v["codec_name"], "h264");
}

#[tokio::test]
async fn vp9_and_av1_ladders_in_fmp4() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.mp4");
    make_input(
        &input,
        Some("testsrc2=s=640x360:r=10"),
        true,
        1.0,
        &["-c:a", "aac"],
    );
    let (t, _) = transcoder(dir.path(), |c| {
        c.media.thumbnails = 0;
        c.media.mp4_rungs = vec![];
    })
    .await;
    for (codec, name, prefix) in [("vp9", "vp9", "vp09.00."), ("av1", "av1", "av01.0.")] {
        let mut req = request(codec, &input);
        req.video_codec = Some(codec.into());
        let ready = run(&t, &req).await.unwrap();
        let root = dir.path().join(format!("media/media/{codec}/hls"));
        let master = std::fs::read_to_string(root.join("master.m3u8")).unwrap();
        assert!(master.contains(&format!("CODECS=\"{prefix}")), "{master}");
        assert!(root.join("360p/init.mp4").exists(), "{codec} in fMP4");
        assert_eq!(
            stream(&root.join("360p/playlist.m3u8"), "video")["codec_name"],
            name
        );
        assert_eq!(ready["renditions"][0]["codec"], codec);
        assert_eq!(
            ready["playback_urls"].get("mp4"),
            None,
            "no MP4 rungs configured"
        );
    }
}

#[tokio::test]
async fn the_poster_skips_a_black_opening() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.mp4");
    let status = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "color=c=black:s=320x240:r=25:d=2",
        ])
        .args(["-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=3"])
        .args([
            "-filter_complex",
            "[0:v][1:v]concat=n=2:v=1[v]",
            "-map",
            "[v]",
        ])
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
        .unwrap();
    assert!(status.success());
    let (t, _) = transcoder(dir.path(), |_| {}).await;
    let ready = run(&t, &request("p1", &input)).await.unwrap();
    let skipped = ready["poster_skipped_black_s"].as_f64().unwrap();
    assert!((1.9..=2.1).contains(&skipped), "{ready:?}");
    // The poster is a picture, not black: its mean luma is well above black's 16.
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(dir.path().join("media/media/p1/thumbnails/poster.jpg"))
        .args([
            "-vf",
            "signalstats,metadata=print:key=lavfi.signalstats.YAVG:file=-",
            "-f",
            "null",
            "-",
        ])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    let yavg: f64 = text
        .split("lavfi.signalstats.YAVG=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no YAVG in {text}"));
    assert!(yavg > 40.0, "poster mean luma {yavg}");
}

#[tokio::test]
async fn over_jetstream_a_stopping_node_hands_its_transcode_to_the_next() {
    let nats = common::nats::NatsServer::start().await;
    let url = nats.url();
    let on_nats = |url: String| {
        move |c: &mut Config| {
            c.bus.url = url;
            c.bus.ack_wait_ms = 2000;
            c.bus.backoff_ms = vec![50];
            c.media.preset = "veryslow".into();
        }
    };
    let first = TestNode::start_with(on_nats(url.clone())).await;
    let mut progress = first.events("media.progress").await;
    let src = tempfile::tempdir().unwrap();
    let input = src.path().join("in.mp4");
    make_input(
        &input,
        Some("testsrc2=s=1280x720:r=30"),
        true,
        20.0,
        &["-c:a", "aac"],
    );
    upload(&first, "n1", &input.display().to_string()).await;
    stage(&mut progress, "transcoding").await;
    let first_work = first.config.server.data_dir.join("media-work");
    assert!(ffmpeg_running_in(&first_work));

    // SIGTERM-like stop: the job is handed back at once, its ffmpeg killed.
    first.shutdown().await;
    let second = TestNode::start_with(on_nats(url)).await;
    let mut progress = second.events("media.progress").await;
    let mut failed = second.events("media.failed").await;
    let again = stage(&mut progress, "transcoding").await;
    assert_eq!(
        again["payload"]["media_id"], "n1",
        "the second node runs it from the start"
    );
    assert!(
        !ffmpeg_running_in(&first_work),
        "the first node's ffmpeg is gone"
    );
    second
        .api_post(
            "/api/events",
            &json!({"event_type": "media.cancel", "payload": {"media_id": "n1"}}),
        )
        .await;
    assert_eq!(
        next_event(&mut failed, WAIT).await["payload"]["reason"],
        "cancelled"
    );
}

#[tokio::test]
async fn cancel_works_while_the_input_is_still_downloading() {
    let node = TestNode::start().await;
    // A server that accepts and never answers: the download stalls.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stall = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut progress = node.events("media.progress").await;
    let mut failed = node.events("media.failed").await;
    upload(&node, "d1", &format!("http://{addr}/slow.mp4")).await;
    stage(&mut progress, "preparing").await;
    let started = Instant::now();
    node.api_post(
        "/api/events",
        &json!({"event_type": "media.cancel", "payload": {"media_id": "d1"}}),
    )
    .await;
    assert_eq!(
        next_event(&mut failed, WAIT).await["payload"]["reason"],
        "cancelled"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    stall.abort();
}
