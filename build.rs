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
        .compile_protos(
            &[
                "proto/creditrisk/v1/credit_risk.proto",
                "proto/inference/open_inference.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    // refinery::embed_migrations! reads migrations/ at compile time; rebuild when it changes.
    println!("cargo:rerun-if-changed=migrations");
    if env::var_os("CARGO_FEATURE_TRAINER").is_some() {
        libxgboost_rpath(&out_dir);
    }
    Ok(())
}

/// With the trainer, `cra` links libxgboost.so, built by xgboost_lib-sys into its own OUT_DIR.
/// Records that folder as an rpath, so that the binary finds the library wherever it is run
/// from, without LD_LIBRARY_PATH. (xgboost_lib-sys declares `links`, so its build script has
/// run before this one.)
fn libxgboost_rpath(out_dir: &std::path::Path) {
    // OUT_DIR is target/<profile>/build/cra-<hash>/out.
    let Some(build) = out_dir.ancestors().nth(2) else {
        return;
    };
    let newest = std::fs::read_dir(build)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("xgboost_lib-sys-")
        })
        .map(|e| e.path().join("out/lib"))
        .filter(|lib| lib.join("libxgboost.so").exists())
        .max_by_key(|lib| {
            std::fs::metadata(lib.join("libxgboost.so"))
                .and_then(|m| m.modified())
                .ok()
        });
    match newest {
        Some(lib) => println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display()),
        None => println!("cargo:warning=libxgboost.so not found under {}; run cra train with LD_LIBRARY_PATH set to its folder", build.display()),
    }
}
