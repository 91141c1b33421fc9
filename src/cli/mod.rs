//! Command line: clap types and the one dispatch `match`. Each verb is a few lines that call
//! into the library; output goes through [`Output`] so `--json` and human text come from the
//! same typed values.

use crate::discover::{self, HostPaths};
use crate::exit::{exit_codes_help, ExitCode};
use crate::status;

mod docs;
mod prepare;
mod render;
mod switch;
mod verbs;
use anyhow::Result;
use clap::{Args, Parser, Subcommand};
pub use render::write_plan_human;
use std::io::Write;
use std::path::PathBuf;

/// Switch an ostree host to its staged deployment without a firmware reboot.
///
/// fastswitch compares the booted deployment with the staged one (else the pending one):
/// /usr files, /etc defaults, systemd units and the kernel (vmlinuz + initramfs digest,
/// kernel arguments). If only userspace changed it applies the change live: the staged /usr is
/// bound over /usr in one atomic mount, /etc gets ostree's 3-way merge, and exactly the services
/// whose unit, binary or libraries changed are restarted. If the kernel changed it kexecs into
/// the new deployment through an orderly systemd shutdown.
#[derive(Debug, Parser, PartialEq)]
#[command(name = "fastswitch", version, after_help = exit_codes_help())]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options every command takes (shown in their own "Global options" section).
#[derive(Debug, Args, PartialEq, Clone)]
#[command(next_help_heading = GLOBAL_OPTIONS)]
pub struct GlobalOpts {
    /// Physical sysroot holding ostree/ and boot/ [default: /sysroot when ostree-booted, else /]
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) sysroot: Option<PathBuf>,
    /// Root of the running system, where /usr and /etc live [default: /]
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) root: Option<PathBuf>,
    /// Runtime state directory holding ostree-booted and ostree/staged-deployment [default: /run]
    #[arg(long = "run-dir", global = true, value_name = "DIR")]
    pub(crate) run_dir: Option<PathBuf>,
    /// Print machine-readable JSON (with a schema_version) instead of text
    #[arg(long, global = true)]
    pub json: bool,
}

impl GlobalOpts {
    pub(crate) fn paths(&self) -> HostPaths {
        HostPaths::resolve(
            self.sysroot.clone(),
            self.root.clone(),
            self.run_dir.clone(),
        )
    }
}

/// The help heading of [`GlobalOpts`].
pub(crate) const GLOBAL_OPTIONS: &str = "Global options";

/// What a DEP argument accepts ([`crate::discover::Host::select`]), as (form, meaning).
pub(crate) const DEP_FORMS: &[(&str, &str)] = &[
    ("booted", "the running deployment"),
    (
        "staged",
        "the deployment staged for the next boot (/run/ostree/staged-deployment)",
    ),
    (
        "pending",
        "the deployment before the booted one in its stateroot (the next boot's when none is staged)",
    ),
    (
        "rollback",
        "the deployment after the booted one in its stateroot (what a rollback boots)",
    ),
    ("0, 1, …", "an index, as `fastswitch status` lists them"),
    (
        "<checksum>.<serial>",
        "a deployment id as in `ostree admin status`; a unique checksum prefix with its serial also works",
    ),
];

/// The DEP paragraph shown after the help of every command that takes a DEP.
pub(crate) fn dep_help() -> String {
    let mut s = String::from("DEP selects a deployment:");
    for (form, meaning) in DEP_FORMS {
        s.push('\n');
        s.push_str(&crate::exit::hanging(&format!("  {form:<21} "), meaning));
    }
    s
}

