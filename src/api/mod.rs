//! Transports: the Token Service's gRPC API, and the generated Crypto Service API.

pub mod grpc;

use crate::context::CallContext;

/// The context of an inbound gRPC request: its correlation id (the request field, else the
/// `x-correlation-id` metadata, else a fresh one) and its W3C trace context.
pub fn inbound_context(
    metadata: &tonic::metadata::MetadataMap,
    field: Option<&str>,
) -> CallContext {
    let text = |name: &str| metadata.get(name).and_then(|v| v.to_str().ok());
    let ctx = match field
        .filter(|id| !id.is_empty())
        .or_else(|| text("x-correlation-id"))
    {
        Some(id) => CallContext::with_correlation_id(id),
        None => CallContext::new(),
    };
    ctx.with_trace_headers(text("traceparent"), text("tracestate"))
}

/// Code generated from `proto/token_service.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("token.v1");

    /// Encoded file descriptors, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("descriptors");
}

/// Code generated from `proto/crypto_service.proto`: the Crypto Service API.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod crypto_proto {
    tonic::include_proto!("crypto.v1");
}
