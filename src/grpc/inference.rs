//! The Open Inference Protocol's gRPC service, `inference.GRPCInferenceService`, on the gRPC
//! port: a thin adapter from its messages to [`crate::v2`] and the scoring core.
//!
//! A request that sends `raw_input_contents` is answered with `raw_output_contents` (as
//! tritonclient expects); one with typed `contents`, with typed contents.
use std::{
    sync::Arc,
    time::{Instant, SystemTime},
};

use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{
    pb::inference::{
        self as ip, grpc_inference_service_server::GrpcInferenceService,
        model_infer_request::InferInputTensor, model_infer_response::InferOutputTensor,
        model_metadata_response::TensorMetadata,
    },
    service::{caller, grpc_timeout, record_call, request_id, set_request_id, GrpcState},
    status::ServeError,
};
use crate::{
    readiness::Readiness,
    scoring::{CallContext, Delivery, Rpc},
    v2::{self, tensor, Data, DataType, InputTensor, OutputTensor},
};
use cra_model::FieldViolation;

#[derive(Debug, Clone)]
pub struct Inference {
    state: Arc<GrpcState>,
    readiness: Readiness,
    /// Most rows of one ModelInfer call (`--max-batch-items`).
    max_rows: usize,
}

impl Inference {
    pub fn new(state: Arc<GrpcState>, readiness: Readiness, max_rows: usize) -> Self {
        Inference {
            state,
            readiness,
            max_rows,
        }
    }
}

fn not_found(e: v2::ModelNotFound) -> Status {
    Status::not_found(e.to_string())
}

/// The typed contents of a tensor of `datatype`, `count` elements expected.
fn typed_data(
    datatype: DataType,
    contents: Option<ip::InferTensorContents>,
    count: usize,
) -> Result<Data, String> {
    let c = contents.unwrap_or_default();
    let data = match datatype {
        DataType::Fp64 => Data::Fp64(c.fp64_contents),
        DataType::Fp32 => Data::Fp32(c.fp32_contents),
        DataType::Int64 => Data::Int64(c.int64_contents),
        DataType::Int32 => Data::Int32(c.int_contents),
        DataType::Bytes => Data::Bytes(c.bytes_contents),
        _ => Data::Other(count),
    };
    if data.len() != count {
        return Err(format!(
            "holds {} values in its {} contents; its shape needs {count}",
            data.len(),
            datatype
        ));
    }
    Ok(data)
}

/// The input tensors of a request, raw or typed. Public for the fuzz target
/// (`fuzz/fuzz_targets/v2_grpc.rs`), which reads requests as `ModelInfer` does.
#[doc(hidden)]
pub fn tensors_from_pb(
    inputs: Vec<InferInputTensor>,
    raw: Vec<Vec<u8>>,
) -> Result<Vec<InputTensor>, ServeError> {
    if !raw.is_empty() && raw.len() != inputs.len() {
        return Err(ServeError::InvalidArgument(vec![FieldViolation::new(
            "raw_input_contents",
            format!(
                "holds {} entries; it must hold one per input ({})",
                raw.len(),
                inputs.len()
            ),
        )]));
    }
    let mut raw = raw.into_iter();
    let mut violations = Vec::new();
    let mut tensors = Vec::with_capacity(inputs.len());
    for t in inputs {
        let name = crate::http::body::field_name(&t.name, 64);
        let raw_bytes = raw.next();
        let (datatype, count) = match tensor::header(&t.datatype, &t.shape) {
            Ok(h) => h,
            Err(why) => {
                violations.push(FieldViolation::new(name, why));
                continue;
            }
        };
        let data = match raw_bytes {
            Some(bytes) => {
                if t.contents.is_some() {
                    violations.push(FieldViolation::new(
                        name,
                        "has typed contents while the request sends raw_input_contents; send one form only",
                    ));
                    continue;
                }
                Data::from_raw(datatype, &bytes, count)
            }
            None => typed_data(datatype, t.contents, count),
        };
        match data {
            Ok(data) => tensors.push(InputTensor {
                name: t.name,
                datatype: t.datatype,
                shape: t.shape,
                data,
            }),
            Err(why) => violations.push(FieldViolation::new(name, why)),
        }
    }
    if violations.is_empty() {
        Ok(tensors)
    } else {
        Err(ServeError::InvalidArgument(violations))
    }
}

