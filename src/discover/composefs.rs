//! Is the running root composefs, and with which guarantees?
//!
//! On a composefs host (Fedora CoreOS ≥ 41, bootc images, RHEL 10 image mode) ostree-prepare-root
//! mounts `/` as a read-only overlayfs: the deployment's EROFS metadata image `.ostree.cfs` as
//! the lower layer and `<sysroot>/ostree/repo/objects` as a data-only lower layer
//! (`otcore_mount_rootfs` in ostree's `src/libotcore/otcore-prepare-root.c`). `/usr` is not a
//! mount of its own. The mount may require fs-verity (`verity=require`), and with a signed
//! commit the image's digest is checked against the signed one.
//!
//! Two sources say so, and both are read: the keys ostree-prepare-root writes to
//! `/run/ostree-booted` (`composefs`, `composefs.verity`, `composefs.signed`; see
//! [`super::state`]), and the mount table (the root is an overlay named `composefs`, or one with
//! `metacopy=on` and a data-only layer). Either one is enough to call the root composefs; a
//! `verity=require` in the mount options counts as verity even when the file does not say it.
//! Everything here is pure; [`root_mount_id`] is the one syscall.

use super::BootedState;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The mount at the running root, from one line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootMount {
    pub(crate) mount_id: u64,
    pub fs_type: String,
    /// The mount source (`composefs`, `composefs:<name>`, `/dev/vda3`, …).
    pub source: String,
    /// The filesystem's options (after the ` - ` separator), e.g. `ro,lowerdir+=…,metacopy=on`.
    pub super_options: Vec<String>,
}

impl RootMount {
    fn has(&self, opt: &str) -> bool {
        self.super_options.iter().any(|o| o == opt)
    }

    /// An overlay the way composefs mounts one: named `composefs` (libcomposefs and
    /// composefs-rs both use that source), or with `metacopy=on` and a data-only lower layer
    /// (`datadir+=…`, or the older `lowerdir=<erofs>::<objects>` syntax).
    pub fn looks_composefs(&self) -> bool {
        if self.fs_type != "overlay" {
            return false;
        }
        let named = self.source == "composefs" || self.source.starts_with("composefs:");
        let data_only = self.super_options.iter().any(|o| {
            o.starts_with("datadir+=") || (o.starts_with("lowerdir=") && o.contains("::"))
        });
        named || (self.has("metacopy=on") && data_only)
    }

    /// The data-only layer the overlay's redirects resolve in: `datadir+=<dir>` (Linux ≥ 6.7),
    /// or what follows `::` in the older `lowerdir=<erofs>::<dir>`. On a composefs host this is
    /// `/sysroot/ostree/repo/objects`, a path that holds in the initramfs and after it (the
    /// physical root is at `/sysroot` in both), so a target deployment's image mounts with it.
    pub fn data_dir(&self) -> Option<std::path::PathBuf> {
        self.super_options.iter().find_map(|o| {
            o.strip_prefix("datadir+=")
                .or_else(|| {
                    o.strip_prefix("lowerdir=")
                        .and_then(|l| l.split_once("::"))
                        .map(|(_, d)| d.split(':').next().unwrap_or(d))
                })
                .filter(|d| !d.is_empty())
                .map(std::path::PathBuf::from)
        })
    }

    /// The overlay checks every file's fs-verity digest (`verity=require`).
    pub fn requires_verity(&self) -> bool {
        self.fs_type == "overlay" && self.has("verity=require")
    }
}

/// Undo mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`); anything
/// else (including `\400` and above, which is no byte) stays as it is.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0')))
            .and_then(|v| u8::try_from(v).ok());
        match octal {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Pure: the mount with id `mount_id` in `/proc/self/mountinfo` text.
pub fn parse_mount(mountinfo: &str, mount_id: u64) -> Option<RootMount> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let id: u64 = pre.split(' ').next()?.parse().ok()?;
        if id != mount_id {
            return None;
        }
        let mut f = post.split(' ');
        let fs_type = unescape(f.next()?);
        let source = unescape(f.next()?);
        let super_options = f
            .next()
            .unwrap_or("")
            .split(',')
            .filter(|o| !o.is_empty())
            .map(unescape)
            .collect();
        Some(RootMount {
            mount_id,
            fs_type,
            source,
            super_options,
        })
    })
}

/// The id of the mount `path` is on (`statx` `STATX_MNT_ID`), as mountinfo numbers it.
pub fn root_mount_id(path: &Path) -> std::io::Result<u64> {
    use rustix::fs::{statx, AtFlags, StatxFlags, CWD};
    let st = statx(CWD, path, AtFlags::empty(), StatxFlags::MNT_ID)?;
    Ok(st.stx_mnt_id)
}

/// What composefs guarantees about the running root, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ComposefsMode {
    /// Not composefs: `/` is a bind mount of the deployment's checkout.
    Off,
    /// composefs without fs-verity: the image describes the tree, the objects are not checked.
    Unverified,
    /// fs-verity required: every file's content is checked against the image's digests.
    Verity,
    /// fs-verity required and the image's digest checked against a signed commit.
    Signed,
}

