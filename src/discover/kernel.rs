//! The kernel inside a deployment: `usr/lib/modules/<kver>/{vmlinuz,initramfs.img,devicetree}`,
//! and its boot digest — sha256 over vmlinuz, initramfs, devicetree in that order, which is
//! ostree's `bootcsum` (the checksum in the BLS `linux` path `/ostree/<stateroot>-<bootcsum>/…`).

use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The kernel files of one deployment tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelFiles {
    /// Kernel release, the directory name under `usr/lib/modules`.
    pub version: String,
    pub vmlinuz: PathBuf,
    pub initramfs: Option<PathBuf>,
    pub devicetree: Option<PathBuf>,
    /// Hex sha256 over vmlinuz, initramfs and devicetree contents.
    pub boot_digest: String,
}

/// Find the kernel in a deployment directory. `Ok(None)` when the tree has no
/// `usr/lib/modules/*/vmlinuz`; an error when more than one kernel is present (ostree refuses
/// such trees too) or a file cannot be read.
pub fn find_kernel(deploy_dir: &Path) -> Result<Option<KernelFiles>> {
    let modules = deploy_dir.join("usr/lib/modules");
    let rd = match std::fs::read_dir(&modules) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", modules.display())),
    };
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    for ent in rd {
        let ent = ent.with_context(|| format!("reading {}", modules.display()))?;
        let vmlinuz = ent.path().join("vmlinuz");
        if vmlinuz
            .symlink_metadata()
            .map(|m| m.file_type().is_file())
            .unwrap_or(false)
        {
            found.push((ent.file_name().to_string_lossy().into_owned(), ent.path()));
        }
    }
    found.sort();
    let (version, dir) = match found.len() {
        0 => return Ok(None),
        1 => found.remove(0),
        _ => anyhow::bail!(
            "{} holds more than one kernel ({}); ostree accepts exactly one",
            modules.display(),
            found
                .iter()
                .map(|f| f.0.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let existing = |name: &str| {
        let p = dir.join(name);
        p.symlink_metadata().ok().filter(|m| m.is_file()).map(|_| p)
    };
    let vmlinuz = dir.join("vmlinuz");
    let initramfs = existing("initramfs.img");
    let devicetree = existing("devicetree");
    let mut h = Sha256::new();
    for p in std::iter::once(&vmlinuz)
        .chain(initramfs.iter())
        .chain(devicetree.iter())
    {
        hash_file(&mut h, p)?;
    }
    Ok(Some(KernelFiles {
        version,
        vmlinuz,
        initramfs,
        devicetree,
        boot_digest: hex(&h.finalize()),
    }))
}

fn hash_file(h: &mut Sha256, p: &Path) -> Result<()> {
    let mut f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", p.display()))?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
    }
}

/// Lower-case hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_over_kernel_then_initramfs() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("usr/lib/modules/6.1.0-test");
        std::fs::create_dir_all(&k).unwrap();
        std::fs::write(k.join("vmlinuz"), "kernel\n").unwrap();
        std::fs::write(k.join("initramfs.img"), "initrd\n").unwrap();
        let kf = find_kernel(d.path()).unwrap().unwrap();
        assert_eq!(kf.version, "6.1.0-test");
        // sha256("kernel\ninitrd\n"), the bootcsum ostree 2022.7 wrote for these files
        assert_eq!(
            kf.boot_digest,
            "ff6d610a0f0d84602d9e2878eb3a16a850f2d31faa2f14108006723892a17899"
        );
        std::fs::remove_file(k.join("initramfs.img")).unwrap();
        assert!(find_kernel(d.path()).unwrap().unwrap().initramfs.is_none());
    }

    #[test]
    fn two_kernels_refused_none_is_none() {
        let d = tempfile::tempdir().unwrap();
        assert!(find_kernel(d.path()).unwrap().is_none());
        for v in ["a", "b"] {
            let k = d.path().join("usr/lib/modules").join(v);
            std::fs::create_dir_all(&k).unwrap();
            std::fs::write(k.join("vmlinuz"), v).unwrap();
        }
        assert!(find_kernel(d.path())
            .unwrap_err()
            .to_string()
            .contains("more than one kernel"));
    }
}
