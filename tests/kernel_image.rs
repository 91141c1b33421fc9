//! Kernel image checks against a real kernel: Debian's `linux-image-cloud-amd64` and a UKI built
//! from it, both provided by `scripts/fetch-test-kernel` (downloaded once, then cached).
//!
//! These tests need a Debian machine with apt and access to the Debian mirrors the first time
//! (CI has both). Without them they FAIL with the script's message; they never skip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use fastswitch::kernel_image::{
    check_initramfs_file, inspect_file, inspect_for_arch, parse_os_release, BootProtocol,
    FileCheckError, ImageError, ImageKind, InitramfsFormat, KernelImage,
};
use fastswitch::system::kexec::RealKexec;

struct Fixture {
    release: String,
    package: String,
    vmlinuz: PathBuf,
    uki: PathBuf,
    cmdline: PathBuf,
    osrel: PathBuf,
    initrd: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-test-kernel");
        let out = Command::new("bash")
            .arg(&script)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{} failed ({}): the real-kernel tests need a Debian 12 machine with apt, run as \
             root, with access to the Debian mirrors (or a complete cache in \
             $FASTSWITCH_TEST_KERNEL_CACHE)\n--- its stderr ---\n{stderr}",
            script.display(),
            out.status
        );
        let vars: BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let get = |k: &str| {
            vars.get(k)
                .unwrap_or_else(|| panic!("{} printed no {k}=; stdout: {vars:?}", script.display()))
                .clone()
        };
        Fixture {
            release: get("KERNEL_RELEASE"),
            package: get("KERNEL_PACKAGE"),
            vmlinuz: get("VMLINUZ").into(),
            uki: get("UKI").into(),
            cmdline: get("UKI_CMDLINE").into(),
            osrel: get("UKI_OSREL").into(),
            initrd: get("UKI_INITRD").into(),
        }
    })
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Inspect as on an x86_64 host (the fixture is amd64 whatever this host is).
fn x86(bytes: &[u8]) -> Result<KernelImage, ImageError> {
    inspect_for_arch(bytes, "x86_64")
}

/// Write `bytes` to `dir/name` and inspect the file, as fastswitch does with a deployment's kernel.
fn inspect_written(dir: &Path, name: &str, bytes: &[u8]) -> Result<KernelImage, FileCheckError> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    if std::env::consts::ARCH == "x86_64" {
        inspect_file(&path)
    } else {
        x86(bytes).map_err(|e| FileCheckError::new(&path, e))
    }
}

fn image_error(r: Result<KernelImage, FileCheckError>) -> ImageError {
    match r {
        Ok(img) => panic!("accepted: {img:?}"),
        Err(e) => {
            let msg = e.to_string();
            let inner = e.image_error().cloned().unwrap_or_else(|| panic!("{e}"));
            // Every refusal names the file.
            assert!(msg.contains(&e.path.display().to_string()), "{msg}");
            inner
        }
    }
}

/// Header offset of the named section in a PE file, and the file offset of its data.
fn pe_section(bytes: &[u8], name: &str) -> (usize, u32) {
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    let pe = u32_at(0x3C) as usize;
    let coff = pe + 4;
    let nsections = usize::from(u16_at(coff + 2));
    let table = coff + 20 + usize::from(u16_at(coff + 16));
    (0..nsections)
        .map(|i| table + 40 * i)
        .find(|&h| {
            let raw = &bytes[h..h + 8];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(8);
            &raw[..end] == name.as_bytes()
        })
        .map(|h| (h, u32_at(h + 20)))
        .unwrap_or_else(|| panic!("no {name} section"))
}

fn set_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn objcopy(args: &[&str], input: &Path, output: &Path) {
    let st = Command::new("objcopy")
        .args(args)
        .arg(input)
        .arg(output)
        .status()
        .expect("objcopy (binutils) must be installed: scripts/fetch-test-kernel installs it");
    assert!(st.success(), "objcopy {args:?} failed");
}

