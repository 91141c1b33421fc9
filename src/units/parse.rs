//! Parse systemd unit files (`systemd.syntax(7)`) and load a unit with its drop-ins from one
//! deployment tree.
//!
//! Decides: what a unit *says* after systemd's merge rules — the fragment found first in the
//! given unit directories, then every `*.conf` drop-in (instance, template, dash-prefix and
//! type-level directories; a same-named drop-in in a higher-priority directory masks lower ones;
//! applied in file-name order), with empty assignments resetting a key's list. Parsing is pure
//! (`&str` in); [`load_unit`] is the thin reader.
//!
//! Symlinks are resolved *inside* the tree root (an absolute target such as
//! `/usr/lib/systemd/system/foo.service` means `<root>/usr/lib/...`), because the tree is usually
//! a deployment that is not mounted at `/`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The unit directories of a deployment's *defaults* (what the image ships), highest priority
/// first, relative to the deployment root.
pub(crate) const DEPLOYMENT_UNIT_DIRS: &[&str] =
    &["usr/etc/systemd/system", "usr/lib/systemd/system"];

/// Unit type suffixes systemd knows (`systemd.unit(5)`).
pub(crate) const UNIT_SUFFIXES: &[&str] = &[
    "service",
    "socket",
    "device",
    "mount",
    "automount",
    "swap",
    "target",
    "path",
    "timer",
    "slice",
    "scope",
];

/// A parsed unit: section → key → values, in file order after systemd's list semantics.
///
/// Every assignment appends; an empty assignment (`ExecStart=`) clears what came before it, as
/// systemd does for list settings. Keys and sections are case-sensitive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unit {
    pub(crate) sections: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

/// A syntax error in a unit file, naming the file and the (first) line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {message}", path.display())]
pub struct ParseError {
    pub path: PathBuf,
    pub(crate) line: usize,
    pub(crate) message: String,
}

impl Unit {
    /// Parse one file's text. `source` is only used in error messages.
    pub fn parse(text: &str, source: &Path) -> Result<Unit, ParseError> {
        let mut unit = Unit::default();
        unit.merge_str(text, source)?;
        Ok(unit)
    }

    /// Parse `text` (a fragment or a drop-in) on top of what is already in `self`.
    pub(crate) fn merge_str(&mut self, text: &str, source: &Path) -> Result<(), ParseError> {
        let err = |line: usize, message: String| ParseError {
            path: source.to_path_buf(),
            line,
            message,
        };
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut section: Option<String> = None;
        // A logical line being continued with a trailing backslash: (first line number, text).
        let mut pending: Option<(usize, String)> = None;

        for (idx, raw) in text.lines().enumerate() {
            let lineno = idx + 1;
            let (start, logical) = match pending.take() {
                Some((start, mut acc)) => {
                    // systemd skips comment lines inside a continuation.
                    if is_comment(raw.trim_start()) {
                        pending = Some((start, acc));
                        continue;
                    }
                    acc.push_str(raw);
                    (start, acc)
                }
                None => {
                    let trimmed = raw.trim_start();
                    if trimmed.is_empty() || is_comment(trimmed) {
                        continue;
                    }
                    (lineno, raw.to_string())
                }
            };
            if let Some(without) = strip_continuation(&logical) {
                // The backslash is replaced by a space and the next line is appended.
                pending = Some((start, format!("{without} ")));
                continue;
            }
            self.parse_logical_line(logical.trim(), &mut section)
                .map_err(|m| err(start, m))?;
        }
        if let Some((start, logical)) = pending {
            // A file ending in a backslash: systemd parses what it has.
            let logical = logical.trim().to_string();
            if !logical.is_empty() {
                self.parse_logical_line(&logical, &mut section)
                    .map_err(|m| err(start, m))?;
            }
        }
        Ok(())
    }

