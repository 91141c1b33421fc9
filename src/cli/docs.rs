//! `fastswitch man` and `fastswitch completions`: documentation generated from the clap
//! definitions, so the manual, the completions and `--help` cannot disagree.

use super::{Cli, DEP_FORMS, GLOBAL_OPTIONS};
use crate::exit::{ExitCode, EXIT_CODES};
use anyhow::Result;
use clap::{Arg, CommandFactory};
use roff::{bold, italic, roman, Inline, Roff};
use std::io::Write;

/// Files fastswitch reads or writes, for the man page's FILES section.
const FILES: &[(&str, &str)] = &[
    (
        "/run/ostree-booted",
        "written by ostree-prepare-root on an ostree-booted host; identifies the booted deployment, and whether / is composefs (composefs, composefs.verity, composefs.signed)",
    ),
    (
        "/run/ostree/staged-deployment",
        "the staged deployment, finalized by ostree at shutdown (or by fastswitch kexec)",
    ),
    (
        "/sysroot",
        "the physical root holding ostree/ and boot/ (the default --sysroot when ostree-booted)",
    ),
    (
        "/run/fastswitch/state.json",
        "the journal of a live apply in this boot; lets an interrupted run converge and reset undo it",
    ),
    (
        "/var/lib/fastswitch/",
        "the persistent copy of the journal (state.json) and the /etc backups (etc-backup/) that reset and recover restore",
    ),
    (
        "/usr/lib/systemd/system/fastswitch-recover.service",
        "runs fastswitch recover at boot; restores /etc when a live apply did not survive the reboot",
    ),
];

/// Render fastswitch(1): one page with every command, its options, the DEP syntax, the exit
/// codes and the files.
///
/// Long: the page's sections in the order they print.
pub(crate) fn man(out: &mut dyn Write) -> Result<ExitCode> {
    let cmd = Cli::command();
    let page = clap_mangen::Man::new(cmd.clone()).manual("fastswitch manual");
    page.render_title(out)?;
    page.render_name_section(out)?;
    page.render_synopsis_section(out)?;
    page.render_description_section(out)?;
    // OPTIONS (-h, -V) and GLOBAL OPTIONS (--sysroot, --root, --run-dir, --json).
    page.render_options_section(out)?;

    let mut r = Roff::new();
    r.control("SH", ["COMMANDS"]);
    let mut built = cmd;
    built.build();
    for sub in built.get_subcommands().filter(|s| s.get_name() != "help") {
        r.control("SS", [sub.get_name()]);
        r.text(synopsis(sub));
        for para in sub
            .get_long_about()
            .or(sub.get_about())
            .map(|a| a.to_string())
            .unwrap_or_default()
            .split("\n\n")
        {
            r.control("PP", []);
            r.text([roman(ascii(&para.replace('\n', " ")))]);
        }
        for arg in own_args(sub) {
            r.control("TP", []);
            r.text(arg_label(arg));
            let help = arg
                .get_long_help()
                .or(arg.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default();
            r.text([roman(ascii(&help.replace('\n', " ")))]);
        }
    }

    r.control("SH", ["DEPLOYMENTS"]);
    r.text([
        roman("The "),
        italic("DEP"),
        roman(" argument of "),
        bold("--from"),
        roman(" and "),
        bold("--to"),
        roman(" selects a deployment:"),
    ]);
    for (form, meaning) in DEP_FORMS {
        r.control("TP", []);
        r.text([bold(ascii(form))]);
        r.text([roman(ascii(meaning))]);
    }

    r.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in EXIT_CODES {
        r.control("TP", []);
        r.text([bold(code.code().to_string())]);
        r.text([roman(*meaning)]);
    }

    r.control("SH", ["FILES"]);
    for (path, what) in FILES {
        r.control("TP", []);
        r.text([italic(*path)]);
        r.text([roman(*what)]);
    }

    r.control("SH", ["EXAMPLES"]);
    for (example, what) in [
        (
            "fastswitch diff",
            "what changed between the booted and the staged deployment, and the decision",
        ),
        (
            "fastswitch switch --dry-run",
            "the plan: nothing, a live apply, or a kexec",
        ),
        ("fastswitch switch", "carry it out"),
        ("fastswitch reset", "undo a live apply"),
    ] {
        r.control("TP", []);
        r.text([bold(example)]);
        r.text([roman(what)]);
    }

    r.control("SH", ["SEE ALSO"]);
    r.text([roman(
        "ostree(1), ostree-admin-status(1), rpm-ostree(1), bootc(8), kexec(8), systemctl(1)",
    )]);
    r.to_writer(out)?;
    page.render_version_section(out)?;
    Ok(ExitCode::Ok)
}

/// Plain ASCII for roff: groff without preconv warns about other input characters.
fn ascii(s: &str) -> String {
    s.replace('…', "...").replace('—', "--").replace('×', "x")
}

/// The arguments a subcommand defines itself: not the propagated global options, not -h.
fn own_args(sub: &clap::Command) -> impl Iterator<Item = &Arg> {
    sub.get_arguments().filter(|a| {
        !a.is_hide_set() && a.get_help_heading() != Some(GLOBAL_OPTIONS) && a.get_id() != "help"
    })
}

/// `fastswitch diff [--from DEP] [--to DEP]` in roff inlines.
fn synopsis(sub: &clap::Command) -> Vec<Inline> {
    let mut line = vec![bold(format!("fastswitch {}", sub.get_name()))];
    for arg in own_args(sub) {
        line.push(roman(" "));
        let optional = !arg.is_required_set();
        if optional {
            line.push(roman("["));
        }
        line.extend(arg_label(arg));
        if optional {
            line.push(roman("]"));
        }
        if matches!(arg.get_action(), clap::ArgAction::Append) {
            line.push(roman("..."));
        }
    }
    line
}

/// `--to DEP`, `--dry-run` or `SHELL` in roff inlines.
fn arg_label(arg: &Arg) -> Vec<Inline> {
    let value = arg
        .get_value_names()
        .and_then(|v| v.first())
        .map(|v| v.to_string())
        .unwrap_or_else(|| arg.get_id().to_string().to_uppercase());
    match arg.get_long() {
        Some(long) if arg.get_action().takes_values() => {
            vec![bold(format!("--{long}")), roman(" "), italic(value)]
        }
        Some(long) => vec![bold(format!("--{long}"))],
        None => {
            let mut v = vec![italic(value)];
            let possible = arg.get_possible_values();
            if !possible.is_empty() {
                let names: Vec<&str> = possible.iter().map(|p| p.get_name()).collect();
                v.push(roman(format!(" ({})", names.join(", "))));
            }
            v
        }
    }
}

/// Print the completion script for `shell`.
pub(crate) fn completions(shell: clap_complete::Shell, out: &mut dyn Write) -> Result<ExitCode> {
    let mut cmd = Cli::command();
    // Into a buffer first: clap_complete panics on a write error (e.g. `| head`).
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "fastswitch", &mut buf);
    out.write_all(&buf)?;
    Ok(ExitCode::Ok)
}
