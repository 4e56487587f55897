//! Preprocessing, linfa-style: [`PreprocessParams`] are `fit` on training rows into a
//! [`FittedPreprocessor`], which is serialised into the model bundle. The trainer and the server
//! call the same [`FittedPreprocessor::transform_into`], so training and serving cannot drift.
//!
//! Model features, in order: the 14 numeric inputs and the 2 derived features, each standardised
//! (`(x - mean) / std`), then the 3 categoricals as ordinal codes. A missing value (NaN, or an
//! absent categorical) stays NaN, which XGBoost treats as missing.
//!
//! The same fitted form also holds a scikit-learn `StandardScaler` and `OrdinalEncoder`
//! exported from Python (see [`crate::import`]): the codes are the positions in each column's
//! `categories` (scikit-learn sorts them; CRA's trainer writes them in the contract's order), and
//! a contract value the encoder never saw gets its `unknown_value`
//! (`handle_unknown="use_encoded_value"`). The arithmetic is scikit-learn's: `(x - mean) / std`
//! in `f64`, then rounded once to the booster's `f32`.

use serde::{Deserialize, Serialize};

use crate::application::{
    self, Application, EmploymentStatus, HomeOwnership, LoanPurpose, CATEGORICAL_INPUTS, DERIVED,
    NUMERIC_INPUTS,
};

/// Number of features the booster sees.
pub const NUM_FEATURES: usize = NUMERIC_INPUTS.len() + DERIVED.len() + CATEGORICAL_INPUTS.len();

/// Annual interest rate assumed for the derived monthly payment (the original's 10%).
pub const DEFAULT_ANNUAL_RATE: f64 = 0.10;

/// The names of the model features, in the order [`FittedPreprocessor::transform_into`] writes.
pub fn feature_names() -> Vec<&'static str> {
    NUMERIC_INPUTS
        .iter()
        .chain(DERIVED.iter())
        .chain(CATEGORICAL_INPUTS.iter())
        .copied()
        .collect()
}

/// Errors of fitting or restoring a preprocessor.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("cannot fit preprocessing on zero rows")]
    NoRows,
    #[error("preprocessing in the bundle is inconsistent: {0}")]
    Inconsistent(String),
}

/// Hyper-parameters of the preprocessing, before fitting.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PreprocessParams {
    /// Annual rate used to amortise the loan into `monthly_payment`.
    pub annual_rate: f64,
}

impl Default for PreprocessParams {
    fn default() -> Self {
        PreprocessParams {
            annual_rate: DEFAULT_ANNUAL_RATE,
        }
    }
}

/// A fitted standard scaler for one numeric column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaledColumn {
    pub name: String,
    pub mean: f64,
    /// Population standard deviation; 1.0 when the column is constant (as scikit-learn does).
    pub std: f64,
}

/// The ordinal encoding of one categorical column: code `i` is `categories[i]`; a contract
/// value not among them gets `unknown_value` when there is one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "EncodedColumnSpec", into = "EncodedColumnSpec")]
pub struct EncodedColumn {
    name: String,
    categories: Vec<String>,
    unknown_value: Option<f64>,
    /// The code of each contract value, in the domain enum's order (NaN: none, which
    /// [`FittedPreprocessor::validate`] refuses).
    codes: Vec<f32>,
}

/// [`EncodedColumn`] as written in `bundle.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct EncodedColumnSpec {
    name: String,
    categories: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unknown_value: Option<f64>,
}

impl From<EncodedColumnSpec> for EncodedColumn {
    fn from(s: EncodedColumnSpec) -> Self {
        EncodedColumn::new(s.name, s.categories, s.unknown_value)
    }
}

impl From<EncodedColumn> for EncodedColumnSpec {
    fn from(c: EncodedColumn) -> Self {
        EncodedColumnSpec {
            name: c.name,
            categories: c.categories,
            unknown_value: c.unknown_value,
        }
    }
}

/// The contract's values of a categorical input, in the domain enum's order (empty for a name
/// that is not one).
fn contract_values(column: &str) -> Vec<&'static str> {
    match column {
        "employment_status" => EmploymentStatus::names(),
        "home_ownership" => HomeOwnership::names(),
        "loan_purpose" => LoanPurpose::names(),
        _ => Vec::new(),
    }
}

