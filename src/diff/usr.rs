//! The `/usr` diff between two deployment checkouts, with the semantics of
//! `ostree diff <from-commit> <to-commit>` restricted to `/usr`.
//!
//! It compares the *physical* deployment directories (`/sysroot/ostree/deploy/<os>/deploy/
//! <csum>.<serial>/usr`), never a composefs or overlay view. ostree checks deployments out as
//! hardlink farms into the repo, so an unchanged file is the same inode in both trees (research
//! §3.1): when two same-named entries of a directory pair have the same `d_ino` on the same
//! device, they are equal and are skipped without a single syscall. Only entries whose inodes
//! differ are `lstat`ed, and only same-sized regular files are read. Directories are real
//! directories in every checkout, so each directory pair is opened, `fstat`ed and listed (with
//! `getdents`); subdirectories are walked in parallel with rayon.
//!
//! What is reported, exactly as `ostree diff` reports it:
//! - **modified**: both sides exist and differ in type, content, permission bits, owner,
//!   symlink target or xattrs. A directory is modified when its own mode, owner or xattrs
//!   changed; its children are compared independently. A type change (file→dir, dir→symlink,
//!   …) is one `modified` entry with kind `type` and nothing below it is listed.
//! - **removed**: the path is gone; a removed directory is listed once, its children are not.
//! - **added**: the path is new; an added directory is listed together with every descendant.
//!
//! When both deployments come from commits in the same repository, each directory pair also
//! carries its two dirtree checksums (read from the repo, [`super::repo`]): equal checksums
//! mean equal subtrees, so the pair is skipped without listing it; equal dirmeta checksums mean
//! equal directory metadata. A 1 % change then touches only the changed directories and their
//! ancestors. A changed pair's two dirtrees are read whole (up to 1 MiB each, about 20,000
//! entries): the pair's entries then come from them instead of from listing the directories
//! (decoding an object is cheaper than `getdents64`, which hashes every name on ext4), an
//! entry with the same checksum on both sides is skipped without a `stat`, and a subdirectory
//! pair with equal dirmeta checksums is opened without an `fstat`. A larger dirtree gives only
//! its subdirectory array (the tail of the object), read when both sides have subdirectories
//! to prune, and the pair is listed on disk as the plain walk does. Without a readable repo the
//! walk compares everything on disk, with the same result.
//!
//! `/usr` itself is reported (as `/usr`) if its own metadata changed. Entries are sorted by
//! path, component-wise, so parents come before their children.

use super::repo::{self, Csum, DirCsums, Repo};
pub(crate) use super::walk::FileType;
use super::walk::{self, FsTraits, Listing, Meta, XattrSource};
use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

/// How a path differs between the two trees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Added,
    Removed,
    Modified,
}

/// What differs about a modified path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ChangeKind {
    /// File bytes (or device number) differ.
    Content,
    /// Permission bits (including setuid/setgid/sticky) differ.
    Mode,
    /// uid or gid differs.
    Owner,
    /// Symlink target differs.
    SymlinkTarget,
    /// The object type differs; the entry then carries no other kind.
    Type,
    /// Extended attributes differ.
    Xattrs,
}

/// One changed path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsrEntry {
    /// Absolute path as seen on the running system, `/usr/…`. (ostree only stores UTF-8
    /// names, so a non-UTF-8 name is an error.)
    pub path: String,
    pub change: Change,
    /// Sorted; empty for added and removed paths.
    pub(crate) kinds: Vec<ChangeKind>,
    /// Type in the `from` tree (`None` when added).
    pub(crate) from_type: Option<FileType>,
    /// Type in the `to` tree (`None` when removed).
    pub(crate) to_type: Option<FileType>,
}

/// Number of entries per change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UsrCounts {
    pub(crate) added: usize,
    pub(crate) removed: usize,
    pub(crate) modified: usize,
}

/// The `/usr` diff.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsrDiff {
    /// Sorted by path, component-wise (as [`Path`] orders them): parents before children.
    pub entries: Vec<UsrEntry>,
    pub(crate) counts: UsrCounts,
}

impl UsrDiff {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry for an absolute path, if it changed.
    pub fn get(&self, path: &str) -> Option<&UsrEntry> {
        self.entries
            .binary_search_by(|e| Path::new(&e.path).cmp(Path::new(path)))
            .ok()
            .map(|i| &self.entries[i])
    }
}

