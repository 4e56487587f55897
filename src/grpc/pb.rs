//! The gRPC contracts: code generated from `proto/creditrisk/v1/credit_risk.proto` and the
//! Open Inference Protocol's `proto/inference/open_inference.proto`.
tonic::include_proto!("creditrisk.v1");

/// The Open Inference Protocol (KServe V2): code generated from
/// `proto/inference/open_inference.proto`.
pub mod inference {
    tonic::include_proto!("inference");
}

/// The encoded file descriptor set, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("creditrisk_descriptor");
