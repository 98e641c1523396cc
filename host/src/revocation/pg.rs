//! Postgres: the source of truth for revocations, and the follower that mirrors it.
//!
//! Schema (migration 1, `portcullis db migrate`):
//! - `portcullis.revocations`: one row per `(kind, id)`, with tenant, reason, actor, created-at
//!   and an optional expiry after which the row may be pruned.
//! - `portcullis.revocation_changes`: the change log a trigger appends to on every insert,
//!   update and delete of `revocations`, numbered by `seq`.
//! - `portcullis.revocation_log_state`: one row holding the last `seq` and the log's id.
//!
//! **Why the numbering cannot skip a commit.** The trigger takes the next `seq` by updating the
//! single `revocation_log_state` row. That row lock is held until the writing transaction ends,
//! so a second writer waits for the first to commit or roll back before it takes a number: the
//! numbers are gapless (a rollback also undoes the increment) and commit in order. A follower
//! that has applied everything up to `seq = n` therefore never sees `n + 2` before `n + 1`, and
//! a missing number can only mean pruned history (the follower then takes a snapshot). A plain
//! sequence would not do: its values are handed out before commit, so `11` can commit before
//! `10` and a cursor at `11` would never look back for `10`.
//!
//! The trigger also sends `NOTIFY portcullis_revocations, '<seq>'`. The follower `LISTEN`s
//! before it reads (so nothing falls between a read and the subscription), runs a catch-up query
//! on every notification and on a heartbeat, and resumes from its cursor after reconnecting.
//! Notifications are only a doorbell: correctness comes from the catch-up query.

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_core::{RevocationKind, RevocationSet};
use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, Client};
use tokio_stream::StreamExt as _;

use super::{Change, FollowOptions, ListFilter, LiveRevocations, Op, Record, StoreError};

/// The channel the trigger notifies.
pub const CHANNEL: &str = "portcullis_revocations";

/// Migrations, applied in order, each once.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "revocations and their change log", MIGRATION_1),
    (2, "the change log and its state cannot be truncated", MIGRATION_2),
];

// A truncated change log would let followers believe they are current; `catch_up` also
// compares the log with `last_seq`, so deleting rows is caught, and this refuses the one
// statement that fires no row trigger.
const MIGRATION_2: &str = r"
CREATE OR REPLACE FUNCTION portcullis.refuse_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'portcullis.% cannot be truncated: DELETE the rows so every runtime sees it', TG_TABLE_NAME;
END
$$;
CREATE TRIGGER revocation_changes_refuse_truncate
    BEFORE TRUNCATE ON portcullis.revocation_changes
    FOR EACH STATEMENT EXECUTE FUNCTION portcullis.refuse_truncate();
CREATE TRIGGER revocation_log_state_refuse_truncate
    BEFORE TRUNCATE ON portcullis.revocation_log_state
    FOR EACH STATEMENT EXECUTE FUNCTION portcullis.refuse_truncate();
";

