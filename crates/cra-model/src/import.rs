//! A model bundle from a booster trained elsewhere and the preprocessing fitted with it: what
//! `cra import --booster model.json|model.ubj --preprocessing spec.json --out DIR` and the
//! Python package's `cra.export_sklearn` write.
//!
//! The booster is XGBoost's own model file, JSON or UBJSON (XGBoost's binary JSON, `.ubj`); the
//! bundle keeps it as XGBoost JSON. The preprocessing spec ([`ImportSpec`], JSON) holds the
//! fitted scaler and encoder in the bundle's own form ([`FittedPreprocessor`]) and canary rows
//! with the probabilities the original pipeline gave them. The bundle is written to a folder
//! beside `out`, loaded and verified there like any bundle (checksums, manifest, booster,
//! and the compiled trees reproducing every canary probability to 1e-6), and only then renamed
//! to `out`: a booster or a spec that does not reproduce the pipeline leaves nothing behind.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    bundle::{
        checksums_text, feature_specs, model_version_for, sha256_hex, xgboost_version_of,
        BundleError, Canary, Manifest, ModelBundle, Thresholds, BOOSTER_FILE, CHECKSUMS_FILE,
        FORMAT_VERSION, MANIFEST_FILE, METRICS_FILE, REASON_CODES_FILE,
    },
    ensemble::Ensemble,
    explain::ReasonCodeTable,
    preprocess::{FittedPreprocessor, NUM_FEATURES},
};

/// The spec format this build reads.
pub const SPEC_FORMAT: u32 = 1;

/// The preprocessing spec: everything about an imported model except its trees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportSpec {
    pub format_version: u32,
    /// The fitted scaler and encoder, in the bundle's own form.
    pub preprocessor: FittedPreprocessor,
    /// Rows and the probabilities the original pipeline gave them (at least
    /// [`crate::bundle::MIN_CANARY_ROWS`]).
    pub canary: Canary,
    /// Cut-offs; the defaults (0.5; LOW below 30, MEDIUM below 60) when absent.
    #[serde(default)]
    pub thresholds: Option<Thresholds>,
    /// Where the model comes from and how it was trained (library versions, parameters), kept
    /// as the manifest's hyper-parameters.
    #[serde(default)]
    pub hyperparameters: BTreeMap<String, String>,
    /// Rows the model was trained on, when known.
    #[serde(default)]
    pub training_rows: u64,
    /// SHA-256 of the training data, when known.
    #[serde(default)]
    pub training_data_sha256: Option<String>,
    /// Test metrics to keep as `metrics.json` (numbers), when known.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
}

/// The booster file's encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoosterFormat {
    Json,
    /// XGBoost's UBJSON (`Booster.save_model("model.ubj")`, the default since XGBoost 2).
    Ubjson,
}

impl BoosterFormat {
    /// The format a file name says (`.json` or `.ubj`), if it says one.
    pub fn of_path(path: &Path) -> Option<BoosterFormat> {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => Some(BoosterFormat::Json),
            Some(e) if e.eq_ignore_ascii_case("ubj") => Some(BoosterFormat::Ubjson),
            _ => None,
        }
    }
}

/// Why a model could not be imported; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("the booster is not a readable XGBoost {format} model: {message}; save it with `booster.save_model(\"model.json\")` (or .ubj)")]
    Booster {
        format: &'static str,
        message: String,
    },
    #[error("the booster cannot be served: {0}")]
    Unservable(String),
    #[error("the preprocessing spec is not valid: {}", .0.join("; "))]
    Spec(Vec<String>),
    #[error("{path} already exists; choose another output folder or remove it")]
    Exists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the imported model does not reproduce the original pipeline: canary row {row}: CRA predicts {got:.9}, the pipeline gave {expected:.9}. The pipeline has a step, a setting or a booster that CRA does not reproduce, or the spec does not describe this booster")]
    Canary { row: usize, got: f64, expected: f64 },
    #[error("the written bundle does not load: {0}")]
    Bundle(#[from] BundleError),
}

