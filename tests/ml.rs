//! The ML pipeline end to end: generator, Parquet I/O and its errors, training, the saved bundle
//! and the committed default model.

use std::{path::Path, sync::Arc};

use arrow::{
    array::{
        ArrayRef, BooleanArray, DictionaryArray, Float32Array, Int32Array, Int64Array,
        LargeStringArray, RecordBatch, StringArray,
    },
    datatypes::{DataType, Field, Int32Type, Schema},
};
use cra::{
    data::parquet::{
        read_dataset, to_record_batch, write_batch, write_parquet, DataError, Dataset,
        DatasetReader,
    },
    training::{
        metrics::Evaluation,
        split::{sklearn_stratified_split, stratified_split, SplitMethod},
        train::{train, train_file, TrainParams, TrainedModel},
    },
};
use cra_model::{
    application::{LABEL, TRUE_PD},
    bundle::{ModelBundle, BOOSTER_FILE, METRICS_FILE},
    synthetic::{generate, GeneratorParams},
    NUM_FEATURES,
};

fn small_data(rows: usize, seed: u64) -> Dataset {
    generate(&GeneratorParams {
        rows,
        seed,
        ..Default::default()
    })
    .unwrap()
}

fn quick_params() -> TrainParams {
    TrainParams {
        n_estimators: 20,
        progress: false,
        ..Default::default()
    }
}

fn quick_model(data: &Dataset) -> TrainedModel {
    train(data, "test-data", &quick_params()).unwrap()
}

// ---------------------------------------------------------------- generator

#[test]
fn generator_is_deterministic_to_the_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a.parquet"),
        dir.path().join("b.parquet"),
        dir.path().join("c.parquet"),
    );
    write_parquet(&small_data(2_000, 42), &a).unwrap();
    write_parquet(&small_data(2_000, 42), &b).unwrap();
    write_parquet(&small_data(2_000, 43), &c).unwrap();
    let bytes = |p: &Path| std::fs::read(p).unwrap();
    assert_eq!(bytes(&a), bytes(&b), "same seed, same file");
    assert_ne!(bytes(&a), bytes(&c), "another seed, another file");
}

#[test]
fn generator_default_rate_and_true_pd_are_about_thirty_percent() {
    let data = small_data(20_000, 42);
    let rate = data.default_rate();
    assert!((0.28..=0.32).contains(&rate), "default rate {rate}");
    // true_pd is a probability of the same event, so it should average near the realised rate.
    let pd = data.true_pd.as_ref().unwrap();
    let mean_pd = pd.iter().sum::<f64>() / pd.len() as f64;
    assert!((0.25..=0.35).contains(&mean_pd), "mean true_pd {mean_pd}");
    // Some applicants have no bureau file, and then all six bureau fields are missing.
    let no_file: Vec<_> = data
        .rows
        .iter()
        .filter(|r| r.credit_score.is_nan())
        .collect();
    let share = no_file.len() as f64 / data.len() as f64;
    assert!((0.01..=0.06).contains(&share), "no-file share {share}");
    assert!(no_file
        .iter()
        .all(|r| r.inquiries_last_6m.is_nan() && r.num_bankruptcies.is_nan()));
    // Realistic marginals: income is right-skewed (mean above median), scores stay in range.
    let mut income: Vec<f64> = data.rows.iter().map(|r| r.income).collect();
    income.sort_by(f64::total_cmp);
    let mean = income.iter().sum::<f64>() / income.len() as f64;
    assert!(mean > income[income.len() / 2]);
    assert!(data
        .rows
        .iter()
        .filter(|r| !r.credit_score.is_nan())
        .all(|r| (300.0..=850.0).contains(&r.credit_score)));
}

#[test]
fn generated_file_has_the_documented_columns_and_types() {
    let batch = to_record_batch(&small_data(50, 1)).unwrap();
    let names: Vec<String> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let expected = [
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
        "employment_status",
        "home_ownership",
        "loan_purpose",
        "monthly_payment",
        "payment_to_income",
        "default",
        "true_pd",
    ];
    assert_eq!(names, expected);
    let ty = |n: &str| {
        batch
            .schema()
            .field_with_name(n)
            .unwrap()
            .data_type()
            .clone()
    };
    assert_eq!(ty("age"), DataType::Int64);
    assert_eq!(ty("credit_score"), DataType::Int64);
    assert_eq!(ty("income"), DataType::Float64);
    assert_eq!(ty("loan_purpose"), DataType::Utf8);
    assert_eq!(ty("default"), DataType::Int64);
}

