//! Playlists: measuring what ffmpeg wrote, and the master playlist written from
//! those measurements (ffmpeg's own BANDWIDTH is the nominal bitrate × 1.1).

use std::fmt::Write as _;
use std::path::Path;

use super::MediaError;

/// What one variant playlist's segments weigh.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Measured {
    /// Bits per second of the heaviest segment (HLS `BANDWIDTH`).
    pub peak_bps: u64,
    /// Bits per second over the whole rendition (`AVERAGE-BANDWIDTH`).
    pub average_bps: u64,
    pub segments: usize,
    /// Longest segment, in seconds.
    pub longest_s: f64,
    pub bytes: u64,
}

/// Measure `dir/playlist.m3u8` from its `#EXTINF` durations and segment sizes.
pub fn measure(dir: &Path) -> Result<Measured, MediaError> {
    let playlist = dir.join("playlist.m3u8");
    let text = std::fs::read_to_string(&playlist)
        .map_err(|e| MediaError::Io(format!("{}: {e}", playlist.display())))?;
    let mut m = Measured::default();
    let (mut total_s, mut duration) = (0.0, None);
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("#EXTINF:") {
            duration = rest
                .split(',')
                .next()
                .and_then(|d| d.trim().parse::<f64>().ok());
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let d = duration.take().unwrap_or(0.0);
            let bytes = std::fs::metadata(dir.join(line.trim()))
                .map_err(|e| MediaError::Io(format!("segment {line}: {e}")))?
                .len();
            m.segments += 1;
            m.bytes += bytes;
            total_s += d;
            m.longest_s = m.longest_s.max(d);
            // A last segment of a few frames says little about the peak.
            if d >= 0.5 || m.peak_bps == 0 {
                m.peak_bps = m.peak_bps.max((bytes as f64 * 8.0 / d.max(0.001)) as u64);
            }
        }
    }
    if m.segments == 0 {
        return Err(MediaError::Ffmpeg(format!(
            "{} has no segments",
            playlist.display()
        )));
    }
    m.average_bps = (m.bytes as f64 * 8.0 / total_s.max(0.001)) as u64;
    Ok(m)
}

/// Luma samples per second a picture size and rate need.
fn sample_rate(width: u32, height: u32, fps: f64) -> f64 {
    width as f64 * height as f64 * fps.max(1.0)
}

/// The smallest level whose luma sample rate covers `rate` (`table`: level, rate).
fn level_for(table: &[(u32, f64)], rate: f64) -> u32 {
    table
        .iter()
        .find(|(_, max)| rate <= *max)
        .or(table.last())
        .map_or(0, |(level, _)| *level)
}

/// VP9 levels (×10) and their maximum luma sample rates (VP9 spec, Annex A).
const VP9_LEVELS: &[(u32, f64)] = &[
    (10, 829_440.0),
    (20, 4_608_000.0),
    (21, 9_216_000.0),
    (30, 20_736_000.0),
    (31, 36_864_000.0),
    (40, 83_558_400.0),
    (41, 160_432_128.0),
    (50, 311_951_360.0),
    (51, 588_251_136.0),
    (52, 1_176_502_272.0),
    (61, 2_353_004_544.0),
    (62, 4_706_009_088.0),
];

/// AV1 `seq_level_idx` and their maximum display rates (AV1 spec, Annex A).
const AV1_LEVELS: &[(u32, f64)] = &[
    (0, 4_423_680.0),
    (1, 8_363_520.0),
    (4, 19_975_680.0),
    (5, 31_950_720.0),
    (8, 70_778_880.0),
    (9, 141_557_760.0),
    (12, 267_386_880.0),
    (13, 534_773_760.0),
    (14, 1_069_547_520.0),
    (17, 2_139_095_040.0),
    (18, 4_278_190_080.0),
];

