//! The transcode job: probe, one ffmpeg process for the whole ladder, playlists
//! measured and written, MP4s, thumbnails, upload, and the `media.ready` payload.
//!
//! [`Transcoder::run`] is the whole job as a plain async function: the
//! `TranscodeJob` actor ([`crate::actors::transcode`]) runs it under supervision,
//! and `armoricore transcode` runs it from the command line.
//!
//! ```text
//! input (path | http(s) URL | storage key) → work dir → ffprobe
//!   video: ffmpeg -i in -filter_complex split=N → scale per rung → one encoder per
//!          rung → HLS per rung + one shared AAC rendition   (decoded once)
//!          → master.m3u8 from measured segment peaks → MP4 per rung (stream copy)
//!          → thumbnails + sprite sheet + WebVTT (from the ≤720p rung), poster (source)
//!   audio: ffmpeg -i in → one encoder per rendition → HLS each + a download each
//! → upload media/{id}/... → media.ready
//! ```

pub mod ffmpeg;
pub mod hls;
pub mod ladder;
pub mod probe;
pub mod source;
pub mod storage;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::config::{Config, MediaConfig};
use ffmpeg::{Cancel, Tick};
use ladder::{Args, Codec, Encoders, Hw, PlannedRung};
use probe::Probe;
use source::Fetcher;
use storage::Storage;

/// Why a transcode failed. The `reason` of `media.failed` is its text.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum MediaError {
    #[error("not a media file: {0}")]
    NotMedia(String),
    #[error("unsupported codec {codec}: this ffmpeg encodes {available}")]
    UnsupportedCodec { codec: String, available: String },
    #[error("input: {0}")]
    Input(String),
    #[error("ffmpeg failed: {0}")]
    Ffmpeg(String),
    #[error("{0}")]
    Tool(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("{0}")]
    Io(String),
    #[error("cancelled")]
    Cancelled,
    /// The job's actor panicked or was killed.
    #[error("job crashed: {0}")]
    Crashed(String),
}

impl MediaError {
    /// Whether another attempt may succeed (storage or the machine had a bad
    /// moment), as opposed to the input or the request being wrong.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            MediaError::Tool(_)
                | MediaError::Storage(_)
                | MediaError::Io(_)
                | MediaError::Crashed(_)
        )
    }
}

/// What a job produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// The video ladder (audio-only renditions when the source has no video).
    Video,
    /// Audio-only renditions even from a video source.
    Audio,
}

/// A `media.uploaded` job.
#[derive(Debug, Clone)]
pub struct Request {
    pub media_id: String,
    pub user_id: String,
    pub file_path: String,
    pub profile: Profile,
    /// Overrides `media.video_codec`.
    pub video_codec: Option<String>,
    /// Where the output goes in the store; `media/{media_id}` when `None`.
    pub prefix: Option<String>,
}

impl Request {
    /// From a (validated) `media.uploaded` payload.
    pub fn from_payload(p: &Map<String, Value>) -> Result<Request, MediaError> {
        let text = |k: &str| match p.get(k) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        };
        let profile = match text("profile").as_str() {
            "" | "default" | "video" => Profile::Video,
            "audio" => Profile::Audio,
            other => {
                return Err(MediaError::Input(format!(
                    "unknown profile {other:?} (expected default, video or audio)"
                )));
            }
        };
        let video_codec = Some(text("video_codec")).filter(|c| !c.is_empty());
        Ok(Request {
            media_id: text("media_id"),
            user_id: text("user_id"),
            file_path: text("file_path"),
            profile,
            video_codec,
            prefix: None,
        })
    }
}

/// Where a job is, for `media.progress`.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub stage: &'static str,
    pub percent: f64,
    pub fps: f64,
    pub speed: f64,
    pub eta_s: Option<f64>,
}

/// The share of the progress bar the encode takes; packaging and upload the rest.
const ENCODE_SHARE: f64 = 90.0;

/// Runs transcode jobs: configuration, the encoders found at start, the store.
pub struct Transcoder {
    config: MediaConfig,
    storage: Storage,
    encoders: Encoders,
    work_root: PathBuf,
    fetcher: Fetcher,
}

/// Removes a job's temporary files however the job ends (the actor killed included).
pub struct WorkDir(pub PathBuf);

