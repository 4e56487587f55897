//! `cra drift`: the drift of a model computed from the decision log. The scored decisions of
//! the model's version in a time range are read back from PostgreSQL (the 17 inputs as
//! received and `probability_default`), binned against the bundle's drift reference exactly as
//! the live windows bin them (the derived features recomputed by the bundle's preprocessing),
//! and their PSI printed: a table with the band of each row, or one JSON object, and
//! optionally an HTML page of the expected and actual distributions of the drifted features.
//!
//! Only decisions of the bundle's own version are compared (another version may have another
//! reference); `--model-version` names another one for a bundle of the same training data.
//! Every role counts (champion, challenger, shadow): each is the model scoring real traffic.
use std::{fmt::Write as _, path::PathBuf, time::Duration};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use cra_model::{
    drift::{Band, BinCounts, Binner, DriftPsi, NUM_TRACKED},
    Application, EmploymentStatus, HomeOwnership, LoanPurpose, ModelBundle,
};
use futures::TryStreamExt;

use crate::config::DatabaseArgs;

/// `cra drift`.
#[derive(Debug, Clone, clap::Args)]
pub struct DriftArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The model bundle whose drift reference the decisions are compared with.
    #[arg(long, env = "CRA_MODEL", default_value = "models/default")]
    pub model: PathBuf,
    /// Compare the decisions of this model version (default: the bundle's own; decisions of
    /// another version are not comparable unless it was trained on the same data).
    #[arg(long)]
    pub model_version: Option<String>,
    /// The decisions of the last DURATION (e.g. 30m, 24h); the default is 24h.
    #[arg(long, value_parser = crate::config::parse_duration, conflicts_with_all = ["from", "to"])]
    pub since: Option<Duration>,
    /// The decisions from this time on (RFC 3339, e.g. 2026-12-01T00:00:00Z), with --to.
    #[arg(long, requires = "to")]
    pub from: Option<DateTime<Utc>>,
    /// The decisions before this time (RFC 3339), with --from.
    #[arg(long, requires = "from")]
    pub to: Option<DateTime<Utc>>,
    /// Print one JSON object {"score_psi", "features", "rows", ...} instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write an HTML page with the expected and actual distributions of every column
    /// whose PSI is 0.1 or more.
    #[arg(long)]
    pub html: Option<PathBuf>,
}

/// The drift of one model version over a time range, from the decision log.
#[derive(Debug, Clone)]
pub struct LogDrift {
    pub model_version: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub counts: BinCounts,
    pub psi: DriftPsi,
}

impl LogDrift {
    /// The JSON answer: `{"score_psi", "features": {name: psi}, "rows", "model_version",
    /// "from", "to", "bands": {name: band}}` (the score's band under `"score"`).
    pub fn to_json(&self) -> serde_json::Value {
        let features: serde_json::Map<String, serde_json::Value> = self
            .psi
            .features
            .iter()
            .map(|(n, v)| (n.to_string(), (*v).into()))
            .collect();
        let bands: serde_json::Map<String, serde_json::Value> =
            std::iter::once(("score", self.psi.score_psi))
                .chain(self.psi.features.iter().copied())
                .map(|(n, v)| (n.to_string(), Band::of(v).as_str().into()))
                .collect();
        serde_json::json!({
            "score_psi": self.psi.score_psi,
            "features": features,
            "rows": self.psi.rows,
            "model_version": self.model_version,
            "from": self.from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "to": self.to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "bands": bands,
        })
    }

    /// The table: the score first, then every feature, with its PSI and band.
    pub fn table(&self) -> String {
        let mut out = format!(
            "drift of {} over {} scored decisions from {} to {}\n{:<22} {:>8}  band\n",
            self.model_version,
            self.psi.rows,
            self.from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            self.to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "column",
            "PSI"
        );
        for (name, v) in
            std::iter::once(("score", self.psi.score_psi)).chain(self.psi.features.iter().copied())
        {
            let _ = writeln!(out, "{name:<22} {v:>8.4}  {}", Band::of(v).as_str());
        }
        out
    }
}

/// The time range of the arguments: `--from`/`--to`, else the last `--since` (24h).
pub fn range(args: &DriftArgs, now: DateTime<Utc>) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
    match (args.from, args.to) {
        (Some(from), Some(to)) => {
            if from >= to {
                bail!("--from {from} is not before --to {to}");
            }
            Ok((from, to))
        }
        _ => {
            let since = args.since.unwrap_or(Duration::from_secs(24 * 3600));
            let since = chrono::Duration::from_std(since)
                .with_context(|| format!("--since {since:?} is too long"))?;
            Ok((now - since, now))
        }
    }
}

