//! What the token logic did, for people: an audit line (target `audit`) and a counter per
//! event. Counters: `token_service_tokens_issued_total{client_id,grant}` (grant `new` or
//! `refresh`; client ids are the registered ones, so the label stays bounded) and
//! `token_service_token_events_total{event}` (see [`Event`]). A rise in `reuse_detected` is
//! the signal of stolen refresh tokens. Data keys (see [`super::seal`]):
//! `token_service_data_keys_total{origin}` (`made`: a new key wrapped for sealing;
//! `unwrapped`: a key opened through the chain because it was not in memory) and
//! `token_service_data_keys_held` (data keys in memory now, the one sealing included). A
//! rise in `unwrapped` means instances are asking the wrapping backend again, e.g. after
//! restarts.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};

use super::claims::AccessClaims;
use super::refresh::FamilyId;
use crate::caller::Caller;

/// How an access token came to be issued, as the `grant` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Issue {
    /// A new grant (GenerateTokens): a new refresh-token family.
    New,
    /// A refresh (RefreshTokens): the family's next token.
    Refresh,
}

impl Issue {
    fn as_str(self) -> &'static str {
        match self {
            Issue::New => "new",
            Issue::Refresh => "refresh",
        }
    }
}

/// Events other than issuance, as the `event` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A retired refresh token was presented: its family is revoked.
    ReuseDetected,
    /// A family was revoked (by refresh token or family id).
    FamilyRevoked,
    /// An access token was denied by its jti.
    AccessRevoked,
    /// A caller was refused for a client that names its callers.
    CallerRefused,
    /// A client was over its rate limit.
    RateLimited,
}

impl Event {
    const ALL: [Event; 5] = [
        Event::ReuseDetected,
        Event::FamilyRevoked,
        Event::AccessRevoked,
        Event::CallerRefused,
        Event::RateLimited,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Event::ReuseDetected => "reuse_detected",
            Event::FamilyRevoked => "family_revoked",
            Event::AccessRevoked => "access_revoked",
            Event::CallerRefused => "caller_refused",
            Event::RateLimited => "rate_limited",
        }
    }
}

/// The metric families, registered once per registry (see
/// [`crate::metrics::Metrics::tokens`]).
#[derive(Clone, Debug)]
pub struct TokenEventFamilies {
    issued: IntCounterVec,
    /// Per [`Event`], in [`Event::ALL`] order.
    events: [IntCounter; 5],
    data_keys_made: IntCounter,
    data_keys_unwrapped: IntCounter,
    data_keys_held: IntGauge,
}

impl TokenEventFamilies {
    /// Creates the families and registers them in `registry`.
    pub fn register(registry: &prometheus::Registry) -> Self {
        let issued = IntCounterVec::new(
            Opts::new(
                "token_service_tokens_issued_total",
                "Access tokens issued, by client and grant (new, refresh)",
            ),
            &["client_id", "grant"],
        )
        .expect("static metric definition");
        let events = IntCounterVec::new(
            Opts::new(
                "token_service_token_events_total",
                "Token lifecycle events: reuse_detected, family_revoked, access_revoked, caller_refused, rate_limited",
            ),
            &["event"],
        )
        .expect("static metric definition");
        let data_keys = IntCounterVec::new(
            Opts::new(
                "token_service_data_keys_total",
                "Data keys sealing token families, by origin: made (wrapped for sealing), unwrapped (opened through the chain)",
            ),
            &["origin"],
        )
        .expect("static metric definition");
        let data_keys_held = IntGauge::new(
            "token_service_data_keys_held",
            "Data keys held in memory to seal and open token families",
        )
        .expect("static metric definition");
        for collector in [
            Box::new(issued.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(events.clone()),
            Box::new(data_keys.clone()),
            Box::new(data_keys_held.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique within a fresh registry");
        }
        Self {
            issued,
            events: Event::ALL.map(|e| events.with_label_values(&[e.as_str()])),
            data_keys_made: data_keys.with_label_values(&["made"]),
            data_keys_unwrapped: data_keys.with_label_values(&["unwrapped"]),
            data_keys_held,
        }
    }

    /// Counts a data key made (and wrapped) for sealing.
    pub(super) fn data_key_made(&self) {
        self.data_keys_made.inc();
    }

    /// Counts a data key unwrapped through the chain.
    pub(super) fn data_key_unwrapped(&self) {
        self.data_keys_unwrapped.inc();
    }

    /// Sets how many unwrapped data keys are held.
    pub(super) fn data_keys_held(&self, held: usize) {
        self.data_keys_held
            .set(i64::try_from(held).unwrap_or(i64::MAX));
    }

    /// Data keys (made, unwrapped) so far, and held now (for tests).
    pub fn data_key_counts(&self) -> (u64, u64, i64) {
        (
            self.data_keys_made.get(),
            self.data_keys_unwrapped.get(),
            self.data_keys_held.get(),
        )
    }

    /// Counts `event`.
    pub fn count(&self, event: Event) {
        self.events[event as usize].inc();
    }

    /// How many times `event` happened (for tests).
    pub fn event_count(&self, event: Event) -> u64 {
        self.events[event as usize].get()
    }

    /// Tokens issued to `client_id` by `grant` (for tests).
    pub fn issued_count(&self, client_id: &str, grant: Issue) -> u64 {
        self.issued
            .with_label_values(&[client_id, grant.as_str()])
            .get()
    }

    /// Records an issued access token: counted, and its audit line, naming who asked for it
    /// (the caller's certificate names, or "unidentified").
    pub(super) fn issued(&self, grant: Issue, caller: &Caller, claims: &AccessClaims, kid: &str) {
        self.issued
            .with_label_values(&[claims.client_id.as_str(), grant.as_str()])
            .inc();
        tracing::info!(
            target: "audit",
            event = match grant {
                Issue::New => "issue",
                Issue::Refresh => "refresh",
            },
            sub = %claims.sub,
            client_id = %claims.client_id,
            jti = %claims.jti,
            fid = claims.fid.as_deref(),
            kid,
            exp = claims.exp,
            caller = %caller,
            "token issued"
        );
    }

    /// Records a detected reuse: the family is revoked.
    pub(super) fn reuse_detected(&self, subject: &str, client_id: &str, family: &FamilyId) {
        self.count(Event::ReuseDetected);
        tracing::warn!(target: "audit", event = "reuse_detected", sub = %subject, client_id = %client_id, fid = %family, "refresh token reused: family revoked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_is_at_its_own_index() {
        for (index, event) in Event::ALL.iter().enumerate() {
            assert_eq!(*event as usize, index);
        }
    }
}