// ---------------------------------------------------------------- training and the bundle

#[test]
fn loaded_bundle_reproduces_training_time_probabilities_on_every_test_row() {
    let dir = tempfile::tempdir().unwrap();
    let data_path = dir.path().join("d.parquet");
    write_parquet(&small_data(2_000, 42), &data_path).unwrap();
    let out = dir.path().join("bundle");
    let report = train_file(&data_path, &out, &quick_params()).unwrap();
    let model = &report.model;
    assert_eq!(model.test_rows.len(), 600);
    // A fresh load from disk, not the self-check instance.
    let bundle = ModelBundle::load(&out).unwrap();
    let scored = bundle.score_many(&model.test_rows);
    let mut worst = 0.0f64;
    for (d, p) in scored.iter().zip(&model.test_probabilities) {
        worst = worst.max((d.probability_default - p).abs());
    }
    assert!(
        worst <= 1e-6,
        "largest difference {worst} over {} rows",
        scored.len()
    );
    // One-by-one scoring agrees with the batch path.
    for (row, d) in model.test_rows.iter().zip(&scored).take(50) {
        assert_eq!(bundle.score(row).probability_default, d.probability_default);
    }
    assert_eq!(bundle.num_trees(), 20);
    assert_eq!(
        bundle.manifest.training_data_sha256,
        cra_model::bundle::sha256_hex(&std::fs::read(&data_path).unwrap())
    );
    assert_eq!(bundle.manifest.canary.rows.len(), 64);
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join(METRICS_FILE)).unwrap()).unwrap();
    for key in [
        "auc_roc",
        "accuracy",
        "precision",
        "recall",
        "f1",
        "gini",
        "ks",
        "brier",
        "log_loss",
        "threshold",
        "default_rate",
        "oracle_auc",
    ] {
        assert!(metrics[key].is_f64(), "metrics.json lacks {key}: {metrics}");
    }
    let cm = &metrics["confusion_matrix"];
    let total: u64 = ["tn", "fp", "fn", "tp"]
        .iter()
        .map(|k| cm[k].as_u64().unwrap())
        .sum();
    assert_eq!(total, 600);
    assert_eq!(metrics["rows"]["total"], 2_000);
    assert!(metrics["auc_roc"].as_f64().unwrap() > 0.8, "{metrics}");
}

#[test]
fn same_data_and_seed_give_the_same_booster_and_metrics() {
    let data = small_data(2_000, 42);
    let a = quick_model(&data);
    let b = quick_model(&data);
    assert_eq!(a.booster_json, b.booster_json, "booster.json differs");
    assert_eq!(
        serde_json::to_string(&a.metrics).unwrap(),
        serde_json::to_string(&b.metrics).unwrap()
    );
    let c = train(
        &data,
        "test-data",
        &TrainParams {
            seed: 7,
            ..quick_params()
        },
    )
    .unwrap();
    assert_ne!(a.metrics, c.metrics, "another split seed, other test rows");
}

#[test]
fn preprocessing_round_trips_through_a_saved_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let model = quick_model(&small_data(1_000, 3));
    model.write(dir.path()).unwrap();
    let bundle = ModelBundle::load(dir.path()).unwrap();
    let (fitted, loaded) = (&model.manifest.preprocessor, bundle.preprocessor());
    assert_eq!(fitted, loaded);
    let rows = &model.test_rows[..100];
    let x = loaded.transform(rows);
    // Bitwise, so that a missing value (NaN) must stay missing.
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    assert_eq!(bits(x.clone()), bits(fitted.transform(rows)));
    for (row, feats) in rows.iter().zip(x.chunks_exact(NUM_FEATURES)) {
        let (num, cats) = loaded.inverse(feats);
        for ((got, want), col) in num[..14].iter().zip(row.numerics()).zip(&loaded.numeric) {
            // Features are f32: allow a few f32 epsilons of the value's scale.
            let tol = 1e-6 * (want.abs() + col.mean.abs() + col.std);
            assert!(
                (want.is_nan() && got.is_nan()) || (got - want).abs() <= tol,
                "{}: {got} vs {want}",
                col.name
            );
        }
        assert_eq!(cats, row.category_codes());
    }
}

