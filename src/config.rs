//! The one typed configuration of the `cra` binary: every flag has an environment fallback and
//! its doc comment is its `--help` text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// CRA: gRPC credit-risk scoring (preprocessing + XGBoost) with a PostgreSQL decision log.
#[derive(Debug, Parser)]
#[command(name = "cra", version, about, propagate_version = true)]
pub struct Cli {
    /// Log format on stderr: `text` (colour only on a terminal) or `json` (one object per
    /// line, for log shippers).
    #[arg(long, global = true, env = "CRA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate synthetic credit applications into a Parquet (or CSV) file.
    Generate(GenerateArgs),
    /// Train the preprocessing + XGBoost pipeline on a Parquet file and write a model bundle.
    Train(TrainArgs),
    /// Serve the models over gRPC (Score, ScoreBatch, GetModelInfo, the Open Inference
    /// Protocol, health, reflection) and HTTP (the REST API, the Open Inference Protocol's /v2).
    Serve(Box<ServeConfig>),
    /// Score a Parquet file offline, through the same core as the server, into a Parquet file.
    Score(ScoreArgs),
    /// Load-test a running `cra serve` over gRPC and print latency percentiles and throughput.
    Bench(BenchArgs),
    /// Apply the decision log schema (migrations) to PostgreSQL and print what was applied.
    Migrate(MigrateArgs),
    /// Write a model report (metrics, ROC/PR/KS/calibration plots, importance, SHAP, reason
    /// codes) as one self-contained HTML file.
    Report(ReportArgs),
    /// Manage the API keys file of `cra serve --api-keys`: add a key (shown once), list the
    /// clients, revoke keys.
    Keys(KeysArgs),
    /// Write a model bundle from an XGBoost booster trained elsewhere (e.g. in a scikit-learn
    /// pipeline) and its fitted preprocessing; the bundle is verified against the original
    /// pipeline's canary probabilities before it is written.
    Import(ImportArgs),
    /// The drift of a model from the decision log: the PSI of the score and of every feature
    /// of its recorded decisions against the training distributions in its bundle.
    Drift(crate::drift::DriftArgs),
}

/// `cra keys`.
#[derive(Debug, Clone, Args)]
pub struct KeysArgs {
    /// The API keys file (TOML; created by the first `add`). It holds only SHA-256 hashes.
    #[arg(
        long,
        env = "CRA_API_KEYS",
        global = true,
        default_value = "api-keys.toml"
    )]
    pub api_keys: PathBuf,
    #[command(subcommand)]
    pub action: KeysAction,
}

/// What `cra keys` does.
#[derive(Debug, Clone, Subcommand)]
pub enum KeysAction {
    /// Add a new random key for CLIENT (created if new) and print it, once: only its hash is
    /// kept. A client may hold several keys (to rotate without a gap).
    Add {
        /// The client id (letters, digits, . _ - @ :), recorded with every decision it asks for.
        client: String,
        /// This client's own rate limit in applications, N/s, N/m or N/h (else the server's
        /// --rate-limit).
        #[arg(long)]
        rate: Option<crate::security::rate::Rate>,
        /// This client's own burst (with --rate; default one second's worth of it).
        #[arg(long, requires = "rate")]
        burst: Option<u32>,
    },
    /// List the clients, their limits and their keys' fingerprints (never the keys).
    List,
    /// Revoke CLIENT's keys: all of them, or the one with --key FINGERPRINT. Revoked keys stay
    /// in the file, marked, so that a refusal can say "revoked".
    Revoke {
        client: String,
        /// The fingerprint of the key to revoke (as `cra keys list` shows it, or a prefix).
        #[arg(long)]
        key: Option<String>,
    },
}

