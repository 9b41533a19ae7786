//! `[server.limits]`: how much the Token API takes on at once, and how long its HTTP/2
//! connections live. Without these, one client connection could open any number of calls,
//! a slow store would let calls pile up without bound, and a fleet's clients would stay
//! pinned to the instances that were up when they connected.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[server.limits]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerLimits {
    /// Token API calls served at once, over all connections. A call beyond it is refused at
    /// once with UNAVAILABLE ("overloaded"), so the client retries elsewhere instead of
    /// queueing behind a backlog that makes every call late. Health checks are not counted.
    pub max_in_flight: usize,
    /// Calls one HTTP/2 connection may have open at once (its
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`); a client queues the rest on its side.
    pub max_concurrent_streams: u32,
    /// How often an HTTP/2 PING checks that an idle peer is still there.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered before the connection is dropped.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Age after which a connection is asked to go away (HTTP/2 GOAWAY; calls in flight
    /// finish), so clients reconnect and spread over instances added since. Off when absent.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub max_connection_age: Option<Duration>,
    /// After `max_connection_age`, how long its calls may take before the connection is
    /// closed anyway.
    #[serde(with = "humantime_serde")]
    pub max_connection_age_grace: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_in_flight: 4096,
            max_concurrent_streams: 200,
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
            max_connection_age: None,
            max_connection_age_grace: Duration::from_secs(30),
        }
    }
}

impl ServerLimits {
    /// Checks every limit, naming the setting that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = |setting: &str, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::invalid(
                    format!("server.limits.{setting}"),
                    "expected a value above zero",
                ))
            }
        };
        positive("max_in_flight", self.max_in_flight > 0)?;
        positive("max_concurrent_streams", self.max_concurrent_streams > 0)?;
        positive("keepalive_interval", !self.keepalive_interval.is_zero())?;
        positive("keepalive_timeout", !self.keepalive_timeout.is_zero())?;
        positive(
            "max_connection_age",
            self.max_connection_age.is_none_or(|age| !age.is_zero()),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, DEFAULT_TOML};

    fn load(limits: &str) -> Result<Config, ConfigError> {
        let config = Config::parse(&format!("{DEFAULT_TOML}\n[server.limits]\n{limits}"))?;
        super::super::validate::validate(&config)?;
        Ok(config)
    }

    #[test]
    fn defaults_apply_and_each_limit_can_be_set() {
        let defaults = Config::parse(DEFAULT_TOML).unwrap().server.limits;
        assert_eq!(defaults, ServerLimits::default());
        assert_eq!(defaults.max_in_flight, 4096);
        assert_eq!(defaults.max_connection_age, None, "off unless asked for");
        let set = load(
            "max_in_flight = 64\nmax_concurrent_streams = 8\nkeepalive_interval = \"5s\"\nkeepalive_timeout = \"2s\"\nmax_connection_age = \"30m\"\nmax_connection_age_grace = \"1m\"\n",
        )
        .unwrap()
        .server
        .limits;
        assert_eq!(
            set,
            ServerLimits {
                max_in_flight: 64,
                max_concurrent_streams: 8,
                keepalive_interval: Duration::from_secs(5),
                keepalive_timeout: Duration::from_secs(2),
                max_connection_age: Some(Duration::from_secs(1800)),
                max_connection_age_grace: Duration::from_secs(60),
            }
        );
    }

    #[test]
    fn a_zero_or_unknown_limit_is_refused_by_name() {
        for (line, setting) in [
            ("max_in_flight = 0", "server.limits.max_in_flight"),
            (
                "max_concurrent_streams = 0",
                "server.limits.max_concurrent_streams",
            ),
            (
                "keepalive_interval = \"0s\"",
                "server.limits.keepalive_interval",
            ),
            (
                "keepalive_timeout = \"0s\"",
                "server.limits.keepalive_timeout",
            ),
            (
                "max_connection_age = \"0s\"",
                "server.limits.max_connection_age",
            ),
        ] {
            let error = load(line).unwrap_err();
            assert_eq!(error.setting(), Some(setting), "{error}");
            assert!(error.to_string().contains("above zero"), "{error}");
        }
        let error = load("max_inflight = 3").unwrap_err();
        assert_eq!(
            error.setting(),
            Some("server.limits.max_inflight"),
            "{error}"
        );
        let error = load("max_in_flight = -1").unwrap_err();
        assert_eq!(
            error.setting(),
            Some("server.limits.max_in_flight"),
            "{error}"
        );
    }
}