impl ComposefsMode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ComposefsMode::Off => "off",
            ComposefsMode::Unverified => "unverified",
            ComposefsMode::Verity => "verity",
            ComposefsMode::Signed => "signed",
        }
    }
}

/// The composefs state of the running root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Composefs {
    pub(crate) mode: ComposefsMode,
    /// `/run/ostree-booted` has `composefs` true.
    pub(crate) booted_file: bool,
    /// The mount table shows a composefs overlay at the root.
    pub(crate) mount_table: bool,
    /// fs-verity is required (`composefs.verity`, or `verity=require` on the root overlay).
    pub(crate) verity: bool,
    /// The key file that verified the signed commit (`composefs.signed`).
    pub signed: Option<String>,
    /// The root overlay's data-only layer ([`RootMount::data_dir`]), where a target
    /// deployment's image finds its files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) objects: Option<std::path::PathBuf>,
}

impl Composefs {
    #[cfg(test)]
    pub(crate) fn enabled(&self) -> bool {
        self.mode != ComposefsMode::Off
    }

    /// One line for `status`.
    pub(crate) fn describe(&self) -> String {
        let mut s = format!("composefs: {}", self.mode.name());
        match self.mode {
            ComposefsMode::Off => return s,
            ComposefsMode::Unverified => s.push_str(" (no fs-verity)"),
            ComposefsMode::Verity => s.push_str(" (fs-verity required)"),
            ComposefsMode::Signed => s.push_str(&format!(
                " (fs-verity required, commit signature checked with {})",
                self.signed.as_deref().unwrap_or("?")
            )),
        }
        let from: Vec<&str> = [
            (self.booted_file, "/run/ostree-booted"),
            (self.mount_table, "the mount table"),
        ]
        .iter()
        .filter(|(b, _)| *b)
        .map(|(_, n)| *n)
        .collect();
        s.push_str(&format!("; from {}", from.join(" and ")));
        s
    }
}

