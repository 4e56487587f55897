//! The scoring core: validate → route → score → record, for every entry point.
//!
//! It knows no transport. The gRPC handlers, `cra score` and later the REST, Open Inference
//! Protocol and Python adapters turn what they received into [`ApplicationInput`]s, call the
//! [`Scorer`], and map its [`ScoreError`] once into their own error form.
//!
//! - [`registry`]: the models (champion, challengers, shadows), hot reload;
//! - [`drift`]: the live drift windows (the PSI of the score and features at `/metrics`);
//! - [`shadow`]: shadow scoring off the response path;
//! - [`record`]: the neutral view of a decision handed to the decision log;
//! - [`error`]: the one error type.
pub mod drift;
pub mod error;
pub mod record;
pub mod registry;
pub mod shadow;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use cra_model::{explain::Explanation, ApplicationInput, Decision, ModelBundle};
use uuid::Uuid;

pub use crate::telemetry::traces::TraceId;
pub use cra_model::decide::{ExplainPolicy, Item};
pub use cra_model::explain::{Contribution, FeatureValue, Reason};
pub use error::ScoreError;
pub use record::{DecisionRecord, DecisionRecorder, Outcome, RecordError, Rpc};
pub use registry::{Member, ModelSet, ModelSource, Registry, Role};
pub use shadow::{ShadowRunner, ShadowStats};

/// The explainer of `bundle` for a decision that needs one (see
/// [`cra_model::decide::explainer_for`]), its refusal as the core's error.
fn explainer_for(
    bundle: &ModelBundle,
    asked: bool,
) -> Result<Option<&Arc<cra_model::explain::Explainer>>, ScoreError> {
    cra_model::decide::explainer_for(bundle, asked).map_err(|e| ScoreError::Unexplainable(e.0))
}

/// Whether an entry point's answers carry explanations (the REST API's reasons, gRPC's
/// `explanation`) or not (the Open Inference Protocol's outputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Explanations,
    NoExplanations,
}

/// Who asked, and when: everything about a call that goes into its decision rows.
#[derive(Debug, Clone, Copy)]
pub struct CallContext<'a> {
    pub request_id: &'a str,
    /// The entry point; for a batch, the position of its first item.
    pub rpc: Rpc,
    pub peer: Option<SocketAddr>,
    /// Who called: its client id goes into the decision rows, its rate limit is charged.
    pub caller: &'a crate::security::Caller,
    pub received_at: SystemTime,
    pub started: Instant,
    /// When the answer is due, and the limit it came from (for the error).
    pub deadline: Option<(Instant, Duration)>,
    /// The trace the call belongs to (see [`crate::telemetry::traces`]).
    pub trace_id: Option<TraceId>,
}

impl CallContext<'_> {
    /// A call already late gets no decision, so no row: the client would never see it.
    pub fn check_deadline(&self) -> Result<(), ScoreError> {
        match self.deadline {
            Some((at, limit)) if Instant::now() >= at => Err(ScoreError::DeadlineExceeded(limit)),
            _ => Ok(()),
        }
    }

    /// Charges `n` applications to the caller's rate limit, before anything is decided: a
    /// call over it gets no decision, so no row.
    pub fn charge(&self, n: usize) -> Result<(), ScoreError> {
        self.caller
            .charge(n)
            .map_err(|e| rate_limited(self.caller, e))
    }
}

/// A call refused under its caller's rate limit: counted, and the core's error.
pub fn rate_limited(
    caller: &crate::security::Caller,
    e: crate::security::RateLimited,
) -> ScoreError {
    crate::monitoring::rate_limited(caller.client_id());
    ScoreError::RateLimited(e)
}

/// One live decision, answered.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The decision log's id (the nil UUID when the log is off).
    pub decision_id: Uuid,
    pub decision: Decision,
    pub explanation: Option<Explanation>,
    pub member: usize,
    pub set: Arc<ModelSet>,
}

impl Answer {
    pub fn model(&self) -> &Member {
        &self.set.live[self.member]
    }
}

