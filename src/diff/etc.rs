//! `/etc` 3-way merge decisions: what ostree's merge implies for the live `/etc`.
//!
//! Inputs are three trees: the booted deployment's `usr/etc` (*old defaults*, O), the live
//! `/etc` (*local*, L) and the target deployment's `usr/etc` (*new defaults*, W). ostree's
//! `merge_configuration_from` (research §3.7) computes `ostree_diff_dirs(O, L)` with xattrs
//! ignored, then starts the new `/etc` as a copy of W, deletes what the admin deleted and
//! copies every modified or added local path over it wholesale: a local change always wins,
//! there is no line-level merge.
//!
//! [`plan_etc`] replays exactly that algorithm on an in-memory model of the three trees
//! (including its corner cases: parent directories of copied paths take the local directory's
//! mode and owner, a directory whose only change is its own mode reverts to the new default,
//! an admin-added file inside a removed default directory keeps that directory alive), then
//! lists, per path, what must happen to the live `/etc` so that it equals the merged result:
//!
//! | action | meaning |
//! |---|---|
//! | `add` | a new default, absent locally and in the old defaults: create it from W |
//! | `take_new_default` | replace the live path (non-recursively for a directory: type, mode, owner) by W's |
//! | `remove` | the default went away and the admin had not changed it: delete it |
//! | `keep_local` | the admin changed it and so did the default: the local version stays (conflict) |
//! | `keep_local_only` | an admin-added path that a new, different default now collides with: it stays (conflict) |
//! | `keep_removed` | the admin deleted it and its default changed: it stays deleted (conflict) |
//!
//! Only paths needing an action, or in conflict, are listed. `remove` actions come first,
//! children before parents; then every other action, parents before children. A conflict
//! with reason `local_change_discarded` marks the rare cases where ostree's merge itself drops
//! an admin change (e.g. a local `chmod` of a directory, or a local directory where the old
//! default was a file and the new default is a directory).
//!
//! "Modified" is ostree's rule: type, content, permission bits, uid/gid, symlink target and
//! device number; xattrs (SELinux labels) are ignored. Symlinks are compared as symlinks and
//! never followed. A locally modified or added non-directory whose new default is a directory
//! is refused with [`EtcMergeError::ModifiedConfigNewlyDirectory`], as ostree refuses it. Local
//! changes below a path whose new default is a symlink or file are refused too
//! ([`EtcMergeError::NewDefaultNotDirectory`]): ostree would follow such a symlink.
//! `etc/.updated`, which ostree deletes after its merge, is treated like any admin file.

pub(crate) use super::walk::FileType;
use super::walk::{self, Meta};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CStr, OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What to do with one live `/etc` path (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EtcActionKind {
    Add,
    TakeNewDefault,
    Remove,
    KeepLocal,
    KeepLocalOnly,
    KeepRemoved,
}

/// One planned `/etc` action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcAction {
    /// `/etc` or `/etc/…`.
    pub path: String,
    pub action: EtcActionKind,
    /// Type of the live path now (`None`: absent).
    pub(crate) from_type: Option<FileType>,
    /// Type of the live path after the action (`None`: absent).
    pub(crate) to_type: Option<FileType>,
}

/// Why a path is a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ConflictReason {
    /// The admin changed the path and its default changed (or was removed) too; local wins.
    BothChanged,
    /// The admin created the path and a different new default now exists there; local wins.
    LocalOnlyCollides,
    /// The admin deleted the path and its default changed; it stays deleted.
    RemovedLocallyDefaultChanged,
    /// ostree's merge drops the admin's change to this path (see the module docs).
    LocalChangeDiscarded,
}

/// A path where the admin's change and the new defaults meet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EtcConflict {
    pub path: String,
    /// The action taken for it (also listed in [`EtcPlan::actions`]).
    pub action: EtcActionKind,
    pub(crate) reason: ConflictReason,
}

/// The `/etc` merge decisions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcPlan {
    pub actions: Vec<EtcAction>,
    /// Sorted by path, component-wise.
    pub(crate) conflicts: Vec<EtcConflict>,
}

/// A merge ostree would refuse; the plan must not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcMergeError {
    /// Same wording as ostree's error.
    #[error("Modified config file newly defaults to directory '{path}', cannot merge")]
    ModifiedConfigNewlyDirectory { path: String },
    /// Local changes below `path`, whose new default is not a directory.
    #[error("cannot merge /etc: '{path}' has local changes below it but its new default is not a directory")]
    NewDefaultNotDirectory { path: String },
    /// ostree does not copy devices, FIFOs or sockets.
    #[error("cannot merge /etc: locally changed '{path}' is a device, FIFO or socket")]
    UnsupportedFileType { path: String },
}

