//! The allowed import directions between the top-level modules of `src/` (see CONTRIBUTING.md):
//! every `crate::<module>` path outside comments must be an edge listed here. A new edge is a
//! design decision: add it here and to CONTRIBUTING.md, or move the code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// module → the modules it may use. `cli` sits on top and may use everything.
const ALLOWED: &[(&str, &[&str])] = &[
    ("exit", &[]),
    ("system", &["exit", "discover", "kernel_image", "testing"]),
    ("kernel_image", &["system"]),
    ("units", &["system"]),
    ("discover", &["exit", "system"]),
    ("diff", &["discover", "exit", "system", "testing", "units"]),
    ("services", &["diff", "system", "testing", "units"]),
    (
        "plan",
        &["diff", "discover", "exit", "services", "system", "units"],
    ),
    (
        "exec",
        &[
            "diff", "discover", "exit", "plan", "services", "system", "testing", "units",
        ],
    ),
    ("status", &["diff", "discover", "exec", "plan", "system"]),
    ("testing", &["system"]),
    (
        "ops",
        &[
            "diff",
            "discover",
            "exec",
            "exit",
            "kernel_image",
            "plan",
            "services",
            "system",
        ],
    ),
];

fn visit(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            visit(&p, files);
        } else if p.extension().is_some_and(|x| x == "rs") {
            files.push(p);
        }
    }
}

/// `crate::<name>` references in code (comment lines skipped).
fn imports(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let code = code.split(" //").next().unwrap_or("");
        for (i, _) in code.match_indices("crate::") {
            let name: String = code[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    out
}

#[test]
fn modules_import_only_downwards() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    visit(&src, &mut files);
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut bad = Vec::new();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        let module = first.trim_end_matches(".rs");
        let text = std::fs::read_to_string(f).unwrap();
        let used = imports(&text);
        graph
            .entry(module.to_owned())
            .or_default()
            .extend(used.iter().filter(|m| *m != module).cloned());
        if matches!(module, "lib" | "main" | "cli") {
            continue;
        }
        for m in used {
            if m == module {
                continue;
            }
            let ok = allowed
                .get(module)
                .unwrap_or_else(|| panic!("{module} (from {}) is not in ALLOWED", rel.display()))
                .contains(&m.as_str());
            if !ok {
                bad.push(format!("{} uses crate::{m}", rel.display()));
            }
        }
    }
    // The graph as found (`--nocapture` shows it): what each module really uses.
    for (module, used) in &graph {
        let used: Vec<&str> = used.iter().map(String::as_str).collect();
        eprintln!("{module} -> {}", used.join(", "));
    }
    assert!(
        files.len() > 40,
        "found only {} files under src",
        files.len()
    );
    assert!(
        bad.is_empty(),
        "imports against the layering:\n{}",
        bad.join("\n")
    );
}

/// `cli` picks no real side-effect implementation itself: a verb hands its options to `ops` (or
/// `status`), which wires `system` in.
#[test]
fn cli_leaves_side_effects_to_ops() {
    let cli = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/cli");
    let mut files = Vec::new();
    visit(&cli, &mut files);
    let mut bad = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        if imports(&text).contains("system") {
            bad.push(f.strip_prefix(&cli).unwrap().display().to_string());
        }
    }
    assert!(
        files.len() > 4,
        "found only {} files under src/cli",
        files.len()
    );
    assert!(bad.is_empty(), "cli/ files that use crate::system: {bad:?}");
}

/// stdout belongs to `cli` (and `main`): the library returns typed values for it to render and
/// sends progress through a callback, so no other module prints.
#[test]
fn only_cli_prints_to_stdout() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    visit(&src, &mut files);
    let mut bad = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        if rel.starts_with("cli") || rel == Path::new("main.rs") {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            let code = code.replace("eprintln!(", "").replace("eprint!(", "");
            if ["println!(", "print!(", "std::io::stdout()"]
                .iter()
                .any(|p| code.contains(p))
            {
                bad.push(format!("{}:{}: {}", rel.display(), n + 1, code));
            }
        }
    }
    assert!(bad.is_empty(), "stdout outside cli/:\n{}", bad.join("\n"));
}

#[test]
fn the_checker_sees_imports_and_skips_comments() {
    let text = "use crate::services::X;\n//! see [`crate::exec::y`]\nlet a = crate::plan::z(); // crate::cli\n";
    let got: Vec<String> = imports(text).into_iter().collect();
    assert_eq!(got, ["plan", "services"]);
}
