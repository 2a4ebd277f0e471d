//! The vidfarm contract: the gRPC types generated from `proto/vidfarm/v1`, the resolved job
//! spec every other crate works with, and the validation that turns one into the other.

pub mod profile;
pub mod spec;

pub use profile::{ModelProfile, ProfileError};
pub use spec::{FieldError, Priority, RenderSpec, Sampler, StitchMode, check_worker_name, quoted};

/// Generated protobuf and tonic code for `vidfarm.v1`.
pub mod pb {
    tonic::include_proto!("vidfarm.v1");

    /// The encoded descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("vidfarm_descriptor");
}