/// Who may call, how fast, and over what (`cra serve`; docs/SECURITY.md).
#[derive(Debug, Clone, Args)]
pub struct SecurityArgs {
    /// API keys file (TOML, written by `cra keys add`). With it, every call except health,
    /// readiness and metrics needs `authorization: Bearer KEY` with a key of the file. Reloaded
    /// when it changes and on SIGHUP.
    #[arg(long, env = "CRA_API_KEYS")]
    pub api_keys: Option<PathBuf>,
    /// Who may use gRPC server reflection and read GET /openapi.json: off, authenticated or
    /// open.
    #[arg(long, env = "CRA_REFLECTION", value_enum, default_value_t = crate::security::ReflectionAccess::Open)]
    pub reflection: crate::security::ReflectionAccess,
    /// Default rate limit of each client, in applications (a unary call is one, a batch as many
    /// as it holds): N/s, N/m or N/h. A client's own rate in the keys file overrides it; an
    /// anonymous caller is limited by its IP address. Default: no limit.
    #[arg(long, env = "CRA_RATE_LIMIT")]
    pub rate_limit: Option<crate::security::rate::Rate>,
    /// Applications a client may send at once above --rate-limit after a pause (default: one
    /// second's worth of the rate). A batch larger than the burst is refused.
    #[arg(long, env = "CRA_BURST", requires = "rate_limit")]
    pub burst: Option<u32>,
    /// How long a call over its client's rate limit may wait for its turn before it is refused
    /// (RESOURCE_EXHAUSTED with RetryInfo, HTTP 429 with Retry-After); 0 refuses at once. A
    /// client that sends faster than its limit is slowed to it, instead of being answered with
    /// refusals as fast as it can send, which would cost other clients the server's CPU. The
    /// wait also ends at the call's deadline, and a waiting call holds no
    /// --max-concurrent-requests slot.
    #[arg(long, env = "CRA_RATE_LIMIT_WAIT", default_value = "500ms", value_parser = parse_duration)]
    pub rate_limit_wait: std::time::Duration,
    /// TLS certificate chain (PEM) of both ports; with --tls-key it turns TLS on. Reloaded
    /// when it changes and on SIGHUP.
    #[arg(long, env = "CRA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "CRA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) of the clients: every call except health, readiness and metrics
    /// then needs a client certificate signed by one of them, whose subject CN (else first DNS
    /// name) is the client id; an API key is then optional.
    #[arg(long, env = "CRA_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

/// `cra import`: a bundle from a booster file and a preprocessing spec.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// The booster as XGBoost saved it: `model.json` (JSON) or `model.ubj` (UBJSON).
    #[arg(long)]
    pub booster: PathBuf,
    /// The preprocessing spec (JSON): the fitted scaler and encoder and canary rows with the
    /// original pipeline's probabilities, as `cra.sklearn_spec(pipeline)` in Python writes it.
    #[arg(long)]
    pub preprocessing: PathBuf,
    /// The reason-code table (`reason_codes.json`); default: the standard table.
    #[arg(long)]
    pub reason_codes: Option<PathBuf>,
    /// The bundle directory to write; it must not exist.
    #[arg(long)]
    pub out: PathBuf,
}

/// `cra generate`.
#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// Number of applications to generate.
    #[arg(long, env = "CRA_ROWS", default_value_t = 1000)]
    pub rows: usize,
    /// Random seed; the same seed gives the same file.
    #[arg(long, env = "CRA_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Output file (.parquet, or .csv with --csv).
    #[arg(long, env = "CRA_OUT", default_value = "data/credit_data.parquet")]
    pub out: PathBuf,
    /// Write CSV instead of Parquet.
    #[arg(long, env = "CRA_CSV")]
    pub csv: bool,
    /// Scale of the logistic noise on the risk score (larger = harder to predict).
    #[arg(long, env = "CRA_NOISE_SCALE", default_value_t = cra_model::synthetic::DEFAULT_NOISE_SCALE)]
    pub noise_scale: f64,
    /// Share of applicants without a credit-bureau file (their six bureau fields are null).
    #[arg(long, env = "CRA_NO_BUREAU_SHARE", default_value_t = cra_model::synthetic::DEFAULT_NO_BUREAU_SHARE)]
    pub no_bureau_share: f64,
}

