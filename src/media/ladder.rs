//! The ladder: which renditions a source gets, and the one ffmpeg command line
//! that decodes the source once and encodes all of them.

use std::collections::BTreeSet;
use std::fmt;

use super::MediaError;
use crate::config::{AudioRendition, MediaConfig};

/// Video codecs a ladder may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Codec {
    H264,
    H265,
    Vp9,
    Av1,
    Vvc,
}

impl Codec {
    pub fn parse(s: &str) -> Option<Codec> {
        Some(match s.to_ascii_lowercase().as_str() {
            "h264" | "avc" => Codec::H264,
            "h265" | "hevc" => Codec::H265,
            "vp9" => Codec::Vp9,
            "av1" => Codec::Av1,
            "vvc" | "h266" => Codec::Vvc,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::H264 => "h264",
            Codec::H265 => "h265",
            Codec::Vp9 => "vp9",
            Codec::Av1 => "av1",
            Codec::Vvc => "vvc",
        }
    }

    /// Software encoders, preferred first.
    fn software(self) -> &'static [&'static str] {
        match self {
            Codec::H264 => &["libx264"],
            Codec::H265 => &["libx265"],
            Codec::Vp9 => &["libvpx-vp9"],
            Codec::Av1 => &["libsvtav1", "libaom-av1", "librav1e"],
            Codec::Vvc => &["libvvenc"],
        }
    }

    /// MPEG-TS segments carry H.264 only (as far as players go); the rest need fMP4.
    pub fn needs_fmp4(self) -> bool {
        self != Codec::H264
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Hardware encoder families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hw {
    Nvenc,
    Vaapi,
    Qsv,
    VideoToolbox,
}

impl Hw {
    pub const ALL: [Hw; 4] = [Hw::Nvenc, Hw::Vaapi, Hw::Qsv, Hw::VideoToolbox];

    pub fn parse(s: &str) -> Option<Hw> {
        Hw::ALL.into_iter().find(|h| h.name() == s)
    }

    pub fn name(self) -> &'static str {
        match self {
            Hw::Nvenc => "nvenc",
            Hw::Vaapi => "vaapi",
            Hw::Qsv => "qsv",
            Hw::VideoToolbox => "videotoolbox",
        }
    }

    /// Options opening the device, placed before the input (VAAPI and QSV
    /// encode frames that live on the device).
    pub fn device_args(self) -> &'static [&'static str] {
        match self {
            Hw::Vaapi => &["-vaapi_device", "/dev/dri/renderD128"],
            Hw::Qsv => &["-init_hw_device", "qsv=hw", "-filter_hw_device", "hw"],
            Hw::Nvenc | Hw::VideoToolbox => &[],
        }
    }

    /// Filters ending a rung's chain that move its frames to the device.
    pub fn upload_filter(self) -> &'static str {
        match self {
            Hw::Vaapi => ",format=nv12,hwupload",
            Hw::Qsv => ",hwupload=extra_hw_frames=64,format=qsv",
            Hw::Nvenc | Hw::VideoToolbox => "",
        }
    }

    /// The encoder of `codec` in this family, e.g. `hevc_nvenc`.
    pub fn encoder(self, codec: Codec) -> Option<String> {
        let c = match codec {
            Codec::H264 => "h264",
            Codec::H265 => "hevc",
            Codec::Vp9 if self != Hw::Nvenc => "vp9",
            Codec::Av1 => "av1",
            _ => return None,
        };
        Some(format!("{c}_{}", self.name()))
    }
}

/// The encoders the local ffmpeg has (`ffmpeg -encoders`), and the hardware
/// family chosen at start (if any).
#[derive(Debug, Clone, Default)]
pub struct Encoders {
    pub available: BTreeSet<String>,
    pub hw: Option<Hw>,
}

impl Encoders {
    /// Parse `ffmpeg -hide_banner -encoders`.
    pub fn parse(listing: &str) -> Encoders {
        let available = listing
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                let flags = words.next()?;
                let name = words.next()?;
                (flags.len() == 6 && (flags.starts_with('V') || flags.starts_with('A')))
                    .then(|| name.to_string())
            })
            .collect();
        Encoders {
            available,
            hw: None,
        }
    }

    fn has(&self, encoder: &str) -> bool {
        self.available.contains(encoder)
    }

    /// The software encoder for `codec`, or `unsupported codec` naming what there is.
    pub fn video(&self, codec: Codec) -> Result<&'static str, MediaError> {
        codec
            .software()
            .iter()
            .copied()
            .find(|e| self.has(e))
            .ok_or_else(|| MediaError::UnsupportedCodec {
                codec: codec.name().into(),
                available: self.video_codecs().join(", "),
            })
    }

    /// Codecs this ffmpeg can encode, e.g. `h264 (libx264)`.
    pub fn video_codecs(&self) -> Vec<String> {
        [Codec::H264, Codec::H265, Codec::Vp9, Codec::Av1, Codec::Vvc]
            .into_iter()
            .filter_map(|c| {
                let e = c.software().iter().find(|e| self.has(e))?;
                Some(format!("{c} ({e})"))
            })
            .collect()
    }

    /// The encoder of an audio codec name.
    pub fn audio(&self, codec: &str) -> Result<&'static str, MediaError> {
        let candidates: &[&'static str] = match codec {
            "aac" => &["aac", "libfdk_aac"],
            "opus" => &["libopus", "opus"],
            "mp3" => &["libmp3lame", "libshine"],
            "flac" => &["flac"],
            "vorbis" => &["libvorbis", "vorbis"],
            _ => &[],
        };
        candidates
            .iter()
            .copied()
            .find(|e| self.has(e))
            .ok_or_else(|| MediaError::UnsupportedCodec {
                codec: codec.into(),
                available: format!("no encoder for it (looked for {})", candidates.join(", ")),
            })
    }
}

