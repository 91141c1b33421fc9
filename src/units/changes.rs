//! The unit changes between two deployment trees (the units part of `crate::diff`).
//!
//! Decides: which units a deployment switch touches, and how — a unit added, removed (or
//! masked), or modified (with its [`UnitComparison`]), and which units became newly wanted or
//! required by another unit (`*.wants/`, `*.requires/`, `*.upholds/` links), i.e. enablement
//! changes. Only the image's own unit directories are compared: `usr/lib/systemd/system` and
//! `usr/etc/systemd/system` (the deployment's `/etc` defaults); the admin's `/etc` is the
//! `/etc` merge's business.
//!
//! The diff looks only at the paths the `/usr` diff found changed ([`diff_units_changed`]), so
//! its cost follows the change, not the size of the unit directories. Files that are the same
//! inode in both trees (ostree hardlinks the objects of unchanged files) are not read. Reported paths are absolute in-tree paths
//! (`/usr/lib/systemd/system/foo.service`).
//!
//! Drop-ins that are not tied to one unit are reported under a glob: a type-level directory
//! `service.d/` as `*.service`, a dash-prefix directory `foo-.service.d/` as `foo-*.service`;
//! a template's drop-ins under the template name `foo@.service`. [`unit_pattern_matches`] says
//! which concrete units such an entry covers.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::compare::{compare_units, Change, UnitComparison};
use super::parse::{
    host_path, is_unit_name, load_dropins_only, load_unit, template_of, Unit, UnitLookup,
    DEPLOYMENT_UNIT_DIRS, UNIT_SUFFIXES,
};