const MIGRATION_1: &str = r"
CREATE TABLE portcullis.revocations (
    kind          text        NOT NULL CHECK (kind IN ('jti', 'service-token', 'api-key', 'subject')),
    id            text        NOT NULL CHECK (id <> '' AND octet_length(id) <= 1024),
    issued_before timestamptz,
    tenant        text,
    reason        text        NOT NULL DEFAULT '',
    actor         text        NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    PRIMARY KEY (kind, id),
    CHECK ((kind = 'subject') = (issued_before IS NOT NULL))
);
CREATE INDEX revocations_by_tenant ON portcullis.revocations (tenant, created_at);
CREATE INDEX revocations_by_expiry ON portcullis.revocations (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE portcullis.revocation_log_state (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    log_id    text    NOT NULL DEFAULT gen_random_uuid()::text,
    last_seq  bigint  NOT NULL DEFAULT 0
);
INSERT INTO portcullis.revocation_log_state DEFAULT VALUES;

CREATE TABLE portcullis.revocation_changes (
    seq           bigint      PRIMARY KEY,
    op            text        NOT NULL CHECK (op IN ('revoke', 'unrevoke')),
    kind          text        NOT NULL,
    id            text        NOT NULL,
    issued_before timestamptz,
    changed_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX revocation_changes_by_time ON portcullis.revocation_changes (changed_at);

CREATE FUNCTION portcullis.record_revocation_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    s bigint;
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') AND (TG_OP = 'DELETE' OR (OLD.kind, OLD.id) IS DISTINCT FROM (NEW.kind, NEW.id)) THEN
        UPDATE portcullis.revocation_log_state SET last_seq = last_seq + 1 RETURNING last_seq INTO s;
        INSERT INTO portcullis.revocation_changes (seq, op, kind, id, issued_before)
            VALUES (s, 'unrevoke', OLD.kind, OLD.id, OLD.issued_before);
        PERFORM pg_notify('portcullis_revocations', s::text);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        UPDATE portcullis.revocation_log_state SET last_seq = last_seq + 1 RETURNING last_seq INTO s;
        INSERT INTO portcullis.revocation_changes (seq, op, kind, id, issued_before)
            VALUES (s, 'revoke', NEW.kind, NEW.id, NEW.issued_before);
        PERFORM pg_notify('portcullis_revocations', s::text);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER revocations_record_change
    AFTER INSERT OR UPDATE OR DELETE ON portcullis.revocations
    FOR EACH ROW EXECUTE FUNCTION portcullis.record_revocation_change();

-- TRUNCATE fires no row triggers: the followers would never hear of it.
CREATE FUNCTION portcullis.refuse_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'portcullis.revocations cannot be truncated: DELETE the rows so every runtime sees it';
END
$$;
CREATE TRIGGER revocations_refuse_truncate
    BEFORE TRUNCATE ON portcullis.revocations
    FOR EACH STATEMENT EXECUTE FUNCTION portcullis.refuse_truncate();
";

/// The newest schema version this build knows.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// How long change-log rows are kept by `prune`; followers further behind take a snapshot.
pub const CHANGE_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Rows fetched per catch-up query.
const CATCH_UP_BATCH: i64 = 10_000;

/// A Postgres database holding revocations.
#[derive(Clone)]
pub struct PgStore {
    config: Arc<tokio_postgres::Config>,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
}

/// A connection to the store, TLS or not (`sslmode`).
type PgConnection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream,
>;

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("target", &self.describe()).finish()
    }
}

fn pg_err(what: &str, e: &tokio_postgres::Error) -> StoreError {
    let detail = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => crate::error::chain(e),
    };
    StoreError::Unavailable(format!("{what}: {detail}"))
}

fn timed_out(what: &str) -> StoreError {
    StoreError::Unavailable(format!("{what}: timed out"))
}

