//! The domain form of a credit application: what the generator writes, the trainer reads and the
//! server scores. Numbers are `f64`; `NaN` means "missing" (an absent bureau field, or a null in a
//! Parquet column), which XGBoost handles natively. Categoricals are `None` when missing.

use serde::{Deserialize, Serialize};

macro_rules! category_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in the order used for the ordinal encoding and the proto enum.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value as written in Parquet/CSV files and in the original JSON API.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses the file/JSON spelling; `None` for anything else.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }

            /// The spellings accepted by [`Self::parse`], for error messages.
            pub fn names() -> Vec<&'static str> {
                Self::ALL.iter().map(|v| v.as_str()).collect()
            }
        }
    };
}

category_enum!(
    /// Employment status of the applicant.
    EmploymentStatus {
        Employed => "employed",
        SelfEmployed => "self_employed",
        Unemployed => "unemployed",
        Retired => "retired",
        Student => "student",
    }
);

category_enum!(
    /// Housing situation of the applicant.
    HomeOwnership {
        Mortgage => "mortgage",
        Rent => "rent",
        Own => "own",
        Other => "other",
    }
);

category_enum!(
    /// What the loan is for.
    LoanPurpose {
        DebtConsolidation => "debt_consolidation",
        HomeImprovement => "home_improvement",
        Auto => "auto",
        Business => "business",
        Education => "education",
        Medical => "medical",
        Personal => "personal",
        Other => "other",
    }
);

/// The 14 numeric inputs, in file/column order.
pub const NUMERIC_INPUTS: [&str; 14] = [
    "age",
    "income",
    "employment_length",
    "credit_score",
    "num_credit_lines",
    "credit_utilization",
    "debt_to_income",
    "total_debt",
    "savings",
    "loan_amount",
    "loan_term",
    "num_late_payments",
    "num_bankruptcies",
    "inquiries_last_6m",
];

/// The 3 categorical inputs, in file/column order.
pub const CATEGORICAL_INPUTS: [&str; 3] = ["employment_status", "home_ownership", "loan_purpose"];

/// The two derived columns, computed from the inputs by the preprocessing.
pub const DERIVED: [&str; 2] = ["monthly_payment", "payment_to_income"];

/// The label column and the generator's true default probability.
pub const LABEL: &str = "default";
pub const TRUE_PD: &str = "true_pd";

/// Serde for `f64` fields where NaN means "missing": NaN is written as JSON `null` and `null`
/// reads back as NaN, so applications with absent bureau fields survive a JSON round trip.
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_nan() {
            s.serialize_none()
        } else {
            s.serialize_f64(*v)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

/// One application: the original service's 17 inputs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Application {
    #[serde(with = "nan_as_null")]
    pub age: f64,
    #[serde(with = "nan_as_null")]
    pub income: f64,
    #[serde(with = "nan_as_null")]
    pub employment_length: f64,
    #[serde(with = "nan_as_null")]
    pub credit_score: f64,
    #[serde(with = "nan_as_null")]
    pub num_credit_lines: f64,
    #[serde(with = "nan_as_null")]
    pub credit_utilization: f64,
    #[serde(with = "nan_as_null")]
    pub debt_to_income: f64,
    #[serde(with = "nan_as_null")]
    pub total_debt: f64,
    #[serde(with = "nan_as_null")]
    pub savings: f64,
    #[serde(with = "nan_as_null")]
    pub loan_amount: f64,
    /// Months.
    #[serde(with = "nan_as_null")]
    pub loan_term: f64,
    #[serde(with = "nan_as_null")]
    pub num_late_payments: f64,
    #[serde(with = "nan_as_null")]
    pub num_bankruptcies: f64,
    #[serde(with = "nan_as_null")]
    pub inquiries_last_6m: f64,
    pub employment_status: Option<EmploymentStatus>,
    pub home_ownership: Option<HomeOwnership>,
    pub loan_purpose: Option<LoanPurpose>,
}

