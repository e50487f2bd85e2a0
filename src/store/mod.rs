//! The node's database: chat messages and comments, topic epochs, job records.
//!
//! One `sqlx` pool over either backend, chosen by `database.url` (`DATABASE_URL`):
//! SQLite by default (a file under `data_dir`, nothing to install) or PostgreSQL.
//! Migrations are embedded (`migrations/sqlite`, `migrations/postgres`) and run on
//! start. Queries are written once for both: `$n` placeholders, times as
//! milliseconds since the Unix epoch, JSON as text.
//!
//! Messages reach the database through the [`writer::Writer`], which batches them
//! into one transaction; nothing is acknowledged to a client before its batch
//! committed.

pub mod jobs;
pub mod writer;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Row};

use crate::config::{DatabaseConfig, RetentionRule};
use crate::metrics::Metrics;

pub use jobs::{JobRecord, JobStatus};
pub use writer::Writer;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Why the database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database.url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot connect to {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database: {0}")]
    Query(#[from] sqlx::Error),
    #[error("database writer stopped")]
    WriterGone,
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

/// A message as kept: what was broadcast, under its topic and offset.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    /// The message's `id` (a UUIDv7), as in its payload.
    pub msg_id: String,
    pub topic: String,
    pub offset: u64,
    pub event: String,
    pub user_id: String,
    /// The broadcast payload (shared with the broadcast on the way in).
    pub payload: Arc<Value>,
    pub created_at_ms: i64,
}

/// What the database knows of a topic when the node first touches it.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicState {
    pub epoch: String,
    /// The highest offset ever kept (0: none).
    pub head: u64,
    /// The newest messages, oldest first.
    pub recent: Vec<StoredMessage>,
}

/// The node's database.
pub struct Store {
    pool: AnyPool,
    /// Where writes go: on SQLite a pool of one connection, so writers queue in
    /// order instead of meeting SQLITE_BUSY and sleeping in its busy handler (which
    /// backs off up to 100 ms a try); on PostgreSQL the same pool.
    writer: AnyPool,
    backend: Backend,
    pub(crate) metrics: Arc<Metrics>,
}

/// SQLite's settings on every new connection. WAL: readers never wait for the
/// writer; NORMAL: a commit survives the process dying (not the machine losing
/// power mid-checkpoint); checkpoints less often (a page written many times
/// between checkpoints is copied back once); 32 MB of page cache.
fn sqlite_pragmas(options: AnyPoolOptions) -> AnyPoolOptions {
    options.after_connect(move |conn, _| {
        Box::pin(async move {
            use sqlx::Executor;
            conn.execute("PRAGMA journal_mode = WAL").await?;
            conn.execute("PRAGMA synchronous = NORMAL").await?;
            conn.execute("PRAGMA busy_timeout = 5000").await?;
            conn.execute("PRAGMA wal_autocheckpoint = 4000").await?;
            conn.execute("PRAGMA cache_size = -32768").await?;
            Ok(())
        })
    })
}

/// The URL `database.url` means: `""` is SQLite under `data_dir`; `"off"` is none.
pub fn resolve_url(config: &DatabaseConfig, data_dir: &Path) -> Option<String> {
    let url = config.url.trim();
    match url {
        "off" => None,
        "" => Some(format!(
            "sqlite://{}",
            data_dir.join("armoricore.db").display()
        )),
        url => Some(url.to_string()),
    }
}