#[test]
fn early_stopping_keeps_the_best_rounds_and_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_data(2_000, 5);
    let model = train(
        &data,
        "test-data",
        &TrainParams {
            n_estimators: 300,
            eta: 0.3,
            early_stopping_rounds: Some(5),
            progress: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        model.metrics.num_trees < 300,
        "stopped at {}",
        model.metrics.num_trees
    );
    model.write(dir.path()).unwrap();
    let bundle = ModelBundle::load(dir.path()).unwrap();
    assert_eq!(bundle.num_trees(), model.metrics.num_trees);
    let p: Vec<f64> = bundle
        .score_many(&model.test_rows)
        .iter()
        .map(|d| d.probability_default)
        .collect();
    for (a, b) in p.iter().zip(&model.test_probabilities) {
        assert!((a - b).abs() <= 1e-6);
    }
}

#[test]
fn missing_bureau_fields_are_scored_not_rejected() {
    let data = small_data(2_000, 42);
    let dir = tempfile::tempdir().unwrap();
    let model = quick_model(&data);
    model.write(dir.path()).unwrap();
    let bundle = ModelBundle::load(dir.path()).unwrap();
    let mut a = cra_model::Application::example();
    a.credit_score = f64::NAN;
    a.num_late_payments = f64::NAN;
    a.home_ownership = None;
    let d = bundle.score(&a);
    assert!(d.probability_default > 0.0 && d.probability_default < 1.0);
}

#[test]
fn a_tampered_booster_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    quick_model(&small_data(500, 1)).write(dir.path()).unwrap();
    let path = dir.path().join(BOOSTER_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.push(b' ');
    std::fs::write(&path, bytes).unwrap();
    let err = ModelBundle::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("sha256"), "{err}");
}

// ---------------------------------------------------------------- the committed default model

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The committed bundle's test-set metrics, recomputed from scratch: the committed data, the
/// split the manifest records (deterministic), the loaded bundle's compiled trees, and the
/// project's metrics code.
fn recomputed_metrics(bundle: &ModelBundle) -> serde_json::Value {
    let h = &bundle.manifest.hyperparameters;
    assert_eq!(h["split"], SplitMethod::Sklearn.as_str());
    let data = read_dataset(repo("data/credit_data.parquet")).unwrap();
    let split = stratified_split(
        SplitMethod::Sklearn,
        &data.labels,
        h["test_fraction"].parse().unwrap(),
        h["seed"].parse().unwrap(),
    )
    .unwrap();
    let rows: Vec<_> = split.test.iter().map(|&i| data.rows[i]).collect();
    let labels: Vec<u8> = split.test.iter().map(|&i| data.labels[i]).collect();
    let probabilities: Vec<f64> = bundle
        .score_many(&rows)
        .iter()
        .map(|d| d.probability_default)
        .collect();
    let eval = Evaluation::compute(
        &labels,
        &probabilities,
        bundle.manifest.thresholds.decision_threshold,
    )
    .unwrap();
    serde_json::to_value(eval).unwrap()
}

/// Compares the figures stored in metrics.json with recomputed ones: every metric to 1e-9
/// (the compiled trees agree with libxgboost to 1e-6 per row, and no ranking flips), the
/// confusion matrix exactly.
fn compare_metrics(
    stored: &std::collections::BTreeMap<String, f64>,
    stored_confusion: &serde_json::Value,
    recomputed: &serde_json::Value,
) -> Result<(), String> {
    let mut wrong = Vec::new();
    for (key, v) in recomputed.as_object().unwrap() {
        if key == "confusion_matrix" {
            if v != stored_confusion {
                wrong.push(format!(
                    "confusion_matrix: stored {stored_confusion}, recomputed {v}"
                ));
            }
            continue;
        }
        let want = v.as_f64().unwrap();
        match stored.get(key) {
            Some(got) if (got - want).abs() <= 1e-9 => {}
            got => wrong.push(format!("{key}: stored {got:?}, recomputed {want}")),
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("; "))
    }
}

