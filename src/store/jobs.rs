//! Job records: one row per work event (`media.uploaded`, `notification.requested`,
//! ...), written at each state change.
//!
//! ```text
//! queued ──► running ──► done
//!   ▲           │  └───► failed        (final: not retryable, or out of deliveries)
//!   │           ▼
//!   └────── retrying                   (a retryable failure; the bus delivers it again)
//! ```
//!
//! With the embedded bus a work event is recorded `queued` before its publisher
//! is answered, and a node that starts finds its own unfinished records and queues
//! them again (JetStream redelivers by itself; NATS-fed records are not re-queued).

use serde_json::{Map, Value};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, StoreError, now_ms};

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Queued,
    Running,
    Retrying,
    Done,
    Failed,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Retrying,
        JobStatus::Done,
        JobStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Retrying => "retrying",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|j| j.as_str() == s)
    }

    /// No further change follows.
    pub fn is_final(self) -> bool {
        matches!(self, JobStatus::Done | JobStatus::Failed)
    }
}

/// One job as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    /// The work event's `event_id`.
    pub id: String,
    /// Its subject, e.g. `media.uploaded`.
    pub kind: String,
    /// `media_id`, `notification_id` or `request_id` of the request.
    pub subject_id: Option<String>,
    pub user_id: Option<String>,
    pub status: JobStatus,
    /// Runs started (across restarts and nodes).
    pub attempts: u32,
    /// The node that last took it, and its bus (`memory`, `nats`).
    pub node: String,
    pub bus: String,
    /// The work event as published (envelope JSON).
    pub request: String,
    /// The result event's payload (`media.ready` ...), once done.
    pub result: Option<Value>,
    pub error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
}

/// Who a job is for and what it is about, from its request payload.
fn ids(payload: &Map<String, Value>) -> (Option<String>, Option<String>) {
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let subject = ["media_id", "notification_id", "request_id"]
        .iter()
        .find_map(|k| payload.get(*k).and_then(text));
    let user = payload.get("user_id").and_then(text);
    (subject, user)
}

/// A new job's identity: its event and where it runs.
pub struct NewJob<'a> {
    pub id: &'a str,
    pub kind: &'a str,
    pub payload: &'a Map<String, Value>,
    pub node: &'a str,
    pub bus: &'a str,
    /// The work event as published.
    pub request: &'a str,
}

const COLUMNS: &str = "id, kind, subject_id, user_id, status, attempts, node, bus, request, \
                       result, error, created_at, updated_at, started_at, finished_at";

