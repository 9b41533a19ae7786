//! The PKCS#11 module and the token: loading and initialising the module once per process
//! (with OS locking), finding the token by label or serial (never by slot id: slot ids change
//! when tokens are added or re-initialised), opening sessions and logging in.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::MechanismType;
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;

use crate::backends::error::{BackendError, Rejection};
use crate::secret::Secret;

/// How the token is chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSelector {
    /// By `CKA_LABEL` of the token (trailing blanks ignored).
    Label(String),
    /// By serial number.
    Serial(String),
}

impl std::fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSelector::Label(l) => write!(f, "label `{l}`"),
            TokenSelector::Serial(s) => write!(f, "serial `{s}`"),
        }
    }
}

/// A loaded and initialised module, shared by every backend of the process that uses the
/// same library file. `C_Finalize` runs when the last user drops it.
#[derive(Debug)]
pub struct LoadedModule {
    pkcs11: Pkcs11,
    path: PathBuf,
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<LoadedModule>>> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Weak<LoadedModule>>>> = OnceLock::new();
    MODULES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// `C_Initialize` with OS locking: without it SoftHSM crashed as soon as two threads signed.
/// An already initialised module is fine (another user in this process got there first).
pub(super) fn initialize(pkcs11: &Pkcs11) -> Result<(), CkError> {
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(e),
    }
}

impl LoadedModule {
    /// Loads (or reuses) the module at `path`.
    pub fn get(path: &Path) -> Result<Arc<Self>, BackendError> {
        if !path.is_file() {
            return Err(BackendError::Rejected(Rejection::InvalidInput(format!(
                "PKCS#11 module {} does not exist",
                path.display()
            ))));
        }
        // One entry per library file, however it is named: two entries for one library
        // would finalise it under each other.
        let canonical = std::fs::canonicalize(path).map_err(|e| {
            BackendError::Rejected(Rejection::InvalidInput(format!(
                "PKCS#11 module {}: {e}",
                path.display()
            )))
        })?;
        let path = canonical.as_path();
        let mut modules = registry().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(module) = modules.get(path).and_then(Weak::upgrade) {
            return Ok(module);
        }
        let pkcs11 = Pkcs11::new(path).map_err(|e| {
            BackendError::Rejected(Rejection::InvalidInput(format!(
                "PKCS#11 module {} cannot be loaded: {e}",
                path.display()
            )))
        })?;
        initialize(&pkcs11).map_err(|e| {
            BackendError::unavailable("pkcs11", format!("C_Initialize of {}: {e}", path.display()))
        })?;
        let module = Arc::new(Self {
            pkcs11,
            path: path.to_path_buf(),
        });
        modules.insert(path.to_path_buf(), Arc::downgrade(&module));
        Ok(module)
    }

    /// The cryptoki context.
    pub fn pkcs11(&self) -> &Pkcs11 {
        &self.pkcs11
    }
}

impl Drop for LoadedModule {
    fn drop(&mut self) {
        let mut modules = registry().lock().unwrap_or_else(|p| p.into_inner());
        if modules
            .get(&self.path)
            .is_some_and(|w| w.strong_count() == 0)
        {
            modules.remove(&self.path);
        }
        // Finalize at shutdown; failure here has no one left to report to.
        let _ = self.pkcs11.clone().finalize();
    }
}

/// The token as found in the module.
#[derive(Clone, Debug)]
pub struct FoundToken {
    /// Its slot, valid until the module is re-initialised.
    pub slot: Slot,
    /// Its label.
    pub label: String,
    /// Mechanisms the token offers.
    pub mechanisms: Vec<MechanismType>,
    /// The token's session limit, if it states one.
    pub max_sessions: Option<usize>,
}

/// Finds exactly one token matching `selector`.
pub fn find_token(pkcs11: &Pkcs11, selector: &TokenSelector) -> Result<FoundToken, BackendError> {
    let slots = pkcs11
        .get_slots_with_token()
        .map_err(|e| BackendError::unavailable("pkcs11", format!("listing slots: {e}")))?;
    let mut seen = Vec::new();
    let mut matches = Vec::new();
    for slot in slots {
        let Ok(info) = pkcs11.get_token_info(slot) else {
            continue;
        };
        let label = info.label().trim_end().to_owned();
        let serial = info.serial_number().trim_end().to_owned();
        let hit = match selector {
            TokenSelector::Label(l) => &label == l,
            TokenSelector::Serial(s) => &serial == s,
        };
        if hit {
            let max_sessions = match info.max_session_count() {
                cryptoki::slot::Limit::Max(n) => usize::try_from(n).ok(),
                _ => None,
            };
            matches.push((slot, label.clone(), max_sessions));
        }
        seen.push(format!("`{label}` (serial {serial})"));
    }
    match matches.len() {
        1 => {
            let (slot, label, max_sessions) = matches.remove(0);
            let mechanisms = pkcs11
                .get_mechanism_list(slot)
                .map_err(|e| BackendError::unavailable("pkcs11", format!("mechanism list: {e}")))?;
            Ok(FoundToken {
                slot,
                label,
                mechanisms,
                max_sessions,
            })
        }
        0 => Err(BackendError::Rejected(Rejection::InvalidInput(format!(
            "no PKCS#11 token with {selector}; tokens present: {}",
            if seen.is_empty() {
                "none".to_owned()
            } else {
                seen.join(", ")
            }
        )))),
        n => Err(BackendError::Rejected(Rejection::InvalidInput(format!(
            "{n} PKCS#11 tokens match {selector}; select by serial instead"
        )))),
    }
}

/// Opens a read-write session and logs the user in. A second login in the same process is
/// `CKR_USER_ALREADY_LOGGED_IN`: login is per application, so that is success.
pub fn open_session(pkcs11: &Pkcs11, slot: Slot, pin: &Secret) -> Result<Session, CkError> {
    let session = pkcs11.open_rw_session(slot)?;
    let auth = cryptoki::types::AuthPin::new(pin.expose().into());
    match session.login(UserType::User, Some(&auth)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
        Err(e) => Err(e),
    }
}
