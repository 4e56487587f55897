//! Parquet files for offline scoring: `cra score --data IN.parquet --out OUT.parquet`.
//!
//! [`InputReader`] streams the applications of an input file as raw [`ApplicationInput`]s, one
//! bounded batch at a time, without judging any value: a null number is an absent field, a NaN
//! stays NaN and an unknown category stays its spelling, for [`ApplicationInput::validate`] to
//! name later. [`OutputWriter`] writes one output row per input row, in batches, to
//! `OUT.parquet.tmp` and renames it to `OUT.parquet` only once the file is complete.
//!
//! Memory stays bounded whatever the file's size: the reader decodes only the projected columns,
//! `batch_rows` rows at a time, and the writer flushes a row group every
//! [`OUTPUT_ROWS_PER_ROW_GROUP`] rows.
//!
//! Input columns (names are case-sensitive; other columns, e.g. `default` or `true_pd`, are
//! ignored and never decoded):
//!
//! | column                      | accepted Arrow types                                          |
//! |-----------------------------|---------------------------------------------------------------|
//! | the 14 [`NUMERIC_INPUTS`]   | Int8/16/32/64, UInt8/16/32/64, Float32, Float64               |
//! | the 3 [`CATEGORICAL_INPUTS`]| Utf8, LargeUtf8, Utf8View, or a dictionary of one of them     |
//! | `application_id` (optional) | those strings, or any integer type (written as decimal text)  |
//!
//! Every column may hold nulls, and a column whose Arrow type is `Null` (every value null, as
//! pyarrow writes an all-`None` column) is accepted for each of them. The columns are read, and
//! the output columns built, by [`cra_model::arrow_io`], which the Python package shares.
//!
//! Output columns, in order: the id (`application_id` Utf8, or `row` UInt64, the 0-based row
//! number in the input file), then `probability_default` Float64, `risk_score` Float64,
//! `risk_level` Utf8, `prediction` Int8 (0/1), `margin` Float64, `model_version` Utf8 and
//! `error` Utf8. A scored row has a null `error`; a row that could not be scored has null score
//! columns and its reason in `error`.

use std::{
    fs::{self, File},
    panic::{self, AssertUnwindSafe},
    path::{Path, PathBuf},
};

use arrow::{
    array::RecordBatch,
    datatypes::{Schema, SchemaRef},
};
use parquet::{
    arrow::{
        arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder},
        ArrowWriter, ProjectionMask,
    },
    basic::Compression,
    errors::ParquetError,
    file::{metadata::ParquetMetaData, properties::WriterProperties},
};

use cra_model::application::{CATEGORICAL_INPUTS, NUMERIC_INPUTS};
use cra_model::explain::Explanation;
use cra_model::input::ApplicationInput;

use cra_model::arrow_io as columns;
pub use cra_model::arrow_io::{
    output_schema, output_schema_with, IdColumn, OutputRow, ScoredColumns, APPLICATION_ID_COLUMN,
    OUTPUT_SCORE_COLUMNS, ROW_COLUMN,
};

/// Rows per output row group: the writer holds at most this many encoded rows in memory.
pub const OUTPUT_ROWS_PER_ROW_GROUP: usize = 64 * 1024;

/// Errors reading an input file or writing an output file. Each names the file and says what
/// to do about it.
#[derive(Debug, thiserror::Error)]
pub enum OfflineIoError {
    #[error("input file {path} does not exist; check the path given to --data")]
    InputNotFound { path: PathBuf },

    #[error(
        "cannot read input file {path}: {source}; give --data the path of a readable Parquet file"
    )]
    OpenInput {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{path} is not a readable Parquet file ({source}); offline scoring reads Parquet: write the applications with e.g. pandas `DataFrame.to_parquet` or pyarrow `pyarrow.parquet.write_table`")]
    NotParquet { path: PathBuf, source: ParquetError },

    #[error("{path} has an inconsistent Parquet footer: {problem}; the file is damaged or was not completely written: write it again")]
    DamagedFooter { path: PathBuf, problem: String },

    #[error("{}", schema_message(.path, .missing, .mistyped))]
    Schema {
        path: PathBuf,
        /// Required columns the file lacks.
        missing: Vec<String>,
        /// One entry per badly typed column: "name is TYPE; accepted: ...".
        mistyped: Vec<String>,
    },

    #[error("reading {path} (the batch starting at row {first_row}): {message}; the file is damaged or truncated: write it again")]
    Read {
        path: PathBuf,
        first_row: u64,
        message: String,
    },

    #[error("reading column {column} of {path} (the batch starting at row {first_row}): {message}; write the column as {accepted}")]
    Decode {
        path: PathBuf,
        column: &'static str,
        first_row: u64,
        message: String,
        accepted: &'static str,
    },

    #[error("cannot write {path}: {problem}")]
    OutputPath { path: PathBuf, problem: String },

    #[error("cannot create {path}: {source}; check that its directory is writable")]
    CreateOutput {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("writing {path}: {message}; check the free disk space and that the directory is writable, then run again")]
    WriteOutput { path: PathBuf, message: String },

    #[error("cannot write output row {row} to {path}: {problem}; this is a bug in the scorer: report it with the input file")]
    InvalidOutputRow {
        path: PathBuf,
        row: u64,
        problem: String,
    },

    #[error("{path} was not finished because an earlier write to it failed; fix that error and run again")]
    EarlierWriteFailed { path: PathBuf },

    #[error("cannot move the finished output {temp_path} to {path}: {source}; every row is in {temp_path}: rename it yourself, or make {path} writable and run again")]
    FinishOutput {
        path: PathBuf,
        temp_path: PathBuf,
        source: std::io::Error,
    },
}

/// The message of [`OfflineIoError::Schema`]: every schema problem at once, and what a file
/// needs.
fn schema_message(path: &Path, missing: &[String], mistyped: &[String]) -> String {
    columns::schema_message(&path.display().to_string(), missing, mistyped)
}

// ---------------------------------------------------------------------------------------------
// Reading.

/// One batch of applications as read, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct InputBatch {
    /// 0-based row number, in the input file, of `inputs[0]`.
    pub first_row: u64,
    /// The applications exactly as the file holds them; nothing is validated.
    pub inputs: Vec<ApplicationInput>,
}

/// Streams the applications of a Parquet input file in batches of bounded size.
///
/// Iterate with [`InputReader::next_batch`] or as an [`Iterator`]; after an error the reader
/// yields nothing more.
pub struct InputReader {
    path: PathBuf,
    declared_rows: u64,
    has_application_id: bool,
    batches: ParquetRecordBatchReader,
    next_row: u64,
    finished: bool,
}