/// Diff `<from_deploy>/usr` against `<to_deploy>/usr` (see the module docs for the semantics).
pub fn diff_usr(from_deploy: &Path, to_deploy: &Path) -> Result<UsrDiff> {
    let roots = [from_deploy.join("usr"), to_deploy.join("usr")];
    let a = walk::open_dir(&roots[0])?;
    let b = walk::open_dir(&roots[1])?;
    let ma = walk::stat_fd(a.as_fd()).with_context(|| format!("stat {}", roots[0].display()))?;
    let mb = walk::stat_fd(b.as_fd()).with_context(|| format!("stat {}", roots[1].display()))?;
    // The two commits' /usr checksums, when both come from one readable repository.
    let repo_usr = match (
        Repo::of_deployment(from_deploy),
        Repo::of_deployment(to_deploy),
    ) {
        (Some((repo, ca)), Some((_, cb))) => match (repo.usr(&ca), repo.usr(&cb)) {
            (Some(ua), Some(ub)) => Some((repo, ua, ub)),
            _ => None,
        },
        _ => None,
    };
    let (repo, usr_csums) = match repo_usr {
        Some((r, ua, ub)) => (Some(r), Some((ua, ub))),
        None => (None, None),
    };
    let ctx = Ctx {
        fs: FsTraits::of(a.as_fd()).both(FsTraits::of(b.as_fd())),
        roots: roots.map(|r| r.into_os_string().into_vec()),
        repo,
    };
    let mut entries = Vec::new();
    let same_meta = usr_csums.is_some_and(|(ua, ub)| ua.meta == ub.meta);
    if !same_meta {
        if let Some(e) = ctx.compare_dirs(&a, &ma, &b, &mb, b"")? {
            entries.push(e);
        }
    }
    let trees = usr_csums.map(|(ua, ub)| (ua.tree, ub.tree));
    entries.extend(ctx.diff_pair(&a, &b, Some((&ma, &mb)), b"", trees)?);
    entries.sort_unstable_by(|x, y| Path::new(&x.path).cmp(Path::new(&y.path)));
    let mut counts = UsrCounts::default();
    for e in &entries {
        match e.change {
            Change::Added => counts.added += 1,
            Change::Removed => counts.removed += 1,
            Change::Modified => counts.modified += 1,
        }
    }
    Ok(UsrDiff { entries, counts })
}

/// The largest dirtree object [`Ctx::diff_pair`] decodes whole (about 20,000 files); on the
/// bench's 1,000-file directories decoding both objects took half the time of listing both.
const FULL_DIRTREE: usize = 1024 * 1024;

/// What judging a directory pair's entries found: changed entries, same-named subdirectory
/// pairs to descend into (with their checksums when known), added subdirectories.
#[derive(Default)]
struct Judged {
    out: Vec<UsrEntry>,
    both_dirs: Vec<(CString, Option<(DirCsums, DirCsums)>)>,
    added_dirs: Vec<CString>,
}

#[derive(Clone, Copy)]
enum Side {
    From = 0,
    To = 1,
}

struct Ctx {
    /// `<deploy>/usr` of each side, as bytes.
    roots: [Vec<u8>; 2],
    fs: FsTraits,
    /// The repository both commits are in, for dirtree checksums.
    repo: Option<Repo>,
}

fn join(rel: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(rel.len() + 1 + name.len());
    v.extend_from_slice(rel);
    v.push(b'/');
    v.extend_from_slice(name);
    v
}

fn concat(mut a: Vec<UsrEntry>, mut b: Vec<UsrEntry>) -> Result<Vec<UsrEntry>> {
    if a.is_empty() {
        Ok(b)
    } else {
        a.append(&mut b);
        Ok(a)
    }
}

impl Ctx {
    /// Path on disk of `rel` (`""` or `/a/b`) on one side.
    fn disk(&self, side: Side, rel: &[u8]) -> Vec<u8> {
        let root = &self.roots[side as usize];
        let mut v = Vec::with_capacity(root.len() + rel.len());
        v.extend_from_slice(root);
        v.extend_from_slice(rel);
        v
    }

    fn show(&self, side: Side, rel: &[u8]) -> String {
        Path::new(OsStr::from_bytes(&self.disk(side, rel)))
            .display()
            .to_string()
    }