#[test]
fn committed_default_bundle_meets_the_headline_and_its_metrics_are_recomputed() {
    let bundle = ModelBundle::load(repo("models/default")).unwrap();
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo("models/default").join(METRICS_FILE)).unwrap())
            .unwrap();
    let recomputed = recomputed_metrics(&bundle);
    compare_metrics(&bundle.metrics, &stored["confusion_matrix"], &recomputed).unwrap();
    assert_eq!(stored["num_trees"], bundle.num_trees());
    assert_eq!(stored["rows"]["test"], 300);
    // The comparison catches a stored figure that is off in the third decimal.
    let mut off = bundle.metrics.clone();
    *off.get_mut("auc_roc").unwrap() += 1e-3;
    let err = compare_metrics(&off, &stored["confusion_matrix"], &recomputed).unwrap_err();
    assert!(err.starts_with("auc_roc: stored"), "{err}");
    // The headline, on the recomputed figures.
    let auc = recomputed["auc_roc"].as_f64().unwrap();
    let acc = recomputed["accuracy"].as_f64().unwrap();
    assert!(auc >= 0.88, "AUC {auc}");
    assert!(acc >= 0.78, "accuracy {acc}");
}

#[test]
fn committed_default_bundle_is_reproducible() {
    let bundle = ModelBundle::load(repo("models/default")).unwrap();
    let data_path = repo("data/credit_data.parquet");
    let bytes = std::fs::read(&data_path).unwrap();
    assert_eq!(
        bundle.manifest.training_data_sha256,
        cra_model::bundle::sha256_hex(&bytes)
    );
    // The committed data is what `cra generate` writes with the defaults.
    let dir = tempfile::tempdir().unwrap();
    let regenerated = dir.path().join("d.parquet");
    write_parquet(&small_data(1_000, 42), &regenerated).unwrap();
    assert_eq!(std::fs::read(&regenerated).unwrap(), bytes);
    // Retraining with the default hyper-parameters gives the committed booster and metrics.
    let model = train(
        &read_dataset(&data_path).unwrap(),
        "x",
        &TrainParams {
            progress: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        cra_model::bundle::sha256_hex(&model.booster_json),
        bundle.manifest.artifact_sha256
    );
    let retrained = serde_json::to_value(&model.metrics).unwrap();
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo("models/default").join(METRICS_FILE)).unwrap())
            .unwrap();
    assert_eq!(retrained, stored);
    // The drift reference `cra train` writes is the one `cra train --drift-reference-only`
    // added to the committed bundle: the same features; the score's deciles from libxgboost's
    // probabilities here, from the compiled trees there (equal to 1e-6, the canary check).
    let committed: cra_model::drift::DriftReference = serde_json::from_slice(
        &std::fs::read(repo("models/default/drift_reference.json")).unwrap(),
    )
    .unwrap();
    let written = &model.drift_reference;
    assert_eq!(written.features, committed.features);
    assert_eq!(
        (written.feature_rows, written.score_rows),
        (committed.feature_rows, committed.score_rows)
    );
    assert_eq!(written.score.edges.len(), committed.score.edges.len());
    for (a, b) in written.score.edges.iter().zip(&committed.score.edges) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    assert_eq!(written.score.shares, committed.score.shares);
}

// ---------------------------------------------------------------- sklearn split

/// Indices scikit-learn's `train_test_split` gave, written once by `tests/fixtures/sklearn_split.py`.
fn sklearn_fixture() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(repo("tests/fixtures/sklearn_split.json")).unwrap())
        .unwrap()
}

fn indices(v: &serde_json::Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as usize)
        .collect()
}

/// Order-sensitive checksum, as in the fixture generator: sum((k + 1) * idx[k]) mod 2^64.
fn checksum(idx: &[usize]) -> u64 {
    idx.iter().enumerate().fold(0u64, |s, (k, &i)| {
        s.wrapping_add((k as u64 + 1).wrapping_mul(i as u64))
    })
}

