//! Preprocessing, linfa-style: [`PreprocessParams`] are `fit` on training rows into a
//! [`FittedPreprocessor`], which is serialised into the model bundle. The trainer and the server
//! call the same [`FittedPreprocessor::transform_into`], so training and serving cannot drift.
//!
//! Model features, in order: the 14 numeric inputs and the 2 derived features, each standardised
//! (`(x - mean) / std`), then the 3 categoricals as ordinal codes. A missing value (NaN, or an
//! absent categorical) stays NaN, which XGBoost treats as missing.

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

/// The ordinal encoding of one categorical column: code `i` is `categories[i]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncodedColumn {
    pub name: String,
    pub categories: Vec<String>,
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
        let categorical = vec![
            EncodedColumn {
                name: CATEGORICAL_INPUTS[0].into(),
                categories: names(EmploymentStatus::names()),
            },
            EncodedColumn {
                name: CATEGORICAL_INPUTS[1].into(),
                categories: names(HomeOwnership::names()),
            },
            EncodedColumn {
                name: CATEGORICAL_INPUTS[2].into(),
                categories: names(LoanPurpose::names()),
            },
        ];
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
            .chain(self.categorical.iter().map(|c| c.name.as_str()))
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
        let expected_cats = [
            EmploymentStatus::names(),
            HomeOwnership::names(),
            LoanPurpose::names(),
        ];
        for (col, exp) in self.categorical.iter().zip(expected_cats) {
            if col.categories != exp {
                return Err(PreprocessError::Inconsistent(format!(
                    "column {} has categories {:?}, this build knows {:?}",
                    col.name, col.categories, exp
                )));
            }
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
        for (o, code) in out[16..].iter_mut().zip(a.category_codes()) {
            *o = code.map_or(f32::NAN, |c| c as f32);
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

    /// Undoes [`Self::transform_into`]: the unscaled numerics (inputs then derived) and the
    /// category codes. Used to check that the transform loses nothing.
    pub fn inverse(&self, features: &[f32]) -> ([f64; 16], [Option<usize>; 3]) {
        let mut num = [0.0; 16];
        for ((o, f), c) in num.iter_mut().zip(features).zip(&self.numeric) {
            *o = *f as f64 * c.std + c.mean;
        }
        let mut cats = [None; 3];
        for (o, f) in cats.iter_mut().zip(&features[16..]) {
            *o = (!f.is_nan()).then_some(*f as usize);
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
        let mut f = PreprocessParams::default().fit(&rows()).unwrap();
        f.categorical[2].categories.swap(0, 1);
        assert!(f.validate().is_err());
    }
}
