//! Deciding a batch on a [`ModelSet`]: validate every input, route each valid one to its live
//! model, score each model's share with one preprocessing pass and one tree pass per chunk, and
//! explain the decisions that need it. Pure computation: nothing is recorded.
//!
//! The server's scoring core, `cra score` and the Python package all decide through
//! [`decide`], so the same rows get the same decisions, to the last bit, wherever they are
//! scored.
use std::sync::Arc;

use crate::{
    bundle::{Decision, ModelBundle},
    explain::{Explainer, Explanation},
    input::{ApplicationInput, FieldViolation},
    registry::ModelSet,
    Application,
};

/// Which decisions carry an explanation when the client does not ask for one. A client that
/// asks always gets one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExplainPolicy {
    Never,
    /// Every declined application (prediction 1): its adverse-action reasons.
    #[default]
    Declined,
    Always,
}

impl ExplainPolicy {
    /// Whether a decision is explained: the client asked, or the policy covers it.
    pub fn covers(self, asked: bool, decision: &Decision) -> bool {
        asked
            || match self {
                ExplainPolicy::Never => false,
                ExplainPolicy::Declined => decision.prediction == 1,
                ExplainPolicy::Always => true,
            }
    }
}

impl std::str::FromStr for ExplainPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "never" => Ok(ExplainPolicy::Never),
            "declined" => Ok(ExplainPolicy::Declined),
            "always" => Ok(ExplainPolicy::Always),
            other => Err(format!(
                "`{other}` is not an explain policy; use never, declined or always"
            )),
        }
    }
}

/// An explanation was asked for, but the model cannot give one (a booster without node
/// covers); retraining the model writes them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this decision cannot be explained: {0}")]
pub struct Unexplainable(pub String);

/// The explainer of `bundle` for a decision that needs one: an error when the client asked and
/// the model cannot explain, nothing when only the policy wanted it.
pub fn explainer_for(
    bundle: &ModelBundle,
    asked: bool,
) -> Result<Option<&Arc<Explainer>>, Unexplainable> {
    match bundle.explainer() {
        Ok(e) => Ok(Some(e)),
        Err(why) if asked => Err(Unexplainable(why.to_owned())),
        Err(_) => Ok(None),
    }
}

/// One item of a batch after deciding.
#[derive(Debug, Clone)]
pub enum Item {
    Scored {
        /// Index of the live model in the set.
        member: usize,
        application: Application,
        decision: Decision,
        explanation: Option<Box<Explanation>>,
    },
    /// Every violation of the input, each naming its field.
    Invalid(Vec<FieldViolation>),
}

/// Validates, routes, scores and (when asked, `asked[i]`, or `policy` covers the decision)
/// explains `inputs` on `set`, at most `chunk` applications per tree pass. `asked` may be
/// empty (nobody asked). The items are in input order.
pub fn decide(
    set: &ModelSet,
    inputs: &[ApplicationInput],
    asked: &[bool],
    policy: ExplainPolicy,
    chunk: usize,
) -> Result<Vec<Item>, Unexplainable> {
    let chunk = chunk.max(1);
    let mut items: Vec<Item> = Vec::with_capacity(inputs.len());
    // Valid applications of each live model, with their item index.
    let mut groups: Vec<(Vec<usize>, Vec<Application>)> = (0..set.live.len())
        .map(|_| {
            (
                Vec::with_capacity(inputs.len()),
                Vec::with_capacity(inputs.len()),
            )
        })
        .collect();
    for (i, input) in inputs.iter().enumerate() {
        match input.validate() {
            Ok(app) => {
                let member = set.route(&input.application_id);
                groups[member].0.push(i);
                groups[member].1.push(app);
                items.push(Item::Invalid(Vec::new())); // replaced below
            }
            Err(v) => items.push(Item::Invalid(v)),
        }
    }
    for (member, (indices, apps)) in groups.into_iter().enumerate() {
        if indices.is_empty() {
            continue;
        }
        let bundle = &set.live[member].bundle;
        let mut decisions = Vec::with_capacity(apps.len());
        for slice in apps.chunks(chunk) {
            decisions.extend(bundle.score_many(slice));
        }
        let mut scratch = None;
        for ((i, application), decision) in indices.into_iter().zip(apps).zip(decisions) {
            let asked_here = asked.get(i).copied().unwrap_or(false);
            let explanation = if policy.covers(asked_here, &decision) {
                explainer_for(bundle, asked_here)?.map(|explainer| {
                    let scratch = scratch.get_or_insert_with(|| explainer.scratch());
                    Box::new(explainer.explain(bundle.preprocessor(), &application, scratch))
                })
            } else {
                None
            };
            items[i] = Item::Scored {
                member,
                application,
                decision,
                explanation,
            };
        }
    }
    Ok(items)
}