#[test]
fn sklearn_split_gives_scikit_learns_indices_in_its_order() {
    let fixture = sklearn_fixture();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for case in cases {
        let test_size = case["test_size"].as_f64().unwrap();
        let seed = case["seed"].as_u64().unwrap() as u32;
        if case.get("labels").is_some() {
            let labels: Vec<u8> = indices(&case["labels"]).iter().map(|&l| l as u8).collect();
            let s = sklearn_stratified_split(&labels, test_size, seed).unwrap();
            assert_eq!(s.train, indices(&case["train"]), "train, case {case}");
            assert_eq!(s.test, indices(&case["test"]), "test, case {case}");
        } else {
            let f = &case["formula"];
            let get = |k: &str| f[k].as_u64().unwrap();
            let labels: Vec<u8> = (0..get("n"))
                .map(|i| u8::from((i * get("mult") + get("add")) % get("modulus") < get("below")))
                .collect();
            let s = sklearn_stratified_split(&labels, test_size, seed).unwrap();
            for (part, idx) in [("train", &s.train), ("test", &s.test)] {
                assert_eq!(
                    idx.len() as u64,
                    case[format!("{part}_len")].as_u64().unwrap()
                );
                assert_eq!(
                    idx[..20],
                    indices(&case[format!("{part}_head")])[..],
                    "{part} {f}"
                );
                assert_eq!(
                    checksum(idx),
                    case[format!("{part}_checksum")].as_u64().unwrap(),
                    "{part} checksum, {f}"
                );
            }
        }
    }
}

#[test]
fn the_trainer_tests_on_the_rows_scikit_learn_holds_out() {
    let fixture = sklearn_fixture();
    let c = &fixture["credit_data"];
    let data = read_dataset(repo(c["data"].as_str().unwrap())).unwrap();
    let s = stratified_split(
        SplitMethod::Sklearn,
        &data.labels,
        c["test_size"].as_f64().unwrap(),
        c["seed"].as_u64().unwrap(),
    )
    .unwrap();
    assert_eq!(s.train, indices(&c["train"]));
    assert_eq!(s.test, indices(&c["test"]));
    // The trainer evaluates on those rows, in that order.
    let model = quick_model(&data);
    let expected: Vec<u8> = s.test.iter().map(|&i| data.labels[i]).collect();
    assert_eq!(model.test_labels, expected);
    assert_eq!(model.test_rows.len(), s.test.len());
    // The native split is still selectable and holds out other rows.
    let native = stratified_split(SplitMethod::Native, &data.labels, 0.3, 42).unwrap();
    let mut sorted = s.test.clone();
    sorted.sort_unstable();
    assert_ne!(native.test, sorted);
    let m = train(
        &data,
        "x",
        &TrainParams {
            split: SplitMethod::Native,
            ..quick_params()
        },
    )
    .unwrap();
    let native_labels: Vec<u8> = native.test.iter().map(|&i| data.labels[i]).collect();
    assert_eq!(m.test_labels, native_labels);
    assert_eq!(m.manifest.hyperparameters["split"], "native");
}

// ---------------------------------------------------------------- reader: accepted shapes

