use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time: a build script compiled for one checkout may be reused by another
    // sharing the target folder.
    let proto_root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    // The proto folder lies outside this package, which cargo watches by default.
    println!("cargo:rerun-if-changed={}", proto_root.display());
    println!("cargo:rerun-if-changed=build.rs");
    let descriptor = PathBuf::from(std::env::var("OUT_DIR")?).join("vidfarm_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor)
        .compile_protos(&[proto_root.join("vidfarm/v1/render.proto")], &[proto_root])?;
    Ok(())
}
