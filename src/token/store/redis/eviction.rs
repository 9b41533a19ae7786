//! Refusing a Redis that may evict keys.
//!
//! Every key the store writes has an expiry, so under memory pressure any eviction policy
//! but `noeviction` (the `volatile-*` ones included) may drop live keys, and some of them
//! are what makes a token *invalid*: a denied jti (`ts:deny:*`) or a DPoP proof seen
//! (`ts:once:*`) that Redis drops lets the revoked token or the replayed proof through
//! again. So the store checks every master's `maxmemory` and `maxmemory-policy` when it
//! connects, and refuses one that can evict: better not to start than to fail open.
//!
//! A Redis without a memory limit (`maxmemory 0`) never evicts; an evicting policy there is
//! only a warning, as setting a limit later would arm it. A user whose ACL does not allow
//! `INFO` cannot be checked; that too is a warning, not a refusal.

use redis::Value;
use redis::aio::ConnectionLike;

use super::super::StoreError;

/// What one node reports of its memory limit.
#[derive(Debug, PartialEq, Eq)]
struct MemoryPolicy {
    /// Bytes; 0 is no limit.
    maxmemory: u64,
    policy: String,
}

impl MemoryPolicy {
    /// Reads `maxmemory` and `maxmemory_policy` from an `INFO memory` reply.
    fn parse(info: &str) -> Option<Self> {
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        Some(Self {
            maxmemory: field("maxmemory")?.parse().ok()?,
            policy: field("maxmemory_policy")?.to_owned(),
        })
    }

    fn evicts(&self) -> bool {
        self.policy != "noeviction"
    }
}

/// The `INFO` texts in a reply: one from a single node; from a cluster, a map of each
/// master's address to its reply.
fn texts(reply: &Value) -> Vec<(String, String)> {
    let text = |value: &Value| match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::VerbatimString { text, .. } | Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    };
    match reply {
        Value::Map(nodes) => nodes
            .iter()
            .filter_map(|(node, info)| Some((text(node)?, text(info)?)))
            .collect(),
        single => text(single)
            .map(|info| vec![(String::from("server"), info)])
            .unwrap_or_default(),
    }
}

/// Checks what `reply` (to `INFO memory`) says of every node: an error naming the first
/// node that can evict, and the nodes that could not be read or have no limit, to warn of.
fn judge(reply: &Value) -> Result<Vec<String>, StoreError> {
    let nodes = texts(reply);
    if nodes.is_empty() {
        return Ok(vec![String::from("INFO memory gave no text to read")]);
    }
    let mut warnings = Vec::new();
    for (node, info) in nodes {
        match MemoryPolicy::parse(&info) {
            Some(memory) if memory.evicts() && memory.maxmemory > 0 => {
                return Err(StoreError::Unsafe(format!(
                    "redis {node} has maxmemory {} with maxmemory-policy {}: under memory pressure it would evict denied jtis and DPoP proofs seen, letting revoked tokens and replayed proofs through; set maxmemory-policy noeviction (a full Redis then refuses writes, which fail as UNAVAILABLE)",
                    memory.maxmemory, memory.policy
                )));
            }
            Some(memory) if memory.evicts() => warnings.push(format!(
                "redis {node} has maxmemory-policy {} and no memory limit: it evicts nothing now, but would once a limit is set; set noeviction",
                memory.policy
            )),
            Some(_) => {}
            None => warnings.push(format!(
                "redis {node}: no maxmemory or maxmemory_policy in INFO memory"
            )),
        }
    }
    Ok(warnings)
}

/// Refuses a Redis (every master of a cluster) that may evict the store's keys; logs a
/// warning when that cannot be told.
pub(super) async fn check(connection: &mut impl ConnectionLike) -> Result<(), StoreError> {
    let reply = match redis::cmd("INFO")
        .arg("memory")
        .query_async::<Value>(connection)
        .await
    {
        Ok(reply) => reply,
        Err(error) => {
            tracing::warn!(
                %error,
                "could not read the Redis eviction policy (INFO memory): make sure maxmemory-policy is noeviction, or revoked tokens may be let through once Redis is full"
            );
            return Ok(());
        }
    };
    for warning in judge(&reply)? {
        tracing::warn!("{warning}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(maxmemory: u64, policy: &str) -> String {
        format!(
            "# Memory\r\nused_memory:1000\r\nmaxmemory_human:0B\r\nmaxmemory:{maxmemory}\r\nmaxmemory_policy:{policy}\r\nmaxmemory_eviction_tenacity:10\r\n"
        )
    }

    fn bulk(text: String) -> Value {
        Value::BulkString(text.into_bytes())
    }

    #[test]
    fn reads_the_limit_and_the_policy_not_a_field_that_shares_the_prefix() {
        assert_eq!(
            MemoryPolicy::parse(&info(1 << 20, "allkeys-lru")),
            Some(MemoryPolicy {
                maxmemory: 1 << 20,
                policy: "allkeys-lru".into()
            })
        );
        assert_eq!(MemoryPolicy::parse("used_memory:5\r\n"), None);
    }

    #[test]
    fn a_limited_redis_that_evicts_is_refused_whatever_the_policy_family() {
        for policy in [
            "allkeys-lru",
            "volatile-lru",
            "volatile-ttl",
            "allkeys-random",
        ] {
            match judge(&bulk(info(100_000_000, policy))) {
                Err(StoreError::Unsafe(message)) => {
                    assert!(message.contains(policy), "{message}");
                    assert!(message.contains("noeviction"), "{message}");
                }
                other => panic!("{policy}: {other:?}"),
            }
        }
    }

    #[test]
    fn noeviction_passes_and_an_unlimited_evicting_redis_is_a_warning() {
        assert_eq!(judge(&bulk(info(100_000_000, "noeviction"))), Ok(vec![]));
        let warnings = judge(&bulk(info(0, "allkeys-lru"))).unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("no memory limit"), "{warnings:?}");
    }

    #[test]
    fn every_master_of_a_cluster_is_judged() {
        let reply = Value::Map(vec![
            (bulk("127.0.0.1:7000".into()), bulk(info(0, "noeviction"))),
            (
                bulk("127.0.0.1:7001".into()),
                bulk(info(1 << 30, "volatile-lfu")),
            ),
        ]);
        match judge(&reply) {
            Err(StoreError::Unsafe(message)) => assert!(message.contains("7001"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unreadable_reply_is_a_warning() {
        assert_eq!(judge(&Value::Nil).unwrap().len(), 1);
        assert_eq!(judge(&bulk("# Memory\r\n".into())).unwrap().len(), 1);
    }
}
