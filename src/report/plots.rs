//! The report's charts: plotters on its SVG backend, one `<svg id=…>` string each. Text is
//! written as SVG `<text>` for the browser to lay out, so no font library is linked.
use plotters::{
    coord::{
        ranged1d::{DefaultFormatting, KeyPointHint},
        Shift,
    },
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use cra_model::{explain::FeatureValue, preprocess::feature_names, NUM_FEATURES};

use super::{html::escape, Analysis, ReportError, Result, ShapSample, BEESWARM_FEATURES};

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type DrawResult = std::result::Result<(), DrawingAreaErrorKind<std::io::Error>>;

/// Text and grid colours.
const INK: RGBColor = RGBColor(0x26, 0x2b, 0x33);
const GRID: RGBColor = RGBColor(0xe3, 0xe6, 0xea);
const GREY: RGBColor = RGBColor(0x9a, 0xa0, 0xa8);
/// Repaid / non-default rows, and the model's main line.
const BLUE: RGBColor = RGBColor(0x1f, 0x6f, 0xb4);
/// Defaulted rows.
const RED: RGBColor = RGBColor(0xd6, 0x33, 0x2b);
const ORANGE: RGBColor = RGBColor(0xe8, 0x8a, 0x1a);
const TEAL: RGBColor = RGBColor(0x17, 0x8f, 0x86);
/// The beeswarm's colour scale, low to high feature values (as in the SHAP library).
const LOW: RGBColor = RGBColor(0x00, 0x8b, 0xfb);
const HIGH: RGBColor = RGBColor(0xff, 0x00, 0x52);
const FONT: &str = "sans-serif";

/// Size of the charts drawn two to a row.
pub const HALF: (u32, u32) = (600, 420);
/// Width of the charts drawn one to a row.
pub const FULL_WIDTH: u32 = 1200;

/// Draws one chart into an SVG string whose root element has `id` and `label` as its name.
fn svg(
    id: &'static str,
    label: &str,
    (w, h): (u32, u32),
    draw: impl FnOnce(&Area<'_>) -> DrawResult,
) -> Result<String> {
    let err = |e: DrawingAreaErrorKind<std::io::Error>| ReportError::Plot {
        plot: id,
        message: e.to_string(),
    };
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw(&root).map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(compact(&buf).replacen(
        "<svg ",
        &format!(
            "<svg id=\"{id}\" role=\"img\" aria-label=\"{}\" ",
            escape(label)
        ),
        1,
    ))
}

/// plotters' SVG without the attributes that only restate SVG's defaults (a filled shape's
/// `stroke="none"`, `opacity="1"`): a third of the bytes of a scatter plot's points.
fn compact(svg: &str) -> String {
    svg.replace(" stroke=\"none\" stroke-width=\"1\"", "")
        .replace(" opacity=\"1\"", "")
}

fn caption_font() -> TextStyle<'static> {
    (FONT, 19).into_font().style(FontStyle::Bold).color(&INK)
}

fn small_font() -> TextStyle<'static> {
    (FONT, 13).into_font().color(&INK)
}

/// The grid, labels and axis names every chart shares.
macro_rules! styled_mesh {
    ($chart:expr, $x:expr, $y:expr) => {
        $chart
            .configure_mesh()
            .x_desc($x)
            .y_desc($y)
            .axis_desc_style((FONT, 15).into_font().color(&INK))
            .label_style((FONT, 13).into_font().color(&INK))
            .axis_style(GREY)
            .light_line_style(WHITE)
            .bold_line_style(GRID)
    };
}

/// The legend box, at `pos`.
macro_rules! legend {
    ($chart:expr, $pos:expr) => {
        $chart
            .configure_series_labels()
            .position($pos)
            .margin(12)
            .legend_area_size(26)
            .label_font((FONT, 14).into_font().color(&INK))
            .background_style(WHITE.mix(0.92))
            .border_style(GRID)
            .draw()
    };
}

fn line_key(color: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
}

fn box_key(color: RGBColor) -> impl Fn((i32, i32)) -> Rectangle<(i32, i32)> {
    move |(x, y)| Rectangle::new([(x, y - 6), (x + 18, y + 6)], color.mix(0.5).filled())
}