/// The bundle's drift reference, or what to do about a bundle without one.
pub fn binner<'a>(bundle: &'a ModelBundle, dir: &std::path::Path) -> Result<&'a Binner> {
    bundle.drift().with_context(|| {
        format!(
            "{} ({}) has no drift reference (drift_reference.json), so its drift is unavailable; retrain it with `cra train`, or add one from its training data with `cra train --drift-reference-only --data TRAINING.parquet --out {}`",
            dir.display(),
            bundle.version(),
            dir.display()
        )
    })
}

const SELECT: &str = "SELECT age::float8, income, employment_length, credit_score::float8,
        num_credit_lines::float8, credit_utilization, debt_to_income, total_debt, savings,
        loan_amount, loan_term::float8, num_late_payments::float8, num_bankruptcies::float8,
        inquiries_last_6m::float8, employment_status, home_ownership, loan_purpose,
        probability_default
    FROM decisions
    WHERE outcome = 'ok' AND model_version = $1 AND decided_at >= $2 AND decided_at < $3";

/// Reads the scored decisions of `model_version` in `[from, to)` and counts their bins.
pub async fn counts_from_log(
    client: &tokio_postgres::Client,
    binner: &Binner,
    model_version: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<BinCounts> {
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&model_version, &from, &to];
    let rows = client
        .query_raw(SELECT, params)
        .await
        .context("reading the decisions (is the schema there? `cra migrate`)")?;
    futures::pin_mut!(rows);
    let mut counts = binner.counts();
    let mut bins = [0u8; NUM_TRACKED];
    while let Some(row) = rows.try_next().await.context("reading the decisions")? {
        let num = |i: usize| row.get::<_, Option<f64>>(i).unwrap_or(f64::NAN);
        let text = |i: usize| row.get::<_, Option<&str>>(i);
        let mut n = [0.0; 14];
        for (i, v) in n.iter_mut().enumerate() {
            *v = num(i);
        }
        let a = Application::from_parts(
            n,
            text(14).and_then(EmploymentStatus::parse),
            text(15).and_then(HomeOwnership::parse),
            text(16).and_then(LoanPurpose::parse),
        );
        binner.bins(&a, num(17), &mut bins);
        counts.add(binner, &bins);
    }
    Ok(counts)
}