impl EncodedColumn {
    /// The encoding of `name` with these categories (code `i` is `categories[i]`) and the code
    /// of a contract value not among them (`None`: there is none, which `validate` refuses).
    pub fn new(
        name: impl Into<String>,
        categories: Vec<String>,
        unknown_value: Option<f64>,
    ) -> Self {
        let name = name.into();
        let codes = contract_values(&name)
            .into_iter()
            .map(|v| match categories.iter().position(|c| c == v) {
                Some(i) => i as f32,
                None => unknown_value.map_or(f32::NAN, |u| u as f32),
            })
            .collect();
        EncodedColumn {
            name,
            categories,
            unknown_value,
            codes,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The categories, code `i` being `categories()[i]`.
    pub fn categories(&self) -> &[String] {
        &self.categories
    }

    /// The code of a contract value not among the categories.
    pub fn unknown_value(&self) -> Option<f64> {
        self.unknown_value
    }

    /// The code of the contract value at `index` of the domain enum's `ALL`.
    #[inline]
    fn code(&self, index: usize) -> f32 {
        self.codes.get(index).copied().unwrap_or(f32::NAN)
    }

    /// Every problem of this encoding against the contract.
    fn problems(&self) -> Vec<String> {
        let values = contract_values(&self.name);
        let mut out = Vec::new();
        for (i, c) in self.categories.iter().enumerate() {
            if !values.contains(&c.as_str()) {
                out.push(format!(
                    "column {} has category {c:?}, which is not one of the contract's values {values:?}",
                    self.name
                ));
            }
            if self.categories[..i].contains(c) {
                out.push(format!("column {} lists category {c:?} twice", self.name));
            }
        }
        match self.unknown_value {
            Some(u)
                if !u.is_finite()
                    || (u >= 0.0 && u.fract() == 0.0 && (u as usize) < self.categories.len()) =>
            {
                out.push(format!(
                    "column {} has unknown_value {u}, which is not finite or is the code of a category",
                    self.name
                ));
            }
            Some(_) => {}
            None => {
                let unseen: Vec<&str> = values
                    .iter()
                    .copied()
                    .filter(|v| !self.categories.iter().any(|c| c == v))
                    .collect();
                if !unseen.is_empty() {
                    out.push(format!(
                        "column {} has no code for {unseen:?} and no unknown_value",
                        self.name
                    ));
                }
            }
        }
        out
    }
}

/// The fitted, serialisable transform from an [`Application`] to model features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedPreprocessor {
    pub params: PreprocessParams,
    /// The 14 numeric inputs then the 2 derived features.
    pub numeric: Vec<ScaledColumn>,
    /// The 3 categorical inputs.
    pub categorical: Vec<EncodedColumn>,
}

impl PreprocessParams {
    /// Learns the mean and standard deviation of every numeric column, ignoring missing values.
    pub fn fit(&self, rows: &[Application]) -> Result<FittedPreprocessor, PreprocessError> {
        if rows.is_empty() {
            return Err(PreprocessError::NoRows);
        }
        let n_num = NUMERIC_INPUTS.len() + DERIVED.len();
        let mut sum = vec![0.0f64; n_num];
        let mut count = vec![0u64; n_num];
        for row in rows {
            for (j, v) in self.numeric_values(row).iter().enumerate() {
                if v.is_finite() {
                    sum[j] += v;
                    count[j] += 1;
                }
            }
        }
        let mean: Vec<f64> = (0..n_num)
            .map(|j| {
                if count[j] > 0 {
                    sum[j] / count[j] as f64
                } else {
                    0.0
                }
            })
            .collect();
        let mut ss = vec![0.0f64; n_num];
        for row in rows {
            for (j, v) in self.numeric_values(row).iter().enumerate() {
                if v.is_finite() {
                    ss[j] += (v - mean[j]).powi(2);
                }
            }
        }
        let numeric = NUMERIC_INPUTS
            .iter()
            .chain(DERIVED.iter())
            .enumerate()
            .map(|(j, name)| {
                let var = if count[j] > 0 {
                    ss[j] / count[j] as f64
                } else {
                    0.0
                };
                let std = var.sqrt();
                ScaledColumn {
                    name: name.to_string(),
                    mean: mean[j],
                    std: if std > 0.0 && std.is_finite() {
                        std
                    } else {
                        1.0
                    },
                }
            })
            .collect();
        let names = |all: Vec<&'static str>| all.into_iter().map(String::from).collect();
        let categorical = CATEGORICAL_INPUTS
            .iter()
            .map(|c| EncodedColumn::new(*c, names(contract_values(c)), None))
            .collect();
        Ok(FittedPreprocessor {
            params: *self,
            numeric,
            categorical,
        })
    }

