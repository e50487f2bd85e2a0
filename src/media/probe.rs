//! What a source holds, from `ffprobe -show_format -show_streams` (JSON).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::MediaError;

/// The source as the ladder sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// Seconds.
    pub duration: f64,
    pub format: String,
    pub video: Option<VideoStream>,
    pub audio: Option<AudioStream>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VideoStream {
    pub codec: String,
    /// Coded size, before rotation.
    pub width: u32,
    pub height: u32,
    /// Degrees clockwise the player turns the picture (0, 90, 180, 270).
    pub rotation: u32,
    pub fps: f64,
    /// Sample (pixel) aspect ratio: 1 for square pixels; anamorphic sources
    /// (DV, some broadcast) are shown wider or narrower than coded.
    pub sar: f64,
}

impl VideoStream {
    /// The size as shown: square pixels, turned (ffmpeg rotates while decoding,
    /// and the ladder scales to square pixels).
    pub fn display(&self) -> (u32, u32) {
        let width = ((self.width as f64 * self.sar).round() as u32).max(1);
        if self.rotation % 180 == 90 {
            (self.height, width)
        } else {
            (width, self.height)
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AudioStream {
    pub codec: String,
    pub channels: u32,
    pub sample_rate: u32,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    streams: Vec<RawStream>,
    format: Option<RawFormat>,
}

#[derive(Deserialize)]
struct RawFormat {
    format_name: Option<String>,
    duration: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawStream {
    codec_type: Option<String>,
    codec_name: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    avg_frame_rate: Option<String>,
    r_frame_rate: Option<String>,
    sample_aspect_ratio: Option<String>,
    channels: Option<u32>,
    sample_rate: Option<String>,
    duration: Option<String>,
    #[serde(default)]
    disposition: Disposition,
    #[serde(default)]
    tags: Tags,
    #[serde(default)]
    side_data_list: Vec<SideData>,
}

#[derive(Deserialize, Default)]
struct Disposition {
    #[serde(default)]
    attached_pic: u8,
}

#[derive(Deserialize, Default)]
struct Tags {
    rotate: Option<String>,
}

#[derive(Deserialize, Default)]
struct SideData {
    rotation: Option<f64>,
}

/// `30000/1001` → 29.97; `0/0` → None.
fn rate(s: &str) -> Option<f64> {
    let (n, d) = s.split_once('/')?;
    let (n, d): (f64, f64) = (n.parse().ok()?, d.parse().ok()?);
    (n > 0.0 && d > 0.0).then(|| n / d)
}

/// Parse ffprobe's JSON.
pub fn parse(json: &[u8]) -> Result<Probe, MediaError> {
    let raw: Raw = serde_json::from_slice(json)
        .map_err(|e| MediaError::NotMedia(format!("unreadable ffprobe output: {e}")))?;
    let video = raw
        .streams
        .iter()
        .find(|s| s.codec_type.as_deref() == Some("video") && s.disposition.attached_pic == 0);
    let audio = raw
        .streams
        .iter()
        .find(|s| s.codec_type.as_deref() == Some("audio"));
    let video = match video {
        Some(s) => {
            let (Some(width), Some(height)) = (s.width, s.height) else {
                return Err(MediaError::NotMedia("video stream without a size".into()));
            };
            if width == 0 || height == 0 {
                return Err(MediaError::NotMedia("video stream without a size".into()));
            }
            let turn = s
                .side_data_list
                .iter()
                .find_map(|d| d.rotation)
                .map(|r| -r)
                .or_else(|| s.tags.rotate.as_deref().and_then(|r| r.parse().ok()))
                .unwrap_or(0.0);
            let fps = [&s.avg_frame_rate, &s.r_frame_rate]
                .into_iter()
                .flatten()
                .find_map(|r| rate(r))
                .filter(|f| *f <= 240.0)
                .unwrap_or(30.0);
            let sar = s
                .sample_aspect_ratio
                .as_deref()
                .and_then(|r| rate(&r.replace(':', "/")))
                .filter(|r| (0.1..=10.0).contains(r))
                .unwrap_or(1.0);
            Some(VideoStream {
                sar,
                codec: s.codec_name.clone().unwrap_or_default(),
                width,
                height,
                rotation: (turn.round() as i64).rem_euclid(360) as u32,
                fps,
            })
        }
        None => None,
    };
    let audio = audio.map(|s| AudioStream {
        codec: s.codec_name.clone().unwrap_or_default(),
        channels: s.channels.unwrap_or(2),
        sample_rate: s
            .sample_rate
            .as_deref()
            .and_then(|r| r.parse().ok())
            .unwrap_or(48000),
    });
    if video.is_none() && audio.is_none() {
        return Err(MediaError::NotMedia("no audio or video stream".into()));
    }
    let format = raw.format.as_ref();
    let duration = format
        .and_then(|f| f.duration.as_deref())
        .and_then(|d| d.parse::<f64>().ok())
        .or_else(|| {
            raw.streams
                .iter()
                .filter_map(|s| s.duration.as_deref()?.parse::<f64>().ok())
                .reduce(f64::max)
        })
        .filter(|d| d.is_finite() && *d > 0.0)
        .ok_or_else(|| MediaError::NotMedia("no duration (empty or broken file)".into()))?;
    Ok(Probe {
        duration,
        format: format
            .and_then(|f| f.format_name.clone())
            .unwrap_or_default(),
        video,
        audio,
    })
}

/// Run ffprobe on `input` (a path or URL).
pub async fn probe(ffprobe: &str, input: &Path, timeout: Duration) -> Result<Probe, MediaError> {
    let mut cmd = tokio::process::Command::new(ffprobe);
    cmd.args(["-v", "error", "-print_format", "json"])
        .args(["-show_format", "-show_streams"])
        .arg(input)
        .kill_on_drop(true);
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| MediaError::NotMedia(format!("probe took longer than {timeout:?}")))?
        .map_err(|e| MediaError::Tool(format!("cannot run {ffprobe}: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let why = stderr.lines().rev().find(|l| !l.trim().is_empty());
        return Err(MediaError::NotMedia(
            why.unwrap_or("ffprobe failed").trim().to_string(),
        ));
    }
    parse(&out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_with_rotation_and_cover_art() {
        let json = br#"{"streams":[
            {"codec_type":"video","codec_name":"mjpeg","width":600,"height":600,"disposition":{"attached_pic":1}},
            {"codec_type":"video","codec_name":"h264","width":1920,"height":1080,
             "avg_frame_rate":"30000/1001","side_data_list":[{"rotation":-90}]},
            {"codec_type":"audio","codec_name":"aac","channels":2,"sample_rate":"44100"}],
            "format":{"format_name":"mov,mp4","duration":"12.5"}}"#;
        let p = parse(json).unwrap();
        let v = p.video.unwrap();
        assert_eq!((v.codec.as_str(), v.rotation), ("h264", 90));
        assert_eq!(v.display(), (1080, 1920));
        assert!((v.fps - 29.97).abs() < 0.01);
        assert_eq!(p.audio.unwrap().sample_rate, 44100);
        assert_eq!(p.duration, 12.5);
        // Anamorphic: 720×576 with 16:11 pixels is shown 1047 wide; 0:1 is unknown.
        let json = br#"{"streams":[{"codec_type":"video","width":720,"height":576,
            "sample_aspect_ratio":"16:11"}],"format":{"duration":"1"}}"#;
        assert_eq!(parse(json).unwrap().video.unwrap().display(), (1047, 576));
        let json = br#"{"streams":[{"codec_type":"video","width":720,"height":576,
            "sample_aspect_ratio":"0:1"}],"format":{"duration":"1"}}"#;
        assert_eq!(parse(json).unwrap().video.unwrap().display(), (720, 576));
    }

    #[test]
    fn audio_only_and_broken() {
        let p = parse(br#"{"streams":[{"codec_type":"audio","codec_name":"mp3","duration":"3.0"}],"format":{}}"#).unwrap();
        assert!(p.video.is_none());
        assert_eq!(p.duration, 3.0);
        for (json, why) in [
            (
                &br#"{"streams":[],"format":{"duration":"1"}}"#[..],
                "no audio or video",
            ),
            (
                br#"{"streams":[{"codec_type":"audio"}],"format":{}}"#,
                "no duration",
            ),
            (
                br#"{"streams":[{"codec_type":"video"}],"format":{}}"#,
                "without a size",
            ),
            (b"not json", "unreadable"),
        ] {
            let e = parse(json).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
    }
}
