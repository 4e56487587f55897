//! The Open Inference Protocol, version 2 (KServe V2), without a transport: the model's
//! metadata, input tensors read into applications, and the output tensors of scored ones.
//! The gRPC adapter (`grpc::inference`) and the HTTP one (`http::v2`) turn their wire forms
//! into [`InputTensor`]s and back from [`OutputTensor`]s; scoring is the core's
//! [`Scorer::score_all`](crate::scoring::Scorer::score_all), the same as every entry point.
//!
//! The model `credit-risk` is routed through the registry (champion, challengers, shadows);
//! every loaded bundle can also be addressed by its own version, as the model name or as the
//! version of `credit-risk`.
//!
//! Inputs: one tensor per contract field, named as the field, batch dimension first (`[N]` or
//! `[N, 1]`). Numbers may be FP64, FP32, INT64 or INT32; NaN means missing and is allowed only
//! for the six credit-bureau fields. Categories are BYTES in the original's lowercase
//! spelling. An optional BYTES `application_id`.
pub mod tensor;

use std::sync::Arc;

use cra_model::{
    input::{category_fields, NUMBER_FIELDS},
    ApplicationInput, Category, FieldViolation,
};
use uuid::Uuid;

pub use tensor::{Data, DataType, InputTensor, OutputTensor};

use crate::scoring::{BatchAnswer, Item, ModelSet, ScoreError, Scorer};

/// The routed model's name.
pub const MODEL_NAME: &str = "credit-risk";
/// The platform reported in model metadata.
pub const PLATFORM: &str = "cra_xgboost";
/// The server's name in server metadata.
pub const SERVER_NAME: &str = "cra";
/// Protocol extensions served: the HTTP binary tensor data extension (as tritonclient uses).
pub const EXTENSIONS: &[&str] = &["binary_tensor_data"];

/// The input tensor of an optional application id.
pub const APPLICATION_ID: &str = "application_id";

/// The output tensors, in the order they are returned.
pub const OUTPUTS: [(&str, DataType); 6] = [
    ("probability_default", DataType::Fp64),
    ("risk_score", DataType::Fp64),
    ("prediction", DataType::Int32),
    ("risk_level", DataType::Bytes),
    ("model_version", DataType::Bytes),
    ("decision_id", DataType::Bytes),
];

/// A model name and version no loaded model answers to.
#[derive(Debug, thiserror::Error)]
#[error("no model {name:?}{}; the models are {MODEL_NAME} and the loaded versions: {known}", version_text(.version))]
pub struct ModelNotFound {
    pub name: String,
    pub version: String,
    pub known: String,
}

fn version_text(v: &str) -> String {
    if v.is_empty() {
        String::new()
    } else {
        format!(" at version {v:?}")
    }
}

/// The models a name and version address: `credit-risk` (routed), `credit-risk` at a loaded
/// version, or a loaded version as the name (at no version or its own).
pub fn resolve(scorer: &Scorer, name: &str, version: &str) -> Result<Arc<ModelSet>, ModelNotFound> {
    let set = scorer.models();
    let pinned = match (name, version) {
        (MODEL_NAME, "") => return Ok(set),
        (MODEL_NAME, v) => set.pinned(v),
        (n, "") => set.pinned(n),
        (n, v) if n == v => set.pinned(n),
        _ => None,
    };
    pinned.map(Arc::new).ok_or_else(|| ModelNotFound {
        name: name.to_owned(),
        version: version.to_owned(),
        known: set
            .members()
            .map(|m| m.bundle.version().to_owned())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// One tensor of a model's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorMetadata {
    pub name: &'static str,
    pub datatype: DataType,
    /// `-1` is the batch dimension.
    pub shape: Vec<i64>,
}

/// A model's metadata: what a generic client needs to build a request.
#[derive(Debug, Clone)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: &'static str,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// The metadata of `name` (as [`resolve`] reads it).
pub fn metadata(
    scorer: &Scorer,
    name: &str,
    version: &str,
) -> Result<ModelMetadata, ModelNotFound> {
    let set = resolve(scorer, name, version)?;
    let versions = if name == MODEL_NAME && version.is_empty() {
        set.members()
            .map(|m| m.bundle.version().to_owned())
            .collect()
    } else {
        vec![set.champion().bundle.version().to_owned()]
    };
    let batch = vec![-1];
    let mut inputs: Vec<TensorMetadata> = NUMBER_FIELDS
        .iter()
        .map(|f| TensorMetadata {
            name: f.name,
            datatype: DataType::Fp64,
            shape: batch.clone(),
        })
        .collect();
    inputs.extend(category_fields().iter().map(|(name, _)| TensorMetadata {
        name,
        datatype: DataType::Bytes,
        shape: batch.clone(),
    }));
    inputs.push(TensorMetadata {
        name: APPLICATION_ID,
        datatype: DataType::Bytes,
        shape: batch.clone(),
    });
    let outputs = OUTPUTS
        .iter()
        .map(|(name, datatype)| TensorMetadata {
            name,
            datatype: *datatype,
            shape: batch.clone(),
        })
        .collect();
    Ok(ModelMetadata {
        name: name.to_owned(),
        versions,
        platform: PLATFORM,
        inputs,
        outputs,
    })
}

/// Where a tensor's values go.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Number(usize),
    Category(usize),
    ApplicationId,
}

fn slot_of(name: &str) -> Option<Slot> {
    if let Some(i) = NUMBER_FIELDS.iter().position(|f| f.name == name) {
        return Some(Slot::Number(i));
    }
    if let Some(i) = category_fields().iter().position(|(n, _)| *n == name) {
        return Some(Slot::Category(i));
    }
    (name == APPLICATION_ID).then_some(Slot::ApplicationId)
}

fn slot_name(slot: Slot) -> &'static str {
    match slot {
        Slot::Number(i) => NUMBER_FIELDS[i].name,
        Slot::Category(i) => category_fields()[i].0,
        Slot::ApplicationId => APPLICATION_ID,
    }
}

