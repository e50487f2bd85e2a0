//! The real `armoricore` binary as a child process, for tests that run it as an
//! operator does (SIGTERM, kill -9, several nodes).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use super::{PhxClient, WAIT, http};

pub const BIN: &str = env!("CARGO_BIN_EXE_armoricore");

/// The binary with a clean environment: port 0 on loopback, `data_dir`, nothing else.
pub fn armoricore(data_dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PORT", "0")
        .env("ARMORICORE_SERVER__HOST", "127.0.0.1")
        .env("ARMORICORE_SERVER__DATA_DIR", data_dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// A running `armoricore serve`.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The rest of its JSON log.
    _log: Lines<BufReader<ChildStdout>>,
}

impl Server {
    /// Run `serve --log-format json` and wait for its `listening` line.
    pub async fn start(mut cmd: Command) -> Server {
        cmd.args(["--log-format", "json", "serve"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn armoricore serve");
        let mut log = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = tokio::time::timeout(WAIT, async {
            loop {
                let line = log
                    .next_line()
                    .await
                    .unwrap()
                    .expect("serve exited before logging `listening`");
                let entry: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
                if entry["fields"]["message"] == "listening" {
                    let addr = entry["fields"]["addr"].as_str().expect("addr field");
                    return addr.parse::<SocketAddr>().unwrap();
                }
            }
        })
        .await
        .expect("`listening` logged in time");
        Server {
            child,
            addr,
            _log: log,
        }
    }

    pub fn ws_url(&self, token: &str) -> String {
        format!(
            "ws://{}/socket/websocket?vsn=2.0.0&token={token}",
            self.addr
        )
    }

    pub async fn connect(&self, token: &str) -> PhxClient {
        PhxClient::connect(&self.ws_url(token))
            .await
            .unwrap_or_else(|e| panic!("connect refused: {e}"))
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http(self.addr, "GET", path, &[], "").await
    }

    /// `kill -TERM`, as a process manager stops the node.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {pid}: {status}");
    }

    /// Wait for the process to exit, at most `within`.
    pub async fn exit(mut self, within: Duration) -> ExitStatus {
        tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("serve still running after {within:?}"))
            .unwrap()
    }
}

/// A token for `user` signed with `secret` (what nodes started with
/// `JWT_SECRET=secret` accept).
pub fn token(secret: &str, user: &str) -> String {
    let claims = armoricore::protocols::jwt::Claims {
        user_id: user.into(),
        channels: None,
        name: None,
        meta: None,
        admin: false,
    };
    armoricore::protocols::jwt::Verifier::hs256(secret.as_bytes(), Duration::from_secs(30), true)
        .mint(&claims, Some(Duration::from_secs(600)))
        .unwrap()
}
