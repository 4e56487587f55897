//! `cra._native`: CRA's model runtime (crates/cra-model) for Python, over Arrow.
//!
//! Data crosses through the Arrow C Data Interface (arrow-rs' `pyarrow` feature): a pyarrow
//! table comes in as Arrow arrays without a copy per row, its applications are read, validated,
//! routed, scored and explained by the same code as the server and `cra score`
//! ([`cra_model::arrow_io`], [`cra_model::decide`]), and the decisions go back as a pyarrow
//! table built in Rust. Scoring runs without the GIL, on several threads.
//!
//! The pure-Python part of the package (`cra/__init__.py`) accepts pandas DataFrames and
//! record batches and wraps these classes.
use std::{path::PathBuf, sync::Arc};

use arrow::{
    array::{ArrayRef, Float64Array, RecordBatch, RecordBatchReader, StringArray},
    datatypes::{DataType, Field, Schema, SchemaRef},
    ffi_stream::RecordBatchStreamReader,
    pyarrow::{FromPyArrow, PyArrowType, Table},
};
use cra_model::{
    application::{monthly_payment, payment_to_income, CATEGORICAL_INPUTS, NUMERIC_INPUTS},
    arrow_io::{self, IdColumn},
    decide::{decide, ExplainPolicy, Item},
    import::{import_bundle, BoosterFormat, ImportSpec},
    registry::{load_set, ModelSet, ModelSource},
    synthetic::{generate, GeneratorParams},
    Application,
};
use pyo3::{create_exception, exceptions::PyValueError, prelude::*};

create_exception!(
    _native,
    ModelError,
    pyo3::exceptions::PyException,
    "A model bundle or models file that cannot be loaded, or a model that cannot be imported; the message says what to fix."
);

/// Rows scored per work item: one tree pass, and one output record batch.
const CHUNK_ROWS: usize = 16_384;

/// A set of models loaded and verified: one bundle (`Model.load`) or a models file with a
/// champion, challengers and shadows (`Models.load`). Shadows are loaded and verified but do
/// not score here: the answers are the live models', routed as the server routes them.
#[pyclass(frozen, module = "cra._native")]
struct ModelSetHandle {
    set: Arc<ModelSet>,
}

#[pymethods]
impl ModelSetHandle {
    /// Loads the bundle in `path` (a directory), verifying it as the server does.
    #[staticmethod]
    fn load_bundle(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        Self::load(py, ModelSource::Bundle(path))
    }

    /// Loads the models file (TOML) at `path` and every bundle it names.
    #[staticmethod]
    fn load_file(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        Self::load(py, ModelSource::File(path))
    }

    /// `[(model_version, role, weight, dir)]`, live models first.
    fn members(&self) -> Vec<(String, String, u32, String)> {
        self.set
            .members()
            .map(|m| {
                (
                    m.bundle.version().to_owned(),
                    m.role.as_str().to_owned(),
                    m.weight,
                    m.dir.display().to_string(),
                )
            })
            .collect()
    }

    /// The bundle manifest (`bundle.json`) of the champion, as JSON text.
    fn manifest_json(&self) -> String {
        serde_json::to_string(&self.set.champion().bundle.manifest).unwrap_or_default()
    }

    /// Scores an Arrow stream (a pyarrow Table or RecordBatchReader, anything with
    /// `__arrow_c_stream__`) and returns the decisions as a pyarrow Table, one row per input
    /// row, in order. `explain`: every scored row's reasons and contributions. `threads`:
    /// scoring threads (0: the CPUs available). `row_offset`: the `row` id of the first row
    /// when the input has no `application_id`.
    #[pyo3(signature = (data, explain = false, threads = 0, row_offset = 0))]
    fn score(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        explain: bool,
        threads: usize,
        row_offset: u64,
    ) -> PyResult<PyArrowType<Table>> {
        let reader = RecordBatchStreamReader::from_pyarrow_bound(data)?;
        let schema = reader.schema();
        let has_id = arrow_io::check_schema(&schema)
            .map_err(|p| {
                PyValueError::new_err(arrow_io::schema_message(
                    "the data",
                    &p.missing,
                    &p.mistyped,
                ))
            })?
            .is_some();
        let batches: Vec<RecordBatch> = reader
            .collect::<Result<_, _>>()
            .map_err(|e| PyValueError::new_err(format!("reading the data: {e}")))?;
        let set = self.set.clone();
        let id = if has_id {
            IdColumn::ApplicationId
        } else {
            IdColumn::RowNumber
        };
        let out_schema = arrow_io::output_schema_with(id, explain);
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            threads
        };
        let scored = py.detach(|| {
            score_batches(
                &set,
                &batches,
                id,
                &out_schema,
                explain,
                threads,
                row_offset,
            )
        });
        let out = scored.map_err(PyValueError::new_err)?;
        let table =
            Table::try_new(out, out_schema).map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(PyArrowType(table))
    }
}