/// Decide the live `/etc` actions for moving from `old_defaults` (booted `usr/etc`) to
/// `new_defaults` (target `usr/etc`) given the live `local` `/etc`. A refused merge is an
/// [`EtcMergeError`] inside the `anyhow::Error` (use `downcast_ref`). Long: one walk over the
/// union of the three trees with ostree's per-path 3-way cases inline (a candidate for
/// splitting the per-path case out).
pub fn plan_etc(old_defaults: &Path, local: &Path, new_defaults: &Path) -> Result<EtcPlan> {
    plan_etc_with(old_defaults, local, new_defaults, NewDefaults::Load)
}

/// What the caller knows of the new defaults, from the `/usr` diff (which compares content,
/// type, mode, owner and xattrs of every path, as the merge needs).
#[derive(Debug, Clone, Copy)]
pub enum NewDefaults<'a> {
    /// Nothing: load the new tree whole.
    Load,
    /// The new defaults are the old ones exactly: the old tree stands for both.
    Same,
    /// Only these paths (relative to the defaults' root, parents before children; a removed
    /// directory once, an added one with its descendants) differ from the old defaults: the
    /// new tree is the old one with just these paths read from the new defaults.
    Changed(&'a [&'a Path]),
}

/// [`plan_etc`] with what the caller knows of the new defaults ([`NewDefaults`]). With `Same`
/// or `Changed` the new tree is not loaded whole, and the plan is the same: the merge reads W
/// only through its metadata, symlink targets and bytes, which for every unchanged path are
/// O's (the bytes are read from the new defaults, where they are the same), and its "same
/// object" shortcuts then hold there.
pub fn plan_etc_with(
    old_defaults: &Path,
    local: &Path,
    new_defaults: &Path,
    defaults: NewDefaults<'_>,
) -> Result<EtcPlan> {
    plan_etc_counted(old_defaults, local, new_defaults, defaults).map(|(plan, _)| plan)
}

/// How the plan compared files of two trees (each comparison counted; a file may be compared
/// with more than one tree).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EtcCompared {
    /// Decided without reading content: one object in both trees (ostree hardlinked it into both
    /// checkouts), or the old default is the new one's very object (see [`ostree_diff`]).
    pub identity: u32,
    /// Read and compared byte by byte (same size, different inodes).
    pub bytes: u32,
}

/// Counters for [`EtcCompared`], bumped while the plan is made.
#[derive(Default)]
struct Counts {
    identity: std::cell::Cell<u32>,
    bytes: std::cell::Cell<u32>,
}

impl Counts {
    fn bump(c: &std::cell::Cell<u32>) {
        c.set(c.get() + 1);
    }
}

