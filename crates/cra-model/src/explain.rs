//! Explanations of a decision: exact TreeSHAP contributions per model feature, and the
//! adverse-action reason codes they add up to.
//!
//! A **reason-code table** (`reason_codes.json` in the bundle) gives each code a statement an
//! applicant can read and the model features it covers; every model feature belongs to exactly
//! one code. A code's contribution is the sum of its features' contributions (SHAP values are
//! additive), in margin (log-odds) space: positive pushes toward default.
//!
//! The **principal reasons** of a decision are the codes with a positive contribution, largest
//! first, at most [`MAX_PRINCIPAL_REASONS`]. When the table names an inquiries code and that code
//! pushed toward default without being among them, it is added as a fifth key factor (FCRA,
//! 15 U.S.C. 1681g(f)(1)(C)). `docs/MODEL.md` explains the method and its baseline.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    application::Application,
    preprocess::{feature_names, FittedPreprocessor, NUM_FEATURES},
    shap::{ShapScratch, TreeShap},
};

/// Most principal reasons given (Regulation B's commentary: more than four is not likely to be
/// helpful).
pub const MAX_PRINCIPAL_REASONS: usize = 4;
/// Most codes a table may have.
pub const MAX_CODES: usize = 64;
/// The table format this build reads.
pub const REASON_CODES_FORMAT: u32 = 1;

/// One reason code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonCode {
    /// Short identifier, e.g. `R03`.
    pub code: String,
    /// The statement an applicant reads, e.g. "Monthly payments are high relative to income".
    pub description: String,
    /// The model features it covers (names as in `bundle.json`'s feature schema).
    pub features: Vec<String>,
}

/// A bundle's reason-code table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonCodeTable {
    pub format_version: u32,
    /// The code of recent credit inquiries, added as a fifth key factor when it pushed toward
    /// default but is not among the principal reasons.
    #[serde(default)]
    pub inquiries_code: Option<String>,
    pub codes: Vec<ReasonCode>,
}

impl ReasonCodeTable {
    /// The table committed with the default model: every feature of this build covered.
    pub fn standard() -> ReasonCodeTable {
        let code = |code: &str, description: &str, features: &[&str]| ReasonCode {
            code: code.into(),
            description: description.into(),
            features: features.iter().map(|f| f.to_string()).collect(),
        };
        ReasonCodeTable {
            format_version: REASON_CODES_FORMAT,
            inquiries_code: Some("R10".into()),
            codes: vec![
                code("R01", "Credit score is too low", &["credit_score"]),
                code(
                    "R02",
                    "Delinquent past or present credit obligations",
                    &["num_late_payments"],
                ),
                code(
                    "R03",
                    "Monthly payments are too high relative to income",
                    &["debt_to_income", "payment_to_income", "monthly_payment"],
                ),
                code("R04", "Total debt is too high", &["total_debt"]),
                code(
                    "R05",
                    "Proportion of credit used is too high",
                    &["credit_utilization"],
                ),
                code("R06", "Bankruptcy on record", &["num_bankruptcies"]),
                code(
                    "R07",
                    "Income is insufficient for the amount of credit requested",
                    &["income", "loan_amount"],
                ),
                code(
                    "R08",
                    "Length or status of employment",
                    &["employment_length", "employment_status"],
                ),
                code("R09", "Savings are too low", &["savings"]),
                code(
                    "R10",
                    "Number of recent inquiries on credit report",
                    &["inquiries_last_6m"],
                ),
                code("R11", "Number of credit accounts", &["num_credit_lines"]),
                code("R12", "Term of the loan requested", &["loan_term"]),
                code("R13", "Age of applicant", &["age"]),
                code("R14", "Housing status", &["home_ownership"]),
                code("R15", "Purpose of the loan", &["loan_purpose"]),
            ],
        }
    }

