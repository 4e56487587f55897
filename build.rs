//! Generates the gRPC server and client code from `proto/` into OUT_DIR, together with a file
//! descriptor set for server reflection. protoc comes from the `protoc-bin-vendored` crate, so no
//! system protoc is needed.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { env::set_var("PROTOC", protoc) };
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("creditrisk_descriptor.bin"))
        .compile_protos(&["proto/creditrisk/v1/credit_risk.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    // refinery::embed_migrations! reads migrations/ at compile time; rebuild when it changes.
    println!("cargo:rerun-if-changed=migrations");
    Ok(())
}