/// Pure: the composefs state from `/run/ostree-booted` (with the root mount discover found).
pub(crate) fn composefs(bs: &BootedState) -> Composefs {
    let mount_table = bs
        .root_mount
        .as_ref()
        .is_some_and(RootMount::looks_composefs);
    let mount_verity = bs
        .root_mount
        .as_ref()
        .is_some_and(RootMount::requires_verity);
    let enabled = bs.composefs || mount_table;
    // A signature is only ever checked together with verity (ostree asserts require_verity).
    let signed = if enabled {
        bs.composefs_signed.clone()
    } else {
        None
    };
    let verity = enabled && (bs.composefs_verity || mount_verity || signed.is_some());
    let mode = match (enabled, verity, signed.is_some()) {
        (false, _, _) => ComposefsMode::Off,
        (true, _, true) => ComposefsMode::Signed,
        (true, true, false) => ComposefsMode::Verity,
        (true, false, false) => ComposefsMode::Unverified,
    };
    Composefs {
        mode,
        booted_file: bs.composefs,
        mount_table,
        verity,
        signed,
        objects: bs
            .root_mount
            .as_ref()
            .filter(|m| m.looks_composefs())
            .and_then(RootMount::data_dir),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::state::{encode, parse_booted};

    /// Lines as real hosts show them: Fedora CoreOS 41 (libcomposefs through ostree-prepare-root,
    /// kernel ≥ 6.7 syntax), an older kernel's `::` data-only syntax, the composefs-rs probe on
    /// this build host, a plain ostree host (root bind of the checkout), and a container overlay.
    const MOUNTINFO: &str = "\
25 1 0:23 / / ro,relatime shared:1 - overlay composefs ro,seclabel,lowerdir+=/run/ostree/.private/cfsroot-lower,datadir+=/sysroot/ostree/repo/objects,redirect_dir=on,metacopy=on,verity=require
26 1 0:24 / / ro,relatime shared:1 - overlay composefs ro,lowerdir=/run/ostree/.private/cfsroot-lower::/sysroot/ostree/repo/objects,redirect_dir=on,metacopy=on
27 1 0:40 / /var/tmp/cfsprobe/mnt/native ro,relatime - overlay composefs:probe ro,relatime,lowerdir+=/,datadir+=/var/tmp/cfsprobe/native-objs,redirect_dir=on,metacopy=on
28 1 254:3 /ostree/deploy/debian/deploy/3b1c.0 / rw,relatime shared:1 - ext4 /dev/vda3 rw
29 1 0:50 / /var/lib/containers/x rw - overlay overlay rw,lowerdir=/l1:/l2,upperdir=/u,workdir=/w,metacopy=on
30 1 0:51 / /with\\040space ro - overlay composefs ro,lowerdir+=/a\\040b,datadir+=/o,metacopy=on
";

    #[test]
    fn mount_lines() {
        let fcos = parse_mount(MOUNTINFO, 25).unwrap();
        assert_eq!(fcos.fs_type, "overlay");
        assert_eq!(fcos.source, "composefs");
        assert!(fcos.looks_composefs() && fcos.requires_verity());
        let old = parse_mount(MOUNTINFO, 26).unwrap();
        assert!(old.looks_composefs() && !old.requires_verity());
        let probe = parse_mount(MOUNTINFO, 27).unwrap();
        assert!(probe.looks_composefs() && !probe.requires_verity());
        let plain = parse_mount(MOUNTINFO, 28).unwrap();
        assert_eq!(
            (plain.fs_type.as_str(), plain.source.as_str()),
            ("ext4", "/dev/vda3")
        );
        assert!(!plain.looks_composefs());
        // metacopy without a data-only layer is an ordinary (container) overlay.
        assert!(!parse_mount(MOUNTINFO, 29).unwrap().looks_composefs());
        let esc = parse_mount(MOUNTINFO, 30).unwrap();
        assert!(esc.super_options.contains(&"lowerdir+=/a b".to_owned()));
        assert_eq!(unescape("a\\134b\\777c\\04"), "a\\b\\777c\\04");
        assert_eq!(
            fcos.data_dir().unwrap(),
            Path::new("/sysroot/ostree/repo/objects")
        );
        assert_eq!(
            old.data_dir().unwrap(),
            Path::new("/sysroot/ostree/repo/objects")
        );
        assert_eq!(esc.data_dir().unwrap(), Path::new("/o"));
        assert_eq!(plain.data_dir(), None);
        assert_eq!(parse_mount(MOUNTINFO, 29).unwrap().data_dir(), None);
        assert_eq!(parse_mount(MOUNTINFO, 99), None);
        assert_eq!(parse_mount("garbage\n", 1), None);
    }

    fn with_mount(bytes: &[u8], id: Option<u64>) -> BootedState {
        let mut bs = parse_booted(bytes).unwrap();
        bs.root_mount = id.and_then(|i| parse_mount(MOUNTINFO, i));
        bs
    }

    #[test]
    fn modes() {
        let key = "/etc/ostree/initramfs-root-binding.key";
        // (file, root mount id, mode, from the file, from the mount table)
        type Case = (Vec<u8>, Option<u64>, ComposefsMode, bool, bool);
        let cases: [Case; 8] = [
            // ostree's file, matching mount.
            (
                encode::booted_composefs(1, 2, true, Some(key)),
                Some(25),
                ComposefsMode::Signed,
                true,
                true,
            ),
            (
                encode::booted_composefs(1, 2, true, None),
                Some(25),
                ComposefsMode::Verity,
                true,
                true,
            ),
            (
                encode::booted_composefs(1, 2, false, None),
                Some(26),
                ComposefsMode::Unverified,
                true,
                true,
            ),
            // The file alone (--root elsewhere, or the mount not found).
            (
                encode::booted_composefs(1, 2, false, None),
                None,
                ComposefsMode::Unverified,
                true,
                false,
            ),
            // An ostree without the keys (older, or the file was rewritten): the mount table
            // alone, and its verity=require counts.
            (
                encode::booted(1, 2),
                Some(25),
                ComposefsMode::Verity,
                false,
                true,
            ),
            (
                b"".to_vec(),
                Some(26),
                ComposefsMode::Unverified,
                false,
                true,
            ),
            // A plain host.
            (
                encode::booted(1, 2),
                Some(28),
                ComposefsMode::Off,
                false,
                false,
            ),
            (b"".to_vec(), None, ComposefsMode::Off, false, false),
        ];
        for (i, (bytes, id, mode, file, table)) in cases.into_iter().enumerate() {
            let c = composefs(&with_mount(&bytes, id));
            assert_eq!(
                (c.mode, c.booted_file, c.mount_table),
                (mode, file, table),
                "case {i}: {c:?}"
            );
            assert_eq!(c.enabled(), mode != ComposefsMode::Off, "case {i}");
            assert_eq!(c.verity, mode >= ComposefsMode::Verity, "case {i}");
        }
        let c = composefs(&with_mount(
            &encode::booted_composefs(1, 2, true, Some(key)),
            Some(25),
        ));
        assert_eq!(c.signed.as_deref(), Some(key));
        let d = c.describe();
        assert!(
            d.contains("signed")
                && d.contains(key)
                && d.contains("/run/ostree-booted and the mount table"),
            "{d}"
        );
        assert_eq!(
            composefs(&BootedState::default()).describe(),
            "composefs: off"
        );
    }

    #[test]
    fn this_hosts_root_has_a_mount_line() {
        let id = root_mount_id(Path::new("/")).unwrap();
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let m = parse_mount(&text, id).expect("the root's mount id is in mountinfo");
        assert!(!m.fs_type.is_empty());
    }
}
