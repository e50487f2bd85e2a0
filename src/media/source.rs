//! A job's input as a local file: a path (within `media.input_dirs` when set),
//! an `http(s)://` URL (downloaded, at most `media.download_max_mb`), or a key of
//! the object store (`s3://<bucket>/<key>` or a bare key).

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::MediaError;
use super::storage::Storage;
use crate::config::MediaConfig;

pub struct Fetcher {
    input_dirs: Vec<String>,
    max_bytes: u64,
    http: reqwest::Client,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> MediaError + '_ {
    move |e| MediaError::Io(format!("{}: {e}", path.display()))
}

impl Fetcher {
    pub fn new(media: &MediaConfig) -> Result<Fetcher, MediaError> {
        Ok(Fetcher {
            input_dirs: media.input_dirs.clone(),
            max_bytes: media.download_max_mb << 20,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(Duration::from_secs(60))
                .build()
                .map_err(|e| MediaError::Tool(format!("http client: {e}")))?,
        })
    }

    /// A local file for `file_path`: the path itself, or a download into `dir`.
    pub async fn fetch(
        &self,
        storage: &Storage,
        file_path: &str,
        dir: &Path,
    ) -> Result<PathBuf, MediaError> {
        if file_path.is_empty() {
            return Err(MediaError::Input("file_path is empty".into()));
        }
        let dest = dir.join("input");
        if file_path.starts_with("http://") || file_path.starts_with("https://") {
            self.download(file_path, &dest).await?;
            return Ok(dest);
        }
        let local = Path::new(file_path);
        if local.is_absolute() || local.exists() {
            let real = std::fs::canonicalize(local)
                .map_err(|e| MediaError::Input(format!("{file_path}: {e}")))?;
            let allowed = self.input_dirs.is_empty()
                || self
                    .input_dirs
                    .iter()
                    .any(|d| std::fs::canonicalize(d).is_ok_and(|d| real.starts_with(d)));
            if !allowed {
                return Err(MediaError::Input(format!(
                    "{file_path} is outside media.input_dirs"
                )));
            }
            return Ok(real);
        }
        // `s3://<bucket>/<key>` names a key of the configured bucket.
        let key = match file_path.strip_prefix("s3://") {
            Some(rest) => rest.split_once('/').map_or(rest, |(_, key)| key),
            None => file_path,
        };
        storage.download(key, &dest, self.max_bytes).await?;
        Ok(dest)
    }

    async fn download(&self, url: &str, dest: &Path) -> Result<(), MediaError> {
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| MediaError::Io(format!("GET {url}: {e}")))?;
        let status = resp.status();
        // 408 and 429 say "later", not "never".
        if status.is_client_error() && status != 408 && status != 429 {
            return Err(MediaError::Input(format!("GET {url}: {status}")));
        }
        if !status.is_success() {
            return Err(MediaError::Io(format!("GET {url}: {status}")));
        }
        let mut file = tokio::fs::File::create(dest).await.map_err(io(dest))?;
        let mut body = resp.bytes_stream();
        let mut total = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| MediaError::Io(format!("GET {url}: {e}")))?;
            total += chunk.len() as u64;
            if total > self.max_bytes {
                return Err(MediaError::Input(format!(
                    "{url} is larger than media.download_max_mb"
                )));
            }
            file.write_all(&chunk).await.map_err(io(dest))?;
        }
        file.flush().await.map_err(io(dest))
    }
}
