//! On-disk layout of the software backend's key rings, and the file discipline that keeps
//! them safe: directories 0700, files 0600, every write atomic (temp file, fsync, rename,
//! fsync of the directory), one exclusive lock per ring for read-modify-write.
//!
//! ```text
//! <data_dir>/                    0700
//!   <namespace>/<name>/          0700
//!     ring.json                  0600  versions, states, times; no key material
//!     v<N>.key                   0600  PKCS#8 DER (signing) or 32 raw bytes (AES-256)
//!     .lock                      0600  advisory lock held while the ring changes
//! ```
//! A crash between writing `v<N>.key` and `ring.json` leaves an unreferenced key file,
//! never a ring that names a missing or half-written key.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::backends::lifecycle::{FORMAT, RingRecord};
use crate::backends::types::KeyRef;

/// Largest key file read: an RSA-8192 PKCS#8 document is under 5 KiB.
const MAX_KEY_FILE: u64 = 16 * 1024;
/// Largest ring file read.
const MAX_RING_FILE: u64 = 1024 * 1024;

/// Errors of the on-disk store; the backend maps them onto error classes.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The ring does not exist.
    #[error("key ring not found")]
    NotFound,
    /// The ring already exists.
    #[error("key ring already exists")]
    Exists,
    /// A file or directory is readable or writable by group or others.
    #[error(
        "{path} has mode {mode:o}; refusing to use key material not restricted to its owner (expected {expected:o})"
    )]
    InsecurePermissions {
        /// The path.
        path: String,
        /// Its mode bits.
        mode: u32,
        /// What was expected.
        expected: u32,
    },
    /// The ring file is not a ring of ours.
    #[error("{path} is corrupt: {detail}")]
    Corrupt {
        /// The path.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// Any other I/O failure.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The key-ring store rooted at a data directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

fn check_mode(path: &Path, expected: u32) -> Result<(), StoreError> {
    let meta = fs::metadata(path).map_err(|e| io_err(path, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(StoreError::InsecurePermissions {
            path: path.display().to_string(),
            mode,
            expected,
        });
    }
    Ok(())
}

fn create_private_dir(path: &Path) -> Result<(), StoreError> {
    match DirBuilder::new().recursive(true).mode(0o700).create(path) {
        Ok(()) => check_mode(path, 0o700),
        Err(e) => Err(io_err(path, e)),
    }
}

fn read_limited(path: &Path, limit: u64) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(StoreError::NotFound),
        Err(e) => return Err(io_err(path, e)),
    };
    check_mode(path, 0o600)?;
    if meta.len() > limit {
        return Err(StoreError::Corrupt {
            path: path.display().to_string(),
            detail: format!("{} bytes exceeds the {limit}-byte limit", meta.len()),
        });
    }
    fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| io_err(path, e))
}

