//! Test harness: one model bundle per test process, and a server started in-process on
//! 127.0.0.1:0 with a real tonic client, stopped through its handle.
use std::{
    path::Path,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use cra::{
    config::ServeConfig,
    contract::{
        pb::{self, credit_risk_service_client::CreditRiskServiceClient},
        validate::application_to_pb,
    },
    data::{Application, EmploymentStatus, HomeOwnership, LoanPurpose},
    model::{
        bundle::{
            feature_specs, model_version_for, sha256_hex, xgboost_predict, xgboost_version_of,
            Canary, Manifest, BOOSTER_FILE, FORMAT_VERSION, MANIFEST_FILE,
        },
        ModelBundle, PreprocessParams, Thresholds,
    },
    server::{ServerBuilder, ServerHandle},
};
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// The committed default bundle when it is there, else a small one trained here.
pub fn bundle() -> Arc<ModelBundle> {
    static BUNDLE: OnceLock<Arc<ModelBundle>> = OnceLock::new();
    BUNDLE
        .get_or_init(|| {
            let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default");
            if committed.join(MANIFEST_FILE).exists() {
                return Arc::new(ModelBundle::load(&committed).expect("models/default loads"));
            }
            let dir = tempfile::tempdir().expect("tempdir");
            write_test_bundle(dir.path());
            Arc::new(ModelBundle::load(dir.path()).expect("the test bundle loads"))
        })
        .clone()
}

/// Trains a small booster on synthetic rows with libxgboost and writes a bundle into `dir`.
fn write_test_bundle(dir: &Path) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let n = 2_000;
    let mut rows = Vec::with_capacity(n);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let credit_score = rng.random_range(300.0..850.0);
        let dti = rng.random_range(0.0..1.2);
        let app = Application {
            age: rng.random_range(18..80) as f64,
            income: rng.random_range(15_000.0..200_000.0),
            employment_length: rng.random_range(0.0..30.0),
            credit_score: if rng.random_bool(0.05) {
                f64::NAN
            } else {
                credit_score
            },
            num_credit_lines: rng.random_range(0..20) as f64,
            credit_utilization: rng.random_range(0.0..1.0),
            debt_to_income: dti,
            total_debt: rng.random_range(0.0..100_000.0),
            savings: rng.random_range(0.0..100_000.0),
            loan_amount: rng.random_range(1_000.0..60_000.0),
            loan_term: [12.0, 36.0, 60.0][rng.random_range(0..3)],
            num_late_payments: rng.random_range(0..5) as f64,
            num_bankruptcies: rng.random_range(0..2) as f64,
            inquiries_last_6m: rng.random_range(0..6) as f64,
            employment_status: Some(EmploymentStatus::ALL[rng.random_range(0..5)]),
            home_ownership: Some(HomeOwnership::ALL[rng.random_range(0..4)]),
            loan_purpose: Some(LoanPurpose::ALL[rng.random_range(0..8)]),
        };
        let z = -1.0 + 3.0 * dti - (credit_score - 600.0) / 80.0;
        let p: f64 = 1.0 / (1.0 + (-z).exp());
        labels.push(f32::from(u8::from(rng.random_bool(p))));
        rows.push(app);
    }
    let pre = PreprocessParams::default().fit(&rows).expect("fit");
    let matrix = pre.transform(&rows);
    let mut dtrain = xgb::DMatrix::from_dense(&matrix, n).expect("dmatrix");
    dtrain.set_labels(&labels).expect("labels");
    let params = xgb::parameters::BoosterParameters::default();
    let mut booster = xgb::Booster::new_with_cached_dmats(&params, &[&dtrain]).expect("booster");
    for (k, v) in [
        ("objective", "binary:logistic"),
        ("max_depth", "4"),
        ("eta", "0.3"),
    ] {
        booster.set_param(k, v).expect("param");
    }
    for i in 0..30 {
        booster.update(&dtrain, i).expect("boost");
    }
    let json = booster.save_buffer(false).expect("save");
    let canary_rows: Vec<Application> = rows[..5].to_vec();
    let probabilities = xgboost_predict(&json, &pre.transform(&canary_rows))
        .expect("predict")
        .into_iter()
        .map(f64::from)
        .collect();
    let sha = sha256_hex(&json);
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        model_version: model_version_for(&sha),
        trained_at: chrono::Utc::now(),
        xgboost_version: xgboost_version_of(&json),
        artifact_sha256: sha,
        training_data_sha256: "test-data".into(),
        training_rows: n as u64,
        hyperparameters: [("max_depth", "4"), ("eta", "0.3"), ("n_estimators", "30")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        thresholds: Thresholds::default(),
        features: feature_specs(),
        preprocessor: pre,
        canary: Canary {
            rows: canary_rows,
            probabilities,
        },
    };
    std::fs::write(dir.join(BOOSTER_FILE), &json).expect("write booster");
    std::fs::write(
        dir.join(MANIFEST_FILE),
        serde_json::to_vec_pretty(&manifest).expect("manifest json"),
    )
    .expect("write manifest");
    std::fs::write(
        dir.join("metrics.json"),
        br#"{"auc_roc": 0.8, "accuracy": 0.75}"#,
    )
    .expect("write metrics");
}

/// The original service's example application, in contract form.
pub fn example() -> pb::CreditApplication {
    application_to_pb(&Application::example(), "example-1")
}

/// Defaults of `cra serve`, on 127.0.0.1:0.
pub fn config() -> ServeConfig {
    ServeConfig::with_listen("127.0.0.1:0".parse().unwrap())
}

pub struct TestApp {
    pub handle: ServerHandle,
    pub client: CreditRiskServiceClient<Channel>,
    pub channel: Channel,
    pub bundle: Arc<ModelBundle>,
}

impl TestApp {
    pub fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel.clone())
    }

    /// Polls readiness until it is SERVING (at most 10 s).
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut health = self.health();
        loop {
            let status = health
                .check(HealthCheckRequest {
                    service: cra::server::SERVICE_NAME.into(),
                })
                .await
                .map(|r| r.into_inner().status);
            let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
            if matches!(status, Ok(s) if s == serving) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server not ready after 10 s: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Starts a server with the default config and waits until it is ready.
pub async fn spawn_app() -> TestApp {
    let app = spawn_app_with(config(), |b| b).await;
    app.wait_ready().await;
    app
}

/// Starts a server with `cfg` and the test bundle; `customise` may add a recorder or gates.
/// Does not wait for readiness.
pub async fn spawn_app_with(
    cfg: ServeConfig,
    customise: impl FnOnce(ServerBuilder) -> ServerBuilder,
) -> TestApp {
    let bundle = bundle();
    let server = customise(ServerBuilder::new(cfg).model(bundle.clone()))
        .bind()
        .await
        .expect("server binds");
    let handle = server.spawn();
    let channel = Channel::from_shared(format!("http://{}", handle.local_addr()))
        .unwrap()
        .connect()
        .await
        .expect("client connects");
    TestApp {
        handle,
        client: CreditRiskServiceClient::new(channel.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20),
        channel,
        bundle,
    }
}
