//! The lifecycle of a key ring, shared by every backend that keeps its own ring records
//! (software files, PKCS#11 data objects): the record format, and the rules that decide
//! which version may do what. The newest ACTIVE version signs and encrypts; ACTIVE and
//! retained DEPRECATED versions verify and decrypt; a DEPRECATED version past its retention
//! counts as DESTROYED.

use serde::{Deserialize, Serialize};

use super::error::{BackendError, Rejection};
use super::types::{Algorithm, KeyRef, KeyState, Operation};

/// Format version of a [`RingRecord`].
pub const FORMAT: u32 = 1;

/// One version as recorded in `ring.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionRecord {
    /// Version number, from 1.
    pub version: u32,
    /// Recorded state (retention expiry is applied on top when read).
    pub state: KeyState,
    /// Creation time, seconds since the epoch.
    pub created_at: u64,
    /// When this version was rotated out, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at: Option<u64>,
}

/// The contents of `ring.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RingRecord {
    /// Format version; only [`FORMAT`] is understood.
    pub format: u32,
    /// The algorithm every version of the ring is for.
    pub algorithm: Algorithm,
    /// Versions, oldest first.
    pub versions: Vec<VersionRecord>,
}

impl RingRecord {
    /// A new ring record with no versions.
    pub fn new(algorithm: Algorithm) -> Self {
        Self {
            format: FORMAT,
            algorithm,
            versions: Vec::new(),
        }
    }

    /// The next version number.
    pub fn next_version(&self) -> u32 {
        self.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1
    }

    /// Applies a rotation at `now`: every ACTIVE version becomes DEPRECATED (rotated out at
    /// `now`), versions past retention become DESTROYED, and a new ACTIVE version is added.
    /// Returns the new version number and the versions destroyed now (whose material the
    /// caller removes).
    pub fn rotate(&mut self, now: u64, retention: u64) -> (u32, Vec<u32>) {
        let version = self.next_version();
        let mut destroyed = Vec::new();
        for v in &mut self.versions {
            if v.state == KeyState::Active {
                v.state = KeyState::Deprecated;
                v.rotated_at = Some(now);
            } else if v.state == KeyState::Deprecated
                && v.rotated_at
                    .is_some_and(|at| now >= at.saturating_add(retention))
            {
                v.state = KeyState::Destroyed;
                destroyed.push(v.version);
            }
        }
        self.versions.push(VersionRecord {
            version,
            state: KeyState::Active,
            created_at: now,
            rotated_at: None,
        });
        (version, destroyed)
    }
}

/// The clock reading and retention that decide effective states.
#[derive(Clone, Copy, Debug)]
pub struct Lifecycle {
    /// Seconds since the epoch.
    pub now: u64,
    /// Retention of rotated-out versions, in seconds.
    pub retention: u64,
}

impl Lifecycle {
    /// The recorded state, with retention applied: DEPRECATED past retention is DESTROYED.
    pub fn effective_state(&self, record: &VersionRecord) -> KeyState {
        match (record.state, record.rotated_at) {
            (KeyState::Deprecated, Some(at)) if self.now >= at.saturating_add(self.retention) => {
                KeyState::Destroyed
            }
            (state, _) => state,
        }
    }

    /// Until when a DEPRECATED version is retained.
    pub fn retained_until(&self, record: &VersionRecord) -> Option<u64> {
        match (record.state, record.rotated_at) {
            (KeyState::Deprecated, Some(at)) => Some(at.saturating_add(self.retention)),
            _ => None,
        }
    }
}

impl Lifecycle {
    /// The version that signs or encrypts: the pinned one if it is ACTIVE, else the newest
    /// ACTIVE version. `ring` names the key in errors.
    pub fn producing<'r>(
        &self,
        ring: &KeyRef,
        versions: &'r [VersionRecord],
        pinned: Option<u32>,
        operation: Operation,
    ) -> Result<&'r VersionRecord, BackendError> {
        let chosen = match pinned {
            Some(n) => versions.iter().find(|v| v.version == n),
            None => versions
                .iter()
                .rev()
                .find(|v| v.state == KeyState::Active)
                .or_else(|| versions.last()),
        }
        .ok_or_else(|| {
            BackendError::Rejected(Rejection::UnknownKey(match pinned {
                Some(n) => format!("{ring}#{n}"),
                None => ring.to_string(),
            }))
        })?;
        match self.effective_state(chosen) {
            KeyState::Active => Ok(chosen),
            state => Err(BackendError::Rejected(Rejection::KeyNotActive {
                key: ring.to_string(),
                version: chosen.version,
                state,
                operation,
            })),
        }
    }

    /// Whether a version may verify or decrypt: ACTIVE, or DEPRECATED within retention.
    pub fn check_consuming(
        &self,
        ring: &KeyRef,
        record: &VersionRecord,
    ) -> Result<(), BackendError> {
        match self.effective_state(record) {
            KeyState::Active | KeyState::Deprecated => Ok(()),
            KeyState::Destroyed if record.state == KeyState::Deprecated => {
                Err(BackendError::Rejected(Rejection::RetentionExpired {
                    key: ring.to_string(),
                    version: record.version,
                }))
            }
            state => Err(BackendError::Rejected(Rejection::KeyUnusable {
                key: ring.to_string(),
                version: record.version,
                state,
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_deprecates_the_active_version_and_destroys_expired_ones() {
        let mut ring = RingRecord::new(Algorithm::Es256);
        assert_eq!(ring.rotate(100, 50), (1, vec![]));
        assert_eq!(ring.rotate(110, 50), (2, vec![]));
        assert_eq!(ring.versions[0].state, KeyState::Deprecated);
        assert_eq!(ring.versions[0].rotated_at, Some(110));
        // Version 1 expires at 160; rotating at 160 destroys it, deprecates 2.
        assert_eq!(ring.rotate(160, 50), (3, vec![1]));
        let states: Vec<KeyState> = ring.versions.iter().map(|v| v.state).collect();
        assert_eq!(
            states,
            [KeyState::Destroyed, KeyState::Deprecated, KeyState::Active]
        );
    }

    #[test]
    fn effective_state_applies_retention() {
        let record = VersionRecord {
            version: 1,
            state: KeyState::Deprecated,
            created_at: 0,
            rotated_at: Some(100),
        };
        let at = |now| Lifecycle { now, retention: 50 };
        assert_eq!(at(149).effective_state(&record), KeyState::Deprecated);
        assert_eq!(at(150).effective_state(&record), KeyState::Destroyed);
        assert_eq!(at(0).retained_until(&record), Some(150));
    }
}
