//! Reading the guest's raw ext4 disk image from the host without mounting it
//! (debugfs), so the harness can act as the bootloader; building the small
//! read-only "tools" disk (mkfs.ext4 -d).

use std::path::Path;
use std::process::Command;

/// One Boot Loader Specification entry (`/boot/loader/entries/*.conf`).
#[derive(Debug, Clone, Default)]
pub struct BlsEntry {
    pub file: String,
    pub version: u64,
    pub title: String,
    /// Relative to /boot, as written by ostree.
    pub linux: String,
    pub initrd: String,
    pub options: String,
}

fn run(cmd: &mut Command) -> Result<std::process::Output, String> {
    let out = cmd.output().map_err(|e| format!("spawning {cmd:?}: {e}"))?;
    Ok(out)
}

fn debugfs(disk: &Path, request: &str) -> Result<Vec<u8>, String> {
    // -c: catastrophic mode, does not read the bitmaps (their checksums may be
    // stale after an unclean stop even when the journal was replayed).
    let out = run(Command::new("debugfs")
        .arg("-c")
        .arg("-R")
        .arg(request)
        .arg(disk))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // debugfs exits 0 even when the request fails; errors go to stderr.
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.contains("catastrophic mode"))
        .filter(|l| !l.trim().is_empty())
        .collect();
    if !out.status.success() || !errors.is_empty() {
        return Err(format!(
            "debugfs -R {request:?} {}: {}",
            disk.display(),
            errors.join("; ")
        ));
    }
    Ok(out.stdout)
}

/// Replay the ext4 journal: after QEMU exits the newest BLS entry may still be
/// only in the journal, and debugfs does not read the journal.
pub fn replay_journal(disk: &Path) -> Result<(), String> {
    let out = run(Command::new("e2fsck")
        .args(["-E", "journal_only", "-y"])
        .arg(disk))?;
    // 0 = clean, 1 = errors corrected (journal replayed)
    match out.status.code() {
        Some(0 | 1) => Ok(()),
        _ => Err(format!(
            "e2fsck -E journal_only {}: {:?}\n{}{}",
            disk.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

pub fn cat(disk: &Path, path: &str) -> Result<Vec<u8>, String> {
    debugfs(disk, &format!("cat {path}"))
}

pub fn dump(disk: &Path, path: &str, dest: &Path) -> Result<(), String> {
    let _ = std::fs::remove_file(dest);
    debugfs(disk, &format!("dump {path} {}", dest.display()))?;
    match std::fs::metadata(dest) {
        Ok(m) if m.len() > 0 => Ok(()),
        _ => Err(format!(
            "debugfs dump {path} from {} produced no data",
            disk.display()
        )),
    }
}

/// Names in a directory of the image (`ls -p` format: `/ino/mode/uid/gid/name/size/`).
pub fn list_dir(disk: &Path, dir: &str) -> Result<Vec<String>, String> {
    let out = debugfs(disk, &format!("ls -p {dir}"))?;
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.split('/').nth(5).map(str::to_string))
        .filter(|n| !n.is_empty() && n != "." && n != "..")
        .collect())
}

pub fn parse_bls(file: &str, text: &str) -> BlsEntry {
    let mut e = BlsEntry {
        file: file.to_string(),
        ..Default::default()
    };
    for line in text.lines() {
        let (k, v) = line.split_once(' ').unwrap_or((line, ""));
        let v = v.trim().to_string();
        match k {
            "version" => e.version = v.parse().unwrap_or(0),
            "title" => e.title = v,
            "linux" => e.linux = v,
            "initrd" => e.initrd = v,
            "options" => e.options = v,
            _ => {}
        }
    }
    e
}

/// All BLS entries of the image, highest `version` (= ostree's default) first.
pub fn bls_entries(disk: &Path) -> Result<Vec<BlsEntry>, String> {
    bls_entries_in(disk, "/boot/loader/entries")
}

/// All BLS entries in `dir` of an ext4 image (for a partition of a disk
/// image: `disk.img?offset=<bytes>`), highest `version` first.
pub fn bls_entries_in(disk: &Path, dir: &str) -> Result<Vec<BlsEntry>, String> {
    let mut entries = Vec::new();
    for name in list_dir(disk, dir)? {
        if !name.ends_with(".conf") {
            continue;
        }
        let text = cat(disk, &format!("{dir}/{name}"))?;
        entries.push(parse_bls(&name, &String::from_utf8_lossy(&text)));
    }
    entries.sort_by_key(|e| std::cmp::Reverse(e.version));
    if entries.is_empty() {
        return Err(format!("no BLS entries in {}:{dir}", disk.display()));
    }
    Ok(entries)
}

/// Pack `dir` into a new ext4 image of exactly `size_mib` MiB (sparse).
pub fn make_ext4(dir: &Path, image: &Path, label: &str, size_mib: u64) -> Result<(), String> {
    let used = walk_size(dir);
    if used + used / 8 + (16 << 20) > size_mib << 20 {
        return Err(format!(
            "{} ({} MiB) does not fit in a {size_mib} MiB disk",
            dir.display(),
            used >> 20
        ));
    }
    let _ = std::fs::remove_file(image);
    let out = run(Command::new("mkfs.ext4")
        .args(["-q", "-L", label, "-d"])
        .arg(dir)
        .arg(image)
        .arg(format!("{size_mib}M")))?;
    if !out.status.success() {
        return Err(format!(
            "mkfs.ext4 -d {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn walk_size(p: &Path) -> u64 {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| walk_size(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bls_parse() {
        let e = parse_bls(
            "ostree-1-debian.conf",
            "title Debian GNU/Linux 12 (bookworm) (ostree:debian:0)\nversion 1\noptions root=/dev/vda rw ostree=/ostree/boot.1/debian/abc/0\nlinux /ostree/debian-abc/vmlinuz-6.1.0-1-cloud-amd64\ninitrd /ostree/debian-abc/initramfs-6.1.0-1-cloud-amd64.img\n",
        );
        assert_eq!(e.version, 1);
        assert_eq!(e.linux, "/ostree/debian-abc/vmlinuz-6.1.0-1-cloud-amd64");
        assert_eq!(
            e.options,
            "root=/dev/vda rw ostree=/ostree/boot.1/debian/abc/0"
        );
    }
}
