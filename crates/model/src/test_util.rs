//! Helpers shared by the parity tests: fixture paths and error measures.

use std::path::PathBuf;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

pub type TestBackend = burn::backend::Flex;

/// `crates/model/tests/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join(name)
}

/// Largest absolute element-wise difference; panics on a shape mismatch (tests only).
pub fn max_abs_diff<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a - b).abs().max().into_scalar().to_string().parse().expect("a float")
}