    fn parse_logical_line(
        &mut self,
        line: &str,
        section: &mut Option<String>,
    ) -> Result<(), String> {
        if line.is_empty() {
            return Ok(());
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest
                .strip_suffix(']')
                .ok_or_else(|| format!("invalid section header {line:?}"))?;
            if name.is_empty() || name.contains(['[', ']']) {
                return Err(format!("invalid section header {line:?}"));
            }
            self.sections.entry(name.to_string()).or_default();
            *section = Some(name.to_string());
            return Ok(());
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("missing '=' in {line:?}"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("empty key in {line:?}"));
        }
        let Some(section) = section.as_ref() else {
            return Err(format!("assignment {key:?} outside of any [Section]"));
        };
        let values = self
            .sections
            .entry(section.clone())
            .or_default()
            .entry(key.to_string())
            .or_default();
        let value = value.trim();
        if value.is_empty() {
            values.clear();
        } else {
            values.push(value.to_string());
        }
        Ok(())
    }

    /// All values of `section`/`key`, if the key was assigned at all.
    pub(crate) fn values(&self, section: &str, key: &str) -> Option<&[String]> {
        self.sections
            .get(section)
            .and_then(|s| s.get(key))
            .map(Vec::as_slice)
    }

    /// The last value of `section`/`key` (what systemd uses for single-valued settings).
    pub(crate) fn last(&self, section: &str, key: &str) -> Option<&str> {
        self.values(section, key)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    /// `section`/`key` read as a systemd boolean; `None` when unset or not a boolean.
    pub fn bool(&self, section: &str, key: &str) -> Option<bool> {
        self.last(section, key).and_then(parse_bool)
    }

    /// Whitespace-separated words of every value of `section`/`key` (e.g. `Sockets=`).
    pub fn words(&self, section: &str, key: &str) -> Vec<String> {
        self.values(section, key)
            .unwrap_or_default()
            .iter()
            .flat_map(|v| v.split_whitespace())
            .map(str::to_string)
            .collect()
    }
}

/// systemd's boolean spellings (`parse_boolean()`).
pub(crate) fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

fn is_comment(trimmed: &str) -> bool {
    trimmed.starts_with('#') || trimmed.starts_with(';')
}

/// If `line` ends in an unescaped backslash (the very last character, as systemd requires),
/// return it without the backslash.
fn strip_continuation(line: &str) -> Option<&str> {
    let mut escaped = false;
    for c in line.chars() {
        escaped = !escaped && c == '\\';
    }
    if escaped {
        Some(&line[..line.len() - 1])
    } else {
        None
    }
}

/// Whether `name` is a syntactically plausible unit name (`foo.service`, `foo@.service`,
/// `foo@bar.service`).
pub(crate) fn is_unit_name(name: &str) -> bool {
    match name.rsplit_once('.') {
        Some((stem, suffix)) => {
            !stem.is_empty() && UNIT_SUFFIXES.contains(&suffix) && !name.contains('/')
        }
        None => false,
    }
}

/// `foo@bar.service` → `Some("foo@.service")`; `None` for non-instances.
pub(crate) fn template_of(name: &str) -> Option<String> {
    let (stem, suffix) = name.rsplit_once('.')?;
    let (prefix, instance) = stem.split_once('@')?;
    if instance.is_empty() {
        return None;
    }
    Some(format!("{prefix}@.{suffix}"))
}

/// Where a unit was found and what it says, for one tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub(crate) enum UnitLookup {
    /// No fragment in any of the directories.
    NotFound,
    /// The fragment is a symlink to `/dev/null` or an empty file.
    Masked {
        path: PathBuf,
    },
    Found(LoadedUnit),
}

/// A unit read from one tree, with the files it came from (absolute in-tree paths).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LoadedUnit {
    pub(crate) name: String,
    /// The fragment that was read (after following aliases inside the tree).
    pub(crate) fragment: PathBuf,
    /// Drop-ins in the order they were applied.
    pub(crate) dropins: Vec<PathBuf>,
    pub unit: Unit,
}

