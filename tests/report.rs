//! `cra report` rendered in a real browser: the built `cra` writes the report of the committed
//! model on a small generated data set, headless Chromium loads it, and the test checks that
//! the page logs nothing to the console, that every plot and table is in the DOM, and that a
//! screenshot of it is not blank. Chromium is required: without it the test fails and says how
//! to install it (`scripts/setup.sh --test`; CI does).
use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// Every chart's `<svg id>` and every table's id.
const IDS: [&str; 15] = [
    "key-metrics",
    "roc-curve",
    "pr-curve",
    "ks-plot",
    "calibration",
    "score-distribution",
    "risk-bands",
    "confusion-matrix",
    "importance-gain",
    "importance-shap",
    "shap-summary",
    "dependence-1",
    "dependence-2",
    "dependence-3",
    "dependence-4",
];

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// The Chromium binary ($CHROMIUM, else `chromium` or `chromium-browser` on the PATH).
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "chromium is not installed, and tests/report.rs renders the model report in it: run \
         `scripts/setup.sh --test` (it installs Debian's chromium; CI does), or set CHROMIUM to \
         a Chromium or Chrome binary"
    );
}

/// What a headless Chromium run printed.
struct Run {
    stdout: String,
    stderr: String,
    seconds: f64,
}

/// Runs headless Chromium on `page` with `args` (e.g. --dump-dom), with its own profile in
/// `dir`, and fails if it does not finish within two minutes.
fn headless(dir: &Path, page: &Path, args: &[&str]) -> Run {
    let out = dir.join("chromium.out");
    let err = dir.join("chromium.err");
    let started = Instant::now();
    let browser = chromium();
    let mut child = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e}. Install Chromium with `scripts/setup.sh --test` (CI \
                 does), or point CHROMIUM at a Chromium or Chrome binary",
                browser.display()
            )
        });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!(
                "chromium did not finish within 120 s; stderr:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let run = Run {
        stdout: std::fs::read_to_string(&out).unwrap(),
        stderr: std::fs::read_to_string(&err).unwrap(),
        seconds: started.elapsed().as_secs_f64(),
    };
    assert!(
        status.success(),
        "chromium failed: {status}\n{}",
        run.stderr
    );
    run
}

/// The lines of Chromium's log that are console messages or page errors.
fn console_errors(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| {
            l.contains(":CONSOLE")
                || l.contains("Uncaught")
                || l.contains("Failed to load resource")
                || l.contains("net::ERR_")
        })
        .collect()
}

/// Writes a labelled Parquet file of `rows` generated applications.
fn dataset(dir: &Path, rows: usize) -> PathBuf {
    let data = cra_model::synthetic::generate(&cra_model::synthetic::GeneratorParams {
        rows,
        seed: 9,
        ..Default::default()
    })
    .unwrap();
    let path = dir.join("holdout.parquet");
    cra::data::parquet::write_parquet(&data, &path).unwrap();
    path
}

fn cra(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cra"))
        .args(args)
        .env_remove("CRA_MODEL")
        .output()
        .unwrap()
}

