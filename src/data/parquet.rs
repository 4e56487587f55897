//! Reading and writing application tables: Parquet through the arrow and parquet crates, and a
//! plain CSV of the same columns. A null cell is a missing value (NaN, or `None` for categoricals).
//!
//! Reading is builder-style, after arrow-rs: [`DatasetReader::open`] checks the file and its
//! schema, [`DatasetReader::with_batch_size`] tunes the batches, and [`DatasetReader::read`]
//! decodes only the projected columns (the 17 inputs, `default` and, when present, `true_pd`).

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    sync::Arc,
};

use arrow::{
    array::{
        Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    },
    compute::cast,
    datatypes::{DataType, Field, Float32Type, Float64Type, Int32Type, Int64Type, Schema},
};
use parquet::{
    arrow::{arrow_reader::ParquetRecordBatchReaderBuilder, ArrowWriter, ProjectionMask},
    basic::Compression,
    file::properties::WriterProperties,
};

use cra_model::application::{
    self, Application, EmploymentStatus, HomeOwnership, LoanPurpose, CATEGORICAL_INPUTS, DERIVED,
    LABEL, NUMERIC_INPUTS, TRUE_PD,
};
pub use cra_model::dataset::Dataset;
use cra_model::preprocess::DEFAULT_ANNUAL_RATE;

/// Numeric inputs that are counts or whole numbers; they are written as Int64 columns.
pub const INTEGER_INPUTS: [&str; 8] = [
    "age",
    "employment_length",
    "credit_score",
    "num_credit_lines",
    "loan_term",
    "num_late_payments",
    "num_bankruptcies",
    "inquiries_last_6m",
];

/// Default number of rows per decoded batch.
pub const DEFAULT_BATCH_SIZE: usize = 8192;

/// The most rows reserved up front from the count a file's footer declares; beyond it the
/// table grows as rows are actually decoded, so a footer that lies cannot make the reader
/// allocate for rows the file does not hold.
pub const MAX_RESERVED_ROWS: usize = 1 << 16;

/// Errors reading or writing an application table. Each names the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("data file {path} does not exist; generate one with `cra generate --out {path}`")]
    NotFound { path: PathBuf },
    #[error("cannot open {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a Parquet file ({source})")]
    NotParquet {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    #[error("{path} is missing the column(s) {}", .columns.join(", "))]
    MissingColumns { path: PathBuf, columns: Vec<String> },
    #[error("{path} has column(s) of the wrong type: {}", .columns.join("; "))]
    MistypedColumns {
        path: PathBuf,
        /// One entry per column: "name is TYPE, expected ...".
        columns: Vec<String>,
    },
    #[error("{path} has no rows")]
    Empty { path: PathBuf },
    #[error("{path} has an inconsistent Parquet footer: {problem}. The file is damaged or was not written by a Parquet writer; write it again")]
    Footer { path: PathBuf, problem: String },
    #[error("{path}: column {column}, row {row}: unknown value {value:?}; accepted values are {}", .accepted.join(", "))]
    UnknownCategory {
        path: PathBuf,
        column: String,
        row: usize,
        value: String,
        accepted: Vec<&'static str>,
    },
    #[error("{path}: column {LABEL}, row {row}: label must be 0 or 1, found {value}")]
    BadLabel {
        path: PathBuf,
        row: usize,
        value: String,
    },
    #[error("{path}: column {column}, row {row}: {value:?} is not a number")]
    BadNumber {
        path: PathBuf,
        column: String,
        row: usize,
        value: String,
    },
    #[error("{path}: malformed CSV: {message}")]
    Csv { path: PathBuf, message: String },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    #[error("writing {path}: {message}")]
    Write { path: PathBuf, message: String },
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// The columns a training file must have, in file order.
pub fn required_columns() -> Vec<&'static str> {
    NUMERIC_INPUTS
        .iter()
        .chain(CATEGORICAL_INPUTS.iter())
        .copied()
        .chain([LABEL])
        .collect()
}

/// The columns written for a dataset, in order: 17 inputs, derived, label, true_pd.
pub fn written_columns() -> Vec<&'static str> {
    NUMERIC_INPUTS
        .iter()
        .chain(CATEGORICAL_INPUTS.iter())
        .chain(DERIVED.iter())
        .copied()
        .chain([LABEL, TRUE_PD])
        .collect()
}

fn type_name(dt: &DataType) -> String {
    format!("{dt}")
}