    /// The 14 numeric inputs followed by the 2 derived features, unscaled.
    fn numeric_values(&self, a: &Application) -> [f64; 16] {
        let n = a.numerics();
        let mp = application::monthly_payment(a.loan_amount, a.loan_term, self.annual_rate);
        let pti = application::payment_to_income(mp, a.income);
        let mut out = [0.0; 16];
        out[..14].copy_from_slice(&n);
        out[14] = mp;
        out[15] = pti;
        out
    }
}

impl FittedPreprocessor {
    /// Checks that a deserialised preprocessor has the columns this build expects, in order.
    pub fn validate(&self) -> Result<(), PreprocessError> {
        let expected = feature_names();
        let got: Vec<&str> = self
            .numeric
            .iter()
            .map(|c| c.name.as_str())
            .chain(self.categorical.iter().map(|c| c.name()))
            .collect();
        if got != expected {
            return Err(PreprocessError::Inconsistent(format!(
                "expected features {expected:?}, found {got:?}"
            )));
        }
        if let Some(c) = self
            .numeric
            .iter()
            .find(|c| !(c.std > 0.0 && c.mean.is_finite()))
        {
            return Err(PreprocessError::Inconsistent(format!(
                "column {} has mean {} and std {}",
                c.name, c.mean, c.std
            )));
        }
        let problems: Vec<String> = self
            .categorical
            .iter()
            .flat_map(EncodedColumn::problems)
            .collect();
        if !problems.is_empty() {
            return Err(PreprocessError::Inconsistent(problems.join("; ")));
        }
        Ok(())
    }

    /// Writes the [`NUM_FEATURES`] model features of `a` into `out`.
    #[inline]
    pub fn transform_into(&self, a: &Application, out: &mut [f32]) {
        debug_assert_eq!(out.len(), NUM_FEATURES);
        let values = self.params.numeric_values(a);
        for ((o, v), c) in out.iter_mut().zip(values).zip(&self.numeric) {
            *o = ((v - c.mean) / c.std) as f32;
        }
        for ((o, index), col) in out[16..]
            .iter_mut()
            .zip(a.category_codes())
            .zip(&self.categorical)
        {
            *o = index.map_or(f32::NAN, |i| col.code(i));
        }
    }

    /// Transforms many rows into one row-major matrix of `rows.len() * NUM_FEATURES` values.
    pub fn transform(&self, rows: &[Application]) -> Vec<f32> {
        let mut out = vec![0.0f32; rows.len() * NUM_FEATURES];
        for (row, chunk) in rows.iter().zip(out.chunks_exact_mut(NUM_FEATURES)) {
            self.transform_into(row, chunk);
        }
        out
    }

    /// The derived features (monthly_payment, payment_to_income) of `a`, unscaled.
    pub fn derived(&self, a: &Application) -> (f64, f64) {
        let v = self.params.numeric_values(a);
        (v[14], v[15])
    }