/// A linear axis from `lo` to `hi` labelled at exactly `ticks` (feature rows, categories, round
/// numbers), where plotters would pick its own key points.
#[derive(Debug, Clone)]
struct Ticked {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl Ticked {
    /// Rows `0..n`, each at an integer, with room around them.
    fn rows(n: usize) -> Self {
        Ticked {
            lo: -0.6,
            hi: n as f64 - 0.4,
            ticks: (0..n).map(|i| i as f64).collect(),
        }
    }
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let t = (v - self.lo) / (self.hi - self.lo).max(1e-12);
        limit.0 + (t * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        // Grid lines and labels at the ticks only, none in between.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// At most about `max` of `points`, evenly spaced, always with the first and the last: a
/// curve of 20,000 thresholds looks the same with 600 and costs a thirtieth of the bytes.
fn thin<T: Copy>(points: &[T], max: usize) -> Vec<T> {
    if points.len() <= max {
        return points.to_vec();
    }
    let step = points.len().div_ceil(max);
    let mut out: Vec<T> = points.iter().step_by(step).copied().collect();
    if !(points.len() - 1).is_multiple_of(step) {
        out.push(points[points.len() - 1]);
    }
    out
}

/// The ROC curve with its AUC.
pub fn roc(a: &Analysis) -> Result<String> {
    let title = format!("ROC curve — AUC {:.3}", a.eval.auc_roc);
    svg("roc-curve", &title, HALF, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(&title, caption_font())
            .margin(16)
            .x_label_area_size(46)
            .y_label_area_size(58)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)?;
        styled_mesh!(chart, "False positive rate", "True positive rate").draw()?;
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (1.0, 1.0)],
                GREY.stroke_width(1),
            ))?
            .label("chance (AUC 0.5)")
            .legend(line_key(GREY));
        chart
            .draw_series(LineSeries::new(thin(&a.roc, 600), BLUE.stroke_width(3)))?
            .label(format!(
                "model: AUC {:.3}, Gini {:.3}",
                a.eval.auc_roc, a.eval.gini
            ))
            .legend(line_key(BLUE));
        legend!(chart, SeriesLabelPosition::LowerRight)
    })
}

/// The precision–recall curve with its average precision.
pub fn pr(a: &Analysis) -> Result<String> {
    let title = format!(
        "Precision–recall — average precision {:.3}",
        a.pr.average_precision
    );
    svg("pr-curve", &title, HALF, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(&title, caption_font())
            .margin(16)
            .x_label_area_size(46)
            .y_label_area_size(58)
            .build_cartesian_2d(0f64..1f64, 0f64..1.02f64)?;
        styled_mesh!(chart, "Recall (share of defaults caught)", "Precision").draw()?;
        chart
            .draw_series(LineSeries::new(
                [(0.0, a.default_rate), (1.0, a.default_rate)],
                GREY.stroke_width(1),
            ))?
            .label(format!("no skill (default rate {:.3})", a.default_rate))
            .legend(line_key(GREY));
        chart
            .draw_series(LineSeries::new(
                thin(&a.pr.points, 600),
                RED.stroke_width(3),
            ))?
            .label(format!("model: AP {:.3}", a.pr.average_precision))
            .legend(line_key(RED));
        legend!(chart, SeriesLabelPosition::LowerLeft)
    })
}

/// The cumulative score distributions of both classes, with the KS statistic marked.
pub fn ks(a: &Analysis) -> Result<String> {
    let title = format!("KS plot — KS {:.3}", a.ks.ks);
    svg("ks-plot", &title, HALF, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(&title, caption_font())
            .margin(16)
            .x_label_area_size(46)
            .y_label_area_size(58)
            .build_cartesian_2d(0f64..1f64, 0f64..1.02f64)?;
        styled_mesh!(
            chart,
            "Probability of default (score)",
            "Cumulative share of the class"
        )
        .draw()?;
        let pts = thin(&a.ks.points, 800);
        // Each share as a step function: it jumps at every distinct score.
        let steps = |pick: fn(&(f64, f64, f64)) -> f64| {
            let mut v = vec![(0.0, 0.0)];
            let mut last = 0.0;
            for p in &pts {
                v.push((p.0, last));
                last = pick(p);
                v.push((p.0, last));
            }
            v.push((1.0, last));
            v
        };
        chart
            .draw_series(LineSeries::new(steps(|p| p.1), BLUE.stroke_width(3)))?
            .label("repaid (default = 0)")
            .legend(line_key(BLUE));
        chart
            .draw_series(LineSeries::new(steps(|p| p.2), RED.stroke_width(3)))?
            .label("defaulted (default = 1)")
            .legend(line_key(RED));
        if let Some(&(at, n, p)) = a.ks.points.iter().find(|p| p.0 == a.ks.at) {
            chart
                .draw_series(LineSeries::new(
                    [(at, n.min(p)), (at, n.max(p))],
                    INK.stroke_width(2),
                ))?
                .label(format!("KS {:.3} at p = {:.3}", a.ks.ks, at))
                .legend(line_key(INK));
            chart.draw_series([
                Circle::new((at, n), 4, INK.filled()),
                Circle::new((at, p), 4, INK.filled()),
            ])?;
        }
        legend!(chart, SeriesLabelPosition::LowerRight)
    })
}