    /// Every problem of the table against this build's features, each naming the code or
    /// feature; empty when the table is usable.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.format_version != REASON_CODES_FORMAT {
            problems.push(format!(
                "format_version is {}; this build reads {REASON_CODES_FORMAT}",
                self.format_version
            ));
        }
        if self.codes.is_empty() || self.codes.len() > MAX_CODES {
            problems.push(format!(
                "it has {} codes; it needs 1 to {MAX_CODES}",
                self.codes.len()
            ));
        }
        let names = feature_names();
        let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
        let mut codes: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, c) in self.codes.iter().enumerate() {
            if c.code.trim().is_empty() || c.code.len() > 16 {
                problems.push(format!("codes[{i}].code must be 1 to 16 characters"));
            }
            if let Some(first) = codes.insert(&c.code, i) {
                problems.push(format!(
                    "code {} appears twice (codes[{first}] and codes[{i}])",
                    c.code
                ));
            }
            if c.description.trim().is_empty() || c.description.len() > 200 {
                problems.push(format!(
                    "code {}: the description must be 1 to 200 characters",
                    c.code
                ));
            }
            if c.features.is_empty() {
                problems.push(format!("code {} covers no feature", c.code));
            }
            for f in &c.features {
                if !names.contains(&f.as_str()) {
                    problems.push(format!(
                        "code {} names {f:?}, which is not a model feature (features: {})",
                        c.code,
                        names.join(", ")
                    ));
                } else if let Some(other) = owner.insert(f, &c.code) {
                    problems.push(format!(
                        "feature {f} belongs to both {other} and {}",
                        c.code
                    ));
                }
            }
        }
        for f in &names {
            if !owner.contains_key(f) {
                problems.push(format!("feature {f} belongs to no code"));
            }
        }
        if let Some(q) = &self.inquiries_code {
            if !codes.contains_key(q.as_str()) {
                problems.push(format!("inquiries_code {q} is not one of the codes"));
            }
        }
        problems
    }

    /// The index of the code of each model feature (the table must have no problems).
    fn feature_codes(&self) -> [usize; NUM_FEATURES] {
        let mut out = [0usize; NUM_FEATURES];
        for (f, name) in feature_names().iter().enumerate() {
            out[f] = self
                .codes
                .iter()
                .position(|c| c.features.iter().any(|x| x == name))
                .unwrap_or(0);
        }
        out
    }
}

/// The applicant's value of one model feature.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FeatureValue {
    Missing,
    Number(f64),
    Category(&'static str),
}

/// One feature's contribution to the margin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Contribution {
    pub feature: &'static str,
    pub value: FeatureValue,
    /// In margin (log-odds) space; positive pushes toward default.
    pub contribution: f64,
}

/// One reason given for a decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Reason {
    pub code: String,
    pub description: String,
    pub features: Vec<String>,
    /// The sum of its features' contributions.
    pub contribution: f64,
    /// Given as the fifth key factor (inquiries) rather than as one of the principal reasons.
    pub fifth_factor: bool,
}

/// The explanation of one decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// The baseline: the margin before any feature is known (base score plus every tree's
    /// cover-weighted mean leaf value).
    pub base_margin: f64,
    /// One per model feature, in feature order; with `base_margin` they sum to the margin.
    pub contributions: Vec<Contribution>,
    /// Principal reasons toward default, largest first (at most four, and the fifth factor).
    pub reasons: Vec<Reason>,
}

/// TreeSHAP over a bundle's trees, and its reason-code table.
#[derive(Debug)]
pub struct Explainer {
    shap: TreeShap,
    table: ReasonCodeTable,
    codes: [usize; NUM_FEATURES],
    inquiries: Option<usize>,
}

/// Working memory of one thread.
#[derive(Debug)]
pub struct ExplainScratch {
    shap: ShapScratch,
    row: [f32; NUM_FEATURES],
    out: Vec<f64>,
}

