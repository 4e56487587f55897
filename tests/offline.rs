//! `cra score`: the same numbers as the server, to the last bit; invalid rows named; the
//! decisions recorded with rpc = offline.
use std::{path::Path, sync::Arc, time::Duration};

use arrow::{
    array::{Array, ArrayRef, AsArray, RecordBatch, StringArray},
    datatypes::{Field, Float64Type, Int8Type, Schema},
};
use cra::{
    app::App,
    config::{ScoreArgs, ServeConfig},
    data::parquet::{to_record_batch, write_batch},
    grpc::{
        convert::application_to_pb,
        pb::{credit_risk_service_client::CreditRiskServiceClient, ScoreRequest},
    },
};
use cra_model::synthetic::{generate, GeneratorParams};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

mod common;
use common::pg::TestDb;

fn repo(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// `n` generated applications with `application_id`, rows 5..=8 made invalid: age 10 and
/// loan_term 0 (row 5), income missing (row 6), an unknown loan purpose (row 7), all three
/// categories missing (row 8).
fn input_file(dir: &Path, n: usize) -> (std::path::PathBuf, cra_model::dataset::Dataset) {
    let mut data = generate(&GeneratorParams {
        rows: n,
        seed: 5,
        ..Default::default()
    })
    .unwrap();
    data.rows[5].age = 10.0;
    data.rows[5].loan_term = 0.0;
    data.rows[6].income = f64::NAN;
    data.rows[8].employment_status = None;
    data.rows[8].home_ownership = None;
    data.rows[8].loan_purpose = None;
    let batch = to_record_batch(&data).unwrap();
    let schema = batch.schema();
    let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    let purpose = schema.index_of("loan_purpose").unwrap();
    let mut values: Vec<Option<String>> = columns[purpose]
        .as_string::<i32>()
        .iter()
        .map(|v| v.map(str::to_owned))
        .collect();
    values[7] = Some("yacht".into());
    columns[purpose] = Arc::new(StringArray::from(values));
    fields.push(Arc::new(Field::new(
        "application_id",
        arrow::datatypes::DataType::Utf8,
        false,
    )));
    columns.push(Arc::new(StringArray::from(
        (0..n).map(|i| format!("off-{i}")).collect::<Vec<_>>(),
    )));
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
    let path = dir.join("in.parquet");
    write_batch(&batch, &path).unwrap();
    (path, data)
}

fn args(data: &Path, out: &Path) -> ScoreArgs {
    ScoreArgs {
        model: repo("models/default"),
        models: None,
        data: data.to_owned(),
        out: out.to_owned(),
        database_url: None,
        spool_dir: out.with_extension("spool"),
        batch_rows: 100,
        threads: Some(2),
        explain: false,
        quiet: true,
    }
}

/// The output file's rows: (id, probability, risk_score, risk_level, prediction, margin,
/// model_version, error).
type OutRow = (
    String,
    Option<f64>,
    Option<f64>,
    Option<String>,
    Option<i8>,
    Option<f64>,
    Option<String>,
    Option<String>,
);

fn read_output(path: &Path) -> Vec<OutRow> {
    let file = std::fs::File::open(path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut out = Vec::new();
    for batch in reader {
        let b = batch.unwrap();
        let s = |name: &str| b.column_by_name(name).unwrap().as_string::<i32>().clone();
        let f = |name: &str| {
            b.column_by_name(name)
                .unwrap()
                .as_primitive::<Float64Type>()
                .clone()
        };
        let (id, p, r, lvl, m, v, e) = (
            s("application_id"),
            f("probability_default"),
            f("risk_score"),
            s("risk_level"),
            f("margin"),
            s("model_version"),
            s("error"),
        );
        let pred = b
            .column_by_name("prediction")
            .unwrap()
            .as_primitive::<Int8Type>()
            .clone();
        let opt_f = |a: &arrow::array::Float64Array, i| (!a.is_null(i)).then(|| a.value(i));
        let opt_s = |a: &StringArray, i| (!a.is_null(i)).then(|| a.value(i).to_owned());
        for i in 0..b.num_rows() {
            out.push((
                id.value(i).to_owned(),
                opt_f(&p, i),
                opt_f(&r, i),
                opt_s(&lvl, i),
                (!pred.is_null(i)).then(|| pred.value(i)),
                opt_f(&m, i),
                opt_s(&v, i),
                opt_s(&e, i),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cra_score_gives_the_servers_numbers_and_names_invalid_rows() {
    let dir = tempfile::tempdir().unwrap();
    let n = 600;
    let (input, data) = input_file(dir.path(), n);
    let out = dir.path().join("out.parquet");
    let a = args(&input, &out);
    let summary = tokio::task::spawn_blocking(move || cra::offline::run(&a))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((summary.rows, summary.invalid), (n as u64, 4));
    let rows = read_output(&out);
    assert_eq!(rows.len(), n);
    assert!(!dir.path().join("out.parquet.tmp").exists());

    // The server, built by App::build, scores the same rows.
    let mut cfg = ServeConfig::with_listen("127.0.0.1:0".parse().unwrap());
    cfg.model = repo("models/default");
    let handle = App::build(cfg).await.unwrap().spawn();
    let mut client = CreditRiskServiceClient::connect(format!("http://{}", handle.local_addr()))
        .await
        .unwrap();
    for (i, app) in data.rows.iter().enumerate() {
        let row = &rows[i];
        assert_eq!(row.0, format!("off-{i}"), "rows keep their order and id");
        if (5..=8).contains(&i) {
            continue;
        }
        let s = client
            .score(ScoreRequest {
                application: Some(application_to_pb(app, format!("off-{i}"))),
                explain: false,
            })
            .await
            .unwrap()
            .into_inner()
            .score
            .unwrap();
        assert_eq!(
            row.1.unwrap().to_bits(),
            s.probability_default.to_bits(),
            "row {i}: the same probability to the last bit"
        );
        assert_eq!(row.2.unwrap().to_bits(), s.risk_score.to_bits(), "row {i}");
        assert_eq!(row.5.unwrap().to_bits(), s.margin.to_bits(), "row {i}");
        assert_eq!(i32::from(row.4.unwrap()), s.prediction, "row {i}");
        assert_eq!(row.6.as_deref(), Some(s.model_version.as_str()), "row {i}");
        assert!(row.7.is_none(), "row {i}: {:?}", row.7);
        let level = cra::grpc::pb::RiskLevel::try_from(s.risk_level)
            .unwrap()
            .as_str_name()
            .trim_start_matches("RISK_LEVEL_")
            .to_ascii_lowercase();
        assert_eq!(row.3.as_deref(), Some(level.as_str()), "row {i}");
    }
    handle.shutdown().await.unwrap();

    // Invalid rows: no score, and an error naming every bad field.
    let error = |i: usize| rows[i].7.clone().unwrap_or_default();
    for (i, row) in rows.iter().enumerate().take(9).skip(5) {
        assert!(row.1.is_none() && row.6.is_none(), "row {i} is not scored");
    }
    assert!(
        error(5).contains("age: ") && error(5).contains("loan_term: "),
        "{}",
        error(5)
    );
    assert!(error(6).contains("income: is required"), "{}", error(6));
    assert!(
        error(7).contains("loan_purpose: has unknown value \"yacht\""),
        "{}",
        error(7)
    );
    for f in ["employment_status", "home_ownership", "loan_purpose"] {
        assert!(
            error(8).contains(&format!("{f}: is missing")),
            "{}",
            error(8)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cra_score_records_every_decision_with_rpc_offline() {
    let db = TestDb::create("cra_offline_test").await;
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = input_file(dir.path(), 300);
    let out = dir.path().join("out.parquet");
    let mut a = args(&input, &out);
    a.database_url = Some(db.url());
    let summary = tokio::task::spawn_blocking(move || cra::offline::run(&a))
        .await
        .unwrap()
        .unwrap();
    let (rows, _) = db.wait_for_rows(300, Duration::from_secs(20)).await;
    assert_eq!(rows, 300);
    let c = db.client().await;
    let r = c
        .query_one(
            "SELECT count(*) FILTER (WHERE rpc = 'offline'), \
                    count(*) FILTER (WHERE outcome = 'invalid'), \
                    count(DISTINCT stream_id), min(stream_position), max(stream_position) \
             FROM decisions",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, i64>(0), 300);
    assert_eq!(r.get::<_, i64>(1), 4);
    assert_eq!(r.get::<_, i64>(2), 1);
    assert_eq!(
        (r.get::<_, Option<i64>>(3), r.get::<_, Option<i64>>(4)),
        (Some(0), Some(299))
    );
    let run: uuid::Uuid = c
        .query_one("SELECT stream_id FROM decisions LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(run, summary.run_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cra_score_explain_writes_reasons_and_contributions_that_add_up_to_the_margin() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = input_file(dir.path(), 200);
    let out = dir.path().join("explained.parquet");
    let mut a = args(&input, &out);
    a.explain = true;
    tokio::task::spawn_blocking(move || cra::offline::run(&a))
        .await
        .unwrap()
        .unwrap();
    let file = std::fs::File::open(&out).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let features = cra_model::preprocess::feature_names();
    let (mut explained, mut with_reasons) = (0, 0);
    for batch in reader {
        let b = batch.unwrap();
        let f = |name: &str| {
            b.column_by_name(name)
                .unwrap_or_else(|| panic!("no column {name}"))
                .as_primitive::<Float64Type>()
                .clone()
        };
        let margin = f("margin");
        let base = f("base_margin");
        let codes = b
            .column_by_name("reason_codes")
            .unwrap()
            .as_string::<i32>()
            .clone();
        let reasons = b
            .column_by_name("reasons")
            .unwrap()
            .as_string::<i32>()
            .clone();
        let contributions: Vec<_> = features
            .iter()
            .map(|name| f(&format!("contribution_{name}")))
            .collect();
        for i in 0..b.num_rows() {
            if margin.is_null(i) {
                assert!(
                    base.is_null(i) && codes.is_null(i),
                    "an invalid row has no explanation"
                );
                continue;
            }
            explained += 1;
            let total = base.value(i) + contributions.iter().map(|c| c.value(i)).sum::<f64>();
            assert!(
                (total - margin.value(i)).abs() < 1e-4,
                "row {i}: {total} vs {}",
                margin.value(i)
            );
            if !codes.value(i).is_empty() {
                with_reasons += 1;
                let first = codes.value(i).split(' ').next().unwrap();
                assert!(
                    reasons.value(i).starts_with(&format!("{first}: ")),
                    "{}",
                    reasons.value(i)
                );
            }
        }
    }
    assert_eq!(explained, 196);
    assert!(with_reasons > 0);
}
