//! The session pool: up to `size` logged-in sessions, each used by one call at a time.
//!
//! Sessions are `Send` but not `Sync`, and one session shared behind a mutex measured slower
//! than a single thread, so each concurrent operation checks out a session of its own
//! (a semaphore bounds them). The PKCS#11 call runs under `tokio::task::block_in_place`: the
//! runtime hands this thread's other tasks to another thread first, so the blocking call
//! never holds up async work, and no wake-up of another thread sits on the signing path
//! (handing each call to a dedicated thread, or to `spawn_blocking`, measured at half the raw
//! rate on 2 cores: a cross-thread wake-up costs more than an ECDSA sign there). On a
//! current-thread runtime, where `block_in_place` is not allowed, the call goes to
//! `spawn_blocking`.
//!
//! Recovery: a call that reports the session gone (`CKR_SESSION_HANDLE_INVALID`,
//! `CKR_SESSION_CLOSED`, `CKR_USER_NOT_LOGGED_IN`, `CKR_DEVICE_ERROR`) drops that worker's
//! session; the next call opens and logs in a new one. A call that reports the module or
//! token gone (`CKR_CRYPTOKI_NOT_INITIALIZED`, `CKR_DEVICE_REMOVED`, `CKR_TOKEN_NOT_PRESENT`)
//! re-initialises the module and finds the token again (its slot id may have changed); every
//! worker then replaces its session and the cached object handles are forgotten. Nothing
//! needs a restart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use cryptoki::error::Error as CkError;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use cryptoki::slot::Slot;

use super::error::{Damage, classify, damage};
use super::token::{FoundToken, LoadedModule, TokenSelector, find_token, initialize, open_session};
use crate::backends::error::BackendError;
use crate::secret::Secret;

/// A failed operation inside a worker: a PKCS#11 error (classified, and checked for damage
/// to the session or module), or an error of our own.
#[derive(Debug)]
pub enum OpError {
    /// A PKCS#11 call failed while doing `what`.
    Ck {
        /// What was being done (no secrets).
        what: String,
        /// The error.
        error: CkError,
    },
    /// Anything else.
    Other(BackendError),
}

impl From<BackendError> for OpError {
    fn from(e: BackendError) -> Self {
        OpError::Other(e)
    }
}

/// Wraps a cryptoki error with what was being done.
pub fn ck(what: impl Into<String>) -> impl FnOnce(CkError) -> OpError {
    let what = what.into();
    move |error| OpError::Ck { what, error }
}

/// The token as the workers see it; replaced on re-initialisation.
#[derive(Debug)]
struct Current {
    token: FoundToken,
    generation: u64,
}

/// State shared by the sessions.
pub struct Shared {
    backend: String,
    module: Arc<LoadedModule>,
    selector: TokenSelector,
    pin: Secret,
    current: RwLock<Current>,
    /// Object handles by (kind, label), valid for one module generation.
    handles: Mutex<HashMap<(u8, String), (ObjectHandle, u64)>>,
    reinitializations: AtomicU64,
    /// Set when the token refused the PIN: no further login is attempted, because repeated
    /// wrong-PIN logins lock the user PIN on most HSMs.
    pin_refused: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("selector", &self.selector)
            .field("pin", &self.pin)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The token's mechanisms, slot and label as last found.
    pub fn token(&self) -> FoundToken {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .token
            .clone()
    }

    fn generation(&self) -> u64 {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .generation
    }

    /// How many times the module has been re-initialised.
    pub fn reinitializations(&self) -> u64 {
        self.reinitializations.load(Ordering::Relaxed)
    }

    /// A cached object handle of this module generation.
    pub fn cached_handle(&self, kind: u8, label: &str) -> Option<ObjectHandle> {
        let generation = self.generation();
        let handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        handles
            .get(&(kind, label.to_owned()))
            .filter(|(_, g)| *g == generation)
            .map(|(h, _)| *h)
    }

