//! Applications in Arrow record batches, and decisions back into Arrow columns: the one
//! reading and writing of Arrow data, shared by `cra score` (Parquet files) and the Python
//! package (pyarrow tables through the Arrow C Data Interface). Cargo feature `arrow`.
//!
//! Input columns (names are case-sensitive; other columns, e.g. `default` or `true_pd`, are
//! ignored and never read):
//!
//! | column                      | accepted Arrow types                                          |
//! |-----------------------------|---------------------------------------------------------------|
//! | the 14 [`NUMERIC_INPUTS`]   | Int8/16/32/64, UInt8/16/32/64, Float32, Float64               |
//! | the 3 [`CATEGORICAL_INPUTS`]| Utf8, LargeUtf8, Utf8View, or a dictionary of one of them     |
//! | `application_id` (optional) | those strings, or any integer type (written as decimal text)  |
//!
//! Every column may hold nulls, and a column whose Arrow type is `Null` (every value null, as
//! pyarrow writes an all-`None` column) is accepted for each of them. Nothing is judged here: a
//! null number is an absent field, a NaN stays NaN and an unknown category stays its spelling,
//! for [`ApplicationInput::validate`] to name.
//!
//! Output columns, in order: the id (`application_id` Utf8, or `row` UInt64, the 0-based row
//! number), then `probability_default` Float64, `risk_score` Float64, `risk_level` Utf8,
//! `prediction` Int8 (0/1), `margin` Float64, `model_version` Utf8 and `error` Utf8 (every
//! violation of an invalid row); with explanations, `reason_codes`, `reasons`, `base_margin` and
//! `contribution_<feature>` per model feature.

use std::sync::Arc;

use arrow::{
    array::{
        Array, ArrayRef, ArrowPrimitiveType, AsArray, Float64Array, Int8Array, RecordBatch,
        StringArray, UInt64Array,
    },
    compute::cast,
    datatypes::{
        DataType, Field, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type,
        Schema, SchemaRef, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
    },
};

use crate::application::{EmploymentStatus, HomeOwnership, LoanPurpose};
use crate::application::{CATEGORICAL_INPUTS, NUMERIC_INPUTS};
use crate::explain::Explanation;
use crate::input::{ApplicationInput, Category, CategoryValue};

/// The optional input column, and the output id column when the input has it.
pub const APPLICATION_ID_COLUMN: &str = "application_id";

/// The output id column when the input has no `application_id`: the 0-based input row number.
pub const ROW_COLUMN: &str = "row";

/// The output columns after the id column, in order.
pub const OUTPUT_SCORE_COLUMNS: [&str; 7] = [
    "probability_default",
    "risk_score",
    "risk_level",
    "prediction",
    "margin",
    "model_version",
    "error",
];

/// The numeric types accepted for the numeric inputs, as named in errors.
pub const ACCEPTED_NUMERIC: &str =
    "Int8, Int16, Int32, Int64, UInt8, UInt16, UInt32, UInt64, Float32 or Float64";

/// The string types accepted for the categorical inputs, as named in errors.
pub const ACCEPTED_STRING: &str = "Utf8, LargeUtf8, Utf8View, or a dictionary of one of them";

/// The types accepted for `application_id`, as named in errors.
pub const ACCEPTED_APPLICATION_ID: &str =
    "a string (Utf8, LargeUtf8, Utf8View, or a dictionary of one of them) or an integer type";

/// Every schema problem of `what` (a file, a table) at once, and what an input needs.
pub fn schema_message(what: &str, missing: &[String], mistyped: &[String]) -> String {
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!("it lacks the column(s) {}", missing.join(", ")));
    }
    if !mistyped.is_empty() {
        problems.push(format!(
            "column(s) of the wrong type: {}",
            mistyped.join("; ")
        ));
    }
    format!(
        "{} cannot be scored: {}. An input needs the numeric columns {} ({ACCEPTED_NUMERIC}) \
         and the categorical columns {} ({ACCEPTED_STRING}); {APPLICATION_ID_COLUMN} is optional \
         and other columns are ignored",
        what,
        problems.join("; "),
        NUMERIC_INPUTS.join(", "),
        CATEGORICAL_INPUTS.join(", "),
    )
}

