//! Runs the real `token-service` binary: one-shot CLI commands, and `serve` as a child
//! process on a free loopback port (port 0; the bound address is read from its log).
//! Processes are killed when their handle drops.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_token-service")
}

/// Whether a missing external dependency must fail the test (CI) rather than skip it.
pub fn strict() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Returns the path of `tool` on PATH. Without it: panics under CI=true, otherwise prints
/// why the test is skipped and returns None.
pub fn require_tool(tool: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            !strict(),
            "{tool} is required with CI=true; scripts/test.sh installs it"
        );
        eprintln!("SKIPPED: {tool} not found (run scripts/test.sh to install test dependencies)");
    }
    found
}

/// A temporary directory holding a config file and the key data directory.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    /// A sandbox with the default configuration, its data directory inside the sandbox and
    /// the admin endpoint on a free port. `extra` is appended to the TOML.
    pub fn new(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let sandbox = Self { dir };
        let config = default_config(&sandbox.data_dir(), extra);
        sandbox.write_config(&config);
        sandbox
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(self.config_path(), text).expect("write config");
    }

    /// Starts `serve` with this sandbox's config (see [`ServiceProcess::start`]).
    pub fn serve(&self) -> ServiceProcess {
        ServiceProcess::start(Some(&self.config_path()), self.dir.path())
    }

    /// Starts `serve` with this sandbox's config and `env` from async code: the start
    /// blocks while it waits for the service, so it runs on a blocking thread.
    pub async fn serve_async(&self, env: &[(&str, &str)]) -> ServiceProcess {
        let (config, cwd) = (self.config_path(), self.dir.path().to_path_buf());
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            ServiceProcess::start_with_env(Some(&config), &cwd, &env)
        })
        .await
        .expect("service start")
    }

    /// Runs a CLI command with this sandbox's config (no CI/RUST_LOG leaking in).
    pub fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        self.run_with_env(args, stdin, &[])
    }

    /// A token for `alice` (scope `read`) from `service`, as `client generate` prints it.
    pub fn generate_token(&self, service: &ServiceProcess) -> serde_json::Value {
        let address = format!("http://{}", service.grpc);
        let generated = self.run(
            &[
                "client",
                "--address",
                &address,
                "generate",
                "--subject",
                "alice",
                "--scope",
                "read",
            ],
            None,
        );
        assert!(
            generated.status.success(),
            "{}",
            String::from_utf8_lossy(&generated.stderr)
        );
        serde_json::from_slice(&generated.stdout).expect("client generate prints JSON")
    }

    pub fn run_with_env(
        &self,
        args: &[&str],
        stdin: Option<&[u8]>,
        env: &[(&str, &str)],
    ) -> Output {
        run_cli(Some(&self.config_path()), self.dir.path(), args, stdin, env)
    }
}

/// The embedded default with the data dir and admin port replaced.
pub fn default_config(data_dir: &Path, extra: &str) -> String {
    let base = include_str!("../../config/default.toml")
        .replace("data/keys", &data_dir.display().to_string())
        .replace("127.0.0.1:9464", "127.0.0.1:0")
        .replace("host = \"0.0.0.0\"", "host = \"127.0.0.1\"")
        .replace("port = 50052", "port = 0")
        .replace("0.0.0.0:8080", "127.0.0.1:0");
    format!("{base}\n{extra}\n")
}

/// Runs the binary once.
pub fn run_cli(
    config: Option<&Path>,
    cwd: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
    env: &[(&str, &str)],
) -> Output {
    let mut command = cli_command(config, cwd, args, env);
    command.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = command.spawn().expect("spawn token-service");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input).expect("write stdin");
    }
    child.wait_with_output().expect("wait token-service")
}

/// Runs a command that must exit by itself (`serve` refusing to start, say): its output, or
/// None if it was still running after `limit` (it is then killed).
pub fn run_cli_within(
    config: Option<&Path>,
    cwd: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    limit: Duration,
) -> Option<Output> {
    let mut child = cli_command(config, cwd, args, env)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn token-service");
    let started = Instant::now();
    while child.try_wait().expect("poll token-service").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(child.wait_with_output().expect("wait token-service"))
}

