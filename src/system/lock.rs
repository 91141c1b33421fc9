//! One fastswitch run at a time: an exclusive `flock` on `<run>/fastswitch/lock`, with the
//! holder's PID written inside so the refusal can name it. The directory is `0700`, the file
//! `0600`.

use crate::exit::{refuse, ExitCode};
use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Held for the life of the value.
#[derive(Debug)]
pub struct RunLock {
    _lock: Flock<std::fs::File>,
}

pub fn acquire(state_dir: &Path) -> Result<RunLock> {
    crate::system::secure_write::private_dir(state_dir)?;
    let path = state_dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // A lock file an older version made 0644: private like everything in the state directory.
    if file.metadata()?.permissions().mode() & 0o777 != 0o600 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod {}", path.display()))?;
    }
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            lock.set_len(0).ok();
            lock.rewind().ok();
            write!(lock, "{}", std::process::id())
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(RunLock { _lock: lock })
        }
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            file.read_to_string(&mut pid).ok();
            Err(refuse(
                ExitCode::Busy,
                format!(
                    "another fastswitch run holds the lock {} (PID {}); wait for it to finish",
                    path.display(),
                    if pid.trim().is_empty() {
                        "unknown"
                    } else {
                        pid.trim()
                    }
                ),
            ))
        }
        Err((_, e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_with_pid() {
        let d = tempfile::tempdir().unwrap();
        let _held = acquire(d.path()).unwrap();
        let err = acquire(d.path()).unwrap_err();
        assert_eq!(crate::exit::code_for(&err), ExitCode::Busy);
        assert!(err.to_string().contains(&std::process::id().to_string()));
    }
}
