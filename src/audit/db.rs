//! PostgreSQL side of the decision log: connecting (and creating the database), the embedded
//! migrations, partition upkeep, and the idempotent batch write (binary COPY into a temporary
//! staging table, then `INSERT … ON CONFLICT DO NOTHING`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use futures::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{Json, ToSql, Type};
use tokio_postgres::{Client, Config, NoTls};

use super::record::{pg_safe, DecisionRecord, Outcome};

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
}

pub type Result<T, E = DbError> = std::result::Result<T, E>;

/// A PostgreSQL URL whose password never appears in `Debug`/`Display` output.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The full URL, password included: for connecting only, never for logging.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("***"));
                u.to_string()
            }
            Ok(u) => u.to_string(),
            // Not a URL (e.g. a key=value string): say nothing that could hold a password.
            Err(_) => "<non-URL connection string>".to_owned(),
        }
    }

    /// The database name in the URL, if any.
    pub fn dbname(&self) -> Option<String> {
        self.config().ok()?.get_dbname().map(str::to_owned)
    }

    fn config(&self) -> Result<Config> {
        Config::from_str(&self.0).map_err(|e| DbError::Url(format!("{}: {e}", self.redacted())))
    }
}

/// Parsing never fails, so that clap cannot echo a bad URL (password included) in its error;
/// a malformed URL is reported, redacted, when connecting.
impl FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(DatabaseUrl(s.to_owned()))
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