    fn entry(
        rel: &[u8],
        change: Change,
        kinds: Vec<ChangeKind>,
        from_type: Option<FileType>,
        to_type: Option<FileType>,
    ) -> Result<UsrEntry> {
        let name = std::str::from_utf8(rel).map_err(|_| {
            anyhow::anyhow!(
                "/usr{} is not valid UTF-8, which no ostree commit contains",
                String::from_utf8_lossy(rel)
            )
        })?;
        Ok(UsrEntry {
            path: format!("/usr{name}"),
            change,
            kinds,
            from_type,
            to_type,
        })
    }

    /// Compare the metadata of a directory pair (not its children).
    fn compare_dirs(
        &self,
        a: &OwnedFd,
        ma: &Meta,
        b: &OwnedFd,
        mb: &Meta,
        rel: &[u8],
    ) -> Result<Option<UsrEntry>> {
        if ma.same_inode(mb) {
            return Ok(None);
        }
        let mut kinds = Vec::new();
        if ma.perm() != mb.perm() {
            kinds.push(ChangeKind::Mode);
        }
        if (ma.uid, ma.gid) != (mb.uid, mb.gid) {
            kinds.push(ChangeKind::Owner);
        }
        let (mut xa, mut xb) = (Vec::new(), Vec::new());
        walk::xattr_snapshot(XattrSource::Fd(a.as_fd()), &mut xa)
            .with_context(|| format!("reading xattrs of {}", self.show(Side::From, rel)))?;
        walk::xattr_snapshot(XattrSource::Fd(b.as_fd()), &mut xb)
            .with_context(|| format!("reading xattrs of {}", self.show(Side::To, rel)))?;
        if xa != xb {
            kinds.push(ChangeKind::Xattrs);
        }
        if kinds.is_empty() {
            return Ok(None);
        }
        Self::entry(
            rel,
            Change::Modified,
            kinds,
            Some(FileType::Dir),
            Some(FileType::Dir),
        )
        .map(Some)
    }

    /// Compare two non-directory (or differently typed) objects `name` in `a`/`b`.
    fn compare_objects(
        &self,
        a: &OwnedFd,
        b: &OwnedFd,
        name: &CStr,
        ma: &Meta,
        mb: &Meta,
        rel: &[u8],
    ) -> Result<Option<UsrEntry>> {
        let (ta, tb) = (ma.file_type(), mb.file_type());
        if ma.fmt() != mb.fmt() {
            return Self::entry(
                rel,
                Change::Modified,
                vec![ChangeKind::Type],
                Some(ta),
                Some(tb),
            )
            .map(Some);
        }
        if ma.same_inode(mb) {
            return Ok(None);
        }
        let mut kinds = Vec::new();
        match ta {
            FileType::File => {
                if ma.size != mb.size || !self.same_file_content(a, b, name, rel)? {
                    kinds.push(ChangeKind::Content);
                }
            }
            FileType::Other => {
                if ma.rdev != mb.rdev {
                    kinds.push(ChangeKind::Content);
                }
            }
            FileType::Symlink | FileType::Dir => {}
        }
        if ma.perm() != mb.perm() {
            kinds.push(ChangeKind::Mode);
        }
        if (ma.uid, ma.gid) != (mb.uid, mb.gid) {
            kinds.push(ChangeKind::Owner);
        }
        if ta == FileType::Symlink {
            let la = walk::readlink_at(a.as_fd(), name)
                .with_context(|| format!("readlink {}", self.show(Side::From, rel)))?;
            let lb = walk::readlink_at(b.as_fd(), name)
                .with_context(|| format!("readlink {}", self.show(Side::To, rel)))?;
            if la != lb {
                kinds.push(ChangeKind::SymlinkTarget);
            }
        }
        let (mut xa, mut xb) = (Vec::new(), Vec::new());
        self.xattrs_of(Side::From, a, name, rel, &mut xa)?;
        self.xattrs_of(Side::To, b, name, rel, &mut xb)?;
        if xa != xb {
            kinds.push(ChangeKind::Xattrs);
        }
        kinds.sort_unstable();
        if kinds.is_empty() {
            return Ok(None);
        }
        Self::entry(rel, Change::Modified, kinds, Some(ta), Some(tb)).map(Some)
    }