impl std::fmt::Debug for InputReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputReader")
            .field("path", &self.path)
            .field("declared_rows", &self.declared_rows)
            .field("has_application_id", &self.has_application_id)
            .field("next_row", &self.next_row)
            .field("finished", &self.finished)
            .finish()
    }
}

impl InputReader {
    /// Opens `path` and checks its schema: every input column present with an accepted type
    /// (all problems are named in one [`OfflineIoError::Schema`]), and a consistent footer.
    /// Batches hold at most `batch_rows` rows (at least 1).
    pub fn open(path: &Path, batch_rows: usize) -> Result<InputReader, OfflineIoError> {
        let file = File::open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                OfflineIoError::InputNotFound {
                    path: path.to_owned(),
                }
            } else {
                OfflineIoError::OpenInput {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        let is_directory = file.metadata().map(|m| m.is_dir()).unwrap_or(false);
        if is_directory {
            return Err(OfflineIoError::OpenInput {
                path: path.to_owned(),
                source: std::io::ErrorKind::IsADirectory.into(),
            });
        }
        let not_parquet = |source| OfflineIoError::NotParquet {
            path: path.to_owned(),
            source,
        };
        let builder = without_panic(|| ParquetRecordBatchReaderBuilder::try_new(file))
            .map_err(|panic_message| not_parquet(ParquetError::General(panic_message)))?
            .map_err(not_parquet)?;

        let schema = builder.schema().clone();
        let application_id_index = check_schema(path, &schema)?;
        let declared_rows =
            declared_rows(builder.metadata()).map_err(|problem| OfflineIoError::DamagedFooter {
                path: path.to_owned(),
                problem,
            })?;

        // Decode only the input columns. `check_schema` guarantees each name occurs once.
        let wanted = |name: &str| {
            NUMERIC_INPUTS.contains(&name)
                || CATEGORICAL_INPUTS.contains(&name)
                || name == APPLICATION_ID_COLUMN
        };
        let projected = schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, field)| wanted(field.name()))
            .map(|(index, _)| index);
        let mask = ProjectionMask::roots(builder.parquet_schema(), projected);
        let batches = without_panic(|| {
            builder
                .with_projection(mask)
                .with_batch_size(batch_rows.max(1))
                .build()
        })
        .map_err(ParquetError::General)
        .and_then(|built| built)
        .map_err(|source| OfflineIoError::Read {
            path: path.to_owned(),
            first_row: 0,
            message: source.to_string(),
        })?;

        Ok(InputReader {
            path: path.to_owned(),
            declared_rows,
            has_application_id: application_id_index.is_some(),
            batches,
            next_row: 0,
            finished: false,
        })
    }

    /// The number of rows the file holds (as its footer declares; reading checks it).
    pub fn num_rows(&self) -> u64 {
        self.declared_rows
    }

    /// Whether the file has an `application_id` column.
    pub fn has_application_id(&self) -> bool {
        self.has_application_id
    }

    /// The next batch of applications, `None` once every row was read, or an error (after
    /// which the reader yields nothing more).
    pub fn next_batch(&mut self) -> Option<Result<InputBatch, OfflineIoError>> {
        if self.finished {
            return None;
        }
        let result = self.read_batch();
        if !matches!(result, Some(Ok(_))) {
            self.finished = true;
        }
        result
    }

    fn read_batch(&mut self) -> Option<Result<InputBatch, OfflineIoError>> {
        let first_row = self.next_row;
        let read_error = |message: String| OfflineIoError::Read {
            path: self.path.clone(),
            first_row,
            message,
        };
        let batch = match without_panic(|| self.batches.next()) {
            Err(panic_message) => return Some(Err(read_error(panic_message))),
            Ok(Some(Err(error))) => return Some(Err(read_error(error.to_string()))),
            Ok(Some(Ok(batch))) => batch,
            Ok(None) if first_row == self.declared_rows => return None,
            Ok(None) => {
                return Some(Err(OfflineIoError::DamagedFooter {
                    path: self.path.clone(),
                    problem: format!(
                        "it declares {} rows but holds {first_row}",
                        self.declared_rows
                    ),
                }))
            }
        };
        let rows = batch.num_rows() as u64;
        let next_row = first_row.saturating_add(rows);
        if next_row > self.declared_rows {
            return Some(Err(OfflineIoError::DamagedFooter {
                path: self.path.clone(),
                problem: format!("it declares {} rows but holds more", self.declared_rows),
            }));
        }
        let inputs = match decode_batch(&self.path, &batch, first_row) {
            Ok(inputs) => inputs,
            Err(error) => return Some(Err(error)),
        };
        self.next_row = next_row;
        Some(Ok(InputBatch { first_row, inputs }))
    }
}

impl Iterator for InputReader {
    type Item = Result<InputBatch, OfflineIoError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch()
    }
}

/// Checks that every input column is present once with an accepted type (every problem named
/// in one [`OfflineIoError::Schema`]). Returns the index of `application_id`.
fn check_schema(path: &Path, schema: &Schema) -> Result<Option<usize>, OfflineIoError> {
    columns::check_schema(schema).map_err(|p| OfflineIoError::Schema {
        path: path.to_owned(),
        missing: p.missing,
        mistyped: p.mistyped,
    })
}

/// The row count a Parquet footer declares, once it is checked to be consistent: not negative,
/// and equal to the sum of the row groups' counts.
fn declared_rows(metadata: &ParquetMetaData) -> Result<u64, String> {
    let claimed = metadata.file_metadata().num_rows();
    let mut sum: i64 = 0;
    for (index, group) in metadata.row_groups().iter().enumerate() {
        if group.num_rows() < 0 {
            return Err(format!(
                "row group {index} declares {} rows",
                group.num_rows()
            ));
        }
        sum = sum
            .checked_add(group.num_rows())
            .ok_or_else(|| "its row groups declare more than 2^63 rows".to_string())?;
    }
    if claimed != sum {
        return Err(format!("it declares {claimed} rows, its row groups {sum}"));
    }
    u64::try_from(claimed).map_err(|_| format!("it declares {claimed} rows"))
}

/// Runs `work`, turning a panic into an error message. The Parquet decoder still has
/// assertions that malformed files can trip (apache/arrow-rs#7102, #10107), and a damaged input
/// file must give an error, not abort the scoring run.
fn without_panic<T>(work: impl FnOnce() -> T) -> Result<T, String> {
    panic::catch_unwind(AssertUnwindSafe(work)).map_err(|payload| {
        let detail = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no detail".to_owned());
        format!("the Parquet decoder failed on malformed data ({detail})")
    })
}