/// `cra train`.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Parquet file with the 17 inputs and the `default` label.
    #[arg(long, env = "CRA_DATA", default_value = "data/credit_data.parquet")]
    pub data: PathBuf,
    /// Directory to write the model bundle into.
    #[arg(long, env = "CRA_MODEL_OUT", default_value = "models/default")]
    pub out: PathBuf,
    /// Boosting rounds (trees).
    #[arg(long, env = "CRA_N_ESTIMATORS", default_value_t = 100)]
    pub n_estimators: u32,
    /// Maximum tree depth.
    #[arg(long, env = "CRA_MAX_DEPTH", default_value_t = 6)]
    pub max_depth: u32,
    /// Learning rate (eta).
    #[arg(long, env = "CRA_ETA", default_value_t = 0.1)]
    pub eta: f64,
    /// L1 regularisation on leaf weights (alpha).
    #[arg(long, env = "CRA_REG_ALPHA", default_value_t = 0.1)]
    pub reg_alpha: f64,
    /// L2 regularisation on leaf weights (lambda).
    #[arg(long, env = "CRA_REG_LAMBDA", default_value_t = 1.0)]
    pub reg_lambda: f64,
    /// Seed of the train/test split and of XGBoost.
    #[arg(long, env = "CRA_TRAIN_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Share of each class held out as the test set.
    #[arg(long, env = "CRA_TEST_FRACTION", default_value_t = 0.3)]
    pub test_fraction: f64,
    /// How the test rows are chosen. `sklearn`: exactly scikit-learn's
    /// `train_test_split(test_size, stratify=y, random_state=seed)`, so metrics compare row for
    /// row with a scikit-learn pipeline (seed below 2^32). `native`: CRA's own ChaCha8 split.
    #[arg(long, env = "CRA_SPLIT", value_enum, default_value_t = crate::training::split::SplitMethod::Sklearn)]
    pub split: crate::training::split::SplitMethod,
    /// XGBoost tree method: hist, approx or exact.
    #[arg(long, env = "CRA_TREE_METHOD", default_value = "hist")]
    pub tree_method: String,
    /// Stop when the validation log loss (on 20% of the training rows) has not improved for
    /// this many rounds; off by default.
    #[arg(long, env = "CRA_EARLY_STOPPING_ROUNDS")]
    pub early_stopping_rounds: Option<u32>,
    /// libxgboost threads; fixed by default so the same data and seed give the same model.
    #[arg(long, env = "CRA_TRAIN_THREADS", default_value_t = 1)]
    pub nthread: u32,
    /// A reason-code table (JSON, as `models/default/reason_codes.json`) to write with the
    /// bundle instead of the standard one; every model feature must belong to exactly one code.
    #[arg(long, env = "CRA_REASON_CODES")]
    pub reason_codes: Option<PathBuf>,
    /// Train nothing: add (or replace) the drift reference (`drift_reference.json`) of the
    /// existing bundle in --out, computed from --data, which must be the file the bundle was
    /// trained on (its SHA-256 is checked). The split is the one the manifest records; the
    /// booster, the manifest and the model version are left as they are. Needs no libxgboost.
    #[arg(long)]
    pub drift_reference_only: bool,
}

/// The number of worker (or scoring) threads: the CPUs this process may use (respects cgroup quotas and
/// CPU affinity), unless overridden.
pub fn worker_threads(configured: Option<usize>) -> usize {
    configured.filter(|n| *n > 0).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}
/// Parses a duration such as `250ms`, `30s`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration; use e.g. 500ms, 30s or 2m"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{s}`; use ms, s, m or h"
            ))
        }
    };
    std::time::Duration::try_from_secs_f64(secs).map_err(|e| format!("`{s}`: {e}"))
}

