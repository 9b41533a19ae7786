//! Per-request context carried through the chain into every backend call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Context of one logical request: today its correlation id, which appears in the
/// tracing span of every backend call made for the request (and, for remote backends,
/// in the outbound request itself).
///
/// Cheap to clone (shared): the chain makes it current around every backend call.
#[derive(Clone, Debug)]
pub struct CallContext(Arc<Inner>);

#[derive(Clone, Debug)]
struct Inner {
    correlation_id: String,
    trace: TraceContext,
}

/// W3C Trace Context (`traceparent`, `tracestate`) of a request: adopted from the inbound
/// request when it carries a valid one, else started here. Each outbound call gets a fresh
/// span id under the same trace id, with this request's span as its parent.
///
/// Written here rather than taken from the OpenTelemetry SDK: propagating the header needs
/// a few dozen lines, and the air-gapped profile runs with no exporter at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
    state: Option<String>,
}

fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // A failed OS RNG leaves zeros; the fallback below makes the id valid (non-zero), and
    // trace ids are not secrets.
    let _ = aws_lc_rs::rand::fill(&mut out);
    if out.iter().all(|b| *b == 0) {
        out[N - 1] = 1;
    }
    out
}

impl TraceContext {
    /// A new trace, sampled. The ids are a random per-process prefix and a counter: unique
    /// without a CSPRNG call per request on the signing hot path.
    pub fn start() -> Self {
        static PREFIX: OnceLock<[u8; 16]> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(1);
        let prefix = PREFIX.get_or_init(random::<16>);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes();
        let mut trace_id = *prefix;
        let mut span_id = [0u8; 8];
        for i in 0..8 {
            trace_id[8 + i] ^= n[i];
            span_id[i] = prefix[i] ^ n[i];
        }
        if span_id == [0; 8] {
            span_id[7] = 1;
        }
        Self {
            trace_id,
            span_id,
            flags: 1,
            state: None,
        }
    }

    /// Parses a `traceparent` header (version 00; higher versions are read by their first
    /// four fields, as the spec asks) and an optional `tracestate`. `None` if invalid:
    /// the caller then starts a new trace.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let mut fields = traceparent.trim().split('-');
        let version = parse_hex::<1>(fields.next()?)?[0];
        let trace_id = parse_hex::<16>(fields.next()?)?;
        let span_id = parse_hex::<8>(fields.next()?)?;
        let flags = parse_hex::<1>(fields.next()?)?[0];
        if version == 0xff
            || (version == 0 && fields.next().is_some())
            || trace_id == [0; 16]
            || span_id == [0; 8]
        {
            return None;
        }
        // tracestate is forwarded as is when it is plausible (bounded, printable ASCII).
        let state = tracestate
            .map(str::trim)
            .filter(|s| {
                !s.is_empty() && s.len() <= 512 && s.bytes().all(|b| (0x20..0x7f).contains(&b))
            })
            .map(str::to_owned);
        Some(Self {
            trace_id,
            span_id,
            flags,
            state,
        })
    }

    /// The trace id, 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The `traceparent` for an outbound call: same trace, a fresh span id.
    pub fn outbound_traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(random::<8>()),
            self.flags & 1
        )
    }

    /// The `tracestate` to forward, if the inbound request had one.
    pub fn tracestate(&self) -> Option<&str> {
        self.state.as_deref()
    }
}

tokio::task_local! {
    static CURRENT: CallContext;
}

impl CallContext {
    /// Runs `future` with `self` as the current context, which remote backends read to
    /// propagate the correlation id and trace context ([`CallContext::current`]).
    pub async fn scope<F: std::future::Future>(&self, future: F) -> F::Output {
        CURRENT.scope(self.clone(), future).await
    }

    /// The context of the backend call being made, if it runs under [`CallContext::scope`].
    pub fn current() -> Option<CallContext> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// The request's trace context.
    pub fn trace(&self) -> &TraceContext {
        &self.0.trace
    }