fn is_numeric(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Int32 | DataType::Int64 | DataType::Float32 | DataType::Float64
    )
}

fn is_string(dt: &DataType) -> bool {
    match dt {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, v) => is_string(v),
        _ => false,
    }
}

fn is_label_type(dt: &DataType) -> bool {
    is_numeric(dt) || matches!(dt, DataType::Boolean | DataType::Int8 | DataType::Int16)
}

/// Opens a Parquet file of applications, checks its schema, then reads the projected columns.
pub struct DatasetReader {
    path: PathBuf,
    builder: ParquetRecordBatchReaderBuilder<File>,
    batch_size: usize,
    /// Indices (in the file schema) of the required columns, in [`required_columns`] order.
    indices: Vec<usize>,
    true_pd_index: Option<usize>,
}

impl std::fmt::Debug for DatasetReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatasetReader")
            .field("path", &self.path)
            .field("batch_size", &self.batch_size)
            .finish()
    }
}

impl DatasetReader {
    /// Opens `path` and validates its schema: every required column present and well typed.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_owned();
        if !path.exists() {
            return Err(DataError::NotFound { path });
        }
        let file = File::open(&path).map_err(|source| DataError::Io {
            path: path.clone(),
            source,
        })?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|source| {
            DataError::NotParquet {
                path: path.clone(),
                source,
            }
        })?;
        let schema = builder.schema().clone();
        let mut missing = Vec::new();
        let mut mistyped = Vec::new();
        let mut indices = Vec::new();
        for name in required_columns() {
            match schema.index_of(name) {
                Err(_) => missing.push(name.to_string()),
                Ok(i) => {
                    let dt = schema.field(i).data_type();
                    let (ok, expected) = if name == LABEL {
                        (is_label_type(dt), "an integer, float or boolean 0/1")
                    } else if CATEGORICAL_INPUTS.contains(&name) {
                        (is_string(dt), "a string (Utf8, LargeUtf8 or dictionary)")
                    } else {
                        (is_numeric(dt), "Int32, Int64, Float32 or Float64")
                    };
                    if !ok {
                        mistyped.push(format!("{name} is {}, expected {expected}", type_name(dt)));
                    }
                    indices.push(i);
                }
            }
        }
        if !missing.is_empty() {
            return Err(DataError::MissingColumns {
                path,
                columns: missing,
            });
        }
        let true_pd_index = schema.index_of(TRUE_PD).ok();
        if let Some(i) = true_pd_index {
            let dt = schema.field(i).data_type();
            if !is_numeric(dt) {
                mistyped.push(format!(
                    "{TRUE_PD} is {}, expected Float32 or Float64",
                    type_name(dt)
                ));
            }
        }
        if !mistyped.is_empty() {
            return Err(DataError::MistypedColumns {
                path,
                columns: mistyped,
            });
        }
        let num_rows = declared_rows(builder.metadata()).map_err(|problem| DataError::Footer {
            path: path.clone(),
            problem,
        })?;
        if num_rows == 0 {
            return Err(DataError::Empty { path });
        }
        Ok(DatasetReader {
            path,
            builder,
            batch_size: DEFAULT_BATCH_SIZE,
            indices,
            true_pd_index,
        })
    }

    /// Rows per decoded record batch (memory versus per-batch overhead).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Number of rows the file declares ([`Self::open`] checked that the footer's count is
    /// not negative and equals the sum of its row groups'; [`Self::read`] checks it against the
    /// rows actually decoded).
    pub fn num_rows(&self) -> usize {
        declared_rows(self.builder.metadata()).unwrap_or(0)
    }

    /// Decodes every row of the projected columns into a [`Dataset`].
    pub fn read(self) -> Result<Dataset> {
        let DatasetReader {
            path,
            builder,
            batch_size,
            indices,
            true_pd_index,
        } = self;
        let declared = declared_rows(builder.metadata()).unwrap_or(0);
        // Reserve for the declared rows only up to a cap: the footer is the file's claim, not
        // proof, and a claim of 2^40 rows must not abort the process on allocation.
        let n = declared.min(MAX_RESERVED_ROWS);
        let mut projected: Vec<usize> = indices.clone();
        projected.extend(true_pd_index);
        let mask = ProjectionMask::roots(builder.parquet_schema(), projected.iter().copied());
        let reader = builder
            .with_projection(mask)
            .with_batch_size(batch_size)
            .build()
            .map_err(|source| DataError::Read {
                path: path.clone(),
                source,
            })?;
        let mut out = Dataset {
            rows: Vec::with_capacity(n),
            labels: Vec::with_capacity(n),
            true_pd: true_pd_index.map(|_| Vec::with_capacity(n)),
        };
        for batch in reader {
            let batch = batch.map_err(|e| DataError::Read {
                path: path.clone(),
                source: e.into(),
            })?;
            if out.rows.len() + batch.num_rows() > declared {
                return Err(DataError::Footer {
                    path,
                    problem: format!(
                        "the file holds more than the {declared} rows its footer declares"
                    ),
                });
            }
            decode_batch(&path, &batch, &mut out)?;
        }
        if out.rows.is_empty() {
            return Err(DataError::Empty { path });
        }
        if out.rows.len() != declared {
            return Err(DataError::Footer {
                path,
                problem: format!(
                    "the footer declares {declared} rows, the file holds {}",
                    out.rows.len()
                ),
            });
        }
        Ok(out)
    }
}

