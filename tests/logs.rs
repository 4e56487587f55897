//! The logs of the real `cra serve` on a pipe: plain text without colour codes by default, one
//! JSON object per line with `--log-format json`.
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

/// The first lines `cra serve` writes to stderr, up to the HTTP port's "listening" line.
fn startup_lines(extra: &[&str]) -> Vec<String> {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cra"))
        .args(extra)
        .args([
            "serve",
            "--audit",
            "off",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--model")
        .arg(&model)
        .env_remove("CRA_LOG_FORMAT")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("cra serve starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        let done = line.contains("HTTP listening");
        lines.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines.iter().any(|l| l.contains("HTTP listening")),
        "cra serve never said it listens: {lines:?}"
    );
    lines
}

#[test]
fn text_logs_on_a_pipe_carry_no_colour_codes() {
    let lines = startup_lines(&[]);
    for l in &lines {
        assert!(!l.contains('\u{1b}'), "an escape code in {l:?}");
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let lines = startup_lines(&["--log-format", "json"]);
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
    }
}
