//! PostgreSQL side of the decision log: connecting (and creating the database), the embedded
//! migrations, partition upkeep, and the batch write: one binary COPY of pre-encoded rows
//! straight into `decisions`, or, when some of them may be stored already, the idempotent path
//! (COPY into a temporary staging table, then `INSERT … ON CONFLICT DO NOTHING`).

use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use futures::{pin_mut, SinkExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::copy_row::column_list;
use super::row::DecisionRow;
use super::spool::Frames;
use crate::config::DatabaseUrl;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Failure modes of the database side.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL: {0}")]
    Url(String),
    #[error("cannot connect to PostgreSQL at {url}: {source}")]
    Connect {
        url: DatabaseUrl,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("timed out after {0:?} connecting to PostgreSQL")]
    ConnectTimeout(Duration),
    #[error("database {db} does not exist and could not be created (does the role have CREATEDB?): {source}")]
    CreateDatabase {
        db: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("migrating the decision log schema failed: {0}")]
    Migrate(#[from] refinery::Error),
    #[error("PostgreSQL error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("timed out after {0:?} writing to PostgreSQL")]
    Timeout(Duration),
    /// The server takes no writes (`transaction_read_only` is on: a standby during a
    /// failover, or a database set read-only).
    #[error("PostgreSQL accepts no writes (transaction_read_only is on)")]
    ReadOnly,
    /// A refused row could be kept neither in `decisions_set_aside` nor in a file.
    #[error("cannot keep a refused row aside in {path}: {source}")]
    SetAsideFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How the writer treats a failed write (see [`DbError::class`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// PostgreSQL cannot take writes now (connection lost, timeout, shutdown, read-only standby,
    /// disk full, out of memory, too many connections, serialization failure or deadlock): the
    /// same rows are retried later, with backoff; they wait in the spool meanwhile.
    Transient,
    /// PostgreSQL refuses the rows themselves (a data exception, an integrity violation, a value
    /// over a limit such as an index entry over 2,704 bytes): retrying cannot help, so the batch
    /// is split to find the refused rows, which are set aside.
    Data,
}

/// The class of a SQLSTATE. Data errors are class 22 (data exception), class 23 (integrity
/// constraint violation; a duplicate decision, 23505, never gets here: the idempotent path
/// skips it), class 54 (program limit exceeded, e.g. 54000 "index row size exceeds maximum")
/// and P0001 (raised by a trigger on a row). Everything else is transient, explicitly class 08
/// (connection), 25006 (read-only transaction), 40 (serialization failure 40001, deadlock
/// 40P01), 53 (insufficient resources: disk full 53100, out of memory 53200, too many
/// connections 53300), 57 (operator intervention: statement timeout 57014, admin shutdown
/// 57P01, cannot connect now 57P03) and 58 (system I/O errors); an error that says nothing of
/// the rows (a schema error, class 42, say) is also retried rather than taken as the rows'
/// fault, so that it stops writes visibly instead of setting every row aside.
pub fn classify_sqlstate(code: &str) -> ErrorClass {
    match code.get(..2) {
        Some("22" | "23" | "54") => ErrorClass::Data,
        _ if code == "P0001" => ErrorClass::Data,
        _ => ErrorClass::Transient,
    }
}

impl DbError {
    /// The SQLSTATE PostgreSQL answered with, if it answered.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            DbError::Postgres(e) => e.code().map(SqlState::code),
            DbError::ReadOnly => Some("25006"), // read_only_sql_transaction
            _ => None,
        }
    }

    /// Transient (retry later) or data (the rows are refused); see [`classify_sqlstate`].
    /// Errors without a SQLSTATE (connection lost, timeouts, I/O) are transient.
    pub fn class(&self) -> ErrorClass {
        match self {
            DbError::Postgres(e) => e
                .code()
                .map_or(ErrorClass::Transient, |c| classify_sqlstate(c.code())),
            _ => ErrorClass::Transient,
        }
    }

    /// A one-line description for the logs: the SQLSTATE and PostgreSQL's message, without its
    /// DETAIL, which may quote the row (applicant data).
    pub fn summary(&self) -> String {
        match self {
            DbError::Postgres(e) => match e.as_db_error() {
                Some(d) => format!("SQLSTATE {}: {}", d.code().code(), d.message()),
                None => e.to_string(),
            },
            other => other.to_string(),
        }
    }

    /// PostgreSQL's message with its detail and hint, for the `decisions_set_aside` row
    /// (which holds the applicant data anyway).
    fn full_message(&self) -> String {
        match self {
            DbError::Postgres(e) => match e.as_db_error() {
                Some(d) => {
                    let mut m = d.message().to_owned();
                    for (k, v) in [("DETAIL", d.detail()), ("HINT", d.hint())] {
                        if let Some(v) = v {
                            m.push_str(&format!("\n{k}: {v}"));
                        }
                    }
                    m
                }
                None => e.to_string(),
            },
            other => other.to_string(),
        }
    }
}

pub type Result<T, E = DbError> = std::result::Result<T, E>;

/// The database name in the URL, if any.
pub fn dbname(url: &DatabaseUrl) -> Option<String> {
    pg_config(url).ok()?.0.get_dbname().map(str::to_owned)
}

/// tokio-postgres's configuration of `url`, and the TLS connector its `sslmode` asks for
/// ([`super::pg_tls`]). Errors show the URL redacted.
fn pg_config(url: &DatabaseUrl) -> Result<(Config, MakeRustlsConnect)> {
    let bad = |e: String| DbError::Url(format!("{}: {e}", url.redacted()));
    let (plain, tls) = super::pg_tls::split_url(url.expose()).map_err(bad)?;
    let mut cfg = Config::from_str(&plain).map_err(|e| bad(e.to_string()))?;
    if plain.starts_with("postgres") {
        cfg.ssl_mode(tls.mode.for_tokio_postgres());
    }
    let connector = super::pg_tls::connector(&tls).map_err(bad)?;
    Ok((cfg, connector))
}

async fn connect_config(
    cfg: &Config,
    tls: &MakeRustlsConnect,
    url: &DatabaseUrl,
    timeout: Duration,
) -> Result<Client> {
    let fut = cfg.connect(tls.clone());
    let (client, conn) = tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| DbError::ConnectTimeout(timeout))?
        .map_err(|source| DbError::Connect {
            url: url.clone(),
            source,
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "decision log connection closed");
        }
    });
    Ok(client)
}