/// Load unit `name` from `root`, searching `dirs` (relative to `root`, highest priority first),
/// and apply its drop-ins.
///
/// Template instances fall back to the template's fragment (`foo@bar.service` →
/// `foo@.service`). Errors name the file (and line, for syntax errors).
pub(crate) fn load_unit(root: &Path, dirs: &[&str], name: &str) -> Result<UnitLookup> {
    let mut fragment: Option<(PathBuf, Resolved)> = None;
    let mut candidates = vec![name.to_string()];
    candidates.extend(template_of(name));
    'outer: for candidate in &candidates {
        for dir in dirs {
            let in_tree = Path::new("/").join(dir).join(candidate);
            if let Some(resolved) = resolve_in_root(root, &in_tree)? {
                fragment = Some((in_tree, resolved));
                break 'outer;
            }
        }
    }
    let Some((in_tree, resolved)) = fragment else {
        return Ok(UnitLookup::NotFound);
    };
    let fragment_path = match resolved {
        Resolved::DevNull => return Ok(UnitLookup::Masked { path: in_tree }),
        Resolved::Path(p) => p,
    };
    let text = read_in_root(root, &fragment_path)?;
    if text.trim().is_empty() {
        return Ok(UnitLookup::Masked { path: in_tree });
    }
    let mut unit = Unit::parse(&text, &fragment_path)?;
    let dropins = find_dropins(root, dirs, &dropin_dir_names(name))?;
    for dropin in &dropins {
        let text = read_in_root(root, dropin)?;
        unit.merge_str(&text, dropin)?;
    }
    Ok(UnitLookup::Found(LoadedUnit {
        name: name.to_string(),
        fragment: fragment_path,
        dropins,
        unit,
    }))
}

/// Merge only the drop-ins found in `<dir>/<dropin_dir_name>` for every dir (used for type-level
/// `service.d/` and dash-prefix `foo-.service.d/` directories, which have no fragment).
pub(crate) fn load_dropins_only(root: &Path, dirs: &[&str], dropin_dir_name: &str) -> Result<Unit> {
    let mut unit = Unit::default();
    for dropin in find_dropins(root, dirs, &[dropin_dir_name.to_string()])? {
        let text = read_in_root(root, &dropin)?;
        unit.merge_str(&text, &dropin)?;
    }
    Ok(unit)
}

/// The `*.d` directory names systemd consults for `name`, most specific first:
/// `foo-bar@x.service.d`, `foo-bar@.service.d`, `foo-bar-.service.d`, `foo-.service.d`,
/// `service.d`.
pub(crate) fn dropin_dir_names(name: &str) -> Vec<String> {
    let mut out = vec![format!("{name}.d")];
    let Some((stem, suffix)) = name.rsplit_once('.') else {
        return out;
    };
    if let Some(template) = template_of(name) {
        out.push(format!("{template}.d"));
    }
    let prefix_part = stem.split_once('@').map_or(stem, |(p, _)| p);
    // Dash-truncated prefixes: "a-b-c" → "a-b-", "a-".
    let mut end = prefix_part.len();
    while let Some(pos) = prefix_part[..end].rfind('-') {
        let p = &prefix_part[..=pos];
        let dir = format!("{p}.{suffix}.d");
        if !out.contains(&dir) {
            out.push(dir);
        }
        end = pos;
    }
    out.push(format!("{suffix}.d"));
    out
}

/// Collect `*.conf` drop-ins: directories are consulted in (dir priority, name specificity)
/// order, the first file of a given name wins, and the result is sorted by file name.
/// Drop-ins masked with `/dev/null` are dropped.
fn find_dropins(root: &Path, dirs: &[&str], dir_names: &[String]) -> Result<Vec<PathBuf>> {
    let mut by_name: BTreeMap<String, Option<PathBuf>> = BTreeMap::new();
    for dir in dirs {
        for dir_name in dir_names {
            let in_tree = Path::new("/").join(dir).join(dir_name);
            let host = host_path(root, &in_tree);
            let entries = match std::fs::read_dir(&host) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("reading {}", host.display()));
                }
            };
            for entry in entries {
                let entry = entry.with_context(|| format!("reading {}", host.display()))?;
                let file_name = entry.file_name();
                let Some(file_name) = file_name.to_str() else {
                    continue;
                };
                if !file_name.ends_with(".conf") || by_name.contains_key(file_name) {
                    continue;
                }
                let path = in_tree.join(file_name);
                let resolved = match resolve_in_root(root, &path)? {
                    Some(Resolved::Path(p)) => Some(p),
                    Some(Resolved::DevNull) => None,
                    None => continue, // dangling symlink: systemd ignores it
                };
                by_name.insert(file_name.to_string(), resolved);
            }
        }
    }
    Ok(by_name.into_values().flatten().collect())
}

