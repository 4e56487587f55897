//! The decision log's connection to PostgreSQL over TLS, against a throwaway cluster of this
//! test's own (`scripts/pg.sh start`: initdb in a temporary folder, a free port) that the test
//! switches to `ssl = on` with a certificate its own CA signed (for `localhost` only), and where
//! the role `cra_tls` may log in only over TLS, with a password (scram-sha-256). Checked:
//! `sslmode` disable, require, verify-ca and verify-full as libpq means them, and that the
//! password shows in no log line and no error, whichever way the URL carries it.
mod common;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use common::certs::Ca;
use cra::decision_log::{db, DatabaseUrl, DecisionLog, DecisionLogConfig};

const ROLE: &str = "cra_tls";
/// The role's password: it must appear nowhere.
const PASSWORD: &str = "Pw-7c1e-never-logged";
const WRONG_PASSWORD: &str = "Wrong-9f2a-never-logged";

/// Everything the process logs, for the checks that the password is in none of it.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Capture(writer.clone()))
            .try_init();
        buf
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The throwaway cluster, stopped and deleted when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
    ca: PathBuf,
    other_ca: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(pg_sh())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

fn pg_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg.sh")
}

fn psql(server: &str, sql: &str) {
    let out = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(format!("{server}/postgres?sslmode=disable"))
        .args(["-c", sql])
        .output()
        .expect("psql runs (scripts/setup.sh installs postgresql-client)");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the cluster, turns TLS on with a certificate for `localhost`, and makes the role that
/// may log in only over TLS with a password.
fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    // The cluster's OS user (postgres, when the tests run as root) must reach the folder.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = Command::new(pg_sh())
        .arg("start")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/pg.sh start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let port: u16 = server.rsplit(':').next().unwrap().parse().unwrap();
    let data = dir.path().join("data");
    let ca = Ca::new("CRA test PostgreSQL CA");
    let pair = ca.server(dir.path(), "server", &["localhost"]);
    let ca_file = ca.write(dir.path(), "ca.crt");
    let other_ca = Ca::new("Another CA").write(dir.path(), "other-ca.crt");
    std::fs::copy(&pair.cert, data.join("server.crt")).unwrap();
    std::fs::copy(&pair.key, data.join("server.key")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = std::fs::metadata(&data).unwrap();
        for f in ["server.crt", "server.key", "pg_hba.conf"] {
            std::os::unix::fs::chown(data.join(f), Some(meta.uid()), Some(meta.gid())).unwrap();
        }
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }
    // The role: only over TLS, only with its password; trust for the rest, as pg.sh sets up.
    let hba = data.join("pg_hba.conf");
    let rest = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!(
            "hostssl all {ROLE} 127.0.0.1/32 scram-sha-256\n\
             hostnossl all {ROLE} 127.0.0.1/32 reject\n{rest}"
        ),
    )
    .unwrap();
    psql(&server, "ALTER SYSTEM SET ssl = on");
    psql(&server, "SELECT pg_reload_conf()");
    psql(
        &server,
        &format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'"),
    );
    psql(&server, &format!("CREATE DATABASE cra_tls OWNER {ROLE}"));
    std::thread::sleep(Duration::from_millis(300)); // the reload is asynchronous
    Cluster {
        dir,
        port,
        ca: ca_file,
        other_ca,
    }
}

impl Cluster {
    fn url(&self, host: &str, password: &str, query: &str) -> DatabaseUrl {
        format!(
            "postgres://{ROLE}:{password}@{host}:{}/cra_tls?{query}",
            self.port
        )
        .parse()
        .unwrap()
    }
}