// ---------------------------------------------------------------------------------------------
// Where each input column goes in an `ApplicationInput`.

/// Gives access to one numeric field of an [`ApplicationInput`].
type NumericSlot = fn(&mut ApplicationInput) -> &mut Option<f64>;

/// Gives access to one categorical field of an [`ApplicationInput`].
type CategorySlot = fn(&mut ApplicationInput) -> &mut Category;

/// `[(field name, accessor)]` for the listed fields of [`ApplicationInput`].
macro_rules! field_slots {
    ($field_type:ty; $($field:ident),+ $(,)?) => {
        [$((stringify!($field), {
            fn slot(input: &mut ApplicationInput) -> &mut $field_type {
                &mut input.$field
            }
            slot as fn(&mut ApplicationInput) -> &mut $field_type
        })),+]
    };
}

/// The numeric fields, in [`NUMERIC_INPUTS`] order (checked at compile time below).
const NUMERIC_SLOTS: [(&str, NumericSlot); NUMERIC_INPUTS.len()] = field_slots!(
    Option<f64>;
    age,
    income,
    employment_length,
    credit_score,
    num_credit_lines,
    credit_utilization,
    debt_to_income,
    total_debt,
    savings,
    loan_amount,
    loan_term,
    num_late_payments,
    num_bankruptcies,
    inquiries_last_6m,
);

/// The categorical fields, in [`CATEGORICAL_INPUTS`] order (checked at compile time below).
const CATEGORY_SLOTS: [(&str, CategorySlot); CATEGORICAL_INPUTS.len()] =
    field_slots!(Category; employment_status, home_ownership, loan_purpose);

/// The contract code of a known spelling, for each field of [`CATEGORY_SLOTS`] in its order: a
/// known value is kept as its code, which validation and the decision log read exactly as they
/// read its spelling, without a string allocated per row; an unknown spelling is kept as
/// written, for validation to name.
const CATEGORY_CODES: [fn(&str) -> Option<i32>; CATEGORICAL_INPUTS.len()] = [
    code_of::<EmploymentStatus>,
    code_of::<HomeOwnership>,
    code_of::<LoanPurpose>,
];

fn code_of<T: CategoryValue>(spelling: &str) -> Option<i32> {
    T::parse(spelling).map(T::code)
}

/// Whether two strings are equal, usable in a constant.
const fn same_str(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Whether `slots` names exactly `names`, in order.
const fn slots_follow<T, const N: usize>(slots: &[(&str, T); N], names: &[&str; N]) -> bool {
    let mut i = 0;
    while i < N {
        if !same_str(slots[i].0, names[i]) {
            return false;
        }
        i += 1;
    }
    true
}

// If cra-model renames, adds or reorders an input, this module stops compiling here instead of
// silently leaving a field unread.
const _: () = assert!(
    slots_follow(&NUMERIC_SLOTS, &NUMERIC_INPUTS),
    "NUMERIC_SLOTS must list cra_model::application::NUMERIC_INPUTS, in order"
);
const _: () = assert!(
    slots_follow(&CATEGORY_SLOTS, &CATEGORICAL_INPUTS),
    "CATEGORY_SLOTS must list cra_model::application::CATEGORICAL_INPUTS, in order"
);

// ---------------------------------------------------------------------------------------------
// Accepted column types.

fn is_integer_type(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
    )
}

fn is_numeric_type(data_type: &DataType) -> bool {
    is_integer_type(data_type)
        || matches!(
            data_type,
            DataType::Float32 | DataType::Float64 | DataType::Null
        )
}

