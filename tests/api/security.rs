//! API keys, client certificates (mutual TLS), TLS and rate limits, on the in-process server
//! with its decision log in a database of its own: who is refused records nothing; who is let
//! in is named in every row it causes.
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use cra::{
    config::ServeConfig,
    decision_log::{DecisionLog, DecisionLogConfig},
    grpc::pb::{
        credit_risk_service_client::CreditRiskServiceClient,
        inference::{grpc_inference_service_client::GrpcInferenceServiceClient, ModelInferRequest},
        GetModelInfoRequest, ScoreBatchRequest, ScoreRequest,
    },
    security::keys,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tonic::{
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
    Code, Request,
};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
use tonic_types::StatusExt;

use crate::{
    common::{
        certs::{Ca, Pair},
        pg::TestDb,
    },
    helpers::{config, example, spawn_app_with, TestApp},
    rest::original_example,
};

/// A server of `cfg` recording into `db`, ready.
async fn spawn_logged(cfg: ServeConfig, db: &TestDb, spool: &Path) -> (TestApp, DecisionLog) {
    let mut log_cfg = DecisionLogConfig::new(db.url(), spool.to_owned());
    log_cfg.flush_interval = Duration::from_millis(20);
    log_cfg.connect_timeout = Duration::from_secs(2);
    let log = DecisionLog::start(log_cfg)
        .await
        .expect("decision log starts");
    let given = log.clone();
    let app = spawn_app_with(cfg, move |b| b.decision_log(given)).await;
    (app, log)
}

fn with_key<T>(msg: T, key: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}

fn score_request() -> ScoreRequest {
    ScoreRequest {
        application: Some(example()),
        explain: false,
    }
}

/// The rows' client ids, in the order they were decided.
async fn client_ids(db: &TestDb) -> Vec<Option<String>> {
    db.client()
        .await
        .query("SELECT client_id FROM decisions ORDER BY decided_at", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Waits until `db` holds exactly `n` rows and stays so for a moment.
async fn assert_rows(db: &TestDb, n: i64) {
    let (rows, _) = db.wait_for_rows(n, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (later, _) = db.counts().await;
    assert_eq!((rows, later), (n, n), "rows in the decision log");
}

/// A keys file with a valid key of `acme`, one of `zeta` and a revoked one of `old`.
struct Keys {
    path: PathBuf,
    acme: String,
    zeta: String,
    revoked: String,
}

fn keys_file(dir: &Path) -> Keys {
    let path = dir.join("api-keys.toml");
    let acme = keys::add(&path, "acme", None, None).unwrap();
    let zeta = keys::add(&path, "zeta", None, None).unwrap();
    let revoked = keys::add(&path, "old", None, None).unwrap();
    keys::revoke(&path, "old", None).unwrap();
    Keys {
        path,
        acme,
        zeta,
        revoked,
    }
}

fn assert_refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, what: &str) {
    match r {
        Err(s) => assert_eq!(s.code(), Code::Unauthenticated, "{what}: {s:?}"),
        Ok(v) => panic!("{what} was let through: {v:?}"),
    }
}

#[tokio::test]
async fn without_a_valid_key_every_scoring_call_is_refused_and_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys_file(dir.path());
    let db = TestDb::create("sec_keys").await;
    let mut cfg = config();
    cfg.security.api_keys = Some(keys.path.clone());
    let (app, log) = spawn_logged(cfg, &db, &dir.path().join("spool")).await;
    let http = reqwest::Client::new();

    for (label, key) in [
        ("no key", None),
        ("a wrong key", Some("cra_0000")),
        ("a revoked key", Some(keys.revoked.as_str())),
        ("a malformed header", Some("")),
    ] {
        fn req<T>(m: T, key: Option<&str>) -> Request<T> {
            match key {
                None => Request::new(m),
                Some("") => {
                    let mut r = Request::new(m);
                    r.metadata_mut()
                        .insert("authorization", "Basic YWNtZTpzZWNyZXQ=".parse().unwrap());
                    r
                }
                Some(k) => with_key(m, k),
            }
        }
        let mut c = app.client.clone();
        assert_refused(
            c.score(req(score_request(), key)).await,
            &format!("Score with {label}"),
        );
        assert_refused(
            c.get_model_info(req(GetModelInfoRequest {}, key)).await,
            &format!("GetModelInfo with {label}"),
        );
        let stream = tokio_stream::iter([ScoreBatchRequest {
            applications: vec![example()],
            explain: false,
        }]);
        let batch = c.score_batch(req(stream, key)).await;
        let refused = match batch {
            Err(s) => s,
            Ok(resp) => resp
                .into_inner()
                .message()
                .await
                .expect_err("a refused stream answers no message"),
        };
        assert_eq!(
            refused.code(),
            Code::Unauthenticated,
            "ScoreBatch with {label}"
        );
        let mut v2 = GrpcInferenceServiceClient::new(app.channel.clone());
        assert_refused(
            v2.model_infer(req(ModelInferRequest::default(), key)).await,
            &format!("ModelInfer with {label}"),
        );

        for (path, body) in [
            ("/predict", original_example()),
            (
                "/predict/batch",
                json!({"applications": [original_example()]}),
            ),
            ("/v2/models/credit-risk/infer", json!({"inputs": []})),
        ] {
            let mut rb = http.post(app.url(path)).json(&body);
            match key {
                None => {}
                Some("") => rb = rb.header("authorization", "Basic YWNtZTpzZWNyZXQ="),
                Some(k) => rb = rb.bearer_auth(k),
            }
            let resp = rb.send().await.unwrap();
            assert_eq!(
                resp.status(),
                StatusCode::UNAUTHORIZED,
                "{path} with {label}"
            );
            let challenge = resp.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .to_owned();
            assert!(challenge.starts_with("Bearer"), "{challenge}");
            if key.is_some() {
                assert!(challenge.contains("invalid_token"), "{challenge}");
            }
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["status"], "error", "{body}");
        }
    }

    // Health, readiness and metrics stay open.
    let mut health = HealthClient::new(app.channel.clone());
    for service in ["", cra::grpc::SERVICE_NAME] {
        health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health needs no key");
    }
    for path in ["/health", "/v2/health/live", "/v2/health/ready", "/metrics"] {
        let resp = http.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
    let metrics = http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for reason in ["missing_key", "unknown_key", "revoked_key", "malformed"] {
        for transport in ["grpc", "http"] {
            let line =
                format!("cra_auth_refusals_total{{transport=\"{transport}\",reason=\"{reason}\"}}");
            assert!(metrics.contains(&line), "{line} missing");
        }
    }

    // Nothing was decided, so nothing was recorded.
    assert_rows(&db, 0).await;

    // A valid key scores, and its client is in the row.
    let mut c = app.client.clone();
    let scored = c
        .score(with_key(score_request(), &keys.acme))
        .await
        .unwrap();
    assert!(!scored
        .get_ref()
        .score
        .as_ref()
        .unwrap()
        .decision_id
        .is_empty());
    let resp = http
        .post(app.url("/predict"))
        .bearer_auth(&keys.zeta)
        .json(&original_example())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_rows(&db, 2).await;
    assert_eq!(
        client_ids(&db).await,
        vec![Some("acme".to_owned()), Some("zeta".to_owned())]
    );
    app.handle.shutdown().await.unwrap();
    log.shutdown().await;
}

#[tokio::test]
async fn without_keys_the_caller_is_anonymous_and_its_rows_carry_no_client() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create("sec_anon").await;
    let (app, log) = spawn_logged(config(), &db, &dir.path().join("spool")).await;
    app.client.clone().score(score_request()).await.unwrap();
    assert_rows(&db, 1).await;
    assert_eq!(client_ids(&db).await, vec![None]);
    app.handle.shutdown().await.unwrap();
    log.shutdown().await;
}

#[tokio::test]
async fn a_new_key_works_and_a_revoked_one_stops_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys_file(dir.path());
    let mut cfg = config();
    cfg.security.api_keys = Some(keys.path.clone());
    let app = spawn_app_with(cfg, |b| b).await;
    let mut c = app.client.clone();
    c.score(with_key(score_request(), &keys.acme))
        .await
        .unwrap();

    let fresh = keys::add(&keys.path, "newcomer", None, None).unwrap();
    keys::revoke(&keys.path, "acme", None).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let new_ok = c.score(with_key(score_request(), &fresh)).await.is_ok();
        let old_refused = c
            .score(with_key(score_request(), &keys.acme))
            .await
            .is_err_and(|s| s.code() == Code::Unauthenticated);
        if new_ok && old_refused {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the changed keys file was not picked up within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A broken file leaves the keys in force.
    std::fs::write(&keys.path, "[[client]]\nid = \"x\"\nnonsense = 1\n").unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.score(with_key(score_request(), &fresh))
        .await
        .expect("the last good keys stay in force");
    app.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn reflection_follows_its_flag() {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, ServerReflectionRequest,
    };
    let dir = tempfile::tempdir().unwrap();
    let keys = keys_file(dir.path());
    let list = || {
        tokio_stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }])
    };
    let http = reqwest::Client::new();
    for (mode, without, with) in [
        (cra::security::ReflectionAccess::Open, Code::Ok, Code::Ok),
        (
            cra::security::ReflectionAccess::Authenticated,
            Code::Unauthenticated,
            Code::Ok,
        ),
        (
            cra::security::ReflectionAccess::Off,
            Code::Unimplemented,
            Code::Unimplemented,
        ),
    ] {
        let mut cfg = config();
        cfg.security.api_keys = Some(keys.path.clone());
        cfg.security.reflection = mode;
        let app = spawn_app_with(cfg, |b| b).await;
        let mut r = ServerReflectionClient::new(app.channel.clone());
        let code = |res: Result<_, tonic::Status>| res.map_or_else(|s| s.code(), |_| Code::Ok);
        async fn first(
            r: Result<
                tonic::Response<
                    tonic::Streaming<tonic_reflection::pb::v1::ServerReflectionResponse>,
                >,
                tonic::Status,
            >,
        ) -> Result<(), tonic::Status> {
            r?.into_inner().message().await.map(|_| ())
        }
        assert_eq!(
            code(first(r.server_reflection_info(list()).await).await),
            without,
            "{mode:?} without a key"
        );
        assert_eq!(
            code(first(r.server_reflection_info(with_key(list(), &keys.acme)).await).await),
            with,
            "{mode:?} with a key"
        );
        let doc = http
            .get(app.url("/openapi.json"))
            .send()
            .await
            .unwrap()
            .status();
        let want = match mode {
            cra::security::ReflectionAccess::Open => StatusCode::OK,
            cra::security::ReflectionAccess::Authenticated => StatusCode::UNAUTHORIZED,
            cra::security::ReflectionAccess::Off => StatusCode::NOT_FOUND,
        };
        assert_eq!(doc, want, "/openapi.json with {mode:?}");
        app.handle.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn over_the_rate_limit_grpc_says_when_to_retry_and_rest_answers_429() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys_file(dir.path());
    // zeta has a limit of its own; acme the default of 2 per hour.
    let own = keys::add(&keys.path, "zeta", Some("3/h".parse().unwrap()), Some(3)).unwrap();
    let db = TestDb::create("sec_rate").await;
    let mut cfg = config();
    cfg.security.api_keys = Some(keys.path.clone());
    cfg.security.rate_limit = Some("2/h".parse().unwrap());
    cfg.security.burst = Some(2);
    let (app, log) = spawn_logged(cfg, &db, &dir.path().join("spool")).await;
    let mut c = app.client.clone();
    for _ in 0..2 {
        c.score(with_key(score_request(), &keys.acme))
            .await
            .unwrap();
    }
    let refused = c
        .score(with_key(score_request(), &keys.acme))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let retry = refused
        .get_details_retry_info()
        .expect("a RetryInfo detail")
        .retry_delay
        .expect("a retry delay");
    assert!(
        retry > Duration::from_secs(1700) && retry <= Duration::from_secs(1800),
        "2 per hour: the next one passes in about 30 minutes, not {retry:?}"
    );
    // Another client has its own bucket, under its own limit.
    for _ in 0..3 {
        c.score(with_key(score_request(), &own)).await.unwrap();
    }
    assert_eq!(
        c.score(with_key(score_request(), &keys.zeta))
            .await
            .unwrap_err()
            .code(),
        Code::ResourceExhausted,
        "both of zeta's keys share its limit"
    );
    // REST: 429 with Retry-After, in seconds.
    let http = reqwest::Client::new();
    let resp = http
        .post(app.url("/predict"))
        .bearer_auth(&keys.acme)
        .json(&original_example())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1700..=1800).contains(&after), "Retry-After {after}");
    // A batch larger than the burst can never pass: refused without a retry time.
    let batch = http
        .post(app.url("/predict/batch"))
        .bearer_auth(&own)
        .json(&json!({"applications": vec![original_example(); 4]}))
        .send()
        .await
        .unwrap();
    assert_eq!(batch.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(batch.headers().get("retry-after").is_none());
    let body: Value = batch.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("burst"), "{body}");
    // Only the admitted calls were decided.
    assert_rows(&db, 5).await;
    app.handle.shutdown().await.unwrap();
    log.shutdown().await;
}