/// `id` as a file name and key segment: ASCII letters, digits, `-` and `_` kept,
/// anything else `_`.
pub fn safe_id(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        // Off the async threads: a work dir may hold a 20 GiB input and
        // thousands of segments.
        let dir = std::mem::take(&mut self.0);
        let remove = move || {
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a job's work dir");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> MediaError + '_ {
    move |e| MediaError::Io(format!("{}: {e}", path.display()))
}

fn mkdir(path: &Path) -> Result<(), MediaError> {
    std::fs::create_dir_all(path).map_err(io(path))
}

impl Transcoder {
    /// Check ffmpeg, list its encoders, pick the hardware family, open the store.
    pub async fn new(config: &Config) -> Result<Transcoder, MediaError> {
        let media = config.media.clone();
        let out = tokio::process::Command::new(&media.ffmpeg)
            .args(["-hide_banner", "-encoders"])
            .output()
            .await
            .map_err(|e| MediaError::Tool(format!("cannot run {}: {e}", media.ffmpeg)))?;
        let mut encoders = Encoders::parse(&String::from_utf8_lossy(&out.stdout));
        if !out.status.success() || encoders.video(Codec::H264).is_err() {
            return Err(MediaError::Tool(format!(
                "{} -encoders failed or lists no H.264 encoder",
                media.ffmpeg
            )));
        }
        encoders.hw = pick_hw(&media, &encoders).await;
        let work_root = if media.work_dir.is_empty() {
            config.server.data_dir.join("media-work")
        } else {
            PathBuf::from(&media.work_dir)
        };
        let storage = Storage::from_config(&config.storage, &config.server.data_dir)?;
        Ok(Transcoder {
            fetcher: Fetcher::new(&media)?,
            config: media,
            storage,
            encoders,
            work_root,
        })
    }

    /// The same with another store (the CLI writes to a directory).
    pub fn with_storage(mut self, storage: Storage) -> Transcoder {
        self.storage = storage;
        self
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn encoders(&self) -> &Encoders {
        &self.encoders
    }

    /// Use a hardware family without the start-up test encode (tests: a family
    /// that fails on this machine exercises the software fallback).
    pub fn force_hw(mut self, hw: Option<Hw>) -> Transcoder {
        self.encoders.hw = hw;
        self
    }

    /// Where running jobs keep their temporary files.
    pub fn work_root(&self) -> &Path {
        &self.work_root
    }

    /// Remove what jobs of an earlier run left (the node died mid-job).
    pub async fn clean_work_root(&self) {
        let root = self.work_root.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Ok(entries) = std::fs::read_dir(&root) {
                for e in entries.flatten() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        })
        .await;
    }

    /// Run one job to its `media.ready` payload.
    pub async fn run(
        &self,
        req: &Request,
        on_progress: &mut (dyn FnMut(Progress) + Send),
        mut cancel: Cancel,
    ) -> Result<Map<String, Value>, MediaError> {
        let safe_id = safe_id(&req.media_id);
        if safe_id.is_empty() {
            return Err(MediaError::Input("media_id is empty".into()));
        }
        let dir = self
            .work_root
            .join(format!("{safe_id}-{}", uuid::Uuid::new_v4().simple()));
        mkdir(&dir)?;
        let _cleanup = WorkDir(dir.clone());
        let mut reporter = Reporter::new(self.config.progress_interval_ms, on_progress);
        reporter.stage("preparing", 0.0);
        let prepared = async {
            let input = self
                .fetcher
                .fetch(&self.storage, &req.file_path, &dir)
                .await?;
            let timeout = Duration::from_secs(self.config.probe_timeout_s);
            let probe = probe::probe(&self.config.ffprobe, &input, timeout).await?;
            Ok::<_, MediaError>((input, probe))
        };
        let (input, probe) = tokio::select! {
            r = prepared => r?,
            _ = ffmpeg::cancelled(&mut cancel) => return Err(MediaError::Cancelled),
        };
        tracing::info!(media_id = %req.media_id, ?probe, "probed");
        let out = dir.join("out");
        mkdir(&out)?;
        let mut ready = match (&probe.video, req.profile) {
            (Some(video), Profile::Video) => {
                let video = video.clone();
                self.video_job(
                    req,
                    &input,
                    &probe,
                    &video,
                    &out,
                    &mut reporter,
                    &mut cancel,
                )
                .await?
            }
            _ if probe.audio.is_some() => {
                self.audio_job(&input, &probe, &out, &mut reporter, &mut cancel)
                    .await?
            }
            _ => {
                return Err(MediaError::NotMedia(
                    "no audio stream for an audio profile".into(),
                ));
            }
        };
        reporter.stage("uploading", ENCODE_SHARE + 5.0);
        let prefix = req.prefix.clone().unwrap_or(format!("media/{safe_id}"));
        let uploaded = self.storage.upload_dir(&out, &prefix, &mut cancel).await?;
        let sizes: BTreeMap<String, u64> = uploaded.into_iter().collect();
        ready.finish(&self.storage, &prefix, &sizes);
        reporter.stage("done", 100.0);
        let mut payload = ready.fields;
        payload.insert("media_id".into(), json!(req.media_id));
        payload.insert("user_id".into(), json!(req.user_id));
        payload.insert("storage".into(), json!(self.storage.kind()));
        payload.insert("bytes".into(), json!(sizes.values().sum::<u64>()));
        Ok(payload)
    }

    fn video_codec(&self, req: &Request) -> Result<Codec, MediaError> {
        let name = req
            .video_codec
            .as_deref()
            .unwrap_or(&self.config.video_codec);
        Codec::parse(name).ok_or_else(|| MediaError::UnsupportedCodec {
            codec: name.to_string(),
            available: self.encoders.video_codecs().join(", "),
        })
    }

    /// The ffmpeg arguments of the ladder pass, and each rung's encoder.
    fn ladder_args(
        &self,
        input: &Path,
        probe: &Probe,
        fps: f64,
        rungs: &[PlannedRung],
        out: &Path,
        hardware: bool,
    ) -> Result<(Vec<String>, bool), MediaError> {
        let c = &self.config;
        let fmp4 = match c.segment_type.as_str() {
            "fmp4" => true,
            _ => rungs.iter().any(|r| r.codec.needs_fmp4()),
        };
        let gop_frames = ((fps * c.gop_s as f64).round() as u32).max(1);
        // Above 60 fps, frames are dropped to 60 (the GOP and FRAME-RATE assume it).
        let rate = if probe.video.as_ref().is_some_and(|v| v.fps > 60.5) {
            "fps=60,"
        } else {
            ""
        };
        // Each rung's encoder: the hardware one when chosen and allowed.
        let mut encoders = Vec::new();
        for r in rungs {
            let software = self.encoders.video(r.codec)?;
            encoders.push(match self.encoders.hw.map(|h| (h, h.encoder(r.codec))) {
                Some((h, Some(e))) if hardware && self.encoders.available.contains(&e) => {
                    (e, Some(h))
                }
                _ => (software.to_string(), None),
            });
        }
        let device = encoders.iter().find_map(|(_, h)| *h);
        let mut graph = if rungs.len() == 1 {
            format!("[0:v]{rate}null[s0];")
        } else {
            let labels: String = (0..rungs.len()).map(|i| format!("[s{i}]")).collect();
            format!("[0:v]{rate}split={}{labels};", rungs.len())
        };
        for (i, (r, (_, hw))) in rungs.iter().zip(&encoders).enumerate() {
            let upload = hw.map_or("", |h| h.upload_filter());
            graph.push_str(&format!(
                "[s{i}]scale={}:{}:flags=bicubic,setsar=1,format=yuv420p{upload}[v{i}];",
                r.width, r.height
            ));
        }
        graph.pop();
        let mut a = Args::new();
        if let Some(h) = device {
            a.add(h.device_args().iter().copied());
        }
        a.add(["-i".to_string(), input.display().to_string()]);
        a.add(["-filter_complex".to_string(), graph]);
        for (i, (r, (encoder, _))) in rungs.iter().zip(&encoders).enumerate() {
            let dir = out.join("hls").join(&r.name);
            mkdir(&dir)?;
            a.add([
                "-map".to_string(),
                format!("[v{i}]"),
                "-an".into(),
                "-sn".into(),
            ]);
            a.add(ladder::video_encoder_args(
                encoder, r, &c.preset, gop_frames, c.gop_s,
            ));
            a.add(ladder::hls_args(
                &dir.display().to_string(),
                c.segment_s,
                fmp4,
            ));
        }
        let used_hw = device.is_some();
        if probe.audio.is_some() {
            let dir = out.join("hls").join("audio");
            mkdir(&dir)?;
            a.add(["-map", "0:a:0", "-vn", "-sn", "-ac", "2"]);
            a.add(ladder::audio_encoder_args(
                self.encoders.audio("aac")?,
                c.audio_bitrate_k,
            ));
            a.add(ladder::hls_args(
                &dir.display().to_string(),
                c.segment_s,
                fmp4,
            ));
        }
        Ok((a.0, used_hw))
    }

    #[allow(clippy::too_many_arguments)]
    async fn video_job(
        &self,
        req: &Request,
        input: &Path,
        probe: &Probe,
        video: &probe::VideoStream,
        out: &Path,
        reporter: &mut Reporter<'_>,
        cancel: &mut Cancel,
    ) -> Result<Ready, MediaError> {
        let c = &self.config;
        let codec = self.video_codec(req)?;
        let high = Codec::parse(&c.high_codec).unwrap_or(Codec::H265);
        let rungs = ladder::plan(c, video.display(), codec, high);
        let fps = video.fps.min(60.0);
        let (args, used_hw) = self.ladder_args(input, probe, fps, &rungs, out, true)?;
        reporter.stage("transcoding", 0.0);
        let duration = probe.duration;
        let first = ffmpeg::run(&c.ffmpeg, &args, |t| reporter.encoding(t, duration), cancel).await;
        match first {
            Err(MediaError::Ffmpeg(why)) if used_hw => {
                tracing::warn!(media_id = %req.media_id, %why, "hardware encode failed; encoding in software");
                let _ = std::fs::remove_dir_all(out.join("hls"));
                let (args, _) = self.ladder_args(input, probe, fps, &rungs, out, false)?;
                ffmpeg::run(&c.ffmpeg, &args, |t| reporter.encoding(t, duration), cancel).await?;
            }
            other => {
                other?;
            }
        }
        reporter.stage("packaging", ENCODE_SHARE);
        let hls = out.join("hls");
        let audio = if probe.audio.is_some() {
            let dir = hls.join("audio");
            let info = stream_info(&c.ffprobe, &dir.join("playlist.m3u8")).await?;
            Some((
                hls::measure(&dir)?,
                hls::codec_string(&info.0, &info.1, info.2, (0, 0), 0.0),
            ))
        } else {
            None
        };
        let mut variants = Vec::new();
        for r in &rungs {
            let dir = hls.join(&r.name);
            let info = stream_info(&c.ffprobe, &dir.join("playlist.m3u8")).await?;
            variants.push((
                r,
                hls::measure(&dir)?,
                hls::codec_string(&info.0, &info.1, info.2, (r.width, r.height), fps),
            ));
        }
        let uris: Vec<String> = rungs
            .iter()
            .map(|r| format!("{}/playlist.m3u8", r.name))
            .collect();
        let master = hls::video_master(
            &variants
                .iter()
                .zip(&uris)
                .map(|((r, m, codecs), uri)| hls::VideoVariant {
                    uri,
                    measured: *m,
                    width: r.width,
                    height: r.height,
                    fps,
                    codecs,
                })
                .collect::<Vec<_>>(),
            audio
                .as_ref()
                .map(|(m, codecs)| hls::AudioGroup {
                    uri: "audio/playlist.m3u8",
                    measured: *m,
                    codecs,
                    channels: 2,
                })
                .as_ref(),
        );
        std::fs::write(hls.join("master.m3u8"), master).map_err(io(&hls))?;

        let mp4: Vec<&PlannedRung> = rungs
            .iter()
            .filter(|r| c.mp4_rungs.iter().any(|n| n == "all" || *n == r.name))
            .collect();
        if !mp4.is_empty() {
            self.remux_mp4(&mp4, &hls, audio.is_some(), &out.join("mp4"), cancel)
                .await?;
        }
        reporter.stage("thumbnails", ENCODE_SHARE + 3.0);
        let thumbs = self
            .thumbnails(input, probe, &rungs, &hls, &out.join("thumbnails"), cancel)
            .await?;

        let mut ready = Ready::default();
        ready
            .fields
            .insert("duration".into(), json!(round3(probe.duration)));
        ready.fields.insert(
            "resolutions".into(),
            json!(rungs.iter().map(|r| r.name.clone()).collect::<Vec<_>>()),
        );
        ready.fields.insert("audio_only".into(), json!(false));
        ready.fields.insert(
            "source".into(),
            json!({"width": video.width, "height": video.height, "rotation": video.rotation,
                   "fps": round3(video.fps), "codec": video.codec,
                   "audio": probe.audio.as_ref().map(|a| a.codec.clone())}),
        );
        ready.hls_master = Some("hls/master.m3u8".into());
        for (r, m, codecs) in &variants {
            ready.renditions.push(Rendition {
                name: r.name.clone(),
                key: format!("hls/{}/playlist.m3u8", r.name),
                dir: format!("hls/{}/", r.name),
                fields: json!({"name": r.name, "width": r.width, "height": r.height,
                    "codec": r.codec.name(), "codecs": codecs, "bitrate": m.average_bps,
                    "peak_bitrate": m.peak_bps, "nominal_bitrate": r.bitrate_k * 1000,
                    "segments": m.segments}),
            });
        }
        if let Some((m, codecs)) = &audio {
            ready.renditions.push(Rendition {
                name: "audio".into(),
                key: "hls/audio/playlist.m3u8".into(),
                dir: "hls/audio/".into(),
                fields: json!({"name": "audio", "codec": "aac", "codecs": codecs,
                    "bitrate": m.average_bps, "peak_bitrate": m.peak_bps, "segments": m.segments}),
            });
        }
        ready.mp4 = mp4
            .iter()
            .map(|r| (r.name.clone(), format!("mp4/{}.mp4", r.name)))
            .collect();
        ready.thumbs = thumbs;
        Ok(ready)
    }

    async fn remux_mp4(
        &self,
        rungs: &[&PlannedRung],
        hls: &Path,
        with_audio: bool,
        dir: &Path,
        cancel: &mut Cancel,
    ) -> Result<(), MediaError> {
        mkdir(dir)?;
        let mut a = Args::new();
        for r in rungs {
            a.add([
                "-i".to_string(),
                hls.join(&r.name)
                    .join("playlist.m3u8")
                    .display()
                    .to_string(),
            ]);
        }
        if with_audio {
            a.add([
                "-i".to_string(),
                hls.join("audio/playlist.m3u8").display().to_string(),
            ]);
        }
        for (i, r) in rungs.iter().enumerate() {
            a.add(["-map".to_string(), format!("{i}:v:0")]);
            if with_audio {
                a.add(["-map".to_string(), format!("{}:a:0", rungs.len())]);
            }
            a.add(["-c", "copy", "-movflags", "+faststart"]);
            if r.codec == Codec::H265 {
                a.add(["-tag:v", "hvc1"]);
            }
            a.add([dir.join(format!("{}.mp4", r.name)).display().to_string()]);
        }
        ffmpeg::run(&self.config.ffmpeg, &a.0, |_| {}, cancel).await?;
        Ok(())
    }

    /// Evenly spaced thumbnails and the sprite sheet (decoded from the rung closest
    /// to 720p, not the source), a WebVTT track into the sprite, and a poster frame
    /// from the source past any black opening.
    async fn thumbnails(
        &self,
        input: &Path,
        probe: &Probe,
        rungs: &[PlannedRung],
        hls: &Path,
        dir: &Path,
        cancel: &mut Cancel,
    ) -> Result<Thumbs, MediaError> {
        let c = &self.config;
        mkdir(dir)?;
        let from = rungs
            .iter()
            .rev()
            .find(|r| r.width.min(r.height) <= 720)
            .unwrap_or(&rungs[0]);
        let d = probe.duration;
        let n = c.thumbnails;
        let tile_w = c.sprite_width;
        let tile_h =
            ((tile_w as f64 * from.height as f64 / from.width as f64 / 2.0).round() as u32).max(1)
                * 2;
        let tiles = (d / c.sprite_interval_s as f64).ceil().max(1.0) as u32;
        let cols = c.sprite_columns;
        let rows = tiles.div_ceil(cols).clamp(1, cols);
        // `select` rather than `fps`: it keeps the first frame of a clip shorter
        // than one interval, and picks frames by their own timestamps.
        let mut graph = format!(
            "[0:v]split=3[a][b][c];[b]select='isnan(prev_selected_t)+gte(t-prev_selected_t,{})',scale={tile_w}:{tile_h},tile={cols}x{rows}[sprite];[c]trim=end={},blackdetect=d=0.1:pix_th=0.10,nullsink",
            c.sprite_interval_s,
            d.min(30.0)
        );
        let mut a = Args::new();
        a.add([
            "-i".to_string(),
            hls.join(&from.name)
                .join("playlist.m3u8")
                .display()
                .to_string(),
        ]);
        if n > 0 {
            // One frame at the middle of each of n equal spans.
            let step = d / n as f64;
            graph = format!(
                "{graph};[a]select='isnan(prev_selected_t)*gte(t,{:.3})+gte(t-prev_selected_t,{step:.3})',scale={}:-2[thumbs]",
                step / 2.0,
                c.thumbnail_width
            );
        } else {
            graph.push_str(";[a]nullsink");
        }
        a.add(["-filter_complex".to_string(), graph]);
        if n > 0 {
            a.add(["-map", "[thumbs]", "-frames:v"]);
            a.add([n.to_string(), "-q:v".into(), "3".into()]);
            a.add([dir.join("thumb_%03d.jpg").display().to_string()]);
        }
        a.add(["-map", "[sprite]", "-q:v", "5"]);
        a.add([dir.join("sprite_%03d.jpg").display().to_string()]);
        let run = ffmpeg::run(&c.ffmpeg, &a.0, |_| {}, cancel).await?;
        let black = ffmpeg::leading_black_end(&run.filter_logs).unwrap_or(0.0);
        let at = (black + (d * 0.05).min(1.0)).min((d - 0.1).max(0.0));
        let mut p = Args::new();
        p.add([
            "-ss".to_string(),
            format!("{at:.3}"),
            "-i".into(),
            input.display().to_string(),
        ]);
        p.add([
            "-frames:v",
            "1",
            "-vf",
            "scale='min(1920,iw)':-2",
            "-q:v",
            "2",
        ]);
        p.add([dir.join("poster.jpg").display().to_string()]);
        ffmpeg::run(&c.ffmpeg, &p.0, |_| {}, cancel).await?;
        let vtt = hls::sprite_vtt(
            d,
            c.sprite_interval_s,
            (tile_w, tile_h),
            cols,
            cols * rows,
            |i| format!("sprite_{i:03}.jpg"),
        );
        std::fs::write(dir.join("sprite.vtt"), vtt).map_err(io(dir))?;
        Ok(Thumbs {
            poster: Some(black),
        })
    }

    async fn audio_job(
        &self,
        input: &Path,
        probe: &Probe,
        out: &Path,
        reporter: &mut Reporter<'_>,
        cancel: &mut Cancel,
    ) -> Result<Ready, MediaError> {
        let c = &self.config;
        let renditions = if c.audio.is_empty() {
            vec![crate::config::AudioRendition {
                codec: "aac".into(),
                bitrate_k: c.audio_bitrate_k,
            }]
        } else {
            c.audio.clone()
        };
        let mut a = Args::new();
        a.add(["-i".to_string(), input.display().to_string()]);
        let downloads = out.join("audio");
        mkdir(&downloads)?;
        let mut names = Vec::new();
        let mut downloaded = std::collections::BTreeSet::new();
        for r in &renditions {
            let encoder = self.encoders.audio(&r.codec)?;
            let name = ladder::audio_name(r);
            let dir = out.join("hls").join(&name);
            mkdir(&dir)?;
            a.add(["-map", "0:a:0", "-vn", "-sn", "-dn"]);
            a.add(ladder::audio_encoder_args(encoder, r.bitrate_k));
            a.add(ladder::hls_args(
                &dir.display().to_string(),
                c.segment_s,
                true,
            ));
            names.push((name.clone(), r.clone()));
            // One downloadable file per codec: its highest bitrate.
            let best = renditions
                .iter()
                .filter(|o| o.codec == r.codec)
                .max_by_key(|o| o.bitrate_k)
                .is_some_and(|o| std::ptr::eq(o, r));
            if best && downloaded.insert(r.codec.clone()) {
                a.add(["-map", "0:a:0", "-vn", "-sn", "-dn"]);
                a.add(ladder::audio_encoder_args(encoder, r.bitrate_k));
                if r.codec == "aac" {
                    a.add(["-movflags", "+faststart"]);
                }
                let file = format!("{}.{}", r.codec, ladder::audio_extension(&r.codec));
                a.add([downloads.join(file).display().to_string()]);
            }
        }
        reporter.stage("transcoding", 0.0);
        let duration = probe.duration;
        ffmpeg::run(&c.ffmpeg, &a.0, |t| reporter.encoding(t, duration), cancel).await?;
        reporter.stage("packaging", ENCODE_SHARE);
        let hls = out.join("hls");
        let mut variants = Vec::new();
        for (name, _) in &names {
            let dir = hls.join(name);
            let info = stream_info(&c.ffprobe, &dir.join("playlist.m3u8")).await?;
            variants.push((
                format!("{name}/playlist.m3u8"),
                hls::measure(&dir)?,
                hls::codec_string(&info.0, &info.1, info.2, (0, 0), 0.0),
            ));
        }
        let master = hls::audio_master(
            &variants
                .iter()
                .map(|(u, m, c)| (u.as_str(), *m, c.as_str()))
                .collect::<Vec<_>>(),
        );
        std::fs::write(hls.join("master.m3u8"), master).map_err(io(&hls))?;
        let mut ready = Ready::default();
        ready
            .fields
            .insert("duration".into(), json!(round3(probe.duration)));
        ready.fields.insert("resolutions".into(), json!([]));
        ready.fields.insert("audio_only".into(), json!(true));
        ready.hls_master = Some("hls/master.m3u8".into());
        for ((name, r), (_, m, codecs)) in names.iter().zip(&variants) {
            ready.renditions.push(Rendition {
                name: name.clone(),
                key: format!("hls/{name}/playlist.m3u8"),
                dir: format!("hls/{name}/"),
                fields: json!({"name": name, "codec": r.codec, "codecs": codecs,
                    "nominal_bitrate": r.bitrate_k * 1000, "bitrate": m.average_bps,
                    "peak_bitrate": m.peak_bps, "segments": m.segments}),
            });
        }
        ready.downloads = downloaded
            .iter()
            .map(|codec| {
                (
                    codec.clone(),
                    format!("audio/{codec}.{}", ladder::audio_extension(codec)),
                )
            })
            .collect();
        Ok(ready)
    }
}

/// The first hardware family that is configured and passes a test encode.
async fn pick_hw(c: &MediaConfig, encoders: &Encoders) -> Option<Hw> {
    let wanted: Vec<Hw> = match c.hwaccel.as_str() {
        "none" => return None,
        "auto" => Hw::ALL.to_vec(),
        name => Hw::parse(name).into_iter().collect(),
    };
    for hw in wanted {
        let Some(encoder) = hw.encoder(Codec::H264) else {
            continue;
        };
        if !encoders.available.contains(&encoder) {
            tracing::warn!(
                hw = hw.name(),
                "media.hwaccel: this ffmpeg has no {encoder}"
            );
            continue;
        }
        let test = tokio::process::Command::new(&c.ffmpeg)
            .kill_on_drop(true)
            .args(["-hide_banner", "-v", "error"])
            .args(hw.device_args())
            .args(["-f", "lavfi", "-i", "color=s=256x256:d=0.2", "-vf"])
            .arg(format!("format=yuv420p{}", hw.upload_filter()))
            .args(["-c:v", &encoder, "-f", "null", "-"])
            .output();
        let test = tokio::time::timeout(Duration::from_secs(20), test)
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("test encode took over 20 s")));
        match test {
            Ok(o) if o.status.success() => {
                tracing::info!(hw = hw.name(), "hardware encoder available");
                return Some(hw);
            }
            Ok(o) => tracing::warn!(
                hw = hw.name(),
                error = %String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or(""),
                "hardware encoder unusable; encoding in software"
            ),
            Err(e) => {
                tracing::warn!(hw = hw.name(), error = %e, "cannot test the hardware encoder")
            }
        }
    }
    None
}

