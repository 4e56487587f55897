//! The seed corpora of the fuzz targets (`fuzz/corpus/<target>/seed-*`), written from real
//! inputs: the committed model's canary applications and the original service's example as
//! gRPC, REST and Open Inference Protocol requests; decisions as the spool writes them (a
//! segment of the real spool, rows of today's and of older formats); and the committed model
//! bundle, cut to a few trees. `cargo test --lib write_fuzz_seeds -- --ignored` writes them
//! again (byte for byte the same).
use std::{
    fs,
    path::{Path, PathBuf},
};

use chrono::{DateTime, Utc};
use cra_model::{
    bundle::{self, Manifest},
    ensemble::{sigmoid, Ensemble},
    input::{category_fields, NUMBER_FIELDS},
    Application, ApplicationInput, Category, ModelBundle,
};
use prost::Message;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{
    decision_log::{
        copy_row,
        row::{codec, tests::sample, DecisionRow},
        spool::{Frames, Spool, SpoolConfig},
    },
    grpc::{
        convert::application_to_pb,
        pb::{
            self,
            inference::{
                model_infer_request::{InferInputTensor, InferRequestedOutputTensor},
                InferTensorContents, ModelInferRequest,
            },
        },
    },
    v2::Data,
};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir: PathBuf = root().join("fuzz/corpus").join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}

fn default_bundle() -> ModelBundle {
    ModelBundle::load(root().join("models/default")).unwrap()
}

/// Real applications: four canary rows of the committed model, the original's example, and
/// one applicant without a credit-bureau file.
fn applications() -> Vec<Application> {
    let mut apps: Vec<Application> = default_bundle().manifest.canary.rows[..4].to_vec();
    apps.push(Application::example());
    let mut no_file = Application::example();
    no_file.credit_score = f64::NAN;
    no_file.num_credit_lines = f64::NAN;
    no_file.credit_utilization = f64::NAN;
    no_file.num_late_payments = f64::NAN;
    no_file.num_bankruptcies = f64::NAN;
    no_file.inquiries_last_6m = f64::NAN;
    apps.push(no_file);
    apps
}

fn grpc_seeds(apps: &[Application]) {
    for (i, a) in apps.iter().enumerate() {
        let request = pb::ScoreRequest {
            application: Some(application_to_pb(a, format!("A-{i}"))),
            explain: i % 2 == 1,
        };
        write("grpc_score", &format!("app-{i}"), &request.encode_to_vec());
    }
    write("grpc_score", "no-application", &[]);
    let invalid = pb::ScoreRequest {
        application: Some(pb::CreditApplication {
            employment_status: 99,
            income: -1.0,
            ..Default::default()
        }),
        explain: false,
    };
    write("grpc_score", "invalid", &invalid.encode_to_vec());

    let batch = |apps: &[Application], explain: bool| {
        pb::ScoreBatchRequest {
            applications: apps
                .iter()
                .enumerate()
                .map(|(i, a)| application_to_pb(a, format!("B-{i}")))
                .collect(),
            explain,
        }
        .encode_to_vec()
    };
    // The control byte: the item cap - 1 (low nibble), the body's piece size - 1 (high).
    for (name, control, apps, explain) in [
        ("all", 0x0f, apps, false),
        ("explained", 0x35, &apps[..2], true),
        ("one-byte-pieces", 0x07, &apps[..3], false),
        ("over-the-cap", 0xf1, &apps[..3], false),
    ] {
        let mut seed = vec![control];
        seed.extend(batch(apps, explain));
        write("grpc_score_batch", name, &seed);
    }
    write("grpc_score_batch", "empty", &[0x00]);
}

/// An application as the original REST API's JSON (numbers, lowercase categories, null for
/// a missing value).
fn rest_json(a: &Application, id: &str) -> Value {
    let mut v = serde_json::to_value(a).unwrap();
    v["application_id"] = json!(id);
    v
}

