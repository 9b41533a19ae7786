//! The reference Crypto Service (`token-service crypto-service`) as a child process on a
//! loopback port, with its log captured.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use super::process::binary;

/// A running reference Crypto Service.
pub struct CryptoServerProcess {
    child: Child,
    /// Its gRPC address.
    pub addr: SocketAddr,
    /// Its admin address.
    pub admin: SocketAddr,
    log: Arc<Mutex<String>>,
    config: PathBuf,
}

/// The server's config: software keys under `dir`, gRPC on `listen`, optional TLS table.
pub fn config(dir: &Path, listen: &str, tls: &str) -> String {
    format!(
        r#"
[server]
listen = "{listen}"
max_payload = 65536
{tls}
[admin]
listen = "127.0.0.1:0"

[logging]
level = "info"

[chain]
sign = ["software"]
verify = ["software"]
encrypt = ["software"]

[backends.software]
data_dir = "{}"
"#,
        dir.join("server-keys").display()
    )
}

impl CryptoServerProcess {
    /// Writes `config_text` to `dir` and starts the server with it.
    pub fn start(dir: &Path, config_text: &str) -> Self {
        let path = dir.join("crypto-service.toml");
        std::fs::write(&path, config_text).unwrap();
        Self::start_with(path)
    }

    fn start_with(config: PathBuf) -> Self {
        let mut child = Command::new(binary())
            .arg("--config")
            .arg(&config)
            .arg("crypto-service")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn token-service crypto-service");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<(bool, SocketAddr)>();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                for (grpc, marker) in [
                    (true, "Crypto Service gRPC listening on http://"),
                    (true, "Crypto Service gRPC listening on https://"),
                    (false, "admin endpoint listening on http://"),
                ] {
                    if let Some(rest) = line.split(marker).nth(1) {
                        let addr: String = rest
                            .chars()
                            .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | ':'))
                            .collect();
                        if let Ok(addr) = addr.parse() {
                            let _ = tx.send((grpc, addr));
                        }
                    }
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let (mut addr, mut admin) = (None, None);
        while addr.is_none() || admin.is_none() {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok((true, a)) => addr = Some(a),
                Ok((false, a)) => admin = Some(a),
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "crypto service did not start; log:\n{}",
                        log.lock().unwrap()
                    );
                }
            }
        }
        let addr = addr.unwrap();
        // Bound by the server itself (port 0), and bound again by `restart`.
        super::ports::taken(addr.port());
        Self {
            child,
            addr,
            admin: admin.unwrap(),
            log,
            config,
        }
    }

    /// `http://addr` (or https).
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..200 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "crypto service did not exit after SIGTERM; log:\n{}",
            self.log()
        );
    }

    /// Kills the process (SIGKILL: no goodbye to clients).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and keys.
    pub fn restart(&mut self) {
        self.kill();
        let text = std::fs::read_to_string(&self.config).unwrap();
        // The first `listen` is the gRPC one ([server] comes first): pin it to the old port.
        let first = text.lines().find(|l| l.starts_with("listen = ")).unwrap();
        let pinned = text.replacen(first, &format!("listen = \"{}\"", self.addr), 1);
        std::fs::write(&self.config, pinned).unwrap();
        let restarted = Self::start_with(self.config.clone());
        let old = std::mem::replace(self, restarted);
        drop(old);
    }
}

impl Drop for CryptoServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