/// [`plan_etc_with`], and how it compared files.
pub fn plan_etc_counted(
    old_defaults: &Path,
    local: &Path,
    new_defaults: &Path,
    defaults: NewDefaults<'_>,
) -> Result<(EtcPlan, EtcCompared)> {
    let counts = Counts::default();
    let c = &counts;
    // Loading is a few thousand lstat calls per tree, the bulk of the plan's cost: the trees
    // load side by side.
    let load_new = matches!(defaults, NewDefaults::Load);
    let (o, l, w) = std::thread::scope(|sc| {
        let o = sc.spawn(|| Tree::load(old_defaults));
        let w = load_new.then(|| sc.spawn(|| Tree::load(new_defaults)));
        let l = Tree::load(local);
        let join = |h: std::thread::ScopedJoinHandle<'_, Result<Tree>>| {
            h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        };
        (join(o), l, w.map(join))
    });
    let (o, l) = (o?, l?);
    let w_loaded = match defaults {
        NewDefaults::Load => w.transpose()?,
        NewDefaults::Same => None,
        NewDefaults::Changed(paths) => Some(o.patched(new_defaults, paths).with_context(|| {
            format!("reading the changed defaults in {}", new_defaults.display())
        })?),
    };
    let w = w_loaded.as_ref().unwrap_or(&o);

    // 1. ostree_diff_dirs(O, L), in ostree's pre-order.
    let mut d = Diff::default();
    let top = Unchanged {
        w: Some(&w.top),
        dirs_as_w: same_attrs(&w.top.meta, &l.top.meta),
        c,
    };
    ostree_diff(&o, &l, &o.top, &l.top, &PathBuf::new(), &mut d, top)?;

    // 2. The merged tree: a copy of W, then removals, then local copies.
    let mut n = NNode::from_tree(&w.top, Src::New);
    for p in &d.removed {
        n.remove(p);
    }
    for p in d.modified.iter().chain(&d.added) {
        copy_modified(&l, &mut n, p)?;
    }

    // 3. What the live /etc needs to become the merged tree. A path present in O and L was
    // visited by step 1 (its ancestors are directories in both), so "the admin changed it" is
    // whether step 1 listed it as modified: no file is read twice.
    let modified: std::collections::HashSet<&Path> =
        d.modified.iter().map(PathBuf::as_path).collect();
    let mut paths = BTreeSet::new();
    l.top.collect(&mut PathBuf::new(), &mut paths);
    n.collect(&mut PathBuf::new(), &mut paths);

    let mut removes = Vec::new();
    let mut others = Vec::new();
    let mut conflicts = Vec::new();
    for p in &paths {
        let (on, ln, wn, nn) = (o.get(p), l.get(p), w.get(p), n.get(p));
        let admin_changed = match (on, ln) {
            (Some(_), Some(_)) => modified.contains(p.as_path()),
            (None, None) => false,
            _ => true,
        };
        let mut push = |action, from: Option<&Node>, to: Option<FileType>, reason| -> Result<()> {
            let a = EtcAction {
                path: etc_path(p)?,
                action,
                from_type: from.map(Node::file_type),
                to_type: to,
            };
            if let Some(reason) = reason {
                conflicts.push(EtcConflict {
                    path: a.path.clone(),
                    action,
                    reason,
                });
            }
            if action == EtcActionKind::Remove {
                removes.push(a);
            } else {
                others.push(a);
            }
            Ok(())
        };
        let discarded = admin_changed.then_some(ConflictReason::LocalChangeDiscarded);
        match (ln, nn) {
            (None, None) => {}
            (None, Some(nn)) => {
                let kind = if on.is_some() {
                    EtcActionKind::TakeNewDefault
                } else {
                    EtcActionKind::Add
                };
                push(kind, None, Some(nn.ftype), discarded)?;
            }
            (Some(ln), None) => push(EtcActionKind::Remove, Some(ln), None, discarded)?,
            (Some(ln), Some(nn)) => {
                let equal = match nn.src {
                    Src::Local => true,
                    Src::New => {
                        let wn = wn.expect("a node taken from the new defaults exists there");
                        if nn.ftype == FileType::Dir && ln.file_type() == FileType::Dir {
                            nn.attrs == Src::Local || same_attrs(&wn.meta, &ln.meta)
                        } else if !admin_changed
                            && on.is_some_and(|on| on.meta.same_inode(&wn.meta))
                        {
                            // L equals O (not modified), and O and W are one object (both
                            // checkouts hardlink it): L equals W without reading either.
                            Counts::bump(&c.identity);
                            true
                        } else {
                            same(w, wn, &l, ln, p, c)?
                        }
                    }
                };
                if !equal {
                    push(
                        EtcActionKind::TakeNewDefault,
                        Some(ln),
                        Some(nn.ftype),
                        discarded,
                    )?;
                } else if admin_changed {
                    let w_differs_from_local = match wn {
                        Some(wn) => !same(w, wn, &l, ln, p, c)?,
                        None => true,
                    };
                    match on {
                        Some(on) => {
                            let default_changed = match wn {
                                Some(wn) => !same(&o, on, w, wn, p, c)?,
                                None => true,
                            };
                            if default_changed && w_differs_from_local {
                                push(
                                    EtcActionKind::KeepLocal,
                                    Some(ln),
                                    Some(ln.file_type()),
                                    Some(ConflictReason::BothChanged),
                                )?;
                            }
                        }
                        None => {
                            if wn.is_some() && w_differs_from_local {
                                push(
                                    EtcActionKind::KeepLocalOnly,
                                    Some(ln),
                                    Some(ln.file_type()),
                                    Some(ConflictReason::LocalOnlyCollides),
                                )?;
                            }
                        }
                    }
                }
            }
        }
    }
    for p in &d.removed {
        let (Some(on), Some(wn)) = (o.get(p), w.get(p)) else {
            continue;
        };
        if subtree_differs(&o, on, w, wn, p, c)? {
            let path = etc_path(p)?;
            conflicts.push(EtcConflict {
                path: path.clone(),
                action: EtcActionKind::KeepRemoved,
                reason: ConflictReason::RemovedLocallyDefaultChanged,
            });
            others.push(EtcAction {
                path,
                action: EtcActionKind::KeepRemoved,
                from_type: None,
                to_type: None,
            });
        }
    }
    removes.sort_by(|a, b| Path::new(&b.path).cmp(Path::new(&a.path)));
    others.sort_by(|a, b| Path::new(&a.path).cmp(Path::new(&b.path)));
    conflicts.sort_by(|a, b| Path::new(&a.path).cmp(Path::new(&b.path)));
    removes.extend(others);
    let compared = EtcCompared {
        identity: counts.identity.get(),
        bytes: counts.bytes.get(),
    };
    Ok((
        EtcPlan {
            actions: removes,
            conflicts,
        },
        compared,
    ))
}