/// The model versions with scored decisions in `[from, to)`, and how many, for the message
/// of an empty range.
async fn versions_in(
    client: &tokio_postgres::Client,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<(String, i64)>> {
    let rows = client
        .query(
            "SELECT model_version, count(*) FROM decisions
             WHERE outcome = 'ok' AND decided_at >= $1 AND decided_at < $2
             GROUP BY model_version ORDER BY 2 DESC LIMIT 10",
            &[&from, &to],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The drift of the bundle in `args.model` from the decision log, as `cra drift` computes it.
pub async fn from_log(
    client: &tokio_postgres::Client,
    bundle: &ModelBundle,
    args: &DriftArgs,
    now: DateTime<Utc>,
) -> Result<LogDrift> {
    let binner = binner(bundle, &args.model)?;
    let (from, to) = range(args, now)?;
    let version = args
        .model_version
        .clone()
        .unwrap_or_else(|| bundle.version().to_owned());
    let counts = counts_from_log(client, binner, &version, from, to).await?;
    if counts.rows == 0 {
        let others = versions_in(client, from, to).await.unwrap_or_default();
        let others = if others.is_empty() {
            "no model has any in that range".to_string()
        } else {
            let list: Vec<String> = others.iter().map(|(v, n)| format!("{v}: {n}")).collect();
            format!("scored decisions in that range: {}", list.join(", "))
        };
        bail!(
            "no scored decisions of {version} from {} to {} in {}; widen --since (or --from/--to), or pass --model-version ({others})",
            from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            args.database.database_url
        );
    }
    let psi = counts.psi(binner);
    Ok(LogDrift {
        model_version: version,
        from,
        to,
        counts,
        psi,
    })
}

/// `cra drift`.
pub fn run(args: &DriftArgs) -> Result<()> {
    let bundle = ModelBundle::load(&args.model)?;
    binner(&bundle, &args.model)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let url = &args.database.database_url;
    let drift = rt.block_on(async {
        let client = crate::decision_log::db::connect(url, Duration::from_secs(10))
            .await
            .with_context(|| {
                format!(
                    "connecting to {url} (is PostgreSQL up? set --database-url or DATABASE_URL)"
                )
            })?;
        from_log(&client, &bundle, args, Utc::now()).await
    })?;
    if drift.psi.rows < crate::scoring::drift::MIN_DECISIONS {
        eprintln!(
            "warning: only {} decisions; below {} the PSI is mostly sampling noise",
            drift.psi.rows,
            crate::scoring::drift::MIN_DECISIONS
        );
    }
    if args.json {
        println!("{}", drift.to_json());
    } else {
        print!("{}", drift.table());
    }
    if let Some(path) = &args.html {
        let page = html(&drift, binner(&bundle, &args.model)?);
        std::fs::write(path, page).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("distributions -> {}", path.display());
    }
    Ok(())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A bin edge in a label: 4 significant digits.
fn short(v: f64) -> String {
    if v.abs() >= 1000.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        let digits = (3 - v.abs().log10().floor() as i32).clamp(0, 12) as usize;
        format!("{v:.digits$}")
    }
}

/// A bin label with its numbers shortened (`[0.0081974957, 0.0198)` → `[0.008197, 0.01983)`).
fn short_label(label: &str) -> String {
    let mut out = String::new();
    let mut number = String::new();
    for ch in label.chars().chain(std::iter::once(' ')) {
        if ch.is_ascii_digit() || ch == '.' || ch == 'e' || (ch == '-' && number.is_empty()) {
            number.push(ch);
            continue;
        }
        if !number.is_empty() {
            match number.parse::<f64>() {
                Ok(v) => out.push_str(&short(v)),
                Err(_) => out.push_str(&number),
            }
            number.clear();
        }
        out.push(ch);
    }
    out.pop();
    out
}

/// One column's expected and actual shares as a grouped bar chart (inline SVG).
fn bars(labels: &[String], expected: &[f64], actual: &[f64]) -> String {
    let (w, h, left, bottom) = (760.0, 260.0, 50.0, 90.0);
    let top = expected
        .iter()
        .chain(actual)
        .fold(0.0f64, |a, b| a.max(*b))
        .max(1e-9);
    let slot = (w - left) / labels.len().max(1) as f64;
    let plot_h = h - bottom - 10.0;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    for k in 0..=4 {
        let v = top * f64::from(k) / 4.0;
        let y = 10.0 + plot_h * (1.0 - f64::from(k) / 4.0);
        let _ = write!(
            svg,
            r##"<line x1="{left}" x2="{w}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{:.0}%</text>"##,
            left - 4.0,
            y + 4.0,
            v * 100.0
        );
    }
    for (i, label) in labels.iter().enumerate() {
        let x = left + slot * i as f64;
        for (j, (v, colour)) in [(expected[i], "#8aa8d0"), (actual[i], "#d0775a")]
            .into_iter()
            .enumerate()
        {
            let bh = plot_h * v / top;
            let _ = write!(
                svg,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{colour}"><title>{} {}: {:.2}%</title></rect>"#,
                x + slot * (0.1 + 0.4 * j as f64),
                10.0 + plot_h - bh,
                slot * 0.4,
                escape(label),
                if j == 0 { "expected" } else { "actual" },
                v * 100.0
            );
        }
        let (tx, ty) = (x + slot / 2.0, h - bottom + 14.0);
        let _ = write!(
            svg,
            r#"<text x="{tx:.1}" y="{ty:.1}" transform="rotate(40 {tx:.1} {ty:.1})">{}</text>"#,
            escape(label)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A self-contained page: the PSI table, and for every column with a PSI of 0.1 or more its
/// expected (training) and actual (decision log) distributions.
pub fn html(drift: &LogDrift, binner: &Binner) -> String {
    let mut body = String::new();
    let columns: Vec<(usize, &str, f64)> = std::iter::once((0, "score", drift.psi.score_psi))
        .chain(
            drift
                .psi
                .features
                .iter()
                .enumerate()
                .map(|(i, (n, v))| (i + 1, *n, *v)),
        )
        .collect();
    body.push_str("<table><tr><th>column</th><th>PSI</th><th>band</th></tr>");
    for (_, name, v) in &columns {
        let _ = write!(
            body,
            "<tr><td>{name}</td><td>{v:.4}</td><td class=\"{b}\">{b}</td></tr>",
            b = Band::of(*v).as_str()
        );
    }
    body.push_str("</table>");
    let drifted: Vec<_> = columns.iter().filter(|(_, _, v)| *v >= 0.1).collect();
    if drifted.is_empty() {
        body.push_str("<p>No column has a PSI of 0.1 or more.</p>");
    }
    for (c, name, v) in drifted {
        let counts = drift.counts.column(binner, *c);
        let total = counts.iter().sum::<u64>().max(1) as f64;
        let actual: Vec<f64> = counts.iter().map(|n| *n as f64 / total).collect();
        let _ = write!(
            body,
            "<h2>{name}: PSI {v:.4} ({})</h2>{}",
            Band::of(*v).as_str(),
            bars(
                &binner
                    .bin_labels(*c)
                    .iter()
                    .map(|l| short_label(l))
                    .collect::<Vec<_>>(),
                binner.expected(*c),
                &actual
            )
        );
    }
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>Drift of {v}</title><style>
body{{font-family:sans-serif;margin:2em;max-width:60em}} td,th{{padding:2px 10px;text-align:left}}
.stable{{color:#2a7}} .moderate{{color:#c80}} .significant{{color:#c22;font-weight:bold}}
</style></head><body><h1>Drift of {v}</h1><p>{rows} scored decisions from {from} to {to}, against the
training distributions of the bundle's drift reference. Bars: <span style="color:#8aa8d0">expected
(training)</span>, <span style="color:#d0775a">actual (decision log)</span>. Bands: below 0.1 stable, 0.1 to
0.25 moderate, above 0.25 significant.</p>{body}</body></html>
"#,
        v = escape(&drift.model_version),
        rows = drift.psi.rows,
        from = drift
            .from
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        to = drift.to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        drift: DriftArgs,
    }

    fn args(argv: &[&str]) -> Result<DriftArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("drift").chain(argv.iter().copied())).map(|c| c.drift)
    }

    #[test]
    fn the_range_is_since_or_from_to_and_mistakes_are_named() {
        let now: DateTime<Utc> = "2026-12-01T12:00:00Z".parse().unwrap();
        let (from, to) = range(&args(&[]).unwrap(), now).unwrap();
        assert_eq!((to - from).num_hours(), 24, "24h by default");
        let (from, _) = range(&args(&["--since", "30m"]).unwrap(), now).unwrap();
        assert_eq!((now - from).num_minutes(), 30);
        let a = args(&[
            "--from",
            "2026-11-01T00:00:00Z",
            "--to",
            "2026-11-02T00:00:00Z",
        ])
        .unwrap();
        let (from, to) = range(&a, now).unwrap();
        assert_eq!((to - from).num_hours(), 24);
        let a = args(&[
            "--from",
            "2026-11-02T00:00:00Z",
            "--to",
            "2026-11-01T00:00:00Z",
        ])
        .unwrap();
        assert!(range(&a, now)
            .unwrap_err()
            .to_string()
            .contains("is not before"));
        let e = args(&["--since", "2 days"]).err().unwrap().to_string();
        assert!(e.contains("unknown duration unit"), "{e}");
        assert!(args(&[
            "--since",
            "1h",
            "--from",
            "2026-11-01T00:00:00Z",
            "--to",
            "2026-11-02T00:00:00Z"
        ])
        .is_err());
        assert!(
            args(&["--from", "2026-11-01T00:00:00Z"]).is_err(),
            "--from needs --to"
        );
    }

    /// The table, the JSON object and the page of a window of the same application again and
    /// again (far from the training distribution): every column drifted, each drawn.
    #[test]
    fn table_json_and_page_show_every_column_with_its_band() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default");
        let bundle = ModelBundle::load(&dir).unwrap();
        let binner = binner(&bundle, &dir).unwrap();
        let mut counts = binner.counts();
        let mut bins = [0u8; NUM_TRACKED];
        let mut a = Application::example();
        a.credit_score = f64::NAN;
        binner.bins(&a, 0.2, &mut bins);
        for _ in 0..150 {
            counts.add(binner, &bins);
        }
        let psi = counts.psi(binner);
        let drift = LogDrift {
            model_version: bundle.version().to_owned(),
            from: "2026-12-01T00:00:00Z".parse().unwrap(),
            to: "2026-12-02T00:00:00Z".parse().unwrap(),
            counts,
            psi,
        };
        let table = drift.table();
        assert_eq!(table.lines().count(), 2 + 20, "{table}");
        assert!(
            table.lines().nth(2).unwrap().starts_with("score "),
            "{table}"
        );
        assert!(table.contains("significant"), "{table}");
        let json = drift.to_json();
        assert_eq!(json["rows"], 150);
        assert_eq!(json["features"].as_object().unwrap().len(), 19);
        assert!(json["score_psi"].as_f64().unwrap() > 0.25);
        assert_eq!(json["bands"]["credit_score"], "significant");
        let page = html(&drift, binner);
        assert!(
            page.contains("<h2>credit_score: PSI"),
            "the missing bin drifted"
        );
        assert!(page.matches("<svg").count() >= 10);
        assert!(
            !page.contains("src=") && !page.contains("<script"),
            "self-contained"
        );
    }

    #[test]
    fn bin_labels_are_shortened() {
        assert_eq!(
            short_label("[0.0081974957138, 0.019825134)"),
            "[0.008197, 0.01983)"
        );
        assert_eq!(short_label(">= 113169"), ">= 113169");
        assert_eq!(short_label("employed"), "employed");
        assert_eq!(short_label("< 26334.6"), "< 26335");
    }

    #[test]
    fn a_bundle_without_reference_says_how_to_add_one() {
        let dir = crate::test_support::default_bundle_without_drift_reference();
        let bundle = ModelBundle::load(dir.path()).unwrap();
        let e = binner(&bundle, dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("has no drift reference") && e.contains("--drift-reference-only"),
            "{e}"
        );
    }
}
