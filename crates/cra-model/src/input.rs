//! An application as a client sent it, before anything is checked, and its validation.
//!
//! Every entry point (gRPC, REST, the Open Inference Protocol, Parquet files, Python) turns what
//! it received into an [`ApplicationInput`] without judging it, and [`ApplicationInput::validate`]
//! is the one place where fields are checked: it returns the domain [`Application`] or every
//! violation found, each naming its field. The decision log records the input as received.
//!
//! Accepted ranges:
//!
//! | field                                   | accepted                                  |
//! |-----------------------------------------|-------------------------------------------|
//! | application_id                          | at most 256 bytes (optional)              |
//! | age                                     | a whole number, 18 to 120                 |
//! | income                                  | greater than 0, at most 1e9               |
//! | employment_length                       | 0 to 80                                   |
//! | credit_score (optional)                 | a whole number, 300 to 850                |
//! | num_credit_lines (optional)             | a whole number, 0 to 1000                 |
//! | credit_utilization (optional)           | 0 to 10                                   |
//! | debt_to_income                          | 0 to 100                                  |
//! | total_debt, savings                     | 0 to 1e10                                 |
//! | loan_amount                             | greater than 0, at most 1e9               |
//! | loan_term                               | a whole number of months, 1 to 480        |
//! | num_late_payments, inquiries_last_6m    | a whole number, 0 to 1000 (optional)      |
//! | num_bankruptcies                        | a whole number, 0 to 100 (optional)       |
//! | employment_status, home_ownership, loan_purpose | a known value                     |
//!
//! Every number must be finite. Absent optional fields become "missing" (NaN) for the model;
//! an absent required field is a violation.

use std::borrow::Cow;

use crate::application::{Application, EmploymentStatus, HomeOwnership, LoanPurpose};

/// Longest accepted `application_id`, in bytes.
pub const MAX_APPLICATION_ID_BYTES: usize = 256;

/// Longest unknown category spelling kept in a violation or the decision log, in bytes.
const MAX_ECHOED_NAME_BYTES: usize = 64;

/// One invalid field of a request, as in `google.rpc.BadRequest.FieldViolation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Field name as in the contract, e.g. "credit_score".
    pub field: &'static str,
    /// What is wrong and what is accepted.
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: &'static str, description: impl Into<String>) -> Self {
        FieldViolation {
            field,
            description: description.into(),
        }
    }
}

/// A categorical field as sent: absent, a contract code (gRPC enums: 1-based position in the
/// domain enum's `ALL`, 0 for UNSPECIFIED), or a spelling (REST, Parquet: `self_employed`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Category {
    #[default]
    Absent,
    Code(i32),
    Name(String),
}

impl Category {
    /// The spelling of a known value, from a domain value.
    pub fn of<T: CategoryValue>(v: Option<T>) -> Category {
        v.map_or(Category::Absent, |v| Category::Name(v.name().to_owned()))
    }

    /// How the decision log records it: the snake_case name of a known value, `unspecified`
    /// for code 0, `unknown(<n>)` for an unknown code, `unknown:<text>` (at most 64 bytes of
    /// it) for an unknown spelling; `None` when absent.
    /// Allocates only for an unknown value.
    pub fn recorded<T: CategoryValue>(&self) -> Option<Cow<'static, str>> {
        match self {
            Category::Absent => None,
            Category::Code(0) => Some(Cow::Borrowed("unspecified")),
            Category::Code(c) => Some(match T::from_code(*c) {
                Some(v) => Cow::Borrowed(v.name()),
                None => Cow::Owned(format!("unknown({c})")),
            }),
            Category::Name(s) => Some(match T::parse(s) {
                Some(v) => Cow::Borrowed(v.name()),
                None => Cow::Owned(format!("unknown:{}", truncated(s, MAX_ECHOED_NAME_BYTES))),
            }),
        }
    }
}

/// The domain enums of the three categorical inputs.
pub trait CategoryValue: Copy + PartialEq + 'static {
    const ALL: &'static [Self];
    fn name(self) -> &'static str;
    fn parse(s: &str) -> Option<Self>;
    /// The contract code: 1-based position in `ALL`.
    fn from_code(code: i32) -> Option<Self> {
        usize::try_from(code)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| Self::ALL.get(i).copied())
    }
    fn code(self) -> i32 {
        Self::ALL
            .iter()
            .position(|x| *x == self)
            .map_or(0, |i| i as i32 + 1)
    }
    fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|v| v.name()).collect()
    }
}