/// The reliability diagram (mean predicted probability against the observed default rate per
/// bin; a point's area is its row count), with the Brier score.
pub fn calibration(a: &Analysis) -> Result<String> {
    let title = format!(
        "Calibration — Brier {:.4}, log loss {:.4}",
        a.eval.brier, a.eval.log_loss
    );
    svg("calibration", &title, HALF, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(&title, caption_font())
            .margin(16)
            .x_label_area_size(46)
            .y_label_area_size(58)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)?;
        styled_mesh!(
            chart,
            format!(
                "Mean predicted probability ({} equal-width bins)",
                super::CALIBRATION_BINS
            ),
            "Observed default rate"
        )
        .draw()?;
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (1.0, 1.0)],
                GREY.stroke_width(1),
            ))?
            .label("perfectly calibrated")
            .legend(line_key(GREY));
        let pts: Vec<(f64, f64)> = a
            .calibration
            .iter()
            .map(|b| (b.mean_predicted, b.observed_rate))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, TEAL.stroke_width(3)))?
            .label("model (point area ∝ rows in the bin)")
            .legend(line_key(TEAL));
        let most = a.calibration.iter().map(|b| b.count).max().unwrap_or(1) as f64;
        chart.draw_series(a.calibration.iter().map(|b| {
            let r = 3.0 + 9.0 * (b.count as f64 / most).sqrt();
            Circle::new(
                (b.mean_predicted, b.observed_rate),
                r.round() as i32,
                TEAL.mix(0.85).filled(),
            )
        }))?;
        legend!(chart, SeriesLabelPosition::UpperLeft)
    })
}

/// Histograms of the probability of default of each class (share of the class per bin), with
/// the decision threshold.
pub fn score_distribution(a: &Analysis) -> Result<String> {
    const BINS: usize = 25;
    let title = "Score distribution by class";
    let mut share = [[0.0f64; BINS]; 2];
    let mut n = [0usize; 2];
    for (&y, &p) in a.labels.iter().zip(&a.probabilities) {
        let b = ((p * BINS as f64) as usize).min(BINS - 1);
        share[y as usize][b] += 1.0;
        n[y as usize] += 1;
    }
    for c in 0..2 {
        for s in &mut share[c] {
            *s /= n[c].max(1) as f64;
        }
    }
    let top = share.iter().flatten().fold(0.0f64, |m, &s| m.max(s)) * 1.12;
    svg("score-distribution", title, HALF, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, caption_font())
            .margin(16)
            .x_label_area_size(46)
            .y_label_area_size(58)
            .build_cartesian_2d(0f64..1f64, 0f64..top.max(0.01))?;
        styled_mesh!(chart, "Probability of default", "Share of the class's rows")
            .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
            .draw()?;
        for (c, color, label) in [
            (0, BLUE, format!("repaid ({} rows)", n[0])),
            (1, RED, format!("defaulted ({} rows)", n[1])),
        ] {
            chart
                .draw_series((0..BINS).map(|b| {
                    let (lo, hi) = (b as f64 / BINS as f64, (b + 1) as f64 / BINS as f64);
                    Rectangle::new([(lo, 0.0), (hi, share[c][b])], color.mix(0.45).filled())
                }))?
                .label(label)
                .legend(box_key(color));
            chart.draw_series((0..BINS).map(|b| {
                let (lo, hi) = (b as f64 / BINS as f64, (b + 1) as f64 / BINS as f64);
                Rectangle::new([(lo, 0.0), (hi, share[c][b])], color.stroke_width(1))
            }))?;
        }
        let t = a.thresholds.decision_threshold;
        chart
            .draw_series(LineSeries::new([(t, 0.0), (t, top)], INK.stroke_width(2)))?
            .label(format!("decision threshold {t}"))
            .legend(line_key(INK));
        legend!(chart, SeriesLabelPosition::UpperRight)
    })
}

