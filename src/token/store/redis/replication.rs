//! Revocations acknowledged by replicas before they are reported done.
//!
//! Redis replicates asynchronously: a revocation written to a master that fails before
//! passing it on is lost with it, and the revoked token is accepted again once a replica
//! takes over. With `tokens.redis_revocation_replicas = N`, the store sends `WAIT N` to the
//! master holding the key after each revocation (on the same connection that wrote it, as
//! WAIT counts that connection's writes) and reports the revocation unavailable unless N
//! replicas acknowledged it in time. The revocation is in force on the master either way;
//! the error says it may not survive a failover, so the caller retries (revoking is
//! idempotent). A family revoked by reuse detection is waited for too, but the reuse is
//! reported whatever the replicas answer: it must be audited and refused.

use std::time::Duration;

use redis::Value;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};

use super::super::StoreError;
use super::Connection;

/// Waits until `replicas` replicas of the master holding `key` have every write this
/// connection made (0: returns at once), for at most `timeout`.
pub(super) async fn acknowledged(
    connection: &Connection,
    key: &str,
    replicas: usize,
    timeout: Duration,
) -> Result<(), StoreError> {
    if replicas == 0 {
        return Ok(());
    }
    let mut wait = redis::cmd("WAIT");
    wait.arg(replicas).arg(
        u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1),
    );
    let reply = match connection.clone() {
        Connection::Single(mut single) => wait.query_async::<Value>(&mut single).await,
        Connection::Cluster(mut cluster) => {
            let master = Route::with_key(key, SlotAddr::Master);
            cluster
                .route_command(
                    wait,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(master)),
                )
                .await
        }
    }
    .map_err(|e| StoreError::Unavailable(format!("redis: WAIT after a revocation: {e}")))?;
    let acknowledged = match reply {
        Value::Int(n) => usize::try_from(n).unwrap_or(0),
        other => {
            return Err(StoreError::Unavailable(format!(
                "redis: unexpected answer to WAIT: {other:?}"
            )));
        }
    };
    if acknowledged < replicas {
        return Err(StoreError::Unavailable(format!(
            "revocation written to the Redis master, but {acknowledged} of {replicas} replicas acknowledged it within {} ms: a failover now could lose it; retry",
            timeout.as_millis()
        )));
    }
    Ok(())
}
