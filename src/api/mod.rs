//! Transports: the Token Service's gRPC API, and the generated Crypto Service API.

pub mod grpc;
pub mod listener;
pub mod metrics;
pub mod overload;

use crate::context::CallContext;

/// The response future of a tower layer around a tonic service ([`metrics::Metered`],
/// [`overload::Shed`]).
pub type ResponseFuture<E> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<http::Response<tonic::body::Body>, E>> + Send>,
>;

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

/// The caller of an inbound gRPC request as the TLS layer proved it: the client certificate
/// chain of an mTLS connection (already verified against the listener's `client_ca_file`),
/// else unidentified.
pub fn inbound_caller<T>(request: &tonic::Request<T>) -> crate::caller::Caller {
    crate::caller::Caller::from_verified_chain(request.peer_certs())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_context_takes_the_field_then_the_metadata_and_the_trace_headers() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("x-correlation-id", "from-metadata".parse().unwrap());
        metadata.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let ctx = inbound_context(&metadata, Some("from-field"));
        assert_eq!(ctx.correlation_id(), "from-field");
        assert_eq!(ctx.trace().trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            inbound_context(&metadata, Some("")).correlation_id(),
            "from-metadata"
        );
        // A hostile id is replaced, and a missing traceparent starts a fresh trace.
        let mut hostile = tonic::metadata::MetadataMap::new();
        hostile.insert("x-correlation-id", "a b\tc".parse().unwrap());
        let ctx = inbound_context(&hostile, None);
        assert_ne!(ctx.correlation_id(), "a b\tc");
        assert_ne!(ctx.trace().trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}