#[derive(Debug, Subcommand, PartialEq)]
pub(crate) enum Command {
    /// List deployments with their marks (booted, staged, pending, rollback, pinned), origin,
    /// kernel and kernel arguments, and any live-apply state.
    Status,
    /// Compare two deployments: /usr files, /etc merge actions, systemd units, kernel identity,
    /// and the decision (none, live, kexec) with its reasons.
    #[command(after_help = dep_help())]
    Diff(PairOpts),
    /// Apply the staged (else pending) deployment to the running system without a reboot:
    /// bind its /usr over /usr, merge /etc, daemon-reload, restart affected services.
    /// Refuses when the kernel changed (use `fastswitch switch`).
    #[command(after_help = dep_help())]
    ApplyLive(ApplyLiveOpts),
    /// Undo a live apply: detach the /usr bind, restore /etc from the backups, daemon-reload and
    /// restart what the apply restarted; also unload a kernel that `kexec --load-only` left
    /// loaded. An interrupted reset is finished by running it again. Exit code 3 when there is
    /// nothing to undo.
    Reset(ResetOpts),
    /// Run at boot by fastswitch-recover.service: if a live apply of an earlier boot changed
    /// /etc and the deployment it started from booted again (power cut or crash before the
    /// staged deployment was finalized), restore /etc from the backups in
    /// /var/lib/fastswitch; if its target booted, drop the record. Exit code 3 when there is
    /// nothing to recover.
    Recover,
    /// Boot the staged (else pending) deployment's kernel with kexec: finalize the staged
    /// deployment, check and load its kernel and initramfs, then start kexec.target so systemd
    /// shuts down in order. No firmware, no bootloader.
    #[command(after_help = dep_help())]
    Kexec(KexecOpts),
    /// Do the slow part of the staged deployment's rung now. A new kernel or kargs: load the
    /// kernel (kexec_file_load) with the ostree= bootlink its finalization will write, so that
    /// `switch` only finalizes and hands off. The same kernel and kargs: link the live copy of
    /// its /usr, so that `apply-live` only swaps. Run by fastswitch-prepare.path when a
    /// deployment is staged; unloads a kernel it prepared for a deployment that is no longer
    /// staged, and removes live copies that nothing mounts and no staged deployment needs
    Prepare(PrepareOpts),
    /// Make the system run the staged deployment the cheapest safe way: the lowest rung of
    /// none, live, soft-reboot, kexec, reboot that leaves only the target's code running.
    ///
    /// live: kernel identity and everything outside /usr unchanged, every affected process in a
    /// restartable service. soft-reboot (systemd 254 or later): same kernel identity; userspace restarts
    /// into the target. kexec: the new kernel without firmware. reboot: only with
    /// --reboot-fallback. `--dry-run` shows why each lower rung was rejected.
    #[command(after_help = dep_help())]
    Switch(SwitchOpts),
    /// Print the manual page (roff) on stdout: `fastswitch man | man -l -`. The packages install
    /// it as fastswitch(1).
    Man,
    /// Print a shell completion script on stdout, e.g.
    /// `fastswitch completions bash > /usr/share/bash-completion/completions/fastswitch`.
    Completions(CompletionsOpts),
}

#[derive(Debug, Args, PartialEq, Clone)]
pub(crate) struct CompletionsOpts {
    /// The shell to complete for
    #[arg(value_enum, value_name = "SHELL")]
    pub(crate) shell: clap_complete::Shell,
}

#[derive(Debug, Args, PartialEq, Clone, Default)]
pub(crate) struct KexecOpts {
    /// Print the plan and change nothing
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Finalize and load, but do not start the hand-off (run `systemctl kexec` later)
    #[arg(long)]
    pub(crate) load_only: bool,
    /// The staged deployment's finalization is locked (bootc --download-only, rpm-ostree
    /// --lock-finalization): unlock it, as `ostree admin lock-finalization --unlock` does, and
    /// switch anyway. It is then finalized at the next shutdown too; `reset` does not lock it again
    #[arg(long)]
    pub(crate) unlock: bool,
    /// The target deployment [default: staged, else pending]
    #[arg(long, value_name = "DEP")]
    pub to: Option<String>,
}

