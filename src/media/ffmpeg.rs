//! Running ffmpeg (through `ffmpeg-sidecar`): progress from `-progress pipe:1`,
//! errors and filter logs from stderr, cancellation, and no orphan process — the
//! process is killed when the run is cancelled or its future dropped (the job
//! actor was killed).

use std::io::BufRead;
use std::sync::Arc;

use ffmpeg_sidecar::command::FfmpegCommand;
use ffmpeg_sidecar::event::{FfmpegEvent, LogLevel};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use super::MediaError;

/// One `-progress` block.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Tick {
    /// Seconds of output written.
    pub out_time_s: f64,
    pub fps: f64,
    /// Times realtime.
    pub speed: f64,
}

/// What a finished run printed that matters.
#[derive(Debug, Default)]
pub struct Output {
    /// Info lines of filters we read back (blackdetect).
    pub filter_logs: Vec<String>,
}

/// Cancels runs: `true` kills the process.
pub type Cancel = watch::Receiver<bool>;

/// Kills the process when dropped before it has been reaped.
struct Reaper(Arc<Mutex<Option<ffmpeg_sidecar::child::FfmpegChild>>>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(child) = self.0.lock().as_mut() {
            let _ = child.kill();
        }
    }
}

/// Run `ffmpeg args...` to the end, calling `on_tick` with its progress.
pub async fn run(
    ffmpeg: &str,
    args: &[String],
    mut on_tick: impl FnMut(Tick),
    cancel: &mut Cancel,
) -> Result<Output, MediaError> {
    if *cancel.borrow() {
        return Err(MediaError::Cancelled);
    }
    let mut command = FfmpegCommand::new_with_path(ffmpeg);
    command
        .hide_banner()
        .args(["-progress", "pipe:1", "-nostats", "-y"])
        .args(args);
    // If the node dies (kill -9), its ffmpeg dies with it rather than run on
    // unowned while the restarted node runs the job again. (The signal follows the
    // spawning thread: here a runtime worker, which lives as long as the node.)
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(command.as_inner_mut(), || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    tracing::debug!(args = %args.join(" "), "ffmpeg");
    let mut child = command
        .spawn()
        .map_err(|e| MediaError::Tool(format!("cannot run {ffmpeg}: {e}")))?;
    let stdout = child.take_stdout();
    let events = child
        .iter()
        .map_err(|e| MediaError::Tool(format!("ffmpeg: {e}")))?;
    let shared = Arc::new(Mutex::new(Some(child)));
    let reaper = Reaper(shared.clone());

    let (tick_tx, mut ticks) = mpsc::unbounded_channel();
    if let Some(stdout) = stdout {
        std::thread::spawn(move || read_progress(stdout, tick_tx));
    }
    let mut done = tokio::task::spawn_blocking(move || {
        let mut errors = Vec::new();
        let mut output = Output::default();
        for event in events {
            match event {
                FfmpegEvent::Log(LogLevel::Error | LogLevel::Fatal, line) => errors.push(line),
                FfmpegEvent::Log(_, line) if line.contains("black_start") => {
                    output.filter_logs.push(line)
                }
                _ => {}
            }
        }
        let child = shared.lock().take();
        let status = child.map(|mut c| c.wait());
        (status, errors, output)
    });
    let (status, errors, output) = loop {
        tokio::select! {
            Some(tick) = ticks.recv() => on_tick(tick),
            r = &mut done => break r.map_err(|e| MediaError::Tool(format!("ffmpeg reader: {e}")))?,
            _ = cancelled(cancel) => {
                drop(reaper); // kills ffmpeg
                let _ = done.await;
                return Err(MediaError::Cancelled);
            }
        }
    };
    drop(reaper);
    while let Ok(tick) = ticks.try_recv() {
        on_tick(tick);
    }
    match status {
        Some(Ok(s)) if s.success() => Ok(output),
        Some(Ok(s)) if s.code().is_none() => Err(MediaError::Tool(format!(
            "ffmpeg was killed ({s}): out of memory?"
        ))),
        Some(Ok(s)) => {
            let mut why: Vec<&str> = errors.iter().map(|e| e.trim()).collect();
            why.dedup();
            let tail = why[why.len().saturating_sub(3)..].join("; ");
            if tail.contains("No space left on device") {
                return Err(MediaError::Io(tail));
            }
            Err(MediaError::Ffmpeg(if tail.is_empty() {
                format!("ffmpeg exited with {s}")
            } else {
                tail
            }))
        }
        Some(Err(e)) => Err(MediaError::Tool(format!("ffmpeg: {e}"))),
        None => Err(MediaError::Cancelled),
    }
}

/// Resolves once `cancel` says so; never when its sender is gone.
pub async fn cancelled(cancel: &mut Cancel) {
    loop {
        if *cancel.borrow_and_update() {
            return;
        }
        if cancel.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn read_progress(stdout: std::process::ChildStdout, tx: mpsc::UnboundedSender<Tick>) {
    let mut tick = Tick::default();
    for line in std::io::BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        match key {
            "out_time_us" => {
                if let Ok(us) = value.parse::<i64>() {
                    tick.out_time_s = us.max(0) as f64 / 1e6;
                }
            }
            "fps" => tick.fps = value.parse().unwrap_or(tick.fps),
            "speed" => tick.speed = value.trim_end_matches('x').parse().unwrap_or(tick.speed),
            "progress" if tx.send(tick).is_err() => break,
            _ => {}
        }
    }
}

/// `black_start:0 black_end:1.96 black_duration:1.96` → the end of black at the
/// very start of the video, if any.
pub fn leading_black_end(filter_logs: &[String]) -> Option<f64> {
    filter_logs.iter().find_map(|line| {
        let field = |name: &str| -> Option<f64> {
            let at = line.find(name)? + name.len();
            line[at..].split_whitespace().next()?.parse().ok()
        };
        (field("black_start:")? < 0.05)
            .then(|| field("black_end:"))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn black_at_start() {
        let logs = vec![
            "[blackdetect @ 0x5] black_start:0 black_end:1.96 black_duration:1.96".to_string(),
        ];
        assert_eq!(leading_black_end(&logs), Some(1.96));
        let later = vec!["[blackdetect @ 0x5] black_start:3 black_end:4 black_duration:1".into()];
        assert_eq!(leading_black_end(&later), None);
    }
}
