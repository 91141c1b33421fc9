//! One fastswitch run at a time: an exclusive `flock` on `<run>/fastswitch/lock`, with the
//! holder's PID written inside so the refusal can name it. The directory is `0700`, the file
//! `0600`.

use crate::exit::{refuse, ExitCode};
use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

/// Held for the life of the value.
#[derive(Debug)]
pub struct RunLock {
    _lock: Flock<std::fs::File>,
}

/// Who takes the lock: written next to the PID, so that a verb the admin runs can tell a
/// `prepare` (started by `fastswitch-prepare.path` right after staging, and short) from
/// anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Prepare,
    Other,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Prepare => "prepare",
            Role::Other => "run",
        }
    }
}

/// How long a verb waits for a `prepare` holding the lock before it refuses. `prepare` links
/// one copy of `usr` or loads one kernel: seconds, minutes on a very large `/usr`.
pub const PREPARE_WAIT: Duration = Duration::from_secs(300);

/// Take the lock as `role`. Busy: refused with exit code 7, naming the holder's PID, except
/// that a non-`prepare` run whose holder is `prepare` waits for it (up to [`PREPARE_WAIT`],
/// telling `waiting` once), because the admin's `apply-live` right after `rpm-ostree install`
/// meets the `prepare` that the staging started, and that `prepare` is doing the slow part of
/// this very command.
pub fn acquire(
    state_dir: &Path,
    role: Role,
    waiting: Option<&mut dyn FnMut(&str)>,
) -> Result<RunLock> {
    acquire_within(state_dir, role, waiting, PREPARE_WAIT)
}

fn acquire_within(
    state_dir: &Path,
    role: Role,
    mut waiting: Option<&mut dyn FnMut(&str)>,
    wait: Duration,
) -> Result<RunLock> {
    crate::system::secure_write::private_dir(state_dir)?;
    let path = state_dir.join("lock");
    let mut file = std::fs::OpenOptions::new()
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
    let t0 = Instant::now();
    let mut told = false;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                lock.set_len(0).ok();
                lock.rewind().ok();
                write!(lock, "{} {}", std::process::id(), role.as_str())
                    .with_context(|| format!("writing {}", path.display()))?;
                return Ok(RunLock { _lock: lock });
            }
            Err((mut f, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                f.rewind().ok();
                f.read_to_string(&mut text).ok();
                let mut words = text.split_whitespace();
                let pid = words.next().unwrap_or("unknown").to_owned();
                let holder_is_prepare = words.next() == Some(Role::Prepare.as_str());
                if role == Role::Other && holder_is_prepare && t0.elapsed() < wait {
                    if !told {
                        if let Some(w) = waiting.as_deref_mut() {
                            w(&format!(
                                "waiting for `fastswitch prepare` (PID {pid}), which is preparing the staged deployment"
                            ));
                        }
                        told = true;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                    file = f;
                    continue;
                }
                let what = if holder_is_prepare {
                    format!(
                        "`fastswitch prepare` (PID {pid}) still holds the lock {} after {} s; see `journalctl -u fastswitch-prepare.service`",
                        path.display(),
                        t0.elapsed().as_secs()
                    )
                } else {
                    format!(
                        "another fastswitch run holds the lock {} (PID {pid}); wait for it to finish",
                        path.display()
                    )
                };
                return Err(refuse(ExitCode::Busy, what));
            }
            Err((_, e)) => return Err(e).with_context(|| format!("locking {}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_with_pid() {
        let d = tempfile::tempdir().unwrap();
        let _held = acquire(d.path(), Role::Other, None).unwrap();
        let err = acquire(d.path(), Role::Other, None).unwrap_err();
        assert_eq!(crate::exit::code_for(&err), ExitCode::Busy);
        assert!(err.to_string().contains(&std::process::id().to_string()));
        // prepare does not wait for anybody: the run holding the lock does its own work.
        let err = acquire(d.path(), Role::Prepare, None).unwrap_err();
        assert_eq!(crate::exit::code_for(&err), ExitCode::Busy);
    }

    /// A verb meeting `prepare` waits for it and then runs; `prepare` meeting `prepare` does
    /// not wait; a `prepare` that outlasts the wait is named in the refusal.
    #[test]
    fn a_verb_waits_for_prepare() {
        let d = tempfile::tempdir().unwrap();
        let held = acquire(d.path(), Role::Prepare, None).unwrap();
        let text = std::fs::read_to_string(d.path().join("lock")).unwrap();
        assert_eq!(text, format!("{} prepare", std::process::id()));
        assert!(acquire(d.path(), Role::Prepare, None).is_err());
        let err =
            acquire_within(d.path(), Role::Other, None, Duration::from_millis(120)).unwrap_err();
        assert_eq!(crate::exit::code_for(&err), ExitCode::Busy);
        assert!(err.to_string().contains("fastswitch prepare"), "{err}");

        let released = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });
        let mut told = vec![];
        let mut tell = |m: &str| told.push(m.to_owned());
        let t = Instant::now();
        let _lock = acquire(d.path(), Role::Other, Some(&mut tell)).unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(told.len(), 1, "{told:?}");
        assert!(
            told[0].contains("waiting for `fastswitch prepare`"),
            "{told:?}"
        );
        released.join().unwrap();
    }
}
