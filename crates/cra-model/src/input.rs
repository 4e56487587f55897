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

/// The field of a decode error that concerns the application as a whole (it is not an object,
/// say): validation then reports the decode errors alone.
pub const WHOLE_APPLICATION: &str = "application";

/// A numeric field of the contract and what validation accepts: the one table behind
/// [`ApplicationInput::validate`], the REST API's OpenAPI document and the Open Inference
/// Protocol's model metadata.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NumberField {
    pub name: &'static str,
    /// A whole number (stored as `f64`, like every number).
    pub integer: bool,
    /// Absent is a violation; an optional field absent is "missing" (a credit-bureau field of
    /// an applicant without a bureau file).
    pub required: bool,
    pub min: f64,
    /// `min` itself is refused ("greater than").
    pub min_exclusive: bool,
    pub max: f64,
}

const fn number(
    name: &'static str,
    integer: bool,
    required: bool,
    min: f64,
    min_exclusive: bool,
    max: f64,
) -> NumberField {
    NumberField {
        name,
        integer,
        required,
        min,
        min_exclusive,
        max,
    }
}

/// The 14 numeric fields, in contract order (the order of [`ApplicationInput::numbers`]).
pub const NUMBER_FIELDS: [NumberField; 14] = [
    number("age", true, true, 18.0, false, 120.0),
    number("income", false, true, 0.0, true, 1e9),
    number("employment_length", false, true, 0.0, false, 80.0),
    number("credit_score", true, false, 300.0, false, 850.0),
    number("num_credit_lines", true, false, 0.0, false, 1000.0),
    number("credit_utilization", false, false, 0.0, false, 10.0),
    number("debt_to_income", false, true, 0.0, false, 100.0),
    number("total_debt", false, true, 0.0, false, 1e10),
    number("savings", false, true, 0.0, false, 1e10),
    number("loan_amount", false, true, 0.0, true, 1e9),
    number("loan_term", true, true, 1.0, false, 480.0),
    number("num_late_payments", true, false, 0.0, false, 1000.0),
    number("num_bankruptcies", true, false, 0.0, false, 100.0),
    number("inquiries_last_6m", true, false, 0.0, false, 1000.0),
];

/// The three categorical fields, in contract order, and their accepted spellings.
pub fn category_fields() -> [(&'static str, Vec<&'static str>); 3] {
    [
        ("employment_status", EmploymentStatus::names()),
        ("home_ownership", HomeOwnership::names()),
        ("loan_purpose", LoanPurpose::names()),
    ]
}