impl PgStore {
    /// Parses a connection string (URL or key=value). The error never repeats the string: it
    /// may hold a password.
    ///
    /// TLS follows libpq's `sslmode` and `sslrootcert` (see `pg_tls`), except that every mode
    /// that uses TLS verifies the server's certificate chain.
    pub fn new(url: &str) -> Result<PgStore, StoreError> {
        let (url, tls) = super::pg_tls::take_params(url);
        let mut config: tokio_postgres::Config = url.parse().map_err(|_| {
            StoreError::Unavailable("the database URL is not a valid Postgres connection string".into())
        })?;
        let (mode, tls) = super::pg_tls::connector(&tls)?;
        config.ssl_mode(mode);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("portcullis");
        }
        config.keepalives(true).keepalives_idle(Duration::from_secs(10));
        Ok(PgStore { config: Arc::new(config), tls })
    }

    /// `user@host:port/db`, never the password.
    pub fn describe(&self) -> String {
        let host = self
            .config
            .get_hosts()
            .first()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(s) => s.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .unwrap_or_default();
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!(
            "{}@{host}:{port}/{}",
            self.config.get_user().unwrap_or_default(),
            self.config.get_dbname().unwrap_or_default()
        )
    }

    async fn connect(&self) -> Result<(Client, PgConnection), StoreError> {
        self.config.connect(self.tls.clone()).await.map_err(|e| pg_err("cannot connect to Postgres", &e))
    }

    /// A client whose connection is driven in the background.
    pub async fn client(&self) -> Result<Client, StoreError> {
        let (client, conn) = self.connect().await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "Postgres connection closed");
            }
        });
        Ok(client)
    }

    /// Applies the migrations not yet applied; returns those it applied. Safe to run
    /// concurrently and repeatedly.
    pub async fn migrate(&self) -> Result<Vec<(i32, &'static str)>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| pg_err("cannot begin", &e))?;
        // Serialises concurrent migrators (the key is arbitrary and fixed).
        tx.batch_execute(
            "SELECT pg_advisory_xact_lock(7079236105811220811);
             CREATE SCHEMA IF NOT EXISTS portcullis;
             CREATE TABLE IF NOT EXISTS portcullis.schema_migrations (
                 version integer PRIMARY KEY,
                 name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now());",
        )
        .await
        .map_err(|e| pg_err("cannot prepare migrations", &e))?;
        let done: Vec<i32> = tx
            .query("SELECT version FROM portcullis.schema_migrations", &[])
            .await
            .map_err(|e| pg_err("cannot read migrations", &e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut applied = Vec::new();
        for &(version, name, sql) in MIGRATIONS {
            if done.contains(&version) {
                continue;
            }
            tx.batch_execute(sql).await.map_err(|e| pg_err(&format!("migration {version} failed"), &e))?;
            tx.execute("INSERT INTO portcullis.schema_migrations (version, name) VALUES ($1, $2)", &[&version, &name])
                .await
                .map_err(|e| pg_err("cannot record migration", &e))?;
            applied.push((version, name));
        }
        tx.commit().await.map_err(|e| pg_err("cannot commit migrations", &e))?;
        Ok(applied)
    }

    /// The schema version in the database (0 when never migrated).
    pub async fn version(client: &Client) -> Result<i32, StoreError> {
        let exists: bool = client
            .query_one("SELECT to_regclass('portcullis.schema_migrations') IS NOT NULL", &[])
            .await
            .map_err(|e| pg_err("cannot read the schema version", &e))?
            .get(0);
        if !exists {
            return Ok(0);
        }
        let v: Option<i32> = client
            .query_one("SELECT max(version) FROM portcullis.schema_migrations", &[])
            .await
            .map_err(|e| pg_err("cannot read the schema version", &e))?
            .get(0);
        Ok(v.unwrap_or(0))
    }

    async fn ready_client(&self) -> Result<Client, StoreError> {
        let client = self.client().await?;
        check_version(&client).await?;
        Ok(client)
    }

    /// Records a revocation (see [`super::Store::revoke`]).
    pub async fn revoke(&self, r: &Record) -> Result<bool, StoreError> {
        let client = self.ready_client().await?;
        let rows = client
            .query(
                "INSERT INTO portcullis.revocations (kind, id, issued_before, tenant, reason, actor, expires_at)
                 VALUES ($1, $2, to_timestamp($3::bigint), $4, $5, $6, to_timestamp($7::bigint))
                 ON CONFLICT (kind, id) DO UPDATE
                     SET issued_before = EXCLUDED.issued_before, tenant = EXCLUDED.tenant,
                         reason = EXCLUDED.reason, actor = EXCLUDED.actor, expires_at = EXCLUDED.expires_at
                     WHERE portcullis.revocations.kind = 'subject'
                       AND portcullis.revocations.issued_before < EXCLUDED.issued_before
                 RETURNING 1",
                &[&r.kind.code(), &r.id, &r.issued_before, &r.tenant, &r.reason, &r.actor, &r.expires_at],
            )
            .await
            .map_err(|e| pg_err("cannot record the revocation", &e))?;
        Ok(!rows.is_empty())
    }

    /// Deletes a revocation.
    pub async fn unrevoke(&self, kind: RevocationKind, id: &str) -> Result<bool, StoreError> {
        let client = self.ready_client().await?;
        let n = client
            .execute("DELETE FROM portcullis.revocations WHERE kind = $1 AND id = $2", &[&kind.code(), &id])
            .await
            .map_err(|e| pg_err("cannot delete the revocation", &e))?;
        Ok(n > 0)
    }

    /// Lists revocations, newest first.
    pub async fn list(&self, f: &ListFilter) -> Result<Vec<Record>, StoreError> {
        let client = self.ready_client().await?;
        let limit = f.limit.map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let rows = client
            .query(
                "SELECT kind, id, floor(extract(epoch FROM issued_before))::bigint, tenant, reason, actor,
                        floor(extract(epoch FROM created_at))::bigint, floor(extract(epoch FROM expires_at))::bigint
                 FROM portcullis.revocations
                 WHERE ($1::text IS NULL OR kind = $1) AND ($2::text IS NULL OR tenant = $2)
                 ORDER BY created_at DESC, kind, id
                 LIMIT $3",
                &[&f.kind.map(RevocationKind::code), &f.tenant, &limit],
            )
            .await
            .map_err(|e| pg_err("cannot list revocations", &e))?;
        rows.iter()
            .map(|row| {
                let kind: String = row.get(0);
                Ok(Record {
                    kind: RevocationKind::from_code(&kind)
                        .ok_or_else(|| StoreError::Unavailable(format!("unknown kind `{kind}` in the database")))?,
                    id: row.get(1),
                    issued_before: row.get(2),
                    tenant: row.get(3),
                    reason: row.get(4),
                    actor: row.get(5),
                    created_at: row.get(6),
                    expires_at: row.get(7),
                })
            })
            .collect()
    }

    /// Deletes expired entries (each deletion reaches every follower as an `unrevoke`), and
    /// change-log rows older than [`CHANGE_RETENTION`].
    pub async fn prune(&self, now: i64) -> Result<u64, StoreError> {
        let client = self.ready_client().await?;
        let n = client
            .execute("DELETE FROM portcullis.revocations WHERE expires_at < to_timestamp($1::bigint)", &[&now])
            .await
            .map_err(|e| pg_err("cannot prune revocations", &e))?;
        let keep = i64::try_from(CHANGE_RETENTION.as_secs()).unwrap_or(i64::MAX);
        client
            .execute(
                "DELETE FROM portcullis.revocation_changes
                 WHERE changed_at < to_timestamp($1::bigint) - make_interval(secs => $2::bigint)
                   AND seq < (SELECT last_seq FROM portcullis.revocation_log_state)",
                &[&now, &keep],
            )
            .await
            .map_err(|e| pg_err("cannot prune the change log", &e))?;
        Ok(n)
    }
}

async fn check_version(client: &Client) -> Result<(), StoreError> {
    let v = PgStore::version(client).await?;
    if v < latest_version() {
        return Err(StoreError::Unavailable(format!(
            "the database schema is at version {v}, this build needs {}: run `portcullis db migrate`",
            latest_version()
        )));
    }
    Ok(())
}

/// Loads the full set and the cursor it corresponds to, in one consistent snapshot.
async fn snapshot(client: &mut Client) -> Result<(RevocationSet, String, i64), StoreError> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|e| pg_err("cannot begin the snapshot", &e))?;
    let state = tx
        .query_one("SELECT log_id, last_seq FROM portcullis.revocation_log_state", &[])
        .await
        .map_err(|e| pg_err("cannot read the log state", &e))?;
    let (log_id, cursor): (String, i64) = (state.get(0), state.get(1));
    let rows = tx
        .query_raw(
            "SELECT kind, id, coalesce(floor(extract(epoch FROM issued_before))::bigint, 0)
             FROM portcullis.revocations",
            std::iter::empty::<&str>(),
        )
        .await
        .map_err(|e| pg_err("cannot read revocations", &e))?;
    let mut rows = std::pin::pin!(rows);
    let mut set = RevocationSet::default();
    while let Some(row) = rows.next().await {
        let row = row.map_err(|e| pg_err("cannot read revocations", &e))?;
        let kind: &str = row.get(0);
        if let Some(kind) = RevocationKind::from_code(kind) {
            set.insert(kind, row.get(1), row.get(2));
        }
    }
    tx.commit().await.map_err(|e| pg_err("cannot end the snapshot", &e))?;
    Ok((set, log_id, cursor))
}