impl ModelSetHandle {
    fn load(py: Python<'_>, source: ModelSource) -> PyResult<Self> {
        let set = py
            .detach(|| load_set(&source, 1))
            .map_err(|e| ModelError::new_err(e.to_string()))?;
        Ok(ModelSetHandle { set: Arc::new(set) })
    }
}

/// One work item: rows `[start, end)` of `batches[batch]`.
struct Work {
    batch: usize,
    start: usize,
    end: usize,
}

/// Scores every batch in chunks of at most [`CHUNK_ROWS`] rows on `threads` threads; the
/// output batches are in input order.
fn score_batches(
    set: &ModelSet,
    batches: &[RecordBatch],
    id: IdColumn,
    schema: &SchemaRef,
    explain: bool,
    threads: usize,
    row_offset: u64,
) -> Result<Vec<RecordBatch>, String> {
    let mut work = Vec::new();
    let mut first_rows = Vec::with_capacity(batches.len());
    let mut row = row_offset;
    for (b, batch) in batches.iter().enumerate() {
        first_rows.push(row);
        row += batch.num_rows() as u64;
        let mut start = 0;
        while start < batch.num_rows() {
            let end = (start + CHUNK_ROWS).min(batch.num_rows());
            work.push(Work {
                batch: b,
                start,
                end,
            });
            start = end;
        }
    }
    let policy = if explain {
        ExplainPolicy::Always
    } else {
        ExplainPolicy::Never
    };
    let one = |w: &Work| -> Result<RecordBatch, String> {
        let slice = batches[w.batch].slice(w.start, w.end - w.start);
        let inputs = arrow_io::decode_batch(&slice).map_err(|e| e.to_string())?;
        let items = decide(set, &inputs, &[], policy, CHUNK_ROWS).map_err(|e| e.to_string())?;
        let first = first_rows[w.batch] + w.start as u64;
        output(set, schema, id, explain, first, &inputs, &items)
    };
    let threads = threads.clamp(1, work.len().max(1));
    if threads == 1 {
        return work.iter().map(one).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<Option<Result<RecordBatch, String>>> =
        (0..work.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(w) = work.get(i) else { break };
                        done.push((i, one(w)));
                    }
                    done
                })
            })
            .collect();
        for h in handles {
            // A thread that panicked leaves its chunks unscored: reported below.
            for (i, r) in h.join().unwrap_or_default() {
                results[i] = Some(r);
            }
        }
    });
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("a chunk was not scored".into())))
        .collect()
}

/// The output batch of one chunk, built by the same code as `cra score`'s output file.
fn output(
    set: &ModelSet,
    schema: &SchemaRef,
    id: IdColumn,
    explain: bool,
    first_row: u64,
    inputs: &[cra_model::ApplicationInput],
    items: &[Item],
) -> Result<RecordBatch, String> {
    let errors = arrow_io::error_texts(items);
    let rows = arrow_io::output_rows(first_row, inputs, items, &errors, |m| {
        set.live[m].bundle.version()
    });
    let explanations = arrow_io::explanations_of(items);
    arrow_io::output_batch(schema, id, explain, &rows, &explanations)
}

/// Writes the bundle of a booster (XGBoost JSON or UBJSON bytes) and a preprocessing spec
/// (JSON text) into `out` (which must not exist), verified against the spec's canaries, and
/// returns its model version. The code path of `cra import`.
#[pyfunction]
#[pyo3(signature = (booster, spec_json, out, reason_codes_json = None))]
fn import_model(
    py: Python<'_>,
    booster: Vec<u8>,
    spec_json: &str,
    out: PathBuf,
    reason_codes_json: Option<&str>,
) -> PyResult<String> {
    let spec: ImportSpec = serde_json::from_str(spec_json)
        .map_err(|e| PyValueError::new_err(format!("the preprocessing spec is not valid: {e}")))?;
    let reason_codes = reason_codes_json
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| {
            PyValueError::new_err(format!("the reason codes are not a reason-code table: {e}"))
        })?;
    let bundle = py
        .detach(|| import_bundle(&booster, None, &spec, reason_codes.as_ref(), &out))
        .map_err(|e| ModelError::new_err(e.to_string()))?;
    Ok(bundle.version().to_owned())
}

