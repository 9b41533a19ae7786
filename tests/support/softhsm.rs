//! SoftHSM for tests. SoftHSM reads `SOFTHSM2_CONF` once, at `C_Initialize`, so each test
//! gets its own process: the test re-runs its own binary for just itself (`--exact NAME`),
//! with a fresh configuration and token directory, and checks the child passed.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::process::{require_tool, strict};

/// Environment variable telling a child test process where its token lives.
const CHILD_DIR: &str = "TOKEN_SERVICE_TEST_SOFTHSM_DIR";
/// Label, SO PIN and user PIN of every test token.
pub const LABEL: &str = "token-service-test";
pub const SO_PIN: &str = "so-pin-0000";
pub const PIN: &str = "user-pin-1234";

/// A SoftHSM token initialised for one test.
#[derive(Clone, Debug)]
pub struct Token {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub module: PathBuf,
    pub pin_file: PathBuf,
}

/// Where Debian puts the SoftHSM module.
pub fn module_path() -> Option<PathBuf> {
    [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

impl Token {
    fn in_dir(dir: &Path) -> Option<Self> {
        Some(Self {
            dir: dir.to_path_buf(),
            conf: dir.join("softhsm2.conf"),
            module: module_path()?,
            pin_file: dir.join("pin"),
        })
    }

    /// Creates the configuration, token directory, token and PIN file in `dir`.
    pub fn create(dir: &Path) -> Option<Self> {
        require_tool("softhsm2-util")?;
        let Some(token) = Self::in_dir(dir) else {
            assert!(
                !strict(),
                "the SoftHSM module is required with CI=true; scripts/test.sh installs softhsm2"
            );
            eprintln!("SKIPPED: SoftHSM module not found");
            return None;
        };
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).expect("token dir");
        std::fs::write(
            &token.conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .expect("softhsm conf");
        let status = Command::new("softhsm2-util")
            .args([
                "--init-token",
                "--free",
                "--label",
                LABEL,
                "--so-pin",
                SO_PIN,
                "--pin",
                PIN,
            ])
            .env("SOFTHSM2_CONF", &token.conf)
            .output()
            .expect("softhsm2-util");
        assert!(
            status.status.success(),
            "init-token failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(&token.pin_file, format!("{PIN}\n")).expect("pin file");
            std::fs::set_permissions(&token.pin_file, std::fs::Permissions::from_mode(0o600))
                .expect("chmod");
        }
        Some(token)
    }
}

/// Runs `body` with its own SoftHSM token, in a child process of this test binary.
pub fn isolated(test: &str, body: impl FnOnce(Token)) {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        let token = Token::in_dir(Path::new(&dir)).expect("child token");
        body(token);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(token) = Token::create(dir.path()) else {
        return;
    };
    let output = Command::new(std::env::current_exe().expect("test binary"))
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("SOFTHSM2_CONF", &token.conf)
        .env(CHILD_DIR, &token.dir)
        .output()
        .expect("run child test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(output.status.success(), "child test `{test}` failed");
    assert!(
        stdout.contains("1 passed"),
        "child test `{test}` did not run"
    );
}

/// Declares a test that gets its own SoftHSM token.
#[macro_export]
macro_rules! softhsm_test {
    ($(#[$meta:meta])* $name:ident, |$token:ident| $body:block) => {
        $(#[$meta])*
        #[test]
        fn $name() {
            support::softhsm::isolated(stringify!($name), |$token| $body);
        }
    };
}