/// Codec name, profile and level of the first stream of `file`.
async fn stream_info(ffprobe: &str, file: &Path) -> Result<(String, String, i64), MediaError> {
    let mut cmd = tokio::process::Command::new(ffprobe);
    cmd.args(["-v", "error", "-select_streams", "0", "-show_entries"])
        .args(["stream=codec_name,profile,level", "-of", "json"])
        .arg(file)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .map_err(|_| MediaError::Tool(format!("{ffprobe} on {} took over 60 s", file.display())))?
        .map_err(|e| MediaError::Tool(format!("cannot run {ffprobe}: {e}")))?;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let s = &v["streams"][0];
    let codec = s["codec_name"].as_str().unwrap_or("").to_string();
    if codec.is_empty() {
        return Err(MediaError::Ffmpeg(format!(
            "{} has no readable stream",
            file.display()
        )));
    }
    Ok((
        codec,
        s["profile"].as_str().unwrap_or("").to_string(),
        s["level"].as_i64().unwrap_or(0),
    ))
}

/// `prefix/rel`, or `rel` with no prefix.
pub fn join_key(prefix: &str, rel: &str) -> String {
    if prefix.is_empty() {
        rel.to_string()
    } else {
        format!("{prefix}/{rel}")
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Throttles progress: at most one report per interval, stage changes always.
struct Reporter<'a> {
    every: Duration,
    last: Option<Instant>,
    stage: &'static str,
    sink: &'a mut (dyn FnMut(Progress) + Send),
}

impl<'a> Reporter<'a> {
    fn new(every_ms: u64, sink: &'a mut (dyn FnMut(Progress) + Send)) -> Reporter<'a> {
        Reporter {
            every: Duration::from_millis(every_ms),
            last: None,
            stage: "",
            sink,
        }
    }

    fn stage(&mut self, stage: &'static str, percent: f64) {
        self.stage = stage;
        self.last = Some(Instant::now());
        (self.sink)(Progress {
            stage,
            percent,
            fps: 0.0,
            speed: 0.0,
            eta_s: None,
        });
    }

    fn encoding(&mut self, t: Tick, duration: f64) {
        if self.last.is_some_and(|l| l.elapsed() < self.every) {
            return;
        }
        self.last = Some(Instant::now());
        let done = (t.out_time_s / duration).clamp(0.0, 1.0);
        let eta_s = (t.speed > 0.0).then(|| ((duration - t.out_time_s).max(0.0) / t.speed).round());
        (self.sink)(Progress {
            stage: self.stage,
            percent: (done * ENCODE_SHARE * 10.0).round() / 10.0,
            fps: t.fps,
            speed: t.speed,
            eta_s,
        });
    }
}

struct Rendition {
    name: String,
    /// Playlist key, relative to the media's prefix.
    key: String,
    /// Directory of its files (for its size).
    dir: String,
    fields: Value,
}

#[derive(Default)]
struct Thumbs {
    /// Seconds of black skipped before the poster.
    poster: Option<f64>,
}

/// The `media.ready` payload being assembled (keys relative to the media's prefix).
#[derive(Default)]
struct Ready {
    fields: Map<String, Value>,
    hls_master: Option<String>,
    renditions: Vec<Rendition>,
    mp4: Vec<(String, String)>,
    downloads: Vec<(String, String)>,
    thumbs: Thumbs,
}

impl Ready {
    /// Turn keys into URLs now that everything is uploaded.
    fn finish(&mut self, storage: &Storage, prefix: &str, sizes: &BTreeMap<String, u64>) {
        let key = |rel: &str| join_key(prefix, rel);
        let url = |rel: &str| storage.url(&key(rel));
        let size_under = |rel: &str| -> u64 {
            let start = key(rel);
            sizes
                .range(start.clone()..)
                .take_while(|(k, _)| k.starts_with(&start))
                .map(|(_, s)| s)
                .sum()
        };
        let mut playback = Map::new();
        if let Some(m) = &self.hls_master {
            playback.insert("hls".into(), json!(url(m)));
        }
        if !self.mp4.is_empty() {
            let mp4: Map<String, Value> = self
                .mp4
                .iter()
                .map(|(n, k)| (n.clone(), json!(url(k))))
                .collect();
            playback.insert("mp4".into(), Value::Object(mp4));
        }
        self.fields
            .insert("playback_urls".into(), Value::Object(playback));
        let renditions: Vec<Value> = self
            .renditions
            .iter()
            .map(|r| {
                let mut f = r.fields.clone();
                f["url"] = json!(url(&r.key));
                f["size_bytes"] = json!(size_under(&r.dir));
                if let Some((_, k)) = self.mp4.iter().find(|(n, _)| *n == r.name) {
                    f["mp4_url"] = json!(url(k));
                    f["mp4_size_bytes"] = json!(sizes.get(&key(k)).copied().unwrap_or(0));
                }
                f
            })
            .collect();
        self.fields.insert("renditions".into(), json!(renditions));
        if !self.downloads.is_empty() {
            let d: Map<String, Value> = self
                .downloads
                .iter()
                .map(|(c, k)| (c.clone(), json!(url(k))))
                .collect();
            self.fields.insert(
                "audio_urls".into(),
                json!({"hls": self.hls_master.as_deref().map(url), "downloads": d}),
            );
        }
        let thumbs: Vec<String> = sizes
            .keys()
            .filter(|k| k.starts_with(&key("thumbnails/thumb_")))
            .map(|k| storage.url(k))
            .collect();
        self.fields.insert("thumbnail_urls".into(), json!(thumbs));
        if let Some(black) = self.thumbs.poster {
            self.fields
                .insert("poster_url".into(), json!(url("thumbnails/poster.jpg")));
            self.fields
                .insert("poster_skipped_black_s".into(), json!(round3(black)));
            let sprites: Vec<String> = sizes
                .keys()
                .filter(|k| k.starts_with(&key("thumbnails/sprite_")))
                .map(|k| storage.url(k))
                .collect();
            self.fields.insert("sprite_urls".into(), json!(sprites));
            self.fields
                .insert("thumbnails_vtt".into(), json!(url("thumbnails/sprite.vtt")));
        }
    }
}
