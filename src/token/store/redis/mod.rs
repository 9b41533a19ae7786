//! The Redis store, for a fleet of instances sharing state: one Redis, or a Redis Cluster
//! (every key of a family shares the hash tag `{<family id>}`, so each script touches one
//! slot).
//!
//! Keys: `ts:fam:{F}` (hash: current, generation, revoked, expires_at, data, client) and
//! `ts:fam:{F}:retired` (list of used token hashes, newest first, the newest
//! [`MAX_RETIRED`] kept), both expiring with the family;
//! `ts:deny:<jti>` expiring with the access token; `ts:once:<key>` (DPoP proofs seen)
//! expiring when the proof could no longer be accepted. Every decision is one Lua script, so it
//! is atomic: of many instances presenting one refresh token at once, exactly one rotates.
//! Creating a family decides nothing and is a MULTI/EXEC transaction instead (cheaper for
//! Redis; see `create_in_transaction`), or the `CREATE` script when a cluster's slot moved.
//!
//! A Redis that may evict keys is refused when the store connects (see the `eviction` module).

mod address;
mod eviction;
mod replication;

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncCommands, Cmd, Pipeline, RedisFuture, Script, Value};
use zeroize::Zeroizing;

pub use address::plaintext_remote_host;

use super::{FamilyRecord, MAX_RETIRED, Rotation, Store, StoreError};
use crate::token::refresh::{FamilyId, SecretHash};

const ROTATE: &str = r#"
local f = redis.call('HMGET', KEYS[1], 'current', 'revoked', 'expires_at', 'generation')
if not f[1] or tonumber(f[3]) <= tonumber(ARGV[3]) then return 'unknown' end
if f[2] == '1' then return 'revoked' end
if f[1] == ARGV[1] then
  redis.call('HSET', KEYS[1], 'current', ARGV[2], 'generation', tonumber(f[4]) + 1)
  local retired = redis.call('LPUSH', KEYS[2], ARGV[1])
  if retired == 1 then redis.call('EXPIREAT', KEYS[2], f[3]) end
  if retired > tonumber(ARGV[4]) then redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[4]) - 1) end
  return 'rotated'
end
if redis.call('LPOS', KEYS[2], ARGV[1]) then
  redis.call('HSET', KEYS[1], 'revoked', '1')
  return 'reused'
end
return 'unknown'
"#;

/// Creates a family, or revokes the one holding the id (see
/// `RedisStore::create_in_transaction`, the usual way; this one is used when a transaction
/// was redirected).
const CREATE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'revoked', '1')
  return 0
end
redis.call('HSET', KEYS[1], 'current', ARGV[1], 'generation', ARGV[2], 'revoked', ARGV[3], 'expires_at', ARGV[4], 'data', ARGV[5], 'client', ARGV[6])
redis.call('EXPIREAT', KEYS[1], ARGV[4])
return 1
"#;

/// The fields of a family hash (see the module documentation).
const FAMILY_FIELDS: usize = 6;

/// Denies a jti until ARGV[1], keeping the later expiry if it is denied twice. The last
/// write re-asserts the denial even when nothing changed: a repeated denial (the retry an
/// unacknowledged one asks for) then writes, and the WAIT after it covers the first.
const DENY: &str = r#"
redis.call('SET', KEYS[1], '1', 'NX', 'EXAT', ARGV[1])
redis.call('EXPIREAT', KEYS[1], ARGV[1], 'GT')
redis.call('SET', KEYS[1], '1', 'KEEPTTL')
return 1
"#;

/// Revokes a live family: 1 when it was live, 0 when it was already revoked (re-asserted,
/// as [`DENY`] does, so that a retry waits for the replicas), -1 when there is no live
/// family (nothing written).
const REVOKE: &str = r#"
local f = redis.call('HMGET', KEYS[1], 'revoked', 'expires_at')
if not f[2] or tonumber(f[2]) <= tonumber(ARGV[1]) then return -1 end
redis.call('HSET', KEYS[1], 'revoked', '1')
if f[1] == '1' then return 0 end
return 1
"#;

/// A connection to one Redis or to a cluster; both reconnect by themselves.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// TLS material for Redis: the CA certificates to trust (PEM) and an optional client
/// certificate with its key. The key is zeroized when this is dropped; the Redis client
/// keeps its own parsed copy for as long as it connects.
pub struct RedisTls {
    ca_pem: Vec<u8>,
    client: Option<(Vec<u8>, Zeroizing<Vec<u8>>)>,
}