/// The row count a Parquet footer declares, once it is checked to be consistent: not negative,
/// and equal to the sum of the row groups' counts.
fn declared_rows(meta: &parquet::file::metadata::ParquetMetaData) -> Result<usize, String> {
    let claimed = meta.file_metadata().num_rows();
    let mut sum: i64 = 0;
    for (i, g) in meta.row_groups().iter().enumerate() {
        if g.num_rows() < 0 {
            return Err(format!("row group {i} declares {} rows", g.num_rows()));
        }
        sum = sum
            .checked_add(g.num_rows())
            .ok_or_else(|| "the row groups declare more than 2^63 rows".to_string())?;
    }
    if claimed != sum {
        return Err(format!("it declares {claimed} rows, its row groups {sum}"));
    }
    usize::try_from(claimed).map_err(|_| format!("it declares {claimed} rows"))
}

/// Reads a Parquet (or, by extension `.csv`, CSV) file of applications.
pub fn read_dataset(path: impl AsRef<Path>) -> Result<Dataset> {
    let path = path.as_ref();
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        read_csv(path)
    } else {
        DatasetReader::open(path)?.read()
    }
}

fn numeric_column(col: &ArrayRef) -> Vec<f64> {
    let get = |i: usize, v: f64| if col.is_null(i) { f64::NAN } else { v };
    match col.data_type() {
        DataType::Int32 => {
            let a = col.as_primitive::<Int32Type>();
            (0..a.len()).map(|i| get(i, a.value(i) as f64)).collect()
        }
        DataType::Int64 => {
            let a = col.as_primitive::<Int64Type>();
            (0..a.len()).map(|i| get(i, a.value(i) as f64)).collect()
        }
        DataType::Float32 => {
            let a = col.as_primitive::<Float32Type>();
            (0..a.len()).map(|i| get(i, a.value(i) as f64)).collect()
        }
        DataType::Float64 => {
            let a = col.as_primitive::<Float64Type>();
            (0..a.len()).map(|i| get(i, a.value(i))).collect()
        }
        // Other integer widths are accepted for the label only; go through the cast kernel.
        _ => match cast(col, &DataType::Float64) {
            Ok(c) => {
                let a = c.as_primitive::<Float64Type>();
                (0..a.len())
                    .map(|i| if a.is_null(i) { f64::NAN } else { a.value(i) })
                    .collect()
            }
            Err(_) => vec![f64::NAN; col.len()],
        },
    }
}

fn string_column(col: &ArrayRef) -> Vec<Option<String>> {
    let utf8 = match col.data_type() {
        DataType::Utf8 => col.clone(),
        _ => cast(col, &DataType::Utf8).unwrap_or_else(|_| col.clone()),
    };
    let Some(a) = utf8.as_string_opt::<i32>() else {
        return vec![None; col.len()];
    };
    (0..a.len())
        .map(|i| (!a.is_null(i)).then(|| a.value(i).to_string()))
        .collect()
}

fn parse_category<T>(
    path: &Path,
    column: &str,
    row: usize,
    value: Option<&str>,
    parse: fn(&str) -> Option<T>,
    names: fn() -> Vec<&'static str>,
) -> Result<Option<T>> {
    match value {
        None | Some("") => Ok(None),
        Some(s) => parse(s)
            .map(Some)
            .ok_or_else(|| DataError::UnknownCategory {
                path: path.to_owned(),
                column: column.to_string(),
                row,
                value: s.to_string(),
                accepted: names(),
            }),
    }
}

