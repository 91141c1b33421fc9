//! Composefs images of ostree commits, as the root tests build them: a composefs dumpfile from
//! `ostree ls -R -C` (every non-empty file external, redirected to its object by the ostree
//! checksum, all mtimes 0, as ostree writes its own images), written to EROFS by the upstream
//! Rust composefs library. composefs-rs cannot write ostree's exact redirect
//! (`xx/<62 hex>.file`), so the data-only layer is a hardlink farm `xx/<62 hex>` sharing the
//! inodes of the repository's objects (shared/research/composefs-probe.md).

use super::{ostree, run};
use std::path::Path;

/// A composefs dumpfile (composefs-dump(5)) for `commit`, from `ostree ls -R -C`, as ostree's
/// writer records it (ostree-repo-composefs.c): non-empty regular files external with the
/// object path as payload (here without `.file`), everything else inline, mtimes 0. Links
/// every object into the farm `farm/xx/<62>`.
pub fn dumpfile(repo: &Path, commit: &str, farm: &Path) -> String {
    let ls = run(ostree()
        .arg(format!("--repo={}", repo.display()))
        .args(["ls", "-R", "-C", commit]));
    let mut out = String::new();
    for line in ls.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (kind, mode) = (&f[0][..1], u32::from_str_radix(&f[0][1..], 8).unwrap());
        let (uid, gid, size) = (f[1], f[2], f[3]);
        let entry = match kind {
            "d" => format!("{} 0 {:o} 2 {uid} {gid} 0 0.0 - - -", f[6], 0o40000 | mode),
            "l" => {
                let target = f[7]; // "<path> -> <target>"
                format!(
                    "{} {} {:o} 1 {uid} {gid} 0 0.0 {target} - -",
                    f[5],
                    target.len(),
                    0o120000 | mode
                )
            }
            "-" if size == "0" => {
                format!("{} 0 {:o} 1 {uid} {gid} 0 0.0 - - -", f[5], 0o100000 | mode)
            }
            "-" => {
                let (csum, path) = (f[4], f[5]);
                let loose = format!("{}/{}", &csum[..2], &csum[2..]);
                let link = farm.join(&loose);
                std::fs::create_dir_all(link.parent().unwrap()).unwrap();
                if !link.exists() {
                    std::fs::hard_link(repo.join(format!("objects/{loose}.file")), &link).unwrap();
                }
                format!(
                    "{path} {size} {:o} 1 {uid} {gid} 0 0.0 {loose} - -",
                    0o100000 | mode
                )
            }
            _ => panic!("unexpected `ostree ls` line: {line}"),
        };
        out.push_str(&entry);
        out.push('\n');
    }
    out
}

/// The EROFS image of `dump`, by composefs-rs.
pub fn mkcomposefs(dump: &str) -> Box<[u8]> {
    use composefs::erofs::writer::{mkfs_erofs, ValidatedFileSystem};
    use composefs::fsverity::Sha256HashValue;
    let fs = composefs::dumpfile::dumpfile_to_filesystem::<Sha256HashValue>(dump).unwrap();
    mkfs_erofs(&ValidatedFileSystem::new(fs).unwrap())
}