fn rest_seeds(apps: &[Application]) {
    // The original's own example, as its README and load script send it.
    let original = json!({
        "age": 45, "income": 75000, "employment_length": 10, "credit_score": 720,
        "num_credit_lines": 5, "credit_utilization": 0.3, "debt_to_income": 0.35,
        "total_debt": 25000, "savings": 15000, "loan_amount": 20000, "loan_term": 36,
        "num_late_payments": 0, "num_bankruptcies": 0, "inquiries_last_6m": 1,
        "employment_status": "employed", "home_ownership": "mortgage",
        "loan_purpose": "debt_consolidation"
    });
    write("rest_json", "original", original.to_string().as_bytes());
    for (i, a) in apps.iter().enumerate() {
        let body = rest_json(a, &format!("R-{i}"));
        write(
            "rest_json",
            &format!("app-{i}"),
            body.to_string().as_bytes(),
        );
    }
    let batch = json!({"applications": apps[..3]
        .iter()
        .enumerate()
        .map(|(i, a)| rest_json(a, &format!("RB-{i}")))
        .collect::<Vec<_>>()});
    write("rest_json", "batch", batch.to_string().as_bytes());
    let mut wrong = original.clone();
    wrong["age"] = json!("45");
    wrong["credit_scor"] = json!(700);
    wrong["employment_status"] = json!(1);
    write("rest_json", "wrong-types", wrong.to_string().as_bytes());
}

/// The inputs of `apps` as Open Inference Protocol tensors: (name, datatype, values).
fn tensors(apps: &[Application]) -> Vec<(&'static str, &'static str, Data)> {
    let inputs: Vec<ApplicationInput> = apps
        .iter()
        .enumerate()
        .map(|(i, a)| ApplicationInput::from_application(a, format!("V-{i}")))
        .collect();
    let mut out = Vec::new();
    for (f, field) in NUMBER_FIELDS.iter().enumerate() {
        let values = inputs
            .iter()
            .map(|a| a.numbers()[f].unwrap_or(f64::NAN))
            .collect();
        out.push((field.name, "FP64", Data::Fp64(values)));
    }
    for (c, (name, _)) in category_fields().iter().enumerate() {
        let values = inputs
            .iter()
            .map(
                |a| match [&a.employment_status, &a.home_ownership, &a.loan_purpose][c] {
                    Category::Name(s) => s.clone().into_bytes(),
                    other => panic!("{other:?}"),
                },
            )
            .collect();
        out.push((name, "BYTES", Data::Bytes(values)));
    }
    let ids = inputs
        .iter()
        .map(|a| a.application_id.clone().into_bytes())
        .collect();
    out.push(("application_id", "BYTES", Data::Bytes(ids)));
    out
}

fn json_data(d: &Data) -> Value {
    match d {
        Data::Fp64(v) => json!(v
            .iter()
            .map(|x| serde_json::Number::from_f64(*x).map_or(Value::Null, Value::Number))
            .collect::<Vec<_>>()),
        Data::Bytes(v) => json!(v
            .iter()
            .map(|b| String::from_utf8(b.clone()).unwrap())
            .collect::<Vec<_>>()),
        other => panic!("{other:?}"),
    }
}

fn v2_seeds(apps: &[Application]) {
    let rows = &apps[3..]; // the example, an applicant without a bureau file, a canary row
    let ts = tensors(rows);
    let n = rows.len() as i64;
    let inputs: Vec<Value> = ts
        .iter()
        .map(|(name, dt, d)| json!({"name": name, "datatype": dt, "shape": [n], "data": json_data(d)}))
        .collect();
    let request = json!({"id": "seed", "inputs": inputs});
    write("v2_http", "json", request.to_string().as_bytes());
    // Python's json (tritonclient) writes a missing value as a bare NaN.
    let nan = request.to_string().replacen("null", "NaN", 2);
    write("v2_http", "nan", nan.as_bytes());
    let shaped: Vec<Value> = ts
        .iter()
        .map(|(name, dt, d)| json!({"name": name, "datatype": dt, "shape": [n, 1], "data": json_data(d)}))
        .collect();
    let outputs = json!([{"name": "risk_score"}, {"name": "risk_level"}]);
    let request = json!({"inputs": shaped, "outputs": outputs});
    write("v2_http", "n-by-1", request.to_string().as_bytes());

    // The binary tensor data extension: each input's raw bytes after the JSON header.
    let mut blob = Vec::new();
    let inputs: Vec<Value> = ts
        .iter()
        .map(|(name, dt, d)| {
            let raw = d.to_raw();
            blob.extend_from_slice(&raw);
            json!({"name": name, "datatype": dt, "shape": [n],
                   "parameters": {"binary_data_size": raw.len()}})
        })
        .collect();
    let header = json!({"inputs": inputs, "parameters": {"binary_data_output": true}}).to_string();
    let mut seed = b"B".to_vec();
    seed.extend_from_slice(&(header.len() as u32).to_le_bytes());
    seed.extend_from_slice(header.as_bytes());
    seed.extend_from_slice(&blob);
    write("v2_http", "binary", &seed);

    // gRPC ModelInfer: typed contents, and raw contents as tritonclient sends them.
    let tensor = |name: &str, dt: &str, contents| InferInputTensor {
        name: name.into(),
        datatype: dt.into(),
        shape: vec![n],
        parameters: Default::default(),
        contents,
    };
    let typed = ModelInferRequest {
        model_name: crate::v2::MODEL_NAME.into(),
        inputs: ts
            .iter()
            .map(|(name, dt, d)| {
                let mut c = InferTensorContents::default();
                match d {
                    Data::Fp64(v) => c.fp64_contents = v.clone(),
                    Data::Bytes(v) => c.bytes_contents = v.clone(),
                    other => panic!("{other:?}"),
                }
                tensor(name, dt, Some(c))
            })
            .collect(),
        outputs: vec![InferRequestedOutputTensor {
            name: "probability_default".into(),
            parameters: Default::default(),
        }],
        ..Default::default()
    };
    write("v2_grpc", "typed", &typed.encode_to_vec());
    let raw = ModelInferRequest {
        model_name: crate::v2::MODEL_NAME.into(),
        id: "seed".into(),
        inputs: ts
            .iter()
            .map(|(name, dt, _)| tensor(name, dt, None))
            .collect(),
        raw_input_contents: ts.iter().map(|(_, _, d)| d.to_raw()).collect(),
        ..Default::default()
    };
    write("v2_grpc", "raw", &raw.encode_to_vec());
}