/// Replaces (or drops, with `None`) the named columns of a generated batch.
fn edit(batch: &RecordBatch, changes: &[(&str, Option<(DataType, ArrayRef)>)]) -> RecordBatch {
    let mut fields = Vec::new();
    let mut cols = Vec::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        match changes.iter().find(|(n, _)| n == f.name()) {
            Some((_, None)) => {}
            Some((_, Some((dt, arr)))) => {
                fields.push(Field::new(f.name(), dt.clone(), true));
                cols.push(arr.clone());
            }
            None => {
                fields.push(f.as_ref().clone());
                cols.push(c.clone());
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
}

fn write(dir: &Path, name: &str, batch: &RecordBatch) -> std::path::PathBuf {
    let p = dir.join(name);
    write_batch(batch, &p).unwrap();
    p
}

#[test]
fn reader_accepts_narrow_types_nulls_and_dictionary_strings() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_data(40, 9);
    let base = to_record_batch(&data).unwrap();
    let n = base.num_rows();
    let ages: Int32Array = data.rows.iter().map(|r| Some(r.age as i32)).collect();
    let util: Float32Array = (0..n)
        .map(|i| (i % 5 != 0).then_some(data.rows[i].credit_utilization as f32))
        .collect();
    let homes: LargeStringArray = data
        .rows
        .iter()
        .map(|r| r.home_ownership.map(|h| h.as_str()))
        .collect();
    let purposes: DictionaryArray<Int32Type> = data
        .rows
        .iter()
        .enumerate()
        .map(|(i, r)| (i != 3).then(|| r.loan_purpose.unwrap().as_str()))
        .collect();
    let labels: BooleanArray = data.labels.iter().map(|&l| Some(l == 1)).collect();
    let batch = edit(
        &base,
        &[
            ("age", Some((DataType::Int32, Arc::new(ages)))),
            (
                "credit_utilization",
                Some((DataType::Float32, Arc::new(util))),
            ),
            (
                "home_ownership",
                Some((DataType::LargeUtf8, Arc::new(homes))),
            ),
            (
                "loan_purpose",
                Some((
                    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                    Arc::new(purposes),
                )),
            ),
            (LABEL, Some((DataType::Boolean, Arc::new(labels)))),
            (TRUE_PD, None),
        ],
    );
    let p = write(dir.path(), "narrow.parquet", &batch);
    let back = DatasetReader::open(&p)
        .unwrap()
        .with_batch_size(16)
        .read()
        .unwrap();
    assert_eq!(back.len(), 40);
    assert_eq!(back.labels, data.labels);
    assert!(back.true_pd.is_none());
    assert!(back.rows[0].credit_utilization.is_nan(), "null -> NaN");
    assert!(back.rows[3].loan_purpose.is_none(), "null category -> None");
    assert_eq!(back.rows[7].age, data.rows[7].age);
    assert_eq!(back.rows[7].home_ownership, data.rows[7].home_ownership);
    assert_eq!(back.rows[7].loan_purpose, data.rows[7].loan_purpose);
}

// ---------------------------------------------------------------- reader: every error case

fn open_err(path: &Path) -> (DataError, String) {
    let e = read_dataset(path).unwrap_err();
    let s = e.to_string();
    (e, s)
}

#[test]
fn missing_file_says_how_to_make_one() {
    let (e, s) = open_err(Path::new("/nonexistent/credit.parquet"));
    assert!(matches!(e, DataError::NotFound { .. }));
    assert!(s.contains("cra generate"), "{s}");
}

#[test]
fn a_file_that_is_not_parquet_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.parquet");
    std::fs::write(&p, b"age,income\n1,2\n").unwrap();
    let (e, s) = open_err(&p);
    assert!(matches!(e, DataError::NotParquet { .. }), "{s}");
    assert!(s.contains("not a Parquet file"), "{s}");
}

#[test]
fn every_missing_column_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let base = to_record_batch(&small_data(20, 1)).unwrap();
    let batch = edit(&base, &[("savings", None), (LABEL, None)]);
    let (e, s) = open_err(&write(dir.path(), "m.parquet", &batch));
    match e {
        DataError::MissingColumns { columns, .. } => {
            assert_eq!(columns, ["savings", "default"])
        }
        other => panic!("{other}"),
    }
    assert!(s.contains("savings, default"), "{s}");
}

#[test]
fn every_mistyped_column_is_named_with_its_type() {
    let dir = tempfile::tempdir().unwrap();
    let base = to_record_batch(&small_data(20, 1)).unwrap();
    let n = base.num_rows();
    let text: StringArray = (0..n).map(|_| Some("700")).collect();
    let flags: BooleanArray = (0..n).map(|_| Some(true)).collect();
    let codes: Int64Array = (0..n).map(|_| Some(1i64)).collect();
    let batch = edit(
        &base,
        &[
            ("credit_score", Some((DataType::Utf8, Arc::new(text)))),
            ("income", Some((DataType::Boolean, Arc::new(flags)))),
            (
                "employment_status",
                Some((DataType::Int64, Arc::new(codes))),
            ),
        ],
    );
    let (e, s) = open_err(&write(dir.path(), "t.parquet", &batch));
    match &e {
        DataError::MistypedColumns { columns, .. } => assert_eq!(columns.len(), 3, "{s}"),
        other => panic!("{other}"),
    }
    assert!(s.contains("income is Boolean"), "{s}");
    assert!(s.contains("credit_score is Utf8"), "{s}");
    assert!(s.contains("employment_status is Int64"), "{s}");
}

#[test]
fn an_empty_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = to_record_batch(&small_data(20, 1)).unwrap();
    let (e, s) = open_err(&write(dir.path(), "e.parquet", &base.slice(0, 0)));
    assert!(matches!(e, DataError::Empty { .. }), "{s}");
    assert!(s.contains("no rows"), "{s}");
}