/// One unit-level difference between two trees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitFileChange {
    /// A unit name, a template (`foo@.service`) or a drop-in glob (`*.service`, `foo-*.service`).
    pub unit: String,
    pub(crate) change: UnitChange,
    /// The files behind this change (fragment, drop-ins or dependency links), in-tree paths.
    pub files: Vec<FileChange>,
    /// Switch-related settings of the unit (from the new tree, or the old one if removed).
    pub(crate) flags: UnitFlags,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum UnitChange {
    /// The unit exists only in the new tree (or was unmasked).
    Added,
    /// The unit no longer exists in the new tree, or is masked there.
    Removed { masked: bool },
    /// The unit's fragment or drop-ins differ.
    Modified { comparison: UnitComparison },
    /// `by` newly wants/requires/upholds the unit.
    Enabled { by: String, dependency: Dependency },
    /// `by` no longer wants/requires/upholds the unit.
    Disabled { by: String, dependency: Dependency },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Dependency {
    Wants,
    Requires,
    Upholds,
}

impl Dependency {
    fn dir_suffix(self) -> &'static str {
        match self {
            Dependency::Wants => ".wants",
            Dependency::Requires => ".requires",
            Dependency::Upholds => ".upholds",
        }
    }

    fn from_dir(dir: &str) -> Option<(&str, Dependency)> {
        [
            (".wants", Dependency::Wants),
            (".requires", Dependency::Requires),
            (".upholds", Dependency::Upholds),
        ]
        .into_iter()
        .find_map(|(suffix, dep)| dir.strip_suffix(suffix).map(|by| (by, dep)))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChange {
    pub path: PathBuf,
    pub(crate) change: Change,
}

/// The unit settings that steer a live switch (NixOS's `X-` keys plus systemd's own refusals).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UnitFlags {
    /// `[Unit] RefuseManualStart=`
    pub(crate) refuse_manual_start: bool,
    /// `[Unit] RefuseManualStop=`
    pub(crate) refuse_manual_stop: bool,
    /// `[Service] X-RestartIfChanged=` (default true); false: never restart it live.
    pub(crate) restart_if_changed: bool,
    /// `[Service] X-ReloadIfChanged=`: reload instead of restart when its unit changed.
    pub(crate) reload_if_changed: bool,
    /// `[Unit] X-StopOnRemoval=` (default true).
    pub(crate) stop_on_removal: bool,
    /// `[Unit] X-OnlyManualStart=`
    pub(crate) only_manual_start: bool,
    /// `[Service] X-NotSocketActivated=`
    pub(crate) not_socket_activated: bool,
    /// `[Service] Sockets=`
    pub(crate) sockets: Vec<String>,
}

impl Default for UnitFlags {
    fn default() -> Self {
        UnitFlags {
            refuse_manual_start: false,
            refuse_manual_stop: false,
            restart_if_changed: true,
            reload_if_changed: false,
            stop_on_removal: true,
            only_manual_start: false,
            not_socket_activated: false,
            sockets: Vec::new(),
        }
    }
}

impl UnitFlags {
    pub(crate) fn from_unit(u: &Unit) -> UnitFlags {
        let d = UnitFlags::default();
        UnitFlags {
            refuse_manual_start: u
                .bool("Unit", "RefuseManualStart")
                .unwrap_or(d.refuse_manual_start),
            refuse_manual_stop: u
                .bool("Unit", "RefuseManualStop")
                .unwrap_or(d.refuse_manual_stop),
            restart_if_changed: u
                .bool("Service", "X-RestartIfChanged")
                .unwrap_or(d.restart_if_changed),
            reload_if_changed: u
                .bool("Service", "X-ReloadIfChanged")
                .unwrap_or(d.reload_if_changed),
            stop_on_removal: u
                .bool("Unit", "X-StopOnRemoval")
                .unwrap_or(d.stop_on_removal),
            only_manual_start: u
                .bool("Unit", "X-OnlyManualStart")
                .unwrap_or(d.only_manual_start),
            not_socket_activated: u
                .bool("Service", "X-NotSocketActivated")
                .unwrap_or(d.not_socket_activated),
            sockets: u.words("Service", "Sockets"),
        }
    }
}

/// Whether a [`UnitFileChange::unit`] (a name, template or glob) covers the concrete `unit`.
pub(crate) fn unit_pattern_matches(pattern: &str, unit: &str) -> bool {
    if pattern == unit {
        return true;
    }
    if let Some(template) = template_of(unit) {
        if template == pattern {
            return true;
        }
    }
    match pattern.split_once('*') {
        Some((prefix, suffix)) => {
            unit.len() >= prefix.len() + suffix.len()
                && unit.starts_with(prefix)
                && unit.ends_with(suffix)
        }
        None => false,
    }
}

/// Diff the units of two deployment trees using the deployment's default unit directories
/// ([`DEPLOYMENT_UNIT_DIRS`]). The directory listings say which paths can differ (a name on one
/// side only, or another inode: ostree hardlinks an unchanged object into both checkouts), and
/// only those are looked at ([`diff_units_changed_in`]); where listings cannot tell (a
/// filesystem whose `d_ino` is not the inode), the directories are scanned whole.
pub(crate) fn diff_units(from_root: &Path, to_root: &Path) -> Result<Vec<UnitFileChange>> {
    let dirs = DEPLOYMENT_UNIT_DIRS;
    match changed_by_listing(from_root, to_root, dirs) {
        Some(changed) => {
            let changed: Vec<&Path> = changed.iter().map(PathBuf::as_path).collect();
            diff_units_changed_in(from_root, to_root, dirs, &changed)
        }
        None => diff_units_in(from_root, to_root, dirs),
    }
}

/// Diff the units of two trees over `dirs` (relative to each root, highest priority first).
///
/// Long: three passes over the same two scans (file changes, per-unit grouping with the
/// comparison, enablement links) that share their maps.
pub(crate) fn diff_units_in(
    from_root: &Path,
    to_root: &Path,
    dirs: &[&str],
) -> Result<Vec<UnitFileChange>> {
    // The two scans are a few hundred stat calls each: side by side.
    let (old, new) = std::thread::scope(|sc| {
        let old = sc.spawn(|| scan_tree(from_root, dirs));
        let new = scan_tree(to_root, dirs);
        (
            old.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
            new,
        )
    });
    diff_scanned(from_root, to_root, dirs, old?, new?)
}

/// The unit changes when only `changed` (absolute in-tree paths; a directory present on one
/// side only stands for everything below it) can differ between the two trees: only those
/// paths are looked at. The result is [`diff_units_in`]'s exactly: a file outside `changed` is
/// the same in both trees, so it changes no unit, and a dependency link outside `changed` is in
/// both trees, which the enablement check looks up on disk.
pub(crate) fn diff_units_changed_in(
    from_root: &Path,
    to_root: &Path,
    dirs: &[&str],
    changed: &[&Path],
) -> Result<Vec<UnitFileChange>> {
    let under: Vec<&Path> = changed
        .iter()
        .copied()
        .filter(|p| dirs.iter().any(|d| p.starts_with(Path::new("/").join(d))))
        .collect();
    if under.is_empty() {
        return Ok(Vec::new());
    }
    let old = scan_paths(from_root, to_root, dirs, &under)?;
    let new = scan_paths(to_root, from_root, dirs, &under)?;
    diff_scanned(from_root, to_root, dirs, old, new)
}

/// The paths below `dirs` that can differ between the two trees, from directory listings alone
/// (no `stat`, no read): a name on one side only, a name that is a directory on one side only,
/// or a non-directory with another inode (ostree checkouts hardlink an unchanged object into
/// both deployments). `None` when listings cannot tell (a filesystem whose `d_ino` is not the
/// inode, two filesystems, an error).
fn changed_by_listing(from_root: &Path, to_root: &Path, dirs: &[&str]) -> Option<Vec<PathBuf>> {
    fn listing(dir: &Path) -> Option<BTreeMap<std::ffi::OsString, (u64, bool)>> {
        use std::os::unix::fs::DirEntryExt;
        std::fs::read_dir(dir)
            .ok()?
            .map(|e| {
                let e = e.ok()?;
                Some((e.file_name(), (e.ino(), e.file_type().ok()?.is_dir())))
            })
            .collect()
    }
    fn differing(a: &Path, b: &Path, in_tree: &Path, out: &mut Vec<PathBuf>) -> Option<()> {
        let (la, lb) = (listing(a)?, listing(b)?);
        for name in la.keys().chain(lb.keys()).collect::<BTreeSet<_>>() {
            let p = in_tree.join(name);
            match (la.get(name), lb.get(name)) {
                (Some((_, true)), Some((_, true))) => {
                    differing(&a.join(name), &b.join(name), &p, out)?
                }
                (Some((ia, false)), Some((ib, false))) if ia == ib => {}
                _ => out.push(p),
            }
        }
        Some(())
    }
    let mut out = Vec::new();
    for dir in dirs {
        let in_tree = Path::new("/").join(dir);
        let (a, b) = (host_path(from_root, &in_tree), host_path(to_root, &in_tree));
        let (ma, mb) = (std::fs::symlink_metadata(&a), std::fs::symlink_metadata(&b));
        match (ma, mb) {
            (Err(ea), Err(eb)) => {
                if ea.kind() != std::io::ErrorKind::NotFound
                    || eb.kind() != std::io::ErrorKind::NotFound
                {
                    return None;
                }
            }
            (Ok(ma), Ok(mb)) => {
                // overlayfs and FUSE may list a `d_ino` that is not the inode.
                let inodes_hold = |p: &Path| {
                    const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
                    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
                    std::fs::File::open(p).is_ok_and(|f| {
                        rustix::fs::fstatfs(&f).is_ok_and(|s| {
                            // `f_type`'s integer type differs between architectures.
                            #[allow(clippy::unnecessary_cast)]
                            let t = s.f_type as i64;
                            t != OVERLAYFS_SUPER_MAGIC && t != FUSE_SUPER_MAGIC
                        })
                    })
                };
                if !(ma.is_dir()
                    && mb.is_dir()
                    && ma.dev() == mb.dev()
                    && inodes_hold(&a)
                    && inodes_hold(&b))
                {
                    return None;
                }
                differing(&a, &b, &in_tree, &mut out)?;
            }
            // The directory on one side only: everything below it differs.
            _ => out.push(in_tree),
        }
    }
    Some(out)
}

/// The part of [`scan_tree`] of `root` that `paths` name: each path that exists in `root`,
/// and everything below a directory that is not a directory in `other` (added, removed or
/// turned into a directory: the `/usr` diff lists such a directory once).
fn scan_paths(
    root: &Path,
    other: &Path,
    dirs: &[&str],
    paths: &[&Path],
) -> Result<BTreeMap<PathBuf, Entry>> {
    let mut out = BTreeMap::new();
    for p in paths {
        let host = host_path(root, p);
        let meta = match std::fs::symlink_metadata(&host) {
            Ok(m) => m,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                continue
            }
            Err(e) => return Err(e).with_context(|| format!("inspecting {}", host.display())),
        };
        if meta.is_dir() {
            let other_is_dir =
                std::fs::symlink_metadata(host_path(other, p)).is_ok_and(|m| m.is_dir());
            if !other_is_dir {
                walk(root, p, &mut out)?;
            }
        }
        // A unit directory itself is not an entry of the full scan either.
        if dirs.iter().any(|d| *p == Path::new("/").join(d)) {
            continue;
        }
        out.insert(p.to_path_buf(), entry_of(&host, &meta)?);
    }
    Ok(out)
}