/// A horizontal bar chart: `items` (label, value) top to bottom, each bar labelled by `fmt`;
/// the axis in percent when `percent`.
#[allow(clippy::too_many_arguments)]
fn hbars(
    id: &'static str,
    title: &str,
    x_desc: &str,
    items: &[(String, f64)],
    fmt: &dyn Fn(usize, f64) -> String,
    percent: bool,
    color: RGBColor,
    (width, label_width): (u32, u32),
) -> Result<String> {
    let n = items.len().max(1);
    let height = 110 + 26 * n as u32;
    let max = items.iter().fold(0.0f64, |m, i| m.max(i.1)).max(1e-12);
    svg(id, title, (width, height), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, caption_font())
            .margin(16)
            .margin_right(24)
            .x_label_area_size(46)
            .y_label_area_size(label_width)
            .build_cartesian_2d(0f64..max * 1.2, Ticked::rows(n))?;
        let name = |v: &f64| {
            let i = n as i64 - 1 - v.round() as i64;
            usize::try_from(i)
                .ok()
                .and_then(|i| items.get(i))
                .map(|it| it.0.clone())
                .unwrap_or_default()
        };
        let x_label = |v: &f64| {
            if percent {
                format!("{:.0}%", v * 100.0)
            } else {
                short_number(*v)
            }
        };
        styled_mesh!(chart, x_desc, "")
            .disable_y_mesh()
            .x_label_formatter(&x_label)
            .y_label_formatter(&name)
            .y_labels(n)
            .draw()?;
        chart.draw_series(items.iter().enumerate().map(|(i, (_, v))| {
            let y = (n - 1 - i) as f64;
            Rectangle::new([(0.0, y - 0.34), (*v, y + 0.34)], color.mix(0.85).filled())
        }))?;
        let value_font = small_font().pos(Pos::new(HPos::Left, VPos::Center));
        chart.draw_series(items.iter().enumerate().map(|(i, (_, v))| {
            let y = (n - 1 - i) as f64;
            EmptyElement::at((*v, y)) + Text::new(fmt(i, *v), (6, 0), value_font.clone())
        }))?;
        Ok(())
    })
}

/// Global importance by total gain (share of the booster's total), or `None` when the booster
/// carries no gains.
pub fn importance_gain(a: &Analysis) -> Result<Option<String>> {
    let Ok(gains) = &a.gains else {
        return Ok(None);
    };
    let total: f64 = gains.iter().sum::<f64>().max(1e-12);
    let names = feature_names();
    let mut items: Vec<(String, f64)> = (0..NUM_FEATURES)
        .map(|f| (names[f].to_string(), gains[f] / total))
        .collect();
    items.sort_by(|a, b| b.1.total_cmp(&a.1));
    hbars(
        "importance-gain",
        "Importance by gain",
        "Share of the total split gain over all trees",
        &items,
        &|_, v| format!("{:.1}%", v * 100.0),
        true,
        ORANGE,
        (HALF.0, 150),
    )
    .map(Some)
}

/// Global importance by mean |SHAP| over the sample, or `None` without contributions.
pub fn importance_shap(a: &Analysis) -> Result<Option<String>> {
    let Ok(s) = &a.shap else {
        return Ok(None);
    };
    let names = feature_names();
    let items: Vec<(String, f64)> = a
        .shap_order()
        .into_iter()
        .map(|f| (names[f].to_string(), s.mean_abs[f]))
        .collect();
    hbars(
        "importance-shap",
        "Importance by mean |SHAP|",
        "Mean |contribution| to the log-odds of default",
        &items,
        &|_, v| format!("{v:.3}"),
        false,
        BLUE,
        (HALF.0, 150),
    )
    .map(Some)
}