impl Explainer {
    pub fn new(shap: TreeShap, table: ReasonCodeTable) -> Explainer {
        let codes = table.feature_codes();
        let inquiries = table
            .inquiries_code
            .as_ref()
            .and_then(|q| table.codes.iter().position(|c| &c.code == q));
        Explainer {
            shap,
            table,
            codes,
            inquiries,
        }
    }

    pub fn table(&self) -> &ReasonCodeTable {
        &self.table
    }

    pub fn shap(&self) -> &TreeShap {
        &self.shap
    }

    pub fn scratch(&self) -> ExplainScratch {
        ExplainScratch {
            shap: self.shap.scratch(),
            row: [0.0; NUM_FEATURES],
            out: vec![0.0; NUM_FEATURES + 1],
        }
    }

    /// Explains `app` as `pre` sees it.
    pub fn explain(
        &self,
        pre: &FittedPreprocessor,
        app: &Application,
        scratch: &mut ExplainScratch,
    ) -> Explanation {
        pre.transform_into(app, &mut scratch.row);
        if scratch.out.len() != NUM_FEATURES + 1 {
            scratch.out = vec![0.0; NUM_FEATURES + 1];
        }
        self.shap
            .contributions(&scratch.row, &mut scratch.out, &mut scratch.shap)
            .expect("the row and output sizes are this model's");
        let values = feature_values(pre, app);
        let names = feature_names();
        let contributions: Vec<Contribution> = (0..NUM_FEATURES)
            .map(|f| Contribution {
                feature: names[f],
                value: values[f],
                contribution: scratch.out[f],
            })
            .collect();
        let reasons = self.reasons(&scratch.out[..NUM_FEATURES]);
        Explanation {
            base_margin: scratch.out[NUM_FEATURES],
            contributions,
            reasons,
        }
    }

    /// The principal reasons of per-feature contributions.
    pub fn reasons(&self, contributions: &[f64]) -> Vec<Reason> {
        let mut by_code = vec![0.0f64; self.table.codes.len()];
        for (f, c) in contributions.iter().enumerate().take(NUM_FEATURES) {
            by_code[self.codes[f]] += c;
        }
        principal_reasons(&by_code, self.inquiries)
            .into_iter()
            .map(|(i, fifth_factor)| {
                let c = &self.table.codes[i];
                Reason {
                    code: c.code.clone(),
                    description: c.description.clone(),
                    features: c.features.clone(),
                    contribution: by_code[i],
                    fifth_factor,
                }
            })
            .collect()
    }
}

/// The codes (by index) to give for code contributions `by_code`: those above zero, largest
/// first (ties by index), at most [`MAX_PRINCIPAL_REASONS`]; then `inquiries` as a fifth key
/// factor when it is above zero and not among them. The flag marks the fifth factor.
pub fn principal_reasons(by_code: &[f64], inquiries: Option<usize>) -> Vec<(usize, bool)> {
    let mut order: Vec<usize> = (0..by_code.len()).filter(|&i| by_code[i] > 0.0).collect();
    order.sort_by(|&a, &b| by_code[b].total_cmp(&by_code[a]).then(a.cmp(&b)));
    order.truncate(MAX_PRINCIPAL_REASONS);
    let mut out: Vec<(usize, bool)> = order.iter().map(|&i| (i, false)).collect();
    if let Some(q) = inquiries {
        if by_code.get(q).is_some_and(|&c| c > 0.0) && !order.contains(&q) {
            out.push((q, true));
        }
    }
    out
}