/// `/etc/<rel>` as a string; a non-UTF-8 name that needs an action is an error.
fn etc_path(rel: &Path) -> Result<String> {
    let s = rel.to_str().with_context(|| {
        format!(
            "/etc/{} is not valid UTF-8; refusing to plan an action for it",
            rel.display()
        )
    })?;
    Ok(if s.is_empty() {
        "/etc".to_owned()
    } else {
        format!("/etc/{s}")
    })
}

fn merge_err(e: EtcMergeError) -> anyhow::Error {
    anyhow::Error::new(e)
}

/// One object of a loaded tree.
#[derive(Clone)]
struct Node {
    meta: Meta,
    target: Option<OsString>,
    children: BTreeMap<OsString, Node>,
}

impl Node {
    fn file_type(&self) -> FileType {
        self.meta.file_type()
    }

    fn collect(&self, rel: &mut PathBuf, out: &mut BTreeSet<PathBuf>) {
        out.insert(rel.clone());
        for (name, c) in &self.children {
            rel.push(name);
            c.collect(rel, out);
            rel.pop();
        }
    }
}

/// A loaded tree (metadata and symlink targets; contents are read on demand).
struct Tree {
    root: PathBuf,
    top: Node,
}

fn meta_of(m: &std::fs::Metadata) -> Meta {
    Meta {
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        size: m.size(),
        rdev: m.rdev(),
        dev: m.dev(),
        ino: m.ino(),
    }
}

impl Tree {
    fn load(root: &Path) -> Result<Tree> {
        let m =
            std::fs::symlink_metadata(root).with_context(|| format!("stat {}", root.display()))?;
        if !m.is_dir() {
            anyhow::bail!("{} is not a directory", root.display());
        }
        let mut top = Node {
            meta: meta_of(&m),
            target: None,
            children: BTreeMap::new(),
        };
        let fd = walk::open_dir(root)?;
        Self::load_children(&fd, root, &mut top)?;
        Ok(Tree {
            root: root.to_path_buf(),
            top,
        })
    }

    /// Load the object `name` in the directory `dir` (`shown` is its path, for errors only):
    /// everything relative to directory descriptors, so paths may exceed `PATH_MAX`.
    fn load_node_at(dir: BorrowedFd<'_>, name: &CStr, shown: &Path, meta: Meta) -> Result<Node> {
        let mut node = Node {
            meta,
            target: None,
            children: BTreeMap::new(),
        };
        match meta.file_type() {
            FileType::Dir => {
                let fd = walk::open_dir_at(dir, name)
                    .with_context(|| format!("opening directory {}", shown.display()))?;
                Self::load_children(&fd, shown, &mut node)?;
            }
            FileType::Symlink => {
                node.target = Some(
                    walk::readlink_at(dir, name)
                        .with_context(|| format!("readlink {}", shown.display()))?,
                );
            }
            FileType::File | FileType::Other => {}
        }
        Ok(node)
    }

    fn load_children(fd: &OwnedFd, shown: &Path, node: &mut Node) -> Result<()> {
        let dupe = rustix::io::dup(fd).map_err(std::io::Error::from)?;
        let mut d = rustix::fs::Dir::new(dupe)
            .map_err(std::io::Error::from)
            .with_context(|| format!("reading directory {}", shown.display()))?;
        for e in &mut d {
            let e = e
                .map_err(std::io::Error::from)
                .with_context(|| format!("reading directory {}", shown.display()))?;
            let name = e.file_name();
            if name.to_bytes() == b"." || name.to_bytes() == b".." {
                continue;
            }
            let os = OsStr::from_bytes(name.to_bytes()).to_owned();
            let child = shown.join(&os);
            let m = walk::lstat_at(fd.as_fd(), name)
                .with_context(|| format!("stat {}", child.display()))?;
            node.children
                .insert(os, Self::load_node_at(fd.as_fd(), name, &child, m)?);
        }
        Ok(())
    }