/// How often each reason code is given among the declines, most frequent first.
pub fn reason_codes(a: &Analysis) -> Result<Option<String>> {
    let Ok(r) = &a.reasons else {
        return Ok(None);
    };
    let mut counts = r.counts.clone();
    counts.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    let explained = r.explained.max(1) as f64;
    let items: Vec<(String, f64)> = counts
        .iter()
        .map(|(code, description, n)| {
            let mut d: String = description.chars().take(58).collect();
            if description.chars().count() > 58 {
                d.push('…');
            }
            (format!("{code} {d}"), *n as f64 / explained)
        })
        .collect();
    let title = format!(
        "Reason codes among declines — {} declined rows explained",
        r.explained
    );
    hbars(
        "reason-codes",
        &title,
        "Share of declined applications given this reason",
        &items,
        &|i, v| format!("{:.1}% ({})", v * 100.0, counts[i].2),
        true,
        RED,
        (FULL_WIDTH, 430),
    )
    .map(Some)
}

/// A feature value as a number: the value itself, or the category's code.
fn numeric(v: FeatureValue, categories: &[Vec<String>], feature: usize) -> Option<f64> {
    match v {
        FeatureValue::Missing => None,
        FeatureValue::Number(x) => Some(x),
        FeatureValue::Category(name) => categories
            .get(feature.checked_sub(NUM_FEATURES - categories.len())?)?
            .iter()
            .position(|c| c == name)
            .map(|i| i as f64),
    }
}

/// The colour of position `t` in [0, 1] on the low→high scale.
fn scale(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * t).round() as u8;
    RGBColor(mix(LOW.0, HIGH.0), mix(LOW.1, HIGH.1), mix(LOW.2, HIGH.2))
}

/// Each value's rank among the non-missing values, scaled to [0, 1] (ties share the mean
/// rank); `None` for missing.
fn ranks(values: &[Option<f64>]) -> Vec<Option<f64>> {
    let mut idx: Vec<usize> = (0..values.len()).filter(|&i| values[i].is_some()).collect();
    idx.sort_by(|&a, &b| {
        values[a]
            .unwrap_or(0.0)
            .total_cmp(&values[b].unwrap_or(0.0))
    });
    let mut out = vec![None; values.len()];
    let n = idx.len();
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && values[idx[j + 1]] == values[idx[i]] {
            j += 1;
        }
        let r = if n > 1 {
            (i + j) as f64 / 2.0 / (n - 1) as f64
        } else {
            0.5
        };
        for &k in &idx[i..=j] {
            out[k] = Some(r);
        }
        i = j + 1;
    }
    out
}

/// Vertical offsets (in row units, within ±0.4) that spread the points of one beeswarm row
/// into a swarm: points falling in the same small slice of the x axis are stacked alternately
/// above and below the row's centre line.
fn swarm(xs: &[f64], lo: f64, hi: f64) -> Vec<f64> {
    const SLICES: usize = 160;
    let slice =
        |x: f64| (((x - lo) / (hi - lo).max(1e-12) * SLICES as f64) as usize).min(SLICES - 1);
    let mut count = vec![0usize; SLICES];
    for &x in xs {
        count[slice(x)] += 1;
    }
    let half = count
        .iter()
        .map(|c| c.div_ceil(2))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let step = (0.4 / half).min(0.06);
    let mut seen = vec![0usize; SLICES];
    xs.iter()
        .map(|&x| {
            let s = slice(x);
            let k = seen[s];
            seen[s] += 1;
            let level = k.div_ceil(2) as f64;
            if k % 2 == 1 {
                level * step
            } else {
                -level * step
            }
        })
        .collect()
}

