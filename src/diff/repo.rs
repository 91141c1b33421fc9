//! Read-only access to the commit and dirtree objects of the ostree repository a deployment was
//! checked out from, so the `/usr` walk can skip every subtree whose content checksum is the
//! same in both commits (the way ostree itself knows two trees are equal without looking).
//!
//! Only what the walk needs is read: a commit's root (dirtree and dirmeta checksums) and, per
//! dirtree, its subdirectories' checksums — the tail of the object, never its files array. Anything unexpected (another repo layout, a missing
//! or unparsable object) makes the lookup return `None`, and the walk compares that part of the
//! tree on disk instead — the pruning only ever removes work, never changes the result.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zvariant::serialized::{Context, Data};
use zvariant::LE;

/// A SHA-256 object checksum.
pub(crate) type Csum = [u8; 32];

/// A directory's content (dirtree) and metadata (dirmeta) checksums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirCsums {
    pub tree: Csum,
    pub meta: Csum,
}

/// The subdirectories of one dirtree, by name.
pub(crate) type SubDirs = HashMap<Vec<u8>, DirCsums>;

// See discover::state: zvariant's GVariant format is deprecated only in favour of a future crate.
#[allow(deprecated)]
fn ctxt() -> Context {
    Context::new_gvariant(LE, 0)
}

fn csum(v: &[u8]) -> Option<Csum> {
    v.try_into().ok()
}

/// How many bytes at the end of a dirtree object [`Repo::subdirs`] reads first.
const TAIL_READ: usize = 4096;

/// An ostree repository (`<sysroot>/ostree/repo`).
#[derive(Debug, Clone)]
pub struct Repo {
    objects: PathBuf,
    /// `objects/`, opened once: dirtree objects are opened relative to it (two path
    /// components to resolve instead of the whole path, per object).
    objects_fd: Arc<OwnedFd>,
}

use crate::discover::state::CommitVariant;

/// The root (dirtree, dirmeta) of a commit object, `(a{sv}aya(say)sstayay)`.
pub fn parse_commit_root(bytes: &[u8]) -> Option<DirCsums> {
    let (c, used): (CommitVariant, usize) = Data::new(bytes, ctxt()).deserialize().ok()?;
    (used == bytes.len()).then_some(())?;
    Some(DirCsums {
        tree: csum(&c.6)?,
        meta: csum(&c.7)?,
    })
}

/// The size of one framing offset in a GVariant container of `size` bytes (GLib's
/// `gvariant_serialised_get_offset_size`).
fn offset_size(size: usize) -> usize {
    match size {
        0 => 0,
        1..=0xff => 1,
        0x100..=0xffff => 2,
        0x1_0000..=0xffff_ffff => 4,
        _ => 8,
    }
}

/// The little-endian framing offset of `osz` bytes at `at`.
fn offset_at(b: &[u8], at: usize, osz: usize) -> Option<usize> {
    let raw = b.get(at..at.checked_add(osz)?)?;
    let v = raw.iter().rev().fold(0u64, |v, &x| (v << 8) | u64::from(x));
    usize::try_from(v).ok()
}

/// Where the subdirectory array `a(sayay)` of a dirtree object of `size` bytes starts, from
/// the object's last `offset_size(size)` bytes (`tail`): the tuple's one framing offset, the
/// end of the files array. The array runs from there to `size - offset_size(size)`.
fn dirs_start(size: usize, tail: &[u8]) -> Option<usize> {
    let osz = offset_size(size);
    if size == 0 {
        // Both arrays empty, as zvariant writes it (GLib writes one zero offset byte).
        return Some(0);
    }
    if tail.len() < osz {
        return None;
    }
    let start = offset_at(tail, tail.len() - osz, osz)?;
    (start <= size - osz).then_some(start)
}

