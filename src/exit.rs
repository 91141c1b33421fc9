//! Exit codes and the one typed error that carries one.
//!
//! | code | name | meaning |
//! |---|---|---|
//! | 0 | `OK` | success: status/diff printed, or the switch was applied |
//! | 1 | `ERROR` | an error (message on stderr names the path or unit) |
//! | 2 | `USAGE` | bad command line |
//! | 3 | `NOTHING_TO_DO` | the target equals the running system, or there is no live state to reset |
//! | 4 | `APPLIED_WITH_FAILURES` | applied, but some unit jobs failed (see the report) |
//! | 5 | `REBOOT_NEEDED` | the kernel changed: a live apply cannot do it; use `fastswitch kexec`/`switch`, or kexec is impossible here and a full reboot is needed |
//! | 6 | `REFUSED` | a precondition is not met (not ostree-booted, no staged/pending deployment, missing capability, bad input); nothing was changed |
//! | 7 | `BUSY` | another fastswitch run holds the lock |
//! | 8 | `INTERRUPTED` | a previous run was interrupted at a different target; run `fastswitch reset` |

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitCode {
    Ok = 0,
    Error = 1,
    Usage = 2,
    NothingToDo = 3,
    AppliedWithFailures = 4,
    RebootNeeded = 5,
    Refused = 6,
    Busy = 7,
    Interrupted = 8,
}

impl ExitCode {
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// The text shown in `--help` (kept next to the enum so the two cannot drift).
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success (printed, or applied)
  1  error (the message names the path or unit)
  2  bad command line
  3  nothing to do (target equals the running system; no live state to reset)
  4  applied, but some unit jobs failed (see the report)
  5  kernel changed: needs kexec (`fastswitch kexec`/`switch`), or a full reboot where kexec is impossible
  6  refused: a precondition is not met; nothing was changed
  7  busy: another fastswitch run holds the lock
  8  a previous run was interrupted at another target: run `fastswitch reset`";

/// An error that maps to a specific exit code. Everything else exits with [`ExitCode::Error`].
#[derive(Debug)]
pub struct Refusal {
    pub code: ExitCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ExitCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refusal {}

/// The exit code for an error: a [`Refusal`] anywhere in the chain decides it.
pub fn code_for(err: &anyhow::Error) -> ExitCode {
    err.chain()
        .find_map(|e| e.downcast_ref::<Refusal>())
        .map(|r| r.code)
        .unwrap_or(ExitCode::Error)
}

/// Shorthand: `return Err(refuse(ExitCode::Refused, "…"))`.
pub fn refuse(code: ExitCode, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Refusal::new(code, message))
}