/// The SHAP summary: one row per feature (the [`BEESWARM_FEATURES`] most important), a point
/// per explained row at its contribution, coloured by the rank of the feature's value.
pub fn beeswarm(a: &Analysis) -> Result<Option<String>> {
    let Ok(s) = &a.shap else {
        return Ok(None);
    };
    let features: Vec<usize> = a.shap_order().into_iter().take(BEESWARM_FEATURES).collect();
    let rows = s.rows.min(super::MAX_BEESWARM_ROWS);
    let sample = super::spread(s.rows, rows);
    let k = features.len();
    let (mut lo, mut hi) = (0.0f64, 0.0f64);
    for &r in &sample {
        for &f in &features {
            lo = lo.min(s.contributions[r][f]);
            hi = hi.max(s.contributions[r][f]);
        }
    }
    let pad = (hi - lo).max(1e-6) * 0.04;
    let (lo, hi) = (lo - pad, hi + pad);
    let names = feature_names();
    let title = format!(
        "SHAP summary — {} rows, the {k} most important features",
        sample.len()
    );
    let height = 120 + 40 * k as u32;
    let page = svg("shap-summary", &title, (FULL_WIDTH, height), |root| {
        let (main, side) = root.split_horizontally(FULL_WIDTH - 110);
        let mut chart = ChartBuilder::on(&main)
            .caption(&title, caption_font())
            .margin(16)
            .x_label_area_size(46)
            .y_label_area_size(170)
            .build_cartesian_2d(lo..hi, Ticked::rows(k))?;
        let name = |v: &f64| {
            let i = k as i64 - 1 - v.round() as i64;
            usize::try_from(i)
                .ok()
                .and_then(|i| features.get(i))
                .map(|&f| names[f].to_string())
                .unwrap_or_default()
        };
        styled_mesh!(
            chart,
            "SHAP contribution to the log-odds of default (positive: toward default)",
            ""
        )
        .y_label_formatter(&name)
        .y_labels(k)
        .draw()?;
        chart.draw_series(LineSeries::new(
            [(0.0, -0.6), (0.0, k as f64 - 0.4)],
            GREY.stroke_width(1),
        ))?;
        for (j, &f) in features.iter().enumerate() {
            let y = (k - 1 - j) as f64;
            let xs: Vec<f64> = sample.iter().map(|&r| s.contributions[r][f]).collect();
            let values: Vec<Option<f64>> = sample
                .iter()
                .map(|&r| numeric(s.values[r][f], &a.categories, f))
                .collect();
            let rank = ranks(&values);
            let dy = swarm(&xs, lo, hi);
            chart.draw_series(xs.iter().zip(&dy).zip(&rank).map(|((&x, &d), r)| {
                let color = r.map_or(GREY, scale);
                Circle::new((x, y + d), 2, color.mix(0.75).filled())
            }))?;
        }
        // The colour scale.
        let (x0, top, bottom) = (28, 80, height as i32 - 90);
        let steps = 40;
        for i in 0..steps {
            let y0 = bottom - (bottom - top) * (i + 1) / steps;
            let y1 = bottom - (bottom - top) * i / steps;
            side.draw(&Rectangle::new(
                [(x0, y0), (x0 + 14, y1)],
                scale(i as f64 / (steps - 1) as f64).filled(),
            ))?;
        }
        let label = small_font().pos(Pos::new(HPos::Center, VPos::Center));
        side.draw(&Text::new("high", (x0 + 7, top - 14), label.clone()))?;
        side.draw(&Text::new("low", (x0 + 7, bottom + 14), label.clone()))?;
        side.draw(&Text::new("missing", (x0 + 7, bottom + 40), label.clone()))?;
        side.draw(&Circle::new((x0 + 7, bottom + 56), 4, GREY.filled()))?;
        side.draw(&Text::new(
            "feature value (rank)",
            (x0 + 34, (top + bottom) / 2),
            label.transform(FontTransform::Rotate90),
        ))?;
        Ok(())
    })?;
    Ok(Some(page))
}

