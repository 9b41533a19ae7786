//! Revocations acknowledged by replicas before they are reported done.
//!
//! Redis replicates asynchronously: a revocation written to a master that fails before
//! passing it on is lost with it, and the revoked token is accepted again once a replica
//! takes over. With `tokens.redis_revocation_replicas = N`, the store sends `WAIT N` in the
//! same pipeline as each revocation (so on the connection that wrote it, to the master
//! holding the key: WAIT counts that connection's writes) and reports the revocation
//! unavailable unless N replicas acknowledged it in time. The revocation is in force on the
//! master either way; the error says it may not survive a failover, so the caller retries.
//! A retry writes again even when there is nothing left to change (the scripts re-assert
//! the revocation), so its WAIT covers the first attempt's write. A family revoked by reuse
//! detection is waited for too, but the reuse is reported whatever the replicas answer: it
//! must be audited and refused.

use std::time::Duration;

use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Value};

use super::super::StoreError;
use super::{Connection, unavailable};

/// Runs `write` (a revocation script on one key, answering an integer) and, when `replicas` are asked
/// for, WAIT in the same pipeline: WAIT counts only the writes of its own connection, so
/// one sent separately after a reconnect, or to the master that took over in a failover,
/// would count none and answer at once. Returns the answer to `write`, and whether the
/// replicas acknowledged it within `timeout` (an error saying a failover could lose it).
pub(super) async fn write_acknowledged(
    connection: &Connection,
    write: Cmd,
    replicas: usize,
    timeout: Duration,
) -> Result<(i64, Result<(), StoreError>), StoreError> {
    if replicas == 0 {
        let answer = write
            .query_async(&mut connection.clone())
            .await
            .map_err(unavailable)?;
        return Ok((answer, Ok(())));
    }
    let mut pipeline = redis::pipe();
    pipeline
        .add_command(write)
        .add_command(wait(replicas, timeout));
    // In a cluster the pipeline goes to the master of the key's slot (WAIT names no key), and
    // a MOVED or ASK after resharding sends the whole pipeline on to the new master.
    let (answer, reply) = pipeline
        .query_async::<(i64, Value)>(&mut connection.clone())
        .await
        .map_err(unavailable)?;
    Ok((answer, judge(reply, replicas, timeout)))
}

/// Waits until `replicas` replicas of the master holding `key` have every write this
/// connection made (0: returns at once), for at most `timeout`. Sent on its own, after the
/// write: for reuse detection, whose outcome stands whatever the replicas answer.
pub(super) async fn acknowledged(
    connection: &Connection,
    key: &str,
    replicas: usize,
    timeout: Duration,
) -> Result<(), StoreError> {
    if replicas == 0 {
        return Ok(());
    }
    let wait = wait(replicas, timeout);
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
    judge(reply, replicas, timeout)
}

/// `WAIT replicas timeout`.
fn wait(replicas: usize, timeout: Duration) -> Cmd {
    let mut wait = redis::cmd("WAIT");
    wait.arg(replicas).arg(
        u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1),
    );
    wait
}

/// Whether WAIT's `reply` counts `replicas` acknowledgements.
fn judge(reply: Value, replicas: usize, timeout: Duration) -> Result<(), StoreError> {
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