/// Reads a booster file as XGBoost JSON bytes: JSON as it is, UBJSON converted. `None` format:
/// JSON when the file parses as JSON, else UBJSON.
pub fn booster_json(bytes: &[u8], format: Option<BoosterFormat>) -> Result<Vec<u8>, ImportError> {
    let as_json = || -> Result<Vec<u8>, ImportError> {
        serde_json::from_slice::<Value>(bytes).map_err(|e| ImportError::Booster {
            format: "JSON",
            message: e.to_string(),
        })?;
        Ok(bytes.to_vec())
    };
    let from_ubj = || -> Result<Vec<u8>, ImportError> {
        let value = ubjson::parse(bytes).map_err(|message| ImportError::Booster {
            format: "UBJSON",
            message,
        })?;
        Ok(serde_json::to_vec(&value).expect("a JSON value serialises"))
    };
    match format {
        Some(BoosterFormat::Json) => as_json(),
        Some(BoosterFormat::Ubjson) => from_ubj(),
        None => as_json().or_else(|_| from_ubj()),
    }
}

/// Every problem of a spec on its own (the booster is checked separately).
fn spec_problems(spec: &ImportSpec) -> Vec<String> {
    let mut out = Vec::new();
    if spec.format_version != SPEC_FORMAT {
        out.push(format!(
            "format_version is {}; this build reads {SPEC_FORMAT}",
            spec.format_version
        ));
    }
    if let Err(e) = spec.preprocessor.validate() {
        out.push(e.to_string());
    }
    if let Some(t) = &spec.thresholds {
        out.extend(t.problems());
    }
    if let Some(h) = &spec.training_data_sha256 {
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            out.push(format!("training_data_sha256 {h:?} is not a hex SHA-256"));
        }
    }
    let (rows, probabilities) = (spec.canary.rows.len(), spec.canary.probabilities.len());
    if rows != probabilities {
        out.push(format!(
            "canary has {rows} rows but {probabilities} probabilities; they must pair up"
        ));
    }
    if rows.min(probabilities) < crate::bundle::MIN_CANARY_ROWS {
        out.push(format!(
            "canary has {} rows; at least {} rows with the probabilities the original pipeline gave them are needed to verify the import",
            rows.min(probabilities),
            crate::bundle::MIN_CANARY_ROWS
        ));
    }
    out
}

/// Writes the bundle of `booster` (XGBoost JSON or UBJSON) and `spec` into `out`, which must
/// not exist, and returns it loaded and verified. `reason_codes`: the reason-code table, or the
/// standard one when `None`.
pub fn import_bundle(
    booster: &[u8],
    format: Option<BoosterFormat>,
    spec: &ImportSpec,
    reason_codes: Option<&ReasonCodeTable>,
    out: &Path,
) -> Result<ModelBundle, ImportError> {
    let booster_json = booster_json(booster, format)?;
    let ensemble = Ensemble::from_xgboost_json(&booster_json)
        .map_err(|e| ImportError::Unservable(e.to_string()))?;
    if ensemble.num_features() != NUM_FEATURES {
        return Err(ImportError::Unservable(format!(
            "the booster expects {} features; CRA's model has {NUM_FEATURES} (the 16 scaled numerics, then the 3 encoded categoricals)",
            ensemble.num_features()
        )));
    }
    let mut problems = spec_problems(spec);
    if let Some(t) = reason_codes {
        problems.extend(
            t.problems()
                .into_iter()
                .map(|p| format!("reason codes: {p}")),
        );
    }
    if !problems.is_empty() {
        return Err(ImportError::Spec(problems));
    }
    if out.exists() {
        return Err(ImportError::Exists {
            path: out.to_owned(),
        });
    }
    let artifact_sha256 = sha256_hex(&booster_json);
    let mut hyperparameters = spec.hyperparameters.clone();
    hyperparameters
        .entry("imported".into())
        .or_insert_with(|| "cra import".into());
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        model_version: model_version_for(&artifact_sha256),
        trained_at: chrono::Utc::now(),
        xgboost_version: xgboost_version_of(&booster_json),
        artifact_sha256,
        training_data_sha256: spec.training_data_sha256.clone().unwrap_or_default(),
        training_rows: spec.training_rows,
        hyperparameters,
        thresholds: spec.thresholds.unwrap_or_default(),
        features: feature_specs(),
        preprocessor: spec.preprocessor.clone(),
        canary: spec.canary.clone(),
    };
    let manifest_json = pretty(&manifest);
    let metrics_json = pretty(&spec.metrics);
    let reason_json = reason_codes.map(pretty);
    let mut files: Vec<(&str, &[u8])> = vec![
        (BOOSTER_FILE, &booster_json),
        (MANIFEST_FILE, &manifest_json),
        (METRICS_FILE, &metrics_json),
    ];
    if let Some(r) = &reason_json {
        files.push((REASON_CODES_FILE, r));
    }
    let checksums = checksums_text(files.iter().copied());

    // Written beside `out`, verified there, then renamed into place.
    let staging = staging_dir(out);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ImportError::Io { path, source }
    };
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    fs::create_dir_all(&staging).map_err(io(&staging))?;
    let written = (|| {
        for (name, bytes) in files.iter().filter(|(n, _)| *n != MANIFEST_FILE) {
            fs::write(staging.join(name), bytes).map_err(io(&staging.join(name)))?;
        }
        let sums = staging.join(CHECKSUMS_FILE);
        fs::write(&sums, checksums.as_bytes()).map_err(io(&sums))?;
        // The manifest last: a bundle without it is "not found" rather than half-written.
        let m = staging.join(MANIFEST_FILE);
        fs::write(&m, &manifest_json).map_err(io(&m))?;
        match ModelBundle::load(&staging) {
            Ok(_) => Ok(()),
            Err(BundleError::Canary {
                row, got, expected, ..
            }) => Err(ImportError::Canary { row, got, expected }),
            Err(e) => Err(ImportError::Bundle(e)),
        }
    })();
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    if let Err(source) = fs::rename(&staging, out) {
        let _ = fs::remove_dir_all(&staging);
        return Err(ImportError::Io {
            path: out.to_owned(),
            source,
        });
    }
    Ok(ModelBundle::load(out)?)
}