/// One video rendition as planned for a source.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRung {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub bitrate_k: u32,
    pub codec: Codec,
}

fn even(x: f64) -> u32 {
    ((x / 2.0).round() as u32).max(1) * 2
}

/// The rungs for a source shown at `display` (width, height): every configured
/// rung whose short side fits in the source's, never upscaled; a source smaller
/// than the first rung gets one rung at its own (even) size. Rungs above 1080p
/// use `high` when `codec` is H.264.
pub fn plan(
    config: &MediaConfig,
    display: (u32, u32),
    codec: Codec,
    high: Codec,
) -> Vec<PlannedRung> {
    let (w, h) = (display.0 as f64, display.1 as f64);
    let short = w.min(h);
    let portrait = h > w;
    let size = |side: u32| -> (u32, u32) {
        let s = side as f64;
        if portrait {
            (even(s), even(h * s / w))
        } else {
            (even(w * s / h), even(s))
        }
    };
    let codec_for = |side: u32| {
        if codec == Codec::H264 && side > 1080 {
            high
        } else {
            codec
        }
    };
    let mut rungs: Vec<_> = config.rungs.iter().collect();
    rungs.sort_by_key(|r| r.height);
    let mut planned: Vec<PlannedRung> = rungs
        .iter()
        .filter(|r| r.height as f64 <= short)
        .map(|r| {
            let (width, height) = size(r.height);
            PlannedRung {
                name: r.name.clone(),
                width,
                height,
                bitrate_k: r.bitrate_k,
                codec: codec_for(r.height),
            }
        })
        .collect();
    if planned.is_empty() {
        let first = rungs[0];
        let side = (short as u32 & !1).max(2);
        let (width, height) = size(side);
        let scale = (side as f64 / first.height as f64).powi(2);
        planned.push(PlannedRung {
            name: format!("{side}p"),
            width,
            height,
            bitrate_k: ((first.bitrate_k as f64 * scale) as u32).max(64),
            codec,
        });
    }
    planned
}

/// Where an audio-only rendition goes: `aac_128k`, `flac`.
pub fn audio_name(a: &AudioRendition) -> String {
    if a.codec == "flac" {
        "flac".into()
    } else {
        format!("{}_{}k", a.codec, a.bitrate_k)
    }
}

/// Extension of the downloadable file of an audio codec.
pub fn audio_extension(codec: &str) -> &'static str {
    match codec {
        "aac" => "m4a",
        "opus" => "opus",
        "mp3" => "mp3",
        "flac" => "flac",
        _ => "ogg",
    }
}

/// Builds ffmpeg argument lists.
pub struct Args(pub Vec<String>);

impl Args {
    pub fn new() -> Args {
        Args(Vec::new())
    }

    pub fn add<I, S>(&mut self, items: I) -> &mut Args
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.0.extend(items.into_iter().map(Into::into));
        self
    }
}

impl Default for Args {
    fn default() -> Self {
        Args::new()
    }
}

