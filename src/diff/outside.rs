//! Content of a deployment outside `/usr`: every top-level entry of the deployment root except
//! the ones ostree, systemd or the kernel provide at run time (`etc`, `var`, `boot`, `sysroot`,
//! `run`, `proc`, `sys`, `dev`, `tmp`) and `usr` itself (diffed in [`super::usr`]). bootc images
//! can carry real directories there (`/opt`, `/usr/local` built as `opt-usrlocal: root`), and
//! the top-level compatibility symlinks (`bin → usr/bin`, `home → var/home`, …) live there too.
//!
//! A live apply swaps only `/usr`, so a change here must never be silently ignored: the decision
//! takes a higher rung and names the paths.
//!
//! When both commits are in the deployment's repository, the commits' root dirtrees say exactly
//! which top-level entries differ (file and dirtree/dirmeta checksums), without reading a file.
//! Otherwise the two directories are compared on disk (type, mode, owner, size, content,
//! symlink target), entry by entry.

use super::repo::{Csum, Repo};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Top-level names that are not part of the image's content as a live apply sees it.
pub(crate) const NOT_CONTENT: [&str; 10] = [
    "usr", "etc", "var", "boot", "sysroot", "run", "proc", "sys", "dev", "tmp",
];

/// One top-level entry that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutsideChange {
    /// `/opt`, `/bin`, …
    pub path: String,
    pub change: super::usr::Change,
}

/// What a top-level entry is, for comparison: a file object checksum, or a directory's
/// (dirtree, dirmeta).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    File(Csum),
    Dir(Csum, Csum),
}

type DirTree = (Vec<(String, Vec<u8>)>, Vec<(String, Vec<u8>, Vec<u8>)>);

// See discover::state: zvariant's GVariant format is deprecated only in favour of a future crate.
#[allow(deprecated)]
fn root_entries(repo: &Repo, commit: &str) -> Option<BTreeMap<String, Entry>> {
    use zvariant::serialized::{Context, Data};
    let root = repo.commit_root(commit)?;
    let bytes = repo.read_object(&crate::discover::kernel::hex(&root.tree), "dirtree")?;
    let (t, used): (DirTree, usize) = Data::new(&bytes[..], Context::new_gvariant(zvariant::LE, 0))
        .deserialize()
        .ok()?;
    (used == bytes.len()).then_some(())?;
    let mut out = BTreeMap::new();
    for (name, c) in t.0 {
        out.insert(name, Entry::File(c.as_slice().try_into().ok()?));
    }
    for (name, tree, meta) in t.1 {
        out.insert(
            name,
            Entry::Dir(
                tree.as_slice().try_into().ok()?,
                meta.as_slice().try_into().ok()?,
            ),
        );
    }
    Some(out)
}

/// Pure: the changed names between two top-level listings (content names only).
fn compare<T: PartialEq>(
    a: &BTreeMap<String, T>,
    b: &BTreeMap<String, T>,
    mut same: impl FnMut(&str, &T, &T) -> Result<bool>,
) -> Result<Vec<OutsideChange>> {
    use super::usr::Change;
    let mut out = Vec::new();
    let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for name in names {
        if NOT_CONTENT.contains(&name.as_str()) {
            continue;
        }
        let change = match (a.get(name), b.get(name)) {
            (Some(x), Some(y)) => {
                if same(name, x, y)? {
                    continue;
                }
                Change::Modified
            }
            (None, Some(_)) => Change::Added,
            (Some(_), None) => Change::Removed,
            (None, None) => continue,
        };
        out.push(OutsideChange {
            path: format!("/{name}"),
            change,
        });
    }
    Ok(out)
}