#[tokio::test]
async fn a_stream_goes_at_its_rate_instead_of_failing() {
    let mut cfg = config();
    cfg.security.rate_limit = Some("400/s".parse().unwrap());
    cfg.security.burst = Some(100);
    let app = spawn_app_with(cfg, |b| b).await;
    app.wait_ready().await;
    let messages: Vec<ScoreBatchRequest> = (0..10)
        .map(|_| ScoreBatchRequest {
            applications: vec![example(); 50],
            explain: false,
        })
        .collect();
    let started = Instant::now();
    let mut answers = app
        .client
        .clone()
        .score_batch(tokio_stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    let mut scored = 0;
    while let Some(m) = answers.message().await.unwrap() {
        for r in m.results {
            match r.result {
                Some(cra::grpc::pb::batch_result::Result::Score(_)) => scored += 1,
                other => panic!("a paced stream item failed: {other:?}"),
            }
        }
    }
    let took = started.elapsed();
    assert_eq!(scored, 500);
    // 100 at once, then 400 more at 400/s: about a second.
    assert!(
        took >= Duration::from_millis(900),
        "500 applications at 400/s (burst 100) took only {took:?}"
    );
    app.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_faster_than_its_limit_waits_for_its_turn_instead_of_being_refused() {
    // 20 per second with a burst of 2: 8 calls at once are 2 now and 6 turns 50 ms apart.
    let mut cfg = config();
    cfg.security.rate_limit = Some("20/s".parse().unwrap());
    cfg.security.burst = Some(2);
    cfg.security.rate_limit_wait = Duration::from_millis(500);
    let app = spawn_app_with(cfg, |b| b).await;
    app.wait_ready().await;
    let http = reqwest::Client::new();
    let started = Instant::now();
    let calls = (0..8).map(|i| {
        let mut c = app.client.clone();
        let http = http.clone();
        let url = app.url("/predict");
        async move {
            if i % 2 == 0 {
                c.score(score_request())
                    .await
                    .map(|_| ())
                    .map_err(|s| s.to_string())
            } else {
                let r = http
                    .post(url)
                    .json(&original_example())
                    .send()
                    .await
                    .unwrap();
                match r.status() {
                    StatusCode::OK => Ok(()),
                    s => Err(format!("{s}: {}", r.text().await.unwrap())),
                }
            }
        }
    });
    let answers = futures::future::join_all(calls).await;
    let took = started.elapsed();
    for a in &answers {
        a.as_ref()
            .expect("a call within the wait is scored, not refused");
    }
    assert!(
        took >= Duration::from_millis(250),
        "6 calls over a burst of 2 at 20/s must take about 300 ms, not {took:?}"
    );
    // 12 more at once: their turns are 50 ms apart, and those more than 500 ms away are
    // refused with when to retry.
    let more = (0..12).map(|_| {
        let mut c = app.client.clone();
        async move { c.score(score_request()).await }
    });
    let refused: Vec<_> = futures::future::join_all(more)
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect();
    assert!(
        !refused.is_empty(),
        "12 more calls at once cannot all fit in 500 ms at 20/s"
    );
    for s in &refused {
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert!(s.get_details_retry_info().is_some(), "{s:?}");
    }
    app.handle.shutdown().await.unwrap();

    // With --rate-limit-wait 0 the call over the burst is refused at once.
    let mut cfg = config();
    cfg.security.rate_limit = Some("20/s".parse().unwrap());
    cfg.security.burst = Some(2);
    cfg.security.rate_limit_wait = Duration::ZERO;
    let app = spawn_app_with(cfg, |b| b).await;
    app.wait_ready().await;
    let mut c = app.client.clone();
    c.score(score_request()).await.unwrap();
    c.score(score_request()).await.unwrap();
    let refused = c.score(score_request()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    app.handle.shutdown().await.unwrap();
}

/// A CA, the server's certificate (localhost, 127.0.0.1) and client certificates: one of the
/// trusted client CA (CN `acme`), one with only a DNS name, one of a CA the server does not
/// trust.
struct Pki {
    dir: tempfile::TempDir,
    ca: PathBuf,
    server: Pair,
    client: Pair,
    client_dns: Pair,
    stranger: Pair,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("CRA test CA");
    let clients = Ca::new("CRA test client CA");
    let other = Ca::new("Some other CA");
    Pki {
        ca: ca.write(dir.path(), "ca.crt"),
        server: ca.server(dir.path(), "server", &["localhost", "127.0.0.1"]),
        client: clients.client(dir.path(), "client", "acme"),
        client_dns: clients.client_dns(dir.path(), "client-dns", "batch.acme.example"),
        stranger: other.client(dir.path(), "stranger", "acme"),
        dir: {
            clients.write(dir.path(), "client-ca.crt");
            dir
        },
    }
}

impl Pki {
    fn client_ca(&self) -> PathBuf {
        self.dir.path().join("client-ca.crt")
    }

    fn tls_config(&self, cfg: &mut ServeConfig, client_ca: bool) {
        cfg.security.tls_cert = Some(self.server.cert.clone());
        cfg.security.tls_key = Some(self.server.key.clone());
        if client_ca {
            cfg.security.tls_client_ca = Some(self.client_ca());
        }
    }

    /// A TLS channel to `app`'s gRPC port, with `identity` as its client certificate.
    async fn channel(
        &self,
        app: &TestApp,
        identity: Option<&Pair>,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(&self.ca).unwrap()))
            .domain_name("localhost");
        if let Some(p) = identity {
            tls = tls.identity(Identity::from_pem(p.cert_pem(), p.key_pem()));
        }
        Channel::from_shared(format!("https://127.0.0.1:{}", app.handle.port()))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
    }

    fn http(&self, identity: Option<&Pair>) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(
                reqwest::Certificate::from_pem(&std::fs::read(&self.ca).unwrap()).unwrap(),
            );
        if let Some(p) = identity {
            let pem = format!("{}{}", p.cert_pem(), p.key_pem());
            b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
        }
        b.build().unwrap()
    }
}