/// One `(sayay)` element: name, dirtree and dirmeta checksums.
fn parse_dir_entry(e: &[u8]) -> Option<(Vec<u8>, DirCsums)> {
    let osz = offset_size(e.len());
    let body = e.len().checked_sub(2 * osz)?;
    // Framing offsets of the non-last members, in reverse order at the end.
    let name_end = offset_at(e, e.len() - osz, osz)?;
    let tree_end = offset_at(e, e.len() - 2 * osz, osz)?;
    if name_end > tree_end || tree_end > body {
        return None;
    }
    let name = e[..name_end].strip_suffix(&[0])?;
    if name.contains(&0) || std::str::from_utf8(name).is_err() {
        return None;
    }
    Some((
        name.to_vec(),
        DirCsums {
            tree: csum(&e[name_end..tree_end])?,
            meta: csum(&e[tree_end..body])?,
        },
    ))
}

/// The elements of a serialized GVariant array of variable-size elements, in order.
fn array_elems(a: &[u8], mut each: impl FnMut(&[u8]) -> Option<()>) -> Option<()> {
    if a.is_empty() {
        return Some(());
    }
    let osz = offset_size(a.len());
    let table = offset_at(a, a.len() - osz, osz)?;
    if table > a.len() - osz || !(a.len() - table).is_multiple_of(osz) {
        return None;
    }
    let mut start = 0;
    for i in 0..(a.len() - table) / osz {
        let end = offset_at(a, table + i * osz, osz)?;
        if end < start || end > table {
            return None;
        }
        each(&a[start..end])?;
        start = end;
    }
    Some(())
}

/// The serialized subdirectory array `a(sayay)` of a dirtree. Anything that is not a
/// well-formed array of 32-byte checksums is `None`.
fn parse_dirs_array(a: &[u8]) -> Option<SubDirs> {
    let mut out = SubDirs::new();
    array_elems(a, |e| {
        let (name, c) = parse_dir_entry(e)?;
        out.insert(name, c);
        Some(())
    })?;
    Some(out)
}

/// One `(say)` element of a files array: name and content checksum.
fn parse_file_entry(e: &[u8]) -> Option<(&[u8], Csum)> {
    let osz = offset_size(e.len());
    let body = e.len().checked_sub(osz)?;
    let name_end = offset_at(e, body, osz)?;
    if name_end > body {
        return None;
    }
    let name = e[..name_end].strip_suffix(&[0])?;
    if name.is_empty() || name.contains(&0) || std::str::from_utf8(name).is_err() {
        return None;
    }
    Some((name, csum(&e[name_end..body])?))
}

/// What a dirtree holds under one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Child {
    /// A regular file or symlink, with its content checksum.
    File(Csum),
    Dir(DirCsums),
}

/// A whole dirtree object decoded: every entry, files and subdirectories, sorted by name
/// bytes, each name NUL-terminated (ready for `*at` calls).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DirTree {
    pub(crate) entries: Vec<(std::ffi::CString, Child)>,
}

impl DirTree {
    /// The subdirectories alone.
    pub(crate) fn subdirs(&self) -> SubDirs {
        self.entries
            .iter()
            .filter_map(|(n, c)| match c {
                Child::Dir(d) => Some((n.as_bytes().to_vec(), *d)),
                Child::File(_) => None,
            })
            .collect()
    }
}

/// What [`Repo::dirtree`] read.
pub(crate) type DirTreeRead = Result<DirTree, OpenDirTree>;

/// An open dirtree object too large to decode whole ([`Repo::dirtree`]).
#[derive(Debug)]
pub(crate) struct OpenDirTree {
    f: std::fs::File,
    size: usize,
}

impl OpenDirTree {
    /// Its subdirectories, from the object's tail.
    pub(crate) fn subdirs(&self) -> Option<SubDirs> {
        Repo::subdirs_of(&self.f, self.size)
    }
}