fn is_plain_string_type(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

fn is_string_type(data_type: &DataType) -> bool {
    match data_type {
        DataType::Dictionary(_, values) => is_plain_string_type(values),
        other => is_plain_string_type(other) || matches!(other, DataType::Null),
    }
}

fn is_application_id_type(data_type: &DataType) -> bool {
    is_string_type(data_type) || is_integer_type(data_type)
}

/// What is wrong with an input's columns: the required ones it lacks, and one entry per badly
/// typed column ("name is TYPE; accepted: ...").
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SchemaProblems {
    pub missing: Vec<String>,
    pub mistyped: Vec<String>,
}

/// Checks that every input column is present once with an accepted type, and that an
/// `application_id` column, if any, is too. Returns the index of `application_id`.
pub fn check_schema(schema: &Schema) -> Result<Option<usize>, SchemaProblems> {
    let mut missing = Vec::new();
    let mut mistyped = Vec::new();
    let mut check = |name: &str, required: bool, accepted: fn(&DataType) -> bool, what: &str| {
        let matches: Vec<(usize, &Field)> = schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, field)| field.name() == name)
            .map(|(index, field)| (index, field.as_ref()))
            .collect();
        match matches.as_slice() {
            [] => {
                if required {
                    let other_case = schema
                        .fields()
                        .iter()
                        .find(|field| field.name().eq_ignore_ascii_case(name));
                    missing.push(match other_case {
                        Some(field) => format!(
                            "{name} (there is a column {:?}: names are case-sensitive)",
                            field.name()
                        ),
                        None => name.to_owned(),
                    });
                }
                None
            }
            [(index, field)] => {
                if !accepted(field.data_type()) {
                    mistyped.push(format!("{name} is {}; accepted: {what}", field.data_type()));
                }
                Some(*index)
            }
            several => {
                mistyped.push(format!(
                    "{name} appears {} times; keep one column of that name",
                    several.len()
                ));
                None
            }
        }
    };
    for name in NUMERIC_INPUTS {
        check(name, true, is_numeric_type, ACCEPTED_NUMERIC);
    }
    for name in CATEGORICAL_INPUTS {
        check(name, true, is_string_type, ACCEPTED_STRING);
    }
    let application_id_index = check(
        APPLICATION_ID_COLUMN,
        false,
        is_application_id_type,
        ACCEPTED_APPLICATION_ID,
    );
    if missing.is_empty() && mistyped.is_empty() {
        Ok(application_id_index)
    } else {
        Err(SchemaProblems { missing, mistyped })
    }
}

/// A column that could not be read into applications, and what it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reading column {column}: {message}; write the column as {accepted}")]
pub struct DecodeError {
    pub column: &'static str,
    pub message: String,
    pub accepted: &'static str,
}

/// The applications of one record batch, exactly as it holds them: a null number is an absent
/// field, a NaN stays NaN and an unknown category stays its spelling, for
/// [`ApplicationInput::validate`] to name. The batch's schema must have passed
/// [`check_schema`]; other columns are ignored.
pub fn decode_batch(batch: &RecordBatch) -> Result<Vec<ApplicationInput>, DecodeError> {
    let mut inputs = vec![ApplicationInput::default(); batch.num_rows()];
    // Column by column over a block of rows small enough to stay in cache: column by column
    // over the whole batch would bring every application back from memory for each column.
    for (k, block) in inputs.chunks_mut(DECODE_BLOCK).enumerate() {
        decode_block(&batch.slice(k * DECODE_BLOCK, block.len()), block)?;
    }
    Ok(inputs)
}

/// Rows decoded column by column at a time (about 90 KB of applications).
const DECODE_BLOCK: usize = 256;