/// Connects to the database of `url`, creating the database first if it does not exist and
/// the role may create it.
pub async fn connect(url: &DatabaseUrl, timeout: Duration) -> Result<Client> {
    let (mut cfg, tls) = pg_config(url)?;
    cfg.application_name("cra-audit")
        .connect_timeout(timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .tcp_user_timeout(timeout.max(Duration::from_secs(10)));
    match connect_config(&cfg, &tls, url, timeout).await {
        Err(DbError::Connect { source, .. })
            if source.code() == Some(&SqlState::INVALID_CATALOG_NAME) =>
        {
            let db = cfg.get_dbname().unwrap_or("postgres").to_owned();
            create_database(&cfg, &tls, url, &db, timeout).await?;
            connect_config(&cfg, &tls, url, timeout).await
        }
        other => other,
    }
}

async fn create_database(
    cfg: &Config,
    tls: &MakeRustlsConnect,
    url: &DatabaseUrl,
    db: &str,
    timeout: Duration,
) -> Result<()> {
    let mut admin = cfg.clone();
    admin.dbname("postgres");
    let client = connect_config(&admin, tls, url, timeout).await?;
    let sql = format!("CREATE DATABASE \"{}\"", db.replace('"', "\"\""));
    match client.batch_execute(&sql).await {
        Ok(()) => {
            tracing::info!(database = db, "created the decision log database");
            Ok(())
        }
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) => Ok(()),
        Err(source) => Err(DbError::CreateDatabase {
            db: db.to_owned(),
            source,
        }),
    }
}

/// One applied migration, for `cra migrate`'s report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    pub version: i32,
    pub name: String,
}

/// Months of partitions created ahead of the current one.
pub const PARTITION_MONTHS_AHEAD: i32 = 2;

/// Applies the embedded migrations (serialised across processes with an advisory lock), then
/// creates the partitions ahead. Re-running is a no-op. Returns what was applied now.
pub async fn migrate(client: &mut Client) -> Result<Vec<AppliedMigration>> {
    const LOCK: &str = "SELECT pg_advisory_lock(hashtext('cra-decision-log-migrations'))";
    const UNLOCK: &str = "SELECT pg_advisory_unlock(hashtext('cra-decision-log-migrations'))";
    client.batch_execute(LOCK).await?;
    let result = embedded::migrations::runner().run_async(client).await;
    let unlock = client.batch_execute(UNLOCK).await;
    let report = result?;
    unlock?;
    ensure_partitions(client).await?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| AppliedMigration {
            version: m.version(),
            name: m.name().to_owned(),
        })
        .collect())
}

