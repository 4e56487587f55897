//! The real `cra serve` with `--api-keys`: SIGHUP reloads the keys file, also when no file
//! event says it changed (here: the keys file is a symlink into a folder nobody watches), and
//! `cra keys` prints a key once and stores only its hash.
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

fn cra() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cra"))
}

/// `cra keys --api-keys FILE add CLIENT`: the key it prints.
fn add_key(file: &Path, client: &str) -> String {
    let out = cra()
        .args(["keys", "--api-keys"])
        .arg(file)
        .args(["add", client])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("cra_") && key.len() == 68, "{key}");
    let stored = std::fs::read_to_string(file).unwrap();
    assert!(!stored.contains(&key), "the key itself is never stored");
    key
}

struct Server {
    child: Child,
    http: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(keys: &Path) -> Server {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default");
    let mut child = cra()
        .args([
            "serve",
            "--audit",
            "off",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--log-format",
            "text",
        ])
        .arg("--model")
        .arg(&model)
        .arg("--api-keys")
        .arg(keys)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("cra serve starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut http = None;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        if line.contains("HTTP listening") {
            http = line
                .split("local_addr=")
                .nth(1)
                .map(|s| s.split_whitespace().next().unwrap_or(s).to_owned());
            break;
        }
    }
    let http = http.expect("cra serve said where it listens for HTTP");
    Server { child, http }
}

fn predict(server: &Server, key: &str) -> u16 {
    let body = serde_json::json!({
        "age": 45, "income": 75000, "employment_length": 10, "credit_score": 720,
        "num_credit_lines": 5, "credit_utilization": 0.3, "debt_to_income": 0.35,
        "total_debt": 25000, "savings": 15000, "loan_amount": 20000, "loan_term": 36,
        "num_late_payments": 0, "num_bankruptcies": 0, "inquiries_last_6m": 1,
        "employment_status": "employed", "home_ownership": "mortgage",
        "loan_purpose": "debt_consolidation"
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        reqwest::Client::new()
            .post(format!("http://{}/predict", server.http))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    })
}

#[test]
fn sighup_reloads_the_keys_file() {
    let dir = tempfile::tempdir().unwrap();
    let (watched, elsewhere) = (dir.path().join("watched"), dir.path().join("elsewhere"));
    std::fs::create_dir_all(&watched).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    let real = elsewhere.join("api-keys.toml");
    let first = add_key(&real, "acme");
    let link = watched.join("api-keys.toml");
    std::os::unix::fs::symlink(&real, &link).unwrap();

    let server = serve(&link);
    let deadline = Instant::now() + Duration::from_secs(30);
    while predict(&server, &first) != 200 {
        assert!(
            Instant::now() < deadline,
            "the server never scored with a valid key"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(predict(&server, "cra_not-a-key"), 401);

    // Changed where no watcher looks: still unknown after a while ...
    let second = add_key(&real, "newcomer");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(predict(&server, &second), 401, "no reload without a signal");
    // ... and known once the server gets SIGHUP.
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while predict(&server, &second) != 200 {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload the keys file within 10 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(predict(&server, &first), 200);
}

#[test]
fn keys_list_shows_fingerprints_and_revoke_marks_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    let key = add_key(&file, "acme");
    let list = cra()
        .args(["keys", "--api-keys"])
        .arg(&file)
        .arg("list")
        .output()
        .unwrap();
    let listed = String::from_utf8(list.stdout).unwrap();
    assert!(listed.starts_with("acme  (1 active key(s)"), "{listed}");
    assert!(!listed.contains(&key));
    let revoke = cra()
        .args(["keys", "--api-keys"])
        .arg(&file)
        .args(["revoke", "acme"])
        .output()
        .unwrap();
    assert!(revoke.status.success());
    let again = cra()
        .args(["keys", "--api-keys"])
        .arg(&file)
        .args(["revoke", "acme"])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no active key"));
    let bad = cra()
        .args(["serve", "--audit", "off", "--api-keys"])
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("cra keys add"),
        "a missing keys file says how to make one: {}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