/// The RFC 6381 `CODECS` name of a stream as ffprobe describes it (`size` and
/// `fps` give the VP9 and AV1 levels, which ffprobe does not report).
pub fn codec_string(codec: &str, profile: &str, level: i64, size: (u32, u32), fps: f64) -> String {
    let rate = sample_rate(size.0, size.1, fps);
    match codec {
        "h264" => {
            let p = match profile {
                "Constrained Baseline" => "42e0",
                "Baseline" => "4200",
                "Main" => "4d40",
                _ => "6400",
            };
            format!("avc1.{p}{:02x}", level.clamp(10, 62))
        }
        "hevc" => {
            let (p, c) = if profile.contains("10") {
                (2, 4)
            } else {
                (1, 6)
            };
            format!("hvc1.{p}.{c}.L{}.90", level.max(30))
        }
        "vp9" => format!("vp09.00.{}.08", level_for(VP9_LEVELS, rate)),
        "av1" => format!("av01.0.{:02}M.08", level_for(AV1_LEVELS, rate)),
        "vvc" => "vvc1".into(),
        "aac" if profile.starts_with("HE") => "mp4a.40.5".into(),
        "aac" => "mp4a.40.2".into(),
        "mp3" => "mp4a.40.34".into(),
        "opus" => "Opus".into(),
        "flac" => "fLaC".into(),
        other => other.into(),
    }
}

/// One video variant of the master playlist.
pub struct VideoVariant<'a> {
    pub uri: &'a str,
    pub measured: Measured,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    pub codecs: &'a str,
}

/// The shared audio rendition of a ladder.
pub struct AudioGroup<'a> {
    pub uri: &'a str,
    pub measured: Measured,
    pub codecs: &'a str,
    pub channels: u32,
}

/// The master playlist of a video ladder: each rung's `BANDWIDTH` is its peak
/// segment bitrate plus the audio's, as the HLS spec defines it.
pub fn video_master(variants: &[VideoVariant], audio: Option<&AudioGroup>) -> String {
    let mut m = String::from("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    if let Some(a) = audio {
        let _ = writeln!(
            m,
            "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"audio\",NAME=\"default\",DEFAULT=YES,AUTOSELECT=YES,CHANNELS=\"{}\",URI=\"{}\"",
            a.channels, a.uri
        );
    }
    for v in variants {
        let (peak, avg) = audio.map_or((0, 0), |a| (a.measured.peak_bps, a.measured.average_bps));
        let codecs = match audio {
            Some(a) => format!("{},{}", v.codecs, a.codecs),
            None => v.codecs.to_string(),
        };
        let _ = write!(
            m,
            "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={},RESOLUTION={}x{},FRAME-RATE={:.3},CODECS=\"{codecs}\"",
            v.measured.peak_bps + peak,
            v.measured.average_bps + avg,
            v.width,
            v.height,
            v.fps,
        );
        if audio.is_some() {
            m.push_str(",AUDIO=\"audio\"");
        }
        let _ = writeln!(m, "\n{}", v.uri);
    }
    m
}

/// The master playlist of audio-only renditions.
pub fn audio_master(variants: &[(&str, Measured, &str)]) -> String {
    let mut m = String::from("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    for (uri, measured, codecs) in variants {
        let _ = writeln!(
            m,
            "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={},CODECS=\"{codecs}\"\n{uri}",
            measured.peak_bps, measured.average_bps
        );
    }
    m
}

/// A WebVTT thumbnail track: one cue per sprite tile.
pub fn sprite_vtt(
    duration: f64,
    interval_s: u32,
    tile: (u32, u32),
    columns: u32,
    per_sheet: u32,
    sheet_name: impl Fn(u32) -> String,
) -> String {
    let count = (duration / interval_s as f64).ceil().max(1.0) as u32;
    let mut vtt = String::from("WEBVTT\n");
    for i in 0..count {
        let start = (i * interval_s) as f64;
        let end = ((i + 1) * interval_s) as f64;
        let within = i % per_sheet;
        let (x, y) = ((within % columns) * tile.0, (within / columns) * tile.1);
        let _ = write!(
            vtt,
            "\n{} --> {}\n{}#xywh={x},{y},{},{}\n",
            vtt_time(start),
            vtt_time(end.min(duration.max(start + 0.001))),
            sheet_name(i / per_sheet + 1),
            tile.0,
            tile.1
        );
    }
    vtt
}