async fn wait_ready_over(channel: &Channel) {
    let mut health = HealthClient::new(channel.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let serving = health
            .check(HealthCheckRequest {
                service: cra::grpc::SERVICE_NAME.into(),
            })
            .await
            .is_ok_and(|r| r.into_inner().status == 1);
        if serving {
            return;
        }
        assert!(Instant::now() < deadline, "not ready over TLS after 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn mutual_tls_names_the_client_and_refuses_callers_without_a_certificate() {
    let pki = pki();
    let db = TestDb::create("sec_mtls").await;
    let mut cfg = config();
    pki.tls_config(&mut cfg, true);
    let spool = pki.dir.path().join("spool");
    let (app, log) = spawn_logged(cfg, &db, &spool).await;

    let with_cert = pki.channel(&app, Some(&pki.client)).await.unwrap();
    wait_ready_over(&with_cert).await;
    CreditRiskServiceClient::new(with_cert)
        .score(score_request())
        .await
        .expect("a client certificate is enough: no key needed");
    let dns = pki.channel(&app, Some(&pki.client_dns)).await.unwrap();
    CreditRiskServiceClient::new(dns)
        .score(score_request())
        .await
        .unwrap();

    // Without a certificate: the handshake passes (for probes), scoring does not.
    let anonymous = pki.channel(&app, None).await.unwrap();
    HealthClient::new(anonymous.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health needs no certificate");
    assert_refused(
        CreditRiskServiceClient::new(anonymous)
            .score(score_request())
            .await,
        "Score without a client certificate",
    );
    // A certificate of another CA fails the handshake.
    let stranger = pki.channel(&app, Some(&pki.stranger)).await;
    let refused = match stranger {
        Err(e) => format!("{e:?}"),
        Ok(ch) => format!(
            "{:?}",
            CreditRiskServiceClient::new(ch)
                .score(score_request())
                .await
                .expect_err("a stranger's certificate must not pass")
        ),
    };
    assert!(!refused.is_empty());
    // A plaintext client gets nowhere.
    let plain = app.client.clone().score(score_request()).await;
    assert!(plain.is_err(), "a plaintext call on a TLS port: {plain:?}");

    // HTTP: the same, with reqwest over rustls.
    let resp = pki
        .http(Some(&pki.client))
        .post(format!(
            "https://127.0.0.1:{}/predict",
            app.handle.http_addr().port()
        ))
        .json(&original_example())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let no_cert = pki.http(None);
    let resp = no_cert
        .post(format!(
            "https://127.0.0.1:{}/predict",
            app.handle.http_addr().port()
        ))
        .json(&original_example())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let health = no_cert
        .get(format!(
            "https://127.0.0.1:{}/health",
            app.handle.http_addr().port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    assert_rows(&db, 3).await;
    assert_eq!(
        client_ids(&db).await,
        vec![
            Some("acme".to_owned()),
            Some("batch.acme.example".to_owned()),
            Some("acme".to_owned())
        ]
    );
    app.handle.shutdown().await.unwrap();
    log.shutdown().await;
}

#[tokio::test]
async fn a_key_sent_with_a_certificate_must_be_the_same_clients() {
    let pki = pki();
    let keys = keys_file(pki.dir.path());
    let mut cfg = config();
    pki.tls_config(&mut cfg, true);
    cfg.security.api_keys = Some(keys.path.clone());
    let app = spawn_app_with(cfg, |b| b).await;
    let ch = pki.channel(&app, Some(&pki.client)).await.unwrap();
    wait_ready_over(&ch).await;
    let mut c = CreditRiskServiceClient::new(ch);
    c.score(with_key(score_request(), &keys.acme))
        .await
        .unwrap();
    assert_refused(
        c.score(with_key(score_request(), &keys.zeta)).await,
        "a certificate of acme with a key of zeta",
    );
    assert_refused(
        c.score(with_key(score_request(), &keys.revoked)).await,
        "a revoked key with a certificate",
    );
    // A key without a certificate is not enough.
    let anonymous = pki.channel(&app, None).await.unwrap();
    assert_refused(
        CreditRiskServiceClient::new(anonymous)
            .score(with_key(score_request(), &keys.acme))
            .await,
        "a key without a certificate",
    );
    app.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn grpcurl_with_a_client_certificate_passes_and_without_is_refused() {
    let grpcurl = [
        Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/grpcurl"),
        PathBuf::from("grpcurl"),
    ]
    .into_iter()
    .find(|p| {
        std::process::Command::new(p)
            .arg("-version")
            .output()
            .is_ok()
    })
    .expect("grpcurl is missing: scripts/setup.sh --test installs it into .tools/bin");
    let pki = pki();
    let mut cfg = config();
    pki.tls_config(&mut cfg, true);
    let app = spawn_app_with(cfg, |b| b).await;
    wait_ready_over(&pki.channel(&app, None).await.unwrap()).await;
    let addr = format!("127.0.0.1:{}", app.handle.port());
    let body = serde_json::to_string(&json!({"application": {
        "application_id": "grpcurl-1", "age": 45, "income": 75000, "employment_length": 10,
        "credit_score": 720, "num_credit_lines": 5, "credit_utilization": 0.3,
        "debt_to_income": 0.35, "total_debt": 25000, "savings": 15000, "loan_amount": 20000,
        "loan_term": 36, "num_late_payments": 0, "num_bankruptcies": 0, "inquiries_last_6m": 1,
        "employment_status": "EMPLOYMENT_STATUS_EMPLOYED",
        "home_ownership": "HOME_OWNERSHIP_MORTGAGE",
        "loan_purpose": "LOAN_PURPOSE_DEBT_CONSOLIDATION"}}))
    .unwrap();
    let run = |args: Vec<String>| {
        let grpcurl = grpcurl.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(grpcurl)
                    .args(args)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let tls = |cert: Option<&Pair>| {
        let mut a = vec!["-cacert".to_owned(), pki.ca.display().to_string()];
        if let Some(p) = cert {
            a.extend([
                "-cert".to_owned(),
                p.cert.display().to_string(),
                "-key".to_owned(),
                p.key.display().to_string(),
            ]);
        }
        a
    };
    let mut args = tls(Some(&pki.client));
    args.extend([
        "-d".into(),
        body.clone(),
        addr.clone(),
        "creditrisk.v1.CreditRiskService/Score".into(),
    ]);
    let ok = run(args).await;
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success() && out.contains("riskScore"),
        "grpcurl with a client certificate: {out} {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let mut args = tls(None);
    args.extend([
        "-d".into(),
        body,
        addr.clone(),
        "creditrisk.v1.CreditRiskService/Score".into(),
    ]);
    let refused = run(args).await;
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("Unauthenticated"),
        "grpcurl without a client certificate: {err}"
    );
    let mut args = tls(None);
    args.extend([addr, "grpc.health.v1.Health/Check".into()]);
    let health = run(args).await;
    assert!(
        health.status.success(),
        "health over TLS without a certificate: {}",
        String::from_utf8_lossy(&health.stderr)
    );
    app.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_replaced_certificate_is_served_to_new_connections() {
    let pki = pki();
    let mut cfg = config();
    pki.tls_config(&mut cfg, false);
    let app = spawn_app_with(cfg, |b| b).await;
    let first = pki.channel(&app, None).await.unwrap();
    wait_ready_over(&first).await;
    CreditRiskServiceClient::new(first.clone())
        .score(score_request())
        .await
        .unwrap();

    // A rotation by a new CA (as cert-manager writes a renewed Secret): new files in place.
    let new_ca = Ca::new("CRA test CA, renewed");
    let fresh = new_ca.server(pki.dir.path(), "server-new", &["localhost"]);
    std::fs::copy(&fresh.key, &pki.server.key).unwrap();
    std::fs::copy(&fresh.cert, &pki.server.cert).unwrap();
    let new_ca_file = new_ca.write(pki.dir.path(), "ca-new.crt");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(&new_ca_file).unwrap()))
            .domain_name("localhost");
        let ch = Channel::from_shared(format!("https://127.0.0.1:{}", app.handle.port()))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await;
        if let Ok(ch) = ch {
            if CreditRiskServiceClient::new(ch)
                .score(score_request())
                .await
                .is_ok()
            {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was not served within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connection opened before keeps working.
    CreditRiskServiceClient::new(first)
        .score(score_request())
        .await
        .unwrap();
    app.handle.shutdown().await.unwrap();
}
