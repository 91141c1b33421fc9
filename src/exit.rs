//! Exit codes and the one typed error that carries one.
//!
//! [`EXIT_CODES`] is the one table: `--help`, the man page's EXIT STATUS and the README's
//! "Exit codes" section are generated from it or checked against it (`tests/docs.rs`).

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

/// Every exit code with its meaning, in order. The source of `--help`'s "Exit codes:" text, the
/// man page's EXIT STATUS section and the README table (a test checks the README matches).
pub(crate) const EXIT_CODES: &[(ExitCode, &str)] = &[
    (ExitCode::Ok, "success (printed, or applied)"),
    (ExitCode::Error, "error (the message names the path or unit)"),
    (ExitCode::Usage, "bad command line"),
    (
        ExitCode::NothingToDo,
        "nothing to do (target equals the running system; no live state to reset; nothing to recover)",
    ),
    (
        ExitCode::AppliedWithFailures,
        "applied, but some unit jobs failed (see the report)",
    ),
    (
        ExitCode::RebootNeeded,
        "needs a higher rung: the change needs a boot (kernel, boot-time files or content outside /usr changed: use `fastswitch switch`), or no rung within --max-rung (or without --reboot-fallback) can switch",
    ),
    (
        ExitCode::Refused,
        "refused: a precondition is not met (not an ostree host, not ostree-booted, no staged or pending deployment, missing capability); nothing was changed",
    ),
    (ExitCode::Busy, "busy: another fastswitch run holds the lock"),
    (
        ExitCode::Interrupted,
        "a previous run was interrupted at another target, or a reset was interrupted: run `fastswitch reset`",
    ),
];

/// The "Exit codes:" block shown after `--help`.
pub(crate) fn exit_codes_help() -> String {
    let mut s = String::from("Exit codes:");
    for (code, meaning) in EXIT_CODES {
        s.push('\n');
        s.push_str(&hanging(&format!("  {}  ", code.code()), meaning));
    }
    s
}

/// `label` then `text` wrapped at 80 columns, continuation lines indented to the text, so help
/// paragraphs keep their columns (clap only rewraps lines wider than the terminal).
pub(crate) fn hanging(label: &str, text: &str) -> String {
    let indent = label.chars().count();
    let mut out = label.to_string();
    let mut col = indent;
    for (i, word) in text.split_whitespace().enumerate() {
        let w = word.chars().count();
        if i > 0 && col + 1 + w > 80 {
            out.push('\n');
            out.push_str(&" ".repeat(indent));
            col = indent;
        } else if i > 0 {
            out.push(' ');
            col += 1;
        }
        out.push_str(word);
        col += w;
    }
    out
}

/// The README's "Exit codes" table, in Markdown.
pub fn exit_codes_markdown() -> String {
    let mut s = String::from("| code | meaning |\n|---|---|\n");
    for (code, meaning) in EXIT_CODES {
        s.push_str(&format!("| {} | {meaning} |\n", code.code()));
    }
    s
}

/// An error that maps to a specific exit code. Everything else exits with [`ExitCode::Error`].
#[derive(Debug)]
pub(crate) struct Refusal {
    pub code: ExitCode,
    pub(crate) message: String,
}

impl Refusal {
    pub(crate) fn new(code: ExitCode, message: impl Into<String>) -> Self {
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
pub(crate) fn refuse(code: ExitCode, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Refusal::new(code, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_every_code_once_in_order() {
        let codes: Vec<i32> = EXIT_CODES.iter().map(|(c, _)| c.code()).collect();
        assert_eq!(codes, (0..=8).collect::<Vec<_>>());
    }
}