/// Decisions as the decision log records them, with fixed ids and times.
fn rows() -> Vec<DecisionRow> {
    let at: DateTime<Utc> = DateTime::from_timestamp(1_767_225_600, 123_456_000).unwrap();
    (0..4)
        .map(|i| {
            let mut r = sample(i);
            r.decision_id =
                Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + u128::from(i));
            r.stream_id = r.stream_id.map(|_| Uuid::from_u128(0xfeed));
            r.received_at = at;
            r.decided_at = at;
            r
        })
        .collect()
}

fn spool_seeds() {
    let rows = rows();
    // A segment as the spool itself writes and seals it.
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(SpoolConfig {
        dir: dir.path().to_owned(),
        max_bytes: 1 << 20,
        segment_bytes: 64 << 10,
    })
    .unwrap();
    spool.append(&rows, u64::MAX, true).unwrap();
    spool.seal_active();
    let seq = spool.sealed_segments()[0];
    let segment = fs::read(dir.path().join(format!("seg-{seq:020}.spool"))).unwrap();
    spool.close();
    write("spool_segment", "sealed", &segment);
    // The same with a corrupt byte in the second frame and a torn last frame.
    let mut damaged = segment.clone();
    let second = 8 + 8 + Frames::of_records(&rows[..1]).largest_payload() + 20;
    damaged[second] ^= 0x5a;
    damaged.truncate(damaged.len() - 9);
    damaged.extend_from_slice(&[0; 64]);
    write("spool_segment", "damaged", &damaged);
    // A segment of an older build, in the record codec.
    let mut legacy = segment[..8].to_vec();
    let mut frames = Frames::default();
    for r in &rows {
        frames.push(|out| codec::encode(r, out));
    }
    legacy.extend_from_slice(frames.as_bytes());
    write("spool_segment", "codec", &legacy);

    // Payloads for spool_rows: today's rows, rows of older builds (39 and 42 columns), a
    // record of the codec.
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    for r in &rows[..2] {
        let mut p = Vec::new();
        copy_row::encode(r, &mut p);
        payloads.push(p);
    }
    // rows[1] has no trace, no explanation, no shadow_of, and is the champion's: as the older
    // builds wrote it, without the last column (a NULL trace_id), or the last four.
    assert!(rows[1].trace_id.is_none() && rows[1].explanation.is_none());
    for (fields, cut) in [(42i16, 4), (39, 4 + 4 + 4 + 4 + "champion".len())] {
        assert!(copy_row::LEGACY_FIELDS.contains(&fields));
        let mut old = payloads[1].clone();
        old.truncate(old.len() - cut);
        old[..2].copy_from_slice(&fields.to_be_bytes());
        payloads.push(old);
    }
    let mut p = Vec::new();
    codec::encode(&rows[1], &mut p);
    payloads.push(p);
    let mut seed = Vec::new();
    for p in &payloads {
        seed.extend_from_slice(&(p.len() as u16).to_le_bytes());
        seed.extend_from_slice(p);
    }
    write("spool_rows", "rows", &seed);
}