/// The log's state and the changes after `cursor` (at most one batch), read in one
/// statement so both come from the same snapshot of the database.
async fn changes_since(client: &Client, cursor: i64) -> Result<(String, i64, Vec<Change>), StoreError> {
    let rows = client
        .query(
            "SELECT s.log_id, s.last_seq, c.seq, c.op, c.kind, c.id, floor(extract(epoch FROM c.issued_before))::bigint
             FROM portcullis.revocation_log_state s
             LEFT JOIN LATERAL (
                 SELECT * FROM portcullis.revocation_changes WHERE seq > $1 ORDER BY seq LIMIT $2
             ) c ON true
             ORDER BY c.seq",
            &[&cursor, &CATCH_UP_BATCH],
        )
        .await
        .map_err(|e| pg_err("cannot read the change log", &e))?;
    let Some(first) = rows.first() else {
        return Err(StoreError::Unavailable("the revocation log state row is missing".into()));
    };
    let (log_id, last_seq): (String, i64) = (first.get(0), first.get(1));
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let Some(seq) = row.get::<_, Option<i64>>(2) else { continue };
        let kind: &str = row.get(4);
        let op: &str = row.get(3);
        out.push(Change {
            seq,
            op: if op == "unrevoke" { Op::Unrevoke } else { Op::Revoke },
            kind: RevocationKind::from_code(kind)
                .ok_or_else(|| StoreError::Unavailable(format!("unknown kind `{kind}` in the change log")))?,
            id: row.get(5),
            issued_before: row.get(6),
        });
    }
    Ok((log_id, last_seq, out))
}

async fn load_snapshot(client: &mut Client, live: &LiveRevocations) -> Result<(), StoreError> {
    let (set, log_id, cursor) = snapshot(client).await?;
    let entries = set.len();
    live.replace(set, &log_id, cursor).map_err(|e| StoreError::Unavailable(e.to_string()))?;
    tracing::info!(entries, cursor, "revocation snapshot loaded");
    Ok(())
}