/// The applications of one decoded record batch.
fn decode_batch(
    path: &Path,
    batch: &RecordBatch,
    first_row: u64,
) -> Result<Vec<ApplicationInput>, OfflineIoError> {
    columns::decode_batch(batch).map_err(|e| OfflineIoError::Decode {
        path: path.to_owned(),
        column: e.column,
        first_row,
        message: e.message,
        accepted: e.accepted,
    })
}

// ---------------------------------------------------------------------------------------------
// Writing.

/// Writes scored rows to a Parquet file (snappy), one record batch per [`OutputWriter::write`]
/// call and a row group every [`OUTPUT_ROWS_PER_ROW_GROUP`] rows.
///
/// Rows go to `OUT.tmp` (the output's file name with `.tmp` appended, in the same directory),
/// which [`OutputWriter::finish`] renames to the output path: a run that fails or is dropped
/// before `finish` leaves no file under the output name, and its `.tmp` is removed.
pub struct OutputWriter {
    path: PathBuf,
    temp_path: PathBuf,
    id_column: IdColumn,
    schema: SchemaRef,
    /// The explanation columns are written.
    explain: bool,
    /// `None` only while [`OutputWriter::finish`] runs.
    writer: Option<ArrowWriter<File>>,
    rows_written: u64,
    write_failed: bool,
    /// Bytes of the file already handed to the disk by [`start_writeback`].
    written_back: u64,
    /// Cleared once the temporary file is renamed into place, or must be kept.
    remove_temp_on_drop: bool,
}

/// Written bytes gathered before they are handed to the disk.
const WRITEBACK_BYTES: u64 = 1 << 20;

/// Asks the kernel to start writing bytes `from..to` of `file` to disk, without waiting: a
/// hint, so a failure changes nothing (the final sync reports real errors).
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, from: u64, to: u64) {
    use std::os::fd::AsRawFd as _;
    let (Ok(offset), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else {
        return;
    };
    // SAFETY: a plain syscall on a file descriptor this writer owns, with no pointers.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _from: u64, _to: u64) {}

impl std::fmt::Debug for OutputWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputWriter")
            .field("path", &self.path)
            .field("temp_path", &self.temp_path)
            .field("id_column", &self.id_column)
            .field("rows_written", &self.rows_written)
            .field("write_failed", &self.write_failed)
            .finish()
    }
}

impl OutputWriter {
    /// Starts writing the output file `path` (through `path` + `.tmp`). Fails at once if `path`
    /// is a directory or its directory does not exist.
    pub fn create(path: &Path, id: IdColumn) -> Result<Self, OfflineIoError> {
        Self::create_with(path, id, false)
    }

    /// [`Self::create`], with the explanation columns when `explain` (see
    /// [`output_schema_with`]; rows without an explanation have them null).
    pub fn create_with(path: &Path, id: IdColumn, explain: bool) -> Result<Self, OfflineIoError> {
        let temp_path = temp_path_for(path)?;
        let file = File::create(&temp_path).map_err(|source| OfflineIoError::CreateOutput {
            path: temp_path.clone(),
            source,
        })?;
        let schema = output_schema_with(id, explain);
        // Snappy, and no dictionary for the id column nor for the two continuous columns
        // (every value is distinct, so a dictionary only costs hashing until the writer gives
        // up on it): writing is on the critical path of a run.
        let id_name = match id {
            IdColumn::ApplicationId => APPLICATION_ID_COLUMN,
            IdColumn::RowNumber => ROW_COLUMN,
        };
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_column_dictionary_enabled(id_name.into(), false)
            .set_column_dictionary_enabled("probability_default".into(), false)
            .set_column_dictionary_enabled("margin".into(), false)
            .set_max_row_group_row_count(Some(OUTPUT_ROWS_PER_ROW_GROUP))
            .build();
        let writer = match ArrowWriter::try_new(file, schema.clone(), Some(properties)) {
            Ok(writer) => writer,
            Err(error) => {
                // Best effort: the error below is what matters.
                let _ = fs::remove_file(&temp_path);
                return Err(OfflineIoError::WriteOutput {
                    path: temp_path,
                    message: error.to_string(),
                });
            }
        };
        Ok(OutputWriter {
            path: path.to_owned(),
            temp_path,
            id_column: id,
            schema,
            explain,
            writer: Some(writer),
            rows_written: 0,
            write_failed: false,
            written_back: 0,
            remove_temp_on_drop: true,
        })
    }

    /// The temporary file rows are written to until [`Self::finish`].
    pub fn temp_path(&self) -> &Path {
        &self.temp_path
    }