#[test]
fn an_unknown_category_names_column_row_and_accepted_values() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_data(20, 1);
    let base = to_record_batch(&data).unwrap();
    let homes: StringArray = (0..20)
        .map(|i| Some(if i == 13 { "castle" } else { "rent" }))
        .collect();
    let batch = edit(
        &base,
        &[("home_ownership", Some((DataType::Utf8, Arc::new(homes))))],
    );
    let (e, s) = open_err(&write(dir.path(), "c.parquet", &batch));
    match e {
        DataError::UnknownCategory {
            column, row, value, ..
        } => {
            assert_eq!(
                (column.as_str(), row, value.as_str()),
                ("home_ownership", 13, "castle")
            );
        }
        other => panic!("{other}"),
    }
    assert!(s.contains("mortgage, rent, own, other"), "{s}");
}

#[test]
fn labels_other_than_zero_or_one_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = to_record_batch(&small_data(20, 1)).unwrap();
    let two: Int64Array = (0..20).map(|i| Some(if i == 4 { 2 } else { 0 })).collect();
    let batch = edit(&base, &[(LABEL, Some((DataType::Int64, Arc::new(two))))]);
    let (e, s) = open_err(&write(dir.path(), "l.parquet", &batch));
    assert!(matches!(e, DataError::BadLabel { row: 4, .. }), "{s}");
    let null: Int64Array = (0..20).map(|i| (i != 6).then_some(1)).collect();
    let batch = edit(&base, &[(LABEL, Some((DataType::Int64, Arc::new(null))))]);
    let (_, s) = open_err(&write(dir.path(), "n.parquet", &batch));
    assert!(s.contains("row 6") && s.contains("null"), "{s}");
}

#[test]
fn train_file_reports_data_errors_and_bad_hyper_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let err = train_file(
        &dir.path().join("absent.parquet"),
        dir.path(),
        &quick_params(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("does not exist"), "{err}");
    let p = dir.path().join("d.parquet");
    write_parquet(&small_data(200, 1), &p).unwrap();
    let err = train_file(
        &p,
        &dir.path().join("b"),
        &TrainParams {
            test_fraction: 1.5,
            ..quick_params()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("test_fraction"), "{err}");
}

// ---------------------------------------------------------------- a Parquet footer that lies

/// Re-encodes the footer of the Parquet file at `path` with the parquet crate's own metadata
/// writer so that every row group, and therefore the file, declares `rows` rows; the pages
/// are left as they are.
fn claim_rows(path: &Path, rows: i64) {
    use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader, ParquetMetaDataWriter};
    let bytes = std::fs::read(path).unwrap();
    let n = bytes.len();
    let footer_len = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
    let meta = ParquetMetaDataReader::new()
        .parse_and_finish(&std::fs::File::open(path).unwrap())
        .unwrap();
    let groups = meta
        .row_groups()
        .iter()
        .map(|g| g.clone().into_builder().set_num_rows(rows).build().unwrap())
        .collect();
    let meta = ParquetMetaData::new(meta.file_metadata().clone(), groups);
    let mut out = bytes[..n - 8 - footer_len].to_vec();
    ParquetMetaDataWriter::new(&mut out, &meta)
        .finish()
        .unwrap();
    std::fs::write(path, out).unwrap();
}

#[test]
fn a_footer_claiming_2_to_the_40_rows_is_a_clear_error_not_an_abort() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.parquet");
    write_parquet(&small_data(300, 3), &path).unwrap();
    claim_rows(&path, 1 << 40);
    assert_eq!(DatasetReader::open(&path).unwrap().num_rows(), 1 << 40);
    let (_, msg) = open_err(&path);
    assert!(msg.contains("huge.parquet"), "{msg}");
    assert!(msg.contains("1099511627776"), "{msg}");
    // `cra train` reads through the same path.
    let err = train_file(&path, &dir.path().join("bundle"), &quick_params())
        .unwrap_err()
        .to_string();
    assert!(err.contains("1099511627776"), "{err}");
    assert!(!dir.path().join("bundle").exists());
}

#[test]
fn a_footer_with_a_negative_row_count_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lies.parquet");
    write_parquet(&small_data(300, 3), &path).unwrap();
    claim_rows(&path, -5);
    let (_, msg) = open_err(&path);
    assert!(msg.contains("row group 0 declares -5 rows"), "{msg}");
    assert!(msg.contains("lies.parquet"), "{msg}");
}