fn parse_label(path: &Path, row: usize, v: f64) -> Result<u8> {
    if v == 0.0 {
        Ok(0)
    } else if v == 1.0 {
        Ok(1)
    } else {
        Err(DataError::BadLabel {
            path: path.to_owned(),
            row,
            value: if v.is_nan() {
                "null".into()
            } else {
                v.to_string()
            },
        })
    }
}

/// Builds rows from column vectors; `first_row` numbers rows in error messages.
struct Columns {
    numerics: Vec<Vec<f64>>,
    categoricals: Vec<Vec<Option<String>>>,
    label: Vec<f64>,
    true_pd: Option<Vec<f64>>,
}

fn push_rows(path: &Path, first_row: usize, cols: Columns, out: &mut Dataset) -> Result<()> {
    let n = cols.label.len();
    for i in 0..n {
        let row = first_row + i;
        let mut num = [0.0f64; 14];
        for (j, c) in cols.numerics.iter().enumerate() {
            num[j] = c[i];
        }
        let cat = |j: usize| cols.categoricals[j][i].as_deref();
        let es = parse_category(
            path,
            CATEGORICAL_INPUTS[0],
            row,
            cat(0),
            EmploymentStatus::parse,
            EmploymentStatus::names,
        )?;
        let ho = parse_category(
            path,
            CATEGORICAL_INPUTS[1],
            row,
            cat(1),
            HomeOwnership::parse,
            HomeOwnership::names,
        )?;
        let lp = parse_category(
            path,
            CATEGORICAL_INPUTS[2],
            row,
            cat(2),
            LoanPurpose::parse,
            LoanPurpose::names,
        )?;
        out.labels.push(parse_label(path, row, cols.label[i])?);
        out.rows.push(Application::from_parts(num, es, ho, lp));
        if let (Some(dst), Some(src)) = (out.true_pd.as_mut(), cols.true_pd.as_ref()) {
            dst.push(src[i]);
        }
    }
    Ok(())
}

fn decode_batch(path: &Path, batch: &RecordBatch, out: &mut Dataset) -> Result<()> {
    let col = |name: &str| {
        batch
            .column_by_name(name)
            .expect("projected column is present")
    };
    let label_col = col(LABEL);
    let label = if let Some(b) = label_col.as_any().downcast_ref::<BooleanArray>() {
        (0..b.len())
            .map(|i| {
                if b.is_null(i) {
                    f64::NAN
                } else {
                    f64::from(u8::from(b.value(i)))
                }
            })
            .collect()
    } else {
        numeric_column(label_col)
    };
    let cols = Columns {
        numerics: NUMERIC_INPUTS
            .iter()
            .map(|n| numeric_column(col(n)))
            .collect(),
        categoricals: CATEGORICAL_INPUTS
            .iter()
            .map(|n| string_column(col(n)))
            .collect(),
        label,
        true_pd: batch.column_by_name(TRUE_PD).map(numeric_column),
    };
    push_rows(path, out.rows.len(), cols, out)
}

/// The derived columns of a row, computed as the preprocessing does.
fn derived(a: &Application) -> (f64, f64) {
    let mp = application::monthly_payment(a.loan_amount, a.loan_term, DEFAULT_ANNUAL_RATE);
    (mp, application::payment_to_income(mp, a.income))
}