    /// xattrs of the non-directory `name` in `dir`, relative to the directory descriptor
    /// (paths may be longer than `PATH_MAX`); by path only when `/proc` is not mounted.
    fn xattrs_of(
        &self,
        side: Side,
        dir: &OwnedFd,
        name: &CStr,
        rel: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let done = walk::xattr_snapshot_at(dir.as_fd(), name, out)
            .with_context(|| format!("reading xattrs of {}", self.show(side, rel)))?;
        if !done {
            let p = walk::cpath(&self.disk(side, rel))?;
            walk::xattr_snapshot(XattrSource::Path(&p), out)
                .with_context(|| format!("reading xattrs of {}", self.show(side, rel)))?;
        }
        Ok(())
    }

    fn same_file_content(&self, a: &OwnedFd, b: &OwnedFd, name: &CStr, rel: &[u8]) -> Result<bool> {
        let mut fa = walk::open_file_at(a.as_fd(), name)
            .with_context(|| format!("opening {}", self.show(Side::From, rel)))?;
        let mut fb = walk::open_file_at(b.as_fd(), name)
            .with_context(|| format!("opening {}", self.show(Side::To, rel)))?;
        walk::same_bytes(&mut fa, &mut fb).with_context(|| {
            format!(
                "comparing {} with {}",
                self.show(Side::From, rel),
                self.show(Side::To, rel)
            )
        })
    }

    fn file_type_of(
        &self,
        side: Side,
        dir: &OwnedFd,
        l: &Listing,
        i: usize,
        rel: &[u8],
    ) -> Result<FileType> {
        match l.ent(i).dtype {
            Some(t) => Ok(t),
            None => Ok(walk::lstat_at(dir.as_fd(), l.cname(i))
                .with_context(|| format!("stat {}", self.show(side, rel)))?
                .file_type()),
        }
    }

    fn list(&self, side: Side, fd: &OwnedFd, rel: &[u8]) -> Result<Listing> {
        Listing::read(fd.as_fd(), self.fs)
            .with_context(|| format!("reading directory {}", self.show(side, rel)))
    }

    fn open_child(
        &self,
        side: Side,
        dir: &OwnedFd,
        name: &CStr,
        rel: &[u8],
    ) -> Result<(OwnedFd, Meta)> {
        let fd = self.open_child_dir(side, dir, name, rel)?;
        let m = self.stat(side, &fd, rel)?;
        Ok((fd, m))
    }

    fn open_child_dir(
        &self,
        side: Side,
        dir: &OwnedFd,
        name: &CStr,
        rel: &[u8],
    ) -> Result<OwnedFd> {
        walk::open_dir_at(dir.as_fd(), name)
            .with_context(|| format!("opening directory {}", self.show(side, rel)))
    }

    fn stat(&self, side: Side, fd: &OwnedFd, rel: &[u8]) -> Result<Meta> {
        walk::stat_fd(fd.as_fd()).with_context(|| format!("stat {}", self.show(side, rel)))
    }

