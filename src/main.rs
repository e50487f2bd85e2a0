//! The `armoricore` binary: `serve` (default) and `token`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use armoricore::channels::Router;
use armoricore::config::{Config, LogFormat};
use armoricore::protocols::jwt::Claims;
use armoricore::server::{self, Node};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "armoricore",
    version,
    about = "Realtime and media backend (Phoenix Channels compatible)"
)]
struct Cli {
    /// A TOML file laid over config/default.toml.
    #[arg(long, global = true, env = "ARMORICORE_CONFIG")]
    config: Option<PathBuf>,
    /// Log format: text or json (overrides log.format).
    #[arg(long, global = true)]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (the default).
    Serve,
    /// Print a token signed with the configured HS256 secret.
    Token {
        /// User id (the `sub` claim).
        #[arg(long)]
        sub: String,
        /// Topic patterns the token may join, comma-separated (`chat:room:*`).
        #[arg(long, value_delimiter = ',')]
        channels: Option<Vec<String>>,
        /// Display name, copied into presence metas.
        #[arg(long)]
        name: Option<String>,
        /// Lifetime, e.g. `1h`, `30m`, `7d`.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// An operator's token (`armoricore_admin: true`): may join `admin:` topics
        /// (the dashboard channel).
        #[arg(long)]
        admin: bool,
    },
    /// Create or update the database schema (`database.url`) and exit; `serve`
    /// does the same on start.
    Migrate,
    /// Transcode one file as a `media.uploaded` job would, without a server:
    /// HLS ladder, MP4s, thumbnails (or audio-only renditions) into a directory.
    Transcode {
        /// A local file or an http(s):// URL.
        input: String,
        /// Output directory (created).
        #[arg(long, short)]
        output: PathBuf,
        /// `video` (the ladder) or `audio` (audio-only renditions).
        #[arg(long, default_value = "video")]
        profile: String,
        /// Video codec: h264, h265, vp9, av1, vvc (default: media.video_codec).
        #[arg(long)]
        codec: Option<String>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Join a call as a native ArcRTC client (docs/arcrtc.md): send a tone or a
    /// file, receive the others, print per-second stats per received track.
    ArcClient {
        /// The node's Phoenix socket.
        #[arg(long, default_value = "ws://127.0.0.1:4000/socket/websocket")]
        url: String,
        /// The call id (topic `signaling:call:ID`).
        #[arg(long)]
        call: String,
        /// A JWT allowed to join the call (`armoricore token`).
        #[arg(long, env = "ARMORICORE_TOKEN")]
        token: String,
        /// Send this file: Ogg Opus, or IVF (VP8, VP9, AV1); looped.
        #[arg(long, conflicts_with = "tone")]
        send: Option<PathBuf>,
        /// Send a 440 Hz Opus tone.
        #[arg(long)]
        tone: bool,
        /// Receive the others' tracks (the default when sending nothing).
        #[arg(long)]
        receive: bool,
        /// Codecs this client can receive (default: all ArcRTC codecs).
        #[arg(long, value_delimiter = ',')]
        codecs: Option<Vec<String>>,
        /// Stop after this long (e.g. `10s`); default: until the call ends or Ctrl-C.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Send media to this address instead of the node's (a relay).
        #[arg(long)]
        endpoint: Option<std::net::SocketAddr>,
        /// Print JSON lines (one per second, then a summary) instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn init_logging(config: &Config, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref()).context("invalid configuration")?;
    let format = match cli.log_format.as_deref() {
        None => config.log.format,
        Some("json") => LogFormat::Json,
        Some("text") => LogFormat::Text,
        Some(other) => anyhow::bail!("--log-format: expected text or json, got {other:?}"),
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            init_logging(&config, format);
            serve(config).await
        }
        Command::Migrate => {
            init_logging(&config, format);
            let metrics = std::sync::Arc::new(armoricore::metrics::Metrics::new());
            match server::open_store(&config, &metrics).await? {
                Some(store) => {
                    println!("database {} is up to date", store.backend().name());
                    store.close().await;
                }
                None => println!("database.url is \"off\": nothing to migrate"),
            }
            Ok(())
        }
        Command::Token {
            sub,
            channels,
            name,
            ttl,
            admin,
        } => {
            let verifier = server::verifier(&config)?;
            let claims = Claims {
                user_id: sub,
                channels,
                name,
                meta: None,
                admin,
            };
            println!("{}", verifier.mint(&claims, Some(ttl))?);
            Ok(())
        }
        Command::ArcClient {
            url,
            call,
            token,
            send,
            tone,
            receive,
            codecs,
            duration,
            endpoint,
            json,
        } => {
            use armoricore::calls::arc::client::{self, ClientConfig, Source};
            let mut c = ClientConfig::new(&url, &call, &token);
            c.send = match (send, tone) {
                (Some(path), _) => Some(Source::File(path)),
                (None, true) => Some(Source::Tone),
                (None, false) => None,
            };
            c.receive = receive || c.send.is_none();
            if let Some(codecs) = codecs {
                c.codecs = codecs;
            }
            c.duration = duration;
            c.endpoint = endpoint;
            let print = move |s: &client::Second| {
                if json {
                    println!("{}", serde_json::json!({"second": s}));
                    return;
                }
                let mut line = format!(
                    "{:>4}s sent {:>4} resent {:>3}",
                    s.elapsed_s, s.sent_packets, s.resent_packets
                );
                for t in &s.tracks {
                    let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
                    line.push_str(&format!(
                        " | {} {} pkts {} lost {} recovered {} jitter {:.2} ms latency p50 {} p99 {} ms",
                        t.user_id.as_deref().unwrap_or("?"),
                        t.codec.as_deref().unwrap_or("?"),
                        t.packets, t.lost, t.recovered, t.jitter_ms,
                        ms(t.latency_p50_ms), ms(t.latency_p99_ms),
                    ));
                }
                println!("{line}");
            };
            let summary = tokio::select! {
                r = client::run(c, print) => r?,
                _ = tokio::signal::ctrl_c() => return Ok(()),
            };
            if json {
                println!("{}", serde_json::json!({"summary": summary}));
            } else {
                println!(
                    "ended ({}): sent {} packets, resent {}, {} SRTP failures",
                    summary.ended,
                    summary.sent_packets,
                    summary.resent_packets,
                    summary.srtp_failures
                );
            }
            Ok(())
        }
        Command::Transcode {
            input,
            output,
            profile,
            codec,
            quiet,
        } => {
            if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
                // On stderr: stdout carries the media.ready JSON.
                let logs = tracing_subscriber::fmt()
                    .with_env_filter(filter)
                    .with_writer(std::io::stderr);
                match format {
                    LogFormat::Json => logs.json().init(),
                    LogFormat::Text => logs.init(),
                }
            }
            transcode(&config, input, output, profile, codec, quiet).await
        }
    }
}

