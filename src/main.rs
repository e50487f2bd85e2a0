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
        Command::Token {
            sub,
            channels,
            name,
            ttl,
        } => {
            let verifier = server::verifier(&config)?;
            let claims = Claims {
                user_id: sub,
                channels,
                name,
                meta: None,
            };
            println!("{}", verifier.mint(&claims, Some(ttl))?);
            Ok(())
        }
    }
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
