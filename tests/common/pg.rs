//! PostgreSQL for the integration tests: a database of its own per test (dropped afterwards),
//! and a TCP proxy to PostgreSQL that a test can cut and restore. The server is
//! `postgres://postgres@127.0.0.1:5432` unless `CRA_TEST_PG` (a server URL) or `DATABASE_URL`
//! (whose database name is ignored) says otherwise.
#![allow(dead_code)] // each test binary uses a different part

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use cra::decision_log::{db, DatabaseUrl};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_postgres::error::SqlState;
use uuid::Uuid;

/// `postgres://user@host:port` of the test server.
pub fn pg_base() -> String {
    if let Ok(b) = std::env::var("CRA_TEST_PG") {
        return b.trim_end_matches('/').to_owned();
    }
    if let Ok(u) = std::env::var("DATABASE_URL") {
        if let Some((scheme, rest)) = u.split_once("://") {
            let server = rest.split('/').next().unwrap_or(rest);
            return format!("{scheme}://{server}");
        }
    }
    "postgres://postgres@127.0.0.1:5432".into()
}

/// `host:port` of the test server.
pub fn pg_hostport() -> String {
    let base = pg_base();
    let rest = base.split_once("://").map_or(base.as_str(), |(_, r)| r);
    rest.rsplit('@').next().unwrap_or(rest).to_owned()
}

/// A database of its own for one test, dropped (with its connections) when the guard goes.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    /// A new, not yet created database named `<prefix>_<uuid>`; connecting creates it.
    pub fn new(prefix: &str) -> TestDb {
        TestDb {
            name: format!("{prefix}_{}", Uuid::new_v4().simple()),
        }
    }

    /// A new database, created now.
    pub async fn create(prefix: &str) -> TestDb {
        let db = TestDb::new(prefix);
        let _ = db.client().await; // connecting creates the database
        db
    }

    pub fn url(&self) -> DatabaseUrl {
        format!("{}/{}", pg_base(), self.name).parse().unwrap()
    }

    /// The URL of this database through another address (a proxy).
    pub fn url_via(&self, addr: SocketAddr) -> DatabaseUrl {
        format!("{}/{}", pg_base(), self.name)
            .replacen(&pg_hostport(), &addr.to_string(), 1)
            .parse()
            .unwrap()
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        db::connect(&self.url(), Duration::from_secs(5))
            .await
            .expect("PostgreSQL for the tests (see CRA_TEST_PG)")
    }

    /// (rows, distinct decision ids); (0, 0) while the table does not exist (no server has
    /// migrated this database yet, so nothing can be stored). Any other query error panics: it
    /// proves nothing about what reached PostgreSQL.
    pub async fn counts(&self) -> (i64, i64) {
        let c = self.client().await;
        let row = c
            .query_one(
                "SELECT count(*), count(DISTINCT decision_id) FROM decisions",
                &[],
            )
            .await;
        unless_no_table(row, "counting the decisions").map_or((0, 0), |r| (r.get(0), r.get(1)))
    }

    /// Waits (bounded) until the table holds at least `n` rows; returns (rows, distinct ids).
    pub async fn wait_for_rows(&self, n: i64, within: Duration) -> (i64, i64) {
        let deadline = Instant::now() + within;
        loop {
            let c = self.counts().await;
            if c.0 >= n || Instant::now() > deadline {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// How many times each of `ids` is stored (none while the table does not exist; any other
    /// query error panics).
    pub async fn occurrences(&self, ids: &[Uuid]) -> HashMap<Uuid, i64> {
        let c = self.client().await;
        let rows = c
            .query(
                "SELECT decision_id, count(*) FROM decisions WHERE decision_id = ANY($1) \
                 GROUP BY decision_id",
                &[&ids],
            )
            .await;
        unless_no_table(rows, "looking the decisions up")
            .unwrap_or_default()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// Waits (bounded) until every id is stored, then asserts each is stored exactly once and
    /// that no decision is stored twice.
    pub async fn assert_each_once(&self, ids: &[Uuid], within: Duration) {
        let deadline = Instant::now() + within;
        let found = loop {
            let found = self.occurrences(ids).await;
            if found.len() == ids.len() || Instant::now() > deadline {
                break found;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let missing: Vec<_> = ids.iter().filter(|id| !found.contains_key(id)).collect();
        assert!(
            missing.is_empty(),
            "{} of {} decisions the clients received are missing, e.g. {:?}",
            missing.len(),
            ids.len(),
            &missing[..missing.len().min(3)]
        );
        assert!(
            found.values().all(|n| *n == 1),
            "a decision is stored twice"
        );
        let (rows, distinct) = self.counts().await;
        assert_eq!(rows, distinct, "no decision may be stored twice");
    }
}

/// The result of a query on `decisions`; `None` if the table does not exist (yet). Panics on
/// any other error, naming `what` was being done.
fn unless_no_table<T>(r: Result<T, tokio_postgres::Error>, what: &str) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => None,
        Err(e) => panic!("{what} in PostgreSQL failed: {e:?}"),
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Dropping needs async I/O; do it on a runtime of its own, off any test runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let url: DatabaseUrl = format!("{}/postgres", pg_base()).parse().unwrap();
                if let Ok(c) = db::connect(&url, Duration::from_secs(5)).await {
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// A TCP proxy to PostgreSQL that the test can cut (dropping every connection and refusing
/// new ones) and restore.
pub struct Proxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl Proxy {
    pub async fn start(up: bool) -> Proxy {
        let target = tokio::net::lookup_host(pg_hostport())
            .await
            .unwrap()
            .next()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(up));
        let (cut, cut_rx) = watch::channel(0u64);
        let up2 = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cut_rx = cut_rx.clone();
                cut_rx.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    // Like the PostgreSQL client itself, a transparent proxy must not add
                    // Nagle delays to small packets.
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, up, cut }
    }

    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// A URL of this database at an address where nothing listens.
pub async fn dead_url(db: &TestDb) -> DatabaseUrl {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    db.url_via(addr)
}