macro_rules! category_value {
    ($t:ty) => {
        impl CategoryValue for $t {
            const ALL: &'static [Self] = <$t>::ALL;
            fn name(self) -> &'static str {
                self.as_str()
            }
            fn parse(s: &str) -> Option<Self> {
                <$t>::parse(s)
            }
        }
    };
}
category_value!(EmploymentStatus);
category_value!(HomeOwnership);
category_value!(LoanPurpose);

/// An application exactly as received. Numbers are `f64` whatever the transport sent (every
/// contract integer is exact in an `f64`); `None` is an absent field.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApplicationInput {
    pub application_id: String,
    pub age: Option<f64>,
    pub income: Option<f64>,
    pub employment_length: Option<f64>,
    pub credit_score: Option<f64>,
    pub num_credit_lines: Option<f64>,
    pub credit_utilization: Option<f64>,
    pub debt_to_income: Option<f64>,
    pub total_debt: Option<f64>,
    pub savings: Option<f64>,
    pub loan_amount: Option<f64>,
    pub loan_term: Option<f64>,
    pub num_late_payments: Option<f64>,
    pub num_bankruptcies: Option<f64>,
    pub inquiries_last_6m: Option<f64>,
    pub employment_status: Category,
    pub home_ownership: Category,
    pub loan_purpose: Category,
}

