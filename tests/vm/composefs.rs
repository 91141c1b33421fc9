//! The composefs-booted Debian 13 guest, derived at test time from the cached debian13 image so
//! that nothing under `vm/` changes (see vm/NOTES.md, "composefs guest").
//!
//! Conversion (once per base image and per this file's content, cached as
//! `<image>/composefs-<key>/`, which then gets its own saved guest):
//! 1. The initrd gets a systemd unit that runs after `ostree-prepare-root.service` and, when the
//!    deployment has an `.ostree.cfs`, mounts `/` as ostree-prepare-root does with composefs:
//!    EROFS image at `/run/ostree/.private/cfsroot-lower` (detached again), a read-only overlay
//!    with source `composefs`, `lowerdir+=` that image, `datadir+=/sysroot/ostree/repo/objects-cfs`,
//!    `metacopy=on`, `redirect_dir=on`; `/etc` a bind of the deployment's `etc`, `/sysroot` the
//!    physical root. The unit reaches the initrd as an extra cpio appended to the tree's
//!    initramfs, in a new commit (`test/cfs`) of the booted tree, and likewise `test/cfs-<name>`
//!    of each scenario target `test/<name>` ([`TARGETS`]), so all share one boot checksum.
//! 2. `test/cfs` is deployed; its deployment gets an `.ostree.cfs` built in the guest by
//!    [`guest_build_image`] (this test binary, run in the guest), made the way ostree makes it:
//!    every non-empty file external, redirected to its object by the ostree checksum, mtimes 0,
//!    xattrs kept, an empty `/etc` (the deployment's is bound over it). composefs-rs writes the
//!    redirect as `/xx/<62 hex>` (no `.file`), so the data-only layer is a hardlink farm
//!    `repo/objects-cfs/xx/<62 hex>` sharing the inodes of `repo/objects/xx/<62 hex>.file`.
//! 3. The guest powers off; its disk becomes the derived image.

use super::{Guest, Image, Vm, VmOptions, TOOLS_DIR};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Set (to the deployment directory) when this test binary runs in the guest as the image builder.
pub const BUILD_ENV: &str = "FASTSWITCH_CFS_BUILD";
/// The data-only layer of the guest's composefs root (the hardlink farm), as the root overlay's
/// `datadir+=` names it: valid in the initrd (through the tree's `ostree -> sysroot/ostree`) and
/// after switch-root (the physical root is `/sysroot`).
pub const DATADIR: &str = "/sysroot/ostree/repo/objects-cfs";
/// The refs the conversion commits, each with the unit: the booted tree, and the scenario's
/// targets made from the debian13 image's `test/hello-v2` (S2: the demo-hello ELF changed),
/// `test/layered` (S1: a layered package with an enabled service) and `test/lib-v2` (S4:
/// `libdemo.so` changed).
pub const BASE_REF: &str = "test/cfs";
pub const HELLO_V2_REF: &str = "test/cfs-hello-v2";
pub const LAYERED_REF: &str = "test/cfs-layered";
pub const LIB_V2_REF: &str = "test/cfs-lib-v2";
/// `(composefs ref, the debian13 ref it is made from)`.
pub const TARGETS: [(&str, &str); 3] = [
    (HELLO_V2_REF, "test/hello-v2"),
    (LAYERED_REF, "test/layered"),
    (LIB_V2_REF, "test/lib-v2"),
];

const UNIT: &str = "ostree-composefs-root.service";
const UNIT_TEXT: &str = "\
[Unit]
Description=Mount the deployment's composefs image as the root, as ostree-prepare-root does with composefs
DefaultDependencies=no
ConditionKernelCommandLine=ostree
ConditionPathExists=/etc/initrd-release
After=ostree-prepare-root.service
Requires=ostree-prepare-root.service
Before=initrd-root-fs.target
OnFailure=emergency.target
OnFailureJobMode=isolate

[Service]
Type=oneshot
ExecStart=/usr/lib/ostree/ostree-composefs-root
StandardInput=null
StandardOutput=journal+console
StandardError=journal+console
RemainAfterExit=yes
";