#[test]
fn real_vmlinuz_is_a_signed_efi_stub_bzimage() {
    let f = fixture();
    let img = x86(&read(&f.vmlinuz)).unwrap();
    assert_eq!(img.kind, ImageKind::BzImage);
    assert_eq!(img.arch, "x86_64");
    assert_eq!(f.package, format!("linux-image-{}", f.release));
    assert_eq!(img.release.as_deref(), Some(f.release.as_str()));
    let version = img.version.as_deref().unwrap();
    assert!(
        version.starts_with(&format!("{} (", f.release)),
        "{version}"
    );
    assert!(version.contains("Debian"), "{version}");
    assert!(img.protocol >= BootProtocol(0x020C), "{}", img.protocol);
    assert!(img.efi_stub, "Debian's amd64 kernels have an EFI stub");
    assert!(
        img.signed,
        "Debian's linux-image-*-cloud-amd64 kernels are signed"
    );
    assert!(img.cmdline_size >= 2047);
    assert!(img.uki.is_none());
    let json = serde_json::to_value(&img).unwrap();
    assert_eq!(json["kind"], "bzimage");
    assert_eq!(json["release"], f.release.as_str());
}

#[test]
fn real_vmlinuz_on_this_host() {
    let f = fixture();
    let r = inspect_file(&f.vmlinuz);
    match std::env::consts::ARCH {
        "x86_64" => assert_eq!(r.unwrap().kind, ImageKind::BzImage),
        other => match r.unwrap_err().image_error() {
            Some(ImageError::WrongArchitecture { image, running }) => {
                assert_eq!(image, "x86_64");
                assert_eq!(running, other);
            }
            e => panic!("{e:?}"),
        },
    }
    // And as an arm64 host would see it.
    assert_eq!(
        inspect_for_arch(&read(&f.vmlinuz), "aarch64"),
        Err(ImageError::WrongArchitecture {
            image: "x86_64".into(),
            running: "aarch64".into()
        })
    );
}

#[test]
fn real_uki_carries_the_same_kernel_cmdline_and_osrel() {
    let f = fixture();
    let bytes = read(&f.uki);
    let vmlinuz = read(&f.vmlinuz);
    let img = x86(&bytes).unwrap();
    let plain = x86(&vmlinuz).unwrap();
    assert_eq!(img.kind, ImageKind::Uki);
    assert_eq!(img.release.as_deref(), Some(f.release.as_str()));
    assert_eq!(img.version, plain.version);
    assert_eq!(img.protocol, plain.protocol);
    assert!(img.signed, "the embedded kernel keeps its own signature");
    let parts = img.uki.as_ref().unwrap();
    assert!(!parts.envelope_signed, "the test UKI itself is not signed");

    let want_cmdline = String::from_utf8(read(&f.cmdline)).unwrap();
    assert_eq!(parts.cmdline.as_deref(), Some(want_cmdline.trim_end()));
    let want_osrel = parse_os_release(&String::from_utf8(read(&f.osrel)).unwrap());
    assert_eq!(parts.osrel.as_ref(), Some(&want_osrel));
    assert_eq!(want_osrel["ID"], "debian");
    assert_eq!(parts.uname.as_deref(), Some(f.release.as_str()));
    let initrd = read(&f.initrd);
    assert_eq!(parts.initrd_len, initrd.len() as u64);
    assert_eq!(parts.initrds.len(), 1);
    assert_eq!(parts.initrds[0].slice(&bytes).unwrap(), &initrd[..]);

    // .linux is cut at VirtualSize: exactly the vmlinuz, although objcopy padded the raw data.
    let (hdr, _) = pe_section(&bytes, ".linux");
    let raw_size = u32::from_le_bytes(bytes[hdr + 16..hdr + 20].try_into().unwrap());
    assert!(
        u64::from(raw_size) > vmlinuz.len() as u64,
        "the test needs objcopy's FileAlignment padding (raw {raw_size}, vmlinuz {})",
        vmlinuz.len()
    );
    assert_eq!(parts.linux.slice(&bytes).unwrap(), &vmlinuz[..]);

    let json = serde_json::to_value(&img).unwrap();
    assert_eq!(json["kind"], "uki");
    assert_eq!(json["uki"]["uname"], f.release.as_str());
    assert_eq!(json["uki"]["osrel"]["ID"], "debian");
    assert_eq!(json["uki"]["initrd_len"], initrd.len() as u64);
}