/// The scoring core shared by every entry point.
#[derive(Debug)]
pub struct Scorer {
    registry: Arc<Registry>,
    recorder: Option<Arc<dyn DecisionRecorder>>,
    shadows: ShadowRunner,
    /// Most applications of a batch scored by one `score_many` call.
    chunk: usize,
    explain: ExplainPolicy,
    /// The live drift windows (`None`: `--drift-window 0`, or not a server).
    drift: Option<Arc<drift::DriftMonitor>>,
}

impl Scorer {
    pub fn new(
        registry: Arc<Registry>,
        recorder: Option<Arc<dyn DecisionRecorder>>,
        chunk: usize,
    ) -> Scorer {
        let shadows = ShadowRunner::start(recorder.clone());
        Scorer {
            registry,
            recorder,
            shadows,
            chunk: chunk.max(1),
            explain: ExplainPolicy::default(),
            drift: None,
        }
    }

    /// Keeps a live drift window of the last `window` decisions of each model (0: none).
    pub fn with_drift_window(mut self, window: usize) -> Scorer {
        self.drift = (window > 0).then(|| Arc::new(drift::DriftMonitor::new(window)));
        if let Some(d) = &self.drift {
            // Builds the windows now, so that a model without a reference is named at start.
            d.report(&self.registry.current());
        }
        // The shadow thread fills the shadows' windows (the one started by `new`, idle so far,
        // ends when its channel is dropped).
        self.shadows = ShadowRunner::start_with_drift(self.recorder.clone(), self.drift.clone());
        self
    }

    /// The live drift windows, when kept.
    pub fn drift(&self) -> Option<&drift::DriftMonitor> {
        self.drift.as_deref()
    }