/// A dirtree object `(a(say)a(sayay))`, both arrays, decoded by hand (see [`parse_subdirs`]).
/// A name twice (a file and a directory, or a duplicate) is `None`.
pub(crate) fn parse_dirtree(bytes: &[u8]) -> Option<DirTree> {
    let start = dirs_start(bytes.len(), bytes)?;
    let end = bytes.len() - offset_size(bytes.len());
    let mut entries = Vec::new();
    array_elems(&bytes[..start], |e| {
        let (name, c) = parse_file_entry(e)?;
        entries.push((std::ffi::CString::new(name).ok()?, Child::File(c)));
        Some(())
    })?;
    array_elems(&bytes[start..end], |e| {
        let (name, c) = parse_dir_entry(e)?;
        entries.push((std::ffi::CString::new(name).ok()?, Child::Dir(c)));
        Some(())
    })?;
    entries.sort_unstable_by(|x, y| x.0.as_bytes().cmp(y.0.as_bytes()));
    if entries.windows(2).any(|w| w[0].0 == w[1].0) {
        return None;
    }
    Some(DirTree { entries })
}

/// The subdirectories of a dirtree object, `(a(say)a(sayay))`. Only the subdirectory array is
/// decoded (the files array, usually the bulk of the object, is skipped by its framing
/// offset), so the cost follows the number of subdirectories.
pub fn parse_subdirs(bytes: &[u8]) -> Option<SubDirs> {
    let start = dirs_start(bytes.len(), bytes)?;
    parse_dirs_array(&bytes[start..bytes.len() - offset_size(bytes.len())])
}

impl Repo {
    /// The repository and commit of a deployment directory
    /// `<sysroot>/ostree/deploy/<os>/deploy/<commit>.<serial>`.
    pub fn of_deployment(deploy: &Path) -> Option<(Repo, String)> {
        let name = deploy.file_name()?.to_str()?;
        let (commit, serial) = name.split_once('.')?;
        if commit.len() != 64 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        serial.parse::<u32>().ok()?;
        let ostree = deploy.parent()?.parent()?.parent()?.parent()?;
        Some((Repo::at(ostree.join("repo/objects"))?, commit.to_owned()))
    }

    /// The repository whose `objects/` directory is `objects`, if it can be opened.
    pub(crate) fn at(objects: PathBuf) -> Option<Repo> {
        let fd = super::walk::open_dir(&objects).ok()?;
        Some(Repo {
            objects,
            objects_fd: Arc::new(fd),
        })
    }

    /// The bytes of object `hex.ext` (`commit`, `dirtree`, `dirmeta`), if readable.
    pub(crate) fn read_object(&self, hex: &str, ext: &str) -> Option<Vec<u8>> {
        self.read(hex, ext)
    }

    fn read(&self, hex: &str, ext: &str) -> Option<Vec<u8>> {
        let p = self
            .objects
            .join(&hex[..2])
            .join(format!("{}.{ext}", &hex[2..]));
        // A missing or odd object (e.g. a FIFO) only disables pruning; never block on it.
        crate::system::files::read_opt(&p, crate::system::files::Follow::No)
            .ok()
            .flatten()
    }

    /// The root directory of a commit.
    pub(crate) fn commit_root(&self, commit: &str) -> Option<DirCsums> {
        parse_commit_root(&self.read(commit, "commit")?)
    }

    /// The subdirectories of the dirtree `tree`. Reads only the object's tail: the framing
    /// offset at its end, then the subdirectory array before it (see [`parse_subdirs`]), in one
    /// `pread` when the array lies within the last [`TAIL_READ`] bytes (as in most dirtrees),
    /// else two. Four system calls per object (open relative to `objects/`, fstat, pread,
    /// close): the walk reads one or two dirtrees per changed directory.
    pub fn subdirs(&self, tree: &Csum) -> Option<SubDirs> {
        let (f, size) = self.open_dirtree(tree)?;
        Self::subdirs_of(&f, size)
    }