    /// Diff the children of a directory pair whose own metadata the caller has compared.
    /// `trees`: the pair's dirtree checksums, when known. Dirtrees of at most
    /// [`FULL_DIRTREE`] bytes are read whole and the pair's entries come from them: no
    /// directory listing, and an entry whose checksum is the same on both sides is skipped
    /// without a `stat`. Larger ones (bounding the memory one pair takes) only give their
    /// subdirectories' checksums, and the entries come from listing both directories.
    /// `metas`: the pair's `fstat`s, `None` when the caller had no use for them (equal dirmeta
    /// checksums); taken here only if the listing needs them.
    fn diff_pair(
        &self,
        a: &OwnedFd,
        b: &OwnedFd,
        metas: Option<(&Meta, &Meta)>,
        rel: &[u8],
        trees: Option<(Csum, Csum)>,
    ) -> Result<Vec<UsrEntry>> {
        if metas.is_some_and(|(ma, mb)| ma.same_inode(mb)) || trees.is_some_and(|(ta, tb)| ta == tb)
        {
            return Ok(Vec::new());
        }
        let read = match (&self.repo, trees) {
            (Some(repo), Some((ta, tb))) => repo
                .dirtree(&ta, FULL_DIRTREE)
                .zip(repo.dirtree(&tb, FULL_DIRTREE)),
            _ => None,
        };
        let mut p = Judged::default();
        match read {
            Some((Ok(da), Ok(db))) => self.judge_known(a, b, rel, &da, &db, &mut p)?,
            other => {
                let (ma, mb) = match metas {
                    Some((ma, mb)) => (*ma, *mb),
                    None => (self.stat(Side::From, a, rel)?, self.stat(Side::To, b, rel)?),
                };
                self.judge_listed(a, &ma, b, &mb, rel, &mut p)?;
                // The subdirectories' checksums on both sides, to prune below: read only when
                // there are subdirectories on both sides to prune.
                let subdirs = match other {
                    Some((x, y)) if !p.both_dirs.is_empty() => {
                        let s = |t: repo::DirTreeRead| match t {
                            Ok(d) => Some(d.subdirs()),
                            Err(o) => o.subdirs(),
                        };
                        s(x).zip(s(y))
                    }
                    _ => None,
                };
                if let Some((sa, sb)) = subdirs {
                    for (name, known) in &mut p.both_dirs {
                        let n = name.as_bytes();
                        *known = sa.get(n).copied().zip(sb.get(n).copied());
                    }
                }
            }
        }
        let Judged {
            out,
            both_dirs,
            added_dirs,
        } = p;
        let sub = both_dirs
            .par_iter()
            .map(|(name, known)| -> Result<Vec<UsrEntry>> {
                let crel = join(rel, name.as_bytes());
                let known = *known;
                if known.is_some_and(|(x, y)| x == y) {
                    return Ok(Vec::new());
                }
                let ca = self.open_child_dir(Side::From, a, name, &crel)?;
                let cb = self.open_child_dir(Side::To, b, name, &crel)?;
                let child_trees = known.map(|(x, y)| (x.tree, y.tree));
                if known.is_some_and(|(x, y)| x.meta == y.meta) {
                    // Equal directory metadata: no fstat needed.
                    return self.diff_pair(&ca, &cb, None, &crel, child_trees);
                }
                let cma = self.stat(Side::From, &ca, &crel)?;
                let cmb = self.stat(Side::To, &cb, &crel)?;
                let mut v = Vec::new();
                if let Some(e) = self.compare_dirs(&ca, &cma, &cb, &cmb, &crel)? {
                    v.push(e);
                }
                concat(
                    v,
                    self.diff_pair(&ca, &cb, Some((&cma, &cmb)), &crel, child_trees)?,
                )
            })
            .try_reduce(Vec::new, concat)?;
        let added = added_dirs
            .par_iter()
            .map(|name| self.list_added(b, name, &join(rel, name.as_bytes())))
            .try_reduce(Vec::new, concat)?;
        concat(concat(out, sub)?, added)
    }