/// The applicant's value of every model feature, in feature order (derived ones computed).
pub fn feature_values(pre: &FittedPreprocessor, app: &Application) -> [FeatureValue; NUM_FEATURES] {
    let num = |v: f64| {
        if v.is_nan() {
            FeatureValue::Missing
        } else {
            FeatureValue::Number(v)
        }
    };
    let mut out = [FeatureValue::Missing; NUM_FEATURES];
    let numerics = app.numerics();
    for (i, v) in numerics.iter().enumerate() {
        out[i] = num(*v);
    }
    let (mp, pti) = pre.derived(app);
    out[numerics.len()] = num(mp);
    out[numerics.len() + 1] = num(pti);
    let cats = [
        app.employment_status.map(|c| c.as_str()),
        app.home_ownership.map(|c| c.as_str()),
        app.loan_purpose.map(|c| c.as_str()),
    ];
    for (k, c) in cats.into_iter().enumerate() {
        out[numerics.len() + 2 + k] = c.map_or(FeatureValue::Missing, FeatureValue::Category);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_table_covers_every_feature_once() {
        assert_eq!(ReasonCodeTable::standard().problems(), Vec::<String>::new());
    }

    #[test]
    fn a_bad_table_names_every_problem() {
        let mut t = ReasonCodeTable::standard();
        t.codes[0].features.push("debt_to_income".into());
        t.codes[1].features = vec!["shoe_size".into()];
        t.codes[2].code = "R01".into();
        t.inquiries_code = Some("R99".into());
        let p = t.problems().join("\n");
        for want in [
            "feature debt_to_income belongs to both R01 and R01",
            "\"shoe_size\", which is not a model feature",
            "feature num_late_payments belongs to no code",
            "code R01 appears twice",
            "inquiries_code R99 is not one of the codes",
        ] {
            assert!(p.contains(want), "{want:?} not in:\n{p}");
        }
    }

    #[test]
    fn reasons_are_the_four_largest_toward_default_then_inquiries_as_fifth() {
        // Codes 0..6; inquiries is code 5.
        let by_code = [0.5, -1.0, 0.9, 0.1, 0.7, 0.05, 0.3];
        assert_eq!(
            principal_reasons(&by_code, Some(5)),
            [(2, false), (4, false), (0, false), (6, false), (5, true)]
        );
        // Inquiries among the four: no fifth factor.
        let by_code = [0.5, -1.0, 0.9, 0.1, 0.7, 0.8, 0.3];
        assert_eq!(
            principal_reasons(&by_code, Some(5)),
            [(2, false), (5, false), (4, false), (0, false)]
        );
        // Inquiries toward approval: never a reason.
        let by_code = [0.5, 0.4, 0.3, 0.2, 0.1, -0.05];
        assert_eq!(principal_reasons(&by_code, Some(5)).len(), 4);
        // Nothing toward default: no reason.
        assert!(principal_reasons(&[-0.1, 0.0], Some(0)).is_empty());
        // Fewer than four toward default.
        assert_eq!(
            principal_reasons(&[0.2, -0.1, 0.3], None),
            [(2, false), (0, false)]
        );
    }

    #[test]
    fn grouped_codes_sum_their_features() {
        let bundle = crate::bundle::ModelBundle::load(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/default"
        ))
        .unwrap();
        let explainer = bundle.explainer().unwrap();
        let app = Application::example();
        let mut scratch = explainer.scratch();
        let e = explainer.explain(bundle.preprocessor(), &app, &mut scratch);
        let margin = f64::from(bundle.score(&app).margin);
        let total: f64 =
            e.base_margin + e.contributions.iter().map(|c| c.contribution).sum::<f64>();
        assert!((total - margin).abs() < 1e-4, "{total} vs {margin}");
        let by = |f: &str| {
            e.contributions
                .iter()
                .find(|c| c.feature == f)
                .unwrap()
                .contribution
        };
        let r03 = by("debt_to_income") + by("payment_to_income") + by("monthly_payment");
        let all = explainer.reasons(
            &e.contributions
                .iter()
                .map(|c| c.contribution)
                .collect::<Vec<_>>(),
        );
        if let Some(r) = all.iter().find(|r| r.code == "R03") {
            assert!((r.contribution - r03).abs() < 1e-12);
        }
        assert!(e.reasons.iter().all(|r| r.contribution > 0.0));
        assert!(e.reasons.iter().filter(|r| !r.fifth_factor).count() <= 4);
    }
}