    /// The dirtree object `tree` and its size, if it is a regular file.
    fn open_dirtree(&self, tree: &Csum) -> Option<(std::fs::File, usize)> {
        use rustix::fs::{Mode, OFlags};
        let hex = crate::discover::kernel::hex(tree);
        let rel = format!("{}/{}.dirtree", &hex[..2], &hex[2..]);
        // O_NONBLOCK: a FIFO in place of the object opens without blocking and is then
        // refused by its type; on a regular file the flag changes nothing.
        let fd = rustix::fs::openat(
            self.objects_fd.as_fd(),
            rel.as_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .ok()?;
        let st = rustix::fs::fstat(&fd).ok()?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return None;
        }
        Some((std::fs::File::from(fd), usize::try_from(st.st_size).ok()?))
    }

    /// The subdirectory array of the open dirtree `f` of `size` bytes.
    fn subdirs_of(f: &std::fs::File, size: usize) -> Option<SubDirs> {
        use std::os::unix::fs::FileExt;
        let osz = offset_size(size);
        let first = size.min(TAIL_READ);
        let mut buf = vec![0u8; first];
        f.read_exact_at(&mut buf, (size - first) as u64).ok()?;
        let base = size - first;
        let start = dirs_start(size, &buf[first.saturating_sub(osz)..])?;
        let end = size - osz;
        if start >= base {
            return parse_dirs_array(&buf[start - base..end - base]);
        }
        let mut dirs = vec![0u8; end - start];
        f.read_exact_at(&mut dirs, start as u64).ok()?;
        parse_dirs_array(&dirs)
    }

    /// The dirtree `tree`: decoded whole when the object is at most `full_limit` bytes
    /// (`Ok`), else left open for [`OpenDirTree::subdirs`] (`Err`); `None` when unreadable.
    pub(crate) fn dirtree(
        &self,
        tree: &Csum,
        full_limit: usize,
    ) -> Option<Result<DirTree, OpenDirTree>> {
        use std::os::unix::fs::FileExt;
        let (f, size) = self.open_dirtree(tree)?;
        if size > full_limit {
            return Some(Err(OpenDirTree { f, size }));
        }
        let mut buf = vec![0u8; size];
        f.read_exact_at(&mut buf, 0).ok()?;
        parse_dirtree(&buf).map(Ok)
    }

    /// `/usr` of a commit.
    pub fn usr(&self, commit: &str) -> Option<DirCsums> {
        let root = self.commit_root(commit)?;
        self.subdirs(&root.tree)?.remove(b"usr".as_slice())
    }

    /// The files (regular files and symlinks) of the dirtree `tree`, by name, with their
    /// content checksums: the whole object decoded.
    pub(crate) fn files(&self, tree: &Csum) -> Option<FileCsums> {
        parse_files(&self.read(&crate::discover::kernel::hex(tree), "dirtree")?)
    }
}

/// The files of one dirtree (regular files and symlinks), by name: their content checksums
/// (the `.file` object names: content, uid/gid/mode and xattrs together).
pub(crate) type FileCsums = HashMap<Vec<u8>, Csum>;

type DirTreeVariant = (Vec<(String, Vec<u8>)>, Vec<(String, Vec<u8>, Vec<u8>)>);

/// The files array of a dirtree object `(a(say)a(sayay))`, fully decoded by zvariant.
pub fn parse_files(bytes: &[u8]) -> Option<FileCsums> {
    let (t, used): (DirTreeVariant, usize) = Data::new(bytes, ctxt()).deserialize().ok()?;
    (used == bytes.len()).then_some(())?;
    t.0.into_iter()
        .map(|(name, c)| Some((name.into_bytes(), csum(&c)?)))
        .collect()
}

/// What a commit holds at a path under `/usr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UsrEntry {
    /// A regular file or symlink, with its content checksum.
    File(Csum),
    Dir,
    Absent,
}