/// `armoricore transcode`: the job's own code, writing into a directory.
async fn transcode(
    config: &Config,
    input: String,
    output: PathBuf,
    profile: String,
    codec: Option<String>,
    quiet: bool,
) -> anyhow::Result<()> {
    use armoricore::media::{Progress, Request, Transcoder, storage::Storage};
    use std::io::Write;
    let mut config = config.clone();
    let work = tempfile_dir(&output)?;
    config.media.work_dir = work.display().to_string();
    let storage = Storage::local(&output, "", 16 << 20)?;
    let transcoder = Transcoder::new(&config).await?.with_storage(storage);
    let stem = std::path::Path::new(&input)
        .file_stem()
        .map_or("media".into(), |s| s.to_string_lossy().to_string());
    let mut payload = serde_json::Map::new();
    payload.insert("media_id".into(), stem.into());
    payload.insert("user_id".into(), "cli".into());
    payload.insert("file_path".into(), input.clone().into());
    payload.insert("profile".into(), profile.into());
    let mut request = Request::from_payload(&payload)?;
    request.video_codec = codec;
    request.prefix = Some(String::new());
    let started = std::time::Instant::now();
    let mut bar = move |p: Progress| {
        if quiet {
            return;
        }
        let filled = (p.percent / 5.0) as usize;
        let eta = p.eta_s.map_or(String::new(), |e| format!(" eta {e}s"));
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r{:<12} [{:<20}] {:5.1}% {:6.1} fps {:5.2}x{eta:<12}",
            p.stage,
            "#".repeat(filled.min(20)),
            p.percent,
            p.fps,
            p.speed
        );
        let _ = err.flush();
    };
    let (_cancel, watch) = tokio::sync::watch::channel(false);
    let result = transcoder.run(&request, &mut bar, watch).await;
    let _ = std::fs::remove_dir_all(&work);
    if !quiet {
        eprintln!();
    }
    let ready = result?;
    let elapsed = started.elapsed().as_secs_f64();
    let duration = ready
        .get("duration")
        .and_then(|d| d.as_f64())
        .unwrap_or(0.0);
    println!("{}", serde_json::to_string_pretty(&ready)?);
    eprintln!(
        "done in {elapsed:.1} s: {duration:.1} s of media, {:.2}x realtime",
        duration / elapsed.max(0.001)
    );
    Ok(())
}

/// A fresh work directory beside the output.
fn tempfile_dir(output: &std::path::Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(output)
        .with_context(|| format!("cannot create {}", output.display()))?;
    let dir = output.join(format!(".work-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let (host, port) = (&config.server.host, config.server.port);
    let listener = server::bind(host, port, config.server.listen_backlog)
        .with_context(|| format!("cannot listen on {host}:{port}"))?;
    let router = Router::standard(&config);
    let mut node = Node::start(config, router, listener).await?;
    tracing::info!(addr = %node.addr(), "listening");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = node.stopped() => anyhow::bail!("supervision tree gave up (restart intensity exceeded)"),
    }
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}
