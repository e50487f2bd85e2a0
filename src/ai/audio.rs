//! Audio for transcription: one mono 16 kHz track in a compact codec, cut into
//! chunks under the provider's upload limit, in silences where there are any.

use std::path::{Path, PathBuf};

use super::AiError;
use crate::media::probe::probe;

/// The codecs transcription servers take (OpenAI: flac, mp3, mp4, mpeg, mpga,
/// m4a, ogg, wav, webm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// MP3 at 32 kbit/s: 4 kB a second, taken everywhere.
    Mp3,
    /// Opus in Ogg at 24 kbit/s: the smallest.
    Ogg,
    Flac,
    /// 16-bit PCM: what whisper.cpp's server takes without converting.
    Wav,
}

impl Format {
    pub fn parse(name: &str) -> Option<Format> {
        Some(match name {
            "mp3" => Format::Mp3,
            "ogg" => Format::Ogg,
            "flac" => Format::Flac,
            "wav" => Format::Wav,
            _ => return None,
        })
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Mp3 => "mp3",
            Format::Ogg => "ogg",
            Format::Flac => "flac",
            Format::Wav => "wav",
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            Format::Mp3 => "audio/mpeg",
            Format::Ogg => "audio/ogg",
            Format::Flac => "audio/flac",
            Format::Wav => "audio/wav",
        }
    }

    /// Bytes a second of audio takes, at most (FLAC: uncompressed, to be safe).
    pub fn bytes_per_s(self) -> f64 {
        match self {
            Format::Mp3 => 4_100.0,
            Format::Ogg => 3_100.0,
            Format::Flac | Format::Wav => 32_000.0,
        }
    }

    fn codec_args(self) -> &'static [&'static str] {
        match self {
            Format::Mp3 => &["-c:a", "libmp3lame", "-b:a", "32k"],
            Format::Ogg => &["-c:a", "libopus", "-b:a", "24k"],
            Format::Flac => &["-c:a", "flac"],
            Format::Wav => &["-c:a", "pcm_s16le"],
        }
    }
}