/// What an in-tree path resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resolved {
    Path(PathBuf),
    DevNull,
}

/// `root` + absolute in-tree `path`.
pub(crate) fn host_path(root: &Path, in_tree: &Path) -> PathBuf {
    let rel = in_tree.strip_prefix("/").unwrap_or(in_tree);
    root.join(rel)
}

fn read_in_root(root: &Path, in_tree: &Path) -> Result<String> {
    let host = host_path(root, in_tree);
    crate::system::files::read_to_string(&host, crate::system::files::Follow::Yes)
        .with_context(|| format!("reading unit file {}", host.display()))
}

/// Follow symlinks of an absolute in-tree path component by component, keeping absolute link
/// targets inside `root`. Returns `None` when the path (or a link target) does not exist.
fn resolve_in_root(root: &Path, in_tree: &Path) -> Result<Option<Resolved>> {
    const MAX_LINKS: usize = 40;
    let mut links = 0;
    // Components still to walk, front first.
    let mut todo: Vec<std::ffi::OsString> = components(in_tree);
    todo.reverse();
    let mut done = PathBuf::from("/");
    while let Some(comp) = todo.pop() {
        if comp == OsStr::new("..") {
            done.pop();
            continue;
        }
        let next = done.join(&comp);
        if next == Path::new("/dev/null") {
            return Ok(Some(Resolved::DevNull));
        }
        let host = host_path(root, &next);
        let meta = match std::fs::symlink_metadata(&host) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("inspecting {}", host.display())),
        };
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                anyhow::bail!("too many levels of symbolic links at {}", host.display());
            }
            let target = std::fs::read_link(&host)
                .with_context(|| format!("reading symlink {}", host.display()))?;
            if target.is_absolute() {
                done = PathBuf::from("/");
            }
            let mut target_comps = components(&target);
            target_comps.reverse();
            todo.extend(target_comps);
            if target == Path::new("/dev/null") {
                return Ok(Some(Resolved::DevNull));
            }
        } else {
            done = next;
        }
    }
    Ok(Some(Resolved::Path(done)))
}