/// The `/usr` of one deployment's commit, looked up path by path with its dirtree objects
/// cached: which content a path has, without reading the file. ostree hardlinks the checkout
/// to these objects, so the checksum is the content of the deployment's file.
#[derive(Debug)]
pub(crate) struct CommitUsr {
    repo: Repo,
    usr: DirCsums,
    dirs: HashMap<Csum, Option<SubDirs>>,
    files: HashMap<Csum, Option<FileCsums>>,
}

impl CommitUsr {
    /// The commit of the deployment directory `deploy` (`…/deploy/<commit>.<serial>`), when
    /// its repository has the commit and its `/usr`.
    pub(crate) fn of_deployment(deploy: &Path) -> Option<CommitUsr> {
        let (repo, commit) = Repo::of_deployment(deploy)?;
        let usr = repo.usr(&commit)?;
        Some(CommitUsr {
            repo,
            usr,
            dirs: HashMap::new(),
            files: HashMap::new(),
        })
    }

    fn subdirs(&mut self, tree: &Csum) -> Option<&SubDirs> {
        let repo = &self.repo;
        self.dirs
            .entry(*tree)
            .or_insert_with(|| repo.subdirs(tree))
            .as_ref()
    }

    fn files(&mut self, tree: &Csum) -> Option<&FileCsums> {
        let repo = &self.repo;
        self.files
            .entry(*tree)
            .or_insert_with(|| repo.files(tree))
            .as_ref()
    }

