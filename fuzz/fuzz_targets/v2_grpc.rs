//! The Open Inference Protocol over gRPC, `ModelInfer`: the request bytes as tonic decodes them
//! (prost), then what the handler (`grpc::inference`) does with the message: the model
//! resolved, the outputs asked for checked, the tensors (typed contents or
//! `raw_input_contents`) read (`tensors_from_pb`, `v2::inputs_from_tensors`), the rows scored
//! all or nothing by the core, and the output tensors or the error as the client receives
//! them.
#![no_main]

use cra::{
    grpc::{inference::tensors_from_pb, pb::inference::ModelInferRequest},
    scoring::{Delivery, Rpc},
    v2::{self, Data},
};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tonic::{Code, Status};

/// Rows per request: small, so that inputs of a few KiB reach the cap.
const MAX_ROWS: usize = 8;

/// The handler's work on one decoded request: the number of rows scored.
fn infer(r: ModelInferRequest) -> Result<usize, Status> {
    let scorer = cra_fuzz::scorer();
    let set = v2::resolve(scorer, &r.model_name, &r.model_version)
        .map_err(|e| Status::not_found(e.to_string()))?;
    let requested: Vec<String> = r.outputs.into_iter().map(|o| o.name).collect();
    let outputs = v2::outputs_for(&requested)?;
    let raw = !r.raw_input_contents.is_empty();
    let first_shape = r.inputs.first().map(|t| t.shape.clone());
    let tensors = tensors_from_pb(r.inputs, r.raw_input_contents)?;
    let inputs = v2::inputs_from_tensors(tensors, MAX_ROWS)?;
    let ctx = cra_fuzz::call_context(
        "fuzz-v2",
        Rpc::V2 {
            call_id: uuid::Uuid::now_v7(),
            position: 0,
        },
    );
    let answer = scorer.score_all(&ctx, set, &inputs, &[], Delivery::NoExplanations)?;
    let shape = v2::output_shape(first_shape.as_deref(), inputs.len());
    for t in v2::output_tensors(&answer, &outputs, &shape) {
        assert_eq!(t.data.len(), inputs.len(), "{}", t.name);
        if raw {
            // What a client reads back from `raw_output_contents`.
            let back = Data::from_raw(t.datatype, &t.data.to_raw(), t.data.len());
            assert_eq!(back.as_ref(), Ok(&t.data), "{}", t.name);
        }
    }
    Ok(inputs.len())
}

fuzz_target!(|data: &[u8]| {
    let Ok(request) = ModelInferRequest::decode(data) else {
        return;
    };
    match infer(request) {
        Ok(rows) => assert!((1..=MAX_ROWS).contains(&rows)),
        Err(status) => {
            assert!(
                matches!(status.code(), Code::InvalidArgument | Code::NotFound),
                "{status:?}"
            );
            cra_fuzz::check_status(&status);
        }
    }
});
