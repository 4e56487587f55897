//! A JSON application (the original REST API's body) read into an [`ApplicationInput`]
//! without judging its values: validation stays the core's. What cannot be read (a string
//! where a number belongs, `true` for an integer, a field the contract does not have) is kept
//! as a decode error of that field, so that the answer names every bad field at once and
//! nothing is silently converted or dropped.
//!
//! - numbers are JSON numbers; `null` or an absent key is an absent field (missing, for the
//!   six credit-bureau fields; a violation for the others);
//! - categories are JSON strings in the original's lowercase spelling (`"self_employed"`);
//! - `application_id` is an optional string.
use serde_json::{Map, Value};

use cra_model::{
    input::{category_fields, NUMBER_FIELDS, WHOLE_APPLICATION},
    ApplicationInput, Category, FieldViolation,
};

use super::body::{field_name, truncate};

/// The longest unknown key echoed in a violation, in bytes.
const MAX_ECHOED_KEY_BYTES: usize = 64;
/// At most this many unknown keys are reported (the rest are summed up).
const MAX_UNKNOWN_KEYS: usize = 8;

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(true) => "true",
        Value::Bool(false) => "false",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Every key a JSON application may have.
pub fn field_names() -> Vec<&'static str> {
    let mut names = vec!["application_id"];
    names.extend(NUMBER_FIELDS.iter().map(|f| f.name));
    names.extend(category_fields().iter().map(|(n, _)| *n));
    names
}

/// Reads one JSON application. A value that is not an object gives an input whose only
/// decode error says so.
pub fn application_from_json(v: &Value) -> ApplicationInput {
    let mut input = ApplicationInput::default();
    let Value::Object(map) = v else {
        input.decode_errors.push(FieldViolation::new(
            WHOLE_APPLICATION,
            format!(
                "must be a JSON object with the application's fields; got {}",
                kind(v)
            ),
        ));
        return input;
    };
    read_object(map, &mut input);
    input
}