    /// This tree with `paths` (relative, parents first) read again from `root`, and rooted
    /// there: what `root` holds when only `paths` differ from this tree.
    fn patched(&self, root: &Path, paths: &[&Path]) -> Result<Tree> {
        let mut top = self.top.clone();
        for rel in paths {
            let shown = root.join(rel);
            let m = match std::fs::symlink_metadata(&shown) {
                Ok(m) => meta_of(&m),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) {
                        if let Some(p) = node_mut(&mut top, parent) {
                            p.children.remove(name);
                        }
                    }
                    continue;
                }
                Err(e) => return Err(e).with_context(|| format!("stat {}", shown.display())),
            };
            let Some(name) = rel.file_name() else {
                // The defaults' root itself: its own metadata (its children come one by one).
                top.meta = m;
                continue;
            };
            let parent = rel.parent().unwrap_or(Path::new(""));
            let p = node_mut(&mut top, parent).with_context(|| {
                format!(
                    "{} changed, but its directory is not a directory of the new defaults",
                    shown.display()
                )
            })?;
            match p.children.get_mut(name) {
                // A directory on both sides: its metadata; its children that changed come on
                // their own.
                Some(n) if n.file_type() == FileType::Dir && m.file_type() == FileType::Dir => {
                    n.meta = m;
                }
                _ => {
                    let dir = walk::open_dir(&root.join(parent))?;
                    let c_name = std::ffi::CString::new(name.as_bytes())
                        .with_context(|| format!("a NUL byte in {}", shown.display()))?;
                    let node = Self::load_node_at(dir.as_fd(), &c_name, &shown, m)?;
                    p.children.insert(name.to_owned(), node);
                }
            }
        }
        Ok(Tree {
            root: root.to_path_buf(),
            top,
        })
    }

    fn get(&self, rel: &Path) -> Option<&Node> {
        let mut n = &self.top;
        for c in rel.iter() {
            n = n.children.get(c)?;
        }
        Some(n)
    }
}

fn node_mut<'n>(top: &'n mut Node, rel: &Path) -> Option<&'n mut Node> {
    let mut n = top;
    for c in rel.iter() {
        n = n.children.get_mut(c)?;
    }
    Some(n)
}

/// Mode (with type bits), uid and gid: what ostree's dirmeta records, xattrs aside.
fn same_attrs(a: &Meta, b: &Meta) -> bool {
    a.mode == b.mode && a.uid == b.uid && a.gid == b.gid
}

/// ostree's equality of two objects at `rel` with xattrs ignored.
fn same(ta: &Tree, a: &Node, tb: &Tree, b: &Node, rel: &Path, c: &Counts) -> Result<bool> {
    if !same_attrs(&a.meta, &b.meta) {
        return Ok(false);
    }
    Ok(match a.file_type() {
        FileType::Dir => true,
        FileType::Symlink => a.target == b.target,
        FileType::Other => a.meta.rdev == b.meta.rdev,
        FileType::File => {
            if a.meta.same_inode(&b.meta) {
                Counts::bump(&c.identity);
                true
            } else if a.meta.size != b.meta.size {
                false
            } else {
                Counts::bump(&c.bytes);
                let (pa, pb) = (ta.root.join(rel), tb.root.join(rel));
                let mut fa = walk::open_file_beneath(&ta.root, rel)
                    .with_context(|| format!("opening {}", pa.display()))?;
                let mut fb = walk::open_file_beneath(&tb.root, rel)
                    .with_context(|| format!("opening {}", pb.display()))?;
                walk::same_bytes(&mut fa, &mut fb)
                    .with_context(|| format!("comparing {} with {}", pa.display(), pb.display()))?
            }
        }
    })
}

