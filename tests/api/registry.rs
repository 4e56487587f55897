//! The model registry over gRPC: A/B routing by weight, sticky by application_id; shadows that
//! are recorded, linked and never change, slow or fail an answer; hot reload under load; a
//! refused set that leaves the old one serving.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use cra::{
    grpc::pb::{
        self, credit_risk_service_client::CreditRiskServiceClient, GetModelInfoRequest,
        ScoreRequest,
    },
    scoring::{DecisionRecord, DecisionRecorder, RecordError, Role},
};
use cra_model::ModelBundle;
use tonic::Request;

use crate::helpers::{config, default_model_dir, example, spawn_app_with, TestApp};

/// The committed second model (a challenger trained with other settings).
fn challenger_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/challenger")
}

fn version_of(dir: &Path) -> String {
    ModelBundle::load(dir).unwrap().version().to_owned()
}

/// Writes a models file into `dir` and returns its path.
fn models_file(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("models.toml");
    // Written beside and renamed, as an operator's tooling would: never read half-written.
    let tmp = dir.join("models.toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &p).unwrap();
    p
}

fn ab_file(champion_weight: u32, challenger_weight: u32) -> String {
    format!(
        "[[models]]\npath = {:?}\nrole = \"champion\"\nweight = {champion_weight}\n\
         [[models]]\npath = {:?}\nrole = \"challenger\"\nweight = {challenger_weight}\n",
        default_model_dir(),
        challenger_dir()
    )
}

async fn spawn_with_models(file: &Path) -> TestApp {
    spawn_watching(file, true).await
}

async fn spawn_watching(file: &Path, watch: bool) -> TestApp {
    let mut cfg = config();
    cfg.models = Some(file.to_owned());
    cfg.watch_models = watch;
    let app = spawn_app_with(cfg, |b| b).await;
    app.wait_ready().await;
    app
}

async fn model_info(
    client: &mut CreditRiskServiceClient<tonic::transport::Channel>,
) -> pb::GetModelInfoResponse {
    client
        .get_model_info(GetModelInfoRequest {})
        .await
        .expect("GetModelInfo answers")
        .into_inner()
}

async fn score_id(app: &mut TestApp, id: &str) -> pb::RiskScore {
    let mut a = example();
    a.application_id = id.to_owned();
    app.client
        .score(ScoreRequest {
            application: Some(a),
            explain: false,
        })
        .await
        .expect("scored")
        .into_inner()
        .score
        .unwrap()
}

#[tokio::test]
async fn routing_follows_the_weights_and_is_sticky_per_application_id() {
    let dir = tempfile::tempdir().unwrap();
    let file = models_file(dir.path(), &ab_file(80, 20));
    let mut app = spawn_with_models(&file).await;
    let (champion, challenger) = (
        version_of(&default_model_dir()),
        version_of(&challenger_dir()),
    );
    assert_ne!(champion, challenger);

    let n = 2_000;
    let mut by_version: HashMap<String, u32> = HashMap::new();
    let mut first: HashMap<String, String> = HashMap::new();
    for i in 0..n {
        let id = format!("app-{i}");
        let s = score_id(&mut app, &id).await;
        let role = pb::ModelRole::try_from(s.model_role).unwrap();
        let want_role = if s.model_version == champion {
            pb::ModelRole::Champion
        } else {
            pb::ModelRole::Challenger
        };
        assert_eq!(role, want_role, "the answer names the role of its model");
        *by_version.entry(s.model_version.clone()).or_default() += 1;
        first.insert(id, s.model_version);
    }
    // 20% of 2,000 is 400; the standard deviation is about 17.9: allow 4.5 of them.
    let got = by_version.get(&challenger).copied().unwrap_or(0);
    assert!(
        (320..=480).contains(&got),
        "challenger took {got} of {n} (weights 80/20): {by_version:?}"
    );
    // Sticky: the same id goes to the same model, call after call.
    for i in (0..n).step_by(97) {
        let id = format!("app-{i}");
        for _ in 0..5 {
            assert_eq!(
                score_id(&mut app, &id).await.model_version,
                first[&id],
                "{id}"
            );
        }
    }
    // Without an id: at random, so both models answer.
    let mut anonymous: HashMap<String, u32> = HashMap::new();
    for _ in 0..300 {
        *anonymous
            .entry(score_id(&mut app, "").await.model_version)
            .or_default() += 1;
    }
    assert_eq!(anonymous.len(), 2, "{anonymous:?}");

    let info = model_info(&mut app.client).await;
    let roles: Vec<(i32, u32, String)> = info
        .models
        .iter()
        .map(|m| {
            (
                m.role,
                m.weight,
                m.info.as_ref().unwrap().model_version.clone(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        [
            (pb::ModelRole::Champion as i32, 80, champion.clone()),
            (pb::ModelRole::Challenger as i32, 20, challenger)
        ]
    );
    assert_eq!(info.model.unwrap().model_version, champion);
    let registry = info.registry.unwrap();
    assert!(
        registry.source.starts_with("--models "),
        "{}",
        registry.source
    );
    assert_eq!(registry.generation, 1);
    app.handle.shutdown().await.unwrap();
}

/// What the test recorder keeps of a row: its id, role, link and model version.
type KeptRow = (uuid::Uuid, Role, Option<uuid::Uuid>, String);

/// A recorder that keeps every row's role and links, and can be made slow or failing for
/// shadow rows only.
#[derive(Debug, Default)]
struct Rows {
    rows: Mutex<Vec<KeptRow>>,
    shadow_delay: Duration,
    shadow_fails: bool,
    shadow_calls: AtomicU64,
}

impl DecisionRecorder for Rows {
    fn record(&self, r: &DecisionRecord<'_>) -> Result<(), RecordError> {
        self.record_chunk(std::slice::from_ref(r))
    }

    fn record_chunk(&self, records: &[DecisionRecord<'_>]) -> Result<(), RecordError> {
        if records.iter().any(|r| r.role == Role::Shadow) {
            self.shadow_calls.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(self.shadow_delay);
            if self.shadow_fails {
                return Err(RecordError("shadow rows refused by the test".into()));
            }
        }
        let mut rows = self.rows.lock().unwrap();
        for r in records {
            rows.push((
                r.decision_id,
                r.role,
                r.shadow_of,
                r.model.version().to_owned(),
            ));
        }
        Ok(())
    }
}

fn shadow_file() -> String {
    format!(
        "[[models]]\npath = {:?}\nrole = \"champion\"\n[[models]]\npath = {:?}\nrole = \"shadow\"\n",
        default_model_dir(),
        challenger_dir()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_decisions_are_recorded_and_linked_and_never_change_an_answer() {
    let dir = tempfile::tempdir().unwrap();
    let file = models_file(dir.path(), &shadow_file());
    let rows = Arc::new(Rows::default());
    let mut cfg = config();
    cfg.models = Some(file);
    let recorder = rows.clone();
    let mut app = spawn_app_with(cfg, move |b| b.recorder(recorder)).await;
    app.wait_ready().await;
    let champion = version_of(&default_model_dir());
    let shadow = version_of(&challenger_dir());
    let mut live_ids = Vec::new();
    for i in 0..50 {
        let s = score_id(&mut app, &format!("s-{i}")).await;
        assert_eq!(s.model_version, champion, "shadows never answer");
        assert_eq!(
            s.probability_default,
            app.bundle
                .score(&cra_model::Application::example())
                .probability_default
        );
        live_ids.push(s.decision_id.parse::<uuid::Uuid>().unwrap());
    }
    // The shadow rows arrive off the response path.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = rows.rows.lock().unwrap().len();
        if n >= 100 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rows = rows.rows.lock().unwrap().clone();
    assert_eq!(rows.len(), 100, "one live and one shadow row per call");
    for id in &live_ids {
        let live: Vec<_> = rows.iter().filter(|r| r.0 == *id).collect();
        assert_eq!(live.len(), 1);
        assert_eq!(
            (live[0].1, live[0].2, &live[0].3),
            (Role::Champion, None, &champion)
        );
        let shadows: Vec<_> = rows.iter().filter(|r| r.2 == Some(*id)).collect();
        assert_eq!(shadows.len(), 1, "one shadow row linked to {id}");
        assert_eq!((shadows[0].1, &shadows[0].3), (Role::Shadow, &shadow));
        assert_ne!(shadows[0].0, *id, "the shadow row has its own decision id");
    }
    app.handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_failing_shadow_neither_slows_nor_fails_the_live_answer() {
    for fails in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let file = models_file(dir.path(), &shadow_file());
        let rows = Arc::new(Rows {
            shadow_delay: Duration::from_millis(if fails { 0 } else { 500 }),
            shadow_fails: fails,
            ..Rows::default()
        });
        let mut cfg = config();
        cfg.models = Some(file);
        let recorder = rows.clone();
        let mut app = spawn_app_with(cfg, move |b| b.recorder(recorder)).await;
        app.wait_ready().await;
        let started = Instant::now();
        for i in 0..20 {
            score_id(&mut app, &format!("slow-{i}")).await;
        }
        let took = started.elapsed();
        // 20 shadow recordings of 500 ms each would take 10 s on the response path.
        assert!(
            took < Duration::from_secs(3),
            "20 live answers took {took:?} beside a slow shadow"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            rows.shadow_calls.load(Ordering::Relaxed) > 0,
            "the shadow ran"
        );
        let info = model_info(&mut app.client).await.registry.unwrap();
        if fails {
            assert!(info.shadow_unrecorded > 0, "{info:?}");
        }
        app.handle.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_reloads_under_load_fail_no_call() {
    let dir = tempfile::tempdir().unwrap();
    let file = models_file(dir.path(), &ab_file(50, 50));
    // Reloads on request only (as SIGHUP does), so that each of the ten is one reload.
    let app = spawn_watching(&file, false).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for w in 0..8 {
        let mut client = app.client.clone();
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut a = example();
                a.application_id = format!("load-{w}-{i}");
                i += 1;
                match client
                    .score(Request::new(ScoreRequest {
                        application: Some(a),
                        explain: false,
                    }))
                    .await
                {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("failed call: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    let mut client = app.client.clone();
    for k in 0..10u32 {
        // New weights, then a reload as SIGHUP asks for one.
        models_file(dir.path(), &ab_file(10 + k * 8, 90 - k * 8));
        app.handle.request_reload().await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        let ready = app.handle.readiness().is_ready();
        assert!(ready, "readiness stays SERVING during reloads");
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    // The last reload may still be verifying its set.
    let deadline = Instant::now() + Duration::from_secs(10);
    let info = loop {
        let info = model_info(&mut client).await;
        if info.registry.as_ref().unwrap().reloads >= 10 || Instant::now() > deadline {
            break info;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let registry = info.registry.unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no call failed");
    assert!(ok.load(Ordering::Relaxed) > 100, "the load ran");
    assert_eq!(registry.reloads, 10, "{registry:?}");
    assert_eq!(registry.generation, 11, "{registry:?}");
    assert_eq!(registry.refusals, 0, "{registry:?}");
    assert!(registry.last_reload_at.is_some());
    // The last file's weights are the ones serving.
    let weights: Vec<u32> = info.models.iter().map(|m| m.weight).collect();
    assert_eq!(weights, [10 + 9 * 8, 90 - 9 * 8]);
    app.handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_bundle_is_refused_and_the_old_set_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let file = models_file(dir.path(), &ab_file(90, 10));
    let mut app = spawn_with_models(&file).await;
    // A copy of the challenger with its booster changed after its checksums were taken.
    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    for f in std::fs::read_dir(challenger_dir()).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), broken.join(f.file_name())).unwrap();
    }
    let booster = broken.join("booster.json");
    let mut bytes = std::fs::read(&booster).unwrap();
    bytes.push(b' ');
    std::fs::write(&booster, bytes).unwrap();
    models_file(
        dir.path(),
        &format!(
            "[[models]]\npath = {:?}\nrole = \"champion\"\n[[models]]\npath = {:?}\nrole = \"shadow\"\n",
            default_model_dir(),
            broken
        ),
    );
    app.handle.request_reload().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let registry = loop {
        let r = model_info(&mut app.client).await;
        let reg = r.registry.clone().unwrap();
        if reg.refusals > 0 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let status = registry.registry.unwrap();
    assert!(status.refusals >= 1, "{status:?}");
    assert!(
        status.last_error.contains("broken") && status.last_error.contains("booster.json"),
        "names the bundle and the file: {}",
        status.last_error
    );
    assert!(status.last_error_at.is_some());
    assert_eq!(status.generation, 1, "the old set still serves");
    assert_eq!(registry.models.len(), 2);
    assert_eq!(registry.models[1].role, pb::ModelRole::Challenger as i32);
    assert!(app.handle.readiness().is_ready());
    score_id(&mut app, "after-refusal").await;
    app.handle.shutdown().await.unwrap();
}

async fn registry_status(app: &mut TestApp) -> pb::RegistryStatus {
    model_info(&mut app.client).await.registry.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_to_the_models_file_reloads_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = models_file(dir.path(), &ab_file(90, 10));
    let mut app = spawn_with_models(&file).await;
    assert_eq!(registry_status(&mut app).await.generation, 1);
    // Another file in the folder, and the models file rewritten with the same content: no
    // reload (a ConfigMap volume or an editor touches the folder without changing the set).
    std::fs::write(dir.path().join("notes.txt"), "unrelated").unwrap();
    std::fs::write(&file, ab_file(90, 10)).unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        registry_status(&mut app).await.generation,
        1,
        "nothing changed"
    );
    // Replaced (as editors and `mv` do), then written in place.
    models_file(dir.path(), &ab_file(70, 30));
    let deadline = Instant::now() + Duration::from_secs(10);
    while registry_status(&mut app).await.generation < 2 {
        assert!(
            Instant::now() < deadline,
            "no reload after the file was replaced"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::write(&file, ab_file(60, 40)).unwrap();
    while registry_status(&mut app).await.generation < 3 {
        assert!(
            Instant::now() < deadline,
            "no reload after the file was written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let info = model_info(&mut app.client).await;
    let weights: Vec<u32> = info.models.iter().map(|m| m.weight).collect();
    assert_eq!(weights, [60, 40]);
    app.handle.shutdown().await.unwrap();
}
