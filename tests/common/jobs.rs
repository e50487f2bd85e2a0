//! A media.uploaded handler that does what a test asks, and records each call.

use std::sync::Arc;
use std::time::Duration;

use armoricore::jobs::{Job, JobHandler, Outcome};
use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Behaviour {
    /// Returns a media.ready payload at once.
    Succeed,
    /// Never returns (a job the node dies in the middle of).
    Hang,
    /// Fails with a retryable error every time.
    FailRetry,
    /// Panics on the first delivery, succeeds on the next.
    PanicFirst,
}

/// Records `(event_id, delivered)` of every call.
#[derive(Clone)]
pub struct TestJob {
    pub behaviour: Behaviour,
    pub calls: Arc<Mutex<Vec<(String, u32)>>>,
}

impl TestJob {
    pub fn new(behaviour: Behaviour) -> TestJob {
        TestJob {
            behaviour,
            calls: Arc::default(),
        }
    }

    pub fn calls(&self) -> Vec<(String, u32)> {
        self.calls.lock().clone()
    }

    /// Wait until the handler has been called `n` times.
    pub async fn called(&self, n: usize) {
        let calls = self.calls.clone();
        super::eventually(&format!("{n} handler calls"), || {
            let calls = calls.clone();
            async move { calls.lock().len() >= n }
        })
        .await;
    }
}

/// The media.ready payload the test handler produces for a media.uploaded event.
pub fn ready_payload(uploaded: &Map<String, Value>) -> Map<String, Value> {
    let id = uploaded["media_id"].as_str().unwrap_or("?");
    let v = json!({
        "media_id": uploaded["media_id"],
        "user_id": uploaded["user_id"],
        "playback_urls": {"hls": format!("https://cdn.example/{id}/master.m3u8")},
        "thumbnail_urls": [],
        "duration": 1.5,
        "resolutions": ["360p"],
    });
    v.as_object().unwrap().clone()
}

#[async_trait]
impl JobHandler for TestJob {
    async fn run(&self, job: Job) -> Outcome {
        self.calls
            .lock()
            .push((job.event.event_id.clone(), job.delivered));
        match self.behaviour {
            Behaviour::Succeed => Outcome::Done(ready_payload(&job.event.payload)),
            Behaviour::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                unreachable!("a hanging job never ends")
            }
            Behaviour::FailRetry => Outcome::Failed {
                reason: "provider timed out".into(),
                retry: true,
            },
            Behaviour::PanicFirst if job.delivered == 1 => panic!("job blew up"),
            Behaviour::PanicFirst => Outcome::Done(ready_payload(&job.event.payload)),
        }
    }
}

/// An original-Armoricore media.uploaded event, as its PHP backend sends it.
pub fn media_uploaded(event_id: &str, media_id: &str, user_id: &str) -> Value {
    json!({
        "event_id": event_id,
        "event_type": "media.uploaded",
        "timestamp": "2025-01-15T10:30:00Z",
        "source": "php-backend",
        "payload": {
            "media_id": media_id,
            "user_id": user_id,
            "file_path": "s3://bucket/uploads/video.mp4",
            "content_type": "video/mp4",
            "file_size": 104857600
        }
    })
}