fn read_object(map: &Map<String, Value>, input: &mut ApplicationInput) {
    let mut known = 0usize;
    for (i, f) in NUMBER_FIELDS.iter().enumerate() {
        let Some(v) = map.get(f.name) else { continue };
        known += 1;
        let slot = input
            .number_mut(i)
            .expect("NUMBER_FIELDS and number_mut agree");
        match v {
            Value::Null => {}
            Value::Number(n) => match n.as_f64() {
                Some(x) => *slot = Some(x),
                None => input.decode_errors.push(FieldViolation::new(
                    f.name,
                    format!("must be a number; {n} cannot be read as one"),
                )),
            },
            Value::String(s) => input.decode_errors.push(FieldViolation::new(
                f.name,
                format!(
                    "must be a JSON number, not a string; got {:?}",
                    truncate(s, MAX_ECHOED_KEY_BYTES)
                ),
            )),
            other => input.decode_errors.push(FieldViolation::new(
                f.name,
                format!("must be a JSON number; got {}", kind(other)),
            )),
        }
    }
    for (i, (name, values)) in category_fields().iter().enumerate() {
        let Some(v) = map.get(*name) else { continue };
        known += 1;
        let slot = input
            .category_mut(i)
            .expect("category_fields and category_mut agree");
        match v {
            Value::Null => {}
            Value::String(s) => *slot = Category::Name(s.clone()),
            other => input.decode_errors.push(FieldViolation::new(
                *name,
                format!(
                    "must be a string, one of {}; got {}",
                    values.join(", "),
                    kind(other)
                ),
            )),
        }
    }
    if let Some(v) = map.get("application_id") {
        known += 1;
        match v {
            Value::Null => {}
            Value::String(s) => input.application_id = s.clone(),
            other => input.decode_errors.push(FieldViolation::new(
                "application_id",
                format!("must be a string; got {}", kind(other)),
            )),
        }
    }
    if known < map.len() {
        let names = field_names();
        let unknown: Vec<&String> = map
            .keys()
            .filter(|k| !names.contains(&k.as_str()))
            .collect();
        for k in unknown.iter().take(MAX_UNKNOWN_KEYS) {
            input.decode_errors.push(FieldViolation::new(
                field_name(k, MAX_ECHOED_KEY_BYTES),
                format!(
                    "is not a field of an application (a misspelt field would otherwise be \
                     scored as missing); the fields are {}",
                    names.join(", ")
                ),
            ));
        }
        if unknown.len() > MAX_UNKNOWN_KEYS {
            input.decode_errors.push(FieldViolation::new(
                "unknown_fields",
                format!(
                    "{} more fields that are not fields of an application",
                    unknown.len() - MAX_UNKNOWN_KEYS
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn original_example() -> Value {
        json!({
            "age": 45, "income": 75000, "employment_length": 10, "credit_score": 720,
            "num_credit_lines": 5, "credit_utilization": 0.3, "debt_to_income": 0.35,
            "total_debt": 25000, "savings": 15000, "loan_amount": 20000, "loan_term": 36,
            "num_late_payments": 0, "num_bankruptcies": 0, "inquiries_last_6m": 1,
            "employment_status": "employed", "home_ownership": "mortgage",
            "loan_purpose": "debt_consolidation"
        })
    }

    fn bad_fields(v: Value) -> Vec<String> {
        match application_from_json(&v).validate() {
            Ok(_) => Vec::new(),
            Err(v) => v.into_iter().map(|v| v.field.into_owned()).collect(),
        }
    }

    #[test]
    fn the_original_example_is_valid() {
        let input = application_from_json(&original_example());
        assert!(input.decode_errors.is_empty());
        let app = input.validate().unwrap();
        assert_eq!(app.age, 45.0);
        assert_eq!(app.credit_utilization, 0.3);
    }

    #[test]
    fn wrong_json_types_are_violations_never_conversions() {
        for (field, value) in [
            ("age", json!("45")),
            ("age", json!(true)),
            ("loan_term", json!(36.5)),
            ("income", json!([1])),
            ("employment_status", json!(1)),
            ("application_id", json!(7)),
        ] {
            let mut v = original_example();
            v[field] = value.clone();
            assert_eq!(bad_fields(v), [field], "{field} = {value}");
        }
    }

    #[test]
    fn every_bad_field_is_named_once() {
        let mut v = original_example();
        v["age"] = json!("45");
        v["credit_score"] = json!(900);
        v["employment_status"] = json!("astronaut");
        v["income"] = json!(0);
        v.as_object_mut().unwrap().remove("loan_purpose");
        v["credit_scor"] = json!(700);
        let mut got = bad_fields(v);
        got.sort();
        assert_eq!(
            got,
            [
                "age",
                "credit_scor",
                "credit_score",
                "employment_status",
                "income",
                "loan_purpose"
            ]
        );
    }

    #[test]
    fn null_and_absent_bureau_fields_are_missing_but_required_ones_are_violations() {
        let mut v = original_example();
        v["credit_score"] = Value::Null;
        v.as_object_mut().unwrap().remove("num_bankruptcies");
        let app = application_from_json(&v).validate().unwrap();
        assert!(app.credit_score.is_nan() && app.num_bankruptcies.is_nan());
        let mut v = original_example();
        v["age"] = Value::Null;
        assert_eq!(bad_fields(v), ["age"]);
    }

    #[test]
    fn a_body_that_is_not_an_object_is_one_violation() {
        assert_eq!(bad_fields(json!([1, 2])), ["application"]);
    }

    /// Found by the fuzz target `rest_json` (`fuzz/corpus/rest_json/crash-empty-key`): an
    /// unknown key `""` gave a violation whose field was empty, naming nothing.
    #[test]
    fn an_empty_key_is_named_as_two_quotes() {
        let found = include_bytes!("../../fuzz/corpus/rest_json/crash-empty-key");
        let got = bad_fields(serde_json::from_slice(found).unwrap());
        assert!(got.contains(&"\"\"".to_owned()), "{got:?}");
        assert!(got.iter().all(|f| !f.is_empty()), "{got:?}");
    }
}