/// The `q`-quantile of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The dependence plot of feature `f`: its value against its contribution, one point per row
/// of the beeswarm's sample (missing values left out, numeric axes clipped to the 1st–99th
/// percentile).
pub fn dependence(a: &Analysis, s: &ShapSample, f: usize, id: &'static str) -> Result<String> {
    let names = feature_names();
    let categorical = f >= NUM_FEATURES - a.categories.len();
    let sample = super::spread(s.rows, super::MAX_BEESWARM_ROWS);
    let mut pts: Vec<(f64, f64)> = sample
        .iter()
        .filter_map(|&r| {
            numeric(s.values[r][f], &a.categories, f).map(|x| (x, s.contributions[r][f]))
        })
        .collect();
    let missing = sample.len() - pts.len();
    let (x_lo, x_hi, x_desc) = if categorical {
        let n = a.categories[f - (NUM_FEATURES - a.categories.len())].len();
        (-0.6, n as f64 - 0.4, names[f].to_string())
    } else {
        let mut xs: Vec<f64> = pts.iter().map(|p| p.0).collect();
        xs.sort_by(f64::total_cmp);
        if xs.is_empty() {
            (0.0, 1.0, names[f].to_string())
        } else {
            let (lo, hi) = (quantile(&xs, 0.01), quantile(&xs, 0.99));
            let clipped = pts.iter().filter(|p| p.0 < lo || p.0 > hi).count();
            pts.retain(|p| p.0 >= lo && p.0 <= hi);
            let pad = ((hi - lo) * 0.04).max(1e-9);
            let desc = if clipped > 0 {
                format!("{} (1st–99th percentile shown)", names[f])
            } else {
                names[f].to_string()
            };
            (lo - pad, hi + pad, desc)
        }
    };
    let (mut y_lo, mut y_hi) = (0.0f64, 0.0f64);
    for p in &pts {
        y_lo = y_lo.min(p.1);
        y_hi = y_hi.max(p.1);
    }
    let pad = ((y_hi - y_lo) * 0.06).max(1e-6);
    let title = if missing > 0 {
        format!("Dependence: {} ({missing} missing not shown)", names[f])
    } else {
        format!("Dependence: {}", names[f])
    };
    // Categories: spread the points of one category sideways so they do not hide each other.
    if categorical {
        let mut seen = std::collections::HashMap::new();
        for p in &mut pts {
            let k = seen.entry(p.0 as i64).or_insert(0usize);
            *k += 1;
            p.0 += ((*k * 7919) % 1000) as f64 / 1000.0 * 0.5 - 0.25;
        }
    }
    let cats: Vec<String> = if categorical {
        a.categories[f - (NUM_FEATURES - a.categories.len())].clone()
    } else {
        Vec::new()
    };
    svg(id, &title, HALF, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(&title, caption_font())
            .margin(16)
            .x_label_area_size(46)
            .y_label_area_size(62)
            .build_cartesian_2d(
                Ticked {
                    lo: x_lo,
                    hi: x_hi,
                    ticks: if categorical {
                        (0..cats.len()).map(|i| i as f64).collect()
                    } else {
                        nice_ticks(x_lo, x_hi)
                    },
                },
                y_lo - pad..y_hi + pad,
            )?;
        let x_label = |v: &f64| {
            if categorical {
                cats.get(v.round().max(0.0) as usize)
                    .cloned()
                    .unwrap_or_default()
            } else {
                short_number(*v)
            }
        };
        styled_mesh!(chart, x_desc.as_str(), "SHAP contribution (log-odds)")
            .x_label_formatter(&x_label)
            .draw()?;
        chart.draw_series(LineSeries::new(
            [(x_lo, 0.0), (x_hi, 0.0)],
            GREY.stroke_width(1),
        ))?;
        chart.draw_series(
            pts.iter()
                .map(|&p| Circle::new(p, 2, BLUE.mix(0.5).filled())),
        )?;
        Ok(())
    })
}

/// About six round tick positions between `lo` and `hi`.
fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 6.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 7.0)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

/// A tick label: 12,500 as "12.5k", 0.25 as "0.25".
fn short_number(v: f64) -> String {
    let a = v.abs();
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if a >= 1e6 {
        format!("{}M", trim(format!("{:.2}", v / 1e6)))
    } else if a >= 1e4 {
        format!("{}k", trim(format!("{:.1}", v / 1e3)))
    } else if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else {
        trim(format!("{v:.3}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thin_keeps_the_ends() {
        let v: Vec<usize> = (0..1001).collect();
        let t = thin(&v, 100);
        assert_eq!((t[0], *t.last().unwrap()), (0, 1000));
        assert!(t.len() <= 102, "{}", t.len());
        assert_eq!(thin(&[1, 2, 3], 10), [1, 2, 3]);
    }

    #[test]
    fn ranks_share_ties_and_skip_missing() {
        let r = ranks(&[Some(3.0), None, Some(1.0), Some(3.0)]);
        assert_eq!(r, [Some(0.75), None, Some(0.0), Some(0.75)]);
    }

    #[test]
    fn ticks_and_labels_are_round() {
        assert_eq!(nice_ticks(0.0, 100.0), [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        assert_eq!(short_number(12_500.0), "12.5k");
        assert_eq!(short_number(0.25), "0.25");
        assert_eq!(short_number(250.0), "250");
    }

    #[test]
    fn swarm_offsets_stay_in_the_row() {
        let xs: Vec<f64> = (0..500).map(|i| (i % 7) as f64).collect();
        let d = swarm(&xs, 0.0, 7.0);
        assert!(d.iter().all(|v| v.abs() <= 0.4 + 1e-9));
    }
}
