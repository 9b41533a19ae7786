//! What every outbound call carries: the correlation id and W3C trace headers of the call
//! being made (from the context the chain sets around each backend call).

use crate::context::CallContext;

/// The correlation id and trace headers of the call being made.
pub(super) fn outbound<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let ctx = CallContext::current().unwrap_or_default();
    let metadata = request.metadata_mut();
    // Correlation ids and trace headers are validated ASCII, so these parses succeed; a
    // failure would only drop the header.
    if let Ok(value) = ctx.correlation_id().parse() {
        metadata.insert("x-correlation-id", value);
    }
    if let Ok(value) = ctx.trace().outbound_traceparent().parse() {
        metadata.insert("traceparent", value);
    }
    if let Some(state) = ctx.trace().tracestate()
        && let Ok(value) = state.parse()
    {
        metadata.insert("tracestate", value);
    }
    request
}

pub(super) fn correlation_id() -> String {
    CallContext::current()
        .map(|c| c.correlation_id().to_owned())
        .unwrap_or_default()
}