#[test]
fn real_uki_initrd_is_a_cpio() {
    let f = fixture();
    assert_eq!(
        check_initramfs_file(&f.initrd).unwrap(),
        InitramfsFormat::Cpio
    );
}

#[test]
fn kexec_layer_unwraps_the_real_uki_without_loading() {
    if std::env::consts::ARCH != "x86_64" {
        // prepare() checks against the running architecture; covered by the unit tests there.
        return;
    }
    let f = fixture();
    let p = RealKexec::default()
        .prepare(&f.uki, &[], "console=ttyS0 root=LABEL=root ro")
        .unwrap();
    assert_eq!(p.image.kind, ImageKind::Uki);
    let mut kernel = Vec::new();
    let mut initrd = Vec::new();
    use std::io::{Read, Seek};
    let mut kf = std::fs::File::from(p.kernel_fd);
    kf.rewind().unwrap();
    kf.read_to_end(&mut kernel).unwrap();
    let mut inf = std::fs::File::from(p.initrd_fd.expect("the UKI has an .initrd"));
    inf.rewind().unwrap();
    inf.read_to_end(&mut initrd).unwrap();
    assert!(
        kernel == read(&f.vmlinuz),
        "memfd kernel differs from vmlinuz"
    );
    assert_eq!(initrd, read(&f.initrd));
}

#[test]
fn damaged_real_kernels_are_refused_each_with_its_own_error() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let vmlinuz = read(&f.vmlinuz);

    assert_eq!(
        image_error(inspect_written(d, "empty", b"")),
        ImageError::Empty
    );

    match image_error(inspect_written(d, "first-4k", &vmlinuz[..4096])) {
        ImageError::Truncated {
            len: 4096, needed, ..
        } => assert!(needed > 4096),
        e => panic!("{e:?}"),
    }
    let half = &vmlinuz[..vmlinuz.len() / 2];
    match image_error(inspect_written(d, "first-half", half)) {
        ImageError::Truncated { len, needed, .. } => {
            assert_eq!(len, half.len() as u64);
            assert!(needed > len && needed <= vmlinuz.len() as u64);
        }
        e => panic!("{e:?}"),
    }

    assert_eq!(
        image_error(inspect_written(d, "zeroed", &vec![0; vmlinuz.len()])),
        ImageError::Zeroed {
            len: vmlinuz.len() as u64
        }
    );

    // The EFI stub's COFF machine patched to arm64.
    let mut arm = vmlinuz.clone();
    let pe = u32::from_le_bytes(arm[0x3C..0x40].try_into().unwrap()) as usize;
    arm[pe + 4..pe + 6].copy_from_slice(&0xAA64u16.to_le_bytes());
    assert_eq!(
        image_error(inspect_written(d, "pe-aarch64", &arm)),
        ImageError::WrongArchitecture {
            image: "aarch64".into(),
            running: "x86_64".into()
        }
    );
    // An arm64 Image header (magic at 0x38) in front of the kernel.
    let mut image = vmlinuz.clone();
    image[0x38..0x3C].copy_from_slice(b"ARM\x64");
    assert!(matches!(
        image_error(inspect_written(d, "arm64-image", &image)),
        ImageError::WrongArchitecture { ref image, .. } if image == "aarch64"
    ));

    // Boot protocol 2.11, and a kernel without the 64-bit entry point.
    let mut old = vmlinuz.clone();
    old[0x206..0x208].copy_from_slice(&0x020Bu16.to_le_bytes());
    assert_eq!(
        image_error(inspect_written(d, "protocol-2.11", &old)),
        ImageError::ProtocolTooOld {
            found: BootProtocol(0x020B)
        }
    );
    let mut k32 = vmlinuz.clone();
    k32[0x236] &= !0x01;
    assert!(matches!(
        image_error(inspect_written(d, "no-xlf-kernel-64", &k32)),
        ImageError::Not64Bit { .. }
    ));
}

