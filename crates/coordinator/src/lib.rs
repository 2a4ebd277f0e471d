//! The coordinator: takes jobs in (validation, planning, queueing the chunk tasks), applies
//! clients' control, serves it all as the `RenderService` gRPC API, and keeps house (lost
//! tasks queued again, old jobs removed). It does no rendering.

pub mod auth;
pub mod convert;
pub mod coordinator;
pub mod reload;
pub mod rpc_span;
pub mod server;
pub mod service;
pub mod sweeps;
pub mod tls;

#[cfg(test)]
#[path = "../../../tests/support/pki.rs"]
mod test_pki;

pub use coordinator::{Coordinator, CoordinatorError};
pub use server::{ServeError, ServerSecurity, serve};
pub use service::RenderApi;
pub use sweeps::spawn_sweeps;