    /// Remembers an object handle.
    pub fn remember_handle(&self, kind: u8, label: &str, handle: ObjectHandle) {
        let generation = self.generation();
        let mut handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        handles.insert((kind, label.to_owned()), (handle, generation));
    }

    /// Forgets every cached object handle.
    pub fn forget_all_handles(&self) {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Forgets object handles (objects destroyed, or a lookup that failed).
    pub fn forget_handles(&self, label: &str) {
        let mut handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        handles.retain(|(_, l), _| l != label);
    }

    /// Re-initialises the module and finds the token again, unless another worker already
    /// did so since `seen_generation`.
    fn reinitialize(&self, seen_generation: u64) -> Result<(), BackendError> {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if current.generation != seen_generation {
            return Ok(());
        }
        initialize(self.module.pkcs11()).map_err(|e| {
            BackendError::unavailable(&self.backend, format!("re-initialising the module: {e}"))
        })?;
        let token = find_token(self.module.pkcs11(), &self.selector)?;
        current.token = token;
        current.generation += 1;
        self.reinitializations.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        tracing::warn!(backend = %self.backend, generation = current.generation, "PKCS#11 module re-initialised");
        Ok(())
    }
}

/// A session checked out for one call.
pub struct Worker {
    shared: Arc<Shared>,
    session: Option<(Session, u64)>,
}

impl Worker {
    /// Lets go of a damaged or stale session without `C_CloseSession`: its handle is dead,
    /// and after a re-initialisation the same number may belong to another worker's new
    /// session — closing it would close theirs (and closing a token's last session logs out
    /// and invalidates every object handle).
    fn abandon_session(&mut self) {
        if let Some((session, _)) = self.session.take() {
            std::mem::forget(session);
        }
    }

    fn session(&mut self) -> Result<&Session, OpError> {
        let generation = self.shared.generation();
        if self.session.as_ref().is_some_and(|(_, g)| *g != generation) {
            self.abandon_session();
        }
        if self.session.is_none() {
            if self.shared.pin_refused.load(Ordering::Relaxed) {
                return Err(OpError::Other(BackendError::unavailable(
                    &self.shared.backend,
                    "the token refused the user PIN; no further login is attempted (it could lock the PIN); fix the PIN source and restart",
                )));
            }
            let slot: Slot = self.shared.token().slot;
            let session = match open_session(self.shared.module.pkcs11(), slot, &self.shared.pin) {
                Ok(session) => session,
                Err(error) => {
                    if matches!(
                        error,
                        CkError::Pkcs11(
                            cryptoki::error::RvError::PinIncorrect
                                | cryptoki::error::RvError::PinLocked,
                            _
                        )
                    ) {
                        self.shared.pin_refused.store(true, Ordering::Relaxed);
                        tracing::error!(backend = %self.shared.backend, "the token refused the user PIN; logins stopped");
                    }
                    return Err(ck("opening a session and logging in")(error));
                }
            };
            self.session = Some((session, generation));
        }
        match &self.session {
            Some((session, _)) => Ok(session),
            None => Err(OpError::Other(BackendError::unavailable(
                &self.shared.backend,
                "no session",
            ))),
        }
    }

    /// Runs `op` with this worker's session, repairing the session or module afterwards if
    /// the failure says they are damaged.
    pub fn run<T>(
        &mut self,
        op: impl FnOnce(&Session, &Shared) -> Result<T, OpError>,
    ) -> Result<T, BackendError> {
        let generation = self.shared.generation();
        let shared = self.shared.clone();
        let result = match self.session() {
            Ok(session) => op(session, &shared),
            Err(e) => Err(e),
        };
        match result {
            Ok(value) => Ok(value),
            Err(OpError::Other(e)) => Err(e),
            Err(OpError::Ck { what, error }) => {
                match damage(&error) {
                    Damage::None => {}
                    Damage::Handles => self.shared.forget_all_handles(),
                    Damage::Session => self.abandon_session(),
                    Damage::Module => {
                        self.abandon_session();
                        if let Err(e) = self.shared.reinitialize(generation) {
                            tracing::warn!(backend = %self.shared.backend, error = %e, "module re-initialisation failed");
                        }
                    }
                }
                Err(classify(&self.shared.backend, &what, &error))
            }
        }
    }
}

/// The pool. Dropping it closes the idle sessions (before the module can be finalised).
pub struct Pool {
    shared: Arc<Shared>,
    idle: Mutex<Vec<(Session, u64)>>,
    permits: Arc<tokio::sync::Semaphore>,
    size: usize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("size", &self.size)
            .field("shared", &self.shared)
            .finish()
    }
}