impl Application {
    /// The 14 numeric inputs in [`NUMERIC_INPUTS`] order.
    pub fn numerics(&self) -> [f64; 14] {
        [
            self.age,
            self.income,
            self.employment_length,
            self.credit_score,
            self.num_credit_lines,
            self.credit_utilization,
            self.debt_to_income,
            self.total_debt,
            self.savings,
            self.loan_amount,
            self.loan_term,
            self.num_late_payments,
            self.num_bankruptcies,
            self.inquiries_last_6m,
        ]
    }

    /// Builds an application from numerics in [`NUMERIC_INPUTS`] order and the categoricals.
    pub fn from_parts(
        n: [f64; 14],
        employment_status: Option<EmploymentStatus>,
        home_ownership: Option<HomeOwnership>,
        loan_purpose: Option<LoanPurpose>,
    ) -> Self {
        Application {
            age: n[0],
            income: n[1],
            employment_length: n[2],
            credit_score: n[3],
            num_credit_lines: n[4],
            credit_utilization: n[5],
            debt_to_income: n[6],
            total_debt: n[7],
            savings: n[8],
            loan_amount: n[9],
            loan_term: n[10],
            num_late_payments: n[11],
            num_bankruptcies: n[12],
            inquiries_last_6m: n[13],
            employment_status,
            home_ownership,
            loan_purpose,
        }
    }

    /// The categorical inputs as ordinal codes (index into `ALL`), `None` when missing.
    pub fn category_codes(&self) -> [Option<usize>; 3] {
        [
            self.employment_status.map(|v| v as usize),
            self.home_ownership.map(|v| v as usize),
            self.loan_purpose.map(|v| v as usize),
        ]
    }

    /// The original service's example application (age 45, income 75,000, ..., debt_consolidation).
    pub fn example() -> Self {
        Application {
            age: 45.0,
            income: 75_000.0,
            employment_length: 10.0,
            credit_score: 720.0,
            num_credit_lines: 5.0,
            credit_utilization: 0.3,
            debt_to_income: 0.35,
            total_debt: 25_000.0,
            savings: 15_000.0,
            loan_amount: 20_000.0,
            loan_term: 36.0,
            num_late_payments: 0.0,
            num_bankruptcies: 0.0,
            inquiries_last_6m: 1.0,
            employment_status: Some(EmploymentStatus::Employed),
            home_ownership: Some(HomeOwnership::Mortgage),
            loan_purpose: Some(LoanPurpose::DebtConsolidation),
        }
    }
}

/// Amortised monthly payment of `loan_amount` over `term_months` at `annual_rate`.
/// NaN when an input is missing; the plain quotient when the rate is 0.
pub fn monthly_payment(loan_amount: f64, term_months: f64, annual_rate: f64) -> f64 {
    let r = annual_rate / 12.0;
    if r == 0.0 {
        return loan_amount / term_months;
    }
    loan_amount * r / (1.0 - (1.0 + r).powf(-term_months))
}

/// Monthly payment as a share of monthly income. NaN when income is missing, infinite at 0.
pub fn payment_to_income(monthly_payment: f64, annual_income: f64) -> f64 {
    monthly_payment / (annual_income / 12.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn category_spellings_round_trip() {
        for v in LoanPurpose::ALL {
            assert_eq!(LoanPurpose::parse(v.as_str()), Some(*v));
        }
        assert_eq!(EmploymentStatus::parse("EMPLOYED"), None);
    }

    #[test]
    fn missing_values_survive_json() {
        let mut a = Application::example();
        a.credit_score = f64::NAN;
        let json = serde_json::to_string(&a).unwrap();
        assert!(json.contains("\"credit_score\":null"), "{json}");
        let b: Application = serde_json::from_str(&json).unwrap();
        assert!(b.credit_score.is_nan());
        assert_eq!(b.age, a.age);
    }

    #[test]
    fn amortisation_matches_hand_computation() {
        // 20,000 over 36 months at 10%: the standard annuity formula gives 645.34.
        let p = monthly_payment(20_000.0, 36.0, 0.10);
        assert!((p - 645.34).abs() < 0.01, "{p}");
        assert!((payment_to_income(p, 75_000.0) - p / 6_250.0).abs() < 1e-12);
        assert!(monthly_payment(f64::NAN, 36.0, 0.1).is_nan());
    }
}