/// [`decode_batch`] of `batch` into `inputs`, one per row.
fn decode_block(batch: &RecordBatch, inputs: &mut [ApplicationInput]) -> Result<(), DecodeError> {
    let decode_error =
        |column: &'static str, message: String, accepted: &'static str| DecodeError {
            column,
            message,
            accepted,
        };
    let column = |name: &'static str, accepted: &'static str| {
        batch.column_by_name(name).ok_or_else(|| {
            decode_error(
                name,
                "the column is missing from the decoded batch".into(),
                accepted,
            )
        })
    };
    for (name, slot) in NUMERIC_SLOTS {
        let values = column(name, ACCEPTED_NUMERIC)?;
        fill_numeric(values.as_ref(), inputs, slot)
            .map_err(|message| decode_error(name, message, ACCEPTED_NUMERIC))?;
    }
    for ((name, slot), code_of) in CATEGORY_SLOTS.into_iter().zip(CATEGORY_CODES) {
        let values = column(name, ACCEPTED_STRING)?;
        fill_category(values.as_ref(), inputs, slot, code_of)
            .map_err(|message| decode_error(name, message, ACCEPTED_STRING))?;
    }
    if let Some(values) = batch.column_by_name(APPLICATION_ID_COLUMN) {
        fill_application_id(values.as_ref(), inputs).map_err(|message| {
            decode_error(APPLICATION_ID_COLUMN, message, ACCEPTED_APPLICATION_ID)
        })?;
    }
    Ok(())
}

/// An error unless `column` has one value per application.
fn check_length(column: &dyn Array, inputs: &[ApplicationInput]) -> Result<(), String> {
    if column.len() == inputs.len() {
        Ok(())
    } else {
        Err(format!(
            "the column holds {} values for {} rows",
            column.len(),
            inputs.len()
        ))
    }
}

/// Sets one numeric field of every application from `column`: null → `None`, a value →
/// `Some(value as f64)` (NaN stays NaN; every integer up to 2^53 is exact).
fn fill_numeric(
    column: &dyn Array,
    inputs: &mut [ApplicationInput],
    slot: NumericSlot,
) -> Result<(), String> {
    check_length(column, inputs)?;
    match column.data_type() {
        DataType::Null => {
            inputs.iter_mut().for_each(|input| *slot(input) = None);
            Ok(())
        }
        DataType::Int8 => fill_primitive::<Int8Type>(column, inputs, slot, f64::from),
        DataType::Int16 => fill_primitive::<Int16Type>(column, inputs, slot, f64::from),
        DataType::Int32 => fill_primitive::<Int32Type>(column, inputs, slot, f64::from),
        DataType::Int64 => fill_primitive::<Int64Type>(column, inputs, slot, |v| v as f64),
        DataType::UInt8 => fill_primitive::<UInt8Type>(column, inputs, slot, f64::from),
        DataType::UInt16 => fill_primitive::<UInt16Type>(column, inputs, slot, f64::from),
        DataType::UInt32 => fill_primitive::<UInt32Type>(column, inputs, slot, f64::from),
        DataType::UInt64 => fill_primitive::<UInt64Type>(column, inputs, slot, |v| v as f64),
        DataType::Float32 => fill_primitive::<Float32Type>(column, inputs, slot, f64::from),
        DataType::Float64 => fill_primitive::<Float64Type>(column, inputs, slot, |v| v),
        other => Err(format!("the column is {other}")),
    }
}

fn fill_primitive<T: ArrowPrimitiveType>(
    column: &dyn Array,
    inputs: &mut [ApplicationInput],
    slot: NumericSlot,
    to_f64: impl Fn(T::Native) -> f64,
) -> Result<(), String> {
    let values = column
        .as_primitive_opt::<T>()
        .ok_or_else(|| format!("the column is not a readable {}", T::DATA_TYPE))?;
    for (input, value) in inputs.iter_mut().zip(values.iter()) {
        *slot(input) = value.map(&to_f64);
    }
    Ok(())
}