/// `cra serve`: how the gRPC server listens, which model it loads and its safety limits.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on (use port 0 for any free port).
    #[arg(long, env = "CRA_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: std::net::SocketAddr,
    /// Address of the HTTP server: the original REST API (/predict, /predict/batch, /health,
    /// /openapi.json) and the Open Inference Protocol's /v2 routes (use port 0 for any free
    /// port).
    #[arg(long, env = "CRA_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    pub http_listen: std::net::SocketAddr,
    /// Model bundle directory written by `cra train`: served as the only model (the champion).
    #[arg(long, env = "CRA_MODEL", default_value = "models/default")]
    pub model: PathBuf,
    /// A models file (TOML) listing the champion, challengers (A/B, by weight) and shadows;
    /// when given, --model (and CRA_MODEL) is not used. Reloaded on SIGHUP and whenever the file
    /// changes.
    #[arg(long, env = "CRA_MODELS")]
    pub models: Option<PathBuf>,
    /// Which decisions carry an explanation (TreeSHAP contributions and adverse-action reasons)
    /// when the client does not ask: never, declined (prediction 1) or always. Explained
    /// decisions keep their explanation in the decision log.
    #[arg(long, env = "CRA_EXPLAIN", default_value = "declined", value_parser = clap::value_parser!(crate::scoring::ExplainPolicy))]
    pub explain: crate::scoring::ExplainPolicy,
    /// Prometheus metrics at GET /metrics on the HTTP port; `false` turns them off (the route
    /// then answers 503).
    #[arg(long, env = "CRA_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub metrics: bool,
    /// Live drift: the last N scored decisions of each model are kept, binned against the
    /// bundle's drift reference, and /metrics exports the PSI of the score and of every
    /// feature over them (cra_drift_score_psi, cra_drift_feature_psi) once a window holds 100
    /// decisions. 0 turns it off (it is also off with --metrics false).
    #[arg(long, env = "CRA_DRIFT_WINDOW", default_value_t = crate::scoring::drift::DEFAULT_WINDOW)]
    pub drift_window: usize,
    /// Watch the models file and reload when it changes (SIGHUP reloads either way).
    #[arg(long, env = "CRA_WATCH_MODELS", default_value_t = true, action = clap::ArgAction::Set)]
    pub watch_models: bool,
    /// Calls served at once (a stream counts as one for its lifetime); more are refused at once
    /// with RESOURCE_EXHAUSTED instead of queueing.
    #[arg(long, env = "CRA_MAX_CONCURRENT_REQUESTS", default_value_t = 1024)]
    pub max_concurrent_requests: usize,
    /// Of those calls, at most this many ScoreBatch streams, so that open streams never take
    /// every slot from unary calls; default: a quarter of --max-concurrent-requests. Must be
    /// below --max-concurrent-requests.
    #[arg(long, env = "CRA_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<usize>,
    /// TCP connections served at once; a connection beyond it is closed as soon as it is
    /// accepted. Each one costs a file descriptor and up to 8 MiB of HTTP/2 receive buffer.
    #[arg(long, env = "CRA_MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: usize,
    /// A ScoreBatch stream that sends no message, or reads no answer, for this long is ended
    /// with DEADLINE_EXCEEDED, which frees its slot.
    #[arg(long, env = "CRA_STREAM_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub stream_idle_timeout: std::time::Duration,
    /// Largest ScoreBatch request message accepted, in bytes; a larger one ends its stream with
    /// RESOURCE_EXHAUSTED before it is read. The default holds --max-batch-items valid
    /// applications of the largest size (under 600 bytes each); all streams together buffer at
    /// most --max-buffered-message-bytes.
    #[arg(long, env = "CRA_MAX_MESSAGE_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// Most bytes of ScoreBatch request messages being received at once, over every stream and
    /// connection; a message that would go over it is refused with RESOURCE_EXHAUSTED before
    /// it is read. Bounds the memory that many streams sending large messages can take.
    #[arg(long, env = "CRA_MAX_BUFFERED_MESSAGE_BYTES", default_value_t = 128 * 1024 * 1024)]
    pub max_buffered_message_bytes: usize,
    /// Most applications in one ScoreBatch request message (1 to 100,000); a message with more
    /// ends its stream with INVALID_ARGUMENT before any of them is decoded. The largest answer
    /// message the server sends follows from it (about 4 KiB per application).
    #[arg(long, env = "CRA_MAX_BATCH_ITEMS", default_value_t = 10_000)]
    pub max_batch_items: usize,
    /// Largest Score (or GetModelInfo) request message accepted, in bytes; a larger one is
    /// refused with RESOURCE_EXHAUSTED before it is read. A valid application is under 600 bytes.
    #[arg(long, env = "CRA_MAX_UNARY_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_unary_message_bytes: usize,
    /// Most applications of a ScoreBatch stream scored by one prediction call.
    #[arg(long, env = "CRA_BATCH_CHUNK", default_value_t = 1024)]
    pub batch_chunk: usize,
    /// Tokio worker threads; default: the CPUs this process may use (cgroup quota and affinity).
    #[arg(long, env = "CRA_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Upper bound on a unary call's time, on top of the client's grpc-timeout.
    #[arg(long, env = "CRA_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: std::time::Duration,
    /// Interval of HTTP/2 keepalive pings to idle clients.
    #[arg(long, env = "CRA_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub keepalive_interval: std::time::Duration,
    /// How long to wait for a keepalive ping's answer before closing the connection.
    #[arg(long, env = "CRA_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub keepalive_timeout: std::time::Duration,
    /// On SIGTERM/SIGINT, how long in-flight calls may take to finish before the process exits.
    #[arg(long, env = "CRA_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: std::time::Duration,
    /// OpenTelemetry traces.
    #[command(flatten)]
    pub traces: TracesArgs,
    /// The decision log (PostgreSQL, spool).
    #[command(flatten)]
    pub decision_log: DecisionLogArgs,
    /// API keys, client certificates, TLS, rate limits.
    #[command(flatten)]
    pub security: SecurityArgs,
}