fn write_err(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Write {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// The dataset as one Arrow record batch with the [`written_columns`] schema.
pub fn to_record_batch(data: &Dataset) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    let numerics: Vec<[f64; 14]> = data.rows.iter().map(Application::numerics).collect();
    for (j, name) in NUMERIC_INPUTS.iter().enumerate() {
        let values = numerics.iter().map(|n| n[j]);
        if INTEGER_INPUTS.contains(name) {
            fields.push(Field::new(*name, DataType::Int64, true));
            let a: Int64Array = values
                .map(|v| (!v.is_nan()).then_some(v.round() as i64))
                .collect();
            arrays.push(Arc::new(a));
        } else {
            fields.push(Field::new(*name, DataType::Float64, true));
            let a: Float64Array = values.map(|v| (!v.is_nan()).then_some(v)).collect();
            arrays.push(Arc::new(a));
        }
    }
    let cats: [Vec<Option<&str>>; 3] = [
        data.rows
            .iter()
            .map(|r| r.employment_status.map(|v| v.as_str()))
            .collect(),
        data.rows
            .iter()
            .map(|r| r.home_ownership.map(|v| v.as_str()))
            .collect(),
        data.rows
            .iter()
            .map(|r| r.loan_purpose.map(|v| v.as_str()))
            .collect(),
    ];
    for (name, values) in CATEGORICAL_INPUTS.iter().zip(cats) {
        fields.push(Field::new(*name, DataType::Utf8, true));
        arrays.push(Arc::new(StringArray::from(values)));
    }
    let derived: Vec<(f64, f64)> = data.rows.iter().map(derived).collect();
    for (k, name) in DERIVED.iter().enumerate() {
        fields.push(Field::new(*name, DataType::Float64, true));
        let a: Float64Array = derived
            .iter()
            .map(|d| {
                let v = if k == 0 { d.0 } else { d.1 };
                v.is_finite().then_some(v)
            })
            .collect();
        arrays.push(Arc::new(a));
    }
    fields.push(Field::new(LABEL, DataType::Int64, false));
    arrays.push(Arc::new(Int64Array::from_iter_values(
        data.labels.iter().map(|&l| l as i64),
    )));
    if let Some(pd) = &data.true_pd {
        fields.push(Field::new(TRUE_PD, DataType::Float64, false));
        arrays.push(Arc::new(Float64Array::from(pd.clone())));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
}

/// Writes the dataset as a snappy-compressed Parquet file (pandas-compatible types).
pub fn write_parquet(data: &Dataset, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let batch = to_record_batch(data).map_err(|e| write_err(path, e))?;
    write_batch(&batch, path)
}

/// Writes one record batch as a Parquet file. Also used by tests to craft unusual files.
pub fn write_batch(batch: &RecordBatch, path: &Path) -> Result<()> {
    let file = File::create(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer =
        ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(|e| write_err(path, e))?;
    writer.write(batch).map_err(|e| write_err(path, e))?;
    writer.close().map_err(|e| write_err(path, e))?;
    Ok(())
}

fn fmt_num(v: f64, integer: bool) -> String {
    if v.is_nan() {
        String::new()
    } else if integer {
        format!("{}", v.round() as i64)
    } else {
        format!("{v}")
    }
}

/// Writes the dataset as CSV with a header; missing values are empty cells.
pub fn write_csv(data: &Dataset, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let file = File::create(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut w = BufWriter::new(file);
    let mut cols = written_columns();
    if data.true_pd.is_none() {
        cols.pop();
    }
    let mut text = cols.join(",");
    text.push('\n');
    for (i, row) in data.rows.iter().enumerate() {
        let mut cells: Vec<String> = row
            .numerics()
            .iter()
            .zip(NUMERIC_INPUTS)
            .map(|(v, name)| fmt_num(*v, INTEGER_INPUTS.contains(&name)))
            .collect();
        cells.push(row.employment_status.map_or("", |v| v.as_str()).into());
        cells.push(row.home_ownership.map_or("", |v| v.as_str()).into());
        cells.push(row.loan_purpose.map_or("", |v| v.as_str()).into());
        let (mp, pti) = derived(row);
        cells.push(fmt_num(mp, false));
        cells.push(fmt_num(pti, false));
        cells.push(data.labels[i].to_string());
        if let Some(pd) = &data.true_pd {
            cells.push(format!("{}", pd[i]));
        }
        text.push_str(&cells.join(","));
        text.push('\n');
    }
    w.write_all(text.as_bytes())
        .and_then(|_| w.flush())
        .map_err(|source| DataError::Io {
            path: path.to_owned(),
            source,
        })
}

/// Reads a CSV written by [`write_csv`] (or pandas): header row, comma separated, no quoting;
/// an empty cell is missing.
pub fn read_csv(path: impl AsRef<Path>) -> Result<Dataset> {
    let path = path.as_ref();
    if !path.exists() {
        return Err(DataError::NotFound {
            path: path.to_owned(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .ok_or_else(|| DataError::Empty {
            path: path.to_owned(),
        })?
        .split(',')
        .map(str::trim)
        .collect();
    let missing: Vec<String> = required_columns()
        .into_iter()
        .filter(|c| !header.contains(c))
        .map(String::from)
        .collect();
    if !missing.is_empty() {
        return Err(DataError::MissingColumns {
            path: path.to_owned(),
            columns: missing,
        });
    }
    let idx = |name: &str| header.iter().position(|h| *h == name);
    let num_idx: Vec<usize> = NUMERIC_INPUTS.iter().map(|n| idx(n).unwrap()).collect();
    let cat_idx: Vec<usize> = CATEGORICAL_INPUTS.iter().map(|n| idx(n).unwrap()).collect();
    let label_idx = idx(LABEL).unwrap();
    let pd_idx = idx(TRUE_PD);
    let mut cols = Columns {
        numerics: vec![Vec::new(); 14],
        categoricals: vec![Vec::new(); 3],
        label: Vec::new(),
        true_pd: pd_idx.map(|_| Vec::new()),
    };
    let number = |row: usize, column: &str, s: &str| -> Result<f64> {
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("nan") {
            return Ok(f64::NAN);
        }
        s.parse().map_err(|_| DataError::BadNumber {
            path: path.to_owned(),
            column: column.to_string(),
            row,
            value: s.to_string(),
        })
    };
    for (row, line) in lines.enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        if cells.len() != header.len() {
            return Err(DataError::Csv {
                path: path.to_owned(),
                message: format!(
                    "row {row} has {} cells, the header has {}",
                    cells.len(),
                    header.len()
                ),
            });
        }
        for (j, &k) in num_idx.iter().enumerate() {
            cols.numerics[j].push(number(row, NUMERIC_INPUTS[j], cells[k])?);
        }
        for (j, &k) in cat_idx.iter().enumerate() {
            let s = cells[k].trim();
            cols.categoricals[j].push((!s.is_empty()).then(|| s.to_string()));
        }
        cols.label.push(number(row, LABEL, cells[label_idx])?);
        if let (Some(v), Some(k)) = (cols.true_pd.as_mut(), pd_idx) {
            v.push(number(row, TRUE_PD, cells[k])?);
        }
    }
    if cols.label.is_empty() {
        return Err(DataError::Empty {
            path: path.to_owned(),
        });
    }
    let mut out = Dataset {
        rows: Vec::new(),
        labels: Vec::new(),
        true_pd: pd_idx.map(|_| Vec::new()),
    };
    push_rows(path, 0, cols, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Dataset {
        let mut b = Application::example();
        b.credit_score = f64::NAN;
        b.home_ownership = None;
        Dataset {
            rows: vec![Application::example(), b],
            labels: vec![0, 1],
            true_pd: Some(vec![0.1, 0.7]),
        }
    }

    #[test]
    fn parquet_and_csv_round_trip_with_missing_values() {
        let dir = tempfile::tempdir().unwrap();
        let data = sample();
        for name in ["d.parquet", "d.csv"] {
            let p = dir.path().join(name);
            if name.ends_with("csv") {
                write_csv(&data, &p).unwrap();
            } else {
                write_parquet(&data, &p).unwrap();
            }
            let back = read_dataset(&p).unwrap();
            assert_eq!(back.labels, data.labels);
            assert_eq!(back.true_pd, data.true_pd);
            assert!(back.rows[1].credit_score.is_nan());
            assert_eq!(back.rows[1].home_ownership, None);
            assert_eq!(back.rows[0], data.rows[0]);
        }
    }

    #[test]
    fn a_footer_whose_count_disagrees_with_its_row_groups_is_refused() {
        use parquet::file::metadata::{FileMetaData, ParquetMetaData, ParquetMetaDataReader};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.parquet");
        write_parquet(&sample(), &p).unwrap();
        let meta = ParquetMetaDataReader::new()
            .parse_and_finish(&File::open(&p).unwrap())
            .unwrap();
        assert_eq!(declared_rows(&meta), Ok(2));
        let f = meta.file_metadata();
        let lying = FileMetaData::new(
            f.version(),
            1 << 40,
            f.created_by().map(str::to_string),
            f.key_value_metadata().cloned(),
            f.schema_descr_ptr(),
            f.column_orders().cloned(),
        );
        let meta = ParquetMetaData::new(lying, meta.row_groups().to_vec());
        let err = declared_rows(&meta).unwrap_err();
        assert!(
            err.contains("it declares 1099511627776 rows, its row groups 2"),
            "{err}"
        );
    }

    #[test]
    fn small_batches_read_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.parquet");
        let mut data = sample();
        for _ in 0..5 {
            data.rows.extend(data.rows.clone());
            data.labels.extend(data.labels.clone());
            let pd = data.true_pd.as_mut().unwrap();
            pd.extend(pd.clone());
        }
        write_parquet(&data, &p).unwrap();
        let back = DatasetReader::open(&p)
            .unwrap()
            .with_batch_size(7)
            .read()
            .unwrap();
        assert_eq!(back.len(), 64);
        assert_eq!(back.labels, data.labels);
    }
}