/// Sets one categorical field of every application from `column`: null → `Absent`, a known
/// spelling → its `Code`, any other string → `Name(string)` as written (even an empty one:
/// validation names it).
fn fill_category(
    column: &dyn Array,
    inputs: &mut [ApplicationInput],
    slot: CategorySlot,
    code_of: fn(&str) -> Option<i32>,
) -> Result<(), String> {
    check_length(column, inputs)?;
    for_each_string(column, |row, value| {
        if let Some(input) = inputs.get_mut(row) {
            *slot(input) = match value {
                None => Category::Absent,
                Some(s) => code_of(s).map_or_else(|| Category::Name(s.to_owned()), Category::Code),
            };
        }
    })
}

/// Sets `application_id` of every application from `column`: a string as written, an integer
/// in decimal, null → empty.
fn fill_application_id(column: &dyn Array, inputs: &mut [ApplicationInput]) -> Result<(), String> {
    check_length(column, inputs)?;
    fn integers<T: ArrowPrimitiveType>(
        column: &dyn Array,
        inputs: &mut [ApplicationInput],
    ) -> Result<(), String>
    where
        T::Native: std::fmt::Display,
    {
        let values = column
            .as_primitive_opt::<T>()
            .ok_or_else(|| format!("the column is not a readable {}", T::DATA_TYPE))?;
        for (input, value) in inputs.iter_mut().zip(values.iter()) {
            input.application_id = value.map(|v| v.to_string()).unwrap_or_default();
        }
        Ok(())
    }
    match column.data_type() {
        DataType::Int8 => integers::<Int8Type>(column, inputs),
        DataType::Int16 => integers::<Int16Type>(column, inputs),
        DataType::Int32 => integers::<Int32Type>(column, inputs),
        DataType::Int64 => integers::<Int64Type>(column, inputs),
        DataType::UInt8 => integers::<UInt8Type>(column, inputs),
        DataType::UInt16 => integers::<UInt16Type>(column, inputs),
        DataType::UInt32 => integers::<UInt32Type>(column, inputs),
        DataType::UInt64 => integers::<UInt64Type>(column, inputs),
        _ => for_each_string(column, |row, value| {
            if let Some(input) = inputs.get_mut(row) {
                input.application_id = value.unwrap_or_default().to_owned();
            }
        }),
    }
}

/// Calls `visit(row, value)` for every row of a string column (`None` for a null); a
/// dictionary is unpacked one batch at a time.
fn for_each_string(
    column: &dyn Array,
    mut visit: impl FnMut(usize, Option<&str>),
) -> Result<(), String> {
    let not_readable = || format!("the column is not a readable {}", column.data_type());
    match column.data_type() {
        DataType::Null => {
            (0..column.len()).for_each(|row| visit(row, None));
            Ok(())
        }
        DataType::Utf8 => {
            let strings = column.as_string_opt::<i32>().ok_or_else(not_readable)?;
            strings
                .iter()
                .enumerate()
                .for_each(|(row, v)| visit(row, v));
            Ok(())
        }
        DataType::LargeUtf8 => {
            let strings = column.as_string_opt::<i64>().ok_or_else(not_readable)?;
            strings
                .iter()
                .enumerate()
                .for_each(|(row, v)| visit(row, v));
            Ok(())
        }
        DataType::Utf8View => {
            let strings = column.as_string_view_opt().ok_or_else(not_readable)?;
            strings
                .iter()
                .enumerate()
                .for_each(|(row, v)| visit(row, v));
            Ok(())
        }
        DataType::Dictionary(_, values) if is_plain_string_type(values) => {
            let unpacked =
                cast(column, values).map_err(|e| format!("cannot unpack the dictionary: {e}"))?;
            for_each_string(unpacked.as_ref(), visit)
        }
        other => Err(format!("the column is {other}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Writing.

/// The first column of an output file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdColumn {
    /// `application_id` (Utf8): the input's `application_id`, as read.
    ApplicationId,
    /// `row` (UInt64): the 0-based row number in the input file.
    RowNumber,
}

/// The scores of one application, as written to the output.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoredColumns<'a> {
    pub probability_default: f64,
    pub risk_score: f64,
    pub risk_level: &'a str,
    /// 0 or 1.
    pub prediction: u8,
    pub margin: f64,
    pub model_version: &'a str,
}

/// One output row: scores for a scored application, or `error` for one that was not scored.
/// Both are written as given.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutputRow<'a> {
    /// 0-based row number in the input file (written when the id column is [`IdColumn::RowNumber`]).
    pub row: u64,
    /// Written when the id column is [`IdColumn::ApplicationId`].
    pub application_id: &'a str,
    /// `None` writes nulls in the score columns and `model_version`.
    pub scored: Option<ScoredColumns<'a>>,
    /// `None` writes a null `error`.
    pub error: Option<&'a str>,
}

/// The schema of an output file whose first column is `id`, with the explanation columns
/// (`reason_codes`, `reasons`, `base_margin`, then `contribution_<feature>` per model feature)
/// when `explain`.
pub fn output_schema_with(id: IdColumn, explain: bool) -> SchemaRef {
    let base = output_schema(id);
    if !explain {
        return base;
    }
    let mut fields: Vec<Field> = base.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("reason_codes", DataType::Utf8, true));
    fields.push(Field::new("reasons", DataType::Utf8, true));
    fields.push(Field::new("base_margin", DataType::Float64, true));
    for f in crate::preprocess::feature_names() {
        fields.push(Field::new(
            format!("contribution_{f}"),
            DataType::Float64,
            true,
        ));
    }
    Arc::new(Schema::new(fields))
}

