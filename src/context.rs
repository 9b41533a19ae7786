//! Per-request context carried through the chain into every backend call.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Context of one logical request: today its correlation id, which appears in the
/// tracing span of every backend call made for the request (and, for remote backends,
/// in the outbound request itself).
#[derive(Clone, Debug)]
pub struct CallContext {
    correlation_id: String,
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
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        });
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Self {
            correlation_id: format!("{prefix}-{n:x}"),
        }
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
            Self {
                correlation_id: id.to_owned(),
            }
        } else {
            Self::new()
        }
    }

    /// The correlation id of this request.
    pub fn correlation_id(&self) -> &str {
        &self.correlation_id
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
