//! PKCS#11 tokens for tests: SoftHSM and kryoptic. Both read their configuration file once,
//! at `C_Initialize`, from an environment variable, so each test gets its own process: the
//! test re-runs its own binary for just itself (`--exact NAME`), with a fresh configuration
//! and token directory, and checks the child passed.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::process::{require_tool, strict};

/// Tells a child test process where its token lives.
const CHILD_DIR: &str = "TOKEN_SERVICE_TEST_TOKEN_DIR";
/// Label, SO PIN and user PIN of every test token.
pub const LABEL: &str = "token-service-test";
pub const SO_PIN: &str = "so-pin-0000";
pub const PIN: &str = "user-pin-1234";

/// Which PKCS#11 implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// SoftHSM 2 (Debian `softhsm2`).
    SoftHsm,
    /// kryoptic, built by `scripts/build-kryoptic.sh`.
    Kryoptic,
}

impl Provider {
    /// The environment variable the module reads its configuration file from.
    pub fn conf_variable(self) -> &'static str {
        match self {
            Provider::SoftHsm => "SOFTHSM2_CONF",
            Provider::Kryoptic => "KRYOPTIC_CONF",
        }
    }

    /// The module, if installed.
    pub fn module(self) -> Option<PathBuf> {
        match self {
            Provider::SoftHsm => [
                "/usr/lib/softhsm/libsofthsm2.so",
                "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
                "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
            ]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file()),
            Provider::Kryoptic => std::env::var_os("KRYOPTIC_MODULE")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| {
                        PathBuf::from(h)
                            .join(".cache/token-service/kryoptic-1.5.4/libkryoptic_pkcs11.so")
                    })
                })
                .filter(|p| p.is_file()),
        }
    }
}

/// A token initialised for one test.
#[derive(Clone, Debug)]
pub struct Token {
    pub provider: Provider,
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub module: PathBuf,
    pub pin_file: PathBuf,
}

/// Where Debian puts the SoftHSM module.
pub fn module_path() -> Option<PathBuf> {
    Provider::SoftHsm.module()
}

impl Token {
    /// The token whose configuration `create` wrote in `dir`.
    pub fn in_dir(provider: Provider, dir: &Path) -> Option<Self> {
        Some(Self {
            provider,
            dir: dir.to_path_buf(),
            conf: dir.join("token.conf"),
            module: provider.module()?,
            pin_file: dir.join("pin"),
        })
    }

    /// Writes the configuration (and, for SoftHSM, initialises the token) in `dir`.
    pub fn create(provider: Provider, dir: &Path) -> Option<Self> {
        if provider == Provider::SoftHsm {
            require_tool("softhsm2-util")?;
        }
        let Some(token) = Self::in_dir(provider, dir) else {
            assert!(
                !strict(),
                "the {provider:?} module is required with CI=true; scripts/test.sh installs it"
            );
            eprintln!("SKIPPED: {provider:?} module not found (run scripts/test.sh)");
            return None;
        };
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).expect("token dir");
        let conf = match provider {
            Provider::SoftHsm => format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
            Provider::Kryoptic => format!(
                "[[slots]]\nslot = 1\ndbtype = \"sqlite\"\ndbargs = \"{}\"\n",
                tokens.join("token.sql").display()
            ),
        };
        std::fs::write(&token.conf, conf).expect("token conf");
        if provider == Provider::SoftHsm {
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
        }
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(&token.pin_file, format!("{PIN}\n")).expect("pin file");
            std::fs::set_permissions(&token.pin_file, std::fs::Permissions::from_mode(0o600))
                .expect("chmod");
        }
        Some(token)
    }

    /// Initialises a kryoptic token through PKCS#11 itself (in the child, where its
    /// configuration variable is set): C_InitToken, then C_InitPIN as the SO.
    pub fn initialise_in_child(&self) {
        if self.provider != Provider::Kryoptic {
            return;
        }
        use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
        use cryptoki::session::UserType;
        use cryptoki::types::AuthPin;
        let pkcs11 = Pkcs11::new(&self.module).expect("load kryoptic");
        pkcs11
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .expect("C_Initialize");
        let slot = pkcs11.get_all_slots().expect("slots")[0];
        pkcs11
            .init_token(slot, &AuthPin::new(SO_PIN.into()), LABEL)
            .expect("C_InitToken");
        let session = pkcs11.open_rw_session(slot).expect("session");
        session
            .login(UserType::So, Some(&AuthPin::new(SO_PIN.into())))
            .expect("SO login");
        session
            .init_pin(&AuthPin::new(PIN.into()))
            .expect("C_InitPIN");
        drop(session);
        pkcs11.finalize().expect("C_Finalize");
    }
}

/// Runs `body` with its own token of `provider`, in a child process of this test binary.
pub fn isolated(provider: Provider, test: &str, body: impl FnOnce(Token)) {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        let token = Token::in_dir(provider, Path::new(&dir)).expect("child token");
        token.initialise_in_child();
        body(token);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(token) = Token::create(provider, dir.path()) else {
        return;
    };
    let output = Command::new(std::env::current_exe().expect("test binary"))
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(provider.conf_variable(), &token.conf)
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

/// Declares a test that runs once against SoftHSM and once against kryoptic, each with a
/// token of its own: `NAME::softhsm` and `NAME::kryoptic`.
#[macro_export]
macro_rules! token_test {
    ($name:ident, |$token:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn body($token: support::softhsm::Token) $body

            #[test]
            fn softhsm() {
                support::softhsm::isolated(
                    support::softhsm::Provider::SoftHsm,
                    concat!(stringify!($name), "::softhsm"),
                    body,
                );
            }

            #[test]
            fn kryoptic() {
                support::softhsm::isolated(
                    support::softhsm::Provider::Kryoptic,
                    concat!(stringify!($name), "::kryoptic"),
                    body,
                );
            }
        }
    };
}