/// The rows of a tensor's shape: `[N]` or `[N, 1]`.
fn rows_of(shape: &[i64]) -> Option<usize> {
    match shape {
        [n] | [n, 1] if *n >= 0 => usize::try_from(*n).ok(),
        _ => None,
    }
}

/// Reads the input tensors of a request into one application per row. Tensor-level problems
/// (an unknown or repeated name, a wrong datatype or shape, a required field's tensor absent,
/// rows that disagree) name the tensor; a value that cannot be read (a NaN outside the bureau
/// fields, a category that is not UTF-8) stays with its row, for validation to report.
pub fn inputs_from_tensors(
    tensors: Vec<InputTensor>,
    max_rows: usize,
) -> Result<Vec<ApplicationInput>, ScoreError> {
    let mut violations = Vec::new();
    let mut rows: Option<usize> = None;
    let mut seen: Vec<(Slot, InputTensor)> = Vec::with_capacity(tensors.len());
    for t in tensors {
        let Some(slot) = slot_of(&t.name) else {
            violations.push(FieldViolation::new(
                "inputs",
                format!(
                    "{:?} is not an input of this model; see its metadata for the inputs",
                    crate::http::body::truncate(&t.name, 64)
                ),
            ));
            continue;
        };
        let name = slot_name(slot);
        if seen.iter().any(|(s, _)| slot_name(*s) == name) {
            violations.push(FieldViolation::new(name, "is given more than once"));
            continue;
        }
        let Some(n) = rows_of(&t.shape) else {
            violations.push(FieldViolation::new(
                name,
                format!("has shape {:?}; it must be [N] or [N, 1] (N rows)", t.shape),
            ));
            continue;
        };
        if t.data.len() != n {
            violations.push(FieldViolation::new(
                name,
                format!("has shape {:?} but holds {} values", t.shape, t.data.len()),
            ));
            continue;
        }
        let type_ok = match slot {
            Slot::Number(_) => t.data.is_numeric(),
            Slot::Category(_) | Slot::ApplicationId => matches!(t.data, Data::Bytes(_)),
        };
        if !type_ok {
            let expected = match slot {
                Slot::Number(_) => "FP64, FP32, INT64 or INT32",
                _ => "BYTES",
            };
            violations.push(FieldViolation::new(
                name,
                format!("has datatype {}; it must be {expected}", t.datatype),
            ));
            continue;
        }
        match rows {
            None => rows = Some(n),
            Some(r) if r != n => {
                violations.push(FieldViolation::new(
                    name,
                    format!("has {n} rows; the other inputs have {r}"),
                ));
                continue;
            }
            Some(_) => {}
        }
        seen.push((slot, t));
    }
    for (i, f) in NUMBER_FIELDS.iter().enumerate() {
        if !seen
            .iter()
            .any(|(s, _)| matches!(s, Slot::Number(j) if *j == i))
        {
            violations.push(FieldViolation::new(
                f.name,
                if f.required {
                    "is required: an input tensor with one value per row"
                } else {
                    "is required: an input tensor with one value per row (NaN where the applicant has no credit-bureau file)"
                },
            ));
        }
    }
    for (i, (name, _)) in category_fields().iter().enumerate() {
        if !seen
            .iter()
            .any(|(s, _)| matches!(s, Slot::Category(j) if *j == i))
        {
            violations.push(FieldViolation::new(
                *name,
                "is required: a BYTES input tensor with one value per row",
            ));
        }
    }
    let rows = rows.unwrap_or(0);
    if violations.is_empty() && rows == 0 {
        violations.push(FieldViolation::new(
            "inputs",
            "hold no rows; the batch dimension must be at least 1",
        ));
    }
    if rows > max_rows {
        return Err(ScoreError::TooManyItems {
            limit: max_rows,
            field: "inputs",
        });
    }
    if !violations.is_empty() {
        return Err(ScoreError::InvalidArgument(violations));
    }
    let mut inputs = vec![ApplicationInput::default(); rows];
    for (slot, t) in seen {
        match (slot, t.data) {
            (Slot::Number(i), data) => {
                let name = NUMBER_FIELDS[i].name;
                let missing_ok = !NUMBER_FIELDS[i].required;
                for (row, input) in inputs.iter_mut().enumerate() {
                    let v = data.number(row);
                    if v.is_nan() {
                        if !missing_ok {
                            input.decode_errors.push(FieldViolation::new(
                                name,
                                "is NaN (missing); only the six credit-bureau fields may be missing",
                            ));
                        }
                    } else {
                        *input.number_mut(i).expect("a field of NUMBER_FIELDS") = Some(v);
                    }
                }
            }
            (Slot::Category(i), Data::Bytes(values)) => {
                let name = category_fields()[i].0;
                for (input, v) in inputs.iter_mut().zip(values) {
                    match String::from_utf8(v) {
                        Ok(s) => {
                            *input.category_mut(i).expect("a field of category_fields") =
                                Category::Name(s)
                        }
                        Err(_) => input
                            .decode_errors
                            .push(FieldViolation::new(name, "is not UTF-8 text")),
                    }
                }
            }
            (Slot::ApplicationId, Data::Bytes(values)) => {
                for (input, v) in inputs.iter_mut().zip(values) {
                    match String::from_utf8(v) {
                        Ok(s) => input.application_id = s,
                        Err(_) => input
                            .decode_errors
                            .push(FieldViolation::new(APPLICATION_ID, "is not UTF-8 text")),
                    }
                }
            }
            _ => {} // datatypes were checked above
        }
    }
    Ok(inputs)
}