/// Synthetic applications from CRA's generator (`rows` at least 10, seeded), with the derived
/// `monthly_payment` and `payment_to_income` at `annual_rate`: the 19 columns a pipeline of the
/// original's shape reads, as a pyarrow Table. The exporter's canary rows come from here.
#[pyfunction]
#[pyo3(signature = (rows, seed, annual_rate = 0.10))]
fn synthetic_applications(
    rows: usize,
    seed: u64,
    annual_rate: f64,
) -> PyResult<PyArrowType<Table>> {
    let data = generate(&GeneratorParams {
        rows,
        seed,
        ..Default::default()
    })
    .map_err(|e| PyValueError::new_err(e.to_string()))?;
    let batch = applications_batch(&data.rows, annual_rate).map_err(PyValueError::new_err)?;
    let schema = batch.schema();
    let table =
        Table::try_new(vec![batch], schema).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(PyArrowType(table))
}

/// The 17 inputs and the 2 derived columns of `apps` (missing numbers as nulls).
fn applications_batch(apps: &[Application], annual_rate: f64) -> Result<RecordBatch, String> {
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    let opt = |v: f64| (!v.is_nan()).then_some(v);
    for (i, name) in NUMERIC_INPUTS.iter().enumerate() {
        fields.push(Field::new(*name, DataType::Float64, true));
        columns.push(Arc::new(Float64Array::from_iter(
            apps.iter().map(|a| opt(a.numerics()[i])),
        )));
    }
    let cats: [fn(&Application) -> Option<&'static str>; 3] = [
        |a| a.employment_status.map(|c| c.as_str()),
        |a| a.home_ownership.map(|c| c.as_str()),
        |a| a.loan_purpose.map(|c| c.as_str()),
    ];
    for (name, get) in CATEGORICAL_INPUTS.iter().zip(cats) {
        fields.push(Field::new(*name, DataType::Utf8, true));
        columns.push(Arc::new(StringArray::from_iter(apps.iter().map(get))));
    }
    let mp: Vec<f64> = apps
        .iter()
        .map(|a| monthly_payment(a.loan_amount, a.loan_term, annual_rate))
        .collect();
    fields.push(Field::new("monthly_payment", DataType::Float64, true));
    columns.push(Arc::new(Float64Array::from_iter(
        mp.iter().map(|v| opt(*v)),
    )));
    fields.push(Field::new("payment_to_income", DataType::Float64, true));
    columns.push(Arc::new(Float64Array::from_iter(
        apps.iter()
            .zip(&mp)
            .map(|(a, m)| opt(payment_to_income(*m, a.income))),
    )));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| e.to_string())
}

/// The booster file format a path's extension says ("json", "ubj"), or None.
#[pyfunction]
fn booster_format(path: PathBuf) -> Option<&'static str> {
    BoosterFormat::of_path(&path).map(|f| match f {
        BoosterFormat::Json => "json",
        BoosterFormat::Ubjson => "ubj",
    })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ModelSetHandle>()?;
    m.add_function(wrap_pyfunction!(import_model, m)?)?;
    m.add_function(wrap_pyfunction!(synthetic_applications, m)?)?;
    m.add_function(wrap_pyfunction!(booster_format, m)?)?;
    m.add("ModelError", m.py().get_type::<ModelError>())?;
    m.add("FEATURES", cra_model::preprocess::feature_names())?;
    m.add("NUMERIC_INPUTS", NUMERIC_INPUTS.to_vec())?;
    m.add("CATEGORICAL_INPUTS", CATEGORICAL_INPUTS.to_vec())?;
    let categories = pyo3::types::PyDict::new(m.py());
    for (name, values) in cra_model::input::category_fields() {
        categories.set_item(name, values)?;
    }
    m.add("CATEGORIES", categories)?;
    Ok(())
}