#[derive(Debug, Args, PartialEq, Clone, Default)]
pub(crate) struct PrepareOpts {
    /// Do not load the staged kernel; only link the live copy (and still unload a kernel
    /// prepared for a deployment that is gone). The shipped fastswitch-prepare.service runs
    /// this: on systemd 254 or later a loaded kernel turns every `systemctl reboot` into a
    /// kexec, so loading at staging is opt-in (a drop-in without --no-kexec, see the man page)
    #[arg(long)]
    pub(crate) no_kexec: bool,
}

#[derive(Debug, Args, PartialEq, Clone, Default)]
pub(crate) struct SwitchOpts {
    /// Print the plan and change nothing
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// When no rung without firmware is possible (kexec disabled, lockdown, unsupported image),
    /// reboot through firmware instead of refusing
    #[arg(long)]
    pub(crate) reboot_fallback: bool,
    /// The lowest rung to consider [default: none]
    #[arg(long, value_name = "RUNG")]
    pub(crate) min_rung: Option<crate::plan::ladder::Rung>,
    /// The highest rung allowed [default: reboot]; when the change needs a higher one, switch
    /// refuses (exit 5) and says why each allowed rung is not possible
    #[arg(long, value_name = "RUNG")]
    pub(crate) max_rung: Option<crate::plan::ladder::Rung>,
    /// Kexec although a volume in /etc/crypttab unlocks through a TPM2 token: the kexec'd
    /// initrd may not unseal it (PCRs are not reset by kexec)
    #[arg(long)]
    pub(crate) allow_tpm_kexec: bool,
    /// On a composefs root with fs-verity required or a signed image, give up what the boot
    /// would check, until the next boot: mount the target's .ostree.cfs although its commit
    /// signature does not check (signed hosts), or use its plain hardlinked checkout when it has
    /// no image (bound over /usr live, or as / for a soft reboot). A live apply or soft reboot
    /// that keeps the guarantees (the target's image with fs-verity, and on a signed host a
    /// valid signature and the digest it binds) needs no flag. Without it the others are
    /// refused (exit 6) and switch skips those rungs
    #[arg(long)]
    pub(crate) allow_unverified_usr: bool,
    /// The staged deployment's finalization is locked (bootc --download-only, rpm-ostree
    /// --lock-finalization): unlock it, as `ostree admin lock-finalization --unlock` does, and
    /// switch anyway. It is then finalized at the next shutdown too; `reset` does not lock it again
    #[arg(long)]
    pub(crate) unlock: bool,
    /// The target deployment [default: staged, else pending]
    #[arg(long, value_name = "DEP")]
    pub to: Option<String>,
    #[command(flatten)]
    pub(crate) services: ServiceOpts,
}

/// Which two deployments. DEP: booted, staged, pending, rollback, an index, or <checksum>.<serial>.
#[derive(Debug, Args, PartialEq, Clone, Default)]
pub(crate) struct PairOpts {
    /// The running side [default: booted]
    #[arg(long, value_name = "DEP")]
    pub from: Option<String>,
    /// The target side [default: staged, else pending]
    #[arg(long, value_name = "DEP")]
    pub to: Option<String>,
}

#[derive(Debug, Args, PartialEq, Clone, Default)]
pub(crate) struct ServiceOpts {
    /// Do not talk to systemd: no daemon-reload, no unit jobs (the plan lists none)
    #[arg(long)]
    pub(crate) no_services: bool,
    /// Handle this unit even though it is deferred by policy (dbus, logind, gettys, …); repeatable,
    /// globs allowed
    #[arg(long, value_name = "UNIT")]
    pub(crate) include: Vec<String>,
}