/// The outputs a client asked for (all when `requested` is empty), in the order asked; an
/// unknown name is a violation.
pub fn outputs_for(requested: &[String]) -> Result<Vec<(&'static str, DataType)>, ScoreError> {
    if requested.is_empty() {
        return Ok(OUTPUTS.to_vec());
    }
    let mut out = Vec::with_capacity(requested.len());
    let mut violations = Vec::new();
    for name in requested {
        match OUTPUTS.iter().find(|(n, _)| n == name) {
            Some(o) => out.push(*o),
            None => violations.push(FieldViolation::new(
                "outputs",
                format!(
                    "{:?} is not an output of this model; the outputs are {}",
                    crate::http::body::truncate(name, 64),
                    OUTPUTS.map(|(n, _)| n).join(", ")
                ),
            )),
        }
    }
    if violations.is_empty() {
        Ok(out)
    } else {
        Err(ScoreError::InvalidArgument(violations))
    }
}

/// The output tensors of a scored batch.
pub fn output_tensors(
    answer: &BatchAnswer,
    outputs: &[(&'static str, DataType)],
    batch_shape: &[i64],
) -> Vec<OutputTensor> {
    let scored: Vec<_> = answer
        .items
        .iter()
        .filter_map(|item| match item {
            Item::Scored {
                member, decision, ..
            } => Some((*member, decision)),
            Item::Invalid(_) => None,
        })
        .collect();
    outputs
        .iter()
        .map(|(name, datatype)| {
            let data = match *name {
                "probability_default" => {
                    Data::Fp64(scored.iter().map(|(_, d)| d.probability_default).collect())
                }
                "risk_score" => Data::Fp64(scored.iter().map(|(_, d)| d.risk_score).collect()),
                "prediction" => Data::Int32(
                    scored
                        .iter()
                        .map(|(_, d)| i32::from(d.prediction))
                        .collect(),
                ),
                "risk_level" => Data::Bytes(
                    scored
                        .iter()
                        .map(|(_, d)| d.risk_level.as_str().as_bytes().to_vec())
                        .collect(),
                ),
                "model_version" => Data::Bytes(
                    scored
                        .iter()
                        .map(|(m, _)| answer.set.live[*m].bundle.version().as_bytes().to_vec())
                        .collect(),
                ),
                _ => Data::Bytes(
                    answer
                        .decision_ids
                        .iter()
                        .map(|id| decision_id_bytes(*id))
                        .collect(),
                ),
            };
            OutputTensor {
                name,
                datatype: *datatype,
                shape: batch_shape.to_vec(),
                data,
            }
        })
        .collect()
}

/// A decision id as text; empty when the decision log is off.
fn decision_id_bytes(id: Uuid) -> Vec<u8> {
    if id.is_nil() {
        Vec::new()
    } else {
        id.to_string().into_bytes()
    }
}

/// The batch dimension of the outputs: `[N]`, or `[N, 1]` when the inputs were so shaped.
pub fn output_shape(first_input_shape: Option<&[i64]>, rows: usize) -> Vec<i64> {
    match first_input_shape {
        Some([_, 1]) => vec![rows as i64, 1],
        _ => vec![rows as i64],
    }
}
