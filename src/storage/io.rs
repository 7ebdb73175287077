//! Every file-system call that changes a data directory, in one place: segment files,
//! their markers and seals, directories, progress files and the consumer journal's
//! generations. Each does the real call and, when a test records the directory
//! (`powercut`), notes what it did in the trace, so that a power cut can be simulated at
//! any point of a real run. Reads are not seams: they go to the real files.
//!
//! A write is noted once it is done; a sync is noted once it returned, covering what was
//! noted before it started. So whatever the engine treats as synced (it syncs only what
//! it wrote before) is covered in the trace too.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::storage::powercut::{self, Op};

/// Creates `path`, which must not exist, for reading and writing.
pub fn create_new(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    powercut::note(path, || Op::Create {
        path: path.to_path_buf(),
    });
    Ok(file)
}

/// Creates `path` or empties it, for writing.
pub fn create_truncate(path: &Path) -> io::Result<File> {
    let existed = path.exists();
    let file = File::create(path)?;
    powercut::note(path, || match existed {
        true => Op::SetLen {
            path: path.to_path_buf(),
            len: 0,
        },
        false => Op::Create {
            path: path.to_path_buf(),
        },
    });
    Ok(file)
}

/// Writes all of `bytes` at `offset` of `file` (named `path`).
pub fn write_at(file: &File, path: &Path, offset: u64, bytes: &[u8]) -> io::Result<()> {
    file.write_all_at(bytes, offset)?;
    powercut::note(path, || Op::Write {
        path: path.to_path_buf(),
        offset,
        bytes: bytes.to_vec(),
    });
    Ok(())
}

/// Appends all of `bytes` to `file` (named `path`) at `offset`, where its cursor is.
pub fn write_all(file: &mut File, path: &Path, offset: u64, bytes: &[u8]) -> io::Result<()> {
    file.write_all(bytes)?;
    powercut::note(path, || Op::Write {
        path: path.to_path_buf(),
        offset,
        bytes: bytes.to_vec(),
    });
    Ok(())
}

pub fn set_len(file: &File, path: &Path, len: u64) -> io::Result<()> {
    file.set_len(len)?;
    powercut::note(path, || Op::SetLen {
        path: path.to_path_buf(),
        len,
    });
    Ok(())
}

/// Allocates `[offset, offset + len)` of `file`: appends never run out of space midway,
/// and the file's blocks stay contiguous.
pub fn preallocate(file: &File, path: &Path, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a valid descriptor.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, offset as libc::off_t, len as libc::off_t) };
    if rc != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(error);
        }
        // tmpfs and some others lack fallocate; set_len at least sizes the file.
        if file.metadata()?.len() < offset + len {
            file.set_len(offset + len)?;
        }
    }
    powercut::note(path, || Op::Allocate {
        path: path.to_path_buf(),
        end: offset + len,
    });
    Ok(())
}

/// fdatasync: the file's data (and the size needed to read it) is durable once it
/// returns Ok.
pub fn sync_data(file: &File, path: &Path) -> io::Result<()> {
    let started = powercut::sync_started(path);
    file.sync_data()?;
    powercut::note(path, || Op::Sync {
        path: path.to_path_buf(),
        covers: started,
    });
    Ok(())
}

/// fsync of a directory: the names created, renamed or removed in it are durable once it
/// returns Ok.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    let started = powercut::sync_started(dir);
    File::open(dir)?.sync_all()?;
    powercut::note(dir, || Op::SyncDir {
        path: dir.to_path_buf(),
        covers: started,
    });
    Ok(())
}

pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    powercut::note(to, || Op::Rename {
        from: from.to_path_buf(),
        to: to.to_path_buf(),
    });
    Ok(())
}