/// `cra serve`'s OpenTelemetry traces: one span per call, exported over OTLP/gRPC.
#[derive(Debug, Clone, Args)]
pub struct TracesArgs {
    /// OTLP/gRPC collector to export spans to, e.g. http://otel-collector:4317 (also read from
    /// OTEL_EXPORTER_OTLP_ENDPOINT); default: no export. Decisions record the trace id either
    /// way when the caller sent a W3C traceparent.
    #[arg(long = "otlp-endpoint", env = "CRA_OTLP_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Share of new traces sampled, 0 to 1; a call with a traceparent follows its caller's
    /// sampling decision.
    #[arg(
        long = "otlp-sample-ratio",
        env = "CRA_OTLP_SAMPLE_RATIO",
        default_value_t = 1.0
    )]
    pub sample_ratio: f64,
    /// The service.name of the exported spans (also read from OTEL_SERVICE_NAME).
    #[arg(
        long = "otlp-service-name",
        env = "CRA_OTLP_SERVICE_NAME",
        default_value = "cra"
    )]
    pub service_name: String,
}

impl TracesArgs {
    /// The exporter's settings, OpenTelemetry's standard variables filling what the flags
    /// leave unset.
    pub fn config(&self) -> crate::telemetry::traces::TracesConfig {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        crate::telemetry::traces::TracesConfig {
            endpoint: self
                .endpoint
                .clone()
                .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT")),
            sample_ratio: self.sample_ratio,
            service_name: if self.service_name == "cra" {
                env("OTEL_SERVICE_NAME").unwrap_or_else(|| self.service_name.clone())
            } else {
                self.service_name.clone()
            },
        }
    }
}

impl ServeConfig {
    /// The defaults of `cra serve`, listening on `listen` (tests use 127.0.0.1:0), with the
    /// decision log off: a test that records decisions sets `decision_log` itself.
    pub fn with_listen(listen: std::net::SocketAddr) -> Self {
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            serve: ServeConfig,
        }
        let mut cfg = Defaults::try_parse_from(["serve"])
            .map(|d| d.serve)
            .expect("every ServeConfig flag has a default");
        cfg.listen = listen;
        cfg.http_listen = std::net::SocketAddr::new(listen.ip(), 0);
        cfg.decision_log.audit = DecisionLogMode::Off;
        cfg
    }

    /// Where the models come from: `--models FILE`, else `--model DIR`.
    pub fn model_source(&self) -> crate::scoring::ModelSource {
        crate::scoring::ModelSource::of(self.models.as_deref(), &self.model)
    }
}