/// The schema of an output file whose first column is `id`.
pub fn output_schema(id: IdColumn) -> SchemaRef {
    let id_field = match id {
        IdColumn::ApplicationId => Field::new(APPLICATION_ID_COLUMN, DataType::Utf8, false),
        IdColumn::RowNumber => Field::new(ROW_COLUMN, DataType::UInt64, false),
    };
    let [probability_default, risk_score, risk_level, prediction, margin, model_version, error] =
        OUTPUT_SCORE_COLUMNS;
    Arc::new(Schema::new(vec![
        id_field,
        Field::new(probability_default, DataType::Float64, true),
        Field::new(risk_score, DataType::Float64, true),
        Field::new(risk_level, DataType::Utf8, true),
        Field::new(prediction, DataType::Int8, true),
        Field::new(margin, DataType::Float64, true),
        Field::new(model_version, DataType::Utf8, true),
        Field::new(error, DataType::Utf8, true),
    ]))
}

/// The `error` text of an invalid row: every violation, `field: description`, joined by `; `.
pub fn violations_text(v: &[crate::input::FieldViolation]) -> String {
    v.iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The `error` text of each item: every violation of an invalid one, `None` for a scored one.
/// The rows of [`output_rows`] borrow them.
pub fn error_texts(items: &[crate::decide::Item]) -> Vec<Option<String>> {
    items
        .iter()
        .map(|item| match item {
            crate::decide::Item::Invalid(v) => Some(violations_text(v)),
            crate::decide::Item::Scored { .. } => None,
        })
        .collect()
}

/// The output rows of `items`, the decisions on `inputs` in the same order, the first of them
/// at row `first_row` of the input: the scores of each scored one (`version_of` names the model
/// of each live member), or its text in `errors` (from [`error_texts`]). The one mapping from
/// decisions to output rows, for `cra score` and the Python package.
pub fn output_rows<'a>(
    first_row: u64,
    inputs: &'a [ApplicationInput],
    items: &'a [crate::decide::Item],
    errors: &'a [Option<String>],
    version_of: impl Fn(usize) -> &'a str,
) -> Vec<OutputRow<'a>> {
    inputs
        .iter()
        .zip(items)
        .zip(errors)
        .enumerate()
        .map(|(i, ((input, item), error))| OutputRow {
            row: first_row + i as u64,
            application_id: &input.application_id,
            scored: match item {
                crate::decide::Item::Scored {
                    member, decision, ..
                } => Some(ScoredColumns {
                    probability_default: decision.probability_default,
                    risk_score: decision.risk_score,
                    risk_level: decision.risk_level.as_str(),
                    prediction: decision.prediction,
                    margin: f64::from(decision.margin),
                    model_version: version_of(*member),
                }),
                crate::decide::Item::Invalid(_) => None,
            },
            error: error.as_deref(),
        })
        .collect()
}