#[test]
fn the_report_renders_in_chromium_with_every_plot() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 3000);
    let page = dir.path().join("out/report.html");
    let model = repo("models/default");
    let out = cra(&[
        "report",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        page.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "cra report failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("report on 3000 rows"), "{said}");
    let html = std::fs::read_to_string(&page).unwrap();
    eprintln!("report: {} KB; {}", html.len() / 1024, said.trim());
    // Self-contained: nothing to fetch.
    for external in ["src=", "href=", "@import", "url("] {
        assert!(
            !html.contains(external),
            "the report loads something: {external}"
        );
    }

    let dom = headless(dir.path(), &page, &["--dump-dom"]);
    eprintln!(
        "chromium loaded and serialised the page in {:.2}s",
        dom.seconds
    );
    let errors = console_errors(&dom.stderr);
    assert!(errors.is_empty(), "console errors:\n{}", errors.join("\n"));
    let missing: Vec<&str> = IDS
        .iter()
        .chain(&["reason-codes"])
        .copied()
        .filter(|id| !dom.stdout.contains(&format!("id=\"{id}\"")))
        .collect();
    assert!(missing.is_empty(), "not in the rendered DOM: {missing:?}");
    let svgs = dom.stdout.matches("<svg").count();
    assert_eq!(
        svgs, 13,
        "the DOM has {svgs} <svg> elements, expected 13 charts"
    );

    let shot = dir.path().join("report.png");
    headless(
        dir.path(),
        &page,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,4000",
        ],
    );
    let (width, height, pixels) = decode(&shot);
    assert_eq!((width, height), (1280, 4000));
    let background = most_common(&pixels);
    let drawn = pixels.iter().filter(|p| **p != background).count();
    let mut colors = pixels.clone();
    colors.sort_unstable();
    colors.dedup();
    eprintln!(
        "screenshot: {:.1}% of pixels drawn, {} distinct colours",
        100.0 * drawn as f64 / pixels.len() as f64,
        colors.len()
    );
    assert!(
        drawn * 5 > pixels.len(),
        "the screenshot is mostly blank: {drawn} of {} pixels differ from the background",
        pixels.len()
    );
    assert!(
        colors.len() > 500,
        "the screenshot has only {} distinct colours",
        colors.len()
    );
    if let Some(keep) = std::env::var_os("CRA_REPORT_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
}

/// The console check can fail: a page that logs an error and misses an image is caught.
#[test]
fn console_errors_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("bad.html");
    std::fs::write(
        &page,
        "<!DOCTYPE html><html><body><img src=\"missing.png\">\
         <script>console.error('boom'); undefinedFunction();</script></body></html>",
    )
    .unwrap();
    let run = headless(dir.path(), &page, &["--dump-dom"]);
    let errors = console_errors(&run.stderr);
    assert!(
        errors.iter().any(|l| l.contains("boom")),
        "console.error not seen in:\n{}",
        run.stderr
    );
}

/// Operator mistakes get a message that says what to fix, and no panic.
#[test]
fn operator_errors_say_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).to_str().unwrap().to_string();
    let model = repo("models/default");
    let model = model.to_str().unwrap();
    std::fs::write(dir.path().join("notes.parquet"), "not parquet").unwrap();
    std::fs::write(dir.path().join("file"), "").unwrap();
    let data = dataset(dir.path(), 200);
    let data = data.to_str().unwrap();
    for (args, wanted) in [
        (
            vec!["--model", &d("nothing"), "--out", &d("r.html")],
            "no model bundle",
        ),
        (
            vec![
                "--model",
                model,
                "--data",
                &d("absent.parquet"),
                "--out",
                &d("r.html"),
            ],
            "does not exist",
        ),
        (
            vec![
                "--model",
                model,
                "--data",
                &d("notes.parquet"),
                "--out",
                &d("r.html"),
            ],
            "is not a Parquet file",
        ),
        (
            vec!["--model", model, "--data", data, "--out", &d("file/r.html")],
            "cannot write the report",
        ),
        (
            vec!["--model", model, "--data", data, "--out", &d("")],
            "is a directory",
        ),
    ] {
        let out = cra(&[&["report"], args.as_slice()].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(wanted), "{args:?}: {wanted:?} not in {err}");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
}

/// Width, height and RGBA pixels (as u32) of a PNG.
fn decode(path: &Path) -> (u32, u32, Vec<u32>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    assert_eq!(info.bit_depth, png::BitDepth::Eight, "{:?}", info.bit_depth);
    let pixels = buf[..info.buffer_size()]
        .chunks_exact(channels)
        .map(|p| {
            p.iter()
                .chain(std::iter::repeat(&255))
                .take(4)
                .fold(0u32, |acc, &b| acc << 8 | u32::from(b))
        })
        .collect();
    (info.width, info.height, pixels)
}

fn most_common(pixels: &[u32]) -> u32 {
    let mut counts = std::collections::HashMap::new();
    for p in pixels {
        *counts.entry(*p).or_insert(0usize) += 1;
    }
    counts.into_iter().max_by_key(|c| c.1).map_or(0, |c| c.0)
}