// ---------------------------------------------------------------- `cra serve` on a bad bundle

/// Copies the committed bundle into a temporary directory, applies `damage`, and records the
/// checksums of the result only when `resign` (as an operator "fixing" the bundle would).
fn damaged_default(damage: impl FnOnce(&Path), resign: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        BOOSTER_FILE,
        "bundle.json",
        METRICS_FILE,
        "checksums.sha256",
    ] {
        std::fs::copy(repo("models/default").join(f), dir.path().join(f)).unwrap();
    }
    damage(dir.path());
    if resign {
        let sums: String = [BOOSTER_FILE, "bundle.json", METRICS_FILE]
            .iter()
            .map(|f| {
                let bytes = std::fs::read(dir.path().join(f)).unwrap();
                format!("{}  {f}\n", cra_model::bundle::sha256_hex(&bytes))
            })
            .collect();
        std::fs::write(dir.path().join("checksums.sha256"), sums).unwrap();
    }
    dir
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// Runs `cra serve --model DIR` (decision log off, any free port) and returns its exit status
/// and stderr. A server still running after 60 s has not failed its start-up: it is killed and
/// the test fails.
fn serve_on(dir: &Path) -> (std::process::ExitStatus, String) {
    use std::{
        io::Read,
        process::{Command, Stdio},
        time::{Duration, Instant},
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_cra"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--audit",
            "off",
            "--model",
        ])
        .arg(dir)
        .env("RUST_LOG", "info")
        .env_remove("CRA_LOG_FORMAT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`cra serve` on the bad bundle in {} was still running after 60 s:\n{}",
                dir.display(),
                reader.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, reader.join().unwrap())
}

#[test]
fn cra_serve_exits_non_zero_naming_what_is_wrong_with_a_bad_bundle() {
    type Damage = Box<dyn FnOnce(&Path)>;
    let cases: Vec<(&str, Damage, bool, &str)> = vec![
        (
            "a canary array one longer than the rows",
            Box::new(|d: &Path| {
                edit_json(&d.join("bundle.json"), |v| {
                    v["canary"]["probabilities"]
                        .as_array_mut()
                        .unwrap()
                        .push(0.5.into())
                })
            }),
            true,
            "canary has 64 rows but 65 probabilities",
        ),
        (
            "empty canaries",
            Box::new(|d: &Path| {
                edit_json(&d.join("bundle.json"), |v| {
                    v["canary"]["rows"] = serde_json::json!([]);
                    v["canary"]["probabilities"] = serde_json::json!([]);
                })
            }),
            true,
            "canary has 0 rows, at least 8",
        ),
        (
            "tampered thresholds",
            Box::new(|d: &Path| {
                edit_json(&d.join("bundle.json"), |v| {
                    v["thresholds"]["decision_threshold"] = 0.9.into()
                })
            }),
            false,
            "bundle.json does not match checksums.sha256",
        ),
        (
            "insane thresholds, checksums recorded",
            Box::new(|d: &Path| {
                edit_json(&d.join("bundle.json"), |v| {
                    v["thresholds"]["medium_max"] = 20.0.into()
                })
            }),
            true,
            "thresholds.low_max is 30 and thresholds.medium_max is 20",
        ),
        (
            "a tampered booster",
            Box::new(|d: &Path| {
                let p = d.join(BOOSTER_FILE);
                let mut bytes = std::fs::read(&p).unwrap();
                bytes.push(b' ');
                std::fs::write(&p, bytes).unwrap();
            }),
            false,
            "booster.json does not match checksums.sha256",
        ),
        (
            "no checksum file",
            Box::new(|d: &Path| std::fs::remove_file(d.join("checksums.sha256")).unwrap()),
            false,
            "checksums.sha256 is missing",
        ),
    ];
    for (what, damage, resign, expected) in cases {
        let dir = damaged_default(damage, resign);
        let (status, stderr) = serve_on(dir.path());
        assert!(!status.success(), "{what}: exit {status}\n{stderr}");
        assert!(
            stderr.contains(expected),
            "{what}: no {expected:?} in\n{stderr}"
        );
        assert!(
            stderr.contains(&dir.path().display().to_string()),
            "{what}: the directory is not named in\n{stderr}"
        );
    }
}