/// Creates the monthly partitions from this month to [`PARTITION_MONTHS_AHEAD`] ahead, then moves
/// every row of the DEFAULT partition into the partition of its month (migration V3).
pub async fn ensure_partitions(client: &Client) -> Result<i32> {
    let row = client
        .query_one(
            "SELECT cra_ensure_partitions($1)",
            &[&PARTITION_MONTHS_AHEAD],
        )
        .await?;
    Ok(row.get(0))
}

/// A writer connection: a client with its session-local staging table.
pub struct Writer {
    client: Client,
    copy_sql: String,
    insert_sql: String,
    direct_copy_sql: String,
}

impl Writer {
    /// Prepares a connection for batch writes (creates its temporary staging table).
    pub async fn new(client: Client) -> Result<Writer> {
        client
            .batch_execute(
                "CREATE TEMP TABLE IF NOT EXISTS cra_decisions_staging \
                 (LIKE decisions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
            )
            .await?;
        let cols = column_list();
        Ok(Writer {
            client,
            copy_sql: format!("COPY cra_decisions_staging ({cols}) FROM STDIN (FORMAT binary)"),
            direct_copy_sql: format!("COPY decisions ({cols}) FROM STDIN (FORMAT binary)"),
            insert_sql: format!(
                "INSERT INTO decisions ({cols}) SELECT {cols} FROM cra_decisions_staging \
                 ON CONFLICT DO NOTHING"
            ),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// True when the connection is gone and the writer must be replaced.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Writes records in one transaction; returns how many rows were new (the rest were
    /// already stored). Safe to repeat: a decision is never stored twice.
    pub async fn write(&mut self, records: &[DecisionRow], timeout: Duration) -> Result<u64> {
        let body = Bytes::from(Frames::of_records(records).copy_body());
        self.write_idempotent(body, timeout).await
    }

    /// Writes the rows of `frames` (see [`Frames::copy_body`]) never offered to PostgreSQL
    /// before: one binary COPY straight into `decisions` (the fast path). If any of them is
    /// already stored, they are written again through the idempotent path. Returns how many
    /// rows were new.
    pub async fn write_new(&mut self, frames: &Frames, timeout: Duration) -> Result<u64> {
        let body = Bytes::from(frames.copy_body());
        let direct = tokio::time::timeout(timeout, self.copy(&self.direct_copy_sql, body.clone()))
            .await
            .map_err(|_| DbError::Timeout(timeout))?;
        match direct {
            Err(DbError::Postgres(e)) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                self.write_idempotent(body, timeout).await
            }
            other => other,
        }
    }

    /// Fails with [`DbError::ReadOnly`] when the server takes no writes (a standby, or a
    /// database set read-only): a connection that answers is not yet one that can write.
    pub async fn check_writable(&self, timeout: Duration) -> Result<()> {
        let rows = tokio::time::timeout(
            timeout,
            self.client.simple_query("SHOW transaction_read_only"),
        )
        .await
        .map_err(|_| DbError::Timeout(timeout))??;
        let read_only = rows.iter().any(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0) == Some("on"),
            _ => false,
        });
        if read_only {
            return Err(DbError::ReadOnly);
        }
        Ok(())
    }