/// `cra score`: offline scoring of a Parquet file.
#[derive(Debug, Clone, Args)]
pub struct ScoreArgs {
    /// Model bundle directory: the only model (the champion).
    #[arg(long, env = "CRA_MODEL", default_value = "models/default")]
    pub model: PathBuf,
    /// A models file (TOML): champion, challengers by weight (sticky by application_id), shadows;
    /// when given, --model (and CRA_MODEL) is not used.
    #[arg(long, env = "CRA_MODELS")]
    pub models: Option<PathBuf>,
    /// Input Parquet file: the 17 input columns, and optionally application_id.
    #[arg(long)]
    pub data: PathBuf,
    /// Output Parquet file: the id (application_id, or the row number), probability_default,
    /// risk_score, risk_level, prediction, margin, model_version, and error for invalid rows.
    #[arg(long)]
    pub out: PathBuf,
    /// Record every decision in this PostgreSQL decision log (rpc = offline); default: none.
    #[arg(long, hide_env_values = true)]
    pub database_url: Option<DatabaseUrl>,
    /// Spool directory of the decision log while PostgreSQL is slow (with --database-url).
    #[arg(long, default_value = "spool-score")]
    pub spool_dir: PathBuf,
    /// Rows read, scored and written per batch. 4,096 keeps a batch's inputs in the CPU's cache
    /// from stage to stage: 16,384 took 20-30% longer on 1,000,000 rows and twice the memory.
    #[arg(long, default_value_t = 4_096)]
    pub batch_rows: usize,
    /// Scoring threads (default: the CPUs available).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Explain every scored row: its principal reasons (`reason_codes`, `reasons`) and the
    /// TreeSHAP contribution of every model feature (`base_margin`, `contribution_<feature>`).
    #[arg(long)]
    pub explain: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

impl ScoreArgs {
    pub fn model_source(&self) -> crate::scoring::ModelSource {
        crate::scoring::ModelSource::of(self.models.as_deref(), &self.model)
    }
}

/// `cra report`: one self-contained HTML page about a model on labelled rows.
#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// Model bundle directory to report on.
    #[arg(long, env = "CRA_MODEL", default_value = "models/default")]
    pub model: PathBuf,
    /// Labelled Parquet file to evaluate on: the 17 inputs and `default`, as `cra generate`
    /// writes and `cra train` reads. Default: a synthetic holdout from CRA's generator
    /// (--rows, --seed), which the report says.
    #[arg(long, env = "CRA_REPORT_DATA")]
    pub data: Option<PathBuf>,
    /// The HTML file to write (its directory is created if needed).
    #[arg(long, env = "CRA_REPORT_OUT", default_value = "report.html")]
    pub out: PathBuf,
    /// Rows of the synthetic holdout (without --data).
    #[arg(long, env = "CRA_REPORT_ROWS", default_value_t = crate::report::SYNTHETIC_ROWS)]
    pub rows: usize,
    /// Seed of the synthetic holdout (without --data); the committed training data used 42.
    #[arg(long, env = "CRA_REPORT_SEED", default_value_t = crate::report::SYNTHETIC_SEED)]
    pub seed: u64,
}

/// RPC exercised by `cra bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchMode {
    /// One `Score` call per application.
    Unary,
    /// `ScoreBatch` streams, `--chunk` applications per message.
    Stream,
}

/// `cra bench`: a gRPC load generator for `cra serve`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Unary `Score` calls, or `ScoreBatch` streams.
    #[arg(long, env = "CRA_BENCH_MODE", value_enum, default_value_t = BenchMode::Unary)]
    pub mode: BenchMode,
    /// Server address (host:port or http://host:port).
    #[arg(long, env = "CRA_BENCH_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// HTTP/2 connections to open.
    #[arg(long, env = "CRA_BENCH_CONNECTIONS", default_value_t = 2)]
    pub connections: usize,
    /// Calls in flight at once (unary), or concurrent streams (stream mode).
    #[arg(long, env = "CRA_BENCH_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,
    /// Stop after this many applications scored (default 100,000 unless --duration is given).
    #[arg(long, env = "CRA_BENCH_REQUESTS")]
    pub requests: Option<u64>,
    /// Stop after this long instead (e.g. 10s).
    #[arg(long, env = "CRA_BENCH_DURATION", value_parser = parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Applications per ScoreBatch message (stream mode).
    #[arg(long, env = "CRA_BENCH_CHUNK", default_value_t = 1000)]
    pub chunk: usize,
    /// Fixed request rate per second for unary mode (open loop); default: as fast as possible.
    #[arg(long, env = "CRA_BENCH_RATE")]
    pub rate: Option<u64>,
    /// Distinct random applications generated before the clock starts.
    #[arg(long, env = "CRA_BENCH_POOL", default_value_t = 10_000)]
    pub pool: usize,
    /// Seed of the random applications.
    #[arg(long, env = "CRA_BENCH_SEED", default_value_t = 7)]
    pub seed: u64,
    /// Unmeasured warm-up time before the clock starts.
    #[arg(long, env = "CRA_BENCH_WARMUP", default_value = "1s", value_parser = parse_duration)]
    pub warmup: std::time::Duration,
    /// Print one JSON object instead of the text report.
    #[arg(long, env = "CRA_BENCH_JSON")]
    pub json: bool,
    /// Ask for the explanation of every application (ScoreRequest.explain,
    /// ScoreBatchRequest.explain).
    #[arg(long, env = "CRA_BENCH_EXPLAIN")]
    pub explain: bool,
    /// API key sent with every call (`authorization: Bearer KEY`).
    #[arg(long, env = "CRA_BENCH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Connect over TLS, trusting this CA (PEM) for the server's certificate.
    #[arg(long, env = "CRA_BENCH_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS, with --tls-key.
    #[arg(long, env = "CRA_BENCH_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "CRA_BENCH_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Name the server's certificate must hold (default: the host of --addr).
    #[arg(long, env = "CRA_BENCH_TLS_DOMAIN")]
    pub tls_domain: Option<String>,
    /// Unary closed loop: after a RESOURCE_EXHAUSTED with a RetryInfo delay, a worker waits
    /// that long before its next call, as a well-behaved client does (default: it goes on at
    /// once).
    #[arg(long, env = "CRA_BENCH_RESPECT_RETRY")]
    pub respect_retry: bool,
}