/// An ffmpeg run that dies with the node (and with the job: `kill_on_drop`).
async fn ffmpeg(ffmpeg: &str, args: &[&str]) -> Result<String, AiError> {
    let mut cmd = tokio::process::Command::new(ffmpeg);
    cmd.args(["-hide_banner", "-nostdin", "-y"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let out = cmd.output().await.map_err(|e| {
        AiError::Media(crate::media::MediaError::Tool(format!(
            "cannot run {ffmpeg}: {e}"
        )))
    })?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        let last: Vec<&str> = stderr.lines().rev().take(3).collect();
        let last: Vec<&str> = last.into_iter().rev().collect();
        if stderr.contains("matches no streams") || stderr.contains("does not contain any stream") {
            return Err(AiError::Input("the source has no audio".into()));
        }
        return Err(AiError::Input(format!(
            "ffmpeg could not read the source: {}",
            last.join(" / ")
        )));
    }
    Ok(stderr)
}

/// The first audio track of `input` as mono 16 kHz `format` at `out`; its length
/// in seconds.
pub async fn extract(
    ffmpeg_path: &str,
    ffprobe_path: &str,
    input: &Path,
    out: &Path,
    format: Format,
) -> Result<f64, AiError> {
    let (input_s, out_s) = (input.to_string_lossy(), out.to_string_lossy());
    let mut args = vec![
        "-i", &input_s, "-map", "0:a:0", "-vn", "-ac", "1", "-ar", "16000",
    ];
    args.extend(format.codec_args());
    args.push(&out_s);
    ffmpeg(ffmpeg_path, &args).await?;
    let p = probe(ffprobe_path, out, std::time::Duration::from_secs(60)).await?;
    if p.duration <= 0.0 {
        return Err(AiError::Input("the source's audio is empty".into()));
    }
    Ok(p.duration)
}

/// Silences in `audio` (below `noise_db` for at least `min_s`): (start, end) in seconds.
pub async fn silences(
    ffmpeg_path: &str,
    audio: &Path,
    noise_db: i32,
    min_s: f64,
) -> Result<Vec<(f64, f64)>, AiError> {
    let filter = format!("silencedetect=noise={noise_db}dB:d={min_s}");
    let audio_s = audio.to_string_lossy();
    let log = ffmpeg(
        ffmpeg_path,
        &["-i", &audio_s, "-af", &filter, "-f", "null", "-"],
    )
    .await?;
    Ok(parse_silences(&log))
}

/// `silence_start: 3.002` … `silence_end: 4.001 | silence_duration: 0.999` pairs;
/// a silence still running at the end of the audio ends at infinity.
pub fn parse_silences(log: &str) -> Vec<(f64, f64)> {
    let number = |line: &str, key: &str| -> Option<f64> {
        let rest = &line[line.find(key)? + key.len()..];
        rest.split_whitespace().next()?.parse().ok()
    };
    let mut out = Vec::new();
    let mut start = None;
    for line in log.lines() {
        if let Some(s) = number(line, "silence_start: ") {
            start = Some(s.max(0.0));
        } else if let Some(e) = number(line, "silence_end: ")
            && let Some(s) = start.take()
        {
            out.push((s, e));
        }
    }
    if let Some(s) = start {
        out.push((s, f64::INFINITY));
    }
    out
}

/// Chunks of at most `max_s` covering `0..duration`. Each cut goes in the middle
/// of the latest silence that ends the chunk within its last `search_s` seconds,
/// or at `max_s` when there is none.
pub fn plan(duration: f64, silences: &[(f64, f64)], max_s: f64, search_s: f64) -> Vec<(f64, f64)> {
    let max_s = max_s.max(1.0);
    let search_s = search_s.clamp(0.0, max_s / 2.0);
    let mut chunks = Vec::new();
    let mut start = 0.0;
    while duration - start > max_s {
        let limit = start + max_s;
        let cut = silences
            .iter()
            .map(|(s, e)| (s + e) / 2.0)
            .rfind(|mid| *mid > limit - search_s && *mid <= limit)
            .unwrap_or(limit);
        chunks.push((start, cut));
        start = cut;
    }
    chunks.push((start, duration));
    chunks
}

/// `audio` from `start` to `end` as its own file in `dir`.
pub async fn cut(
    ffmpeg_path: &str,
    audio: &Path,
    (start, end): (f64, f64),
    dir: &Path,
    index: usize,
    format: Format,
) -> Result<PathBuf, AiError> {
    let out = dir.join(format!("chunk-{index:04}.{}", format.extension()));
    let (ss, t) = (format!("{start:.3}"), format!("{:.3}", end - start));
    let (audio_s, out_s) = (audio.to_string_lossy(), out.to_string_lossy());
    let mut args = vec!["-ss", &ss, "-i", &audio_s, "-t", &t];
    args.extend(format.codec_args());
    args.push(&out_s);
    ffmpeg(ffmpeg_path, &args).await?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silences_are_read_from_the_filter_log() {
        let log = "[silencedetect @ 0x55d] silence_start: 2.99\n\
            size=N/A time=00:00:05.00 bitrate=N/A speed= 500x\n\
            [silencedetect @ 0x55d] silence_end: 4.01 | silence_duration: 1.02\n\
            [silencedetect @ 0x55d] silence_start: -0.0125\n\
            [silencedetect @ 0x55d] silence_end: 9 | silence_duration: 2\n\
            [silencedetect @ 0x55d] silence_start: 12.5\n";
        assert_eq!(
            parse_silences(log),
            vec![(2.99, 4.01), (0.0, 9.0), (12.5, f64::INFINITY)]
        );
    }

    #[test]
    fn chunks_are_cut_in_silences_when_they_can_be() {
        // 25 s, at most 10 s a chunk, silences around 8.5 s and 17 s.
        let cuts = plan(25.0, &[(8.0, 9.0), (16.5, 17.5), (24.0, 24.5)], 10.0, 3.0);
        assert_eq!(cuts, vec![(0.0, 8.5), (8.5, 17.0), (17.0, 25.0)]);
        // No silence in reach: cut at the limit.
        assert_eq!(
            plan(25.0, &[], 10.0, 3.0),
            vec![(0.0, 10.0), (10.0, 20.0), (20.0, 25.0)]
        );
        // A silence too early is not used (the chunk would be too short).
        assert_eq!(
            plan(15.0, &[(2.0, 3.0)], 10.0, 3.0),
            vec![(0.0, 10.0), (10.0, 15.0)]
        );
        assert_eq!(plan(4.0, &[], 10.0, 3.0), vec![(0.0, 4.0)]);
    }
}