/// `url` with its password hidden, for messages and logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl Store {
    /// Connect to `url` (creating a SQLite file and its directory if missing) and
    /// bring its schema up to date.
    pub async fn open(
        url: &str,
        config: &DatabaseConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Store, StoreError> {
        let store = Store::connect(url, config, metrics).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connect without migrating.
    pub async fn connect(
        url: &str,
        config: &DatabaseConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let shown = redact(url);
        let (backend, url) = if let Some(path) = url.strip_prefix("sqlite://") {
            let (path, query) = path.split_once('?').unwrap_or((path, ""));
            if path.is_empty() {
                return Err(StoreError::Url {
                    url: shown,
                    reason: "no file path".into(),
                });
            }
            if let Some(dir) = Path::new(path)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Url {
                    url: shown.clone(),
                    reason: format!("cannot create {}: {e}", dir.display()),
                })?;
            }
            let query = if query.is_empty() { "mode=rwc" } else { query };
            (Backend::Sqlite, format!("sqlite://{path}?{query}"))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_string())
        } else {
            return Err(StoreError::Url {
                url: shown,
                reason: "expected sqlite://PATH or postgres://...".into(),
            });
        };
        // One connection first, for a clear reason when it fails (the pool would
        // only say it timed out).
        let timeout = Duration::from_secs(config.connect_timeout_s.max(1));
        let probe = tokio::time::timeout(
            timeout,
            <sqlx::AnyConnection as sqlx::Connection>::connect(&url),
        )
        .await
        .map_err(|_| StoreError::Connect {
            url: shown.clone(),
            source: sqlx::Error::PoolTimedOut,
        })?
        .map_err(|source| StoreError::Connect {
            url: shown.clone(),
            source,
        })?;
        let _ = sqlx::Connection::close(probe).await;
        let mut options = AnyPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            // No ping before every use (a round trip per statement): a connection
            // that died fails its statement, and the writer tries once more.
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(config.connect_timeout_s.max(1)));
        if backend == Backend::Sqlite {
            options = sqlite_pragmas(options);
        }
        let writer = if backend == Backend::Sqlite {
            Some(
                sqlite_pragmas(options.clone())
                    .max_connections(1)
                    .connect(&url)
                    .await
                    .map_err(|source| StoreError::Connect {
                        url: shown.clone(),
                        source,
                    })?,
            )
        } else {
            None
        };
        let pool = options
            .connect(&url)
            .await
            .map_err(|source| StoreError::Connect { url: shown, source })?;
        Ok(Store {
            writer: writer.unwrap_or_else(|| pool.clone()),
            pool,
            backend,
            metrics,
        })
    }

    /// Run the embedded migrations that have not run yet.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await?,
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The pool writes go through.
    pub fn writer(&self) -> &AnyPool {
        &self.writer
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Write `batch` atomically: one statement per 1,024 rows (7,168 binds, under
    /// SQLite's 32,766 and PostgreSQL's 65,535), in a transaction when there are
    /// several. One statement is atomic by itself, and saves two round trips and
    /// SQLite's statement journal.
    pub async fn insert_messages(&self, batch: &[StoredMessage]) -> Result<(), StoreError> {
        const ROWS: usize = 1024;
        if batch.len() <= ROWS {
            self.insert_rows(batch, &self.writer).await?;
            return Ok(());
        }
        let mut tx = self.writer.begin().await?;
        for chunk in batch.chunks(ROWS) {
            self.insert_rows(chunk, &mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn insert_rows<'e>(
        &self,
        rows: &[StoredMessage],
        executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    ) -> Result<(), StoreError> {
        const COLUMNS: usize = 7;
        let mut sql = String::with_capacity(96 + rows.len() * COLUMNS * 5);
        sql.push_str(
            "INSERT INTO messages (msg_id, topic, seq, event, user_id, payload, created_at) VALUES ",
        );
        for i in 0..rows.len() {
            sql.push_str(if i == 0 { "(" } else { ",(" });
            for c in 0..COLUMNS {
                if c > 0 {
                    sql.push(',');
                }
                match self.backend {
                    // SQLite looks named parameters up one by one (a linear scan
                    // each): anonymous ones bind in order at no cost.
                    Backend::Sqlite => sql.push('?'),
                    Backend::Postgres => {
                        use std::fmt::Write;
                        let _ = write!(sql, "${}", i * COLUMNS + c + 1);
                    }
                }
            }
            sql.push(')');
        }
        // A batch retried after a commit whose answer was lost adds nothing twice.
        sql.push_str(" ON CONFLICT (msg_id) DO NOTHING");
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for m in rows {
            query = query
                .bind(m.msg_id.clone())
                .bind(m.topic.clone())
                .bind(m.offset as i64)
                .bind(m.event.clone())
                .bind(m.user_id.clone())
                .bind(m.payload.to_string())
                .bind(m.created_at_ms);
        }
        query.execute(executor).await?;
        Ok(())
    }

    /// The topic's epoch (made `new_epoch` if the topic is new), head, and newest
    /// `recent` messages.
    pub async fn topic_state(
        &self,
        topic: &str,
        new_epoch: &str,
        recent: usize,
    ) -> Result<TopicState, StoreError> {
        const STATE: &str = "SELECT t.epoch, t.head, \
             (SELECT MAX(m.seq) FROM messages m WHERE m.topic = t.topic) \
             FROM topics t WHERE t.topic = $1";
        let mut row = sqlx::query(STATE)
            .bind(topic)
            .fetch_optional(&self.pool)
            .await?;
        if row.is_none() {
            // A new topic: its epoch is the first one a node wrote.
            sqlx::query(
                "INSERT INTO topics (topic, epoch, head, created_at) VALUES ($1, $2, 0, $3) \
                 ON CONFLICT (topic) DO NOTHING",
            )
            .bind(topic)
            .bind(new_epoch)
            .bind(now_ms())
            .execute(&self.writer)
            .await?;
            row = sqlx::query(STATE)
                .bind(topic)
                .fetch_optional(&self.writer)
                .await?;
        }
        let row = row.ok_or_else(|| StoreError::Corrupt(format!("topic {topic} not created")))?;
        let epoch: String = row.try_get(0)?;
        let kept: i64 = row.try_get(1)?;
        let max: Option<i64> = row.try_get(2)?;
        let recent = if recent == 0 {
            Vec::new()
        } else {
            self.messages_before(topic, None, recent).await?
        };
        Ok(TopicState {
            epoch,
            head: kept.max(max.unwrap_or(0)).max(0) as u64,
            recent,
        })
    }

    /// Up to `limit` messages of `topic` with offsets below `before` (all when
    /// `None`), the newest of them, oldest first.
    pub async fn messages_before(
        &self,
        topic: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
        let rows = sqlx::query(
            "SELECT msg_id, topic, seq, event, user_id, payload, created_at FROM messages \
             WHERE topic = $1 AND seq < $2 ORDER BY seq DESC, id DESC LIMIT $3",
        )
        .bind(topic)
        .bind(before)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut messages = rows.iter().map(message).collect::<Result<Vec<_>, _>>()?;
        messages.reverse();
        Ok(messages)
    }

    /// Delete the message `msg_id`; its topic and offset if it existed.
    pub async fn delete_message(&self, msg_id: &str) -> Result<Option<(String, u64)>, StoreError> {
        let mut tx = self.writer.begin().await?;
        let row = sqlx::query("DELETE FROM messages WHERE msg_id = $1 RETURNING topic, seq")
            .bind(msg_id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let topic: String = row.try_get(0)?;
        let seq: i64 = row.try_get(1)?;
        // The head stays past it: its offset is never given to another message.
        sqlx::query("UPDATE topics SET head = $2 WHERE topic = $1 AND head < $2")
            .bind(topic.as_str())
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some((topic, seq.max(0) as u64)))
    }

    /// Forget topics joined but never written to, created before `before_ms` (a
    /// client joining made-up room names leaves nothing behind); how many.
    pub async fn forget_empty_topics(&self, before_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM topics WHERE head = 0 AND created_at < $1 \
             AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.topic = topics.topic)",
        )
        .bind(before_ms)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }

    /// Delete what `rules` no longer keep, as of `now_ms`; how many messages went.
    ///
    /// Each topic is governed by the rule with the longest prefix matching it, so
    /// a `chat:vip:` rule overrides `chat:` for its topics only.
    pub async fn enforce_retention(
        &self,
        rules: &[RetentionRule],
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut deleted = 0;
        for rule in rules {
            // Topics under a longer matching prefix belong to that rule.
            let longer: Vec<&RetentionRule> = rules
                .iter()
                .filter(|r| {
                    r.prefix.len() > rule.prefix.len() && r.prefix.starts_with(&rule.prefix)
                })
                .collect();
            // LIKE narrows (SQLite's ignores case for ASCII); starts_with decides.
            let pattern = format!("{}%", like_escape(&rule.prefix));
            let topics =
                sqlx::query("SELECT DISTINCT topic FROM messages WHERE topic LIKE $1 ESCAPE '\\'")
                    .bind(pattern)
                    .fetch_all(&self.pool)
                    .await?;
            for row in topics {
                let topic: String = row.try_get(0)?;
                if !topic.starts_with(&rule.prefix)
                    || longer.iter().any(|r| topic.starts_with(&r.prefix))
                {
                    continue;
                }
                deleted += self.retain_topic(&topic, rule, now_ms).await?;
            }
        }
        Ok(deleted)
    }

    async fn retain_topic(
        &self,
        topic: &str,
        rule: &RetentionRule,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut tx = self.writer.begin().await?;
        // Remember the head first: offsets must not restart once the newest go.
        sqlx::query(
            "UPDATE topics SET head = (SELECT COALESCE(MAX(seq), 0) FROM messages WHERE topic = $1) \
             WHERE topic = $1 AND head < (SELECT COALESCE(MAX(seq), 0) FROM messages WHERE topic = $1)",
        )
        .bind(topic)
        .execute(&mut *tx)
        .await?;
        let mut deleted = 0;
        if let Some(days) = rule.days {
            let cutoff = now_ms - (days as i64) * 86_400_000;
            deleted += sqlx::query("DELETE FROM messages WHERE topic = $1 AND created_at < $2")
                .bind(topic)
                .bind(cutoff)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        if let Some(count) = rule.count {
            deleted += sqlx::query(
                "DELETE FROM messages WHERE topic = $1 AND seq < \
                 (SELECT seq FROM messages WHERE topic = $1 ORDER BY seq DESC LIMIT 1 OFFSET $2)",
            )
            .bind(topic)
            .bind(count.saturating_sub(1).min(i64::MAX as u64) as i64)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(deleted)
    }
}

/// `s` with LIKE's wildcards and the escape character escaped (escape `\\`).
fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn message(row: &AnyRow) -> Result<StoredMessage, StoreError> {
    let payload: String = row.try_get(5)?;
    let seq: i64 = row.try_get(2)?;
    Ok(StoredMessage {
        msg_id: row.try_get(0)?,
        topic: row.try_get(1)?,
        offset: seq.max(0) as u64,
        event: row.try_get(3)?,
        user_id: row.try_get(4)?,
        payload: Arc::new(
            serde_json::from_str(&payload)
                .map_err(|e| StoreError::Corrupt(format!("message payload: {e}")))?,
        ),
        created_at_ms: row.try_get(6)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_resolve_and_passwords_are_hidden() {
        let mut c = crate::config::Config::defaults().database;
        assert_eq!(
            resolve_url(&c, Path::new("/data")).as_deref(),
            Some("sqlite:///data/armoricore.db")
        );
        c.url = "off".into();
        assert_eq!(resolve_url(&c, Path::new("/data")), None);
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact("postgres://db/x"), "postgres://db/x");
        assert_eq!(redact("sqlite:///a/b.db"), "sqlite:///a/b.db");
    }
}
