//! Test harness: one model bundle per test process, and a server started in-process on
//! 127.0.0.1:0 with a real tonic client, stopped through its handle.
use std::{
    path::Path,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use cra::{
    app::{App, AppBuilder, AppHandle},
    config::ServeConfig,
    grpc::{
        convert::application_to_pb,
        pb::{self, credit_risk_service_client::CreditRiskServiceClient},
    },
};
use cra_model::{Application, ModelBundle};
use tonic::transport::Channel;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// The committed default bundle (`models/default`), loaded once per test process.
pub fn bundle() -> Arc<ModelBundle> {
    static BUNDLE: OnceLock<Arc<ModelBundle>> = OnceLock::new();
    BUNDLE
        .get_or_init(|| {
            Arc::new(ModelBundle::load(default_model_dir()).expect("models/default loads"))
        })
        .clone()
}

/// The committed default bundle's directory.
pub fn default_model_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default")
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
    pub handle: AppHandle,
    pub client: CreditRiskServiceClient<Channel>,
    pub channel: Channel,
    pub bundle: Arc<ModelBundle>,
}

impl TestApp {
    /// The URL of `path` on the HTTP server (REST and /v2).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.handle.http_addr())
    }

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
                    service: cra::grpc::SERVICE_NAME.into(),
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

/// Starts the application of `cfg` (the committed default model unless `cfg` says otherwise)
/// through `App::builder`; `customise` may replace the recorder or add gates. Does not wait for
/// readiness.
pub async fn spawn_app_with(
    mut cfg: ServeConfig,
    customise: impl FnOnce(AppBuilder) -> AppBuilder,
) -> TestApp {
    if cfg.model == Path::new("models/default") {
        cfg.model = default_model_dir();
    }
    let bundle = bundle();
    let app = customise(App::builder(cfg))
        .build()
        .await
        .expect("the application builds");
    let handle = app.spawn();
    // Lazily: a server with TLS on refuses this plaintext channel; its tests open their own.
    let channel = Channel::from_shared(format!("http://{}", handle.local_addr()))
        .unwrap()
        .connect_lazy();
    TestApp {
        handle,
        client: CreditRiskServiceClient::new(channel.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20),
        channel,
        bundle,
    }
}
