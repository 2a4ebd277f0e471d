use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let descriptor = PathBuf::from(std::env::var("OUT_DIR")?).join("vidfarm_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor)
        .compile_protos(&[proto_root.join("vidfarm/v1/render.proto")], &[proto_root])?;
    Ok(())
}