    /// Keeps one row PostgreSQL refused (`why`) in `decisions_set_aside`; false when it was
    /// kept there already (a replay of the same row).
    pub async fn set_aside(&self, row: &[u8], why: &DbError, timeout: Duration) -> Result<bool> {
        let decision_id = super::copy_row::decision_id_of(row);
        let sqlstate = why.sqlstate().unwrap_or("");
        let error = super::row::pg_safe(&why.full_message()).into_owned();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&decision_id, &sqlstate, &error, &row];
        let insert = self.client.execute(
            "INSERT INTO decisions_set_aside (decision_id, sqlstate, error, row_copy) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            &params,
        );
        let n = tokio::time::timeout(timeout, insert)
            .await
            .map_err(|_| DbError::Timeout(timeout))??;
        Ok(n == 1)
    }

    /// Writes the rows of `frames`, some of which may be stored already (a spool replay).
    pub async fn write_frames(&mut self, frames: &Frames, timeout: Duration) -> Result<u64> {
        self.write_idempotent(Bytes::from(frames.copy_body()), timeout)
            .await
    }

    async fn write_idempotent(&mut self, body: Bytes, timeout: Duration) -> Result<u64> {
        tokio::time::timeout(timeout, self.write_inner(body))
            .await
            .map_err(|_| DbError::Timeout(timeout))?
    }

    /// One binary COPY of a whole body (header, rows, trailer); returns the rows copied.
    async fn copy(&self, sql: &str, body: Bytes) -> Result<u64> {
        let sink = self.client.copy_in::<_, Bytes>(sql).await?;
        pin_mut!(sink);
        // `feed`, not `send`: the rows and the end of the COPY go out in one flush.
        sink.feed(body).await?;
        Ok(sink.finish().await?)
    }

    async fn write_inner(&mut self, body: Bytes) -> Result<u64> {
        let tx = self.client.transaction().await?;
        let sink = tx.copy_in::<_, Bytes>(&self.copy_sql).await?;
        pin_mut!(sink);
        sink.feed(body).await?;
        sink.finish().await?;
        let inserted = tx.execute(&self.insert_sql, &[]).await?;
        tx.commit().await?;
        Ok(inserted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_password_is_redacted() {
        let u: DatabaseUrl = "postgres://alice:s3cret@db.example:5432/cra"
            .parse()
            .unwrap();
        assert!(!format!("{u:?}").contains("s3cret"));
        assert!(!format!("{u}").contains("s3cret"));
        assert!(format!("{u}").contains("alice"));
        assert_eq!(dbname(&u).as_deref(), Some("cra"));
        let kv: DatabaseUrl = "host=localhost password=s3cret dbname=cra".parse().unwrap();
        assert!(!format!("{kv:?}").contains("s3cret"));
        // libpq also takes the password as a query parameter, in any letter case or
        // percent-encoded.
        for url in [
            "postgres://alice@db/cra?password=s3cret",
            "postgres://alice@db/cra?sslmode=require&PASSWORD=s3cret",
            "postgres://alice@db/cra?pass%77ord=s3cret",
            "postgres://alice:s3cret@db/cra?password=s3cret&sslmode=disable",
        ] {
            let u: DatabaseUrl = url.parse().unwrap();
            for shown in [format!("{u}"), format!("{u:?}"), u.redacted()] {
                assert!(!shown.contains("s3cret"), "{url} shown as {shown}");
            }
        }
    }

    #[test]
    fn sqlstates_are_sorted_into_transient_and_data_errors() {
        use ErrorClass::{Data, Transient};
        let cases = [
            // Transient: the database cannot write now.
            ("08006", Transient), // connection failure
            ("08003", Transient), // connection does not exist
            ("25006", Transient), // read-only transaction (a standby)
            ("53100", Transient), // disk full
            ("53200", Transient), // out of memory
            ("53300", Transient), // too many connections
            ("40001", Transient), // serialization failure
            ("40P01", Transient), // deadlock
            ("57014", Transient), // statement timeout / query canceled
            ("57P01", Transient), // admin shutdown
            ("57P03", Transient), // cannot connect now
            ("58030", Transient), // I/O error
            ("42P01", Transient), // undefined table: not the rows' fault
            ("XX000", Transient),
            // Data: the rows themselves are refused.
            ("22001", Data), // string data right truncation
            ("22P03", Data), // invalid binary representation
            ("22P04", Data), // bad copy file format
            ("22021", Data), // invalid byte sequence
            ("23514", Data), // check violation
            ("23502", Data), // not-null violation
            ("54000", Data), // program limit exceeded: index row size
            ("P0001", Data), // raised by a trigger
        ];
        for (code, want) in cases {
            assert_eq!(classify_sqlstate(code), want, "{code}");
        }
        assert_eq!(DbError::Timeout(Duration::from_secs(1)).class(), Transient);
        assert_eq!(
            DbError::ConnectTimeout(Duration::from_secs(1)).class(),
            Transient
        );
        assert_eq!(DbError::ReadOnly.class(), Transient);
        assert_eq!(DbError::ReadOnly.sqlstate(), Some("25006"));
    }

    #[tokio::test]
    async fn malformed_url_is_reported_redacted() {
        let u: DatabaseUrl = "postgres://alice:s3cret@host:notaport/cra".parse().unwrap();
        let err = connect(&u, Duration::from_millis(100)).await.unwrap_err();
        assert!(matches!(err, DbError::Url(_)), "{err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}