/// The encoder options of one video rung (keyframes every `gop` frames, forced on
/// the same timestamps in every rung, scene-cut detection off).
pub fn video_encoder_args(
    encoder: &str,
    rung: &PlannedRung,
    preset: &str,
    gop_frames: u32,
    gop_s: u32,
) -> Vec<String> {
    let b = rung.bitrate_k;
    let mut a = vec![
        "-c:v".to_string(),
        encoder.to_string(),
        "-b:v".into(),
        format!("{b}k"),
        "-maxrate".into(),
        format!("{}k", b * 107 / 100),
        "-bufsize".into(),
        format!("{}k", b * 3 / 2),
        "-g".into(),
        gop_frames.to_string(),
        "-force_key_frames".into(),
        format!("expr:gte(t,n_forced*{gop_s})"),
    ];
    let more: Vec<String> = match encoder {
        "libx264" => vec![
            "-preset".into(),
            preset.into(),
            "-profile:v".into(),
            "high".into(),
            "-keyint_min".into(),
            gop_frames.to_string(),
            "-sc_threshold".into(),
            "0".into(),
        ],
        "libx265" => vec![
            "-preset".into(),
            preset.into(),
            "-tag:v".into(),
            "hvc1".into(),
            "-x265-params".into(),
            format!("keyint={gop_frames}:min-keyint={gop_frames}:scenecut=0:log-level=error"),
        ],
        "libvpx-vp9" => [
            "-deadline",
            "good",
            "-cpu-used",
            "5",
            "-row-mt",
            "1",
            "-keyint_min",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([gop_frames.to_string()])
        .collect(),
        "libsvtav1" => vec![
            "-preset".into(),
            "10".into(),
            "-svtav1-params".into(),
            "scd=0".into(),
        ],
        "libaom-av1" => ["-cpu-used", "8", "-row-mt", "1", "-usage", "realtime"]
            .map(String::from)
            .to_vec(),
        "libvvenc" => ["-preset", "faster"].map(String::from).to_vec(),
        e if e.ends_with("_nvenc") => ["-preset", "p4", "-forced-idr", "1"]
            .map(String::from)
            .to_vec(),
        e if e.ends_with("_qsv") => ["-preset", "veryfast"].map(String::from).to_vec(),
        _ => vec![],
    };
    a.extend(more);
    a
}

/// The audio encoder options (`bitrate_k` 0: the codec's default, for FLAC).
pub fn audio_encoder_args(encoder: &str, bitrate_k: u32) -> Vec<String> {
    let mut a = vec!["-c:a".to_string(), encoder.to_string()];
    if bitrate_k > 0 && encoder != "flac" {
        a.extend(["-b:a".to_string(), format!("{bitrate_k}k")]);
    }
    if encoder == "libopus" || encoder == "opus" {
        a.extend(["-ar".to_string(), "48000".to_string()]);
    }
    if encoder == "vorbis" || encoder == "libvorbis" || encoder == "flac" {
        // Vorbis and FLAC in fMP4 are marked experimental in ffmpeg 5.
        a.extend(["-strict".to_string(), "-2".to_string()]);
    }
    a
}

/// HLS muxer options for one playlist at `dir/playlist.m3u8`.
pub fn hls_args(dir: &str, segment_s: u32, fmp4: bool) -> Vec<String> {
    let (kind, ext) = if fmp4 {
        ("fmp4", "m4s")
    } else {
        ("mpegts", "ts")
    };
    let mut a: Vec<String> = [
        "-f",
        "hls",
        "-hls_time",
        &segment_s.to_string(),
        "-hls_playlist_type",
        "vod",
        "-hls_flags",
        "independent_segments",
        "-hls_segment_type",
        kind,
    ]
    .map(String::from)
    .to_vec();
    if fmp4 {
        a.extend(["-hls_fmp4_init_filename".into(), "init.mp4".into()]);
    }
    a.extend([
        "-hls_segment_filename".into(),
        format!("{dir}/seg_%05d.{ext}"),
        format!("{dir}/playlist.m3u8"),
    ]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn names(rungs: &[PlannedRung]) -> Vec<String> {
        rungs
            .iter()
            .map(|r| format!("{}:{}x{}:{}", r.name, r.width, r.height, r.codec))
            .collect()
    }

    #[test]
    fn capped_at_the_source_never_upscaled() {
        let c = Config::defaults().media;
        let p = plan(&c, (1920, 1080), Codec::H264, Codec::H265);
        assert_eq!(
            names(&p),
            [
                "360p:640x360:h264",
                "480p:854x480:h264",
                "720p:1280x720:h264",
                "1080p:1920x1080:h264"
            ]
        );
        let p = plan(&c, (7680, 4320), Codec::H264, Codec::H265);
        assert_eq!(p.len(), 7);
        assert_eq!(
            names(&p)[4..],
            [
                "1440p:2560x1440:h265",
                "2160p:3840x2160:h265",
                "4320p:7680x4320:h265"
            ]
        );
        // Between rungs: the top rung is below the source.
        assert_eq!(plan(&c, (1600, 900), Codec::H264, Codec::H265).len(), 3);
    }

    #[test]
    fn portrait_odd_and_tiny_sources() {
        let c = Config::defaults().media;
        let p = plan(&c, (1080, 1920), Codec::Vp9, Codec::H265);
        assert_eq!(names(&p)[2], "720p:720x1280:vp9");
        let p = plan(&c, (641, 361), Codec::H264, Codec::H265);
        assert_eq!(names(&p), ["360p:640x360:h264"]);
        let p = plan(&c, (321, 241), Codec::H264, Codec::H265);
        assert_eq!(names(&p), ["240p:320x240:h264"]);
        assert!(p[0].bitrate_k < 365 && p[0].bitrate_k >= 64);
    }

    #[test]
    fn encoders_from_the_listing() {
        let listing = " V....D libx264              libx264 H.264\n V....D libvpx-vp9   VP9\n A..... aac   AAC\n ------\n";
        let e = Encoders::parse(listing);
        assert_eq!(e.video(Codec::H264).unwrap(), "libx264");
        let err = e.video(Codec::Vvc).unwrap_err().to_string();
        assert_eq!(
            err,
            "unsupported codec vvc: this ffmpeg encodes h264 (libx264), vp9 (libvpx-vp9)"
        );
        assert_eq!(e.audio("aac").unwrap(), "aac");
        assert!(e.audio("opus").is_err());
        assert_eq!(Hw::Nvenc.encoder(Codec::H265).unwrap(), "hevc_nvenc");
    }
}