/// Whether the session of `url` is encrypted, or the error connecting gave.
async fn encrypted(url: &DatabaseUrl) -> Result<bool, String> {
    let c = db::connect(url, Duration::from_secs(5))
        .await
        .map_err(|e| format!("{e} / {e:?}"))?;
    let row = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

fn assert_no_password(what: &str, text: &str) {
    for secret in [PASSWORD, WRONG_PASSWORD] {
        assert!(!text.contains(secret), "{what} shows a password: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_is_honoured_and_the_password_is_never_shown() {
    let logs = captured_logs();
    let c = cluster();
    let ca = c.ca.display().to_string();
    let other = c.other_ca.display().to_string();

    // disable: no TLS, so this role is turned away.
    let e = encrypted(&c.url("127.0.0.1", PASSWORD, "sslmode=disable"))
        .await
        .unwrap_err();
    assert!(e.contains("pg_hba.conf rejects"), "{e}");
    assert_no_password("a refused connection's error", &e);

    // require: encrypted, the certificate is not checked (it names localhost, not 127.0.0.1).
    assert_eq!(
        encrypted(&c.url("127.0.0.1", PASSWORD, "sslmode=require")).await,
        Ok(true)
    );
    // prefer (the default): encrypted when the server offers it.
    assert_eq!(encrypted(&c.url("127.0.0.1", PASSWORD, "")).await, Ok(true));
    // verify-full: the CA and the name must both match.
    let full = format!("sslmode=verify-full&sslrootcert={ca}");
    assert_eq!(
        encrypted(&c.url("localhost", PASSWORD, &full)).await,
        Ok(true)
    );
    let e = encrypted(&c.url("127.0.0.1", PASSWORD, &full))
        .await
        .unwrap_err();
    assert!(
        e.to_lowercase().contains("certificate"),
        "a name mismatch: {e}"
    );
    let e = encrypted(&c.url(
        "localhost",
        PASSWORD,
        &format!("sslmode=verify-full&sslrootcert={other}"),
    ))
    .await
    .unwrap_err();
    assert!(
        e.to_lowercase().contains("certificate"),
        "an unknown CA: {e}"
    );
    // verify-ca: the CA must match, the name need not.
    assert_eq!(
        encrypted(&c.url(
            "127.0.0.1",
            PASSWORD,
            &format!("sslmode=verify-ca&sslrootcert={ca}")
        ))
        .await,
        Ok(true)
    );
    // The password as a query parameter.
    let query_form: DatabaseUrl = format!(
        "postgres://{ROLE}@localhost:{}/cra_tls?password={PASSWORD}&{full}",
        c.port
    )
    .parse()
    .unwrap();
    assert_eq!(encrypted(&query_form).await, Ok(true));

    // A wrong password, both ways: the error names neither password.
    for url in [
        c.url("localhost", WRONG_PASSWORD, &full),
        format!(
            "postgres://{ROLE}@localhost:{}/cra_tls?{full}&password={WRONG_PASSWORD}",
            c.port
        )
        .parse()
        .unwrap(),
    ] {
        let e = encrypted(&url).await.unwrap_err();
        assert!(e.contains("password authentication failed"), "{e}");
        assert_no_password("a failed login's error", &e);
        assert_no_password("the URL as shown", &format!("{url} {url:?}"));
        // The decision log started on it: it logs that PostgreSQL is unreachable, and spools.
        let spool = c.dir.path().join(format!("spool-{}", uuid::Uuid::new_v4()));
        let mut cfg = DecisionLogConfig::new(url.clone(), spool);
        cfg.retry_interval = Duration::from_millis(100);
        let log = DecisionLog::start(cfg).await.expect("starts and spools");
        tokio::time::sleep(Duration::from_millis(500)).await;
        log.shutdown().await;
    }
    // And a good one: the decision log connects over verify-full and migrates.
    let spool = c.dir.path().join("spool-good");
    let mut cfg = DecisionLogConfig::new(c.url("localhost", PASSWORD, &full), spool);
    cfg.require_database = true;
    let log = DecisionLog::start(cfg)
        .await
        .expect("the decision log connects over TLS");
    assert!(log.status().database_up);
    log.shutdown().await;

    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        text.contains("PostgreSQL is unreachable"),
        "the failed starts were logged: {text}"
    );
    assert_no_password("the logs", &text);

    // The real binary: `cra migrate` with a wrong password says so, without it.
    for url in [
        c.url("localhost", WRONG_PASSWORD, &full)
            .expose()
            .to_owned(),
        format!(
            "postgres://{ROLE}@localhost:{}/cra_tls?password={WRONG_PASSWORD}&{full}",
            c.port
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_cra"))
            .args(["migrate", "--database-url", &url])
            .env("RUST_LOG", "trace")
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{all}");
        assert!(all.contains("password authentication failed"), "{all}");
        assert_no_password("cra migrate's output", &all);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_cra"))
        .args(["migrate", "--database-url"])
        .arg(c.url("localhost", PASSWORD, &full).expose())
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");
    assert_no_password("cra migrate's output", &all);
}