    /// Appends `rows` as one record batch. A row's `prediction` must be 0 or 1.
    pub fn write(&mut self, rows: &[OutputRow<'_>]) -> Result<(), OfflineIoError> {
        self.write_explained(rows, &[])
    }

    /// [`Self::write`], with each row's explanation (`explanations[i]` for `rows[i]`; missing
    /// entries are unexplained rows). Explanations are written only by a writer created with
    /// `explain`.
    pub fn write_explained(
        &mut self,
        rows: &[OutputRow<'_>],
        explanations: &[Option<&Explanation>],
    ) -> Result<(), OfflineIoError> {
        if self.write_failed {
            return Err(OfflineIoError::EarlierWriteFailed {
                path: self.temp_path.clone(),
            });
        }
        if rows.is_empty() {
            return Ok(());
        }
        self.check_rows(rows)?;
        let batch = self.record_batch(rows, explanations).map_err(|message| {
            OfflineIoError::WriteOutput {
                path: self.temp_path.clone(),
                message,
            }
        })?;
        let Some(writer) = self.writer.as_mut() else {
            return Err(OfflineIoError::EarlierWriteFailed {
                path: self.temp_path.clone(),
            });
        };
        if let Err(error) = writer.write(&batch) {
            self.write_failed = true;
            return Err(OfflineIoError::WriteOutput {
                path: self.temp_path.clone(),
                message: error.to_string(),
            });
        }
        self.rows_written += rows.len() as u64;
        // Start writing finished row groups to disk now, so that `finish`'s sync has little
        // left to wait for (it was 7% of a run's wall time on a virtual disk).
        let flushed = writer.bytes_written() as u64;
        if flushed >= self.written_back + WRITEBACK_BYTES {
            start_writeback(writer.inner(), self.written_back, flushed);
            self.written_back = flushed;
        }
        Ok(())
    }

    /// Completes the file and renames it to the output path; returns the number of rows
    /// written. On failure the output path is left untouched and the `.tmp` is removed, except
    /// when only the rename failed: then the complete file stays at [`Self::temp_path`].
    pub fn finish(mut self) -> Result<u64, OfflineIoError> {
        let write_error = |path: &Path, message: String| OfflineIoError::WriteOutput {
            path: path.to_owned(),
            message,
        };
        let writer = match (self.write_failed, self.writer.take()) {
            (false, Some(writer)) => writer,
            _ => {
                return Err(OfflineIoError::EarlierWriteFailed {
                    path: self.temp_path.clone(),
                })
            }
        };
        let file = writer
            .into_inner()
            .map_err(|e| write_error(&self.temp_path, e.to_string()))?;
        file.sync_all()
            .map_err(|e| write_error(&self.temp_path, e.to_string()))?;
        drop(file);
        if let Err(source) = fs::rename(&self.temp_path, &self.path) {
            self.remove_temp_on_drop = false;
            return Err(OfflineIoError::FinishOutput {
                path: self.path.clone(),
                temp_path: self.temp_path.clone(),
                source,
            });
        }
        self.remove_temp_on_drop = false;
        Ok(self.rows_written)
    }

    /// Checks what Arrow cannot hold: a prediction other than 0/1, or a batch whose strings
    /// exceed the 2 GiB a Utf8 column holds (very long `application_id`s from the input).
    fn check_rows(&self, rows: &[OutputRow<'_>]) -> Result<(), OfflineIoError> {
        let invalid = |row: u64, problem: String| OfflineIoError::InvalidOutputRow {
            path: self.temp_path.clone(),
            row,
            problem,
        };
        if let Some(bad) = rows
            .iter()
            .find(|r| r.scored.is_some_and(|s| s.prediction > 1))
        {
            let prediction = bad.scored.map_or(0, |s| s.prediction);
            return Err(invalid(
                bad.row,
                format!("prediction is {prediction}; it must be 0 or 1"),
            ));
        }
        let limit = i32::MAX as usize;
        let column_bytes: [(&str, usize); 4] = [
            (
                APPLICATION_ID_COLUMN,
                match self.id_column {
                    IdColumn::ApplicationId => rows.iter().map(|r| r.application_id.len()).sum(),
                    IdColumn::RowNumber => 0,
                },
            ),
            (
                "risk_level",
                rows.iter()
                    .map(|r| r.scored.map_or(0, |s| s.risk_level.len()))
                    .sum(),
            ),
            (
                "model_version",
                rows.iter()
                    .map(|r| r.scored.map_or(0, |s| s.model_version.len()))
                    .sum(),
            ),
            (
                "error",
                rows.iter().map(|r| r.error.map_or(0, str::len)).sum(),
            ),
        ];
        if let Some((column, bytes)) = column_bytes.iter().find(|(_, bytes)| *bytes > limit) {
            return Err(invalid(
                rows.first().map_or(0, |r| r.row),
                format!(
                    "the batch holds {bytes} bytes of {column}, more than a Utf8 column holds; \
                     write fewer rows per call"
                ),
            ));
        }
        Ok(())
    }

    /// The output columns of `rows`.
    fn record_batch(
        &self,
        rows: &[OutputRow<'_>],
        explanations: &[Option<&Explanation>],
    ) -> Result<RecordBatch, String> {
        columns::output_batch(
            &self.schema,
            self.id_column,
            self.explain,
            rows,
            explanations,
        )
    }
}

impl Drop for OutputWriter {
    /// A writer dropped before [`OutputWriter::finish`] (an error, a cancelled run) removes its
    /// partial `.tmp` file.
    fn drop(&mut self) {
        if self.remove_temp_on_drop {
            drop(self.writer.take());
            // Best effort: nothing useful can be done with an error while dropping.
            let _ = fs::remove_file(&self.temp_path);
        }
    }
}

/// `path` with `.tmp` appended to its file name, once `path` is checked to name a file in an
/// existing directory.
fn temp_path_for(path: &Path) -> Result<PathBuf, OfflineIoError> {
    let problem = |problem: String| OfflineIoError::OutputPath {
        path: path.to_owned(),
        problem,
    };
    let Some(file_name) = path.file_name() else {
        return Err(problem(
            "it does not name a file; give --out a file path such as scores.parquet".into(),
        ));
    };
    if path.is_dir() {
        return Err(problem(
            "it is a directory; give --out a file path such as scores.parquet".into(),
        ));
    }
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if !directory.is_dir() {
        return Err(problem(format!(
            "the directory {} does not exist; create it or choose another --out",
            directory.display()
        )));
    }
    let mut temp_name = file_name.to_os_string();
    temp_name.push(".tmp");
    Ok(path.with_file_name(temp_name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, AsArray, Float64Array, StringArray, UInt64Array};
    use arrow::array::{
        DictionaryArray, Float32Array, Int16Array, Int32Array, Int64Array, LargeStringArray,
        StringViewArray, UInt16Array, UInt32Array, UInt8Array,
    };
    use arrow::datatypes::{Float64Type, Int32Type, Int8Type, UInt64Type};
    use cra_model::application::{EmploymentStatus, HomeOwnership, LoanPurpose};
    use cra_model::input::Category;
    use std::sync::Arc;

    /// Writes `batch` as a snappy Parquet file with row groups of `rows_per_group` rows.
    fn write_input(path: &Path, batch: &RecordBatch, rows_per_group: usize) {
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(rows_per_group))
            .build();
        let file = File::create(path).unwrap();
        let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(properties)).unwrap();
        writer.write(batch).unwrap();
        writer.close().unwrap();
    }

    fn batch_of(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(columns).unwrap()
    }

    /// `batch` with each column replaced by what `change(name, column)` returns: a renamed or
    /// retyped column, or `None` to leave it out.
    fn with_columns(
        batch: &RecordBatch,
        mut change: impl FnMut(&str, &ArrayRef) -> Option<(String, ArrayRef)>,
    ) -> RecordBatch {
        let schema = batch.schema();
        let columns: Vec<(String, ArrayRef, bool)> = schema
            .fields()
            .iter()
            .zip(batch.columns())
            .filter_map(|(field, column)| change(field.name(), column))
            .map(|(name, column)| (name, column, true))
            .collect();
        RecordBatch::try_from_iter_with_nullable(columns).unwrap()
    }

    /// `column` unchanged under `name`.
    fn kept(name: &str, column: &ArrayRef) -> Option<(String, ArrayRef)> {
        Some((name.to_owned(), column.clone()))
    }

    fn floats(values: &[Option<f64>]) -> ArrayRef {
        Arc::new(Float64Array::from(values.to_vec()))
    }

    /// Five applications in every accepted shape: columns in a shuffled order, each integer
    /// and float width, dictionaries, large and view strings, nulls, NaN, an empty and an
    /// unknown category, an Int64 application_id with a null, and ignored extra columns.
    fn mixed_input() -> RecordBatch {
        let employment_status: DictionaryArray<Int32Type> = vec![
            Some("employed"),
            None,
            Some("astronaut"),
            Some(""),
            Some("employed"),
        ]
        .into_iter()
        .collect();
        let home_ownership = DictionaryArray::<Int8Type>::try_new(
            arrow::array::Int8Array::from(vec![Some(0), Some(1), Some(1), None, Some(0)]),
            Arc::new(LargeStringArray::from(vec!["rent", "own"])),
        )
        .unwrap();
        batch_of(vec![
            (
                "loan_purpose",
                Arc::new(StringViewArray::from(vec![
                    Some("auto"),
                    Some("medical"),
                    None,
                    Some("yacht"),
                    Some("auto"),
                ])),
            ),
            (
                "age",
                Arc::new(Int32Array::from(vec![
                    Some(35),
                    None,
                    Some(70),
                    Some(18),
                    Some(44),
                ])),
            ),
            (
                "income",
                Arc::new(Float32Array::from(vec![
                    Some(52000.5),
                    Some(1e5),
                    None,
                    Some(f32::NAN),
                    Some(30000.0),
                ])),
            ),
            (
                "employment_length",
                Arc::new(Int64Array::from(vec![
                    Some(5),
                    Some(0),
                    None,
                    Some(1),
                    Some(80),
                ])),
            ),
            (
                "credit_score",
                Arc::new(UInt16Array::from(vec![
                    Some(720),
                    None,
                    Some(850),
                    Some(300),
                    None,
                ])),
            ),
            (
                "num_credit_lines",
                Arc::new(UInt8Array::from(vec![
                    Some(4),
                    Some(0),
                    None,
                    Some(255),
                    Some(2),
                ])),
            ),
            (
                "credit_utilization",
                floats(&[Some(0.25), Some(f64::NAN), None, Some(1.5), Some(0.0)]),
            ),
            (
                "debt_to_income",
                floats(&[Some(12.5), Some(40.0), Some(0.0), None, Some(3.25)]),
            ),
            (
                "total_debt",
                Arc::new(Int64Array::from(vec![
                    Some(1000),
                    Some(-5),
                    Some(0),
                    None,
                    Some(7),
                ])),
            ),
            (
                "savings",
                Arc::new(UInt32Array::from(vec![
                    Some(500),
                    None,
                    Some(0),
                    Some(1),
                    Some(9),
                ])),
            ),
            (
                "loan_amount",
                Arc::new(UInt64Array::from(vec![
                    Some(15000),
                    Some(1),
                    None,
                    Some(u64::from(u32::MAX)),
                    Some(2500),
                ])),
            ),
            (
                "loan_term",
                Arc::new(Int16Array::from(vec![
                    Some(36),
                    Some(60),
                    Some(480),
                    None,
                    Some(12),
                ])),
            ),
            (
                "num_late_payments",
                Arc::new(arrow::array::Int8Array::from(vec![
                    Some(0),
                    Some(-1),
                    None,
                    Some(3),
                    Some(127),
                ])),
            ),
            (
                "num_bankruptcies",
                Arc::new(Int32Array::from(vec![None::<i32>; 5])),
            ),
            (
                "inquiries_last_6m",
                floats(&[Some(1.0), Some(2.5), None, Some(f64::INFINITY), Some(0.0)]),
            ),
            ("employment_status", Arc::new(employment_status)),
            ("home_ownership", Arc::new(home_ownership)),
            (
                "application_id",
                Arc::new(Int64Array::from(vec![
                    Some(1001),
                    Some(-7),
                    None,
                    Some(i64::MAX),
                    Some(0),
                ])),
            ),
            ("default", Arc::new(Int64Array::from(vec![0, 1, 0, 1, 0]))),
            (
                "true_pd",
                floats(&[Some(0.1), Some(0.9), Some(0.2), Some(0.5), Some(0.3)]),
            ),
        ])
    }

    /// A category as the reader keeps it: a known spelling as its code, any other as written.
    fn known<T: cra_model::input::CategoryValue>(s: &str) -> Category {
        T::parse(s).map_or_else(
            || Category::Name(s.to_owned()),
            |v| Category::Code(v.code()),
        )
    }

    fn expected_mixed() -> Vec<ApplicationInput> {
        vec![
            ApplicationInput {
                decode_errors: Vec::new(),
                application_id: "1001".into(),
                age: Some(35.0),
                income: Some(52000.5),
                employment_length: Some(5.0),
                credit_score: Some(720.0),
                num_credit_lines: Some(4.0),
                credit_utilization: Some(0.25),
                debt_to_income: Some(12.5),
                total_debt: Some(1000.0),
                savings: Some(500.0),
                loan_amount: Some(15000.0),
                loan_term: Some(36.0),
                num_late_payments: Some(0.0),
                num_bankruptcies: None,
                inquiries_last_6m: Some(1.0),
                employment_status: known::<EmploymentStatus>("employed"),
                home_ownership: known::<HomeOwnership>("rent"),
                loan_purpose: known::<LoanPurpose>("auto"),
            },
            ApplicationInput {
                decode_errors: Vec::new(),
                application_id: "-7".into(),
                age: None,
                income: Some(100000.0),
                employment_length: Some(0.0),
                credit_score: None,
                num_credit_lines: Some(0.0),
                credit_utilization: Some(f64::NAN),
                debt_to_income: Some(40.0),
                total_debt: Some(-5.0),
                savings: None,
                loan_amount: Some(1.0),
                loan_term: Some(60.0),
                num_late_payments: Some(-1.0),
                num_bankruptcies: None,
                inquiries_last_6m: Some(2.5),
                employment_status: Category::Absent,
                home_ownership: known::<HomeOwnership>("own"),
                loan_purpose: known::<LoanPurpose>("medical"),
            },
            ApplicationInput {
                decode_errors: Vec::new(),
                application_id: String::new(),
                age: Some(70.0),
                income: None,
                employment_length: None,
                credit_score: Some(850.0),
                num_credit_lines: None,
                credit_utilization: None,
                debt_to_income: Some(0.0),
                total_debt: Some(0.0),
                savings: Some(0.0),
                loan_amount: None,
                loan_term: Some(480.0),
                num_late_payments: None,
                num_bankruptcies: None,
                inquiries_last_6m: None,
                employment_status: known::<EmploymentStatus>("astronaut"),
                home_ownership: known::<HomeOwnership>("own"),
                loan_purpose: Category::Absent,
            },
            ApplicationInput {
                decode_errors: Vec::new(),
                application_id: i64::MAX.to_string(),
                age: Some(18.0),
                income: Some(f64::NAN),
                employment_length: Some(1.0),
                credit_score: Some(300.0),
                num_credit_lines: Some(255.0),
                credit_utilization: Some(1.5),
                debt_to_income: None,
                total_debt: None,
                savings: Some(1.0),
                loan_amount: Some(f64::from(u32::MAX)),
                loan_term: None,
                num_late_payments: Some(3.0),
                num_bankruptcies: None,
                inquiries_last_6m: Some(f64::INFINITY),
                employment_status: known::<EmploymentStatus>(""),
                home_ownership: Category::Absent,
                loan_purpose: known::<LoanPurpose>("yacht"),
            },
            ApplicationInput {
                decode_errors: Vec::new(),
                application_id: "0".into(),
                age: Some(44.0),
                income: Some(30000.0),
                employment_length: Some(80.0),
                credit_score: None,
                num_credit_lines: Some(2.0),
                credit_utilization: Some(0.0),
                debt_to_income: Some(3.25),
                total_debt: Some(7.0),
                savings: Some(9.0),
                loan_amount: Some(2500.0),
                loan_term: Some(12.0),
                num_late_payments: Some(127.0),
                num_bankruptcies: None,
                inquiries_last_6m: Some(0.0),
                employment_status: known::<EmploymentStatus>("employed"),
                home_ownership: known::<HomeOwnership>("rent"),
                loan_purpose: known::<LoanPurpose>("auto"),
            },
        ]
    }

    /// Compares applications field by field, NaN equal to NaN (`Debug` prints it as `NaN`).
    fn assert_same_inputs(actual: &[ApplicationInput], expected: &[ApplicationInput]) {
        assert_eq!(actual.len(), expected.len());
        for (row, (a, e)) in actual.iter().zip(expected).enumerate() {
            assert_eq!(format!("{a:?}"), format!("{e:?}"), "row {row}");
        }
    }

    #[test]
    fn reads_mixed_types_across_batches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.parquet");
        write_input(&path, &mixed_input(), 3);
        // The dictionary and view types survive the file, so their decoding is exercised.
        let file_schema = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
            .unwrap()
            .schema()
            .clone();
        for (column, is_expected_type) in [
            ("employment_status", "Dictionary(Int32, Utf8)"),
            ("home_ownership", "Dictionary(Int8, LargeUtf8)"),
            ("loan_purpose", "Utf8View"),
        ] {
            let field = file_schema.field_with_name(column).unwrap();
            assert_eq!(field.data_type().to_string(), is_expected_type);
        }

        let reader = InputReader::open(&path, 2).unwrap();
        assert_eq!(reader.num_rows(), 5);
        assert!(reader.has_application_id());
        let batches: Vec<InputBatch> = reader.map(Result::unwrap).collect();
        let first_rows: Vec<u64> = batches.iter().map(|b| b.first_row).collect();
        assert_eq!(first_rows, [0, 2, 4]);
        let sizes: Vec<usize> = batches.iter().map(|b| b.inputs.len()).collect();
        assert_eq!(sizes, [2, 2, 1]);
        let all: Vec<ApplicationInput> = batches.into_iter().flat_map(|b| b.inputs).collect();
        assert_same_inputs(&all, &expected_mixed());
    }

    #[test]
    fn string_ids_are_read_as_written_and_an_absent_id_column_reads_empty() {
        let dir = tempfile::tempdir().unwrap();
        let mixed = mixed_input();
        let without_id = with_columns(&mixed, |name, column| {
            (name != APPLICATION_ID_COLUMN)
                .then(|| kept(name, column))
                .flatten()
        });
        let path = dir.path().join("no_id.parquet");
        write_input(&path, &without_id, 1024);
        let mut reader = InputReader::open(&path, 1024).unwrap();
        assert!(!reader.has_application_id());
        let batch = reader.next_batch().unwrap().unwrap();
        assert!(batch.inputs.iter().all(|i| i.application_id.is_empty()));
        assert!(reader.next_batch().is_none());
        assert!(reader.next_batch().is_none());

        let ids: ArrayRef = Arc::new(StringArray::from(vec![
            Some("a-1"),
            None,
            Some(""),
            Some("ünï"),
            Some("x"),
        ]));
        let with_string_ids = with_columns(&mixed, |name, column| match name {
            APPLICATION_ID_COLUMN => kept(name, &ids),
            _ => kept(name, column),
        });
        let path = dir.path().join("string_id.parquet");
        write_input(&path, &with_string_ids, 1024);
        let read: Vec<String> = InputReader::open(&path, 4)
            .unwrap()
            .flat_map(|b| b.unwrap().inputs)
            .map(|i| i.application_id)
            .collect();
        assert_eq!(read, ["a-1", "", "", "ünï", "x"]);
    }

    #[test]
    fn all_null_columns_of_type_null_read_as_absent() {
        let dir = tempfile::tempdir().unwrap();
        let mixed = mixed_input();
        let all_null: ArrayRef = Arc::new(arrow::array::NullArray::new(5));
        let with_null_columns = with_columns(&mixed, |name, column| match name {
            "credit_score" | "loan_purpose" | APPLICATION_ID_COLUMN => kept(name, &all_null),
            _ => kept(name, column),
        });
        let path = dir.path().join("nulls.parquet");
        write_input(&path, &with_null_columns, 1024);
        let inputs: Vec<ApplicationInput> = InputReader::open(&path, 8)
            .unwrap()
            .flat_map(|b| b.unwrap().inputs)
            .collect();
        assert_eq!(inputs.len(), 5);
        for input in &inputs {
            assert_eq!(input.credit_score, None);
            assert_eq!(input.loan_purpose, Category::Absent);
            assert_eq!(input.application_id, "");
        }
        assert_eq!(inputs[0].age, Some(35.0));
    }

    #[test]
    fn every_missing_column_is_named_in_one_error() {
        let dir = tempfile::tempdir().unwrap();
        let mixed = mixed_input();
        let without_two = with_columns(&mixed, |name, column| match name {
            "income" | "loan_purpose" => None,
            _ => kept(name, column),
        });
        let path = dir.path().join("missing.parquet");
        write_input(&path, &without_two, 1024);
        let error = InputReader::open(&path, 8).unwrap_err();
        let OfflineIoError::Schema {
            missing, mistyped, ..
        } = &error
        else {
            panic!("expected a schema error, got {error}");
        };
        assert_eq!(missing, &["income", "loan_purpose"]);
        assert!(mistyped.is_empty());
        let message = error.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(
            message.contains("lacks the column(s) income, loan_purpose"),
            "{message}"
        );
    }

    #[test]
    fn mistyped_columns_are_named_with_their_type_and_what_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let mixed = mixed_input();
        let booleans: ArrayRef = Arc::new(arrow::array::BooleanArray::from(vec![true; 5]));
        let integers: ArrayRef = Arc::new(Int32Array::from(vec![1; 5]));
        let mistyped_batch = with_columns(&mixed, |name, column| match name {
            "age" => kept(name, &booleans),
            "home_ownership" => kept(name, &integers),
            APPLICATION_ID_COLUMN => kept(name, &floats(&[Some(1.0); 5])),
            // Case matters: `Savings` does not stand for `savings`.
            "savings" => kept("Savings", column),
            _ => kept(name, column),
        });
        let path = dir.path().join("mistyped.parquet");
        write_input(&path, &mistyped_batch, 1024);
        let error = InputReader::open(&path, 8).unwrap_err();
        let OfflineIoError::Schema {
            missing, mistyped, ..
        } = &error
        else {
            panic!("expected a schema error, got {error}");
        };
        assert_eq!(
            missing,
            &["savings (there is a column \"Savings\": names are case-sensitive)"]
        );
        assert_eq!(mistyped.len(), 3, "{mistyped:?}");
        assert!(
            mistyped[0].starts_with("age is Boolean; accepted: Int8, "),
            "{mistyped:?}"
        );
        assert!(
            mistyped[1].starts_with("home_ownership is Int32; accepted: Utf8, "),
            "{mistyped:?}"
        );
        assert!(
            mistyped[2].starts_with("application_id is Float64; accepted: a string"),
            "{mistyped:?}"
        );
    }

    #[test]
    fn a_file_that_is_not_parquet_or_not_there_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.csv");
        fs::write(&path, "age,income\n35,52000\n").unwrap();
        let error = InputReader::open(&path, 8).unwrap_err();
        assert!(
            matches!(error, OfflineIoError::NotParquet { .. }),
            "{error}"
        );
        assert!(error
            .to_string()
            .contains("in.csv is not a readable Parquet file"));

        let absent = dir.path().join("absent.parquet");
        let error = InputReader::open(&absent, 8).unwrap_err();
        assert!(
            matches!(error, OfflineIoError::InputNotFound { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("absent.parquet does not exist"));

        let error = InputReader::open(dir.path(), 8).unwrap_err();
        assert!(matches!(error, OfflineIoError::OpenInput { .. }), "{error}");
    }

    #[test]
    fn a_damaged_file_gives_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.parquet");
        write_input(&path, &mixed_input(), 2);
        let bytes = fs::read(&path).unwrap();

        // Cut short: the footer is gone.
        let truncated = dir.path().join("truncated.parquet");
        fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(
            InputReader::open(&truncated, 2).unwrap_err(),
            OfflineIoError::NotParquet { .. }
        ));

        // The first row group's column chunks overwritten, footer intact: opening works,
        // reading fails.
        let metadata = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
            .unwrap()
            .metadata()
            .clone();
        let mut damaged = bytes.clone();
        for chunk in metadata.row_group(0).columns() {
            let (start, length) = chunk.byte_range();
            let range = start as usize..(start + length) as usize;
            damaged[range].iter_mut().for_each(|b| *b = 0xA5);
        }
        let damaged_path = dir.path().join("damaged.parquet");
        fs::write(&damaged_path, &damaged).unwrap();
        let results: Vec<_> = InputReader::open(&damaged_path, 2).unwrap().collect();
        let error = results.last().unwrap().as_ref().unwrap_err();
        assert!(error.to_string().contains("damaged.parquet"), "{error}");
    }