/// A client's number as written in a violation: plain when that is short, else in exponent
/// form, so that a description stays short whatever was sent (`{}` writes 1e300 in 301 digits).
fn compact(v: f64) -> String {
    let plain = v.to_string();
    if plain.len() <= 24 {
        plain
    } else {
        format!("{v:e}")
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncated(s: &str, max: usize) -> &str {
    let mut cut = s.len().min(max);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// Collects violations while the fields are checked one by one.
struct Checker {
    violations: Vec<FieldViolation>,
}

impl Checker {
    /// `v`, or a violation saying the field is required and what is accepted (`accepted` is
    /// only formatted then: validation allocates nothing for a valid field).
    fn required(
        &mut self,
        field: &'static str,
        v: Option<f64>,
        accepted: impl FnOnce() -> String,
    ) -> Option<f64> {
        if v.is_none() {
            self.violations.push(FieldViolation::new(
                field,
                format!("is required; must be {}", accepted()),
            ));
        }
        v
    }

    /// A real number within `[min, max]` (`min_exclusive` makes the lower bound strict).
    fn real(
        &mut self,
        field: &'static str,
        v: Option<f64>,
        min: f64,
        min_exclusive: bool,
        max: f64,
    ) -> f64 {
        let Some(v) = self.required(field, v, || {
            format!(
                "a finite number {} and at most {max}",
                lower_bound(min, min_exclusive)
            )
        }) else {
            return f64::NAN;
        };
        self.real_value(field, v, min, min_exclusive, max)
    }

    fn real_value(
        &mut self,
        field: &'static str,
        v: f64,
        min: f64,
        min_exclusive: bool,
        max: f64,
    ) -> f64 {
        let ok = v.is_finite() && (if min_exclusive { v > min } else { v >= min }) && v <= max;
        if !ok {
            let what = if v.is_finite() {
                compact(v)
            } else {
                "not a finite number".to_string()
            };
            self.violations.push(FieldViolation::new(
                field,
                format!(
                    "must be a finite number {} and at most {max}; got {what}",
                    lower_bound(min, min_exclusive)
                ),
            ));
        }
        v
    }

    /// An optional real number: absent means missing (NaN).
    fn opt_real(&mut self, field: &'static str, v: Option<f64>, min: f64, max: f64) -> f64 {
        v.map_or(f64::NAN, |v| self.real_value(field, v, min, false, max))
    }

    /// A whole number within `[min, max]`.
    fn int(&mut self, field: &'static str, v: Option<f64>, min: i32, max: i32) -> f64 {
        match self.required(field, v, || {
            format!("a whole number between {min} and {max}")
        }) {
            Some(v) => self.int_value(field, v, min, max),
            None => f64::NAN,
        }
    }

    fn int_value(&mut self, field: &'static str, v: f64, min: i32, max: i32) -> f64 {
        if !(v.is_finite() && v.fract() == 0.0 && v >= f64::from(min) && v <= f64::from(max)) {
            let what = if v.is_finite() {
                compact(v)
            } else {
                "not a finite number".to_string()
            };
            let whole = if v.is_finite() && v.fract() != 0.0 {
                "a whole number "
            } else {
                ""
            };
            self.violations.push(FieldViolation::new(
                field,
                format!("must be {whole}between {min} and {max}; got {what}"),
            ));
        }
        v
    }

    /// An optional whole number: absent means missing (NaN).
    fn opt_int(&mut self, field: &'static str, v: Option<f64>, min: i32, max: i32) -> f64 {
        v.map_or(f64::NAN, |v| self.int_value(field, v, min, max))
    }

    /// A category that is present and known.
    fn category<T: CategoryValue>(&mut self, field: &'static str, v: &Category) -> Option<T> {
        let found = match v {
            Category::Absent | Category::Code(0) => None,
            Category::Code(c) => T::from_code(*c),
            Category::Name(s) => T::parse(s),
        };
        if found.is_none() {
            let why = match v {
                Category::Absent => "is missing".to_string(),
                Category::Code(0) => "is missing (UNSPECIFIED)".to_string(),
                Category::Code(c) => format!("has unknown value {c}"),
                Category::Name(s) => format!(
                    "has unknown value {:?}",
                    truncated(s, MAX_ECHOED_NAME_BYTES)
                ),
            };
            self.violations.push(FieldViolation::new(
                field,
                format!("{why}; must be one of {}", T::names().join(", ")),
            ));
        }
        found
    }
}

/// "greater than MIN" or "at least MIN".
fn lower_bound(min: f64, exclusive: bool) -> String {
    if exclusive {
        format!("greater than {min}")
    } else {
        format!("at least {min}")
    }
}

impl ApplicationInput {
    /// Checks every field and returns the domain application, or all the violations found.
    pub fn validate(&self) -> Result<Application, Vec<FieldViolation>> {
        let a = self;
        let mut c = Checker {
            violations: Vec::new(),
        };
        if a.application_id.len() > MAX_APPLICATION_ID_BYTES {
            c.violations.push(FieldViolation::new(
                "application_id",
                format!(
                    "must be at most {MAX_APPLICATION_ID_BYTES} bytes; got {}",
                    a.application_id.len()
                ),
            ));
        }
        let app = Application {
            age: c.int("age", a.age, 18, 120),
            income: c.real("income", a.income, 0.0, true, 1e9),
            employment_length: c.real("employment_length", a.employment_length, 0.0, false, 80.0),
            credit_score: c.opt_int("credit_score", a.credit_score, 300, 850),
            num_credit_lines: c.opt_int("num_credit_lines", a.num_credit_lines, 0, 1000),
            credit_utilization: c.opt_real("credit_utilization", a.credit_utilization, 0.0, 10.0),
            debt_to_income: c.real("debt_to_income", a.debt_to_income, 0.0, false, 100.0),
            total_debt: c.real("total_debt", a.total_debt, 0.0, false, 1e10),
            savings: c.real("savings", a.savings, 0.0, false, 1e10),
            loan_amount: c.real("loan_amount", a.loan_amount, 0.0, true, 1e9),
            loan_term: c.int("loan_term", a.loan_term, 1, 480),
            num_late_payments: c.opt_int("num_late_payments", a.num_late_payments, 0, 1000),
            num_bankruptcies: c.opt_int("num_bankruptcies", a.num_bankruptcies, 0, 100),
            inquiries_last_6m: c.opt_int("inquiries_last_6m", a.inquiries_last_6m, 0, 1000),
            employment_status: c.category("employment_status", &a.employment_status),
            home_ownership: c.category("home_ownership", &a.home_ownership),
            loan_purpose: c.category("loan_purpose", &a.loan_purpose),
        };
        if c.violations.is_empty() {
            Ok(app)
        } else {
            Err(c.violations)
        }
    }

    /// The input form of a domain application (the inverse of [`Self::validate`] for a valid
    /// one): missing numbers become absent fields, categories their spelling.
    pub fn from_application(a: &Application, application_id: impl Into<String>) -> Self {
        let opt = |v: f64| (!v.is_nan()).then_some(v);
        ApplicationInput {
            application_id: application_id.into(),
            age: Some(a.age),
            income: Some(a.income),
            employment_length: Some(a.employment_length),
            credit_score: opt(a.credit_score),
            num_credit_lines: opt(a.num_credit_lines),
            credit_utilization: opt(a.credit_utilization),
            debt_to_income: Some(a.debt_to_income),
            total_debt: Some(a.total_debt),
            savings: Some(a.savings),
            loan_amount: Some(a.loan_amount),
            loan_term: Some(a.loan_term),
            num_late_payments: opt(a.num_late_payments),
            num_bankruptcies: opt(a.num_bankruptcies),
            inquiries_last_6m: opt(a.inquiries_last_6m),
            employment_status: Category::of(a.employment_status),
            home_ownership: Category::of(a.home_ownership),
            loan_purpose: Category::of(a.loan_purpose),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_round_trips() {
        let a = Application::example();
        let back = ApplicationInput::from_application(&a, "x")
            .validate()
            .unwrap();
        assert_eq!(format!("{a:?}"), format!("{back:?}"));
    }

    #[test]
    fn codes_line_up_with_the_domain_enums() {
        for (i, v) in EmploymentStatus::ALL.iter().enumerate() {
            assert_eq!(v.code(), i as i32 + 1);
            assert_eq!(EmploymentStatus::from_code(v.code()), Some(*v));
        }
        assert_eq!(LoanPurpose::from_code(0), None);
        assert_eq!(LoanPurpose::from_code(99), None);
    }

    #[test]
    fn numbers_in_descriptions_stay_short() {
        let mut input = ApplicationInput::from_application(&Application::example(), "");
        input.income = Some(1e300);
        input.age = Some(-1e300);
        let v = input.validate().unwrap_err();
        assert_eq!(v.len(), 2);
        assert!(v.iter().all(|v| v.description.len() < 120), "{v:?}");
    }

    #[test]
    fn absent_optionals_are_missing_not_errors() {
        let mut input = ApplicationInput::from_application(&Application::example(), "");
        input.credit_score = None;
        input.num_late_payments = None;
        let a = input.validate().unwrap();
        assert!(a.credit_score.is_nan() && a.num_late_payments.is_nan());
    }

    #[test]
    fn every_bad_field_is_reported() {
        let input = ApplicationInput {
            application_id: "x".repeat(300),
            age: Some(17.0),
            income: Some(f64::NAN),
            employment_length: None,
            credit_score: Some(299.5),
            loan_term: Some(0.0),
            employment_status: Category::Code(0),
            home_ownership: Category::Code(42),
            loan_purpose: Category::Name("yacht".into()),
            ..Default::default()
        };
        let v = input.validate().unwrap_err();
        let fields: Vec<_> = v.iter().map(|v| v.field).collect();
        for f in [
            "application_id",
            "age",
            "income",
            "employment_length",
            "credit_score",
            "debt_to_income",
            "total_debt",
            "savings",
            "loan_amount",
            "loan_term",
            "employment_status",
            "home_ownership",
            "loan_purpose",
        ] {
            assert!(fields.contains(&f), "{f} not reported: {v:?}");
        }
        let by = |f: &str| &v.iter().find(|v| v.field == f).unwrap().description;
        assert!(
            by("credit_score").contains("whole number"),
            "{}",
            by("credit_score")
        );
        assert!(by("employment_status").contains("UNSPECIFIED"));
        assert!(by("home_ownership").contains("unknown value 42"));
        assert!(by("loan_purpose").contains("\"yacht\""));
        assert!(by("employment_length").starts_with("is required"));
    }

    #[test]
    fn categories_are_recorded_as_sent() {
        assert_eq!(
            Category::Code(0).recorded::<LoanPurpose>().as_deref(),
            Some("unspecified")
        );
        assert_eq!(
            Category::Code(77).recorded::<LoanPurpose>().as_deref(),
            Some("unknown(77)")
        );
        assert_eq!(
            Category::Name("auto".into())
                .recorded::<LoanPurpose>()
                .as_deref(),
            Some("auto")
        );
        assert_eq!(
            Category::Name("x".repeat(100))
                .recorded::<LoanPurpose>()
                .unwrap()
                .len(),
            "unknown:".len() + 64
        );
        assert_eq!(Category::Absent.recorded::<LoanPurpose>(), None);
    }
}