    /// What the commit has at `rel` (relative to `/usr`); `None` when the repository cannot
    /// say (a missing or unparsable object, a path through a symlink, `..`).
    pub(crate) fn entry(&mut self, rel: &Path) -> Option<UsrEntry> {
        use std::os::unix::ffi::OsStrExt;
        use std::path::Component;
        let names: Vec<&[u8]> = rel
            .components()
            .map(|c| match c {
                Component::Normal(n) => Some(n.as_bytes()),
                Component::CurDir => Some(&b""[..]),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .filter(|n| !n.is_empty())
            .collect();
        let Some((last, parents)) = names.split_last() else {
            return Some(UsrEntry::Dir);
        };
        let mut tree = self.usr.tree;
        for name in parents {
            let sub = self.subdirs(&tree)?.get(*name).map(|d| d.tree);
            match sub {
                Some(d) => tree = d,
                // A file (or symlink) in the way: the path cannot be followed here.
                None if self.files(&tree)?.contains_key(*name) => return None,
                None => return Some(UsrEntry::Absent),
            }
        }
        if let Some(c) = self.files(&tree)?.get(*last) {
            return Some(UsrEntry::File(*c));
        }
        Some(if self.subdirs(&tree)?.contains_key(*last) {
            UsrEntry::Dir
        } else {
            UsrEntry::Absent
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    /// Every file's checksum, as the real `ostree ls -R -C` prints it, is what
    /// [`CommitUsr::entry`] finds for its path, in a checkout laid out as a deployment; two
    /// commits that differ in one library differ in exactly that path.
    #[test]
    fn commit_usr_matches_ostree_ls() {
        use crate::testing::{write_file, OstreeRepo};
        let r = OstreeRepo::new();
        let t = tempfile::tempdir().unwrap();
        let tree = t.path().join("tree");
        let w = |rel: &str, data: &[u8]| write_file(&tree, rel, data);
        w("usr/bin/daemon", b"daemon v1");
        w("usr/lib/x86_64-linux-gnu/libfoo.so.1", b"foo v1");
        w("usr/lib/x86_64-linux-gnu/libbar.so.1", b"bar v1");
        w("usr/share/doc/x/README", b"doc");
        std::os::unix::fs::symlink(
            "libfoo.so.1",
            tree.join("usr/lib/x86_64-linux-gnu/libfoo.so"),
        )
        .unwrap();
        for d in ["etc", "var"] {
            std::fs::create_dir_all(tree.join(d)).unwrap();
        }
        let c1 = r.commit(&tree, "v1");
        w("usr/lib/x86_64-linux-gnu/libfoo.so.1", b"foo v2");
        let c2 = r.commit(&tree, "v2");
        let (d1, d2) = (r.deploy(&c1), r.deploy(&c2));
        let mut u1 = CommitUsr::of_deployment(&d1).unwrap();
        let mut u2 = CommitUsr::of_deployment(&d2).unwrap();
        // `ostree ls -R -C`: "<type><mode> <uid> <gid> <size> <checksum(s)> <path>[ -> target]".
        let ls = r.run(&["ls", "-R", "-C", &c1, "/usr"]);
        let mut files = 0;
        for line in ls.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Directories carry two checksums (dirtree, dirmeta) before the path.
            let kind = &f[0][..1];
            let (sum, path) = (f[4], if kind == "d" { f[6] } else { f[5] });
            let rel = Path::new(path.strip_prefix("/usr").unwrap().trim_start_matches('/'));
            let got = u1.entry(rel);
            match kind {
                "-" | "l" => {
                    files += 1;
                    let hex = match got {
                        Some(UsrEntry::File(c)) => crate::discover::kernel::hex(&c),
                        other => panic!("{path}: {other:?}"),
                    };
                    assert_eq!(hex, sum, "{path}");
                }
                "d" => assert_eq!(got, Some(UsrEntry::Dir), "{path}"),
                _ => panic!("unexpected ls line {line}"),
            }
        }
        assert_eq!(files, 5, "{ls}");
        let changed: Vec<&str> = [
            "bin/daemon",
            "lib/x86_64-linux-gnu/libfoo.so.1",
            "lib/x86_64-linux-gnu/libfoo.so",
            "lib/x86_64-linux-gnu/libbar.so.1",
            "share/doc/x/README",
        ]
        .into_iter()
        .filter(|p| u1.entry(Path::new(p)) != u2.entry(Path::new(p)))
        .collect();
        assert_eq!(changed, ["lib/x86_64-linux-gnu/libfoo.so.1"]);
        assert_eq!(
            u1.entry(Path::new("lib/nothing.so")),
            Some(UsrEntry::Absent)
        );
        assert_eq!(u1.entry(Path::new("nodir/x/y")), Some(UsrEntry::Absent));
        // Through a file or a symlink, or with `..`: the repository cannot say.
        assert_eq!(u1.entry(Path::new("bin/daemon/x")), None);
        assert_eq!(
            u1.entry(Path::new("lib/x86_64-linux-gnu/libfoo.so/x")),
            None
        );
        assert_eq!(u1.entry(Path::new("lib/../bin/daemon")), None);
        // Not a deployment directory, or its commit missing: no index.
        assert!(CommitUsr::of_deployment(&tree).is_none());
        let fake = r
            .dir
            .path()
            .join(format!("ostree/deploy/os/deploy/{}.0", "ab".repeat(32)));
        std::fs::create_dir_all(&fake).unwrap();
        assert!(CommitUsr::of_deployment(&fake).is_none());
    }

    type DirTree = (Vec<(String, Vec<u8>)>, Vec<(String, Vec<u8>, Vec<u8>)>);

    fn encode(t: &DirTree) -> Vec<u8> {
        zvariant::to_bytes(ctxt(), t).unwrap().bytes().to_vec()
    }

    /// The tail-only parse and the whole-object parse agree with zvariant's full decoding at
    /// every framing-offset size (objects under 256 bytes, under 64 KiB, above), and
    /// `Repo::subdirs` and `Repo::dirtree` read the same from a file (in one `pread` of the
    /// tail, or two when the subdirectory array is longer than that); a cut or corrupted object is `None`, never a wrong answer that looks right.
    #[test]
    fn subdirs_match_zvariant_for_every_offset_size() {
        let d = tempfile::tempdir().unwrap();
        let objects = d.path().join("objects");
        std::fs::create_dir_all(&objects).unwrap();
        let repo = Repo::at(objects.clone()).unwrap();
        for (nfiles, ndirs) in [
            (0, 0),
            (0, 1),
            (2, 2),
            (0, 3),
            (40, 5),
            (3000, 7),
            (10, 900),
        ] {
            let t: DirTree = (
                (0..nfiles)
                    .map(|i| (format!("file{i:05}"), vec![i as u8; 32]))
                    .collect(),
                (0..ndirs)
                    .map(|i| (format!("d{i:04}"), vec![i as u8; 32], vec![!(i as u8); 32]))
                    .collect(),
            );
            let bytes = encode(&t);
            let want: SubDirs =
                t.1.iter()
                    .map(|(n, a, b)| {
                        (
                            n.clone().into_bytes(),
                            DirCsums {
                                tree: csum(a).unwrap(),
                                meta: csum(b).unwrap(),
                            },
                        )
                    })
                    .collect();
            assert_eq!(
                parse_subdirs(&bytes),
                Some(want.clone()),
                "{nfiles}/{ndirs}"
            );
            let c: Csum = [nfiles as u8 ^ ndirs as u8; 32];
            let hex = crate::discover::kernel::hex(&c);
            std::fs::create_dir_all(objects.join(&hex[..2])).unwrap();
            std::fs::write(
                objects
                    .join(&hex[..2])
                    .join(format!("{}.dirtree", &hex[2..])),
                &bytes,
            )
            .unwrap();
            assert_eq!(
                repo.subdirs(&c).as_ref(),
                Some(&want),
                "{nfiles}/{ndirs} from a file"
            );
            // The whole object decoded by hand: every file and subdirectory, sorted by name,
            // as zvariant decodes them; read whole below the limit, left open above it.
            let mut all: Vec<(Vec<u8>, Child)> =
                t.0.iter()
                    .map(|(n, c)| (n.clone().into_bytes(), Child::File(csum(c).unwrap())))
                    .chain(want.iter().map(|(n, d)| (n.clone(), Child::Dir(*d))))
                    .collect();
            all.sort_by(|x, y| x.0.cmp(&y.0));
            let whole = parse_dirtree(&bytes).expect("a well-formed dirtree");
            let got: Vec<(Vec<u8>, Child)> = whole
                .entries
                .iter()
                .map(|(n, c)| (n.as_bytes().to_vec(), *c))
                .collect();
            assert_eq!(got, all, "{nfiles}/{ndirs}");
            assert_eq!(whole.subdirs(), want, "{nfiles}/{ndirs}");
            match repo.dirtree(&c, usize::MAX) {
                Some(Ok(d)) => assert_eq!(d, whole, "{nfiles}/{ndirs}"),
                other => panic!("{nfiles}/{ndirs}: {other:?}"),
            }
            if !bytes.is_empty() {
                match repo.dirtree(&c, bytes.len() - 1) {
                    Some(Err(o)) => assert_eq!(o.subdirs().as_ref(), Some(&want)),
                    other => panic!("{nfiles}/{ndirs}: {other:?}"),
                }
            }
            if ndirs > 0 {
                // A cut object never yields a checksum that is not in the object (a missing
                // subdirectory only means it is compared on disk); a checksum of the wrong
                // length is no answer.
                let cut = parse_subdirs(&bytes[..bytes.len() - 1]);
                assert!(
                    cut.as_ref()
                        .is_none_or(|m| m.iter().all(|(k, v)| want.get(k) == Some(v))),
                    "{nfiles}/{ndirs}: {cut:?}"
                );
                let mut short = t.clone();
                short.1[0].1.pop();
                assert_eq!(parse_subdirs(&encode(&short)), None);
                assert_eq!(parse_dirtree(&encode(&short)), None);
                // A name that is both a file and a directory is no answer either.
                let mut twice = t.clone();
                twice.0.push((t.1[0].0.clone(), vec![1; 32]));
                assert_eq!(parse_dirtree(&encode(&twice)), None);
            }
        }
        assert_eq!(parse_subdirs(&[0]), Some(SubDirs::new()));
    }
}
