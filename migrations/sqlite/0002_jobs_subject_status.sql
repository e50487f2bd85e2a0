-- "An earlier done job about this subject" (a repeated notification_id) used the
-- jobs_status index and walked every done job: one index serves the whole query.
DROP INDEX jobs_subject;
CREATE INDEX jobs_subject ON jobs (kind, subject_id, status, updated_at);