/// The changes between two scans (whole unit directories, or the changed paths only).
fn diff_scanned(
    from_root: &Path,
    to_root: &Path,
    dirs: &[&str],
    old: BTreeMap<PathBuf, Entry>,
    new: BTreeMap<PathBuf, Entry>,
) -> Result<Vec<UnitFileChange>> {
    // Which file-level entries differ.
    let mut file_changes: Vec<FileChange> = Vec::new();
    for path in old.keys().chain(new.keys()).collect::<BTreeSet<_>>() {
        let change = match (old.get(path), new.get(path)) {
            (Some(_), None) => Change::Removed,
            (None, Some(_)) => Change::Added,
            (Some(a), Some(b)) => {
                if same_entry(from_root, to_root, path, a, b)? {
                    continue;
                }
                Change::Modified
            }
            (None, None) => continue,
        };
        file_changes.push(FileChange {
            path: path.clone(),
            change,
        });
    }

    // Attribute them to units.
    let mut touched: BTreeMap<String, Vec<FileChange>> = BTreeMap::new();
    for fc in &file_changes {
        match classify(dirs, &fc.path) {
            Some(Touch::Unit(name)) => touched.entry(name).or_default().push(fc.clone()),
            Some(Touch::Link { .. }) | None => {}
        }
    }

    let mut out = Vec::new();
    for (name, files) in touched {
        if let Some(change) = unit_change(from_root, to_root, dirs, &name, files)? {
            out.push(change);
        }
    }

    // Enablement: set difference of dependency links over all dirs (a link that moved between
    // directories is not a change).
    let links =
        |entries: &BTreeMap<PathBuf, Entry>| -> BTreeMap<(String, Dependency, String), PathBuf> {
            entries
                .keys()
                .filter_map(|p| match classify(dirs, p) {
                    Some(Touch::Link {
                        by,
                        dependency,
                        unit,
                    }) => Some(((unit, dependency, by), p.clone())),
                    _ => None,
                })
                .collect()
        };
    let (old_links, new_links) = (links(&old), links(&new));
    // Whether `root` has the link in any of the dirs: the scans may hold changed paths only,
    // and a link that moved from another directory is not a change.
    let has_link = |root: &Path, (unit, dependency, by): &(String, Dependency, String)| {
        dirs.iter().any(|d| {
            let p = Path::new("/")
                .join(d)
                .join(format!("{by}{}", dependency.dir_suffix()))
                .join(unit);
            std::fs::symlink_metadata(host_path(root, &p)).is_ok()
        })
    };
    for (key, path) in &new_links {
        let (unit, dependency, by) = key;
        if !old_links.contains_key(key) && !has_link(from_root, key) {
            out.push(UnitFileChange {
                flags: flags_for(to_root, dirs, unit)?,
                unit: unit.clone(),
                change: UnitChange::Enabled {
                    by: by.clone(),
                    dependency: *dependency,
                },
                files: vec![FileChange {
                    path: path.clone(),
                    change: Change::Added,
                }],
            });
        }
    }
    for (key, path) in &old_links {
        let (unit, dependency, by) = key;
        if !new_links.contains_key(key) && !has_link(to_root, key) {
            out.push(UnitFileChange {
                flags: flags_for(from_root, dirs, unit)?,
                unit: unit.clone(),
                change: UnitChange::Disabled {
                    by: by.clone(),
                    dependency: *dependency,
                },
                files: vec![FileChange {
                    path: path.clone(),
                    change: Change::Removed,
                }],
            });
        }
    }
    out.sort_by(|a, b| a.unit.cmp(&b.unit).then(kind_rank(a).cmp(&kind_rank(b))));
    Ok(out)
}