#[derive(Debug, Args, PartialEq, Clone, Default)]
pub(crate) struct ApplyLiveOpts {
    /// Print the plan and change nothing
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// The staged deployment's finalization is locked (bootc --download-only, rpm-ostree
    /// --lock-finalization): unlock it, as `ostree admin lock-finalization --unlock` does, and
    /// switch anyway. It is then finalized at the next shutdown too; `reset` does not lock it again
    #[arg(long)]
    pub(crate) unlock: bool,
    /// On a composefs root with fs-verity required or a signed image, give up what the boot
    /// would check, until the next boot: mount the target's .ostree.cfs although its commit
    /// signature does not check (signed hosts), or bind its plain hardlinked checkout when it
    /// has no image. A live apply that keeps the guarantees (the target's image with fs-verity,
    /// and on a signed host a valid signature and the digest it binds) needs no flag. Without
    /// it the others are refused (exit 6)
    #[arg(long)]
    pub(crate) allow_unverified_usr: bool,
    #[command(flatten)]
    pub(crate) pair: PairOpts,
    #[command(flatten)]
    pub(crate) services: ServiceOpts,
}

#[derive(Debug, Args, PartialEq, Clone, Default)]
pub(crate) struct ResetOpts {
    #[command(flatten)]
    pub(crate) services: ServiceOpts,
    /// Print the reset plan — what would be undone, step by step — and change nothing
    #[arg(long)]
    pub(crate) dry_run: bool,
}

/// Where verbs write. `--json` selects one JSON document on stdout.
pub(crate) struct Output<'a> {
    pub json: bool,
    pub(crate) out: &'a mut dyn Write,
}

impl Output<'_> {
    pub(crate) fn json_value<T: serde::Serialize>(&mut self, v: &T) -> Result<()> {
        serde_json::to_writer_pretty(&mut *self.out, v)?;
        writeln!(self.out)?;
        Ok(())
    }
}

/// Parse `args` and run. Returns the exit code; errors are returned for the one printer in
/// `main`.
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<ExitCode> {
    let mut o = Output {
        json: cli.global.json,
        out,
    };
    let paths = cli.global.paths();
    match cli.command {
        Command::Status => {
            let host = discover::load(&paths)?;
            let live = status::live::live_state(&paths)?;
            let kexec = status::kexec_state(&paths);
            if o.json {
                let mut json = status::to_json(&host, live.map(|l| l.json), kexec);
                match status::ladder::to_next(&paths, &host) {
                    Ok(l) => json.ladder = l,
                    Err(e) => json.ladder_error = Some(format!("{e:#}")),
                }
                o.json_value(&json)?;
            } else {
                let mut lines = live.map(|l| l.lines).unwrap_or_default();
                if kexec.is_some_and(|k| k.loaded) {
                    lines.push("kexec: a kernel is loaded; `systemctl kexec` boots it, `fastswitch reset` unloads it".into());
                }
                status::write_human(o.out, &host, &lines)?;
            }
            Ok(ExitCode::Ok)
        }
        Command::Diff(pair) => verbs::diff(&paths, &pair, &mut o),
        Command::ApplyLive(opts) => verbs::apply_live(&paths, &opts, &mut o),
        Command::Reset(opts) => verbs::reset(&paths, &opts, &mut o),
        Command::Recover => verbs::recover(&paths, &mut o),
        Command::Kexec(opts) => verbs::kexec(&paths, &opts, &mut o),
        Command::Prepare(opts) => prepare::prepare(&paths, &opts, &mut o),
        Command::Switch(opts) => switch::switch(&paths, &opts, &mut o),
        Command::Man => docs::man(o.out),
        Command::Completions(opts) => docs::completions(opts.shell, o.out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_global_flags_after_verb() {
        let cli =
            Cli::try_parse_from(["fastswitch", "status", "--json", "--sysroot", "/x"]).unwrap();
        assert!(cli.global.json);
        assert_eq!(
            cli.global.sysroot.as_deref(),
            Some(std::path::Path::new("/x"))
        );
        assert_eq!(cli.command, Command::Status);
    }

    #[test]
    fn help_lists_exit_codes() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit codes:"));
    }
}