/// Runs in the initrd (dash, util-linux) after ostree-prepare-root, which has bound the
/// deployment's checkout at /sysroot, the physical root at /sysroot/sysroot and a read-only
/// /sysroot/usr. /var is mounted after switch-root by ostree's generator, as before.
const SCRIPT: &str = r#"#!/bin/sh
set -eu
for a in $(cat /proc/cmdline); do case $a in ostree=*) karg=${a#ostree=};; esac; done
deploy=$(readlink -f "/sysroot/sysroot$karg")
image=$deploy/.ostree.cfs
if [ ! -f "$image" ]; then
    echo "ostree-composefs-root: no $image, the root stays the checkout"
    exit 0
fi
modprobe -q erofs || true
modprobe -q overlay || true
lower=/run/ostree/.private/cfsroot-lower
new=/sysroot.cfs
mkdir -p "$lower" "$new"
mount --make-rprivate /
mount -t erofs -o ro "$image" "$lower"
mount -t overlay composefs -o ro,metacopy=on,redirect_dir=on,lowerdir+="$lower",datadir+=/sysroot/ostree/repo/objects-cfs "$new"
umount -l "$lower"
mount --bind /sysroot/etc "$new/etc"
mount --move /sysroot/sysroot "$new/sysroot"
umount -R /sysroot
mount --move "$new" /sysroot
echo "ostree-composefs-root: / is the composefs image $image"
"#;

/// Everything the derived image depends on besides the base image.
fn key() -> String {
    let mut h = Sha256::new();
    h.update(include_str!("composefs.rs"));
    h.update(b"composefs-rs 0.9.4");
    h.iter_hex(8)
}

trait Hex {
    fn iter_hex(self, n: usize) -> String;
}
impl Hex for Sha256 {
    fn iter_hex(self, n: usize) -> String {
        self.finalize()
            .iter()
            .take(n)
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The composefs guest derived from `base` (debian13), converting it first if needed.
pub fn image(base: &Image) -> Image {
    assert_eq!(
        base.guest,
        Guest::Debian13,
        "the composefs guest is debian13"
    );
    let dir = base.dir.join(format!("composefs-{}", key()));
    if !dir.join("image.json").exists() {
        convert(base, &dir);
    }
    // Mark it used, and drop the derived guests of other keys not used for an hour.
    let _ = fs::File::options()
        .append(true)
        .open(dir.join("image.json"))
        .and_then(|f| f.set_modified(std::time::SystemTime::now()));
    prune(base, &dir);
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("image.json")).expect("image.json"))
            .expect("image.json");
    Image {
        guest: base.guest,
        disk: dir.join("disk.img"),
        dir,
        manifest,
    }
}

/// Remove `composefs-*` guests of `base` other than `keep` (about 1.3 GB each with their saved
/// guest) unused for an hour, as `vm/build-image.sh` prunes old images.
fn prune(base: &Image, keep: &Path) {
    for e in fs::read_dir(&base.dir).into_iter().flatten().flatten() {
        let p = e.path();
        if !e.file_name().to_string_lossy().starts_with("composefs-") || p == keep {
            continue;
        }
        let used = fs::metadata(p.join("image.json"))
            .or_else(|_| e.metadata())
            .and_then(|m| m.modified());
        if used
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > 3600)
        {
            eprintln!("[vm composefs] removing the unused {}", p.display());
            let _ = fs::remove_dir_all(&p);
        }
    }
}

/// The extra initrd cpio (newc, made by the host's cpio) with the unit and its script.
fn initrd_cpio(work: &Path) -> PathBuf {
    let root = work.join("cpio");
    let put = |rel: &str, text: &str, mode: u32| {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&p)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    };
    put(&format!("usr/lib/systemd/system/{UNIT}"), UNIT_TEXT, 0o644);
    put("usr/lib/ostree/ostree-composefs-root", SCRIPT, 0o755);
    let wants = root.join("etc/systemd/system/initrd-root-fs.target.wants");
    fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(format!("/usr/lib/systemd/system/{UNIT}"), wants.join(UNIT))
        .unwrap();
    let out = work.join("composefs-root.cpio");
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . ! -type d | sort | cpio -o -H newc --owner=0:0 --quiet > '{}'",
            root.display(),
            out.display()
        ))
        .status()
        .expect("running cpio");
    assert!(st.success(), "cpio of the initrd unit failed");
    out
}

