//! The gRPC contract: code generated from `proto/creditrisk/v1/credit_risk.proto`.
tonic::include_proto!("creditrisk.v1");

/// The encoded file descriptor set, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("creditrisk_descriptor");