    #[test]
    fn a_footer_whose_count_disagrees_with_its_row_groups_is_refused() {
        use parquet::file::metadata::{FileMetaData, ParquetMetaDataReader};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.parquet");
        write_input(&path, &mixed_input(), 2);
        let metadata = ParquetMetaDataReader::new()
            .parse_and_finish(&File::open(&path).unwrap())
            .unwrap();
        assert_eq!(declared_rows(&metadata), Ok(5));
        let file = metadata.file_metadata();
        let lying = FileMetaData::new(
            file.version(),
            1 << 40,
            file.created_by().map(str::to_string),
            file.key_value_metadata().cloned(),
            file.schema_descr_ptr(),
            file.column_orders().cloned(),
        );
        let metadata = ParquetMetaData::new(lying, metadata.row_groups().to_vec());
        assert_eq!(
            declared_rows(&metadata),
            Err("it declares 1099511627776 rows, its row groups 5".to_string())
        );
    }

    #[test]
    fn a_large_file_streams_in_bounded_batches() {
        let dir = tempfile::tempdir().unwrap();
        let rows = 20_000;
        let mixed = mixed_input();
        // Repeat the 5 mixed rows, with the row number as application_id.
        let indices = arrow::array::UInt32Array::from_iter_values((0..rows).map(|i| i % 5));
        let row_numbers: ArrayRef = Arc::new(UInt32Array::from_iter_values(0..rows));
        let large = with_columns(&mixed, |name, column| match name {
            APPLICATION_ID_COLUMN => kept(name, &row_numbers),
            _ => kept(
                name,
                &arrow::compute::take(column.as_ref(), &indices, None).unwrap(),
            ),
        });
        let path = dir.path().join("large.parquet");
        write_input(&path, &large, 4096);
        let reader = InputReader::open(&path, 1000).unwrap();
        assert_eq!(reader.num_rows(), u64::from(rows));
        let mut next_row = 0u64;
        for batch in reader {
            let batch = batch.unwrap();
            assert_eq!(batch.first_row, next_row);
            assert!(batch.inputs.len() <= 1000);
            for (offset, input) in batch.inputs.iter().enumerate() {
                let row = batch.first_row + offset as u64;
                assert_eq!(input.application_id, row.to_string());
                assert_eq!(
                    input.employment_status,
                    expected_mixed()[(row % 5) as usize].employment_status
                );
            }
            next_row += batch.inputs.len() as u64;
        }
        assert_eq!(next_row, u64::from(rows));
    }

