//! fastswitch: switch an ostree host to its staged deployment without a firmware reboot.
//!
//! The pipeline is `discover → diff → plan → execute → report`:
//!
//! | stage | module | pure? |
//! |---|---|---|
//! | read the sysroot, BLS entries, origins, `/run/ostree*` state | [`discover`] | parsing pure, thin I/O |
//! | compare two deployments: `/usr`, `/etc`, units, kernel | [`diff`] | reads the two trees only |
//! | parse and compare systemd unit files | [`units`] | pure |
//! | decide which services stop/start/restart/reload | [`services`] | pure (+ a `/proc` scan in `services::stale`) |
//! | which rung (none, live, soft-reboot, kexec, reboot), host states, the typed dry run | [`plan`] | pure |
//! | carry out a plan, journal every step, produce a report | [`exec`] | side effects through [`system`] |
//! | one operation per verb: preflight, discovery, diff, plan, executor; a typed outcome | `ops` | wires the real [`system`] implementations |
//! | mounts, systemd over D-Bus, kexec, capabilities, locking | [`system`] | the only side-effect code |
//! | kernel image checks (bzImage, UKI) | [`kernel_image`] | pure |

pub mod cli;
pub mod diff;
pub mod discover;
pub mod exec;
pub mod exit;
pub mod kernel_image;
pub(crate) mod ops;
pub mod plan;
pub mod services;
pub mod status;
pub mod system;
pub mod units;

#[cfg(test)]
pub(crate) mod testing;