#[test]
fn damaged_real_ukis_are_refused_each_with_its_own_error() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let uki = read(&f.uki);
    let (linux_hdr, linux_ptr) = pe_section(&uki, ".linux");

    // .linux VirtualSize larger than its raw data.
    let mut big = uki.clone();
    let raw = u32::from_le_bytes(big[linux_hdr + 16..linux_hdr + 20].try_into().unwrap());
    set_u32(&mut big, linux_hdr + 8, raw + 4096);
    assert!(matches!(
        image_error(inspect_written(d, "vsize-too-big.efi", &big)),
        ImageError::SectionSizeMismatch { ref section, .. } if section == ".linux"
    ));

    // .linux pointing past the end of the file.
    let mut outside = uki.clone();
    set_u32(&mut outside, linux_hdr + 20, uki.len() as u32 - 512);
    assert!(matches!(
        image_error(inspect_written(d, "outside.efi", &outside)),
        ImageError::SectionOutsideFile { ref section, .. } if section == ".linux"
    ));

    // A UKI cut off in the middle of .linux.
    let cut = &uki[..linux_ptr as usize + 1_000_000];
    assert!(matches!(
        image_error(inspect_written(d, "cut.efi", cut)),
        ImageError::SectionOutsideFile { ref section, end, file_len, .. }
            if section == ".linux" && end > file_len
    ));

    // The UKI's machine type patched to arm64.
    let mut arm = uki.clone();
    let pe = u32::from_le_bytes(arm[0x3C..0x40].try_into().unwrap()) as usize;
    arm[pe + 4..pe + 6].copy_from_slice(&0xAA64u16.to_le_bytes());
    assert!(matches!(
        image_error(inspect_written(d, "arm.efi", &arm)),
        ImageError::WrongArchitecture { ref image, .. } if image == "aarch64"
    ));

    // objcopy --remove-section .linux.
    let no_linux = d.join("no-linux.efi");
    objcopy(&["--remove-section", ".linux"], &f.uki, &no_linux);
    assert_eq!(
        image_error(inspect_written(d, "no-linux.efi", &read(&no_linux))),
        ImageError::UkiMissingLinux
    );

    // A UKI rebuilt with the first half of the kernel as .linux, at the original VMA.
    let half_kernel = d.join("half-vmlinuz");
    let vmlinuz = read(&f.vmlinuz);
    std::fs::write(&half_kernel, &vmlinuz[..vmlinuz.len() / 2]).unwrap();
    let pe = u32::from_le_bytes(uki[0x3C..0x40].try_into().unwrap()) as usize;
    let image_base = u64::from_le_bytes(uki[pe + 24 + 24..pe + 24 + 32].try_into().unwrap());
    let rva = u32::from_le_bytes(uki[linux_hdr + 12..linux_hdr + 16].try_into().unwrap());
    let bad_linux = d.join("bad-linux.efi");
    let add = format!(".linux={}", half_kernel.display());
    let vma = format!(".linux={:#x}", image_base + u64::from(rva));
    objcopy(
        &["--add-section", &add, "--change-section-vma", &vma],
        &no_linux,
        &bad_linux,
    );
    match image_error(inspect_written(d, "bad-linux.efi", &read(&bad_linux))) {
        ImageError::UkiLinux(inner) => {
            assert!(matches!(*inner, ImageError::Truncated { .. }), "{inner:?}")
        }
        e => panic!("{e:?}"),
    }
}