fn vtt_time(s: f64) -> String {
    let ms = (s * 1000.0).round() as u64;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_and_average_from_segments() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("playlist.m3u8"),
            "#EXTM3U\n#EXTINF:6.000000,\ns0.ts\n#EXTINF:6.000000,\ns1.ts\n#EXTINF:0.1,\ns2.ts\n#EXT-X-ENDLIST\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("s0.ts"), vec![0u8; 7500]).unwrap();
        std::fs::write(dir.path().join("s1.ts"), vec![0u8; 15000]).unwrap();
        std::fs::write(dir.path().join("s2.ts"), vec![0u8; 1000]).unwrap();
        let m = measure(dir.path()).unwrap();
        assert_eq!(
            m.peak_bps, 20_000,
            "the heaviest full segment, not the short tail"
        );
        assert_eq!(m.average_bps, (23_500.0 * 8.0 / 12.1) as u64);
        assert_eq!((m.segments, m.longest_s), (3, 6.0));
    }

    #[test]
    fn codec_names() {
        assert_eq!(
            codec_string("h264", "High", 31, (1280, 720), 30.0),
            "avc1.64001f"
        );
        assert_eq!(
            codec_string("h264", "Main", 40, (1920, 1080), 30.0),
            "avc1.4d4028"
        );
        assert_eq!(
            codec_string("hevc", "Main", 150, (3840, 2160), 30.0),
            "hvc1.1.6.L150.90"
        );
        assert_eq!(codec_string("aac", "LC", 0, (0, 0), 0.0), "mp4a.40.2");
        // VP9/AV1 levels from the luma sample rate: 1080p30 is 4.0, 1080p60 4.1,
        // and a portrait 720p is the same as a landscape one.
        assert_eq!(
            codec_string("vp9", "", 0, (1920, 1080), 30.0),
            "vp09.00.40.08"
        );
        assert_eq!(
            codec_string("vp9", "", 0, (1920, 1080), 60.0),
            "vp09.00.41.08"
        );
        assert_eq!(
            codec_string("vp9", "", 0, (720, 1280), 30.0),
            "vp09.00.31.08"
        );
        assert_eq!(
            codec_string("av1", "", 0, (1920, 1080), 30.0),
            "av01.0.08M.08"
        );
        assert_eq!(
            codec_string("av1", "", 0, (1920, 1080), 60.0),
            "av01.0.09M.08"
        );
    }

    #[test]
    fn master_adds_the_audio_group() {
        let m = Measured {
            peak_bps: 1000,
            average_bps: 800,
            ..Default::default()
        };
        let v = [VideoVariant {
            uri: "360p/playlist.m3u8",
            measured: m,
            width: 640,
            height: 360,
            fps: 30.0,
            codecs: "avc1.64001e",
        }];
        let a = AudioGroup {
            uri: "audio/playlist.m3u8",
            measured: m,
            codecs: "mp4a.40.2",
            channels: 2,
        };
        let text = video_master(&v, Some(&a));
        assert!(
            text.contains("BANDWIDTH=2000,AVERAGE-BANDWIDTH=1600,RESOLUTION=640x360"),
            "{text}"
        );
        assert!(
            text.contains("CODECS=\"avc1.64001e,mp4a.40.2\",AUDIO=\"audio\"\n360p/playlist.m3u8"),
            "{text}"
        );
        assert!(text.contains("TYPE=AUDIO,GROUP-ID=\"audio\""));
    }

    #[test]
    fn vtt_tiles() {
        let vtt = sprite_vtt(12.0, 5, (160, 90), 2, 4, |n| format!("sprite_{n:03}.jpg"));
        assert!(vtt.starts_with(
            "WEBVTT\n\n00:00:00.000 --> 00:00:05.000\nsprite_001.jpg#xywh=0,0,160,90\n"
        ));
        assert!(vtt.contains("00:00:05.000 --> 00:00:10.000\nsprite_001.jpg#xywh=160,0,160,90"));
        assert!(vtt.contains("00:00:10.000 --> 00:00:12.000\nsprite_001.jpg#xywh=0,90,160,90"));
    }
}