    /// Which decisions carry an explanation when the client does not ask.
    pub fn with_explain_policy(mut self, policy: ExplainPolicy) -> Scorer {
        self.explain = policy;
        self
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The models serving now; a call takes them once and finishes on them.
    pub fn models(&self) -> Arc<ModelSet> {
        self.registry.current()
    }

    pub fn recorder(&self) -> Option<&Arc<dyn DecisionRecorder>> {
        self.recorder.as_ref()
    }

    pub fn shadow_stats(&self) -> &ShadowStats {
        self.shadows.stats()
    }

    /// True while the decision log is behind (a batch should pause before reading more).
    pub fn backlogged(&self) -> bool {
        self.recorder.as_ref().is_some_and(|r| r.backlogged())
    }

    /// A fresh decision id when the decision log is on, else the nil UUID.
    fn decision_id(&self) -> Uuid {
        if self.recorder.is_some() {
            Uuid::now_v7()
        } else {
            Uuid::nil()
        }
    }

    /// Scores one application (`None`: the request had none, which is invalid like any bad
    /// field), explains it when asked or the policy says so, and records the decision before
    /// returning it.
    pub fn score(
        &self,
        ctx: &CallContext<'_>,
        input: Option<&ApplicationInput>,
        asked: bool,
    ) -> Result<Answer, ScoreError> {
        ctx.check_deadline()?;
        ctx.charge(1)?;
        let set = self.models();
        let validated = match input {
            Some(input) => input.validate(),
            None => Err(ScoreError::missing_application_violations()),
        };
        let member = set.route(input.map_or("", |i| i.application_id.as_str()));
        let bundle = &set.live[member].bundle;
        let scored = validated.map(|app| {
            let decision = bundle.score(&app);
            (app, decision)
        });
        let explanation = match &scored {
            Ok((app, decision)) if self.explain.covers(asked, decision) => {
                explainer_for(bundle, asked)?.map(|explainer| {
                    explainer.explain(bundle.preprocessor(), app, &mut explainer.scratch())
                })
            }
            _ => None,
        };
        // The last deadline check: once recorded, the decision is answered.
        ctx.check_deadline()?;
        let decision_id = self.decision_id();
        if let Some(recorder) = &self.recorder {
            let outcome = match &scored {
                Ok((application, decision)) => Outcome::Scored {
                    application,
                    decision,
                },
                Err(violations) => Outcome::Invalid { violations },
            };
            recorder.record(&DecisionRecord {
                decision_id,
                request_id: ctx.request_id,
                rpc: ctx.rpc,
                peer: ctx.peer,
                client_id: ctx.caller.client_id(),
                received_at: ctx.received_at,
                decided_at: SystemTime::now(),
                latency: ctx.started.elapsed(),
                model: bundle,
                role: set.live[member].role,
                shadow_of: None,
                input,
                outcome,
                explanation: explanation.as_ref(),
                trace_id: ctx.trace_id,
            })?;
        }
        let member_of = &set.live[member];
        crate::telemetry::traces::record_decision(
            ctx.request_id,
            bundle.version(),
            member_of.role.as_str(),
            if scored.is_ok() { "ok" } else { "invalid" },
            decision_id,
        );
        match &scored {
            Ok((app, d)) => {
                if let Some(drift) = &self.drift {
                    drift.record(&set, member, app, d.probability_default);
                }
                crate::monitoring::decisions(bundle.version(), member_of.role.as_str(), "ok", 1);
                let level = |l| u64::from(d.risk_level == l);
                crate::monitoring::risk_levels(
                    level(cra_model::RiskLevel::Low),
                    level(cra_model::RiskLevel::Medium),
                    level(cra_model::RiskLevel::High),
                    u64::from(explanation.is_some()),
                );
            }
            Err(_) => crate::monitoring::decisions(
                bundle.version(),
                member_of.role.as_str(),
                "invalid",
                1,
            ),
        }
        let (application, decision) = scored.map_err(ScoreError::InvalidArgument)?;
        if !set.shadows.is_empty() {
            if let Some(input) = input {
                self.shadows.submit(
                    &set,
                    ctx,
                    vec![(decision_id, 0, input.clone(), application)],
                );
            }
        }
        Ok(Answer {
            decision_id,
            decision,
            explanation,
            member,
            set,
        })
    }

    /// Validates, routes, scores and (when asked, `asked[i]`, or the policy covers the
    /// decision) explains a batch on `set`: pure computation, no recording. `asked` may be
    /// empty (nobody asked). The items are in input order.
    pub fn decide(
        &self,
        set: &ModelSet,
        inputs: &[ApplicationInput],
        asked: &[bool],
    ) -> Result<Vec<Item>, ScoreError> {
        self.decide_for(set, inputs, asked, Delivery::Explanations)
    }

    /// [`Scorer::decide`] for an answer that carries explanations or not: when it does not and
    /// nothing is recorded, an explanation only the policy wanted would be seen by nobody, so
    /// it is not computed.
    fn decide_for(
        &self,
        set: &ModelSet,
        inputs: &[ApplicationInput],
        asked: &[bool],
        delivery: Delivery,
    ) -> Result<Vec<Item>, ScoreError> {
        let policy = if delivery == Delivery::NoExplanations && self.recorder.is_none() {
            ExplainPolicy::Never
        } else {
            self.explain
        };
        cra_model::decide::decide(set, inputs, asked, policy, self.chunk)
            .map_err(|e| ScoreError::Unexplainable(e.0))
    }

    /// The decision records of the items at `positions` of a batch decided on `set`
    /// (`ids[k]` is the decision id of `positions[k]`).
    #[allow(clippy::too_many_arguments)]
    fn records<'a>(
        &self,
        ctx: &CallContext<'a>,
        set: &'a ModelSet,
        inputs: &'a [ApplicationInput],
        items: &'a [Item],
        positions: impl Iterator<Item = usize>,
        ids: &[Uuid],
        decided_at: SystemTime,
        latency: Duration,
    ) -> Vec<DecisionRecord<'a>> {
        positions
            .zip(ids)
            .map(|(i, id)| {
                let input = &inputs[i];
                let (member, outcome, explanation) = match &items[i] {
                    Item::Scored {
                        member,
                        application,
                        decision,
                        explanation,
                    } => (
                        *member,
                        Outcome::Scored {
                            application,
                            decision,
                        },
                        explanation.as_deref(),
                    ),
                    Item::Invalid(violations) => (
                        set.route(&input.application_id),
                        Outcome::Invalid { violations },
                        None,
                    ),
                };
                DecisionRecord {
                    decision_id: *id,
                    request_id: ctx.request_id,
                    rpc: ctx.rpc.advanced(i as u64),
                    peer: ctx.peer,
                    client_id: ctx.caller.client_id(),
                    received_at: ctx.received_at,
                    decided_at,
                    latency,
                    model: &set.live[member].bundle,
                    role: set.live[member].role,
                    shadow_of: None,
                    input: Some(input),
                    outcome,
                    explanation,
                    trace_id: ctx.trace_id,
                }
            })
            .collect()
    }

    /// Records the decisions of a batch decided on `set` (all or none), then hands the scored
    /// ones to the shadows. Returns the decision id of each item, in order. `ctx.rpc` is the
    /// position of the first item.
    pub fn record_batch(
        &self,
        ctx: &CallContext<'_>,
        set: &Arc<ModelSet>,
        inputs: &[ApplicationInput],
        items: &[Item],
        decided_at: SystemTime,
        latency: Duration,
    ) -> Result<Vec<Uuid>, ScoreError> {
        let ids: Vec<Uuid> = items.iter().map(|_| self.decision_id()).collect();
        if let Some(recorder) = &self.recorder {
            let records = self.records(
                ctx,
                set,
                inputs,
                items,
                0..items.len(),
                &ids,
                decided_at,
                latency,
            );
            recorder.record_chunk(&records)?;
        }
        count_decisions(set, items);
        if let Some(drift) = &self.drift {
            drift.record_items(set, items);
        }
        crate::telemetry::traces::record_decisions(
            ctx.request_id,
            set.champion().bundle.version(),
            "ok",
            items.len(),
        );
        if !set.shadows.is_empty() {
            let work = inputs
                .iter()
                .zip(items)
                .zip(&ids)
                .enumerate()
                .filter_map(|(i, ((input, item), id))| match item {
                    Item::Scored { application, .. } => {
                        Some((*id, i as u64, input.clone(), *application))
                    }
                    Item::Invalid(_) => None,
                })
                .collect();
            self.shadows.submit(set, ctx, work);
        }
        Ok(ids)
    }

    /// Scores a batch all or nothing, as the REST `/predict/batch` and the Open Inference
    /// Protocol's `ModelInfer` answer: when any item is invalid, none is decided, only the
    /// invalid ones are recorded (as rejected, at their positions), and the error lists every
    /// bad field of every bad item. Otherwise every item is decided, explained as
    /// [`Scorer::decide`] says, recorded, and answered in input order.
    pub fn score_all(
        &self,
        ctx: &CallContext<'_>,
        set: Arc<ModelSet>,
        inputs: &[ApplicationInput],
        asked: &[bool],
        delivery: Delivery,
    ) -> Result<BatchAnswer, ScoreError> {
        ctx.check_deadline()?;
        ctx.charge(inputs.len())?;
        let items = self.decide_for(&set, inputs, asked, delivery)?;
        let invalid: Vec<usize> = items
            .iter()
            .enumerate()
            .filter(|(_, item)| matches!(item, Item::Invalid(_)))
            .map(|(i, _)| i)
            .collect();
        if !invalid.is_empty() {
            if let Some(recorder) = &self.recorder {
                let ids: Vec<Uuid> = invalid.iter().map(|_| self.decision_id()).collect();
                let records = self.records(
                    ctx,
                    &set,
                    inputs,
                    &items,
                    invalid.iter().copied(),
                    &ids,
                    SystemTime::now(),
                    ctx.started.elapsed(),
                );
                recorder.record_chunk(&records)?;
            }
            count_decisions(&set, &items);
            crate::telemetry::traces::record_decisions(
                ctx.request_id,
                set.champion().bundle.version(),
                "invalid",
                invalid.len(),
            );
            return Err(ScoreError::InvalidItems(
                items
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, item)| match item {
                        Item::Invalid(v) => Some((i, v)),
                        Item::Scored { .. } => None,
                    })
                    .collect(),
            ));
        }
        // The last deadline check: once recorded, the decisions are answered.
        ctx.check_deadline()?;
        let decision_ids = self.record_batch(
            ctx,
            &set,
            inputs,
            &items,
            SystemTime::now(),
            ctx.started.elapsed(),
        )?;
        Ok(BatchAnswer {
            set,
            items,
            decision_ids,
        })
    }
}