impl Store {
    /// Record a job as `queued` (nothing if it is known already).
    pub async fn job_queued(&self, job: &NewJob<'_>) -> Result<(), StoreError> {
        let (subject_id, user_id) = ids(job.payload);
        let now = now_ms();
        sqlx::query(
            "INSERT INTO jobs (id, kind, subject_id, user_id, status, attempts, node, bus, request, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, 'queued', 0, $5, $6, $7, $8, $8) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(job.id)
        .bind(job.kind)
        .bind(subject_id)
        .bind(user_id)
        .bind(job.node)
        .bind(job.bus)
        .bind(job.request)
        .bind(now)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// Record that a run of the job starts on `job.node`.
    pub async fn job_started(&self, job: &NewJob<'_>) -> Result<(), StoreError> {
        let (subject_id, user_id) = ids(job.payload);
        let now = now_ms();
        sqlx::query(
            "INSERT INTO jobs (id, kind, subject_id, user_id, status, attempts, node, bus, request, \
             created_at, updated_at, started_at) \
             VALUES ($1, $2, $3, $4, 'running', 1, $5, $6, $7, $8, $8, $8) \
             ON CONFLICT (id) DO UPDATE SET status = 'running', attempts = jobs.attempts + 1, \
             node = excluded.node, bus = excluded.bus, updated_at = excluded.updated_at, \
             started_at = COALESCE(jobs.started_at, excluded.started_at), \
             finished_at = NULL",
        )
        .bind(job.id)
        .bind(job.kind)
        .bind(subject_id)
        .bind(user_id)
        .bind(job.node)
        .bind(job.bus)
        .bind(job.request)
        .bind(now)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// Record a job's new status, with its result or error.
    pub async fn job_status(
        &self,
        id: &str,
        status: JobStatus,
        result: Option<&Value>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let finished = status.is_final().then_some(now);
        sqlx::query(
            "UPDATE jobs SET status = $2, result = COALESCE($3, result), error = $4, \
             updated_at = $5, finished_at = $6 WHERE id = $1",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(result.map(Value::to_string))
        .bind(error)
        .bind(now)
        .bind(finished)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    pub async fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM jobs WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(record).transpose()
    }

    /// The newest job of `kind` about `subject_id` (a media's transcode).
    pub async fn job_for(
        &self,
        kind: &str,
        subject_id: &str,
    ) -> Result<Option<JobRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM jobs WHERE kind = $1 AND subject_id = $2 \
             ORDER BY created_at DESC LIMIT 1"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(kind)
            .bind(subject_id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(record).transpose()
    }

    /// A job of `kind` about `subject_id`, other than `except_id`, that is done (an
    /// earlier send of the same notification).
    pub async fn done_job_for(
        &self,
        kind: &str,
        subject_id: &str,
        except_id: &str,
    ) -> Result<Option<JobRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM jobs WHERE kind = $1 AND subject_id = $2 AND id <> $3 \
             AND status = 'done' ORDER BY updated_at DESC LIMIT 1"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(kind)
            .bind(subject_id)
            .bind(except_id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(record).transpose()
    }

    /// Jobs by status and kind (either may be `None`: any), newest change first.
    pub async fn jobs(
        &self,
        status: Option<JobStatus>,
        kind: Option<&str>,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let mut filters = Vec::new();
        if status.is_some() {
            filters.push(format!("status = ${}", filters.len() + 1));
        }
        if kind.is_some() {
            filters.push(format!("kind = ${}", filters.len() + 1));
        }
        let filter = if filters.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", filters.join(" AND "))
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM jobs {filter} ORDER BY updated_at DESC, id DESC LIMIT ${}",
            filters.len() + 1
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        if let Some(status) = status {
            query = query.bind(status.as_str());
        }
        if let Some(kind) = kind {
            query = query.bind(kind);
        }
        let rows = query.bind(limit as i64).fetch_all(self.pool()).await?;
        rows.iter().map(record).collect()
    }

    /// Jobs `node` (any node when `None`) took from `bus` and did not finish,
    /// oldest first.
    pub async fn unfinished_jobs(
        &self,
        node: Option<&str>,
        bus: &str,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM jobs WHERE bus = $1 AND ($2 = '' OR node = $2) \
             AND status IN ('queued', 'running', 'retrying') ORDER BY created_at, id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(bus)
            .bind(node.unwrap_or(""))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(record).collect()
    }

    /// Delete finished jobs that ended before `before_ms`; how many.
    pub async fn delete_finished_jobs(&self, before_ms: i64) -> Result<u64, StoreError> {
        let done =
            sqlx::query("DELETE FROM jobs WHERE status IN ('done', 'failed') AND finished_at < $1")
                .bind(before_ms)
                .execute(self.writer())
                .await?;
        Ok(done.rows_affected())
    }
}

fn record(row: &AnyRow) -> Result<JobRecord, StoreError> {
    let status: String = row.try_get(4)?;
    let attempts: i64 = row.try_get(5)?;
    let result: Option<String> = row.try_get(9)?;
    Ok(JobRecord {
        id: row.try_get(0)?,
        kind: row.try_get(1)?,
        subject_id: row.try_get(2)?,
        user_id: row.try_get(3)?,
        status: JobStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("job status {status:?}")))?,
        attempts: attempts.clamp(0, u32::MAX as i64) as u32,
        node: row.try_get(6)?,
        bus: row.try_get(7)?,
        request: row.try_get(8)?,
        result: result
            .map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("job result: {e}")))?,
        error: row.try_get(10)?,
        created_at_ms: row.try_get(11)?,
        updated_at_ms: row.try_get(12)?,
        started_at_ms: row.try_get(13)?,
        finished_at_ms: row.try_get(14)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_come_from_the_request() {
        let p = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(
            ids(&p(json!({"media_id": "m1", "user_id": 7}))),
            (Some("m1".into()), Some("7".into()))
        );
        assert_eq!(
            ids(&p(json!({"notification_id": "n", "user_id": "u"}))),
            (Some("n".into()), Some("u".into()))
        );
        assert_eq!(ids(&p(json!({}))), (None, None));
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
        }
    }
}
