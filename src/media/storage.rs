//! Where media output goes, through `object_store`: a local directory by default
//! (served by the node at `/media/...`), or an S3-compatible server.
//!
//! Every request is retried by object_store (exponential backoff with decorrelated
//! jitter, `storage.max_retries` within `storage.retry_timeout_s`); a file whose
//! upload still fails is tried again from the start, up to [`FILE_ATTEMPTS`] times.
//! Files above `storage.multipart_threshold_mb` go up as multipart uploads.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path as Key;
use object_store::{
    Attribute, Attributes, BackoffConfig, ObjectStore, ObjectStoreExt, RetryConfig,
};
use tokio::io::AsyncWriteExt;

use super::MediaError;
use crate::config::StorageConfig;

/// Whole-file attempts on top of object_store's per-request retries.
pub const FILE_ATTEMPTS: u32 = 3;

/// An object store and how its objects are addressed from outside.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    public_base: String,
    /// The directory of a local store (served at /media).
    local_root: Option<PathBuf>,
    part_bytes: usize,
    s3: bool,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("public_base", &self.public_base)
            .field("local_root", &self.local_root)
            .finish()
    }
}

impl Storage {
    /// The store `[storage]` describes; a local directory under `data_dir` by default.
    pub fn from_config(c: &StorageConfig, data_dir: &Path) -> Result<Storage, MediaError> {
        let part_bytes = (c.multipart_threshold_mb as usize) << 20;
        if c.endpoint.is_empty() {
            let root = if c.local_dir.is_empty() {
                data_dir.join("media")
            } else {
                PathBuf::from(&c.local_dir)
            };
            return Storage::local(&root, &c.public_url, part_bytes);
        }
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(c.retry_initial_ms),
                max_backoff: Duration::from_millis(c.retry_max_ms),
                base: 2.0,
            },
            max_retries: c.max_retries,
            retry_timeout: Duration::from_secs(c.retry_timeout_s),
        };
        let store = AmazonS3Builder::new()
            .with_endpoint(&c.endpoint)
            .with_bucket_name(&c.bucket)
            .with_region(&c.region)
            .with_access_key_id(&c.access_key)
            .with_secret_access_key(&c.secret_key)
            .with_virtual_hosted_style_request(!c.path_style)
            .with_allow_http(c.endpoint.starts_with("http://"))
            .with_retry(retry)
            .build()
            .map_err(|e| MediaError::Storage(format!("object storage: {e}")))?;
        let public_base = if !c.public_url.is_empty() {
            c.public_url.trim_end_matches('/').to_string()
        } else if c.path_style {
            format!("{}/{}", c.endpoint.trim_end_matches('/'), c.bucket)
        } else {
            let (scheme, host) = c
                .endpoint
                .split_once("://")
                .unwrap_or(("https", &c.endpoint));
            format!("{scheme}://{}.{}", c.bucket, host.trim_end_matches('/'))
        };
        Ok(Storage {
            store: Arc::new(store),
            public_base,
            local_root: None,
            part_bytes,
            s3: true,
        })
    }

    /// A local directory; URLs are `public_url/<key>` (`/<key>` when empty: the
    /// node serves the directory at /media).
    pub fn local(root: &Path, public_url: &str, part_bytes: usize) -> Result<Storage, MediaError> {
        std::fs::create_dir_all(root)
            .map_err(|e| MediaError::Storage(format!("{}: {e}", root.display())))?;
        let store = LocalFileSystem::new_with_prefix(root)
            .map_err(|e| MediaError::Storage(format!("{}: {e}", root.display())))?;
        Ok(Storage {
            store: Arc::new(store),
            public_base: public_url.trim_end_matches('/').to_string(),
            local_root: Some(root.to_path_buf()),
            part_bytes,
            s3: false,
        })
    }

    /// The directory a local store keeps its objects in.
    pub fn local_root(&self) -> Option<&Path> {
        self.local_root.as_deref()
    }

    pub fn kind(&self) -> &'static str {
        if self.s3 { "s3" } else { "local" }
    }

    /// The public URL of `key`.
    pub fn url(&self, key: &str) -> String {
        format!("{}/{key}", self.public_base)
    }

    /// Upload every file under `dir` to `prefix/<relative path>`; returns keys and
    /// sizes. On a failure or a cancel, what this call uploaded is deleted again.
    pub async fn upload_dir(
        &self,
        dir: &Path,
        prefix: &str,
        cancel: &mut super::ffmpeg::Cancel,
    ) -> Result<Vec<(String, u64)>, MediaError> {
        let files = {
            let dir = dir.to_path_buf();
            tokio::task::spawn_blocking(move || {
                let mut files = Vec::new();
                collect_files(&dir, &dir, &mut files).map(|()| files)
            })
            .await
            .map_err(|e| MediaError::Io(e.to_string()))??
        };
        let mut uploads = futures_util::stream::iter(files)
            .map(|rel| async move {
                let key = super::join_key(prefix, &rel);
                let size = self.upload_file(&dir.join(&rel), &key).await?;
                Ok::<_, MediaError>((key, size))
            })
            .buffer_unordered(4);
        let mut done = Vec::new();
        let failure = loop {
            tokio::select! {
                next = uploads.next() => match next {
                    Some(Ok(uploaded)) => done.push(uploaded),
                    Some(Err(e)) => break e,
                    None => return Ok(done),
                },
                _ = super::ffmpeg::cancelled(cancel) => break MediaError::Cancelled,
            }
        };
        drop(uploads);
        self.delete(done.into_iter().map(|(key, _)| key)).await;
        Err(failure)
    }

    /// Upload one file (multipart above the threshold), retrying the whole file.
    pub async fn upload_file(&self, file: &Path, key: &str) -> Result<u64, MediaError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_upload(file, key).await {
                Ok(size) => return Ok(size),
                Err(e) if attempt < FILE_ATTEMPTS => {
                    let delay = crate::bus::exponential_backoff(
                        Duration::from_millis(250),
                        attempt,
                        Duration::from_secs(5),
                    );
                    tracing::warn!(key, attempt, error = %e, ?delay, "upload failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(MediaError::Storage(format!("upload {key}: {e}"))),
            }
        }
    }

    async fn try_upload(&self, file: &Path, key: &str) -> Result<u64, String> {
        let mut input = tokio::fs::File::open(file)
            .await
            .map_err(|e| e.to_string())?;
        let mut writer =
            BufWriter::with_capacity(self.store.clone(), Key::from(key), self.part_bytes)
                .with_max_concurrency(4);
        if self.s3 {
            let mut attributes = Attributes::new();
            attributes.insert(Attribute::ContentType, content_type(key).into());
            writer = writer.with_attributes(attributes);
        }
        let copied = tokio::io::copy(&mut input, &mut writer).await;
        let result = match copied {
            Ok(size) => writer.shutdown().await.map(|()| size),
            Err(e) => Err(e),
        };
        if result.is_err() {
            // A multipart upload left open keeps its parts (and their cost).
            let _ = writer.abort().await;
        }
        result.map_err(|e| e.to_string())
    }

    /// Fetch `key` into `dest`, refusing more than `max_bytes`.
    pub async fn download(&self, key: &str, dest: &Path, max_bytes: u64) -> Result<(), MediaError> {
        let got = self.store.get(&Key::from(key)).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => {
                MediaError::Input(format!("input not found: {key}"))
            }
            e => MediaError::Storage(format!("get {key}: {e}")),
        })?;
        if got.meta.size > max_bytes {
            return Err(MediaError::Input(format!(
                "input is {} bytes, more than media.download_max_mb",
                got.meta.size
            )));
        }
        let mut out = tokio::fs::File::create(dest)
            .await
            .map_err(|e| MediaError::Io(format!("{}: {e}", dest.display())))?;
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| MediaError::Storage(format!("get {key}: {e}")))?;
            out.write_all(&chunk)
                .await
                .map_err(|e| MediaError::Io(format!("{}: {e}", dest.display())))?;
        }
        out.flush().await.map_err(|e| MediaError::Io(e.to_string()))
    }

    /// Remove `keys` (a failed or cancelled job's partial upload).
    async fn delete(&self, keys: impl Iterator<Item = String>) {
        let keys: Vec<_> = keys.map(|k| Ok(Key::from(k))).collect();
        let mut deleted = self
            .store
            .delete_stream(futures_util::stream::iter(keys).boxed());
        while let Some(r) = deleted.next().await {
            if let Err(e) = r {
                tracing::warn!(error = %e, "cleanup of a partial upload failed");
            }
        }
    }
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), MediaError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| MediaError::Io(format!("{}: {e}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(|e| MediaError::Io(e.to_string()))?;
        let path = entry.path();
        if path.is_dir() {
            collect_files(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

/// The Content-Type of a media file by extension.
pub fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or("") {
        "m3u8" => "application/vnd.apple.mpegurl",
        "ts" => "video/mp2t",
        "m4s" => "video/iso.segment",
        "mp4" => "video/mp4",
        "m4a" => "audio/mp4",
        "mp3" => "audio/mpeg",
        "opus" => "audio/ogg; codecs=opus",
        "ogg" => "audio/ogg",
        "flac" => "audio/flac",
        "jpg" | "jpeg" => "image/jpeg",
        "vtt" => "text/vtt",
        "json" => "application/json",
        _ => "application/octet-stream",
    }
}