/// The top-level entries outside `/usr` that differ between two deployment directories.
pub(crate) fn diff_outside_usr(from_deploy: &Path, to_deploy: &Path) -> Result<Vec<OutsideChange>> {
    if let (Some((repo, ca)), Some((_, cb))) = (
        Repo::of_deployment(from_deploy),
        Repo::of_deployment(to_deploy),
    ) {
        if let (Some(a), Some(b)) = (root_entries(&repo, &ca), root_entries(&repo, &cb)) {
            return compare(&a, &b, |_, x, y| Ok(x == y));
        }
    }
    let list = |d: &Path| -> Result<BTreeMap<String, ()>> {
        let mut m = BTreeMap::new();
        for e in std::fs::read_dir(d).with_context(|| format!("reading {}", d.display()))? {
            let e = e.with_context(|| format!("reading {}", d.display()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            // ostree's composefs image sits next to the checkout's content; it is not content.
            if name != ".ostree.cfs" {
                m.insert(name, ());
            }
        }
        Ok(m)
    };
    let (a, b) = (list(from_deploy)?, list(to_deploy)?);
    compare(&a, &b, |name, _, _| {
        same_on_disk(&from_deploy.join(name), &to_deploy.join(name))
    })
}

/// Two paths on disk have the same type, mode, owner, symlink target, content and (for
/// directories) the same entries, recursively.
fn same_on_disk(a: &Path, b: &Path) -> Result<bool> {
    let ma = std::fs::symlink_metadata(a).with_context(|| format!("stat {}", a.display()))?;
    let mb = std::fs::symlink_metadata(b).with_context(|| format!("stat {}", b.display()))?;
    if (ma.dev(), ma.ino()) == (mb.dev(), mb.ino()) {
        return Ok(true);
    }
    if (ma.mode(), ma.uid(), ma.gid()) != (mb.mode(), mb.uid(), mb.gid()) {
        return Ok(false);
    }
    let ft = ma.file_type();
    if ft.is_symlink() {
        return Ok(std::fs::read_link(a)? == std::fs::read_link(b)?);
    }
    if ft.is_file() {
        if ma.len() != mb.len() {
            return Ok(false);
        }
        let read = |p: &Path| {
            crate::system::files::read(p, crate::system::files::Follow::No)
                .with_context(|| format!("reading {}", p.display()))
        };
        return Ok(read(a)? == read(b)?);
    }
    if ft.is_dir() {
        let names = |d: &Path| -> Result<std::collections::BTreeSet<std::ffi::OsString>> {
            std::fs::read_dir(d)
                .with_context(|| format!("reading {}", d.display()))?
                .map(|e| Ok(e?.file_name()))
                .collect::<std::io::Result<_>>()
                .with_context(|| format!("reading {}", d.display()))
        };
        let (na, nb) = (names(a)?, names(b)?);
        if na != nb {
            return Ok(false);
        }
        for n in &na {
            if !same_on_disk(&a.join(n), &b.join(n))? {
                return Ok(false);
            }
        }
        return Ok(true);
    }
    // Devices, FIFOs, sockets: equal type and mode; compare the device number.
    Ok(ma.rdev() == mb.rdev())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_dirs_are_not_content_and_changes_are_named() {
        let mut a = BTreeMap::new();
        let mut b = BTreeMap::new();
        for n in ["etc", "var", "boot", "sysroot", "tmp", "usr"] {
            a.insert(n.to_owned(), 1);
            b.insert(n.to_owned(), 2);
        }
        a.insert("opt".into(), 1);
        b.insert("opt".into(), 2);
        a.insert("bin".into(), 7);
        b.insert("bin".into(), 7);
        b.insert("srv".into(), 1);
        a.insert("media".into(), 1);
        let c = compare(&a, &b, |_, x, y| Ok(x == y)).unwrap();
        let got: Vec<(String, super::super::usr::Change)> =
            c.into_iter().map(|x| (x.path, x.change)).collect();
        use super::super::usr::Change::*;
        assert_eq!(
            got,
            [
                ("/media".to_owned(), Removed),
                ("/opt".to_owned(), Modified),
                ("/srv".to_owned(), Added)
            ]
        );
    }

    #[test]
    fn on_disk_comparison_recurses() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        for r in [&a, &b] {
            std::fs::create_dir_all(r.join("opt/app")).unwrap();
            std::fs::write(r.join("opt/app/x"), "1").unwrap();
            std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
            std::fs::create_dir_all(r.join("usr")).unwrap();
        }
        assert!(diff_outside_usr(&a, &b).unwrap().is_empty());
        std::fs::write(b.join("opt/app/x"), "2").unwrap();
        std::fs::write(b.join("usr/changed"), "ignored: /usr has its own diff").unwrap();
        let c = diff_outside_usr(&a, &b).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].path, "/opt");
    }
}