fn convert(base: &Image, dir: &Path) {
    let t0 = Instant::now();
    let tmp = dir.with_extension(format!("tmp.{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).unwrap();
    let cpio = initrd_cpio(&tmp);
    let opts = VmOptions::new("cfs-convert")
        .tool(std::env::current_exe().unwrap(), "cfs-build")
        .tool(&cpio, "composefs-root.cpio");
    let mut vm = Vm::boot_with(base, opts);
    let kver = base.kernel_version();
    let os = base.os();
    let booted = base.booted_checksum();
    let targets: String = TARGETS
        .iter()
        .map(|(cfs, from)| {
            format!("ostree commit -b {cfs} --tree=ref={from} --tree=dir=$o >/dev/null\n")
        })
        .collect();
    let t = Instant::now();
    vm.exec_ok(&format!(
        "set -e
o=/var/tmp/cfs-overlay; rm -rf $o; mkdir -p $o/usr/lib/modules/{kver}
i=$o/usr/lib/modules/{kver}/initramfs.img
cp /usr/lib/modules/{kver}/initramfs.img $i
truncate -s %512 $i
cat {TOOLS_DIR}/composefs-root.cpio >> $i
ostree commit -b {BASE_REF} --tree=ref={booted} --tree=dir=$o >/dev/null
{targets}rm -rf $o
ostree admin deploy --os={os} {BASE_REF}"
    ));
    let deployed = super::ostree_status(&vm);
    let new = deployed
        .iter()
        .find(|d| !d.booted)
        .unwrap_or_else(|| vm.fail(&format!("no new deployment: {deployed:?}")));
    let deploy = format!(
        "/sysroot/ostree/deploy/{os}/deploy/{}.{}",
        new.checksum, new.serial
    );
    build_in_guest(&vm, &deploy);
    let commit = vm
        .exec_ok(&format!("ostree rev-parse {BASE_REF}"))
        .trim()
        .to_string();
    let target_commits: Vec<(&str, String)> = TARGETS
        .iter()
        .map(|(r, _)| {
            (
                *r,
                vm.exec_ok(&format!("ostree rev-parse {r}")).trim().into(),
            )
        })
        .collect();
    let convert_s = t.elapsed();
    vm.shutdown();
    fs::rename(&vm.disk, tmp.join("disk.img")).expect("moving the converted disk");
    drop(vm);
    let mut manifest = base.manifest.clone();
    manifest["booted_checksum"] = commit.clone().into();
    manifest["refs"][BASE_REF] = commit.into();
    for (r, c) in target_commits {
        manifest["refs"][r] = c.into();
    }
    manifest["disk"] = "disk.img".into();
    manifest["composefs"] = serde_json::json!({
        "datadir": DATADIR,
        "converted_from": base.dir.display().to_string(),
        "convert_in_guest_s": convert_s.as_secs_f64(),
        "convert_total_s": t0.elapsed().as_secs_f64(),
    });
    fs::write(tmp.join("image.json"), format!("{manifest:#}\n")).unwrap();
    let _ = fs::remove_dir_all(tmp.join("cpio"));
    fs::rename(&tmp, dir).expect("publishing the composefs guest");
    eprintln!(
        "[vm cfs-convert] composefs guest converted in {:.1} s (in the guest {:.1} s)",
        t0.elapsed().as_secs_f64(),
        convert_s.as_secs_f64()
    );
}

/// Build `<deploy>/.ostree.cfs` in the guest with this test binary (on the tools disk as
/// `cfs-build`), and link its objects into the farm.
pub fn build_in_guest(vm: &Vm, deploy: &str) -> String {
    let test = "composefs_debian13"; // the #[test] in tests/vm_composefs.rs
    vm.exec_ok(&format!(
        "set -e; d={deploy}; imm=$(lsattr -d $d | cut -c5); [ \"$imm\" = i ] && chattr -i $d
out=$({BUILD_ENV}=$d {TOOLS_DIR}/cfs-build --ignored --exact {test} --nocapture --test-threads=1 2>&1) || {{ echo \"$out\" >&2; exit 1; }}
case $out in *\"1 passed\"*) ;; *) echo \"$out\" >&2; exit 1;; esac
[ \"$imm\" = i ] && chattr +i $d; test -s $d/.ostree.cfs; sync
echo \"$out\" | grep -o 'cfs-build: .*'"
    ))
}

// ---------------------------------------------------------------------------
// In the guest

/// Escape for a composefs dumpfile (composefs-dump(5)): every byte outside printable ASCII, and
/// `\` and `=`, as `\xHH`.
fn esc(bytes: &[u8]) -> String {
    let mut s = String::new();
    for &b in bytes {
        if (0x21..=0x7e).contains(&b) && b != b'\\' && b != b'=' {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

fn xattrs(p: &Path) -> String {
    let mut out = String::new();
    for name in xattr::list(p).unwrap_or_else(|e| panic!("listxattr {}: {e}", p.display())) {
        let v = xattr::get(p, &name).ok().flatten().unwrap_or_default();
        out.push(' ');
        out.push_str(&esc(name.as_encoded_bytes()));
        out.push('=');
        out.push_str(&esc(&v));
    }
    out
}

struct Walk<'a> {
    objects: &'a HashMap<(u64, u64), String>,
    farm: PathBuf,
    repo_objects: PathBuf,
    dump: String,
    external: usize,
    linked: usize,
}

impl Walk<'_> {
    fn entry(&mut self, path: &Path, rel: &[u8], top_etc: bool) {
        let md = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (mode, uid, gid) = (md.mode(), md.uid(), md.gid());
        let name = if rel.is_empty() {
            "/".to_string()
        } else {
            esc(rel)
        };
        let x = xattrs(path);
        let ft = md.file_type();
        if ft.is_dir() {
            self.dump
                .push_str(&format!("{name} 0 {mode:o} 2 {uid} {gid} 0 0.0 - - -{x}\n"));
            if top_etc {
                return; // the deployment's /etc is bound over it at boot
            }
            let mut kids: Vec<_> = fs::read_dir(path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .map(|e| e.unwrap().file_name())
                .collect();
            kids.sort();
            for k in kids {
                if rel.is_empty() && k == ".ostree.cfs" {
                    continue;
                }
                let mut r = rel.to_vec();
                r.push(b'/');
                r.extend_from_slice(k.as_encoded_bytes());
                self.entry(&path.join(&k), &r, rel.is_empty() && k == "etc");
            }
        } else if ft.is_symlink() {
            let t = fs::read_link(path).unwrap();
            let t = t.as_os_str().as_encoded_bytes();
            self.dump.push_str(&format!(
                "{name} {} {mode:o} 1 {uid} {gid} 0 0.0 {} - -{x}\n",
                t.len(),
                esc(t)
            ));
        } else if ft.is_file() && md.size() == 0 {
            self.dump
                .push_str(&format!("{name} 0 {mode:o} 1 {uid} {gid} 0 0.0 - - -{x}\n"));
        } else if ft.is_file() {
            let obj = self.objects.get(&(md.dev(), md.ino())).unwrap_or_else(|| {
                panic!(
                    "{}: not a hardlink of an object in {}",
                    path.display(),
                    self.repo_objects.display()
                )
            });
            let link = self.farm.join(obj);
            if fs::symlink_metadata(&link).is_err() {
                fs::create_dir_all(link.parent().unwrap()).unwrap();
                fs::hard_link(path, &link)
                    .unwrap_or_else(|e| panic!("link {}: {e}", link.display()));
                self.linked += 1;
            }
            self.external += 1;
            self.dump.push_str(&format!(
                "{name} {} {mode:o} 1 {uid} {gid} 0 0.0 {obj} - -{x}\n",
                md.size()
            ));
        } else {
            panic!("{}: unexpected file type {ft:?}", path.display());
        }
    }
}

/// The builder, in the guest: `<deploy>/.ostree.cfs` from the deployment's checkout (whose
/// regular files are hardlinks of the repo's `objects/xx/<62>.file`: the inode names the
/// object), and the farm [`DATADIR`] of hardlinks to those objects.
pub fn guest_build_image(deploy: &Path) {
    use composefs::erofs::writer::{mkfs_erofs, ValidatedFileSystem};
    use composefs::fsverity::Sha256HashValue;
    let t = Instant::now();
    let ostree = deploy.ancestors().nth(4).expect("deploy dir depth");
    let repo_objects = ostree.join("repo/objects");
    let farm = ostree.join("repo/objects-cfs");
    let mut objects = HashMap::new();
    for d in fs::read_dir(&repo_objects).unwrap() {
        let d = d.unwrap();
        let xx = d.file_name().to_string_lossy().into_owned();
        if xx.len() != 2 {
            continue;
        }
        for e in fs::read_dir(d.path()).unwrap() {
            let e = e.unwrap();
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = n.strip_suffix(".file") {
                let md = e.metadata().unwrap();
                if md.is_file() {
                    objects.insert((md.dev(), md.ino()), format!("{xx}/{rest}"));
                }
            }
        }
    }
    let mut w = Walk {
        objects: &objects,
        farm,
        repo_objects,
        dump: String::new(),
        external: 0,
        linked: 0,
    };
    let t_map = t.elapsed();
    w.entry(deploy, b"", false);
    let t_walk = t.elapsed();
    let fs_ = composefs::dumpfile::dumpfile_to_filesystem::<Sha256HashValue>(&w.dump)
        .unwrap_or_else(|e| panic!("dumpfile of {}: {e:#}", deploy.display()));
    let img = mkfs_erofs(&ValidatedFileSystem::new(fs_).expect("validating the tree"));
    let t_mkfs = t.elapsed();
    let out = deploy.join(".ostree.cfs");
    let tmp = deploy.join(".ostree.cfs.tmp");
    fs::write(&tmp, &img).unwrap();
    fs::rename(&tmp, &out).unwrap();
    println!(
        "cfs-build: {} ({} bytes, {} entries, {} external, {} new farm links) in {:.1} s \
         (object map {:.1} s, walk + links {:.1} s, composefs-rs {:.1} s, write {:.1} s)",
        out.display(),
        img.len(),
        w.dump.lines().count(),
        w.external,
        w.linked,
        t.elapsed().as_secs_f64(),
        t_map.as_secs_f64(),
        (t_walk - t_map).as_secs_f64(),
        (t_mkfs - t_walk).as_secs_f64(),
        (t.elapsed() - t_mkfs).as_secs_f64(),
    );
}