fn kind_rank(c: &UnitFileChange) -> (u8, String) {
    match &c.change {
        UnitChange::Added => (0, String::new()),
        UnitChange::Removed { .. } => (1, String::new()),
        UnitChange::Modified { .. } => (2, String::new()),
        UnitChange::Enabled { by, .. } => (3, by.clone()),
        UnitChange::Disabled { by, .. } => (4, by.clone()),
    }
}

fn flags_for(root: &Path, dirs: &[&str], unit: &str) -> Result<UnitFlags> {
    Ok(match load_unit(root, dirs, unit)? {
        UnitLookup::Found(l) => UnitFlags::from_unit(&l.unit),
        _ => UnitFlags::default(),
    })
}

fn unit_change(
    from_root: &Path,
    to_root: &Path,
    dirs: &[&str],
    name: &str,
    files: Vec<FileChange>,
) -> Result<Option<UnitFileChange>> {
    if let Some(dropin_dir) = glob_dropin_dir(name) {
        // Type-level or dash-prefix drop-ins: no fragment, compare the drop-ins alone.
        let old = load_dropins_only(from_root, dirs, &dropin_dir)?;
        let new = load_dropins_only(to_root, dirs, &dropin_dir)?;
        return Ok(Some(UnitFileChange {
            unit: name.to_string(),
            change: UnitChange::Modified {
                comparison: compare_units(&old, &new),
            },
            files,
            flags: UnitFlags::default(),
        }));
    }
    let old = load_unit(from_root, dirs, name)
        .with_context(|| format!("loading {name} from {}", from_root.display()))?;
    let new = load_unit(to_root, dirs, name)
        .with_context(|| format!("loading {name} from {}", to_root.display()))?;
    let (change, flags) = match (&old, &new) {
        (UnitLookup::Found(o), UnitLookup::Found(n)) => (
            UnitChange::Modified {
                comparison: compare_units(&o.unit, &n.unit),
            },
            UnitFlags::from_unit(&n.unit),
        ),
        (_, UnitLookup::Found(n)) => (UnitChange::Added, UnitFlags::from_unit(&n.unit)),
        (UnitLookup::Found(o), gone) => (
            UnitChange::Removed {
                masked: matches!(gone, UnitLookup::Masked { .. }),
            },
            UnitFlags::from_unit(&o.unit),
        ),
        // Not loadable on either side (e.g. drop-ins for a unit the image does not ship).
        _ => return Ok(None),
    };
    Ok(Some(UnitFileChange {
        unit: name.to_string(),
        change,
        files,
        flags,
    }))
}