/// One invalid field of a request, as in `google.rpc.BadRequest.FieldViolation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Field name as in the contract, e.g. "credit_score"; a transport may make it a path
    /// ("applications[3].age") or name a field the contract does not have.
    pub field: Cow<'static, str>,
    /// What is wrong and what is accepted.
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<Cow<'static, str>>, description: impl Into<String>) -> Self {
        FieldViolation {
            field: field.into(),
            description: description.into(),
        }
    }

    /// The same violation with its field inside `prefix` (`applications[3]` + `age` →
    /// `applications[3].age`).
    pub fn within(self, prefix: &str) -> FieldViolation {
        FieldViolation {
            field: Cow::Owned(format!("{prefix}.{}", self.field)),
            description: self.description,
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
    /// What the transport could not read into the fields below (a string where a number
    /// belongs, a field the contract does not have): reported by [`Self::validate`] first, in
    /// place of what it would say of the fields they name. Empty for typed transports.
    pub decode_errors: Vec<FieldViolation>,
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
    /// The numeric fields as sent, in the order of [`NUMBER_FIELDS`].
    pub fn numbers(&self) -> [Option<f64>; 14] {
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

    /// The numeric field at position `i` of [`NUMBER_FIELDS`], to set it.
    pub fn number_mut(&mut self, i: usize) -> Option<&mut Option<f64>> {
        Some(match i {
            0 => &mut self.age,
            1 => &mut self.income,
            2 => &mut self.employment_length,
            3 => &mut self.credit_score,
            4 => &mut self.num_credit_lines,
            5 => &mut self.credit_utilization,
            6 => &mut self.debt_to_income,
            7 => &mut self.total_debt,
            8 => &mut self.savings,
            9 => &mut self.loan_amount,
            10 => &mut self.loan_term,
            11 => &mut self.num_late_payments,
            12 => &mut self.num_bankruptcies,
            13 => &mut self.inquiries_last_6m,
            _ => return None,
        })
    }

    /// The categorical field at position `i` of [`category_fields`], to set it.
    pub fn category_mut(&mut self, i: usize) -> Option<&mut Category> {
        Some(match i {
            0 => &mut self.employment_status,
            1 => &mut self.home_ownership,
            2 => &mut self.loan_purpose,
            _ => return None,
        })
    }

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
        let given = a.numbers();
        let mut n = [f64::NAN; 14];
        for ((f, v), out) in NUMBER_FIELDS.iter().zip(given).zip(&mut n) {
            *out = match (f.integer, f.required) {
                (true, true) => c.int(f.name, v, f.min as i32, f.max as i32),
                (true, false) => c.opt_int(f.name, v, f.min as i32, f.max as i32),
                (false, true) => c.real(f.name, v, f.min, f.min_exclusive, f.max),
                (false, false) => c.opt_real(f.name, v, f.min, f.max),
            };
        }
        let app = Application {
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
            employment_status: c.category("employment_status", &a.employment_status),
            home_ownership: c.category("home_ownership", &a.home_ownership),
            loan_purpose: c.category("loan_purpose", &a.loan_purpose),
        };
        if a.decode_errors.iter().any(|d| d.field == WHOLE_APPLICATION) {
            // Nothing of it could be read: what is wrong with each field says nothing more.
            return Err(a.decode_errors.clone());
        }
        if !a.decode_errors.is_empty() {
            let decoded = &a.decode_errors;
            c.violations
                .retain(|v| !decoded.iter().any(|d| d.field == v.field));
            c.violations.splice(0..0, decoded.iter().cloned());
        }
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
            decode_errors: Vec::new(),
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
mod field_table_tests {
    use super::*;

    fn valid() -> ApplicationInput {
        ApplicationInput::from_application(&Application::example(), "t")
    }

    /// Every bound of the table is the bound validation applies: the bounds themselves are
    /// accepted (an exclusive minimum refused), a step beyond each is refused, and an absent
    /// field is refused exactly when the table says it is required.
    #[test]
    fn the_field_table_is_what_validation_accepts() {
        for (i, f) in NUMBER_FIELDS.iter().enumerate() {
            let step = if f.integer {
                1.0
            } else {
                f.max.abs().max(1.0) * 1e-6
            };
            let with = |v: Option<f64>| {
                let mut a = valid();
                *a.number_mut(i).unwrap() = v;
                a.validate()
                    .err()
                    .map(|v| v.iter().map(|v| v.field.to_string()).collect::<Vec<_>>())
            };
            assert_eq!(with(Some(f.max)), None, "{} at its max", f.name);
            assert_eq!(
                with(Some(f.max + step)),
                Some(vec![f.name.to_string()]),
                "{} over",
                f.name
            );
            if f.min_exclusive {
                assert!(
                    with(Some(f.min)).is_some(),
                    "{} at its exclusive min",
                    f.name
                );
                assert_eq!(with(Some(f.min + step)), None, "{} above its min", f.name);
            } else {
                assert_eq!(with(Some(f.min)), None, "{} at its min", f.name);
                assert!(with(Some(f.min - step)).is_some(), "{} under", f.name);
            }
            if f.integer {
                assert!(with(Some(f.min + 0.5)).is_some(), "{} fractional", f.name);
            }
            assert_eq!(with(None).is_some(), f.required, "{} absent", f.name);
        }
        for (i, (name, values)) in category_fields().into_iter().enumerate() {
            for v in &values {
                let mut a = valid();
                *a.category_mut(i).unwrap() = Category::Name((*v).to_string());
                assert!(a.validate().is_ok(), "{name} = {v}");
            }
            let mut a = valid();
            *a.category_mut(i).unwrap() = Category::Name("astronaut".into());
            assert!(a.validate().is_err(), "{name} unknown");
        }
    }

    #[test]
    fn decode_errors_come_first_and_replace_what_validation_says_of_their_fields() {
        let mut a = valid();
        a.age = None;
        a.decode_errors = vec![FieldViolation::new("age", "must be a number; got a string")];
        a.income = Some(-1.0);
        let v = a.validate().unwrap_err();
        let fields: Vec<&str> = v.iter().map(|v| v.field.as_ref()).collect();
        assert_eq!(fields, ["age", "income"]);
        assert!(v[0].description.contains("got a string"));
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
            decode_errors: Vec::new(),
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
        let fields: Vec<_> = v.iter().map(|v| v.field.as_ref()).collect();
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
