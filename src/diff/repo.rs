//! Read-only access to the commit and dirtree objects of the ostree repository a deployment was
//! checked out from, so the `/usr` walk can skip every subtree whose content checksum is the
//! same in both commits (the way ostree itself knows two trees are equal without looking).
//!
//! Only what the walk needs is read: a commit's root (dirtree and dirmeta checksums) and, per
//! dirtree, its subdirectories' checksums. Anything unexpected (another repo layout, a missing
//! or unparsable object) makes the lookup return `None`, and the walk compares that part of the
//! tree on disk instead — the pruning only ever removes work, never changes the result.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use zvariant::serialized::{Context, Data};
use zvariant::{OwnedValue, LE};

/// A SHA-256 object checksum.
pub type Csum = [u8; 32];

/// A directory's content (dirtree) and metadata (dirmeta) checksums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirCsums {
    pub tree: Csum,
    pub meta: Csum,
}

/// The subdirectories of one dirtree, by name.
pub type SubDirs = HashMap<Vec<u8>, DirCsums>;

// See discover::state: zvariant's GVariant format is deprecated only in favour of a future crate.
#[allow(deprecated)]
fn ctxt() -> Context {
    Context::new_gvariant(LE, 0)
}

fn csum(v: &[u8]) -> Option<Csum> {
    v.try_into().ok()
}

/// An ostree repository (`<sysroot>/ostree/repo`).
#[derive(Debug, Clone)]
pub struct Repo {
    objects: PathBuf,
}

type CommitVariant = (
    HashMap<String, OwnedValue>,
    Vec<u8>,
    Vec<(String, Vec<u8>)>,
    String,
    String,
    u64,
    Vec<u8>,
    Vec<u8>,
);
type DirTreeVariant = (Vec<(String, Vec<u8>)>, Vec<(String, Vec<u8>, Vec<u8>)>);

/// The root (dirtree, dirmeta) of a commit object, `(a{sv}aya(say)sstayay)`.
pub fn parse_commit_root(bytes: &[u8]) -> Option<DirCsums> {
    let (c, used): (CommitVariant, usize) = Data::new(bytes, ctxt()).deserialize().ok()?;
    (used == bytes.len()).then_some(())?;
    Some(DirCsums {
        tree: csum(&c.6)?,
        meta: csum(&c.7)?,
    })
}

/// The subdirectories of a dirtree object, `(a(say)a(sayay))`.
pub fn parse_subdirs(bytes: &[u8]) -> Option<SubDirs> {
    let (t, used): (DirTreeVariant, usize) = Data::new(bytes, ctxt()).deserialize().ok()?;
    (used == bytes.len()).then_some(())?;
    t.1.into_iter()
        .map(|(name, tree, meta)| {
            Some((
                name.into_bytes(),
                DirCsums {
                    tree: csum(&tree)?,
                    meta: csum(&meta)?,
                },
            ))
        })
        .collect()
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
        let objects = ostree.join("repo/objects");
        objects
            .is_dir()
            .then(|| (Repo { objects }, commit.to_owned()))
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
    pub fn commit_root(&self, commit: &str) -> Option<DirCsums> {
        parse_commit_root(&self.read(commit, "commit")?)
    }

    /// The subdirectories of the dirtree `tree`.
    pub fn subdirs(&self, tree: &Csum) -> Option<SubDirs> {
        parse_subdirs(&self.read(&crate::discover::kernel::hex(tree), "dirtree")?)
    }

    /// `/usr` of a commit.
    pub fn usr(&self, commit: &str) -> Option<DirCsums> {
        let root = self.commit_root(commit)?;
        self.subdirs(&root.tree)?.remove(b"usr".as_slice())
    }
}