/// The folder an import is written to before it is verified: `out` with `.importing` appended.
fn staging_dir(out: &Path) -> PathBuf {
    let mut name = out
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "bundle".into());
    name.push(".importing");
    out.with_file_name(name)
}

/// Pretty JSON of a bundle file, with a final newline.
fn pretty<T: Serialize>(v: &T) -> Vec<u8> {
    let mut s = serde_json::to_vec_pretty(v).expect("bundle types serialise to JSON");
    s.push(b'\n');
    s
}

/// XGBoost's UBJSON (Universal Binary JSON, draft 12, big-endian), read into a JSON value:
/// objects, arrays (plain, counted, and strongly typed `[$T#N` as XGBoost writes its vectors),
/// strings, integers, `f32`/`f64` numbers, booleans and null.
pub mod ubjson {
    use serde_json::{Map, Number, Value};

    /// Deepest nesting read (an XGBoost model is about 8 levels deep).
    const MAX_DEPTH: usize = 64;

    /// Parses one UBJSON value that fills `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Value, String> {
        let mut r = Reader { bytes, at: 0 };
        let v = r.value(0)?;
        if r.at != bytes.len() {
            return Err(format!(
                "{} bytes follow the value at offset {}",
                bytes.len() - r.at,
                r.at
            ));
        }
        Ok(v)
    }

    struct Reader<'a> {
        bytes: &'a [u8],
        at: usize,
    }

    impl Reader<'_> {
        fn take(&mut self, n: usize) -> Result<&[u8], String> {
            let end = self
                .at
                .checked_add(n)
                .filter(|&e| e <= self.bytes.len())
                .ok_or_else(|| format!("the file ends inside a value at offset {}", self.at))?;
            let s = &self.bytes[self.at..end];
            self.at = end;
            Ok(s)
        }

        fn byte(&mut self) -> Result<u8, String> {
            Ok(self.take(1)?[0])
        }

        fn peek(&self) -> Option<u8> {
            self.bytes.get(self.at).copied()
        }

        fn marker(&mut self) -> Result<u8, String> {
            // 'N' is a no-op anywhere a marker may be.
            loop {
                let m = self.byte()?;
                if m != b'N' {
                    return Ok(m);
                }
            }
        }

        fn int_of(&mut self, marker: u8) -> Result<i64, String> {
            let b = |r: &mut Self, n| r.take(n).map(<[u8]>::to_vec);
            Ok(match marker {
                b'i' => i64::from(b(self, 1)?[0] as i8),
                b'U' => i64::from(b(self, 1)?[0]),
                b'I' => i64::from(i16::from_be_bytes(b(self, 2)?.try_into().unwrap_or([0; 2]))),
                b'l' => i64::from(i32::from_be_bytes(b(self, 4)?.try_into().unwrap_or([0; 4]))),
                b'L' => i64::from_be_bytes(b(self, 8)?.try_into().unwrap_or([0; 8])),
                m => {
                    return Err(format!(
                        "expected an integer marker at offset {}, found {:?}",
                        self.at - 1,
                        m as char
                    ))
                }
            })
        }

        fn length(&mut self) -> Result<usize, String> {
            let m = self.marker()?;
            let n = self.int_of(m)?;
            usize::try_from(n).map_err(|_| format!("negative length {n} at offset {}", self.at))
        }

        fn string(&mut self) -> Result<String, String> {
            let n = self.length()?;
            let s = self.take(n)?;
            String::from_utf8(s.to_vec()).map_err(|_| "a string is not UTF-8".to_string())
        }

        fn float(v: f64) -> Result<Value, String> {
            Number::from_f64(v)
                .map(Value::Number)
                .ok_or_else(|| format!("the booster holds the non-finite number {v}"))
        }

        /// A value whose type marker was already read.
        fn typed(&mut self, marker: u8, depth: usize) -> Result<Value, String> {
            Ok(match marker {
                b'Z' => Value::Null,
                b'T' => Value::Bool(true),
                b'F' => Value::Bool(false),
                b'i' | b'U' | b'I' | b'l' | b'L' => Value::from(self.int_of(marker)?),
                b'd' => {
                    let b: [u8; 4] = self.take(4)?.try_into().unwrap_or([0; 4]);
                    Self::float(f64::from(f32::from_be_bytes(b)))?
                }
                b'D' => {
                    let b: [u8; 8] = self.take(8)?.try_into().unwrap_or([0; 8]);
                    Self::float(f64::from_be_bytes(b))?
                }
                b'C' => Value::String((self.byte()? as char).to_string()),
                b'S' | b'H' => Value::String(self.string()?),
                b'[' => self.array(depth + 1)?,
                b'{' => self.object(depth + 1)?,
                m => {
                    return Err(format!(
                        "unknown type marker {:?} at offset {}",
                        m as char,
                        self.at - 1
                    ))
                }
            })
        }

        fn value(&mut self, depth: usize) -> Result<Value, String> {
            let m = self.marker()?;
            self.typed(m, depth)
        }

        /// `$T` and `#N` after an opening bracket, when present.
        fn container_header(&mut self) -> Result<(Option<u8>, Option<usize>), String> {
            let mut ty = None;
            if self.peek() == Some(b'$') {
                self.at += 1;
                ty = Some(self.byte()?);
                if self.peek() != Some(b'#') {
                    return Err("a typed container without a count".into());
                }
            }
            let mut count = None;
            if self.peek() == Some(b'#') {
                self.at += 1;
                count = Some(self.length()?);
            }
            Ok((ty, count))
        }

        fn array(&mut self, depth: usize) -> Result<Value, String> {
            if depth > MAX_DEPTH {
                return Err("the value is nested too deeply".into());
            }
            let (ty, count) = self.container_header()?;
            let mut out = Vec::with_capacity(count.unwrap_or(0).min(1 << 16));
            match count {
                Some(n) => {
                    for _ in 0..n {
                        out.push(match ty {
                            Some(t) => self.typed(t, depth)?,
                            None => self.value(depth)?,
                        });
                    }
                }
                None => loop {
                    let m = self.marker()?;
                    if m == b']' {
                        break;
                    }
                    out.push(self.typed(m, depth)?);
                },
            }
            Ok(Value::Array(out))
        }

        fn object(&mut self, depth: usize) -> Result<Value, String> {
            if depth > MAX_DEPTH {
                return Err("the value is nested too deeply".into());
            }
            let (ty, count) = self.container_header()?;
            let mut out = Map::new();
            let mut entry = |r: &mut Self| -> Result<(), String> {
                let key = r.string()?;
                let v = match ty {
                    Some(t) => r.typed(t, depth)?,
                    None => r.value(depth)?,
                };
                out.insert(key, v);
                Ok(())
            };
            match count {
                Some(n) => {
                    for _ in 0..n {
                        entry(self)?;
                    }
                }
                None => loop {
                    while self.peek() == Some(b'N') {
                        self.at += 1;
                    }
                    if self.peek() == Some(b'}') {
                        self.at += 1;
                        break;
                    }
                    entry(self)?;
                },
            }
            Ok(Value::Object(out))
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn reads_what_xgboost_writes() {
            // {"a": [$d#i2 1.5 -2.0], "b": "xy", "c": [$U#i3 1 0 1], "d": {"e": Ii300}, "f": T}
            let mut b = vec![b'{'];
            b.extend([b'i', 1, b'a', b'[', b'$', b'd', b'#', b'i', 2]);
            b.extend(1.5f32.to_be_bytes());
            b.extend((-2.0f32).to_be_bytes());
            b.extend([b'i', 1, b'b', b'S', b'i', 2, b'x', b'y']);
            b.extend([b'i', 1, b'c', b'[', b'$', b'U', b'#', b'i', 3, 1, 0, 1]);
            b.extend([b'i', 1, b'd', b'{', b'i', 1, b'e', b'I']);
            b.extend(300i16.to_be_bytes());
            b.extend([b'}', b'i', 1, b'f', b'T', b'}']);
            let v = parse(&b).unwrap();
            assert_eq!(
                v,
                serde_json::json!({"a": [1.5, -2.0], "b": "xy", "c": [1, 0, 1], "d": {"e": 300}, "f": true})
            );
        }

        #[test]
        fn damaged_input_is_an_error_not_a_panic() {
            for bad in [
                &b"{i\x01a["[..],
                b"[$d#L\x7f\xff\xff\xff\xff\xff\xff\xff",
                b"{i\x01aD\x7f\xf0\x00\x00\x00\x00\x00\x00}",
                b"Q",
                b"",
            ] {
                assert!(parse(bad).is_err(), "{bad:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed default bundle as an import: its booster and a spec made of its manifest.
    fn default_parts() -> (Vec<u8>, ImportSpec) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default");
        let booster = fs::read(dir.join(BOOSTER_FILE)).unwrap();
        let m: Manifest =
            serde_json::from_slice(&fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap();
        let spec = ImportSpec {
            format_version: SPEC_FORMAT,
            preprocessor: m.preprocessor,
            canary: m.canary,
            thresholds: None,
            hyperparameters: BTreeMap::from([("source".into(), "test".into())]),
            training_rows: 700,
            training_data_sha256: None,
            metrics: BTreeMap::new(),
        };
        (booster, spec)
    }

    #[test]
    fn an_import_of_the_default_model_serves_its_scores() {
        let (booster, spec) = default_parts();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("imported");
        let b = import_bundle(&booster, Some(BoosterFormat::Json), &spec, None, &out).unwrap();
        let original =
            ModelBundle::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default"))
                .unwrap();
        assert_eq!(
            b.version(),
            original.version(),
            "content-addressed: the same booster"
        );
        let a = crate::Application::example();
        assert_eq!(b.score(&a), original.score(&a));
        assert!(!staging_dir(&out).exists());
        // Not over an existing folder.
        let e = import_bundle(&booster, None, &spec, None, &out).unwrap_err();
        assert!(matches!(e, ImportError::Exists { .. }), "{e}");
    }

    #[test]
    fn a_spec_that_does_not_reproduce_the_canaries_is_refused_and_leaves_nothing() {
        let (booster, mut spec) = default_parts();
        spec.canary.probabilities[3] += 1e-3;
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("imported");
        let e = import_bundle(&booster, None, &spec, None, &out)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("canary row 3") && e.contains("does not reproduce"),
            "{e}"
        );
        assert!(!out.exists() && !staging_dir(&out).exists());
    }

    #[test]
    fn every_spec_problem_is_named() {
        let (booster, mut spec) = default_parts();
        spec.format_version = 7;
        spec.canary.rows.truncate(3);
        spec.thresholds = Some(Thresholds {
            decision_threshold: 2.0,
            ..Thresholds::default()
        });
        spec.preprocessor.numeric[2].std = 0.0;
        let tmp = tempfile::tempdir().unwrap();
        let e = import_bundle(&booster, None, &spec, None, &tmp.path().join("x"))
            .unwrap_err()
            .to_string();
        for want in [
            "format_version is 7",
            "canary has 3 rows but 64 probabilities",
            "decision_threshold is 2",
            "employment_length",
        ] {
            assert!(e.contains(want), "{want:?} not in {e}");
        }
    }

    #[test]
    fn a_booster_of_another_objective_or_shape_is_refused() {
        let (booster, spec) = default_parts();
        let text = String::from_utf8(booster).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let other = text.replace("\"binary:logistic\"", "\"reg:squarederror\"");
        let e = import_bundle(other.as_bytes(), None, &spec, None, &tmp.path().join("a"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("reg:squarederror") && e.contains("binary:logistic"),
            "{e}"
        );
        let e = import_bundle(b"\x00garbage", None, &spec, None, &tmp.path().join("b"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a readable XGBoost UBJSON model"), "{e}");
    }
}
