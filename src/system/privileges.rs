//! The privilege check, done with `caps` before anything is touched.

use crate::exit::{refuse, ExitCode};
use anyhow::Result;
use caps::{CapSet, Capability};

/// Refuse (exit code "refused") unless every capability in `needed` is effective, naming the
/// missing ones and what needs them.
pub(crate) fn require(needed: &[(Capability, &str)]) -> Result<()> {
    let mut missing = Vec::new();
    for (cap, why) in needed {
        let has = caps::has_cap(None, CapSet::Effective, *cap)
            .map_err(|e| anyhow::anyhow!("reading the process capabilities: {e}"))?;
        if !has {
            missing.push(format!("{cap} (to {why})"));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(refuse(
        ExitCode::Refused,
        format!(
            "missing capability {}; run as root (e.g. with sudo). Nothing was changed.",
            missing.join(", ")
        ),
    ))
}