/// The explanation of each item, where it has one.
pub fn explanations_of(items: &[crate::decide::Item]) -> Vec<Option<&Explanation>> {
    items
        .iter()
        .map(|item| match item {
            crate::decide::Item::Scored { explanation, .. } => explanation.as_deref(),
            crate::decide::Item::Invalid(_) => None,
        })
        .collect()
}

/// The output columns of `rows` under `schema` (from [`output_schema_with`] with the same `id`
/// and `explain`): each row's scores, or nulls and its `error`; with `explain`, each row's
/// explanation (`explanations[i]` for `rows[i]`; a missing entry is an unexplained row).
pub fn output_batch(
    schema: &SchemaRef,
    id: IdColumn,
    explain: bool,
    rows: &[OutputRow<'_>],
    explanations: &[Option<&Explanation>],
) -> Result<RecordBatch, String> {
    let id: ArrayRef = match id {
        IdColumn::ApplicationId => Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.application_id),
        )),
        IdColumn::RowNumber => Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.row))),
    };
    let numbers = |value: fn(&ScoredColumns<'_>) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter(
            rows.iter().map(|r| r.scored.as_ref().map(value)),
        ))
    };
    let mut columns: Vec<ArrayRef> = vec![
        id,
        numbers(|s| s.probability_default),
        numbers(|s| s.risk_score),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.scored.map(|s| s.risk_level)),
        )),
        Arc::new(Int8Array::from_iter(
            rows.iter()
                .map(|r| r.scored.map(|s| i8::from(s.prediction == 1))),
        )),
        numbers(|s| s.margin),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.scored.map(|s| s.model_version)),
        )),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.error))),
    ];
    if explain {
        let e = |i: usize| explanations.get(i).copied().flatten();
        let n = rows.len();
        let join = |f: fn(&crate::explain::Reason) -> String, sep: &str| -> ArrayRef {
            Arc::new(StringArray::from_iter((0..n).map(|i| {
                e(i).map(|x| x.reasons.iter().map(f).collect::<Vec<_>>().join(sep))
            })))
        };
        columns.push(join(|r| r.code.clone(), " "));
        columns.push(join(
            |r| {
                let fifth = if r.fifth_factor {
                    " (fifth key factor)"
                } else {
                    ""
                };
                format!("{}: {}{fifth}", r.code, r.description)
            },
            "; ",
        ));
        columns.push(Arc::new(Float64Array::from_iter(
            (0..n).map(|i| e(i).map(|x| x.base_margin)),
        )));
        for f in 0..crate::NUM_FEATURES {
            columns.push(Arc::new(Float64Array::from_iter((0..n).map(|i| {
                e(i).and_then(|x| x.contributions.get(f))
                    .map(|c| c.contribution)
            }))));
        }
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_tables_cover_every_input_field() {
        let mut input = ApplicationInput::default();
        for (index, (_, slot)) in NUMERIC_SLOTS.iter().enumerate() {
            *slot(&mut input) = Some(index as f64);
        }
        for (_, slot) in CATEGORY_SLOTS {
            *slot(&mut input) = Category::Code(1);
        }
        // Every field was reached once: no slot points at another's field.
        let numbers = [
            input.age,
            input.income,
            input.employment_length,
            input.credit_score,
            input.num_credit_lines,
            input.credit_utilization,
            input.debt_to_income,
            input.total_debt,
            input.savings,
            input.loan_amount,
            input.loan_term,
            input.num_late_payments,
            input.num_bankruptcies,
            input.inquiries_last_6m,
        ];
        let expected: Vec<Option<f64>> = (0..14).map(|i| Some(f64::from(i))).collect();
        assert_eq!(numbers.to_vec(), expected);
        assert_eq!(input.employment_status, Category::Code(1));
        assert_eq!(input.home_ownership, Category::Code(1));
        assert_eq!(input.loan_purpose, Category::Code(1));
    }

    /// A batch of several decoding blocks, with nulls, NaN, unknown spellings and a
    /// dictionary column: every row gets its own values, whatever block it falls in.
    #[test]
    fn every_row_of_a_batch_of_many_blocks_is_decoded_as_written() {
        use arrow::array::{
            ArrayRef, DictionaryArray, Float64Array, Int64Array, StringArray, UInt32Array,
        };
        use arrow::datatypes::Int16Type;
        let rows = 2 * DECODE_BLOCK + 37;
        let number = |i: usize, c: usize| -> Option<f64> {
            match (i + c) % 11 {
                0 => None,
                1 if c == 1 => Some(f64::NAN),
                _ => Some((i * 100 + c) as f64),
            }
        };
        let mut columns: Vec<(&str, ArrayRef)> = NUMERIC_INPUTS
            .iter()
            .enumerate()
            .map(|(c, &name)| -> (&str, ArrayRef) {
                if c % 2 == 0 {
                    let v: Int64Array = (0..rows).map(|i| number(i, c).map(|x| x as i64)).collect();
                    (name, Arc::new(v))
                } else {
                    let v: Float64Array = (0..rows).map(|i| number(i, c)).collect();
                    (name, Arc::new(v))
                }
            })
            .collect();
        let spelling = |i: usize| match i % 5 {
            0 => None,
            1 => Some("retired"),
            2 => Some("not-a-status"),
            _ => Some("employed"),
        };
        let status: DictionaryArray<Int16Type> = (0..rows).map(spelling).collect();
        let home: StringArray = (0..rows)
            .map(|i| Some(if i % 3 == 0 { "own" } else { "rent" }))
            .collect();
        let purpose: StringArray = (0..rows).map(|_| Some("education")).collect();
        columns.push((CATEGORICAL_INPUTS[0], Arc::new(status)));
        columns.push((CATEGORICAL_INPUTS[1], Arc::new(home)));
        columns.push((CATEGORICAL_INPUTS[2], Arc::new(purpose)));
        let ids: UInt32Array = (0..rows).map(|i| Some(i as u32 * 7)).collect();
        columns.push((APPLICATION_ID_COLUMN, Arc::new(ids)));
        let batch = RecordBatch::try_from_iter(columns).unwrap();

        let inputs = decode_batch(&batch).unwrap();
        assert_eq!(inputs.len(), rows);
        for (i, input) in inputs.iter().enumerate() {
            for (c, got) in input.numbers().into_iter().enumerate() {
                let want = number(i, c);
                assert_eq!(
                    got.map(f64::to_bits),
                    want.map(f64::to_bits),
                    "row {i}, column {c}"
                );
            }
            let want_status = match spelling(i) {
                None => Category::Absent,
                Some("not-a-status") => Category::Name("not-a-status".into()),
                Some(s) => Category::Code(EmploymentStatus::parse(s).unwrap().code()),
            };
            assert_eq!(input.employment_status, want_status, "row {i}");
            let want_home = if i % 3 == 0 { "own" } else { "rent" };
            assert_eq!(
                input.home_ownership,
                Category::Code(HomeOwnership::parse(want_home).unwrap().code()),
                "row {i}"
            );
            assert_eq!(input.application_id, (i * 7).to_string(), "row {i}");
        }
    }
}