/// Whether anything at or below `rel` differs between two trees.
fn subtree_differs(
    ta: &Tree,
    a: &Node,
    tb: &Tree,
    b: &Node,
    rel: &Path,
    c: &Counts,
) -> Result<bool> {
    if a.file_type() != b.file_type() || !same(ta, a, tb, b, rel, c)? {
        return Ok(true);
    }
    if a.children.len() != b.children.len() {
        return Ok(true);
    }
    for ((na, ca), (nb, cb)) in a.children.iter().zip(&b.children) {
        if na != nb || subtree_differs(ta, ca, tb, cb, &rel.join(na), c)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The three lists of `ostree_diff_dirs` (relative paths, pre-order).
#[derive(Default)]
struct Diff {
    modified: Vec<PathBuf>,
    removed: Vec<PathBuf>,
    added: Vec<PathBuf>,
}

/// Where [`ostree_diff`] (O against L) is in the new defaults W, to skip reading files whose
/// answer cannot change the plan.
#[derive(Clone, Copy)]
struct Unchanged<'a> {
    /// W's node at the directory being diffed.
    w: Option<&'a Node>,
    /// That directory and all its ancestors have the same mode and owner in L as in W.
    dirs_as_w: bool,
    /// How files were compared, so far.
    c: &'a Counts,
}

/// `ostree_diff_dirs(OSTREE_DIFF_FLAGS_IGNORE_XATTRS, a, b)`: a type change is modified and
/// not descended into; a removed directory is listed alone; an added one with all descendants.
///
/// One shortcut, which never changes the plan: a local file whose old default is the very
/// object of its new default (the two checkouts hardlink one ostree object: the default did not
/// change), inside directories whose local mode and owner equal W's, is not read. Whether the
/// admin edited its content, the merged file equals the local one (a local edit is kept; an
/// unedited file equals the unchanged default) and no conflict is possible (the default did not
/// change). Only the parent directories' mode could depend on it (ostree gives the parents of a
/// copied file the local mode), and those equal W's here. Its mode and owner are still compared.
fn ostree_diff(
    ta: &Tree,
    tb: &Tree,
    a: &Node,
    b: &Node,
    rel: &Path,
    d: &mut Diff,
    u: Unchanged<'_>,
) -> Result<()> {
    let c = u.c;
    for (name, ca) in &a.children {
        let p = rel.join(name);
        match b.children.get(name) {
            None => d.removed.push(p),
            Some(cb) => {
                let wc = u.w.and_then(|w| w.children.get(name));
                if ca.file_type() != cb.file_type() {
                    d.modified.push(p);
                } else {
                    let default_unchanged = u.dirs_as_w
                        && ca.file_type() == FileType::File
                        && wc.is_some_and(|wc| wc.meta.same_inode(&ca.meta));
                    let modified = if default_unchanged {
                        Counts::bump(&c.identity);
                        !same_attrs(&ca.meta, &cb.meta)
                    } else {
                        !same(ta, ca, tb, cb, &p, c)?
                    };
                    if modified {
                        d.modified.push(p.clone());
                    }
                    if ca.file_type() == FileType::Dir {
                        let below = Unchanged {
                            w: wc,
                            dirs_as_w: u.dirs_as_w
                                && wc.is_some_and(|wc| {
                                    wc.file_type() == FileType::Dir
                                        && same_attrs(&wc.meta, &cb.meta)
                                }),
                            c,
                        };
                        ostree_diff(ta, tb, ca, cb, &p, d, below)?;
                    }
                }
            }
        }
    }
    for (name, cb) in &b.children {
        if !a.children.contains_key(name) {
            add_recurse(cb, rel.join(name), d);
        }
    }
    Ok(())
}

fn add_recurse(n: &Node, p: PathBuf, d: &mut Diff) {
    d.added.push(p.clone());
    for (name, c) in &n.children {
        add_recurse(c, p.join(name), d);
    }
}

/// Where a merged-tree object comes from: the same path in W (`New`) or in L (`Local`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Src {
    New,
    Local,
}

/// One object of the simulated merged `/etc`.
struct NNode {
    ftype: FileType,
    /// Source of the object (content, symlink target, and for non-directories everything).
    src: Src,
    /// Source of a directory's mode and owner (ostree re-applies the local directory's to the
    /// parent of every path it copies).
    attrs: Src,
    children: BTreeMap<OsString, NNode>,
}

impl NNode {
    fn from_tree(n: &Node, src: Src) -> NNode {
        NNode {
            ftype: n.file_type(),
            src,
            attrs: src,
            children: n
                .children
                .iter()
                .map(|(k, c)| (k.clone(), NNode::from_tree(c, src)))
                .collect(),
        }
    }

    fn get(&self, rel: &Path) -> Option<&NNode> {
        let mut n = self;
        for c in rel.iter() {
            n = n.children.get(c)?;
        }
        Some(n)
    }

    fn get_mut(&mut self, rel: &Path) -> Option<&mut NNode> {
        let mut n = self;
        for c in rel.iter() {
            n = n.children.get_mut(c)?;
        }
        Some(n)
    }

    fn remove(&mut self, rel: &Path) {
        if let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) {
            if let Some(p) = self.get_mut(parent) {
                p.children.remove(name);
            }
        }
    }

    fn insert(&mut self, rel: &Path, node: NNode) {
        let parent = rel.parent().unwrap_or(Path::new(""));
        let name = rel.file_name().expect("non-root path");
        self.get_mut(parent)
            .expect("parent ensured before insert")
            .children
            .insert(name.to_owned(), node);
    }

    fn collect(&self, rel: &mut PathBuf, out: &mut BTreeSet<PathBuf>) {
        out.insert(rel.clone());
        for (name, c) in &self.children {
            rel.push(name);
            c.collect(rel, out);
            rel.pop();
        }
    }
}

fn is_root(p: &Path) -> bool {
    p.as_os_str().is_empty()
}

/// `ensure_directory_from_template`: make `rel` a directory in the merged tree (creating
/// missing parents), with the local directory's mode and owner.
fn ensure_dir(n: &mut NNode, rel: &Path) -> Result<()> {
    if let Some(existing) = n.get_mut(rel) {
        if existing.ftype != FileType::Dir {
            return Err(merge_err(EtcMergeError::NewDefaultNotDirectory {
                path: etc_path(rel)?,
            }));
        }
        existing.attrs = Src::Local;
        return Ok(());
    }
    let parent = rel.parent().unwrap_or(Path::new(""));
    if !is_root(parent) {
        match n.get(parent) {
            None => ensure_dir(n, parent)?,
            Some(p) if p.ftype != FileType::Dir => {
                return Err(merge_err(EtcMergeError::NewDefaultNotDirectory {
                    path: etc_path(parent)?,
                }))
            }
            Some(_) => {}
        }
    }
    n.insert(
        rel,
        NNode {
            ftype: FileType::Dir,
            src: Src::Local,
            attrs: Src::Local,
            children: BTreeMap::new(),
        },
    );
    Ok(())
}