    /// The entries of a directory pair from its two dirtrees (see [`Ctx::diff_pair`]).
    fn judge_known(
        &self,
        a: &OwnedFd,
        b: &OwnedFd,
        rel: &[u8],
        da: &repo::DirTree,
        db: &repo::DirTree,
        p: &mut Judged,
    ) -> Result<()> {
        use repo::Child;
        let (ea, eb) = (&da.entries, &db.entries);
        let type_of = |side: Side, dir: &OwnedFd, name: &CStr, c: &Child, crel: &[u8]| match c {
            Child::Dir(_) => Ok(FileType::Dir),
            Child::File(_) => Ok::<_, anyhow::Error>(
                walk::lstat_at(dir.as_fd(), name)
                    .with_context(|| format!("stat {}", self.show(side, crel)))?
                    .file_type(),
            ),
        };
        let (mut i, mut j) = (0, 0);
        while i < ea.len() || j < eb.len() {
            let ord = if i == ea.len() {
                std::cmp::Ordering::Greater
            } else if j == eb.len() {
                std::cmp::Ordering::Less
            } else {
                ea[i].0.as_bytes().cmp(eb[j].0.as_bytes())
            };
            match ord {
                std::cmp::Ordering::Less => {
                    let (name, c) = &ea[i];
                    let crel = join(rel, name.as_bytes());
                    let t = type_of(Side::From, a, name, c, &crel)?;
                    p.out.push(Self::entry(
                        &crel,
                        Change::Removed,
                        Vec::new(),
                        Some(t),
                        None,
                    )?);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    let (name, c) = &eb[j];
                    let crel = join(rel, name.as_bytes());
                    let t = type_of(Side::To, b, name, c, &crel)?;
                    p.out.push(Self::entry(
                        &crel,
                        Change::Added,
                        Vec::new(),
                        None,
                        Some(t),
                    )?);
                    if t == FileType::Dir {
                        p.added_dirs.push(name.clone());
                    }
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    let name = &ea[i].0;
                    match (ea[i].1, eb[j].1) {
                        // The same content checksum: the same repo object.
                        (Child::File(x), Child::File(y)) if x == y => {}
                        (Child::Dir(x), Child::Dir(y)) => {
                            p.both_dirs.push((name.clone(), Some((x, y))));
                        }
                        _ => self.judge_on_disk(a, b, name, name, rel, p)?,
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        Ok(())
    }

    /// A same-named pair that only the disk can judge: `lstat` both, then descend (both
    /// directories) or compare the objects.
    fn judge_on_disk(
        &self,
        a: &OwnedFd,
        b: &OwnedFd,
        name_a: &CStr,
        name_b: &CStr,
        rel: &[u8],
        p: &mut Judged,
    ) -> Result<()> {
        let crel = join(rel, name_a.to_bytes());
        let sa = walk::lstat_at(a.as_fd(), name_a)
            .with_context(|| format!("stat {}", self.show(Side::From, &crel)))?;
        let sb = walk::lstat_at(b.as_fd(), name_b)
            .with_context(|| format!("stat {}", self.show(Side::To, &crel)))?;
        if sa.file_type() == FileType::Dir && sb.file_type() == FileType::Dir {
            p.both_dirs.push((name_a.to_owned(), None));
        } else if let Some(e) = self.compare_objects(a, b, name_a, &sa, &sb, &crel)? {
            p.out.push(e);
        }
        Ok(())
    }

    /// The entries of a directory pair from listing both directories.
    fn judge_listed(
        &self,
        a: &OwnedFd,
        ma: &Meta,
        b: &OwnedFd,
        mb: &Meta,
        rel: &[u8],
        p: &mut Judged,
    ) -> Result<()> {
        let la = self.list(Side::From, a, rel)?;
        let lb = self.list(Side::To, b, rel)?;
        let fast = self.fs.dirent_inodes && ma.dev == mb.dev;
        let (mut i, mut j) = (0, 0);
        while i < la.len() || j < lb.len() {
            let ord = if i == la.len() {
                std::cmp::Ordering::Greater
            } else if j == lb.len() {
                std::cmp::Ordering::Less
            } else {
                la.name(i).cmp(lb.name(j))
            };
            match ord {
                std::cmp::Ordering::Less => {
                    let crel = join(rel, la.name(i));
                    let t = self.file_type_of(Side::From, a, &la, i, &crel)?;
                    p.out.push(Self::entry(
                        &crel,
                        Change::Removed,
                        Vec::new(),
                        Some(t),
                        None,
                    )?);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    let crel = join(rel, lb.name(j));
                    let t = self.file_type_of(Side::To, b, &lb, j, &crel)?;
                    p.out.push(Self::entry(
                        &crel,
                        Change::Added,
                        Vec::new(),
                        None,
                        Some(t),
                    )?);
                    if t == FileType::Dir {
                        p.added_dirs.push(lb.cname(j).to_owned());
                    }
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    let (ea, eb) = (la.ent(i), lb.ent(j));
                    match (ea.dtype, eb.dtype) {
                        // Same inode: the same repo object, identical in every respect.
                        (Some(ta), Some(tb))
                            if fast && ea.ino == eb.ino && ta == tb && ta != FileType::Dir => {}
                        (Some(FileType::Dir), Some(FileType::Dir)) => {
                            p.both_dirs.push((la.cname(i).to_owned(), None));
                        }
                        _ => self.judge_on_disk(a, b, la.cname(i), lb.cname(j), rel, p)?,
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        Ok(())
    }

    /// Every descendant of the added directory `name` in `parent` (on the `to` side).
    fn list_added(&self, parent: &OwnedFd, name: &CStr, rel: &[u8]) -> Result<Vec<UsrEntry>> {
        let (fd, _) = self.open_child(Side::To, parent, name, rel)?;
        let l = self.list(Side::To, &fd, rel)?;
        let mut out = Vec::with_capacity(l.len());
        let mut dirs = Vec::new();
        for i in 0..l.len() {
            let crel = join(rel, l.name(i));
            let t = self.file_type_of(Side::To, &fd, &l, i, &crel)?;
            out.push(Self::entry(
                &crel,
                Change::Added,
                Vec::new(),
                None,
                Some(t),
            )?);
            if t == FileType::Dir {
                dirs.push(i);
            }
        }
        let sub = dirs
            .par_iter()
            .map(|&i| self.list_added(&fd, l.cname(i), &join(rel, l.name(i))))
            .try_reduce(Vec::new, concat)?;
        concat(out, sub)
    }
}