impl Pool {
    /// Finds the token and logs in once (so a wrong PIN or unknown token is an error now, at
    /// start-up). Up to `size` sessions are used, capped by the token's own session limit.
    /// The first session stays in the pool for its life, which keeps the login and the
    /// object handles valid.
    pub fn start(
        backend: &str,
        module: Arc<LoadedModule>,
        selector: TokenSelector,
        pin: Secret,
        size: usize,
    ) -> Result<Self, BackendError> {
        let token = find_token(module.pkcs11(), &selector)?;
        let first = open_session(module.pkcs11(), token.slot, &pin).map_err(|e| match e {
            CkError::Pkcs11(cryptoki::error::RvError::PinIncorrect, _) => {
                BackendError::Rejected(crate::backends::error::Rejection::InvalidInput(format!(
                    "wrong user PIN for PKCS#11 token `{}`",
                    token.label
                )))
            }
            other => classify(
                backend,
                &format!("logging in to token `{}`", token.label),
                &other,
            ),
        })?;
        let size = size
            .max(1)
            .min(token.max_sessions.unwrap_or(usize::MAX).max(1));
        let shared = Arc::new(Shared {
            backend: backend.to_owned(),
            module,
            selector,
            pin,
            current: RwLock::new(Current {
                token,
                generation: 0,
            }),
            handles: Mutex::new(HashMap::new()),
            reinitializations: AtomicU64::new(0),
            pin_refused: std::sync::atomic::AtomicBool::new(false),
        });
        Ok(Self {
            shared,
            idle: Mutex::new(vec![(first, 0)]),
            permits: Arc::new(tokio::sync::Semaphore::new(size)),
            size,
        })
    }

    /// State shared by the sessions.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Maximum number of sessions.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Runs `op` with a session of its own, without blocking the async runtime.
    pub async fn call<T, F>(&self, op: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnOnce(&Session, &Shared) -> Result<T, OpError> + Send + 'static,
    {
        // Unconstrained: waiting for a session must not spend the task's cooperative budget.
        // The call below gives this thread's core away, so the task cannot starve others;
        // a forced yield would only move it to another thread, a cross-thread wake-up that
        // measured as stalls of milliseconds on 2 cores (the 2-worker rate fell to 0.65 of
        // raw cryptoki; without the yields it matches raw).
        let _permit = tokio::task::unconstrained(self.permits.acquire())
            .await
            .map_err(|_| {
                BackendError::unavailable(&self.shared.backend, "session pool is shut down")
            })?;
        let session = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut worker = Worker {
            shared: self.shared.clone(),
            session,
        };
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let (worker, result) = if multi_thread {
            tokio::task::block_in_place(move || {
                let result = worker.run(op);
                (worker, result)
            })
        } else {
            tokio::task::spawn_blocking(move || {
                let result = worker.run(op);
                (worker, result)
            })
            .await
            .map_err(|e| {
                BackendError::unavailable(&self.shared.backend, format!("PKCS#11 task failed: {e}"))
            })?
        };
        if let Some(session) = worker.session {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(session);
        }
        result
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Sessions first: `shared` may hold the last reference to the module, whose drop
        // finalises it, after which closing a session is an error.
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}
