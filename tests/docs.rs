//! The documentation the binary generates: the README's exit-code table equals the code's, the
//! man page renders without groff warnings, `--help` explains global options and DEP, and the
//! bash completion completes subcommands. Needs groff and man-db (scripts/install-deps).

use std::process::{Command, Stdio};

fn fastswitch(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_fastswitch"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fastswitch {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn readme_exit_codes_table_is_the_codes_table() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Exit codes\n"))
        .expect("README has an \"## Exit codes\" section");
    let table: String = section
        .lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        table,
        fastswitch::exit::exit_codes_markdown(),
        "README's exit-code table differs from EXIT_CODES in src/exit.rs"
    );
}

#[test]
fn man_page_renders_without_warnings() {
    let page = fastswitch(&["man"]);
    for section in [
        "NAME",
        "SYNOPSIS",
        "GLOBAL OPTIONS",
        "COMMANDS",
        "DEPLOYMENTS",
        "EXIT STATUS",
        "FILES",
    ] {
        assert!(
            page.contains(&format!(".SH \"{section}\""))
                || page.contains(&format!(".SH {section}\n")),
            "no {section} section"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fastswitch.1");
    std::fs::write(&path, &page).unwrap();

    // groff with every warning enabled, no output: stderr must be empty.
    let out = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(&path)
        .output()
        .expect("groff (scripts/install-deps installs groff-base)");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");

    // man -l as a user would run it (man-db runs preconv, tbl, groff).
    let out = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(&path)
        .env("MANWIDTH", "80")
        .env("MANPAGER", "cat")
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null())
        .output()
        .expect("man (scripts/install-deps installs man-db)");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["apply-live", "--sysroot", "rollback", "refused"] {
        assert!(text.contains(needle), "rendered page lacks {needle:?}");
    }
}

#[test]
fn help_has_global_options_section_and_dep_syntax() {
    let top = fastswitch(&["--help"]);
    assert!(top.contains("Global options:"), "{top}");
    assert!(top.contains("Exit codes:"), "{top}");
    for verb in ["diff", "apply-live", "kexec", "switch"] {
        let help = fastswitch(&[verb, "--help"]);
        let (own, global) = help.split_once("Global options:").unwrap();
        assert!(own.contains("--to <DEP>"), "{verb}: {help}");
        assert!(
            !own.contains("--sysroot"),
            "{verb}: global option among its own: {help}"
        );
        assert!(global.contains("--sysroot"), "{verb}: {help}");
        assert!(help.contains("DEP selects a deployment:"), "{verb}: {help}");
        for form in [
            "booted",
            "staged",
            "pending",
            "rollback",
            "<checksum>.<serial>",
        ] {
            assert!(help.contains(form), "{verb}: DEP help lacks {form}");
        }
    }
}

/// Run the bash completion function as bash's `complete` would for `words`, cursor on the last.
fn bash_complete(words: &[&str]) -> Vec<String> {
    let script = fastswitch(&["completions", "bash"]);
    let prog = r#"
        source /dev/stdin
        COMP_WORDS=("$@")
        COMP_CWORD=$(( $# - 1 ))
        COMP_LINE="$*"
        COMP_POINT=${#COMP_LINE}
        _fastswitch fastswitch "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
        printf '%s\n' "${COMPREPLY[@]}"
    "#;
    let mut child = Command::new("bash")
        .args(["-c", prog, "bash"])
        .args(words)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completion_completes_subcommands_and_options() {
    assert_eq!(bash_complete(&["fastswitch", "app"]), ["apply-live"]);
    assert_eq!(
        bash_complete(&["fastswitch", "completions", "fi"]),
        ["fish"]
    );
    assert!(bash_complete(&["fastswitch", "diff", "--"]).contains(&"--from".to_string()));
    for shell in ["zsh", "fish"] {
        assert!(fastswitch(&["completions", shell]).contains("apply-live"));
    }
}