/// Counts the decisions of a batch in the metrics: by model and outcome, by risk level, and
/// the explanations (refused items count as `invalid` under the model they were routed to).
fn count_decisions(set: &ModelSet, items: &[Item]) {
    let mut ok = vec![0u64; set.live.len()];
    let (mut invalid, mut levels, mut explained) = (0u64, [0u64; 3], 0u64);
    for item in items {
        match item {
            Item::Scored {
                member,
                decision,
                explanation,
                ..
            } => {
                ok[*member] += 1;
                levels[decision.risk_level as usize] += 1;
                explained += u64::from(explanation.is_some());
            }
            Item::Invalid(_) => invalid += 1,
        }
    }
    for (m, n) in set.live.iter().zip(ok) {
        crate::monitoring::decisions(m.bundle.version(), m.role.as_str(), "ok", n);
    }
    let champion = set.champion();
    crate::monitoring::decisions(
        champion.bundle.version(),
        champion.role.as_str(),
        "invalid",
        invalid,
    );
    crate::monitoring::risk_levels(levels[0], levels[1], levels[2], explained);
}

/// A batch scored by [`Scorer::score_all`]: every item is [`Item::Scored`].
#[derive(Debug)]
pub struct BatchAnswer {
    pub set: Arc<ModelSet>,
    pub items: Vec<Item>,
    /// The decision id of each item (nil UUIDs when the decision log is off).
    pub decision_ids: Vec<Uuid>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Discard;
    impl DecisionRecorder for Discard {
        fn record(&self, _: &DecisionRecord<'_>) -> Result<(), RecordError> {
            Ok(())
        }
    }