/// A copy of the local subtree (`copy_dir_recurse`), refusing what ostree cannot copy.
fn copy_local(n: &Node, rel: &Path) -> Result<NNode> {
    if n.file_type() == FileType::Other {
        return Err(merge_err(EtcMergeError::UnsupportedFileType {
            path: etc_path(rel)?,
        }));
    }
    let mut children = BTreeMap::new();
    for (name, c) in &n.children {
        children.insert(name.clone(), copy_local(c, &rel.join(name))?);
    }
    Ok(NNode {
        ftype: n.file_type(),
        src: Src::Local,
        attrs: Src::Local,
        children,
    })
}

/// `copy_modified_config_file` for the local path `rel`.
fn copy_modified(l: &Tree, n: &mut NNode, rel: &Path) -> Result<()> {
    let ln = l.get(rel).expect("diffed local path exists");
    if let Some(parent) = rel.parent().filter(|p| !is_root(p)) {
        ensure_dir(n, parent)?;
    }
    if let Some(existing) = n.get(rel) {
        if existing.ftype == FileType::Dir {
            if ln.file_type() != FileType::Dir {
                return Err(merge_err(EtcMergeError::ModifiedConfigNewlyDirectory {
                    path: etc_path(rel)?,
                }));
            }
            // ostree assumes the directory was handled with its parent: nothing to do.
            return Ok(());
        }
        n.remove(rel);
    }
    let copy = copy_local(ln, rel)?;
    n.insert(rel, copy);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shortcut in [`ostree_diff`] never changes the plan: the same three trees give the
    /// same plan whether the new defaults hardlink the old ones where unchanged (as two ostree
    /// checkouts do, so the shortcut applies) or are plain copies (no shared inode: every file
    /// is compared). The local edits that the shortcut does not read are the same size as their
    /// defaults, so only content tells them apart.
    #[test]
    fn skipping_unchanged_defaults_gives_the_same_plan() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let (o, l) = (t.path().join("o"), t.path().join("l"));
        let mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        let files = [
            "a.conf",
            "b.conf",
            "c.conf",
            "e.conf",
            "f.conf",
            "d1/x.conf",
            "d2/y.conf",
            "d3/z.conf",
        ];
        for f in files {
            let p = o.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, format!("default {f}\n")).unwrap();
        }
        // New defaults: unchanged files are the old objects (hard links) or copies.
        let new_defaults = |dir: &Path, link: bool| {
            for f in files {
                let (from, to) = (o.join(f), dir.join(f));
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                if link {
                    std::fs::hard_link(&from, &to).unwrap();
                } else {
                    std::fs::copy(&from, &to).unwrap();
                }
            }
            std::fs::remove_file(dir.join("b.conf")).unwrap();
            std::fs::write(dir.join("b.conf"), "new default b.conf\n").unwrap();
            std::fs::remove_file(dir.join("c.conf")).unwrap();
            std::fs::write(dir.join("c.conf"), "new default c.conf\n").unwrap();
            std::fs::remove_file(dir.join("f.conf")).unwrap();
        };
        let (wl, wc) = (t.path().join("w-linked"), t.path().join("w-copied"));
        new_defaults(&wl, true);
        new_defaults(&wc, false);
        assert!(
            o.join("a.conf").metadata().unwrap().ino()
                == wl.join("a.conf").metadata().unwrap().ino()
        );
        // The live /etc: a copy of the old defaults, then the admin's changes.
        for f in files {
            let p = l.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::copy(o.join(f), &p).unwrap();
        }
        std::fs::write(l.join("a.conf"), "edited! a.conf\n").unwrap(); // unread by the shortcut
        std::fs::write(l.join("c.conf"), "edited! c.conf\n").unwrap(); // both changed
        mode(&l.join("e.conf"), 0o600); // mode only
        mode(&l.join("d1"), 0o700); // a chmod'ed directory with an edited file inside
        std::fs::write(l.join("d1/x.conf"), "edited! d1/x.conf\n").unwrap();
        mode(&l.join("d2"), 0o700); // a chmod'ed directory, nothing edited inside
        std::fs::write(l.join("d3/z.conf"), "edited! d3/z.conf\n").unwrap();

        let (linked, by_link) = plan_etc_counted(&o, &l, &wl, NewDefaults::Load).unwrap();
        let (copied, by_copy) = plan_etc_counted(&o, &l, &wc, NewDefaults::Load).unwrap();
        assert_eq!(linked, copied);
        // What the shortcut saves: with the linked defaults fewer files are read (a.conf, e.conf
        // and d3/z.conf are not, in the O/L diff); with copies every same-size pair is read.
        assert_eq!(
            (by_link, by_copy),
            (
                EtcCompared {
                    identity: 8,
                    bytes: 6
                },
                EtcCompared {
                    identity: 0,
                    bytes: 15
                }
            )
        );
        let got: Vec<(&str, EtcActionKind)> = linked
            .actions
            .iter()
            .map(|a| (a.path.as_str(), a.action))
            .collect();
        assert_eq!(
            got,
            [
                ("/etc/f.conf", EtcActionKind::Remove),
                ("/etc/b.conf", EtcActionKind::TakeNewDefault),
                ("/etc/c.conf", EtcActionKind::KeepLocal),
                ("/etc/d2", EtcActionKind::TakeNewDefault),
            ],
            "{linked:?}"
        );
    }

    #[test]
    fn added_paths_are_pre_order() {
        let t = tempfile::tempdir().unwrap();
        let (o, l) = (t.path().join("o"), t.path().join("l"));
        std::fs::create_dir_all(&o).unwrap();
        std::fs::create_dir_all(l.join("a/b")).unwrap();
        std::fs::write(l.join("a/b/c"), "").unwrap();
        std::fs::write(l.join("a/d"), "").unwrap();
        let (to, tl) = (Tree::load(&o).unwrap(), Tree::load(&l).unwrap());
        let mut d = Diff::default();
        let counts = Counts::default();
        let none = Unchanged {
            w: None,
            dirs_as_w: false,
            c: &counts,
        };
        ostree_diff(&to, &tl, &to.top, &tl.top, Path::new(""), &mut d, none).unwrap();
        let got: Vec<&str> = d.added.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(got, ["a", "a/b", "a/b/c", "a/d"]);
    }

    #[test]
    fn root_action_path_is_etc() {
        assert_eq!(etc_path(Path::new("")).unwrap(), "/etc");
        assert_eq!(etc_path(Path::new("a/b")).unwrap(), "/etc/a/b");
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let bad = Path::new(OsStr::from_bytes(b"a/\xff"));
        let err = etc_path(bad).unwrap_err();
        assert!(format!("{err:#}").contains("not valid UTF-8"), "{err:#}");
    }

    /// `dir/c0/c1/…` created through directory descriptors; returns the deepest one.
    fn deep(root: &Path, comps: &[String]) -> OwnedFd {
        use rustix::fs::{Mode, OFlags};
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        std::fs::create_dir_all(root).unwrap();
        let mut fd = rustix::fs::open(root, flags, Mode::empty()).unwrap();
        for c in comps {
            let _ = rustix::fs::mkdirat(&fd, c.as_str(), Mode::from_raw_mode(0o755));
            fd = rustix::fs::openat(&fd, c.as_str(), flags, Mode::empty()).unwrap();
        }
        fd
    }

    fn put(dir: &OwnedFd, name: &str, data: &[u8]) {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        std::io::Write::write_all(&mut std::fs::File::from(fd), data).unwrap();
    }

    #[test]
    fn paths_beyond_path_max() {
        let d = tempfile::tempdir().unwrap();
        let comps: Vec<String> = (0..25)
            .map(|i| format!("{i:02}{}", "e".repeat(198)))
            .collect();
        let (o, l, n) = (d.path().join("o"), d.path().join("l"), d.path().join("n"));
        put(&deep(&o, &comps), "a.conf", b"v1\n");
        let ld = deep(&l, &comps);
        put(&ld, "a.conf", b"v1\n");
        put(&ld, "local.conf", b"mine\n");
        let nd = deep(&n, &comps);
        put(&nd, "a.conf", b"v2 longer\n");
        put(&nd, "b.conf", b"new\n");
        let plan = plan_etc(&o, &l, &n).unwrap();
        let text = serde_json::to_string(&plan).unwrap();
        let leaf = &comps[24];
        assert!(text.contains(&format!("{leaf}/a.conf")), "{text}");
        assert!(text.contains(&format!("{leaf}/b.conf")), "{text}");
        // Same size, different content: compared by content below PATH_MAX depth too.
        put(&nd, "a.conf", b"v9\n");
        let text = serde_json::to_string(&plan_etc(&o, &l, &n).unwrap()).unwrap();
        assert!(text.contains(&format!("{leaf}/a.conf")), "{text}");
    }
}