/// Renames `from` to `to`, which must not exist: never replaces a file (`EEXIST`).
pub fn rename_new(from: &Path, to: &Path) -> io::Result<()> {
    let c_path = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
    };
    let (c_from, c_to) = (c_path(from)?, c_path(to)?);
    // SAFETY: plain syscall on two NUL-terminated paths that outlive it.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c_from.as_ptr(),
            libc::AT_FDCWD,
            c_to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc != 0 {
        let error = io::Error::last_os_error();
        if !matches!(error.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) {
            return Err(error);
        }
        // A file system (or kernel) without RENAME_NOREPLACE: look, then rename. The
        // partition lock keeps every other writer out of the directory between the two.
        if to.symlink_metadata().is_ok() {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        std::fs::rename(from, to)?;
    }
    powercut::note(to, || Op::Rename {
        from: from.to_path_buf(),
        to: to.to_path_buf(),
    });
    Ok(())
}

/// Replaces the file at `path` with `bytes` as one change: written to `path.tmp` beside
/// it, then renamed over it. With `durable`, the new content survives a crash once this
/// returns (the file is synced before the rename, its directory after); without, a
/// crash leaves the old file or the new one, whole, whichever the disk kept.
pub fn replace(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let dir = path.parent().expect("a file in a directory");
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    create_dir_all(dir)?;
    let file = create_truncate(&tmp)?;
    write_at(&file, &tmp, 0, bytes)?;
    if durable {
        sync_data(&file, &tmp)?;
    }
    rename(&tmp, path)?;
    if durable {
        sync_dir(dir)?;
    }
    Ok(())
}

pub fn remove_file(path: &Path) -> io::Result<()> {
    std::fs::remove_file(path)?;
    powercut::note(path, || Op::Remove {
        path: path.to_path_buf(),
    });
    Ok(())
}

pub fn remove_dir_all(path: &Path) -> io::Result<()> {
    std::fs::remove_dir_all(path)?;
    powercut::note(path, || Op::RemoveTree {
        path: path.to_path_buf(),
    });
    Ok(())
}

/// Creates `dir` as `create_dir_all` does, readable by its owner alone (mode 0700): a
/// data directory holds every record, and later key files. One that existed open to
/// others is narrowed to 0700, and its old mode returned for the caller to say so.
pub fn create_private_dir(dir: &Path) -> io::Result<Option<u32>> {
    use std::os::unix::fs::PermissionsExt;
    let existed = dir.is_dir();
    create_dir_all(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700 | 0o700))?;
    // One made just now (under the umask) is no one's news.
    Ok(existed.then_some(mode))
}

/// Whether a file holding a secret (a private key, the credentials file) is closed to
/// others: its owner's alone, or, owned by root, readable by its group too (0640 or
/// less). A Kubernetes Secret mounted into a pod with an `fsGroup` is root's and 0440
/// whatever its `defaultMode`; PostgreSQL allows its key files the same two ways.
pub fn secret_closed(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mode = meta.permissions().mode() & 0o7777;
    mode & 0o077 == 0 || (meta.uid() == 0 && mode & 0o037 == 0)
}

/// Creates `dir` and every missing parent, durably: each new directory's name is synced
/// into its parent, so that nothing written under it can vanish with its name.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at {
        if path.as_os_str().is_empty() || path.is_dir() {
            break;
        }
        missing.push(path);
        at = path.parent();
    }
    for path in missing.into_iter().rev() {
        match std::fs::create_dir(path) {
            Ok(()) => {}
            // Another thread made it meanwhile: it syncs it.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        powercut::note(path, || Op::CreateDir {
            path: path.to_path_buf(),
        });
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    /// Owner-only, or root's and group-readable (a Kubernetes Secret with an fsGroup);
    /// nothing open to others, and nothing group-readable that is not root's.
    #[test]
    fn a_secret_is_its_owners_or_roots_and_its_groups() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "x").unwrap();
        let closed = |mode: u32, uid: u32| {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            std::os::unix::fs::chown(&file, Some(uid), None).unwrap();
            super::secret_closed(&std::fs::metadata(&file).unwrap())
        };
        // Changing a file's owner takes root (the tests' machines run as root).
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        assert!(closed(0o600, 0) && closed(0o400, 65532) && closed(0o600, 65532));
        assert!(closed(0o440, 0) && closed(0o640, 0));
        assert!(!closed(0o440, 65532) && !closed(0o644, 0) && !closed(0o660, 0) && !closed(0o604, 65532));
    }
}
