//! gRPC `Score`: the request bytes as tonic decodes them (prost), the application converted
//! (`convert::input_from_pb`) and scored by the core (`Scorer::score`: validation, routing,
//! the trees, explanations, the decision's row) as the handler does, then the answer or the
//! error as the client receives it.
#![no_main]

use cra::{
    grpc::{
        convert::{application_to_pb, input_from_pb, risk_score_to_pb, validate, ScoreContext},
        pb,
    },
    scoring::Rpc,
};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tonic_types::StatusExt;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = pb::ScoreRequest::decode(data) else {
        return; // tonic answers a message prost refuses before the handler runs
    };
    let scorer = cra_fuzz::scorer();
    let request_id = "fuzz-score";
    let ctx = cra_fuzz::call_context(request_id, Rpc::Unary);
    let asked = request.explain;
    let input = request.application.map(input_from_pb);
    match scorer.score(&ctx, input.as_ref(), asked) {
        Ok(answer) => {
            let input = input.expect("a request without an application is refused");
            let app = input.validate().expect("a scored application is valid");
            // The contract's form of a valid application reads back as the same application
            // (compared in that form: a missing value is NaN, which equals nothing).
            let contract = application_to_pb(&app, input.application_id.clone());
            let again = validate(&contract).expect("a valid application's contract form is valid");
            assert_eq!(
                application_to_pb(&again, input.application_id.clone()),
                contract
            );
            let model = answer.model();
            let score = risk_score_to_pb(
                &answer.decision,
                &ScoreContext {
                    request_id,
                    application_id: &input.application_id,
                    decision_id: &answer.decision_id.to_string(),
                    model_version: model.bundle.version(),
                    model_role: model.role,
                    explanation: answer.explanation.as_ref(),
                    processing_time: ctx.started.elapsed(),
                    scored_at: std::time::SystemTime::now(),
                },
            );
            assert!(
                (0.0..=1.0).contains(&score.probability_default),
                "{score:?}"
            );
            assert!((0.0..=100.0).contains(&score.risk_score), "{score:?}");
            assert!(
                !asked || score.explanation.is_some(),
                "asked, not explained"
            );
            pb::ScoreResponse { score: Some(score) }.encode_to_vec();
        }
        Err(e) => {
            let status = tonic::Status::from(e);
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            cra_fuzz::check_status(&status);
            let known = cra_fuzz::contract_fields();
            for v in status.get_details_bad_request().unwrap().field_violations {
                assert!(
                    known.contains(&v.field.as_str()),
                    "not a field: {:?}",
                    v.field
                );
            }
        }
    }
});