impl RedisTls {
    /// Trust `ca_pem`; present `client` (certificate chain, key; PEM) when given.
    pub fn new(ca_pem: Vec<u8>, client: Option<(Vec<u8>, Zeroizing<Vec<u8>>)>) -> Self {
        Self { ca_pem, client }
    }

    fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.to_vec(),
                }),
            root_cert: Some(self.ca_pem.clone()),
        }
    }
}

/// How the store reaches Redis: over TLS or not, and how long it waits.
#[derive(Debug)]
pub struct RedisOptions {
    /// TLS for `rediss://` URLs: the CA to trust and an optional client certificate.
    pub tls: Option<RedisTls>,
    /// The longest a connection attempt may take.
    pub connect_timeout: Duration,
    /// The longest a command waits for its answer before it fails as unavailable: what
    /// a call waits on a Redis that stopped answering (`tokens.redis_response_timeout`).
    pub response_timeout: Duration,
    /// Replicas that must acknowledge each revocation before it is reported done (0: none
    /// waited for); see `tokens.redis_revocation_replicas`.
    pub revocation_replicas: usize,
}

/// The default connect and response timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            tls: None,
            connect_timeout: DEFAULT_TIMEOUT,
            response_timeout: DEFAULT_TIMEOUT,
            revocation_replicas: 0,
        }
    }
}