fn output_to_pb(t: OutputTensor, raw: bool) -> (InferOutputTensor, Option<Vec<u8>>) {
    let mut out = InferOutputTensor {
        name: t.name.to_owned(),
        datatype: t.datatype.as_str().to_owned(),
        shape: t.shape,
        parameters: Default::default(),
        contents: None,
    };
    if raw {
        return (out, Some(t.data.to_raw()));
    }
    let mut c = ip::InferTensorContents::default();
    match t.data {
        Data::Fp64(v) => c.fp64_contents = v,
        Data::Fp32(v) => c.fp32_contents = v,
        Data::Int64(v) => c.int64_contents = v,
        Data::Int32(v) => c.int_contents = v,
        Data::Bytes(v) => c.bytes_contents = v,
        Data::Other(_) => {}
    }
    out.contents = Some(c);
    (out, None)
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(
        &self,
        _: Request<ip::ServerLiveRequest>,
    ) -> Result<Response<ip::ServerLiveResponse>, Status> {
        Ok(Response::new(ip::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ip::ServerReadyRequest>,
    ) -> Result<Response<ip::ServerReadyResponse>, Status> {
        Ok(Response::new(ip::ServerReadyResponse {
            ready: self.readiness.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<ip::ModelReadyRequest>,
    ) -> Result<Response<ip::ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let known = v2::resolve(&self.state.scorer, &r.name, &r.version).is_ok();
        Ok(Response::new(ip::ModelReadyResponse {
            ready: known && self.readiness.is_ready(),
        }))
    }

    async fn server_metadata(
        &self,
        _: Request<ip::ServerMetadataRequest>,
    ) -> Result<Response<ip::ServerMetadataResponse>, Status> {
        Ok(Response::new(ip::ServerMetadataResponse {
            name: v2::SERVER_NAME.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            extensions: v2::EXTENSIONS.iter().map(|e| (*e).to_owned()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ip::ModelMetadataRequest>,
    ) -> Result<Response<ip::ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let m = v2::metadata(&self.state.scorer, &r.name, &r.version).map_err(not_found)?;
        let tensors = |ts: Vec<v2::TensorMetadata>| {
            ts.into_iter()
                .map(|t| TensorMetadata {
                    name: t.name.to_owned(),
                    datatype: t.datatype.as_str().to_owned(),
                    shape: t.shape,
                })
                .collect()
        };
        Ok(Response::new(ip::ModelMetadataResponse {
            name: m.name,
            versions: m.versions,
            platform: m.platform.to_owned(),
            inputs: tensors(m.inputs),
            outputs: tensors(m.outputs),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<ip::ModelInferRequest>,
    ) -> Result<Response<ip::ModelInferResponse>, Status> {
        let started = Instant::now();
        let answer = self.infer(request, started).await;
        record_call("ModelInfer", &answer, started);
        answer
    }
}

impl Inference {
    async fn infer(
        &self,
        request: Request<ip::ModelInferRequest>,
        started: Instant,
    ) -> Result<Response<ip::ModelInferResponse>, Status> {
        let received_at = SystemTime::now();
        let state = &*self.state;
        let mut caller = caller(&request)?;
        let permit = state.admission.admit()?;
        let request_id = request_id(request.metadata());
        let timeout = grpc_timeout(request.metadata())
            .map_or(state.request_timeout, |t| t.min(state.request_timeout));
        let peer = request.remote_addr();
        let trace_id = super::traced::trace_of(&request);
        let r = request.into_inner();
        let set = v2::resolve(&state.scorer, &r.model_name, &r.model_version).map_err(not_found)?;
        let requested: Vec<String> = r.outputs.into_iter().map(|o| o.name).collect();
        let outputs = v2::outputs_for(&requested)?;
        let raw = !r.raw_input_contents.is_empty();
        let first_shape = r.inputs.first().map(|t| t.shape.clone());
        let tensors = tensors_from_pb(r.inputs, r.raw_input_contents)?;
        let inputs = v2::inputs_from_tensors(tensors, self.max_rows)?;
        let deadline = started + timeout;
        let wait = state
            .admission
            .turn(&mut caller, inputs.len(), Some(deadline))?;
        let _permit = state.admission.wait_turn(wait, permit).await?;
        let ctx = CallContext {
            request_id: &request_id,
            rpc: Rpc::V2 {
                call_id: Uuid::now_v7(),
                position: 0,
            },
            peer,
            caller: &caller,
            received_at,
            started,
            deadline: Some((deadline, timeout)),
            trace_id,
        };
        let answer = state
            .scorer
            .score_all(&ctx, set, &inputs, &[], Delivery::NoExplanations)?;
        let shape = v2::output_shape(first_shape.as_deref(), inputs.len());
        let mut out_tensors = Vec::with_capacity(outputs.len());
        let mut raw_out = Vec::new();
        for t in v2::output_tensors(&answer, &outputs, &shape) {
            let (t, bytes) = output_to_pb(t, raw);
            out_tensors.push(t);
            raw_out.extend(bytes);
        }
        let model_version = match answer.set.live.as_slice() {
            [only] => only.bundle.version().to_owned(),
            _ => String::new(),
        };
        let mut resp = Response::new(ip::ModelInferResponse {
            model_name: r.model_name,
            model_version,
            id: r.id,
            parameters: Default::default(),
            outputs: out_tensors,
            raw_output_contents: raw_out,
        });
        set_request_id(&mut resp, &request_id);
        Ok(resp)
    }
}