    fn scorer(recorder: Option<Arc<dyn DecisionRecorder>>) -> Scorer {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default");
        let registry = Registry::load(ModelSource::Bundle(dir)).expect("the default model loads");
        Scorer::new(Arc::new(registry), recorder, 1024)
    }

    fn declined_inputs() -> Vec<ApplicationInput> {
        let mut a = cra_model::Application::example();
        a.credit_score = 400.0;
        a.num_late_payments = 9.0;
        a.debt_to_income = 3.0;
        a.employment_status = Some(cra_model::EmploymentStatus::Unemployed);
        vec![ApplicationInput::from_application(&a, "declined")]
    }

    fn explained(s: &Scorer, delivery: Delivery) -> bool {
        let items = s
            .decide_for(&s.models(), &declined_inputs(), &[], delivery)
            .unwrap();
        match &items[0] {
            Item::Scored {
                decision,
                explanation,
                ..
            } => {
                assert_eq!(decision.prediction, 1, "the application is declined");
                explanation.is_some()
            }
            Item::Invalid(v) => panic!("{v:?}"),
        }
    }

    /// A decline is explained when the answer shows it or the log records it, and only then.
    #[test]
    fn an_explanation_nobody_would_see_is_not_computed() {
        let unlogged = scorer(None);
        assert!(explained(&unlogged, Delivery::Explanations));
        assert!(!explained(&unlogged, Delivery::NoExplanations));
        let logged = scorer(Some(Arc::new(Discard)));
        assert!(explained(&logged, Delivery::Explanations));
        assert!(explained(&logged, Delivery::NoExplanations));
    }
}