impl RedisOptions {
    /// The default timeouts, over TLS with `tls`.
    pub fn with_tls(tls: RedisTls) -> Self {
        Self {
            tls: Some(tls),
            ..Self::default()
        }
    }
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field("client_certificate", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

/// The Redis store.
#[derive(Clone)]
pub struct RedisStore {
    connection: Connection,
    /// Replicas each revocation waits for (see [`replication`]), and for how long.
    revocation_replicas: usize,
    replica_wait: Duration,
    rotate: Script,
    create: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never shown.
        f.write_str("RedisStore")
    }
}

fn unavailable(error: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {error}"))
}

/// Whether a transaction was refused because its slot lives on another node now.
fn redirected(error: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    error.kind() == ErrorKind::Server(ServerErrorKind::ExecAbort)
        && error.clone().into_server_errors().is_some_and(|errors| {
            errors.iter().any(|(_, e)| {
                matches!(
                    e.kind(),
                    Some(ServerErrorKind::Moved | ServerErrorKind::Ask)
                )
            })
        })
}

fn family_key(family: &FamilyId) -> String {
    format!("ts:fam:{{{family}}}")
}

fn retired_key(family: &FamilyId) -> String {
    format!("ts:fam:{{{family}}}:retired")
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port/db`). The connection reconnects by itself after
    /// an outage; calls made meanwhile fail as unavailable.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, &RedisOptions::default()).await
    }

    /// Connects to `url` with `options`; with TLS, the URL must be `rediss://`, and only
    /// servers with a certificate from its CA are trusted.
    pub async fn connect_with(url: &str, options: &RedisOptions) -> Result<Self, StoreError> {
        let client = match &options.tls {
            Some(tls) => redis::Client::build_with_tls(url, tls.certificates()),
            None => redis::Client::open(url),
        }
        .map_err(|e| StoreError::Unavailable(format!("redis URL: {e}")))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(std::time::Duration::from_millis(500));
        let connection = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(unavailable)?;
        let mut connection = Connection::Single(connection);
        eviction::check(&mut connection).await?;
        Ok(Self::with(connection, options))
    }

    /// Connects to a Redis Cluster through any of `seeds` (`redis://host:port`). Slot moves
    /// and failovers are followed by the client; calls during a failover fail as unavailable.
    pub async fn connect_cluster(seeds: &[String]) -> Result<Self, StoreError> {
        Self::connect_cluster_with(seeds, &RedisOptions::default()).await
    }

    /// As [`RedisStore::connect_cluster`], with `options`; with TLS, every node over TLS
    /// (`rediss://` seeds).
    pub async fn connect_cluster_with(
        seeds: &[String],
        options: &RedisOptions,
    ) -> Result<Self, StoreError> {
        let mut builder = redis::cluster::ClusterClient::builder(seeds.iter().map(String::as_str))
            .connection_timeout(options.connect_timeout)
            .response_timeout(options.response_timeout)
            .retries(3);
        if let Some(tls) = &options.tls {
            builder = builder.certs(tls.certificates());
        }
        let client = builder
            .build()
            .map_err(|e| StoreError::Unavailable(format!("redis cluster seeds: {e}")))?;
        let connection = client.get_async_connection().await.map_err(unavailable)?;
        let mut connection = Connection::Cluster(connection);
        eviction::check(&mut connection).await?;
        Ok(Self::with(connection, options))
    }

    /// Creates a family with a transaction, not a script: issuance is the hottest write,
    /// and Redis runs this in about half the CPU of an EVALSHA (6 µs against 11 µs
    /// measured), on the one thread a fleet shares. It cannot refuse an existing key, so it
    /// detects one after the fact: HSET counts the fields it added, and fewer than all means
    /// the id was taken. A 128-bit random id repeats only if the RNG is broken; the family
    /// that held it now holds a mix of two grants, so it is revoked (`false` is returned).
    async fn create_in_transaction(
        &self,
        key: &str,
        record: &FamilyRecord,
    ) -> Result<bool, redis::RedisError> {
        let (added,): (usize,) = redis::pipe()
            .atomic()
            .cmd("HSET")
            .arg(key)
            .arg("current")
            .arg(record.current.as_stored())
            .arg("generation")
            .arg(record.generation)
            .arg("revoked")
            .arg(if record.revoked { "1" } else { "0" })
            .arg("expires_at")
            .arg(record.expires_at)
            .arg("data")
            .arg(&record.data)
            .arg("client")
            .arg(&record.client_id)
            .cmd("EXPIREAT")
            .arg(key)
            .arg(record.expires_at)
            .ignore()
            .query_async(&mut self.connection.clone())
            .await?;
        if added == FAMILY_FIELDS {
            return Ok(true);
        }
        redis::cmd("HSET")
            .arg(key)
            .arg("revoked")
            .arg("1")
            .query_async::<i64>(&mut self.connection.clone())
            .await?;
        Ok(false)
    }

    /// Creates a family with [`CREATE`]: what the transaction does, as one keyed command.
    async fn create_by_script(
        &self,
        key: &str,
        record: &FamilyRecord,
    ) -> Result<bool, redis::RedisError> {
        let created: i64 = self
            .create
            .key(key)
            .arg(record.current.as_stored())
            .arg(record.generation)
            .arg(if record.revoked { "1" } else { "0" })
            .arg(record.expires_at)
            .arg(&record.data)
            .arg(&record.client_id)
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(created == 1)
    }

    fn with(connection: Connection, options: &RedisOptions) -> Self {
        Self {
            connection,
            revocation_replicas: options.revocation_replicas,
            // Shorter than the response timeout, so that WAIT answers before the client
            // gives up on it and the error can say what happened.
            replica_wait: options.response_timeout * 3 / 4,
            rotate: Script::new(ROTATE),
            create: Script::new(CREATE),
        }
    }

    /// After a revocation written under `key`: waits for the replicas asked for.
    async fn replicated(&self, key: &str) -> Result<(), StoreError> {
        replication::acknowledged(
            &self.connection,
            key,
            self.revocation_replicas,
            self.replica_wait,
        )
        .await
    }

    /// Runs `write`, a revocation script on one key answering an integer, with the wait for
    /// the replicas asked for (see [`replication::write_acknowledged`]): its answer, and
    /// whether they acknowledged it. The scripts go as EVAL with their text, not EVALSHA:
    /// inside a pipeline a NOSCRIPT answer (from a restarted or newly promoted Redis) could
    /// not be retried with the text as [`Script`] does, and revocations are rare enough that
    /// the extra bytes cost nothing.
    async fn revocation(&self, write: Cmd) -> Result<(i64, Result<(), StoreError>), StoreError> {
        replication::write_acknowledged(
            &self.connection,
            write,
            self.revocation_replicas,
            self.replica_wait,
        )
        .await
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn create_family(
        &self,
        family: &FamilyId,
        record: FamilyRecord,
    ) -> Result<(), StoreError> {
        let key = family_key(family);
        let created = match self.create_in_transaction(&key, &record).await {
            // Resharding moved the family's slot since the client read the slot map. The
            // client follows MOVED and ASK only for a command that gets them itself, not
            // inside an aborted transaction: the script is redirected and refreshes the map.
            Err(error) if redirected(&error) => self.create_by_script(&key, &record).await,
            other => other,
        }
        .map_err(unavailable)?;
        if created {
            Ok(())
        } else {
            Err(StoreError::Exists)
        }
    }

    async fn get_family(
        &self,
        family: &FamilyId,
        now: u64,
    ) -> Result<Option<FamilyRecord>, StoreError> {
        let fields: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(family_key(family))
            .arg(&[
                "current",
                "generation",
                "revoked",
                "expires_at",
                "data",
                "client",
            ])
            .query_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        let [
            Some(current),
            Some(generation),
            Some(revoked),
            Some(expires_at),
            Some(data),
            Some(client_id),
        ] = <[Option<String>; 6]>::try_from(fields).unwrap_or_default()
        else {
            return Ok(None);
        };
        let expires_at: u64 = expires_at.parse().unwrap_or(0);
        if expires_at <= now {
            return Ok(None);
        }
        let current = SecretHash::from_stored(&current)
            .ok_or_else(|| StoreError::Unavailable("corrupt family record".into()))?;
        Ok(Some(FamilyRecord {
            current,
            retired: Vec::new(),
            generation: generation.parse().unwrap_or(0),
            revoked: revoked == "1",
            expires_at,
            client_id,
            data,
        }))
    }

    async fn rotate(
        &self,
        family: &FamilyId,
        presented: &SecretHash,
        next: SecretHash,
        now: u64,
    ) -> Result<Rotation, StoreError> {
        let key = family_key(family);
        let outcome: String = self
            .rotate
            .key(&key)
            .key(retired_key(family))
            .arg(presented.as_stored())
            .arg(next.as_stored())
            .arg(now)
            .arg(MAX_RETIRED)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        Ok(match outcome.as_str() {
            "rotated" => Rotation::Rotated,
            "reused" => {
                // Reuse revoked the family: wait for the replicas as a revocation does, but
                // report the reuse whatever they answer, so that it is audited and refused.
                if let Err(error) = self.replicated(&key).await {
                    tracing::warn!(%error, "family revoked on reuse detection");
                }
                Rotation::Reused
            }
            "revoked" => Rotation::Revoked,
            _ => Rotation::Unknown,
        })
    }

    async fn revoke_family(&self, family: &FamilyId, now: u64) -> Result<bool, StoreError> {
        let key = family_key(family);
        let mut revoke = redis::cmd("EVAL");
        revoke.arg(REVOKE).arg(1).arg(&key).arg(now);
        let (outcome, acknowledged) = self.revocation(revoke).await?;
        match outcome {
            // No live family: nothing was written, so nothing is waited for.
            -1 => Ok(false),
            // Already revoked, perhaps by an attempt whose replicas did not answer: the
            // retry is done only once they hold it.
            0 => acknowledged.map(|()| false),
            _ => acknowledged.map(|()| true),
        }
    }

    async fn family_active(&self, family: &FamilyId, now: u64) -> Result<bool, StoreError> {
        let fields: (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(family_key(family))
            .arg(&["revoked", "expires_at"])
            .query_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        Ok(
            matches!(fields, (Some(revoked), Some(expires_at)) if revoked == "0" && expires_at > now),
        )
    }

    async fn deny_jti(&self, jti: &str, until: u64) -> Result<(), StoreError> {
        let key = format!("ts:deny:{jti}");
        // One script on one key: keeps the later expiry if the jti is denied twice.
        let mut deny = redis::cmd("EVAL");
        deny.arg(DENY).arg(1).arg(&key).arg(until);
        let (_, acknowledged) = self.revocation(deny).await?;
        acknowledged
    }

    async fn is_denied(&self, jti: &str, _now: u64) -> Result<bool, StoreError> {
        self.connection
            .clone()
            .exists(format!("ts:deny:{jti}"))
            .await
            .map_err(unavailable)
    }

    async fn first_use(&self, key: &str, until: u64, now: u64) -> Result<bool, StoreError> {
        // SET NX with an absolute expiry: one atomic step, on one key (any cluster node).
        let answer: Option<String> = redis::cmd("SET")
            .arg(format!("ts:once:{key}"))
            .arg(1)
            .arg("NX")
            .arg("EXAT")
            .arg(until.max(now + 1))
            .query_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        Ok(answer.is_some())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.connection.clone())
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}
