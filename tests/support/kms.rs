//! A local KMS-compatible server for tests: moto's server, started through
//! `scripts/moto-kms-server.py` (which makes moto refuse what AWS refuses), on a free
//! loopback port, stopped when dropped. It can be killed to test outages, and reset.
//! Self-contained, so the KMS benchmark includes it too.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use token_service::backends::aws_kms::{AwsKmsBackend, AwsKmsOptions};
use token_service::backends::{Algorithm, Backend, KeyRef};

/// Whether a missing moto must fail (CI) rather than skip.
fn strict() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// How moto is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// Through the launcher: AWS's documented behaviour.
    Aws,
    /// Plain `moto_server`, with its known differences from AWS.
    PlainMoto,
    /// The launcher, with Decrypt answering no Plaintext (a malformed answer).
    DecryptWithoutPlaintext,
}

/// A running moto server.
pub struct MotoKms {
    child: Option<Child>,
    pub port: u16,
    flavour: Flavour,
    log: tempfile::NamedTempFile,
}

fn launcher() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/moto-kms-server.py")
}

/// A raw HTTP/1.1 request; the status code, or None if nothing answered.
fn http(port: u16, method: &str, path: &str) -> Option<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    reply.split(' ').nth(1)?.parse().ok()
}

/// The Python that has moto: `MOTO_PYTHON` (set by scripts/test.sh), else `python3`.
fn python() -> String {
    std::env::var("MOTO_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn moto_installed() -> bool {
    Command::new(python())
        .args(["-c", "import moto.server, moto.kms"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl MotoKms {
    /// Starts a server behaving as AWS documents, or returns None (skipping) when moto is
    /// not installed outside CI.
    pub fn start() -> Option<Self> {
        Self::start_flavour(Flavour::Aws)
    }

    /// Starts a server of the given flavour.
    pub fn start_flavour(flavour: Flavour) -> Option<Self> {
        if !moto_installed() {
            assert!(
                !strict(),
                "moto[server] is required with CI=true; scripts/test.sh installs it"
            );
            eprintln!("SKIPPED: moto[server] not installed (run scripts/test.sh)");
            return None;
        }
        let mut server = Self {
            child: None,
            port: super::ports::free_port(),
            flavour,
            log: tempfile::NamedTempFile::new().unwrap(),
        };
        server.launch();
        Some(server)
    }

    fn launch(&mut self) {
        let port = self.port.to_string();
        let mut command = match self.flavour {
            Flavour::Aws | Flavour::DecryptWithoutPlaintext => {
                let mut c = Command::new(python());
                c.arg(launcher())
                    .args(["--host", "127.0.0.1", "--port", &port]);
                if self.flavour == Flavour::DecryptWithoutPlaintext {
                    c.args(["--fault", "decrypt-without-plaintext"]);
                }
                c
            }
            Flavour::PlainMoto => {
                let mut c = Command::new(python());
                c.args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port]);
                c
            }
        };
        let log = self.log.reopen().unwrap();
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the moto server");
        self.child = Some(child);
        let started = Instant::now();
        while http(self.port, "POST", "/moto-api/reset") != Some(200) {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("moto server exited ({status}):\n{}", self.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "moto server did not answer:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the server wrote to stderr (its request log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Forgets every key and alias.
    pub fn reset(&self) {
        assert_eq!(http(self.port, "POST", "/moto-api/reset"), Some(200));
    }

    /// Kills the server (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty (moto keeps nothing across restarts).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// An SDK configuration for this server: test credentials, us-east-1.
    pub fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_kms::config::SharedCredentialsProvider::new(
                aws_sdk_kms::config::Credentials::new("testing", "testing", None, None, "tests"),
            ))
            .endpoint_url(self.endpoint())
            .build()
    }

    /// A raw SDK client on this server.
    pub fn client(&self) -> aws_sdk_kms::Client {
        aws_sdk_kms::Client::new(&self.sdk_config())
    }

    /// Creates a SIGN_VERIFY key of `spec` outside the service (as a team's existing key
    /// would be) and returns its id.
    pub async fn create_signing_key(&self, spec: aws_sdk_kms::types::KeySpec) -> String {
        self.client()
            .create_key()
            .key_spec(spec)
            .key_usage(aws_sdk_kms::types::KeyUsageType::SignVerify)
            .send()
            .await
            .expect("CreateKey")
            .key_metadata()
            .expect("key metadata")
            .key_id()
            .to_owned()
    }

    /// Backend options pointing at this server, with a short metadata TTL.
    pub fn options(&self) -> AwsKmsOptions {
        let mut options = AwsKmsOptions::new();
        options.endpoint_url = Some(self.endpoint());
        options.region = Some("us-east-1".into());
        options.rsa_bits = token_service::backends::software::material::RsaBits::B2048;
        options.metadata_ttl = Duration::from_millis(200);
        options.connect_timeout = Duration::from_millis(500);
        options.request_timeout = Duration::from_secs(5);
        options
    }

    /// A backend on this server with `options`.
    pub fn backend(&self, options: AwsKmsOptions) -> AwsKmsBackend {
        AwsKmsBackend::from_sdk_config(&self.sdk_config(), options).unwrap()
    }
}

impl Drop for MotoKms {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `token-cache/aes` ring made on `backend`, and two plaintexts: one small enough for a
/// direct KMS Encrypt, one that needs a data key.
pub async fn aes_ring_and_plaintexts(backend: &AwsKmsBackend) -> (KeyRef, [Vec<u8>; 2]) {
    let ring = KeyRef::new("token-cache", "aes").unwrap();
    backend
        .generate_key(&ring, Algorithm::A256Gcm)
        .await
        .unwrap();
    let small = b"family record".to_vec();
    let large: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    (ring, [small, large])
}