/// Writes `bytes` to `path` atomically with mode 0600: a reader sees the old file or the
/// new one, never a torn write, even across a crash.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // tempfile creates the file with O_EXCL and mode 0600 in the target directory, so the
    // rename below stays on one filesystem and is atomic.
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| io_err(dir, e))?;
    tmp.write_all(bytes).map_err(|e| io_err(tmp.path(), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| io_err(tmp.path(), e))?;
    tmp.persist(path).map_err(|e| io_err(path, e.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

/// Identity of a file version: inode, size and modification time. Every write of
/// `ring.json` is a rename of a new file, so its inode changes even when the clock does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    inode: u64,
    len: u64,
    modified_ns: i128,
}

/// An exclusive advisory lock on one ring, released on drop.
#[derive(Debug)]
pub struct RingLock {
    _file: File,
}

impl Store {
    /// Opens (creating if needed) the store at `root`, refusing a root that group or others
    /// can access.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        create_private_dir(root)?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of one ring.
    pub fn ring_dir(&self, key: &KeyRef) -> PathBuf {
        // Names are validated to [A-Za-z0-9._-] starting alphanumeric (KeyRef::new), so they
        // cannot leave the data directory.
        self.root.join(key.namespace()).join(key.name())
    }

    /// Path of the key file of one version.
    pub fn key_file(&self, key: &KeyRef, version: u32) -> PathBuf {
        self.ring_dir(key).join(format!("v{version}.key"))
    }

    /// Reads a ring's record.
    pub fn read_ring(&self, key: &KeyRef) -> Result<RingRecord, StoreError> {
        let path = self.ring_dir(key).join("ring.json");
        let bytes = read_limited(&path, MAX_RING_FILE)?;
        let ring: RingRecord = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        if ring.format != FORMAT {
            return Err(StoreError::Corrupt {
                path: path.display().to_string(),
                detail: format!("format {} is not {FORMAT}", ring.format),
            });
        }
        Ok(ring)
    }

    /// The stamp of a ring's `ring.json`.
    pub fn ring_stamp(&self, key: &KeyRef) -> Result<FileStamp, StoreError> {
        use std::os::unix::fs::MetadataExt;
        let path = self.ring_dir(key).join("ring.json");
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(StoreError::NotFound),
            Err(e) => return Err(io_err(&path, e)),
        };
        Ok(FileStamp {
            inode: meta.ino(),
            len: meta.len(),
            modified_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        })
    }

    /// Reads one version's key material.
    pub fn read_key(&self, key: &KeyRef, version: u32) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let path = self.key_file(key, version);
        read_limited(&path, MAX_KEY_FILE).map_err(|e| match e {
            StoreError::NotFound => StoreError::Corrupt {
                path: path.display().to_string(),
                detail: "key file named by ring.json is missing".into(),
            },
            other => other,
        })
    }

    /// Takes the ring's exclusive lock, creating the ring directory if `create` is set.
    pub fn lock_ring(&self, key: &KeyRef, create: bool) -> Result<RingLock, StoreError> {
        let dir = self.ring_dir(key);
        if create {
            create_private_dir(&dir)?;
        } else if !dir.is_dir() {
            return Err(StoreError::NotFound);
        }
        let path = dir.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        file.lock().map_err(|e| io_err(&path, e))?;
        Ok(RingLock { _file: file })
    }

    /// Whether the ring exists (has a `ring.json`).
    pub fn ring_exists(&self, key: &KeyRef) -> bool {
        self.ring_dir(key).join("ring.json").is_file()
    }

    /// Writes one version's key material. Call with the ring lock held.
    pub fn write_key(
        &self,
        _lock: &RingLock,
        key: &KeyRef,
        version: u32,
        material: &[u8],
    ) -> Result<(), StoreError> {
        write_atomic(&self.key_file(key, version), material)
    }

    /// Writes a ring record. Call with the ring lock held.
    pub fn write_ring(
        &self,
        _lock: &RingLock,
        key: &KeyRef,
        ring: &RingRecord,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(ring).map_err(|e| StoreError::Corrupt {
            path: key.to_string(),
            detail: e.to_string(),
        })?;
        write_atomic(&self.ring_dir(key).join("ring.json"), &bytes)
    }

    /// Removes a destroyed version's key file. Call with the ring lock held.
    pub fn remove_key(
        &self,
        _lock: &RingLock,
        key: &KeyRef,
        version: u32,
    ) -> Result<(), StoreError> {
        let path = self.key_file(key, version);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    /// Names of the rings in `namespace`, sorted.
    pub fn list(&self, namespace: &str) -> Result<Vec<String>, StoreError> {
        let dir = self.root.join(namespace);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&dir, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_err(&dir, e))?;
            if entry.path().join("ring.json").is_file()
                && let Some(name) = entry.file_name().to_str()
            {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::lifecycle::VersionRecord;
    use crate::backends::types::{Algorithm, KeyState};

    #[test]
    fn files_and_directories_are_private_and_writes_leave_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("keys")).unwrap();
        let key = KeyRef::new("token", "signing").unwrap();
        let lock = store.lock_ring(&key, true).unwrap();
        store.write_key(&lock, &key, 1, b"material").unwrap();
        let mut ring = RingRecord::new(Algorithm::Es256);
        ring.versions.push(VersionRecord {
            version: 1,
            state: KeyState::Active,
            created_at: 1,
            rotated_at: None,
        });
        store.write_ring(&lock, &key, &ring).unwrap();
        drop(lock);

        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(store.root()), 0o700);
        assert_eq!(mode(&store.ring_dir(&key)), 0o700);
        assert_eq!(mode(&store.key_file(&key, 1)), 0o600);
        assert_eq!(mode(&store.ring_dir(&key).join("ring.json")), 0o600);
        let leftovers: Vec<_> = fs::read_dir(store.ring_dir(&key))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
        assert_eq!(store.read_ring(&key).unwrap(), ring);
        assert_eq!(&store.read_key(&key, 1).unwrap()[..], b"material");
        assert_eq!(store.list("token").unwrap(), vec!["signing".to_owned()]);
    }

    #[test]
    fn group_readable_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("keys")).unwrap();
        let key = KeyRef::new("token", "signing").unwrap();
        let lock = store.lock_ring(&key, true).unwrap();
        store.write_key(&lock, &key, 1, b"material").unwrap();
        fs::set_permissions(store.key_file(&key, 1), fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            store.read_key(&key, 1),
            Err(StoreError::InsecurePermissions { .. })
        ));
    }

    #[test]
    fn world_readable_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("keys");
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            Store::open(&root),
            Err(StoreError::InsecurePermissions { .. })
        ));
    }

    #[test]
    fn corrupt_ring_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("keys")).unwrap();
        let key = KeyRef::new("token", "signing").unwrap();
        let lock = store.lock_ring(&key, true).unwrap();
        write_atomic(&store.ring_dir(&key).join("ring.json"), b"{\"format\":1,").unwrap();
        drop(lock);
        assert!(matches!(
            store.read_ring(&key),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            store.read_ring(&KeyRef::new("token", "missing").unwrap()),
            Err(StoreError::NotFound)
        ));
    }
}
