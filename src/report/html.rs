//! The report page: one HTML document with inline CSS and inline SVG; it loads nothing.
use std::fmt::Write;

use cra_model::preprocess::feature_names;

use super::{plots, Analysis, Result};

/// `s` with the characters HTML gives a meaning escaped.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
:root { --ink: #262b33; --muted: #5f6b7a; --line: #e3e6ea; --bg: #f5f6f8; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1260px; margin: 0 auto; padding: 24px 20px 40px; }
h1 { font-size: 26px; margin: 0 0 2px; }
h2 { font-size: 20px; margin: 34px 0 12px; padding-bottom: 6px; border-bottom: 2px solid var(--line); }
p { margin: 6px 0; }
.sub { color: var(--muted); margin: 0 0 14px; }
.kpis { display: grid; grid-template-columns: repeat(6, minmax(0, 1fr)); gap: 12px; margin: 16px 0; }
.kpi { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; }
.kpi b { display: block; font-size: 26px; font-variant-numeric: tabular-nums; }
.kpi span { color: var(--muted); font-size: 13px; }
.grid { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 16px; }
figure { background: #fff; border: 1px solid var(--line); border-radius: 8px; margin: 0; padding: 8px; }
figure.wide { margin-top: 16px; }
figure svg { display: block; width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: 13px; padding: 4px 8px 4px; }
.panel { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px; }
.panel h3 { font-size: 16px; margin: 0 0 10px; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 6px 12px; text-align: right; }
th { background: #eef1f4; font-weight: 600; }
td.l, th.l { text-align: left; white-space: nowrap; }
table.facts td, table.facts th { border: none; padding: 2px 14px 2px 0; text-align: left; }
table.facts th { background: none; color: var(--muted); font-weight: normal; }
.band-low { color: #1b7f3b; font-weight: 600; } .band-medium { color: #b26b00; font-weight: 600; }
.band-high { color: #c0261d; font-weight: 600; }
.tp, .tn { background: #eaf5ec; } .fp, .fn { background: #fbeceb; }
.missing { color: #8a3b12; background: #fff4ec; border: 1px solid #f3d2bd; border-radius: 8px; padding: 12px 14px; }
footer { color: var(--muted); font-size: 13px; margin-top: 34px; }
@media (max-width: 900px) { .grid { grid-template-columns: 1fr; } .kpis { grid-template-columns: repeat(3, 1fr); } }
"#;

/// A count with thousands separators: 20000 as "20,000".
pub fn count(n: impl Into<u64>) -> String {
    let digits = n.into().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn figure(svg: &str, caption: &str) -> String {
    format!("<figure>{svg}<figcaption>{caption}</figcaption></figure>\n")
}

fn missing(what: &str, why: &str) -> String {
    format!(
        "<div class=\"missing\"><b>{}</b> is not available for this bundle: {}.</div>\n",
        escape(what),
        escape(why)
    )
}

/// The whole page.
pub fn render(a: &Analysis) -> Result<String> {
    let mut h = String::with_capacity(1 << 20);
    let e = &a.eval;
    let version = escape(&a.model_version);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>CRA model report — {version}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n"
    );
    let _ = write!(
        h,
        "<h1>Model report: {version}</h1>\n<p class=\"sub\">Evaluated on {}; default rate {}.</p>\n",
        escape(&a.source),
        pct(a.default_rate)
    );
    h.push_str("<section class=\"kpis\" id=\"key-metrics\">\n");
    for (value, name) in [
        (format!("{:.3}", e.auc_roc), "AUC (ROC)"),
        (format!("{:.3}", e.gini), "Gini"),
        (format!("{:.3}", e.ks), "KS"),
        (format!("{:.4}", e.brier), "Brier score"),
        (format!("{:.4}", e.log_loss), "Log loss"),
        (
            format!("{:.3}", a.pr.average_precision),
            "Average precision",
        ),
    ] {
        let _ = writeln!(
            h,
            "<div class=\"kpi\"><b>{value}</b><span>{name}</span></div>"
        );
    }
    h.push_str("</section>\n");

    let t = &a.thresholds;
    let mut facts = vec![
        ("Model version", a.model_version.clone()),
        ("Trees", a.num_trees.to_string()),
        ("Trained", a.trained_at.clone()),
        ("XGBoost", a.xgboost_version.clone()),
        ("Training rows", count(a.training_rows)),
        ("Data", a.source.clone()),
        ("Rows evaluated", count(a.rows as u64)),
        (
            "Thresholds",
            format!(
                "decline at p ≥ {}; risk bands LOW < {} ≤ MEDIUM < {} ≤ HIGH (risk score = 100·p)",
                t.decision_threshold, t.low_max, t.medium_max
            ),
        ),
    ];
    if let Some(auc) = a.training_auc {
        facts.push((
            "Test AUC at training",
            format!("{auc:.3} (metrics.json; on the trainer's own test rows)"),
        ));
    }
    h.push_str("<table class=\"facts\">\n");
    for (k, v) in facts {
        let _ = writeln!(h, "<tr><th>{k}</th><td>{}</td></tr>", escape(&v));
    }
    h.push_str("</table>\n");

    h.push_str("<h2>Discrimination</h2>\n<div class=\"grid\">\n");
    h.push_str(&figure(
        &plots::roc(a)?,
        "True against false positive rate at every threshold; the area under it is the probability \
         that a random defaulter scores above a random repayer. Gini = 2·AUC − 1.",
    ));
    h.push_str(&figure(
        &plots::pr(a)?,
        "Precision (share of declines that default) against recall (share of defaults declined). \
         Average precision is the area under the step curve.",
    ));
    h.push_str(&figure(
        &plots::ks(a)?,
        "Share of each class scoring at or below p. KS is the largest vertical gap.",
    ));
    h.push_str(&figure(
        &plots::score_distribution(a)?,
        "How the probabilities of default of each class are spread (each class sums to 100%).",
    ));
    h.push_str("</div>\n");

    h.push_str("<h2>Calibration and decisions</h2>\n<div class=\"grid\">\n");
    h.push_str(&figure(
        &plots::calibration(a)?,
        "Rows grouped by predicted probability: a calibrated model lies on the diagonal. \
         Brier score: mean squared error of the probabilities.",
    ));
    h.push_str("<div>\n");
    h.push_str(&bands_table(a));
    h.push_str(&confusion_table(a));
    h.push_str("</div>\n</div>\n");

    h.push_str("<h2>What drives the model</h2>\n");
    let shap_note = match &a.shap {
        Ok(s) => format!(
            "TreeSHAP contributions of {} rows{}.",
            s.rows,
            if s.rows < a.rows {
                format!(" (an evenly spaced sample of the {})", a.rows)
            } else {
                String::new()
            }
        ),
        Err(_) => String::new(),
    };
    h.push_str("<div class=\"grid\">\n");
    match (plots::importance_gain(a)?, &a.gains) {
        (Some(svg), _) => h.push_str(&figure(
            &svg,
            "Total gain (loss reduction) of the splits on each feature, summed over every tree \
             of booster.json (XGBoost's total_gain).",
        )),
        (None, Err(why)) => h.push_str(&missing("Importance by gain", why)),
        (None, Ok(_)) => {}
    }
    match (plots::importance_shap(a)?, &a.shap) {
        (Some(svg), _) => h.push_str(&figure(
            &svg,
            &format!(
                "Mean absolute contribution to the log-odds of default. {}",
                escape(&shap_note)
            ),
        )),
        (None, Err(why)) => h.push_str(&missing("Importance by SHAP", why)),
        (None, Ok(_)) => {}
    }
    h.push_str("</div>\n");
    match (plots::beeswarm(a)?, &a.shap) {
        (Some(svg), Ok(s)) => {
            let _ = writeln!(
                h,
                "<figure class=\"wide\">{svg}<figcaption>Each point is one row: its contribution on \
                 x, coloured by the rank of the feature's value among the rows (blue low, red high; \
                 categories by their code). {} of the {} explained rows are drawn.</figcaption></figure>",
                s.rows.min(super::MAX_BEESWARM_ROWS),
                s.rows
            );
        }
        (_, Err(why)) => h.push_str(&missing("The SHAP summary", why)),
        _ => {}
    }
    if let Ok(s) = &a.shap {
        let names = feature_names();
        let top: Vec<usize> = a.shap_order().into_iter().take(4).collect();
        h.push_str(
            "<h2>Dependence of the four most important features</h2>\n<div class=\"grid\">\n",
        );
        for (i, &f) in top.iter().enumerate() {
            let id = [
                "dependence-1",
                "dependence-2",
                "dependence-3",
                "dependence-4",
            ][i];
            h.push_str(&figure(
                &plots::dependence(a, s, f, id)?,
                &format!(
                    "{}'s value against its contribution to the log-odds, one point per row \
                     ({} of the explained rows).",
                    names[f],
                    s.rows.min(super::MAX_BEESWARM_ROWS)
                ),
            ));
        }
        h.push_str("</div>\n");
    }

    h.push_str("<h2>Reasons for declines</h2>\n");
    match (plots::reason_codes(a)?, &a.reasons) {
        (Some(svg), Ok(r)) => {
            let sampled = if r.explained < r.declines {
                format!(
                    " (an evenly spaced sample of the {} declined rows)",
                    r.declines
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                h,
                "<figure class=\"wide\">{svg}<figcaption>The adverse-action reasons the explainer gives \
                 each declined row (p ≥ {}): up to four principal reasons, plus recent inquiries as a \
                 fifth key factor when they counted against the applicant. {} rows explained{}.</figcaption></figure>",
                a.thresholds.decision_threshold, r.explained, sampled
            );
        }
        (_, Err(why)) => h.push_str(&missing("Reason codes", why)),
        _ => {}
    }

    let _ = write!(
        h,
        "<footer>Written by <code>cra report</code> (cra {}) on {}. The page is self-contained: \
         inline SVG drawn with plotters, no scripts, fonts or images loaded.</footer>\n\
         </main>\n</body>\n</html>\n",
        env!("CARGO_PKG_VERSION"),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    Ok(h)
}

fn bands_table(a: &Analysis) -> String {
    let mut h = String::from(
        "<div class=\"panel\">\n<h3>Risk bands</h3>\n<table id=\"risk-bands\">\n\
         <tr><th class=\"l\">Band</th><th class=\"l\">Risk score</th><th>Rows</th><th>Share</th>\
         <th>Defaults</th><th>Default rate</th></tr>\n",
    );
    for b in &a.bands {
        let rate = if b.count > 0 {
            pct(b.defaults as f64 / b.count as f64)
        } else {
            "—".into()
        };
        let level = b.level.as_str();
        let _ = writeln!(
            h,
            "<tr><td class=\"l band-{level}\">{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{rate}</td></tr>",
            level.to_uppercase(),
            escape(&b.range),
            count(b.count as u64),
            pct(b.count as f64 / a.rows.max(1) as f64),
            count(b.defaults as u64)
        );
    }
    let defaults: usize = a.bands.iter().map(|b| b.defaults).sum();
    let _ = writeln!(
        h,
        "<tr><th class=\"l\">All</th><th></th><th>{}</th><th>100%</th><th>{}</th><th>{}</th></tr>",
        count(a.rows as u64),
        count(defaults as u64),
        pct(a.default_rate)
    );
    h.push_str("</table>\n<p class=\"sub\">Bands by the bundle's thresholds on the risk score (100 × probability of default).</p>\n</div>\n");
    h
}

fn confusion_table(a: &Analysis) -> String {
    let c = a.eval.confusion_matrix;
    let t = a.thresholds.decision_threshold;
    let fpr = if c.fp + c.tn > 0 {
        c.fp as f64 / (c.fp + c.tn) as f64
    } else {
        0.0
    };
    format!(
        "<div class=\"panel\" style=\"margin-top:16px\">\n<h3>Confusion matrix at the decision threshold (p ≥ {t})</h3>\n\
         <table id=\"confusion-matrix\">\n\
         <tr><th></th><th>Predicted repay (approve)</th><th>Predicted default (decline)</th></tr>\n\
         <tr><th class=\"l\">Actually repaid</th><td class=\"tn\">{} <small>TN</small></td><td class=\"fp\">{} <small>FP</small></td></tr>\n\
         <tr><th class=\"l\">Actually defaulted</th><td class=\"fn\">{} <small>FN</small></td><td class=\"tp\">{} <small>TP</small></td></tr>\n\
         </table>\n<p class=\"sub\" style=\"margin-top:10px\">Accuracy {:.3} · precision {:.3} · recall {:.3} · F1 {:.3} · \
         false positive rate {:.3}</p>\n</div>\n",
        count(c.tn),
        count(c.fp),
        count(c.fn_),
        count(c.tp),
        a.eval.accuracy,
        a.eval.precision,
        a.eval.recall,
        a.eval.f1,
        fpr
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_groups_digits() {
        assert_eq!(escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
        assert_eq!(count(20_000u64), "20,000");
        assert_eq!(count(999u64), "999");
        assert_eq!(count(1_234_567u64), "1,234,567");
    }

    #[test]
    fn the_page_has_every_plot_and_table_and_loads_nothing() {
        let bundle =
            cra_model::ModelBundle::load(concat!(env!("CARGO_MANIFEST_DIR"), "/models/default"))
                .unwrap();
        let data = cra_model::synthetic::generate(&cra_model::synthetic::GeneratorParams {
            rows: 400,
            seed: 3,
            ..Default::default()
        })
        .unwrap();
        let page =
            super::super::render(&bundle, &data.rows, &data.labels, "<test & rows>").unwrap();
        for id in [
            "roc-curve",
            "pr-curve",
            "ks-plot",
            "calibration",
            "score-distribution",
            "importance-gain",
            "importance-shap",
            "shap-summary",
            "dependence-1",
            "dependence-4",
            "reason-codes",
            "risk-bands",
            "confusion-matrix",
        ] {
            assert!(page.contains(&format!("id=\"{id}\"")), "{id} missing");
        }
        assert!(page.contains("&lt;test &amp; rows&gt;"));
        for external in ["src=", "href=", "@import", "url("] {
            assert!(
                !page.contains(external),
                "the page loads something: {external}"
            );
        }
    }
}