fn cli_command(config: Option<&Path>, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(binary());
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .env_remove("CRYPTO_FALLBACK_ENABLED")
        .env_remove("CRYPTO_KEY_NAMESPACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    command
}

/// A running `token-service serve`.
pub struct ServiceProcess {
    child: Child,
    pub admin: SocketAddr,
    pub grpc: SocketAddr,
    pub public: SocketAddr,
    log: Arc<Mutex<String>>,
}

/// Loopback-only ports for a service started without a config file.
pub const FREE_PORTS: [(&str, &str); 4] = [
    ("ADMIN_LISTEN", "127.0.0.1:0"),
    ("PUBLIC_LISTEN", "127.0.0.1:0"),
    ("HOST", "127.0.0.1"),
    ("PORT", "0"),
];

impl ServiceProcess {
    /// Starts `serve` with `config` in `cwd` (or the embedded default when `config` is None)
    /// and waits until the admin endpoint listens.
    pub fn start(config: Option<&Path>, cwd: &Path) -> Self {
        Self::start_with_env(config, cwd, &[])
    }

    /// As [`ServiceProcess::start`], with extra environment variables for the child.
    pub fn start_with_env(config: Option<&Path>, cwd: &Path, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(binary());
        for (k, v) in env {
            command.env(k, v);
        }
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let mut child = command
            .arg("serve")
            .current_dir(cwd)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn token-service serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<(String, SocketAddr)>();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                for what in ["admin endpoint", "gRPC API", "public HTTP"] {
                    let rest = ["http://", "https://"].iter().find_map(|scheme| {
                        line.split(&format!("{what} listening on {scheme}")).nth(1)
                    });
                    if let Some(rest) = rest {
                        // Text or JSON log line: the address is the run of address characters.
                        let addr: String = rest
                            .chars()
                            .take_while(|c| {
                                c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']')
                            })
                            .collect();
                        if let Ok(addr) = addr.parse() {
                            let _ = tx.send((what.to_owned(), addr));
                        }
                    }
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut found = std::collections::HashMap::new();
        while found.len() < 3 {
            match rx.recv_timeout(Duration::from_secs(120)) {
                Ok((what, addr)) => {
                    found.insert(what, addr);
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("service did not start; log:\n{}", log.lock().unwrap());
                }
            }
        }
        let admin = found["admin endpoint"];
        let grpc = found["gRPC API"];
        let public = found["public HTTP"];
        Self {
            child,
            admin,
            grpc,
            public,
            log,
        }
    }

    /// The service's log so far. The service writes its log in batches (at most
    /// `FLUSH_INTERVAL` old), so a line for a call just made may not be here yet: use
    /// [`ServiceProcess::wait_for_log`] or [`ServiceProcess::settled_log`].
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The log once every line written so far has had time to arrive: for asserting that
    /// something is *not* in it.
    pub fn settled_log(&self) -> String {
        std::thread::sleep(token_service::telemetry::batch::FLUSH_INTERVAL * 10);
        self.log()
    }

    /// Waits (up to 10 s) until the log contains `needle`; returns the log.
    pub fn wait_for_log(&self, needle: &str) -> String {
        for _ in 0..200 {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("`{needle}` never appeared in the log:\n{}", self.log());
    }

    /// A Token API client on a fresh connection to this service.
    pub async fn client(
        &self,
    ) -> token_service::api::proto::token_service_client::TokenServiceClient<
        tonic::transport::Channel,
    > {
        token_service::api::proto::token_service_client::TokenServiceClient::connect(format!(
            "http://{}",
            self.grpc
        ))
        .await
        .expect("connect to the Token API")
    }

    /// The admin `/metrics` text, fetched from async code.
    pub async fn metrics(&self) -> String {
        let admin = self.admin;
        let (status, text) = tokio::task::spawn_blocking(move || http_get(admin, "/metrics"))
            .await
            .expect("metrics fetch");
        assert_eq!(status, 200, "{text}");
        text
    }

    /// SIGTERM from async code; the service must exit 0 (in-flight calls finished).
    pub async fn stop_cleanly(self) {
        tokio::task::spawn_blocking(move || assert_eq!(self.terminate().code(), Some(0)))
            .await
            .expect("service stop");
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..200 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("service did not exit after SIGTERM; log:\n{}", self.log());
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET over a real socket: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