fn components(p: &Path) -> Vec<std::ffi::OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn p(text: &str) -> Unit {
        Unit::parse(text, Path::new("/t/test.service")).unwrap()
    }

    fn vals(u: &Unit, s: &str, k: &str) -> Vec<String> {
        u.values(s, k).unwrap_or_default().to_vec()
    }

    #[test]
    fn parses_sections_repeated_keys_and_comments() {
        let u = p("# head\n; also\n[Unit]\nDescription = Foo bar \n\n[Service]\nExecStartPre=/bin/a\nExecStartPre=/bin/b\n  # indented comment\nType=simple\n");
        assert_eq!(vals(&u, "Unit", "Description"), ["Foo bar"]);
        assert_eq!(vals(&u, "Service", "ExecStartPre"), ["/bin/a", "/bin/b"]);
        assert_eq!(u.last("Service", "Type"), Some("simple"));
        assert_eq!(u.sections.len(), 2);
    }

    #[test]
    fn empty_assignment_resets_the_list() {
        let mut u = p("[Service]\nExecStart=/bin/old\nEnvironment=A=1\n");
        u.merge_str(
            "[Service]\nExecStart=\nExecStart=/bin/new\nEnvironment=B=2\n",
            Path::new("/t/x.conf"),
        )
        .unwrap();
        assert_eq!(vals(&u, "Service", "ExecStart"), ["/bin/new"]);
        assert_eq!(vals(&u, "Service", "Environment"), ["A=1", "B=2"]);
        let cleared = p("[Service]\nExecStart=/bin/a\nExecStart=\n");
        assert_eq!(cleared.values("Service", "ExecStart"), Some(&[][..]));
    }

    #[test]
    fn line_continuation_joins_with_a_space() {
        let u = p("[Service]\nExecStart=/bin/foo \\\n  --bar \\\n# comment inside\n  --baz\nType=oneshot\n");
        assert_eq!(
            vals(&u, "Service", "ExecStart"),
            ["/bin/foo    --bar    --baz"]
        );
        assert_eq!(u.last("Service", "Type"), Some("oneshot"));
        // An escaped backslash at the end is not a continuation.
        let u = p("[Service]\nA=x\\\\\nB=y\n");
        assert_eq!(vals(&u, "Service", "A"), ["x\\\\"]);
        assert_eq!(vals(&u, "Service", "B"), ["y"]);
    }

    #[test]
    fn values_keep_inner_equals_and_quotes() {
        let u = p("[Service]\nEnvironment=\"A=b c\" D=e\n");
        assert_eq!(vals(&u, "Service", "Environment"), ["\"A=b c\" D=e"]);
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = Unit::parse(
            "[Unit]\nDescription=x\njunk line\n",
            Path::new("/u/a.service"),
        )
        .unwrap_err();
        assert_eq!(e.line, 3);
        assert_eq!(e.path, Path::new("/u/a.service"));
        assert!(
            e.to_string().starts_with("/u/a.service:3: missing '='"),
            "{e}"
        );

        let e = Unit::parse("\nKey=v\n[Unit]\n", Path::new("/u/b.service")).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("outside of any [Section]"), "{e}");

        let e = Unit::parse("[Unit\n", Path::new("/u/c.service")).unwrap_err();
        assert_eq!(e.line, 1);
        let e = Unit::parse("[Unit]\n=v\n", Path::new("/u/d.service")).unwrap_err();
        assert!(e.message.contains("empty key"));
    }

    #[test]
    fn booleans() {
        let u = p("[Unit]\nA=yes\nB=off\nC=maybe\nD=1\nD=0\n");
        assert_eq!(u.bool("Unit", "A"), Some(true));
        assert_eq!(u.bool("Unit", "B"), Some(false));
        assert_eq!(u.bool("Unit", "C"), None);
        assert_eq!(u.bool("Unit", "D"), Some(false));
        assert_eq!(u.bool("Unit", "E"), None);
    }

    #[test]
    fn names() {
        assert!(is_unit_name("foo.service"));
        assert!(is_unit_name("foo@.service"));
        assert!(!is_unit_name("foo.conf"));
        assert!(!is_unit_name(".service"));
        assert_eq!(
            template_of("getty@tty1.service").as_deref(),
            Some("getty@.service")
        );
        assert_eq!(template_of("getty@.service"), None);
        assert_eq!(template_of("foo.service"), None);
        assert_eq!(
            dropin_dir_names("foo-bar-baz@x.service"),
            [
                "foo-bar-baz@x.service.d",
                "foo-bar-baz@.service.d",
                "foo-bar-.service.d",
                "foo-.service.d",
                "service.d"
            ]
        );
        assert_eq!(
            dropin_dir_names("sshd.socket"),
            ["sshd.socket.d", "socket.d"]
        );
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn found(l: UnitLookup) -> LoadedUnit {
        match l {
            UnitLookup::Found(u) => u,
            other => panic!("expected Found, got {other:?}"),
        }
    }

    #[test]
    fn load_applies_priority_dropins_in_name_order_and_masks() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        write(
            root,
            "usr/lib/systemd/system/foo.service",
            "[Service]\nExecStart=/usr/bin/foo\n",
        );
        // A higher-priority fragment wins entirely.
        write(
            root,
            "usr/etc/systemd/system/foo.service",
            "[Service]\nExecStart=/usr/bin/foo --etc\n",
        );
        write(
            root,
            "usr/lib/systemd/system/foo.service.d/20-b.conf",
            "[Service]\nEnvironment=B=lib\n",
        );
        write(
            root,
            "usr/lib/systemd/system/foo.service.d/10-a.conf",
            "[Service]\nEnvironment=A=lib\n",
        );
        // Same file name in the higher-priority dir masks the lower one.
        write(
            root,
            "usr/etc/systemd/system/foo.service.d/20-b.conf",
            "[Service]\nEnvironment=B=etc\n",
        );
        // A type-level drop-in applies too, sorted by name among the others.
        write(
            root,
            "usr/lib/systemd/system/service.d/15-all.conf",
            "[Service]\nEnvironment=ALL=1\n",
        );
        // A drop-in masked with /dev/null is ignored.
        std::fs::create_dir_all(root.join("usr/etc/systemd/system/foo.service.d")).unwrap();
        write(
            root,
            "usr/lib/systemd/system/foo.service.d/30-masked.conf",
            "[Service]\nEnvironment=MASKED=1\n",
        );
        symlink(
            "/dev/null",
            root.join("usr/etc/systemd/system/foo.service.d/30-masked.conf"),
        )
        .unwrap();
        // Non-.conf files are ignored.
        write(
            root,
            "usr/lib/systemd/system/foo.service.d/README",
            "not ini",
        );

        let u = found(load_unit(root, DEPLOYMENT_UNIT_DIRS, "foo.service").unwrap());
        assert_eq!(u.fragment, Path::new("/usr/etc/systemd/system/foo.service"));
        assert_eq!(
            u.dropins,
            [
                PathBuf::from("/usr/lib/systemd/system/foo.service.d/10-a.conf"),
                PathBuf::from("/usr/lib/systemd/system/service.d/15-all.conf"),
                PathBuf::from("/usr/etc/systemd/system/foo.service.d/20-b.conf"),
            ]
        );
        assert_eq!(
            vals(&u.unit, "Service", "Environment"),
            ["A=lib", "ALL=1", "B=etc"]
        );
        assert_eq!(
            vals(&u.unit, "Service", "ExecStart"),
            ["/usr/bin/foo --etc"]
        );
    }

    #[test]
    fn load_templates_aliases_masks_and_missing() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        write(
            root,
            "usr/lib/systemd/system/getty@.service",
            "[Service]\nExecStart=/sbin/agetty %I\n",
        );
        write(
            root,
            "usr/lib/systemd/system/getty@tty1.service.d/x.conf",
            "[Service]\nTTYPath=/dev/tty1\n",
        );
        let u = found(load_unit(root, DEPLOYMENT_UNIT_DIRS, "getty@tty1.service").unwrap());
        assert_eq!(
            u.fragment,
            Path::new("/usr/lib/systemd/system/getty@.service")
        );
        assert_eq!(u.unit.last("Service", "TTYPath"), Some("/dev/tty1"));

        // Absolute alias symlink resolves inside the tree, not on the host.
        write(
            root,
            "usr/lib/systemd/system/real.service",
            "[Service]\nExecStart=/usr/bin/real\n",
        );
        std::fs::create_dir_all(root.join("usr/etc/systemd/system")).unwrap();
        symlink(
            "/usr/lib/systemd/system/real.service",
            root.join("usr/etc/systemd/system/alias.service"),
        )
        .unwrap();
        let u = found(load_unit(root, DEPLOYMENT_UNIT_DIRS, "alias.service").unwrap());
        assert_eq!(
            u.fragment,
            Path::new("/usr/lib/systemd/system/real.service")
        );

        symlink(
            "/dev/null",
            root.join("usr/etc/systemd/system/real.service"),
        )
        .unwrap();
        assert_eq!(
            load_unit(root, DEPLOYMENT_UNIT_DIRS, "real.service").unwrap(),
            UnitLookup::Masked {
                path: PathBuf::from("/usr/etc/systemd/system/real.service")
            }
        );
        write(root, "usr/lib/systemd/system/empty.service", "\n");
        assert!(matches!(
            load_unit(root, DEPLOYMENT_UNIT_DIRS, "empty.service").unwrap(),
            UnitLookup::Masked { .. }
        ));
        assert_eq!(
            load_unit(root, DEPLOYMENT_UNIT_DIRS, "nope.service").unwrap(),
            UnitLookup::NotFound
        );
    }

    #[test]
    fn load_reports_the_bad_dropin() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        write(
            root,
            "usr/lib/systemd/system/a.service",
            "[Service]\nType=simple\n",
        );
        write(
            root,
            "usr/lib/systemd/system/a.service.d/bad.conf",
            "[Service]\n\nbogus\n",
        );
        let e = load_unit(root, DEPLOYMENT_UNIT_DIRS, "a.service").unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("/usr/lib/systemd/system/a.service.d/bad.conf:3"),
            "{msg}"
        );
    }
}