/// `*.service` → `service.d`; `foo-*.service` → `foo-.service.d`.
fn glob_dropin_dir(name: &str) -> Option<String> {
    let (prefix, suffix) = name.split_once('*')?;
    Some(
        format!("{prefix}{suffix}.d")
            .trim_start_matches('.')
            .to_string(),
    )
}

/// What an in-tree path under one of the unit dirs is about.
#[derive(Debug, PartialEq, Eq)]
enum Touch {
    /// The fragment, alias or a drop-in of this unit (name, template or glob).
    Unit(String),
    /// A dependency link: `by` wants/requires/upholds `unit`.
    Link {
        by: String,
        dependency: Dependency,
        unit: String,
    },
}

fn classify(dirs: &[&str], path: &Path) -> Option<Touch> {
    let rel = dirs
        .iter()
        .find_map(|d| path.strip_prefix(Path::new("/").join(d)).ok())?;
    let parts: Vec<&str> = rel.iter().map(|c| c.to_str()).collect::<Option<_>>()?;
    match parts.as_slice() {
        [name] if is_unit_name(name) => Some(Touch::Unit(name.to_string())),
        [dir, file] => {
            if let Some(owner) = dir.strip_suffix(".d") {
                if !file.ends_with(".conf") {
                    return None;
                }
                if is_unit_name(owner) {
                    let (stem, suffix) = owner.rsplit_once('.')?;
                    if stem.len() > 1 && stem.ends_with('-') {
                        // foo-.service.d: a dash-prefix drop-in dir (but "-.slice" is a unit).
                        return Some(Touch::Unit(format!("{stem}*.{suffix}")));
                    }
                    return Some(Touch::Unit(owner.to_string()));
                }
                if UNIT_SUFFIXES.contains(&owner) {
                    return Some(Touch::Unit(format!("*.{owner}")));
                }
                return None;
            }
            let (by, dependency) = Dependency::from_dir(dir)?;
            if is_unit_name(by) && is_unit_name(file) {
                return Some(Touch::Link {
                    by: by.to_string(),
                    dependency,
                    unit: file.to_string(),
                });
            }
            None
        }
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    File { dev: u64, ino: u64, len: u64 },
    Symlink(PathBuf),
    Dir,
    Other,
}

/// Every entry under the unit dirs of `root`, keyed by absolute in-tree path.
fn scan_tree(root: &Path, dirs: &[&str]) -> Result<BTreeMap<PathBuf, Entry>> {
    let mut out = BTreeMap::new();
    for dir in dirs {
        walk(root, &Path::new("/").join(dir), &mut out)?;
    }
    Ok(out)
}

fn walk(root: &Path, in_tree_dir: &Path, out: &mut BTreeMap<PathBuf, Entry>) -> Result<()> {
    let host = host_path(root, in_tree_dir);
    let entries = match std::fs::read_dir(&host) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", host.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", host.display()))?;
        let in_tree = in_tree_dir.join(entry.file_name());
        let meta = entry
            .metadata()
            .with_context(|| format!("inspecting {}", entry.path().display()))?;
        if meta.is_dir() {
            walk(root, &in_tree, out)?;
        }
        out.insert(in_tree, entry_of(&entry.path(), &meta)?);
    }
    Ok(())
}