/// Applies every change after the live cursor; takes a snapshot when the log has a gap, was
/// replaced, or ends before the number its state row says was last written (history deleted
/// under the follower).
async fn catch_up(client: &mut Client, live: &LiveRevocations) -> Result<(), StoreError> {
    loop {
        let Some(cursor) = live.cursor() else { return load_snapshot(client, live).await };
        let (log_id, last_seq, changes) = changes_since(client, cursor).await?;
        if log_id != live.source() {
            tracing::warn!(cursor, "the store's change log was replaced: taking a snapshot");
            return load_snapshot(client, live).await;
        }
        let reached = changes.last().map_or(cursor, |c| c.seq);
        let full = i64::try_from(changes.len()).unwrap_or(i64::MAX) >= CATCH_UP_BATCH;
        if last_seq < cursor || (!full && reached < last_seq) {
            tracing::warn!(cursor, last_seq, reached, "the change log does not match its state: taking a snapshot");
            return load_snapshot(client, live).await;
        }
        if changes.is_empty() {
            return Ok(());
        }
        if !live.apply(&changes) {
            tracing::warn!(cursor, "the change log has a gap (pruned history): taking a snapshot");
            return load_snapshot(client, live).await;
        }
        if !full {
            return Ok(());
        }
    }
}

/// Aborts the connection driver when the session ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<String>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn with_timeout<T>(
    limit: Duration,
    what: &str,
    f: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, f).await.map_err(|_| timed_out(what))?
}

/// One connection's life: subscribe, resume (or snapshot), then follow. Returns only on error.
async fn session(store: &PgStore, live: &LiveRevocations, o: FollowOptions, connected: &mut bool) -> StoreError {
    let (mut client, mut conn) = match with_timeout(o.query_timeout, "connect", store.connect()).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<i64>();
    let driver = AbortOnDrop(tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let _ = tx.send(n.payload().parse().unwrap_or(0));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return e.to_string(),
                None => return "the server closed the connection".into(),
            }
        }
    }));
    let resumed = async {
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await.map_err(|e| pg_err("cannot LISTEN", &e))?;
        check_version(&client).await?;
        let started = Instant::now();
        let log_id: String = client
            .query_one("SELECT log_id FROM portcullis.revocation_log_state", &[])
            .await
            .map_err(|e| pg_err("cannot read the log state", &e))?
            .get(0);
        if live.source() == log_id {
            catch_up(&mut client, live).await?;
        } else {
            load_snapshot(&mut client, live).await?;
        }
        live.confirm(started);
        Ok::<_, StoreError>(())
    };
    if let Err(e) = with_timeout(o.query_timeout.saturating_mul(4), "resume", resumed).await {
        return e;
    }
    *connected = true;
    let mut heartbeat = tokio::time::interval(o.poll);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            n = rx.recv() => match n {
                Some(seq) => {
                    live.announce(seq);
                    while let Ok(seq) = rx.try_recv() {
                        live.announce(seq);
                    }
                }
                None => break,
            },
            _ = heartbeat.tick() => {}
        }
        let started = Instant::now();
        if let Err(e) = with_timeout(o.query_timeout, "catch-up", catch_up(&mut client, live)).await {
            return e;
        }
        live.confirm(started);
    }
    let mut driver = driver;
    let why = (&mut driver.0).await.unwrap_or_else(|_| "the connection task ended".into());
    StoreError::Unavailable(why)
}

/// Follows the database until shutdown, reconnecting with backoff (50 ms doubling to 2 s).
pub async fn follow(store: PgStore, live: Arc<LiveRevocations>, o: FollowOptions, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut connected = false;
        let e = tokio::select! {
            e = session(&store, &live, o, &mut connected) => e,
            _ = stop.changed() => return,
        };
        live.metrics.sync_errors.inc();
        if connected {
            live.metrics.reconnects.inc();
            backoff = Duration::from_millis(50);
            tracing::warn!(error = %e, store = %store.describe(), "lost the revocation feed; reconnecting");
        } else {
            tracing::warn!(error = %e, store = %store.describe(), retry_ms = u64::try_from(backoff.as_millis()).unwrap_or(0), "cannot reach the revocation store");
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        if !connected {
            backoff = backoff.saturating_mul(2).min(Duration::from_secs(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_never_shows_the_password() {
        let s = PgStore::new("postgres://alice:hunter2@db.internal:6543/auth").unwrap();
        assert_eq!(s.describe(), "alice@db.internal:6543/auth");
        assert!(!format!("{s:?}").contains("hunter2"));
        let e = PgStore::new("postgres://alice:hunter2@db:notaport/x").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