    /// Undoes [`Self::transform_into`]: the unscaled numerics (inputs then derived) and each
    /// category's index in its domain enum (`None` when missing, or when the code is
    /// `unknown_value`, which several values share). Used to check that the transform loses
    /// nothing.
    pub fn inverse(&self, features: &[f32]) -> ([f64; 16], [Option<usize>; 3]) {
        let mut num = [0.0; 16];
        for ((o, f), c) in num.iter_mut().zip(features).zip(&self.numeric) {
            *o = *f as f64 * c.std + c.mean;
        }
        let mut cats = [None; 3];
        for ((o, f), col) in cats.iter_mut().zip(&features[16..]).zip(&self.categorical) {
            let mut found = col.codes.iter().enumerate().filter(|(_, c)| **c == *f);
            *o = match (found.next(), found.next()) {
                (Some((i, _)), None) => Some(i),
                _ => None,
            };
        }
        (num, cats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<Application> {
        let mut a = Application::example();
        let mut b = Application::example();
        b.age = 30.0;
        b.income = 40_000.0;
        b.credit_score = f64::NAN;
        b.home_ownership = None;
        a.savings = 0.0;
        vec![a, b]
    }

    #[test]
    fn fit_ignores_missing_and_guards_constant_columns() {
        let f = PreprocessParams::default().fit(&rows()).unwrap();
        assert_eq!(f.numeric[0].mean, 37.5);
        assert_eq!(f.numeric[0].std, 7.5);
        // credit_score: only one finite value -> std 0 -> 1.0
        assert_eq!(f.numeric[3].mean, 720.0);
        assert_eq!(f.numeric[3].std, 1.0);
        f.validate().unwrap();
    }

    #[test]
    fn transform_round_trips_through_serde_and_inverse() {
        let rows = rows();
        let f = PreprocessParams::default().fit(&rows).unwrap();
        let json = serde_json::to_string(&f).unwrap();
        let g: FittedPreprocessor = serde_json::from_str(&json).unwrap();
        assert_eq!(f, g);
        let x = f.transform(&rows);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&x),
            bits(&g.transform(&rows)),
            "same features, NaN for NaN"
        );
        for (row, feats) in rows.iter().zip(x.chunks_exact(NUM_FEATURES)) {
            let (num, cats) = f.inverse(feats);
            for (got, want) in num[..14].iter().zip(row.numerics()) {
                if want.is_nan() {
                    assert!(got.is_nan());
                } else {
                    assert!(
                        (got - want).abs() <= want.abs() * 1e-6 + 1e-6,
                        "{got} vs {want}"
                    );
                }
            }
            let (mp, pti) = f.derived(row);
            assert!((num[14] - mp).abs() < mp * 1e-6);
            assert!((num[15] - pti).abs() < pti * 1e-6);
            assert_eq!(cats, row.category_codes());
        }
        assert!(
            x[NUM_FEATURES + 3].is_nan(),
            "missing credit score stays missing"
        );
        assert!(
            x[NUM_FEATURES + 17].is_nan(),
            "missing category stays missing"
        );
    }

    #[test]
    fn fit_rejects_empty_input_and_validate_catches_tampering() {
        assert!(PreprocessParams::default().fit(&[]).is_err());
        let f = PreprocessParams::default().fit(&rows()).unwrap();
        let mut g = f.clone();
        let mut cats = f.categorical[2].categories().to_vec();
        cats[0] = "yacht".into();
        g.categorical[2] = EncodedColumn::new("loan_purpose", cats, None);
        let e = g.validate().unwrap_err().to_string();
        assert!(
            e.contains("\"yacht\"") && e.contains("no code for [\"debt_consolidation\"]"),
            "{e}"
        );
    }

    /// scikit-learn's OrdinalEncoder sorts its categories; a contract value it never saw gets
    /// its unknown_value. The codes follow, and the bundle's JSON keeps the old form when there
    /// is no unknown_value.
    #[test]
    fn categories_in_another_order_and_unknown_values_encode_as_scikit_learn_does() {
        let f = PreprocessParams::default().fit(&rows()).unwrap();
        let json = serde_json::to_string(&f.categorical[0]).unwrap();
        assert_eq!(
            json,
            r#"{"name":"employment_status","categories":["employed","self_employed","unemployed","retired","student"]}"#
        );
        let mut sorted = f.clone();
        let mut cats: Vec<String> = EmploymentStatus::names()
            .into_iter()
            .map(String::from)
            .collect();
        cats.sort();
        cats.retain(|c| c != "student");
        sorted.categorical[0] = EncodedColumn::new("employment_status", cats, Some(-1.0));
        sorted.validate().unwrap();
        let mut x = [0.0f32; NUM_FEATURES];
        let mut a = Application::example();
        for (status, code) in [
            (EmploymentStatus::Employed, 0.0),
            (EmploymentStatus::Retired, 1.0),
            (EmploymentStatus::SelfEmployed, 2.0),
            (EmploymentStatus::Unemployed, 3.0),
            (EmploymentStatus::Student, -1.0),
        ] {
            a.employment_status = Some(status);
            sorted.transform_into(&a, &mut x);
            assert_eq!(x[16], code, "{status:?}");
        }
        let back: FittedPreprocessor =
            serde_json::from_str(&serde_json::to_string(&sorted).unwrap()).unwrap();
        assert_eq!(back, sorted);
        let mut clash = sorted.clone();
        clash.categorical[0] = EncodedColumn::new(
            "employment_status",
            sorted.categorical[0].categories().to_vec(),
            Some(2.0),
        );
        assert!(clash.validate().is_err());
    }
}