/// Where the decision log's PostgreSQL is. The password is never printed (not even by `--help`).
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL of the decision log; the database is created if missing and the role may.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/cra"
    )]
    pub database_url: DatabaseUrl,
}

/// `cra migrate`.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// Whether decisions are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DecisionLogMode {
    On,
    Off,
}

/// The decision log's settings (flattened into `cra serve`).
#[derive(Debug, Clone, Args)]
pub struct DecisionLogArgs {
    /// Record every decision in PostgreSQL. `off` is for benchmarks only: nothing is recorded.
    #[arg(long, env = "CRA_AUDIT", value_enum, default_value_t = DecisionLogMode::On)]
    pub audit: DecisionLogMode,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Most decisions written per binary COPY.
    #[arg(long, env = "CRA_AUDIT_BATCH_SIZE", default_value_t = 2048)]
    pub audit_batch_size: usize,
    /// Longest a decision waits in memory before its batch is written, in milliseconds.
    #[arg(long, env = "CRA_AUDIT_FLUSH_INTERVAL_MS", default_value_t = 50)]
    pub audit_flush_interval_ms: u64,
    /// Decisions held in memory; beyond this they go straight to the spool.
    #[arg(long, env = "CRA_AUDIT_QUEUE_CAPACITY", default_value_t = 65536)]
    pub audit_queue_capacity: usize,
    /// PostgreSQL connections writing decisions (one more replays the spool).
    #[arg(long, env = "CRA_AUDIT_POOL_SIZE", default_value_t = 2)]
    pub audit_pool_size: usize,
    /// Directory of the on-disk spool used while PostgreSQL is down or slow.
    #[arg(long, env = "CRA_SPOOL_DIR", default_value = "spool")]
    pub spool_dir: PathBuf,
    /// Cap on the spool's size in bytes; when it is full and PostgreSQL is down, scoring is refused.
    #[arg(long, env = "CRA_SPOOL_MAX_BYTES", default_value_t = 1 << 30)]
    pub spool_max_bytes: u64,
    /// How often the spool's journal is fsync'd (e.g. 1s, 200ms): a power loss can lose the
    /// decisions of about this long that were not yet in PostgreSQL.
    #[arg(long, env = "CRA_SPOOL_FSYNC_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub spool_fsync_interval: std::time::Duration,
    /// Fail at start-up when PostgreSQL is unreachable (default: warn, spool, replay later).
    #[arg(long, env = "CRA_REQUIRE_DATABASE")]
    pub require_database: bool,
}

/// A PostgreSQL URL whose password never appears in `Debug`/`Display` output.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The full URL, password included: for connecting only, never for logging.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`: the one of `user:password@`, and a
    /// `password` query parameter (which libpq also reads), whatever its letter case.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut u) => {
                if u.password().is_some() {
                    let _ = u.set_password(Some("***"));
                }
                if u.query_pairs()
                    .any(|(k, _)| k.eq_ignore_ascii_case("password"))
                {
                    let pairs: Vec<(String, String)> = u
                        .query_pairs()
                        .map(|(k, v)| {
                            let v = if k.eq_ignore_ascii_case("password") {
                                "***".to_owned()
                            } else {
                                v.into_owned()
                            };
                            (k.into_owned(), v)
                        })
                        .collect();
                    u.query_pairs_mut().clear().extend_pairs(pairs);
                }
                u.to_string()
            }
            // Not a URL (e.g. a key=value string): say nothing that could hold a password.
            Err(_) => "<non-URL connection string>".to_owned(),
        }
    }
}

/// Parsing never fails, so that clap cannot echo a bad URL (password included) in its error;
/// a malformed URL is reported, redacted, when connecting.
impl std::str::FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(DatabaseUrl(s.to_owned()))
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}