    /// This context with the trace context of an inbound `traceparent`/`tracestate`, when
    /// they are valid.
    pub fn with_trace_headers(
        mut self,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
    ) -> Self {
        if let Some(trace) = traceparent.and_then(|p| TraceContext::parse(p, tracestate)) {
            Arc::make_mut(&mut self.0).trace = trace;
        }
        self
    }
}

impl CallContext {
    /// A context with a fresh, process-unique correlation id.
    ///
    /// The id is a random per-process prefix plus a counter: unique without paying for
    /// a CSPRNG call per request on the signing hot path. It is not a secret.
    pub fn new() -> Self {
        static PREFIX: OnceLock<String> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let prefix = PREFIX.get_or_init(|| {
            let mut bytes = [0u8; 6];
            // A failure of the OS RNG leaves the prefix at zeros: ids stay unique within
            // the process, which is all a correlation id needs.
            let _ = aws_lc_rs::rand::fill(&mut bytes);
            hex::encode(bytes)
        });
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Self(Arc::new(Inner {
            correlation_id: format!("{prefix}-{n:x}"),
            trace: TraceContext::start(),
        }))
    }

    /// A context carrying a correlation id chosen by the caller (e.g. from an inbound request).
    ///
    /// Ids longer than 128 bytes or with characters outside `[A-Za-z0-9._:-]` are replaced
    /// by a fresh id, so a caller cannot inject log-breaking text.
    pub fn with_correlation_id(id: &str) -> Self {
        let acceptable = !id.is_empty()
            && id.len() <= 128
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if acceptable {
            Self(Arc::new(Inner {
                correlation_id: id.to_owned(),
                trace: TraceContext::start(),
            }))
        } else {
            Self::new()
        }
    }

    /// The correlation id of this request.
    pub fn correlation_id(&self) -> &str {
        &self.0.correlation_id
    }
}

impl Default for CallContext {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_adopted_and_propagated_with_a_new_span() {
        // The example from the W3C Trace Context recommendation.
        let inbound = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let ctx = CallContext::new().with_trace_headers(Some(inbound), Some("congo=t61rcWkgMzE"));
        assert_eq!(ctx.trace().trace_id(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(ctx.trace().tracestate(), Some("congo=t61rcWkgMzE"));
        let outbound = ctx.trace().outbound_traceparent();
        let fields: Vec<&str> = outbound.split('-').collect();
        assert_eq!(fields[0], "00");
        assert_eq!(fields[1], "0af7651916cd43dd8448eb211c80319c");
        assert_ne!(fields[2], "b7ad6b7169203331");
        assert_eq!(fields[3], "01");
        assert!(TraceContext::parse(&outbound, None).is_some());
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        ] {
            assert!(TraceContext::parse(bad, None).is_none(), "{bad}");
            let ctx = CallContext::new().with_trace_headers(Some(bad), None);
            assert_ne!(ctx.trace().trace_id(), "0af7651916cd43dd8448eb211c80319c");
        }
        // A future version may add fields.
        assert!(
            TraceContext::parse(
                "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
                None
            )
            .is_some()
        );
    }

    #[tokio::test]
    async fn the_current_context_is_visible_inside_its_scope_only() {
        assert!(CallContext::current().is_none());
        let ctx = CallContext::with_correlation_id("req-7");
        let seen = ctx
            .scope(async { CallContext::current().map(|c| c.correlation_id().to_owned()) })
            .await;
        assert_eq!(seen.as_deref(), Some("req-7"));
    }

    #[test]
    fn fresh_ids_are_unique() {
        let a = CallContext::new();
        let b = CallContext::new();
        assert_ne!(a.correlation_id(), b.correlation_id());
    }

    #[test]
    fn caller_ids_are_sanitised() {
        assert_eq!(
            CallContext::with_correlation_id("req-42").correlation_id(),
            "req-42"
        );
        let injected = CallContext::with_correlation_id("a\nfake log line");
        assert!(!injected.correlation_id().contains('\n'));
        let long = "x".repeat(200);
        assert_ne!(
            CallContext::with_correlation_id(&long).correlation_id(),
            long
        );
    }
}