fn entry_of(host: &Path, meta: &std::fs::Metadata) -> Result<Entry> {
    let ft = meta.file_type();
    Ok(if ft.is_symlink() {
        Entry::Symlink(
            std::fs::read_link(host)
                .with_context(|| format!("reading symlink {}", host.display()))?,
        )
    } else if ft.is_dir() {
        Entry::Dir
    } else if ft.is_file() {
        Entry::File {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
        }
    } else {
        Entry::Other
    })
}

fn same_entry(from_root: &Path, to_root: &Path, path: &Path, a: &Entry, b: &Entry) -> Result<bool> {
    Ok(match (a, b) {
        (
            Entry::File {
                dev: d1,
                ino: i1,
                len: l1,
            },
            Entry::File {
                dev: d2,
                ino: i2,
                len: l2,
            },
        ) => {
            if (d1, i1) == (d2, i2) {
                true
            } else if l1 != l2 {
                false
            } else {
                let read = |root: &Path| {
                    let p = host_path(root, path);
                    crate::system::files::read(&p, crate::system::files::Follow::Yes)
                        .map_err(anyhow::Error::new)
                };
                read(from_root)? == read(to_root)?
            }
        }
        (a, b) => a == b,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::compare::KeyChange;
    use std::os::unix::fs::symlink;

    struct Trees {
        _t: tempfile::TempDir,
        from: PathBuf,
        to: PathBuf,
    }

    fn trees() -> Trees {
        let t = tempfile::tempdir().unwrap();
        let from = t.path().join("from");
        let to = t.path().join("to");
        Trees { _t: t, from, to }
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn link(root: &Path, rel: &str, target: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        symlink(target, path).unwrap();
    }

    /// Write the same file into both trees as one inode (like ostree's hardlinked objects).
    fn shared(t: &Trees, rel: &str, text: &str) {
        write(&t.from, rel, text);
        let dst = t.to.join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::hard_link(t.from.join(rel), dst).unwrap();
    }

    /// [`diff_units`] (the paths the listings name), checked against the whole scan
    /// ([`diff_units_in`]): the two must agree exactly.
    fn both(t: &Trees) -> Vec<UnitFileChange> {
        let dirs = DEPLOYMENT_UNIT_DIRS;
        assert!(changed_by_listing(&t.from, &t.to, dirs).is_some());
        let listed = diff_units(&t.from, &t.to).unwrap();
        let full = diff_units_in(&t.from, &t.to, dirs).unwrap();
        assert_eq!(listed, full);
        full
    }

    const LIB: &str = "usr/lib/systemd/system";
    const ETC: &str = "usr/etc/systemd/system";

    #[test]
    fn added_removed_modified_and_unchanged() {
        let t = trees();
        shared(
            &t,
            &format!("{LIB}/same.service"),
            "[Service]\nExecStart=/s\n",
        );
        // Same content, different inode: still unchanged.
        write(
            &t.from,
            &format!("{LIB}/copy.service"),
            "[Service]\nExecStart=/c\n",
        );
        write(
            &t.to,
            &format!("{LIB}/copy.service"),
            "[Service]\nExecStart=/c\n",
        );
        write(
            &t.from,
            &format!("{LIB}/gone.service"),
            "[Service]\nExecStart=/g\n",
        );
        write(
            &t.to,
            &format!("{LIB}/new.service"),
            "[Service]\nExecStart=/n\n",
        );
        write(
            &t.from,
            &format!("{LIB}/mod.service"),
            "[Unit]\nDescription=a\n[Service]\nExecStart=/m\n",
        );
        write(
            &t.to,
            &format!("{LIB}/mod.service"),
            "[Unit]\nDescription=b\n[Service]\nExecStart=/m\n",
        );
        write(
            &t.from,
            &format!("{LIB}/chg.service"),
            "[Service]\nExecStart=/a\n",
        );
        write(
            &t.to,
            &format!("{LIB}/chg.service"),
            "[Service]\nExecStart=/b\n",
        );
        // Masked in the new tree's /etc defaults.
        shared(
            &t,
            &format!("{LIB}/masked.service"),
            "[Service]\nExecStart=/x\n",
        );
        link(&t.to, &format!("{ETC}/masked.service"), "/dev/null");

        let changes = both(&t);
        let summary: Vec<(&str, &UnitChange)> = changes
            .iter()
            .map(|c| (c.unit.as_str(), &c.change))
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    "chg.service",
                    &UnitChange::Modified {
                        comparison: UnitComparison::NeedsRestart {
                            reason: KeyChange {
                                section: "Service".into(),
                                key: Some("ExecStart".into()),
                                change: Change::Modified
                            }
                        }
                    }
                ),
                ("gone.service", &UnitChange::Removed { masked: false }),
                ("masked.service", &UnitChange::Removed { masked: true }),
                (
                    "mod.service",
                    &UnitChange::Modified {
                        comparison: UnitComparison::Equal
                    }
                ),
                ("new.service", &UnitChange::Added),
            ]
        );
        let chg = &changes[0];
        assert_eq!(
            chg.files,
            [FileChange {
                path: PathBuf::from("/usr/lib/systemd/system/chg.service"),
                change: Change::Modified
            }]
        );
        assert_eq!(
            changes[2].files[0].path,
            Path::new("/usr/etc/systemd/system/masked.service")
        );
    }

    #[test]
    fn dropins_templates_and_globs() {
        let t = trees();
        shared(
            &t,
            &format!("{LIB}/foo.service"),
            "[Service]\nExecStart=/foo\n",
        );
        write(
            &t.to,
            &format!("{LIB}/foo.service.d/10-env.conf"),
            "[Service]\nExecReload=/r\n",
        );
        shared(
            &t,
            &format!("{LIB}/getty@.service"),
            "[Service]\nExecStart=/agetty\n",
        );
        write(
            &t.to,
            &format!("{ETC}/getty@.service.d/x.conf"),
            "[Service]\nTTYVHangup=no\n",
        );
        write(
            &t.from,
            &format!("{LIB}/socket.d/10-timeout.conf"),
            "[Socket]\nTimeoutSec=10\n",
        );
        write(
            &t.to,
            &format!("{LIB}/socket.d/10-timeout.conf"),
            "[Socket]\nTimeoutSec=20\n",
        );
        write(
            &t.to,
            &format!("{LIB}/user-.slice.d/10-defaults.conf"),
            "[Unit]\nDescription=x\n",
        );
        // A non-.conf file in a drop-in dir is not a unit change.
        write(&t.to, &format!("{LIB}/foo.service.d/notes.txt"), "hi");

        let changes = both(&t);
        let units: Vec<&str> = changes.iter().map(|c| c.unit.as_str()).collect();
        assert_eq!(
            units,
            ["*.socket", "foo.service", "getty@.service", "user-*.slice"]
        );
        assert!(matches!(
            &changes[0].change,
            UnitChange::Modified { comparison: UnitComparison::NeedsRestart { reason } }
                if reason.key.as_deref() == Some("TimeoutSec")
        ));
        assert!(matches!(
            &changes[1].change,
            UnitChange::Modified {
                comparison: UnitComparison::NeedsReload { .. }
            }
        ));
        assert_eq!(
            changes[1].files,
            [FileChange {
                path: PathBuf::from("/usr/lib/systemd/system/foo.service.d/10-env.conf"),
                change: Change::Added
            }]
        );
        assert!(matches!(
            &changes[3].change,
            UnitChange::Modified {
                comparison: UnitComparison::Equal
            }
        ));
        assert!(unit_pattern_matches("*.service", "sshd.service"));
        assert!(!unit_pattern_matches("*.service", "sshd.socket"));
        assert!(unit_pattern_matches("user-*.slice", "user-1000.slice"));
        assert!(unit_pattern_matches("getty@.service", "getty@tty1.service"));
        assert!(!unit_pattern_matches(
            "getty@.service",
            "serial-getty@ttyS0.service"
        ));
    }

    #[test]
    fn enablement_changes() {
        let t = trees();
        shared(
            &t,
            &format!("{LIB}/new.service"),
            "[Unit]\nRefuseManualStart=yes\n[Service]\nExecStart=/n\n",
        );
        shared(
            &t,
            &format!("{LIB}/old.service"),
            "[Service]\nExecStart=/o\n",
        );
        shared(
            &t,
            &format!("{LIB}/moved.service"),
            "[Service]\nExecStart=/m\n",
        );
        link(
            &t.to,
            &format!("{ETC}/multi-user.target.wants/new.service"),
            "/usr/lib/systemd/system/new.service",
        );
        link(
            &t.from,
            &format!("{LIB}/sockets.target.requires/old.service"),
            "../old.service",
        );
        // Same link, moved from /usr/lib to /usr/etc: no enablement change.
        link(
            &t.from,
            &format!("{LIB}/multi-user.target.wants/moved.service"),
            "../moved.service",
        );
        link(
            &t.to,
            &format!("{ETC}/multi-user.target.wants/moved.service"),
            "/usr/lib/systemd/system/moved.service",
        );
        // Linked in /usr/lib on both sides, and now in /usr/etc too: no enablement change
        // (the listed paths hold only the new link; the old one is looked up on disk).
        // One symlink inode in both trees, as ostree checks out an unchanged link.
        let kept = format!("{LIB}/multi-user.target.wants/kept.service");
        link(&t.from, &kept, "../kept.service");
        std::fs::create_dir_all(t.to.join(&kept).parent().unwrap()).unwrap();
        std::fs::hard_link(t.from.join(&kept), t.to.join(&kept)).unwrap();
        link(
            &t.to,
            &format!("{ETC}/multi-user.target.wants/kept.service"),
            "/usr/lib/systemd/system/kept.service",
        );
        // A whole .wants directory removed: listed once, walked on its side.
        link(
            &t.from,
            &format!("{LIB}/timers.target.wants/zz-timer.timer"),
            "../zz-timer.timer",
        );
        let changes = both(&t);
        assert_eq!(changes.len(), 3, "{changes:#?}");
        assert_eq!(
            changes[2].change,
            UnitChange::Disabled {
                by: "timers.target".into(),
                dependency: Dependency::Wants
            }
        );
        assert_eq!(changes[2].unit, "zz-timer.timer");
        assert_eq!(changes[0].unit, "new.service");
        assert_eq!(
            changes[0].change,
            UnitChange::Enabled {
                by: "multi-user.target".into(),
                dependency: Dependency::Wants
            }
        );
        assert!(changes[0].flags.refuse_manual_start);
        assert_eq!(
            changes[0].files[0].path,
            Path::new("/usr/etc/systemd/system/multi-user.target.wants/new.service")
        );
        assert_eq!(changes[1].unit, "old.service");
        assert_eq!(
            changes[1].change,
            UnitChange::Disabled {
                by: "sockets.target".into(),
                dependency: Dependency::Requires
            }
        );
    }

    #[test]
    fn flags_are_read_from_the_new_unit() {
        let t = trees();
        write(
            &t.from,
            &format!("{LIB}/a.service"),
            "[Service]\nExecStart=/a\n",
        );
        write(
            &t.to,
            &format!("{LIB}/a.service"),
            "[Unit]\nX-StopOnRemoval=no\n[Service]\nExecStart=/a2\nX-ReloadIfChanged=yes\nSockets=a.socket b.socket\n",
        );
        let changes = both(&t);
        let f = &changes[0].flags;
        assert!(f.reload_if_changed && !f.stop_on_removal && f.restart_if_changed);
        assert_eq!(f.sockets, ["a.socket", "b.socket"]);
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let t = trees();
        write(
            &t.from,
            &format!("{LIB}/a.service"),
            "[Service]\nExecStart=/a\n",
        );
        write(
            &t.to,
            &format!("{LIB}/a.service"),
            "[Service]\nExecStart /a\n",
        );
        let err = format!("{:#}", diff_units(&t.from, &t.to).unwrap_err());
        assert!(err.contains("/usr/lib/systemd/system/a.service:2"), "{err}");
    }

    #[test]
    fn serialises() {
        let c = UnitFileChange {
            unit: "x.service".into(),
            change: UnitChange::Enabled {
                by: "multi-user.target".into(),
                dependency: Dependency::Wants,
            },
            files: vec![],
            flags: UnitFlags::default(),
        };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["change"]["kind"], "enabled");
        assert_eq!(v["change"]["dependency"], "wants");
        assert_eq!(v["flags"]["restart_if_changed"], true);
    }
}