/// The committed bundle cut to its first three trees and eight canary rows, whose
/// probabilities are those the three trees give (the rest of the manifest as committed).
fn bundle_seeds() {
    let dir = root().join("models/default");
    let mut booster: Value =
        serde_json::from_slice(&fs::read(dir.join(bundle::BOOSTER_FILE)).unwrap()).unwrap();
    let trees = 3;
    let model = &mut booster["learner"]["gradient_booster"]["model"];
    model["trees"].as_array_mut().unwrap().truncate(trees);
    model["tree_info"].as_array_mut().unwrap().truncate(trees);
    model["iteration_indptr"] = json!((0..=trees).collect::<Vec<_>>());
    model["gbtree_model_param"]["num_trees"] = json!(trees.to_string());
    let booster = serde_json::to_vec(&booster).unwrap();
    let mut manifest: Manifest =
        serde_json::from_slice(&fs::read(dir.join(bundle::MANIFEST_FILE)).unwrap()).unwrap();
    manifest.canary.rows.truncate(bundle::MIN_CANARY_ROWS);
    let ensemble = Ensemble::from_xgboost_json(&booster).unwrap();
    let matrix = manifest.preprocessor.transform(&manifest.canary.rows);
    manifest.canary.probabilities = ensemble
        .margins(&matrix)
        .into_iter()
        .map(|m| f64::from(sigmoid(m)))
        .collect();
    manifest.artifact_sha256 = bundle::sha256_hex(&booster);
    manifest.model_version = bundle::model_version_for(&manifest.artifact_sha256);
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let metrics = fs::read(dir.join(bundle::METRICS_FILE)).unwrap();
    let codes = fs::read(dir.join(bundle::REASON_CODES_FILE)).unwrap();

    // It loads.
    let out = tempfile::tempdir().unwrap();
    let files = [
        (bundle::BOOSTER_FILE, &booster[..]),
        (bundle::MANIFEST_FILE, &manifest[..]),
        (bundle::METRICS_FILE, &metrics[..]),
        (bundle::REASON_CODES_FILE, &codes[..]),
    ];
    for (name, bytes) in files {
        fs::write(out.path().join(name), bytes).unwrap();
    }
    let checksums = bundle::checksums_text(files);
    fs::write(out.path().join(bundle::CHECKSUMS_FILE), &checksums).unwrap();
    ModelBundle::load(out.path()).unwrap();

    // Flags (see fuzz_targets/bundle_load.rs): 1 | 2, the manifest agrees with the booster;
    // 4, the checksums file as given.
    let join = |flags: u8, parts: &[&[u8]]| {
        let mut seed = vec![flags];
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                seed.push(0xff);
            }
            seed.extend_from_slice(p);
        }
        seed
    };
    write(
        "bundle_load",
        "three-trees",
        &join(3, &[&booster, &manifest, &metrics]),
    );
    write(
        "bundle_load",
        "with-reason-codes-and-checksums",
        &join(
            4,
            &[&booster, &manifest, &metrics, &codes, checksums.as_bytes()],
        ),
    );
}

#[test]
#[ignore = "writes fuzz/corpus/*/seed-*; run by hand when the inputs change"]
fn write_fuzz_seeds() {
    let apps = applications();
    grpc_seeds(&apps);
    rest_seeds(&apps);
    v2_seeds(&apps);
    spool_seeds();
    bundle_seeds();
    keys_seeds();
}

/// Keys files as `cra keys add|revoke` write them: two clients, one with its own rate and
/// burst, one key revoked; and a file of one client with only the required fields.
fn keys_seeds() {
    use crate::security::keys::{hash_key, ClientEntry, KeyEntry, KeysFile};
    let key = |k: &str, revoked: Option<&str>| KeyEntry {
        sha256: hex::encode(hash_key(k)),
        added: "2026-11-30T09:00:00Z".to_owned(),
        revoked: revoked.map(str::to_owned),
    };
    let file = KeysFile {
        clients: vec![
            ClientEntry {
                id: "batch-nightly".to_owned(),
                rate: Some("500/s".parse().unwrap()),
                burst: Some(1000),
                keys: vec![
                    key("cra_old", Some("2026-12-01T08:00:00Z")),
                    key("cra_new", None),
                ],
            },
            ClientEntry {
                id: "loan-origination@lender.example".to_owned(),
                rate: Some("60/m".parse().unwrap()),
                burst: None,
                keys: vec![key("cra_web", None)],
            },
        ],
    };
    write("keys_file", "two-clients", file.to_toml().as_bytes());
    let one = KeysFile {
        clients: vec![ClientEntry {
            id: "c1".to_owned(),
            rate: None,
            burst: None,
            keys: vec![key("cra_c1", None)],
        }],
    };
    write("keys_file", "one-client", one.to_toml().as_bytes());
}
