-- The job engine's changes to apalis-postgres's table `apalis.jobs`.
--
-- apalis-postgres creates `apalis.jobs` and `apalis.workers` (its migrations run
-- first, see shared/src/db.rs). Our layer (shared/src/jobs) keeps using that
-- table and apalis's status names, and adds what apalis lacks for mail work:
--
-- * `queue`: jobs of several kinds share a queue and its concurrency limit;
--   apalis only knows `job_type`.
-- * `last_error`: the error of the latest failed attempt, kept when the job is
--   discarded (apalis keeps results only as opaque JSON).
-- * `cancelled_at`: set by cancel; a pending job never starts, a running one is
--   signalled.
-- * `started_at` is not added: `lock_at` is when the current attempt started.
-- * The idempotency index: apalis makes (job_type, idempotency_key) unique for
--   ever, so a finished job blocks its key forever and one collision fails a
--   whole batch insert. We make the key unique among live jobs only
--   (Pending/Running) and insert with ON CONFLICT DO NOTHING.
-- * The foreign key `lock_by` -> `apalis.workers` goes: its check ran on every
--   claimed row (~10 % of the claim query's time, measured with
--   pg_stat_statements), and it kept dead worker rows from being pruned. Our
--   rescue treats a `lock_by` with no live worker row as dead, so nothing
--   depends on it.
-- * Redundant indexes go: `unique_job_id` repeats the primary key, `lidx`
--   and `idx_apalis_jobs_lock_by` are served by the partial `jobs_running_by_worker`
--   (only running jobs need finding by owner), and `idx_apalis_jobs_fetch_partial`
--   serves apalis's own fetch, which our layer replaces with `jobs_fetch`.
--   Every index is written on each state change, so each one costs throughput.
-- * apalis's insert trigger notifies only jobs due at once. Our trigger
--   `jobs_notify_scheduled` also announces jobs that become pending for later
--   (scheduled inserts, retries moved forward), on channel
--   `dkl::job::scheduled` with the queue as payload, so an idle fetcher can
--   shorten its sleep to the new due time.
-- * Status values used: Pending (waiting, maybe for a retry at run_at),
--   Running, Done, Killed (discarded after the last attempt, or by a permanent
--   error, or cancelled: then cancelled_at is set).

ALTER TABLE apalis.jobs
    ADD COLUMN queue        TEXT NOT NULL DEFAULT 'default',
    ADD COLUMN last_error   TEXT,
    ADD COLUMN cancelled_at TIMESTAMPTZ;

DROP INDEX IF EXISTS apalis.idx_jobs_idempotency_key;
DROP INDEX IF EXISTS apalis.unique_job_id;
DROP INDEX IF EXISTS apalis.lidx;
DROP INDEX IF EXISTS apalis.idx_apalis_jobs_lock_by;
DROP INDEX IF EXISTS apalis.idx_apalis_jobs_fetch_partial;
CREATE UNIQUE INDEX jobs_live_dedup_key
    ON apalis.jobs (job_type, idempotency_key)
    WHERE status IN ('Pending', 'Running') AND idempotency_key IS NOT NULL;

-- What the fetch query walks: due pending jobs of one queue in priority order.
CREATE INDEX jobs_fetch
    ON apalis.jobs (queue, priority DESC, run_at, id)
    WHERE status = 'Pending';

-- The claim. A function, so its plan can be pinned to the one right for a
-- queue: walk jobs_fetch in order, lock up to p_limit rows, update each by
-- primary key. Left to itself the planner picks worse plans whenever its
-- statistics are stale (analyzed while the queue was empty, then 50,000 jobs
-- enqueued): it read every pending row through jobs_next_due and sorted them
-- for each claim of 200 (120 ms instead of ~3 ms), and, not knowing p_limit,
-- it hash-joined the update over a full table scan (28 ms). Measured with
-- EXPLAIN ANALYZE / auto_explain.
CREATE FUNCTION apalis.dkl_claim(p_queue TEXT, p_limit INT, p_worker TEXT)
RETURNS TABLE (id TEXT, job_type TEXT, job BYTEA, attempts INT, max_attempts INT, lock_at TIMESTAMPTZ)
LANGUAGE sql
SET enable_sort = off
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
    WITH next AS (
        SELECT j.id FROM apalis.jobs j
         WHERE j.queue = p_queue AND j.status = 'Pending' AND j.run_at <= now() AND j.cancelled_at IS NULL
         ORDER BY j.priority DESC, j.run_at, j.id
         LIMIT p_limit
         FOR UPDATE SKIP LOCKED
    )
    UPDATE apalis.jobs j
       SET status = 'Running', attempts = j.attempts + 1, lock_by = p_worker, lock_at = now()
      FROM next
     WHERE j.id = next.id
 RETURNING j.id, j.job_type, j.job, j.attempts, j.max_attempts, j.lock_at
$$;

-- What an idle fetcher asks: when is the next pending job of this queue due?
-- (jobs_fetch is ordered by priority first, so min(run_at) would scan it all.)
CREATE INDEX jobs_next_due
    ON apalis.jobs (queue, run_at)
    WHERE status = 'Pending';

-- What rescue walks: running jobs by owner.
CREATE INDEX jobs_running_by_worker
    ON apalis.jobs (lock_by)
    WHERE status = 'Running';

-- What pruning walks.
CREATE INDEX jobs_finished_at
    ON apalis.jobs (done_at)
    WHERE status IN ('Done', 'Killed');

ALTER TABLE apalis.jobs DROP CONSTRAINT IF EXISTS fk_worker_lock_by;

CREATE FUNCTION apalis.dkl_notify_scheduled() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('dkl::job::scheduled', NEW.queue);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

-- The WHEN clause keeps the function out of the hot path: claims and
-- completions never match it, so they pay one cheap comparison per row.
CREATE TRIGGER jobs_notify_scheduled
    AFTER INSERT OR UPDATE OF status, run_at ON apalis.jobs
    FOR EACH ROW
    WHEN (NEW.status = 'Pending' AND NEW.run_at > now())
    EXECUTE FUNCTION apalis.dkl_notify_scheduled();

-- A queue table churns: every job is updated twice and deleted once. Vacuum
-- it early so dead index entries do not slow the fetch query down.
ALTER TABLE apalis.jobs SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.05
);