    // --- Output ------------------------------------------------------------------------------

    fn scored(probability_default: f64, prediction: u8) -> ScoredColumns<'static> {
        ScoredColumns {
            probability_default,
            risk_score: 850.0 - 550.0 * probability_default,
            risk_level: if prediction == 1 { "high" } else { "low" },
            prediction,
            margin: -1.25,
            model_version: "v7",
        }
    }

    fn sample_rows() -> Vec<OutputRow<'static>> {
        vec![
            OutputRow {
                row: 0,
                application_id: "a-0",
                scored: Some(scored(0.05, 0)),
                error: None,
            },
            OutputRow {
                row: 1,
                application_id: "",
                scored: None,
                error: Some("age: must be between 18 and 120; got 17"),
            },
            OutputRow {
                row: 2,
                application_id: "a-2",
                scored: Some(scored(0.75, 1)),
                error: None,
            },
        ]
    }

    fn read_output(path: &Path) -> RecordBatch {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
        arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
    }

    #[test]
    fn output_round_trips_with_error_rows_as_nulls() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scores.parquet");
        let mut writer = OutputWriter::create(&path, IdColumn::ApplicationId).unwrap();
        let temp_path = writer.temp_path().to_owned();
        assert_eq!(temp_path, dir.path().join("scores.parquet.tmp"));
        let rows = sample_rows();
        writer.write(&rows[..2]).unwrap();
        writer.write(&[]).unwrap();
        writer.write(&rows[2..]).unwrap();
        assert!(!path.exists(), "nothing under the final name before finish");
        assert_eq!(writer.finish().unwrap(), 3);
        assert!(path.exists());
        assert!(!temp_path.exists(), "no .tmp left after finish");

        let batch = read_output(&path);
        assert_eq!(batch.schema(), output_schema(IdColumn::ApplicationId));
        assert_eq!(batch.num_rows(), 3);
        let strings = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_string::<i32>()
                .clone()
        };
        let numbers = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_primitive::<Float64Type>()
                .clone()
        };
        let ids = strings("application_id");
        assert_eq!(
            ids.iter().collect::<Vec<_>>(),
            [Some("a-0"), Some(""), Some("a-2")]
        );
        assert_eq!(
            numbers("probability_default").iter().collect::<Vec<_>>(),
            [Some(0.05), None, Some(0.75)]
        );
        assert_eq!(
            numbers("risk_score").iter().collect::<Vec<_>>(),
            [Some(850.0 - 550.0 * 0.05), None, Some(850.0 - 550.0 * 0.75)]
        );
        assert_eq!(
            strings("risk_level").iter().collect::<Vec<_>>(),
            [Some("low"), None, Some("high")]
        );
        let predictions = batch
            .column_by_name("prediction")
            .unwrap()
            .as_primitive::<Int8Type>();
        assert_eq!(
            predictions.iter().collect::<Vec<_>>(),
            [Some(0), None, Some(1)]
        );
        assert_eq!(
            numbers("margin").iter().collect::<Vec<_>>(),
            [Some(-1.25), None, Some(-1.25)]
        );
        assert_eq!(
            strings("model_version").iter().collect::<Vec<_>>(),
            [Some("v7"), None, Some("v7")]
        );
        assert_eq!(
            strings("error").iter().collect::<Vec<_>>(),
            [None, Some("age: must be between 18 and 120; got 17"), None]
        );
    }

    #[test]
    fn row_numbers_are_the_id_without_application_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scores.parquet");
        let mut writer = OutputWriter::create(&path, IdColumn::RowNumber).unwrap();
        writer.write(&sample_rows()).unwrap();
        assert_eq!(writer.finish().unwrap(), 3);
        let batch = read_output(&path);
        assert_eq!(batch.schema(), output_schema(IdColumn::RowNumber));
        assert_eq!(batch.schema().field(0).name(), ROW_COLUMN);
        let rows = batch.column(0).as_primitive::<UInt64Type>();
        assert_eq!(rows.values().to_vec(), [0, 1, 2]);
    }

    #[test]
    fn output_flushes_row_groups_of_bounded_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scores.parquet");
        let mut writer = OutputWriter::create(&path, IdColumn::RowNumber).unwrap();
        let total = 150_000u64;
        let mut row = 0u64;
        while row < total {
            let rows: Vec<OutputRow<'_>> = (row..(row + 10_000).min(total))
                .map(|r| OutputRow {
                    row: r,
                    application_id: "",
                    scored: Some(scored(0.5, (r % 2) as u8)),
                    error: None,
                })
                .collect();
            writer.write(&rows).unwrap();
            row += rows.len() as u64;
        }
        assert_eq!(writer.finish().unwrap(), total);
        let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap()).unwrap();
        let groups = builder.metadata().row_groups();
        assert_eq!(groups.len(), 3);
        assert!(groups
            .iter()
            .all(|g| g.num_rows() <= OUTPUT_ROWS_PER_ROW_GROUP as i64));
        assert_eq!(declared_rows(builder.metadata()), Ok(total));
    }

    #[test]
    fn an_unfinished_output_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scores.parquet");
        let mut writer = OutputWriter::create(&path, IdColumn::ApplicationId).unwrap();
        writer.write(&sample_rows()).unwrap();
        assert!(writer.temp_path().exists());
        drop(writer);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_prediction_other_than_0_or_1_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scores.parquet");
        let mut writer = OutputWriter::create(&path, IdColumn::ApplicationId).unwrap();
        let mut rows = sample_rows();
        rows[2].scored = Some(scored(0.75, 2));
        let error = writer.write(&rows).unwrap_err();
        assert!(
            error.to_string().contains("row 2") && error.to_string().contains("prediction is 2"),
            "{error}"
        );
        // Nothing was written by the refused call; the writer is still usable.
        writer.write(&rows[..2]).unwrap();
        assert_eq!(writer.finish().unwrap(), 2);
    }

    #[test]
    fn bad_output_paths_are_named_before_any_scoring() {
        let dir = tempfile::tempdir().unwrap();
        let error = OutputWriter::create(
            &dir.path().join("no/such/dir/out.parquet"),
            IdColumn::RowNumber,
        )
        .unwrap_err();
        assert!(
            matches!(error, OfflineIoError::OutputPath { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("does not exist"), "{error}");

        let error = OutputWriter::create(dir.path(), IdColumn::RowNumber).unwrap_err();
        assert!(error.to_string().contains("is a directory"), "{error}");
    }

    #[test]
    fn an_empty_file_reads_no_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.parquet");
        write_input(&path, &mixed_input().slice(0, 0), 1024);
        let mut reader = InputReader::open(&path, 8).unwrap();
        assert_eq!(reader.num_rows(), 0);
        assert!(reader.next_batch().is_none());
    }

    #[test]
    fn a_decoder_panic_becomes_an_error() {
        let message =
            without_panic(|| -> u8 { panic!("assertion failed: end <= len") }).unwrap_err();
        assert!(
            message.contains("assertion failed: end <= len"),
            "{message}"
        );
        assert_eq!(without_panic(|| 7), Ok(7));
    }

    #[test]
    fn readers_writers_and_errors_can_cross_threads() {
        fn send<T: Send>() {}
        fn send_sync<T: Send + Sync + 'static>() {}
        send::<InputReader>();
        send::<OutputWriter>();
        send_sync::<OfflineIoError>();
    }
}