async fn connect_config(cfg: &Config, url: &DatabaseUrl, timeout: Duration) -> Result<Client> {
    let fut = cfg.connect(NoTls);
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
    let mut cfg = url.config()?;
    cfg.application_name("cra-audit")
        .connect_timeout(timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .tcp_user_timeout(timeout.max(Duration::from_secs(10)));
    match connect_config(&cfg, url, timeout).await {
        Err(DbError::Connect { source, .. })
            if source.code() == Some(&SqlState::INVALID_CATALOG_NAME) =>
        {
            let db = cfg.get_dbname().unwrap_or("postgres").to_owned();
            create_database(&cfg, url, &db, timeout).await?;
            connect_config(&cfg, url, timeout).await
        }
        other => other,
    }
}

async fn create_database(
    cfg: &Config,
    url: &DatabaseUrl,
    db: &str,
    timeout: Duration,
) -> Result<()> {
    let mut admin = cfg.clone();
    admin.dbname("postgres");
    let client = connect_config(&admin, url, timeout).await?;
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

/// Creates the monthly partitions from this month to [`PARTITION_MONTHS_AHEAD`] ahead.
pub async fn ensure_partitions(client: &Client) -> Result<i32> {
    let row = client
        .query_one(
            "SELECT cra_ensure_partitions($1)",
            &[&PARTITION_MONTHS_AHEAD],
        )
        .await?;
    Ok(row.get(0))
}

/// The staging table's columns, in COPY order, with their types.
const COLUMNS: &[(&str, Type)] = &[
    ("decision_id", Type::UUID),
    ("request_id", Type::TEXT),
    ("application_id", Type::TEXT),
    ("rpc", Type::TEXT),
    ("stream_id", Type::UUID),
    ("stream_position", Type::INT8),
    ("received_at", Type::TIMESTAMPTZ),
    ("decided_at", Type::TIMESTAMPTZ),
    ("peer", Type::TEXT),
    ("client_id", Type::TEXT),
    ("model_version", Type::TEXT),
    ("model_sha256", Type::TEXT),
    ("age", Type::INT4),
    ("income", Type::FLOAT8),
    ("employment_length", Type::FLOAT8),
    ("credit_score", Type::INT4),
    ("num_credit_lines", Type::INT4),
    ("credit_utilization", Type::FLOAT8),
    ("debt_to_income", Type::FLOAT8),
    ("total_debt", Type::FLOAT8),
    ("savings", Type::FLOAT8),
    ("loan_amount", Type::FLOAT8),
    ("loan_term", Type::INT4),
    ("num_late_payments", Type::INT4),
    ("num_bankruptcies", Type::INT4),
    ("inquiries_last_6m", Type::INT4),
    ("employment_status", Type::TEXT),
    ("home_ownership", Type::TEXT),
    ("loan_purpose", Type::TEXT),
    ("monthly_payment", Type::FLOAT8),
    ("payment_to_income", Type::FLOAT8),
    ("margin", Type::FLOAT8),
    ("probability_default", Type::FLOAT8),
    ("risk_score", Type::FLOAT8),
    ("risk_level", Type::TEXT),
    ("prediction", Type::INT2),
    ("latency_us", Type::INT8),
    ("outcome", Type::TEXT),
    ("violations", Type::JSONB),
];

fn column_list() -> String {
    COLUMNS
        .iter()
        .map(|(c, _)| *c)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A writer connection: a client with its session-local staging table.
pub struct Writer {
    client: Client,
    copy_sql: String,
    insert_sql: String,
    direct_copy_sql: String,
    types: Vec<Type>,
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
            types: COLUMNS.iter().map(|(_, t)| t.clone()).collect(),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// True when the connection is gone and the writer must be replaced.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Writes a batch in one transaction; returns how many rows were new (the rest were
    /// already stored). Safe to repeat: a decision is never stored twice.
    pub async fn write(&mut self, records: &[DecisionRecord], timeout: Duration) -> Result<u64> {
        tokio::time::timeout(timeout, self.write_inner(records))
            .await
            .map_err(|_| DbError::Timeout(timeout))?
    }

    /// Writes a batch of decisions never offered to PostgreSQL before: one binary COPY
    /// straight into `decisions` (the fast path). If any of them is already stored, the batch
    /// is written again through the idempotent path. Returns how many rows were new.
    pub async fn write_new(
        &mut self,
        records: &[DecisionRecord],
        timeout: Duration,
    ) -> Result<u64> {
        let direct = tokio::time::timeout(timeout, self.copy_direct(records))
            .await
            .map_err(|_| DbError::Timeout(timeout))?;
        match direct {
            Err(DbError::Postgres(e)) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                self.write(records, timeout).await
            }
            other => other,
        }
    }

    async fn copy_direct(&mut self, records: &[DecisionRecord]) -> Result<u64> {
        let sink = self.client.copy_in(&self.direct_copy_sql).await?;
        let writer = BinaryCopyInWriter::new(sink, &self.types);
        pin_mut!(writer);
        for r in records {
            let row = Row::new(r);
            writer.as_mut().write(&row.params()).await?;
        }
        Ok(writer.finish().await?)
    }

    async fn write_inner(&mut self, records: &[DecisionRecord]) -> Result<u64> {
        let tx = self.client.transaction().await?;
        let sink = tx.copy_in(&self.copy_sql).await?;
        let writer = BinaryCopyInWriter::new(sink, &self.types);
        pin_mut!(writer);
        for r in records {
            let row = Row::new(r);
            writer.as_mut().write(&row.params()).await?;
        }
        writer.finish().await?;
        let inserted = tx.execute(&self.insert_sql, &[]).await?;
        tx.commit().await?;
        Ok(inserted)
    }
}

/// The column values of one record, borrowed where possible.
struct Row<'a> {
    r: &'a DecisionRecord,
    rpc: &'static str,
    outcome: &'static str,
    request_id: std::borrow::Cow<'a, str>,
    application_id: std::borrow::Cow<'a, str>,
    peer: Option<std::borrow::Cow<'a, str>>,
    client_id: Option<std::borrow::Cow<'a, str>>,
    employment_status: Option<std::borrow::Cow<'a, str>>,
    home_ownership: Option<std::borrow::Cow<'a, str>>,
    loan_purpose: Option<std::borrow::Cow<'a, str>>,
    monthly_payment: Option<f64>,
    payment_to_income: Option<f64>,
    margin: Option<f64>,
    probability_default: Option<f64>,
    risk_score: Option<f64>,
    risk_level: Option<&'a str>,
    prediction: Option<i16>,
    violations: Option<Json<Vec<super::record::Violation>>>,
}

impl<'a> Row<'a> {
    fn new(r: &'a DecisionRecord) -> Row<'a> {
        let opt = |s: &'a Option<String>| s.as_deref().map(pg_safe);
        let mut row = Row {
            r,
            rpc: r.rpc.as_str(),
            outcome: r.outcome.as_str(),
            request_id: pg_safe(&r.request_id),
            application_id: pg_safe(&r.application_id),
            peer: opt(&r.peer),
            client_id: opt(&r.client_id),
            employment_status: opt(&r.inputs.employment_status),
            home_ownership: opt(&r.inputs.home_ownership),
            loan_purpose: opt(&r.inputs.loan_purpose),
            monthly_payment: None,
            payment_to_income: None,
            margin: None,
            probability_default: None,
            risk_score: None,
            risk_level: None,
            prediction: None,
            violations: None,
        };
        match &r.outcome {
            Outcome::Scored(s) => {
                row.monthly_payment = Some(s.monthly_payment);
                row.payment_to_income = Some(s.payment_to_income);
                row.margin = Some(s.margin);
                row.probability_default = Some(s.probability_default);
                row.risk_score = Some(s.risk_score);
                row.risk_level = Some(&s.risk_level);
                row.prediction = Some(s.prediction);
            }
            Outcome::Invalid(v) => {
                row.violations = Some(Json(
                    v.iter()
                        .map(|x| super::record::Violation {
                            field: pg_safe(&x.field).into_owned(),
                            description: pg_safe(&x.description).into_owned(),
                        })
                        .collect(),
                ));
            }
        }
        row
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 39] {
        let r = self.r;
        let i = &r.inputs;
        [
            &r.decision_id,
            &self.request_id,
            &self.application_id,
            &self.rpc,
            &r.stream_id,
            &r.stream_position,
            &r.received_at,
            &r.decided_at,
            &self.peer,
            &self.client_id,
            &r.model_version,
            &r.model_sha256,
            &i.age,
            &i.income,
            &i.employment_length,
            &i.credit_score,
            &i.num_credit_lines,
            &i.credit_utilization,
            &i.debt_to_income,
            &i.total_debt,
            &i.savings,
            &i.loan_amount,
            &i.loan_term,
            &i.num_late_payments,
            &i.num_bankruptcies,
            &i.inquiries_last_6m,
            &self.employment_status,
            &self.home_ownership,
            &self.loan_purpose,
            &self.monthly_payment,
            &self.payment_to_income,
            &self.margin,
            &self.probability_default,
            &self.risk_score,
            &self.risk_level,
            &self.prediction,
            &r.latency_us,
            &self.outcome,
            &self.violations,
        ]
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
        assert_eq!(u.dbname().as_deref(), Some("cra"));
        let kv: DatabaseUrl = "host=localhost password=s3cret dbname=cra".parse().unwrap();
        assert!(!format!("{kv:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn malformed_url_is_reported_redacted() {
        let u: DatabaseUrl = "postgres://alice:s3cret@host:notaport/cra".parse().unwrap();
        let err = connect(&u, Duration::from_millis(100)).await.unwrap_err();
        assert!(matches!(err, DbError::Url(_)), "{err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn columns_match_params() {
        let r = crate::audit::record::tests::sample(0);
        assert_eq!(Row::new(&r).params().len(), COLUMNS.len());
    }
}
