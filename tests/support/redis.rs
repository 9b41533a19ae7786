//! A real `redis-server` on a free loopback port, stopped when dropped; it can be killed
//! and restarted on the same port to test outages.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::require_tool;

/// A running redis-server.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// TLS settings of a server that speaks only TLS on `port`; empty for plaintext.
    tls: Vec<String>,
}

fn pong(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

impl RedisServer {
    /// Starts a server, or returns None (skipping) when redis-server is missing outside CI.
    pub fn start() -> Option<Self> {
        require_tool("redis-server")?;
        let mut server = Self {
            child: None,
            port: super::ports::free_port(),
            dir: tempfile::tempdir().unwrap(),
            tls: Vec::new(),
        };
        server.launch();
        Some(server)
    }

    /// Starts a server that speaks only TLS, with the certificate `cert`/`key` and, when
    /// `client_certificates`, requiring clients to present a certificate `ca` signed.
    pub fn start_tls(
        ca: &Path,
        cert: &Path,
        key: &Path,
        client_certificates: bool,
    ) -> Option<Self> {
        require_tool("redis-server")?;
        let path = |p: &Path| p.display().to_string();
        let mut server = Self {
            child: None,
            port: super::ports::free_port(),
            dir: tempfile::tempdir().unwrap(),
            tls: vec![
                "--tls-cert-file".into(),
                path(cert),
                "--tls-key-file".into(),
                path(key),
                "--tls-ca-cert-file".into(),
                path(ca),
                "--tls-auth-clients".into(),
                if client_certificates { "yes" } else { "no" }.into(),
            ],
        };
        server.launch();
        Some(server)
    }

    fn launch(&mut self) {
        let ports: [String; 2] = if self.tls.is_empty() {
            ["--port".into(), self.port.to_string()]
        } else {
            ["--tls-port".into(), self.port.to_string()]
        };
        let child = Command::new("redis-server")
            .args(if self.tls.is_empty() {
                &[][..]
            } else {
                &["--port", "0"][..]
            })
            .args(&ports)
            .args(&self.tls)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let started = Instant::now();
        let ready = || {
            if self.tls.is_empty() {
                pong(self.port)
            } else {
                TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            }
        };
        while !ready() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "redis-server did not answer"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis-cli` against this (plaintext) server; its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli_with(&[], self.port, args)
    }

    /// `rediss://127.0.0.1:PORT`, for a server started with [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: no goodbye to clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers, as with a
    /// Redis stalled by a long command or a paused VM.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("redis-server is running");
        send_signal(child, signal);
    }

    /// Starts it again on the same port (empty, as after a crash without persistence).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A 6-node Redis Cluster (3 masters, 3 replicas) on loopback, stopped when dropped.
pub struct RedisCluster {
    nodes: Vec<(u16, Option<Child>)>,
    _dir: tempfile::TempDir,
    /// `redis-cli` arguments for a cluster that speaks only TLS; empty for plaintext.
    cli_tls: Vec<String>,
}

fn send_signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {signal} failed");
}

fn redis_cli_with(tls: &[String], port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(tls)
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster and waits until it is whole.
    pub fn start() -> Option<Self> {
        Self::start_with(None)
    }

    /// As [`RedisCluster::start`], with every node speaking only TLS (clients, the cluster
    /// bus and replication) with `pki`'s `redis` certificate, and requiring client
    /// certificates from its CA.
    pub fn start_tls(pki: &super::pki::Pki) -> Option<Self> {
        Self::start_with(Some(pki))
    }

    fn start_with(pki: Option<&super::pki::Pki>) -> Option<Self> {
        require_tool("redis-server")?;
        require_tool("redis-cli")?;
        let dir = tempfile::tempdir().unwrap();
        let ports = super::ports::free_ports(12);
        let mut nodes = Vec::new();
        for i in 0..6 {
            let (port, bus) = (ports[i], ports[i + 6]);
            let node_dir = dir.path().join(port.to_string());
            std::fs::create_dir(&node_dir).unwrap();
            let path = |name: &str| pki.map(|pki| pki.path(name).display().to_string());
            let tls: Vec<String> = match (path("ca.pem"), path("redis.pem"), path("redis.key")) {
                (Some(ca), Some(cert), Some(key)) => [
                    "--port",
                    "0",
                    "--tls-port",
                    &port.to_string(),
                    "--tls-cluster",
                    "yes",
                    "--tls-replication",
                    "yes",
                    "--tls-cert-file",
                    &cert,
                    "--tls-key-file",
                    &key,
                    "--tls-ca-cert-file",
                    &ca,
                    "--tls-auth-clients",
                    "yes",
                ]
                .map(str::to_owned)
                .to_vec(),
                _ => vec!["--port".into(), port.to_string()],
            };
            let child = Command::new("redis-server")
                .args(&tls)
                .args(["--cluster-port", &bus.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
                .args([
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-replica-validity-factor",
                    "0",
                ])
                .args([
                    "--repl-diskless-sync-delay",
                    "0",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(&node_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server");
            nodes.push((port, Some(child)));
        }
        let cli_tls: Vec<String> = match pki {
            Some(pki) => [
                "--tls".into(),
                "--cacert".into(),
                pki.path("ca.pem").display().to_string(),
                "--cert".into(),
                pki.path("client.pem").display().to_string(),
                "--key".into(),
                pki.path("client.key").display().to_string(),
            ]
            .to_vec(),
            None => Vec::new(),
        };
        // Owned from here on: a failure below drops it, and its Drop stops every node.
        let cluster = Self {
            nodes,
            _dir: dir,
            cli_tls,
        };
        let started = Instant::now();
        for (port, _) in &cluster.nodes {
            let ready = |port: u16| match pki {
                Some(_) => TcpStream::connect(("127.0.0.1", port)).is_ok(),
                None => pong(port),
            };
            while !ready(*port) {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "cluster node did not answer"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .args(&cluster.cli_tls)
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stdout)
        );
        cluster.wait_until_whole(Duration::from_secs(30));
        Some(cluster)
    }

    /// Waits until every live node says `cluster_state:ok` and every replica's link is up.
    pub fn wait_until_whole(&self, limit: Duration) {
        let started = Instant::now();
        loop {
            let whole = self.live_ports().iter().all(|port| {
                let info = self.cli(*port, &["cluster", "info"]);
                let replication = self.cli(*port, &["info", "replication"]);
                info.contains("cluster_state:ok")
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"))
            });
            if whole {
                return;
            }
            assert!(started.elapsed() < limit, "cluster did not become whole");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|(_, c)| c.is_some())
            .map(|(p, _)| *p)
            .collect()
    }

    /// Moves the (empty) hash slot of `key` to another master, as resharding does, without
    /// telling any client: a client with the old slot map gets MOVED. Returns the slot.
    pub fn move_slot_of(&self, key: &str) -> u16 {
        let any = self.live_ports()[0];
        let slot: u16 = self
            .cli(any, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .expect("a slot number");
        let nodes = self.cli(any, &["cluster", "nodes"]);
        // <id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slot ranges...>
        let masters: Vec<(String, u16, Vec<String>)> = nodes
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.len() >= 8 && f[2].contains("master") && !f[2].contains("fail"))
            .map(|f| {
                let port = f[1]
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .expect("a port");
                let ranges = f[8..].iter().map(|r| (*r).to_owned()).collect();
                (f[0].to_owned(), port, ranges)
            })
            .collect();
        let holds = |ranges: &[String]| {
            ranges.iter().any(|range| match range.split_once('-') {
                Some((a, b)) => {
                    (a.parse().unwrap_or(u16::MAX)..=b.parse().unwrap_or(0)).contains(&slot)
                }
                None => range.parse() == Ok(slot),
            })
        };
        let (owner_id, owner_port, _) = masters
            .iter()
            .find(|(_, _, ranges)| holds(ranges))
            .expect("a master holds the slot");
        // Another master serving slots (a new cluster's replicas can still look like
        // masters without slots to some nodes for a moment).
        let (target_id, target_port, _) = masters
            .iter()
            .find(|(id, _, ranges)| id != owner_id && !ranges.is_empty())
            .expect("another master");
        let slot_text = slot.to_string();
        let keys = self.cli(*owner_port, &["cluster", "countkeysinslot", &slot_text]);
        assert_eq!(keys.trim(), "0", "only an empty slot is moved");
        let set = |port: u16, args: &[&str]| {
            let answer = self.cli(port, &[&["cluster", "setslot", &slot_text], args].concat());
            assert_eq!(answer.trim(), "OK", "{port} {args:?}: {answer}");
        };
        set(*target_port, &["importing", owner_id]);
        set(*owner_port, &["migrating", target_id]);
        for (_, port, _) in masters.iter().filter(|(_, _, ranges)| !ranges.is_empty()) {
            set(*port, &["node", target_id]);
        }
        slot
    }

    /// `redis-cli` against one node, over TLS for a TLS cluster.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        redis_cli_with(&self.cli_tls, port, args)
    }

    /// Seed URLs.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|(p, _)| {
                let scheme = if self.cli_tls.is_empty() {
                    "redis"
                } else {
                    "rediss"
                };
                format!("{scheme}://127.0.0.1:{p}")
            })
            .collect()
    }

    /// Keys held by the cluster (the sum over its masters).
    pub fn key_count(&self) -> u64 {
        self.masters()
            .into_iter()
            .map(|port| {
                self.cli(port, &["dbsize"])
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0)
            })
            .sum()
    }

    /// Ports of the live masters.
    pub fn masters(&self) -> Vec<u16> {
        self.live_ports()
            .into_iter()
            .filter(|p| {
                self.cli(*p, &["info", "replication"])
                    .contains("role:master")
            })
            .collect()
    }

    /// Waits until every master's replicas have caught up: each replica's offset equals its
    /// master's `master_repl_offset`. (`WAIT` would not do from another connection: it only
    /// waits for the writes of the connection that sends it.)
    pub fn sync_replicas(&self) {
        let started = Instant::now();
        for port in self.masters() {
            loop {
                let info = self.cli(port, &["info", "replication"]);
                let master_offset: Option<u64> = info
                    .lines()
                    .find_map(|l| l.strip_prefix("master_repl_offset:"))
                    .and_then(|v| v.trim().parse().ok());
                let replica_offsets: Vec<u64> = info
                    .lines()
                    .filter(|l| l.starts_with("slave") && l.contains("offset="))
                    .filter_map(|l| l.split(',').find_map(|f| f.strip_prefix("offset=")))
                    .filter_map(|v| v.trim().parse().ok())
                    .collect();
                if let Some(offset) = master_offset
                    && !replica_offsets.is_empty()
                    && replica_offsets.iter().all(|r| *r >= offset)
                {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "replicas of {port} did not catch up"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Stops one node without closing its connections (SIGSTOP), or lets it run again
    /// (`resume`: SIGCONT).
    pub fn pause(&self, port: u16, resume: bool) {
        let (_, child) = self
            .nodes
            .iter()
            .find(|(p, _)| *p == port)
            .expect("a node on that port");
        let child = child.as_ref().expect("the node is running");
        send_signal(child, if resume { "-CONT" } else { "-STOP" });
    }

    /// Waits until every master has a replica online (a cluster is whole before its
    /// replicas have finished their first sync).
    pub fn wait_for_online_replicas(&self, limit: Duration) {
        let started = Instant::now();
        for port in self.masters() {
            while !self
                .cli(port, &["info", "replication"])
                .lines()
                .any(|l| l.starts_with("slave0:") && l.contains("state=online"))
            {
                assert!(
                    started.elapsed() < limit,
                    "master {port} has no replica online"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The port of a replica of the master on `port`.
    pub fn replica_of(&self, port: u16) -> u16 {
        self.cli(port, &["info", "replication"])
            .lines()
            .find_map(|l| l.strip_prefix("slave0:"))
            .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("port=")))
            .and_then(|p| p.trim().parse().ok())
            .expect("the master has a replica")
    }

    /// Kills one node (SIGKILL).
    pub fn kill(&mut self, port: u16) {
        for (p, child) in &mut self.nodes {
            if *p == port
                && let Some(mut c) = child.take()
            {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
