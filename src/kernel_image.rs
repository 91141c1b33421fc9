//! Kernel image checks for the kexec path: is this file something the running kernel's
//! `kexec_file_load` will accept, and what is in it?
//!
//! Pure: everything here takes bytes and returns a verdict. The only I/O is in the thin
//! [`inspect_file`] / [`check_initramfs_file`] wrappers, which read a file and attach its path to
//! the error.
//!
//! Two formats are understood:
//! - **x86 bzImage** (`HdrS` at 0x202), with or without an EFI stub (Debian's `vmlinuz` is both a
//!   PE file starting with `MZ` and a bzImage). The checks mirror the kernel's `bzImage64_probe`
//!   and `bzImage64_load` (`arch/x86/kernel/kexec-bzimage64.c`): `boot_flag`, protocol ≥ 2.12,
//!   `LOADED_HIGH`, `XLF_KERNEL_64` + `XLF_CAN_BE_LOADED_ABOVE_4G`, setup code and payload inside
//!   the file. The kernel version string comes from the pointer at 0x20E.
//! - **UKI** (a PE with a `.linux` section). Mainline `kexec_file_load` does not take UKIs, so the
//!   caller unwraps them: [`UkiParts`] gives the byte ranges of `.linux` and of the initrds
//!   (`.ucode` then `.initrd`), cut at each section's `VirtualSize`, not the padded
//!   `SizeOfRawData` (padding breaks the inner kernel's signature check). The embedded `.linux` is
//!   then checked as a bzImage. For multi-profile UKIs the default profile (`@0`) is applied over
//!   the base sections.
//!
//! An arm64 `Image` (magic `ARM\x64` at 0x38) or a PE for another machine is refused as the wrong
//! architecture when the host is not aarch64; on aarch64 the format is recognised but not
//! supported by fastswitch's kexec path (refused with [`ImageError::UnsupportedFormat`]).

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use goblin::pe::header::Header as PeHeader;
use goblin::pe::section_table::SectionTable;
use serde::{Serialize, Serializer};

// --- x86 boot protocol (Documentation/arch/x86/boot.rst) ---------------------------------------

const OFF_SETUP_SECTS: usize = 0x1F1;
const OFF_SYSSIZE: usize = 0x1F4;
const OFF_BOOT_FLAG: usize = 0x1FE;
const OFF_HEADER_MAGIC: usize = 0x202;
const OFF_PROTOCOL: usize = 0x206;
const OFF_KERNEL_VERSION: usize = 0x20E;
const OFF_LOADFLAGS: usize = 0x211;
const OFF_XLOADFLAGS: usize = 0x236;
const OFF_CMDLINE_SIZE: usize = 0x238;
const OFF_PAYLOAD_OFFSET: usize = 0x248;
const OFF_PAYLOAD_LENGTH: usize = 0x24C;
/// End of the last setup-header field read here (`payload_length`, 4 bytes at 0x24C).
const SETUP_HEADER_END: usize = 0x250;

const HDRS_MAGIC: &[u8; 4] = b"HdrS";
const BOOT_FLAG: u16 = 0xAA55;
/// `kexec_file_load` on x86_64 needs boot protocol 2.12 or later.
pub(crate) const MIN_BOOT_PROTOCOL: BootProtocol = BootProtocol(0x020C);
const LOADED_HIGH: u8 = 0x01;
const XLF_KERNEL_64: u16 = 0x01;
const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 0x02;
/// Room the kernel keeps free in the command line for `elfcorehdr=<addr>`
/// (`MAX_ELFCOREHDR_STR_LEN`); it refuses a cmdline that does not leave it, even for a normal load.
const ELFCOREHDR_RESERVE: u64 = 30;

// --- arm64 Image (Documentation/arch/arm64/booting.rst) ----------------------------------------

const OFF_ARM64_MAGIC: usize = 0x38;
const ARM64_MAGIC: &[u8; 4] = b"ARM\x64";

// --- PE/COFF --------------------------------------------------------------------------------------

const OFF_PE_POINTER: usize = 0x3C;
const PE_MACHINE_I386: u16 = 0x014C;
const PE_MACHINE_X86_64: u16 = 0x8664;

/// An x86 boot protocol version as stored at 0x206 (`0x020F` is 2.15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BootProtocol(pub u16);

impl BootProtocol {
    pub(crate) fn major(self) -> u8 {
        (self.0 >> 8) as u8
    }
    pub(crate) fn minor(self) -> u8 {
        (self.0 & 0xFF) as u8
    }
}

impl fmt::Display for BootProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.major(), self.minor())
    }
}

impl Serialize for BootProtocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Which container the kernel came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ImageKind {
    /// An x86 bzImage, possibly with an EFI stub (then it is also a PE file).
    #[serde(rename = "bzimage")]
    BzImage,
    /// A unified kernel image: a PE whose `.linux` section holds the kernel.
    #[serde(rename = "uki")]
    Uki,
}

impl fmt::Display for ImageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImageKind::BzImage => "bzImage",
            ImageKind::Uki => "UKI",
        })
    }
}

/// A byte range inside the inspected file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Span {
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

impl Span {
    /// The bytes of this range in `file` (the same bytes that were inspected); `None` if `file` is
    /// shorter, i.e. it is not the inspected file.
    pub fn slice<'a>(&self, file: &'a [u8]) -> Option<&'a [u8]> {
        let start = usize::try_from(self.offset).ok()?;
        let end = start.checked_add(usize::try_from(self.len).ok()?)?;
        file.get(start..end)
    }
}

/// What a UKI carries besides the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UkiParts {
    /// Where the embedded kernel (`.linux`, cut at `VirtualSize`) is in the file.
    pub linux: Span,
    /// The initrd pieces in load order (`.ucode` first, then `.initrd`), each cut at
    /// `VirtualSize`. Concatenated they form the initrd to hand to the kernel.
    pub initrds: Vec<Span>,
    /// Sum of the lengths of `initrds`.
    pub initrd_len: u64,
    /// `.cmdline`, with trailing NULs and whitespace removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// `.osrel`, parsed as os-release `KEY=value` lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub osrel: Option<BTreeMap<String, String>>,
    /// `.uname`, with trailing NULs and whitespace removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uname: Option<String>,
    /// `Some(0)` when the UKI has `.profile` sections and profile 0 was applied over the base.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) profile: Option<u32>,
    /// The outer PE carries an Authenticode signature (present, not verified). `kexec_file_load`
    /// never sees it: only the embedded kernel's own signature counts there.
    pub envelope_signed: bool,
}

/// A kernel image that passed every check `kexec_file_load` would make, and what it contains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelImage {
    pub kind: ImageKind,
    /// Architecture of the kernel, in `std::env::consts::ARCH` spelling (`x86_64`).
    pub arch: String,
    /// The full version string (`6.1.0-26-cloud-amd64 (debian-kernel@…) #1 SMP … Debian …`), if
    /// the header points to one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The first word of `version`: the release, as `uname -r` will print it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// x86 boot protocol of the (embedded) kernel.
    pub protocol: BootProtocol,
    /// Longest command line the kernel takes, excluding the NUL (`cmdline_size`).
    pub cmdline_size: u32,
    /// The (embedded) kernel has an EFI stub, i.e. is also a PE file.
    pub efi_stub: bool,
    /// The (embedded) kernel carries an Authenticode signature (present, not verified). Under
    /// lockdown or `KEXEC_SIG_FORCE` an unsigned kernel will be refused by the running kernel.
    pub signed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uki: Option<UkiParts>,
}

impl KernelImage {
    /// Longest command line (in bytes, without the NUL) that `kexec_file_load` accepts for this
    /// kernel: `cmdline_size` minus the NUL minus the 30 bytes the kernel reserves for
    /// `elfcorehdr=`.
    pub fn max_cmdline_len(&self) -> u64 {
        u64::from(self.cmdline_size).saturating_sub(ELFCOREHDR_RESERVE + 1)
    }

    /// Refuses a command line the kernel would reject with EINVAL (too long, or containing a NUL).
    pub fn check_cmdline(&self, cmdline: &str) -> Result<(), ImageError> {
        if cmdline.contains('\0') {
            return Err(ImageError::CmdlineHasNul);
        }
        let len = cmdline.len() as u64;
        let max = self.max_cmdline_len();
        if len > max {
            return Err(ImageError::CmdlineTooLong {
                len,
                max,
                cmdline_size: self.cmdline_size,
            });
        }
        Ok(())
    }
}

/// Why a kernel image (or initramfs) was refused. Each variant is a distinct cause; the messages
/// say what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error(
        "the kernel image is empty (0 bytes): the file was created but never written; \
         reinstall the kernel package or redeploy"
    )]
    Empty,

    #[error(
        "the kernel image is all zero bytes ({len} bytes): its contents never reached the disk \
         (crash before fsync, or a preallocated file); reinstall the kernel package or redeploy"
    )]
    Zeroed { len: u64 },

    #[error(
        "not a kernel image: {detail}; expected an x86 bzImage (\"HdrS\" at 0x202) or a UKI \
         (a PE with a .linux section)"
    )]
    NotAKernel { detail: String },

    #[error(
        "truncated kernel image: the file is {len} bytes but its {what} needs {needed} bytes; \
         the copy was cut short (full disk? interrupted write?): reinstall the kernel package \
         or redeploy"
    )]
    Truncated {
        what: &'static str,
        needed: u64,
        len: u64,
    },

    #[error(
        "corrupt kernel image: {detail}; reinstall the kernel package or redeploy, and fall back \
         to a full reboot"
    )]
    Corrupt { detail: String },

    #[error(
        "the kernel uses x86 boot protocol {found}, but kexec_file_load needs {MIN_BOOT_PROTOCOL} \
         or later (Linux 3.8+): a full reboot is needed for this kernel"
    )]
    ProtocolTooOld { found: BootProtocol },

    #[error(
        "the kernel is a zImage (LOADED_HIGH not set in loadflags), which kexec_file_load cannot \
         load: a full reboot is needed for this kernel"
    )]
    NotLoadedHigh,

    #[error(
        "the kernel is not kexec-able from a 64-bit kernel (xloadflags {xloadflags:#06x} lack \
         XLF_KERNEL_64 and/or XLF_CAN_BE_LOADED_ABOVE_4G): is it a 32-bit kernel? a full reboot \
         is needed for this kernel"
    )]
    Not64Bit { xloadflags: u16 },

    #[error(
        "the kernel image is built for {image}, but this machine runs {running}: kexec can only \
         start a kernel of the running architecture; check that the deployment was built for \
         {running}"
    )]
    WrongArchitecture { image: String, running: String },

    #[error("{detail}: fastswitch cannot kexec it; a full reboot is needed")]
    UnsupportedFormat { detail: String },

    #[error(
        "the file is a PE with UKI sections but no .linux section, so it carries no kernel: \
         rebuild the UKI (ukify build --linux=…)"
    )]
    UkiMissingLinux,

    #[error(
        "the UKI's {section} section (bytes {start}..{end}) lies outside the file ({file_len} \
         bytes): the UKI is truncated or its section table is corrupt; rebuild or reinstall it"
    )]
    SectionOutsideFile {
        section: String,
        start: u64,
        end: u64,
        file_len: u64,
    },

    #[error(
        "the UKI's {section} section declares VirtualSize {virtual_size} but only \
         {raw_size} bytes of data (SizeOfRawData): the rest would be zero fill, so the section \
         is cut short; rebuild the UKI"
    )]
    SectionSizeMismatch {
        section: String,
        virtual_size: u64,
        raw_size: u64,
    },

    #[error("the UKI's .linux section is not a usable kernel: {0}")]
    UkiLinux(Box<ImageError>),

    #[error(
        "the kernel command line is {len} bytes, but this kernel takes at most {max} \
         (cmdline_size {cmdline_size}, minus the NUL and 30 bytes reserved for elfcorehdr=): \
         shorten the kernel arguments"
    )]
    CmdlineTooLong {
        len: u64,
        max: u64,
        cmdline_size: u32,
    },

    #[error("the kernel command line contains a NUL byte; the kernel would cut it there")]
    CmdlineHasNul,

    #[error(
        "the initramfs is empty (0 bytes): the boot would have no initrd; regenerate it \
         (dracut / update-initramfs) or redeploy"
    )]
    InitramfsEmpty,

    #[error(
        "the initramfs is not a format the kernel unpacks (first bytes: {head}); expected a \
         newc cpio archive or gzip/zstd/xz/lz4/lzma/bzip2/lzo data: regenerate it or redeploy"
    )]
    InitramfsUnrecognised { head: String },
}

/// Inspect `bytes` as a kernel for the architecture this program runs on.
pub fn inspect(bytes: &[u8]) -> Result<KernelImage, ImageError> {
    inspect_for_arch(bytes, std::env::consts::ARCH)
}

/// Inspect `bytes` as a kernel to be kexec'd on a host of architecture `running_arch`
/// (`std::env::consts::ARCH` spelling).
pub fn inspect_for_arch(bytes: &[u8], running_arch: &str) -> Result<KernelImage, ImageError> {
    inspect_kernel(bytes, running_arch, true)
}

fn inspect_kernel(bytes: &[u8], running: &str, allow_uki: bool) -> Result<KernelImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if bytes.iter().all(|&b| b == 0) {
        return Err(ImageError::Zeroed {
            len: bytes.len() as u64,
        });
    }
    if bytes.get(OFF_ARM64_MAGIC..OFF_ARM64_MAGIC + 4) == Some(ARM64_MAGIC) {
        return Err(refuse_arch("aarch64", running, "an arm64 Image"));
    }
    let machine = pe_machine(bytes);
    if let Some(machine) = machine {
        let image_arch = pe_machine_arch(machine);
        if image_arch != running && !(machine == PE_MACHINE_I386 && running == "x86_64") {
            return Err(refuse_arch(&image_arch, running, "a PE/EFI image"));
        }
    }
    if bytes.get(OFF_HEADER_MAGIC..OFF_HEADER_MAGIC + 4) == Some(HDRS_MAGIC) {
        return inspect_bzimage(bytes, running, machine.is_some());
    }
    if bytes.starts_with(b"MZ") {
        let parsed = pe_sections(bytes);
        let has_linux = parsed.as_ref().is_ok_and(|sections| {
            sections
                .iter()
                .any(|section| section_name(section) == b".linux")
        });
        if bytes.len() < SETUP_HEADER_END && !has_linux {
            // Too short to reach an EFI-stub bzImage's boot header, and not a UKI: the first
            // bytes of a kernel.
            return Err(ImageError::Truncated {
                what: "DOS/PE and x86 boot headers",
                needed: SETUP_HEADER_END as u64,
                len: bytes.len() as u64,
            });
        }
        let sections = match parsed {
            Ok(sections) => sections,
            Err(why) => {
                return Err(ImageError::NotAKernel {
                    detail: format!("an MZ file whose PE headers cannot be parsed ({why})"),
                })
            }
        };
        if !allow_uki {
            return Err(ImageError::NotAKernel {
                detail: "a PE/EFI file without an x86 boot header (nested UKIs are not supported)"
                    .into(),
            });
        }
        return inspect_uki(bytes, &sections, running);
    }
    Err(ImageError::NotAKernel {
        detail: describe_unknown(bytes),
    })
}

fn refuse_arch(image_arch: &str, running: &str, what: &str) -> ImageError {
    if image_arch == running {
        ImageError::UnsupportedFormat {
            detail: format!(
                "the kernel is {what} for {image_arch}; fastswitch's kexec path handles x86_64 \
                 bzImages and UKIs only"
            ),
        }
    } else {
        ImageError::WrongArchitecture {
            image: image_arch.to_string(),
            running: running.to_string(),
        }
    }
}

fn describe_unknown(bytes: &[u8]) -> String {
    let hint = if bytes.starts_with(b"\x7fELF") {
        " (an ELF file: the uncompressed vmlinux? kexec needs the bzImage, vmlinuz)"
    } else if bytes.starts_with(&[0x1F, 0x8B]) {
        " (gzip data)"
    } else if bytes.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
        " (zstd data)"
    } else if bytes.starts_with(b"070701") || bytes.starts_with(b"070702") {
        " (a cpio archive: an initramfs, not a kernel?)"
    } else {
        ""
    };
    format!(
        "no x86 boot header, PE/MZ header or arm64 Image magic; first bytes {}{hint}",
        hex_head(bytes, 8)
    )
}

fn hex_head(bytes: &[u8], n: usize) -> String {
    if bytes.is_empty() {
        return "(none)".into();
    }
    bytes
        .iter()
        .take(n)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn le_u16(bytes: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        bytes.get(off..off + 2)?.try_into().ok()?,
    ))
}

fn le_u32(bytes: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(off..off + 4)?.try_into().ok()?,
    ))
}

/// The COFF machine of a PE file (`MZ`, `e_lfanew`, `PE\0\0`), read directly so that it works on
/// bzImages whose PE headers goblin might not like.
fn pe_machine(bytes: &[u8]) -> Option<u16> {
    if !bytes.starts_with(b"MZ") {
        return None;
    }
    let pe = usize::try_from(le_u32(bytes, OFF_PE_POINTER)?).ok()?;
    if bytes.get(pe..pe.checked_add(4)?)? != b"PE\0\0" {
        return None;
    }
    le_u16(bytes, pe + 4)
}

/// A COFF machine type in `std::env::consts::ARCH` spelling.
fn pe_machine_arch(machine: u16) -> String {
    match machine {
        PE_MACHINE_X86_64 => "x86_64",
        PE_MACHINE_I386 => "x86",
        0xAA64 => "aarch64",
        0x01C0 | 0x01C2 | 0x01C4 => "arm",
        0x5032 => "riscv32",
        0x5064 => "riscv64",
        0x6264 => "loongarch64",
        0x0200 => "ia64",
        other => return format!("an unknown PE machine ({other:#06x})"),
    }
    .to_string()
}

/// The certificate table of a PE file is present and inside the file.
fn pe_has_signature(bytes: &[u8]) -> bool {
    let Ok(header) = PeHeader::parse(bytes) else {
        return false;
    };
    let Some(dir) = header
        .optional_header
        .and_then(|o| o.data_directories.get_certificate_table().copied())
    else {
        return false;
    };
    dir.size > 0 && u64::from(dir.virtual_address) + u64::from(dir.size) <= bytes.len() as u64
}

/// Reads the x86 boot protocol header field by field, in offset order, each check naming its
/// field; long because splitting it would scatter the header offsets.
fn inspect_bzimage(bytes: &[u8], running: &str, efi_stub: bool) -> Result<KernelImage, ImageError> {
    let len = bytes.len() as u64;
    if bytes.len() < SETUP_HEADER_END {
        return Err(ImageError::Truncated {
            what: "x86 boot setup header",
            needed: SETUP_HEADER_END as u64,
            len,
        });
    }
    // Lengths were checked above: these reads cannot fail.
    let u16_at = |off| le_u16(bytes, off).unwrap_or_default();
    let u32_at = |off| le_u32(bytes, off).unwrap_or_default();

    let boot_flag = u16_at(OFF_BOOT_FLAG);
    if boot_flag != BOOT_FLAG {
        return Err(ImageError::Corrupt {
            detail: format!("boot_flag at 0x1FE is {boot_flag:#06x}, expected 0xaa55"),
        });
    }
    let protocol = BootProtocol(u16_at(OFF_PROTOCOL));
    let xloadflags = u16_at(OFF_XLOADFLAGS);
    let image_arch = if protocol >= MIN_BOOT_PROTOCOL && xloadflags & XLF_KERNEL_64 != 0 {
        "x86_64"
    } else {
        "x86"
    };
    if running != "x86_64" && running != "x86" {
        return Err(ImageError::WrongArchitecture {
            image: image_arch.into(),
            running: running.into(),
        });
    }
    if protocol < MIN_BOOT_PROTOCOL {
        return Err(ImageError::ProtocolTooOld { found: protocol });
    }
    if bytes[OFF_LOADFLAGS] & LOADED_HIGH == 0 {
        return Err(ImageError::NotLoadedHigh);
    }
    let needed_xlf = XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G;
    if running == "x86_64" && xloadflags & needed_xlf != needed_xlf {
        return Err(ImageError::Not64Bit { xloadflags });
    }

    let setup_sects = match bytes[OFF_SETUP_SECTS] {
        0 => 4,
        n => u64::from(n),
    };
    let kern16 = (setup_sects + 1) * 512;
    if len < kern16 {
        return Err(ImageError::Truncated {
            what: "real-mode setup code (setup_sects)",
            needed: kern16,
            len,
        });
    }
    let syssize = u64::from(u32_at(OFF_SYSSIZE)) * 16;
    if syssize == 0 {
        return Err(ImageError::Corrupt {
            detail: "syssize at 0x1F4 is 0: the header declares no protected-mode kernel".into(),
        });
    }
    let total = kern16 + syssize;
    if len < total {
        return Err(ImageError::Truncated {
            what: "protected-mode kernel (setup_sects + syssize)",
            needed: total,
            len,
        });
    }
    let payload_start = kern16 + u64::from(u32_at(OFF_PAYLOAD_OFFSET));
    let payload_len = u64::from(u32_at(OFF_PAYLOAD_LENGTH));
    let payload_end = payload_start + payload_len;
    if payload_len == 0 || payload_end > total {
        return Err(ImageError::Corrupt {
            detail: format!(
                "the compressed payload (bytes {payload_start}..{payload_end}) is empty or \
                 extends past the kernel declared by syssize (ends at {total})"
            ),
        });
    }

    let version = read_version(bytes, kern16)?;
    let release = version
        .as_deref()
        .and_then(|v| v.split_whitespace().next())
        .map(str::to_string);
    Ok(KernelImage {
        kind: ImageKind::BzImage,
        arch: image_arch.into(),
        version,
        release,
        protocol,
        cmdline_size: u32_at(OFF_CMDLINE_SIZE),
        efi_stub,
        signed: efi_stub && pe_has_signature(bytes),
        uki: None,
    })
}

/// The kernel version string: NUL-terminated, at `0x200 + [0x20E]`, inside the setup code.
fn read_version(bytes: &[u8], kern16: u64) -> Result<Option<String>, ImageError> {
    let ptr = le_u16(bytes, OFF_KERNEL_VERSION).unwrap_or_default();
    if ptr == 0 {
        return Ok(None);
    }
    let start = usize::from(ptr) + 0x200;
    let end = usize::try_from(kern16)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    let corrupt = |why: &str| ImageError::Corrupt {
        detail: format!("the kernel_version pointer at 0x20E ({ptr:#06x}) {why}"),
    };
    if start >= end {
        return Err(corrupt("points past the setup code"));
    }
    let region = &bytes[start..end];
    let Some(nul) = region.iter().position(|&b| b == 0) else {
        return Err(corrupt(
            "points to a string with no NUL inside the setup code",
        ));
    };
    let raw = &region[..nul];
    if raw.is_empty() || raw.iter().any(|&b| !(0x20..0x7F).contains(&b)) {
        return Err(corrupt(
            "points to bytes that are not a printable version string",
        ));
    }
    Ok(Some(String::from_utf8_lossy(raw).into_owned()))
}

// --- UKI ------------------------------------------------------------------------------------------

/// The sections a UKI may carry that matter for kexec, first occurrence each.
#[derive(Default, Clone, Copy)]
struct UkiSections<'s> {
    linux: Option<&'s SectionTable>,
    initrd: Option<&'s SectionTable>,
    ucode: Option<&'s SectionTable>,
    cmdline: Option<&'s SectionTable>,
    osrel: Option<&'s SectionTable>,
    uname: Option<&'s SectionTable>,
}

impl<'s> UkiSections<'s> {
    fn slot(&mut self, name: &[u8]) -> Option<&mut Option<&'s SectionTable>> {
        Some(match name {
            b".linux" => &mut self.linux,
            b".initrd" => &mut self.initrd,
            b".ucode" => &mut self.ucode,
            b".cmdline" => &mut self.cmdline,
            b".osrel" => &mut self.osrel,
            b".uname" => &mut self.uname,
            _ => return None,
        })
    }

    fn is_empty(&self) -> bool {
        self.linux.is_none()
            && self.initrd.is_none()
            && self.ucode.is_none()
            && self.cmdline.is_none()
            && self.osrel.is_none()
            && self.uname.is_none()
    }

    /// `self` (a profile) overriding `base`, section type by section type.
    fn over(self, base: Self) -> Self {
        Self {
            linux: self.linux.or(base.linux),
            initrd: self.initrd.or(base.initrd),
            ucode: self.ucode.or(base.ucode),
            cmdline: self.cmdline.or(base.cmdline),
            osrel: self.osrel.or(base.osrel),
            uname: self.uname.or(base.uname),
        }
    }
}

/// The raw 8-byte section name without its NUL padding.
fn section_name(section: &SectionTable) -> &[u8] {
    let end = section
        .name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(section.name.len());
    &section.name[..end]
}

fn section_label(section: &SectionTable) -> String {
    String::from_utf8_lossy(section_name(section)).into_owned()
}

/// The payload of a section: `VirtualSize` bytes from `PointerToRawData` (falling back to
/// `SizeOfRawData` when `VirtualSize` is 0, as old linkers leave it), all inside the file.
fn section_span(section: &SectionTable, file_len: u64) -> Result<Span, ImageError> {
    let raw = u64::from(section.size_of_raw_data);
    let virt = u64::from(section.virtual_size);
    let len = if virt == 0 { raw } else { virt };
    if len > raw {
        return Err(ImageError::SectionSizeMismatch {
            section: section_label(section),
            virtual_size: virt,
            raw_size: raw,
        });
    }
    let start = u64::from(section.pointer_to_raw_data);
    let end = start + len;
    if end > file_len {
        return Err(ImageError::SectionOutsideFile {
            section: section_label(section),
            start,
            end,
            file_len,
        });
    }
    Ok(Span { offset: start, len })
}

fn section_text(bytes: &[u8], span: Span) -> String {
    let data = span.slice(bytes).unwrap_or_default();
    String::from_utf8_lossy(data)
        .trim_end_matches(|c: char| c == '\0' || c.is_whitespace())
        .to_string()
}

/// The PE section table, through goblin's header parser only (no imports, resources or
/// certificates: UKIs need none of that, and goblin has tripped over UKI certificates before).
fn pe_sections(bytes: &[u8]) -> Result<Vec<SectionTable>, goblin::error::Error> {
    let header = PeHeader::parse(bytes)?;
    let mut offset = header.dos_header.pe_pointer as usize
        + goblin::pe::header::SIZEOF_PE_MAGIC
        + goblin::pe::header::SIZEOF_COFF_HEADER
        + usize::from(header.coff_header.size_of_optional_header);
    header.coff_header.sections(bytes, &mut offset)
}

fn inspect_uki(
    bytes: &[u8],
    sections: &[SectionTable],
    running: &str,
) -> Result<KernelImage, ImageError> {
    let file_len = bytes.len() as u64;
    // Base sections, then profile 0 (the default) over them; later profiles are not ours to pick.
    let mut base = UkiSections::default();
    let mut profile0 = UkiSections::default();
    let mut profile: Option<u32> = None;
    for section in sections {
        let name = section_name(section);
        if name == b".profile" {
            match profile {
                None => profile = Some(0),
                Some(_) => break,
            }
            continue;
        }
        let target = if profile.is_some() {
            &mut profile0
        } else {
            &mut base
        };
        if let Some(slot) = target.slot(name) {
            slot.get_or_insert(section);
        }
    }
    let chosen = profile0.over(base);
    if chosen.is_empty() {
        return Err(ImageError::NotAKernel {
            detail: "a PE/EFI file with neither an x86 boot header nor any UKI section".into(),
        });
    }
    let linux = chosen.linux.ok_or(ImageError::UkiMissingLinux)?;
    let linux = section_span(linux, file_len)?;
    let span_of = |s: Option<&SectionTable>| s.map(|s| section_span(s, file_len)).transpose();
    let ucode = span_of(chosen.ucode)?;
    let initrd = span_of(chosen.initrd)?;
    let cmdline = span_of(chosen.cmdline)?.map(|s| section_text(bytes, s));
    let uname = span_of(chosen.uname)?.map(|s| section_text(bytes, s));
    let osrel = span_of(chosen.osrel)?.map(|s| parse_os_release(&section_text(bytes, s)));

    let kernel_bytes = linux.slice(bytes).unwrap_or_default();
    let mut image = inspect_kernel(kernel_bytes, running, false)
        .map_err(|e| ImageError::UkiLinux(Box::new(e)))?;
    let initrds: Vec<Span> = ucode.into_iter().chain(initrd).collect();
    image.kind = ImageKind::Uki;
    image.uki = Some(UkiParts {
        linux,
        initrd_len: initrds.iter().map(|s| s.len).sum(),
        initrds,
        cmdline,
        osrel,
        uname,
        profile,
        envelope_signed: pe_has_signature(bytes),
    });
    Ok(image)
}

/// Parse os-release text (`KEY=value`, values optionally quoted with shell-style escapes;
/// comments and malformed lines are skipped).
pub fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        out.insert(key.to_string(), unquote(value));
    }
    out
}

fn unquote(value: &str) -> String {
    let mut chars = value.chars();
    let quote = match value.chars().next() {
        Some(q @ ('"' | '\'')) if value.len() >= 2 && value.ends_with(q) => {
            chars.next();
            chars.next_back();
            q
        }
        _ => return value.to_string(),
    };
    let mut out = String::new();
    while let Some(c) = chars.next() {
        if c == '\\' && quote == '"' {
            match chars.next() {
                Some(n @ ('\\' | '"' | '$' | '`')) => out.push(n),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

// --- initramfs ------------------------------------------------------------------------------------

/// The container of an initramfs, as the kernel's unpacker recognises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InitramfsFormat {
    /// An uncompressed newc cpio archive (often the early microcode part, with more appended).
    Cpio,
    Gzip,
    Zstd,
    Xz,
    Lz4,
    Lzma,
    Bzip2,
    Lzo,
}

/// Check the start of an initramfs (the whole file or just its first bytes; 6 are enough):
/// refuses an empty file and anything the kernel's initramfs unpacker would not recognise.
pub fn check_initramfs(head: &[u8]) -> Result<InitramfsFormat, ImageError> {
    if head.is_empty() {
        return Err(ImageError::InitramfsEmpty);
    }
    const MAGICS: &[(&[u8], InitramfsFormat)] = &[
        (b"070701", InitramfsFormat::Cpio),
        (b"070702", InitramfsFormat::Cpio),
        (&[0x1F, 0x8B], InitramfsFormat::Gzip),
        (&[0x1F, 0x9E], InitramfsFormat::Gzip),
        (&[0x28, 0xB5, 0x2F, 0xFD], InitramfsFormat::Zstd),
        (&[0xFD, b'7', b'z', b'X', b'Z', 0x00], InitramfsFormat::Xz),
        (&[0x02, 0x21, 0x4C, 0x18], InitramfsFormat::Lz4),
        (&[0x5D, 0x00, 0x00], InitramfsFormat::Lzma),
        (b"BZh", InitramfsFormat::Bzip2),
        (&[0x89, b'L', b'Z', b'O'], InitramfsFormat::Lzo),
    ];
    MAGICS
        .iter()
        .find(|(magic, _)| head.starts_with(magic))
        .map(|&(_, format)| format)
        .ok_or_else(|| ImageError::InitramfsUnrecognised {
            head: hex_head(head, 6),
        })
}

// --- file wrappers --------------------------------------------------------------------------------

/// What went wrong with a kernel or initramfs file.
#[derive(Debug, thiserror::Error)]
pub enum FileProblem {
    #[error(
        "does not exist: check the path in the deployment's boot entry and that /boot is mounted"
    )]
    Missing,
    #[error("cannot be read ({0})")]
    Io(#[source] io::Error),
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// A kernel or initramfs file that was refused, with its path.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct FileCheckError {
    pub path: PathBuf,
    pub(crate) problem: FileProblem,
}

impl FileCheckError {
    pub fn new(path: &Path, problem: impl Into<FileProblem>) -> Self {
        Self {
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }

    /// The image check that failed, if the file could be read at all.
    pub fn image_error(&self) -> Option<&ImageError> {
        match &self.problem {
            FileProblem::Image(e) => Some(e),
            _ => None,
        }
    }

    fn io(path: &Path, err: io::Error) -> Self {
        let problem = if err.kind() == io::ErrorKind::NotFound {
            FileProblem::Missing
        } else {
            FileProblem::Io(err)
        };
        Self::new(path, problem)
    }
}

/// Read and [`inspect`] a kernel file.
pub fn inspect_file(path: &Path) -> Result<KernelImage, FileCheckError> {
    let bytes = crate::system::files::read(path, crate::system::files::Follow::Yes)
        .map_err(|e| FileCheckError::io(path, e.into()))?;
    inspect(&bytes).map_err(|e| FileCheckError::new(path, e))
}

/// Read the start of an initramfs file and [`check_initramfs`] it; a missing file is an error.
pub fn check_initramfs_file(path: &Path) -> Result<InitramfsFormat, FileCheckError> {
    use std::io::Read;
    let mut head = Vec::with_capacity(8);
    crate::system::files::open_regular(path, crate::system::files::Follow::Yes)
        .map_err(std::io::Error::from)
        .and_then(|f| f.take(8).read_to_end(&mut head))
        .map_err(|e| FileCheckError::io(path, e))?;
    check_initramfs(&head).map_err(|e| FileCheckError::new(path, e))
}

// --- synthetic images for unit tests --------------------------------------------------------------

/// Hand-built images for unit tests (here and in `system::kexec`).
#[cfg(test)]
pub(crate) mod synth {
    /// A minimal bzImage: a valid x86 setup header and `payload` as the protected-mode part.
    pub(crate) struct BzImage {
        pub(crate) setup_sects: u8,
        pub protocol: u16,
        pub(crate) loadflags: u8,
        pub(crate) xloadflags: u16,
        pub version: Option<&'static str>,
        /// Write `MZ` and a PE signature with this COFF machine (an EFI-stub kernel).
        pub(crate) pe_machine: Option<u16>,
        pub(crate) payload: Vec<u8>,
    }

    impl Default for BzImage {
        fn default() -> Self {
            Self {
                setup_sects: 3,
                protocol: 0x020F,
                loadflags: 0x01,
                xloadflags: 0x7F,
                version: Some("6.1.0-99-test-amd64 (builder@host) #1 SMP Debian 6.1.999-1"),
                pe_machine: None,
                payload: (0..4096u32).map(|i| (i % 251) as u8 + 1).collect(),
            }
        }
    }

    impl BzImage {
        pub(crate) fn build(&self) -> Vec<u8> {
            let sects = if self.setup_sects == 0 {
                4
            } else {
                usize::from(self.setup_sects)
            };
            let kern16 = (sects + 1) * 512;
            let mut b = vec![0u8; kern16];
            if let Some(machine) = self.pe_machine {
                b[0..2].copy_from_slice(b"MZ");
                b[0x3C..0x40].copy_from_slice(&0x40u32.to_le_bytes());
                b[0x40..0x44].copy_from_slice(b"PE\0\0");
                b[0x44..0x46].copy_from_slice(&machine.to_le_bytes());
            }
            b[0x1F1] = self.setup_sects;
            let syssize = self.payload.len().div_ceil(16) as u32;
            b[0x1F4..0x1F8].copy_from_slice(&syssize.to_le_bytes());
            b[0x1FE..0x200].copy_from_slice(&0xAA55u16.to_le_bytes());
            b[0x200] = 0xEB;
            b[0x201] = 0x66;
            b[0x202..0x206].copy_from_slice(b"HdrS");
            b[0x206..0x208].copy_from_slice(&self.protocol.to_le_bytes());
            b[0x211] = self.loadflags;
            b[0x236..0x238].copy_from_slice(&self.xloadflags.to_le_bytes());
            b[0x238..0x23C].copy_from_slice(&2047u32.to_le_bytes());
            b[0x248..0x24C].copy_from_slice(&16u32.to_le_bytes());
            let payload_len = self.payload.len() as u32 - 32;
            b[0x24C..0x250].copy_from_slice(&payload_len.to_le_bytes());
            if let Some(v) = self.version {
                let at = 0x300;
                b[0x20E..0x210].copy_from_slice(&((at - 0x200) as u16).to_le_bytes());
                b[at..at + v.len()].copy_from_slice(v.as_bytes());
            }
            b.extend_from_slice(&self.payload);
            b.resize(kern16 + syssize as usize * 16, 0);
            b
        }
    }

    pub(crate) const SECTION_TABLE_OFFSET: usize = 0x40 + 4 + 20 + 240;

    /// A minimal PE32+ EFI application with the given sections, each placed at a 512-byte aligned
    /// file offset with `SizeOfRawData` padded to 512 and `VirtualSize` = the data length.
    pub(crate) fn pe(machine: u16, sections: &[(&str, &[u8])]) -> Vec<u8> {
        let nsec = sections.len();
        let headers_end = SECTION_TABLE_OFFSET + 40 * nsec;
        let align = |n: usize| n.div_ceil(512) * 512;
        let mut b = vec![0u8; align(headers_end)];
        b[0..2].copy_from_slice(b"MZ");
        b[0x3C..0x40].copy_from_slice(&0x40u32.to_le_bytes());
        b[0x40..0x44].copy_from_slice(b"PE\0\0");
        let coff = 0x44;
        b[coff..coff + 2].copy_from_slice(&machine.to_le_bytes());
        b[coff + 2..coff + 4].copy_from_slice(&(nsec as u16).to_le_bytes());
        b[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
        b[coff + 18..coff + 20].copy_from_slice(&0x0206u16.to_le_bytes());
        let opt = coff + 20;
        b[opt..opt + 2].copy_from_slice(&0x020Bu16.to_le_bytes());
        b[opt + 32..opt + 36].copy_from_slice(&0x1000u32.to_le_bytes()); // SectionAlignment
        b[opt + 36..opt + 40].copy_from_slice(&0x200u32.to_le_bytes()); // FileAlignment
        b[opt + 60..opt + 64].copy_from_slice(&(align(headers_end) as u32).to_le_bytes());
        b[opt + 68..opt + 70].copy_from_slice(&10u16.to_le_bytes()); // EFI application
        b[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes());
        let mut vaddr = 0x1000u32;
        for (i, (name, data)) in sections.iter().enumerate() {
            let file_off = b.len();
            let raw = align(data.len());
            b.extend_from_slice(data);
            b.resize(file_off + raw, 0);
            let sh = SECTION_TABLE_OFFSET + 40 * i;
            b[sh..sh + name.len()].copy_from_slice(name.as_bytes());
            b[sh + 8..sh + 12].copy_from_slice(&(data.len() as u32).to_le_bytes());
            b[sh + 12..sh + 16].copy_from_slice(&vaddr.to_le_bytes());
            b[sh + 16..sh + 20].copy_from_slice(&(raw as u32).to_le_bytes());
            b[sh + 20..sh + 24].copy_from_slice(&(file_off as u32).to_le_bytes());
            b[sh + 36..sh + 40].copy_from_slice(&0x4000_0040u32.to_le_bytes());
            vaddr += (data.len() as u32).div_ceil(0x1000).max(1) * 0x1000;
        }
        let image_size = vaddr;
        b[opt + 56..opt + 60].copy_from_slice(&image_size.to_le_bytes());
        b
    }

    /// Offset of section `index`'s header in a file built by [`pe`].
    pub(crate) fn section_header(index: usize) -> usize {
        SECTION_TABLE_OFFSET + 40 * index
    }

    pub(crate) const OSREL: &str = "NAME=\"Test OS\"\nID=test\n# comment\nVERSION_ID='42'\n";
    pub(crate) const CMDLINE: &str = "root=LABEL=root ro quiet\n\0";

    /// A UKI around the default synthetic bzImage.
    pub fn uki(kernel: &[u8]) -> Vec<u8> {
        pe(
            0x8664,
            &[
                (".text", &[0xC3; 64]),
                (".osrel", OSREL.as_bytes()),
                (".cmdline", CMDLINE.as_bytes()),
                (".uname", b"6.1.0-99-test-amd64\n"),
                (".initrd", b"070701-initrd-bytes"),
                (".linux", kernel),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::synth::*;
    use super::*;

    fn x86(bytes: &[u8]) -> Result<KernelImage, ImageError> {
        inspect_for_arch(bytes, "x86_64")
    }

    #[test]
    fn valid_bzimage() {
        let img = x86(&BzImage::default().build()).unwrap();
        assert_eq!(img.kind, ImageKind::BzImage);
        assert_eq!(img.arch, "x86_64");
        assert_eq!(img.protocol, BootProtocol(0x020F));
        assert_eq!(img.protocol.to_string(), "2.15");
        assert_eq!(img.release.as_deref(), Some("6.1.0-99-test-amd64"));
        assert!(img
            .version
            .as_deref()
            .unwrap()
            .ends_with("Debian 6.1.999-1"));
        assert_eq!(img.cmdline_size, 2047);
        assert!(!img.efi_stub && !img.signed);
        assert!(img.uki.is_none());
        let json = serde_json::to_value(&img).unwrap();
        assert_eq!(json["kind"], "bzimage");
        assert_eq!(json["protocol"], "2.15");
        assert_eq!(json["arch"], "x86_64");
    }

    #[test]
    fn efi_stub_bzimage_is_a_bzimage() {
        let img = x86(&BzImage {
            pe_machine: Some(0x8664),
            ..Default::default()
        }
        .build())
        .unwrap();
        assert_eq!(img.kind, ImageKind::BzImage);
        assert!(img.efi_stub);
        assert!(!img.signed, "no certificate table in the synthetic stub");
    }

    #[test]
    fn setup_sects_zero_means_four() {
        let img = BzImage {
            setup_sects: 0,
            ..Default::default()
        }
        .build();
        assert_eq!(img.len(), 5 * 512 + 4096);
        x86(&img).unwrap();
    }

    #[test]
    fn no_version_pointer_is_not_an_error() {
        let img = x86(&BzImage {
            version: None,
            ..Default::default()
        }
        .build())
        .unwrap();
        assert_eq!(img.version, None);
        assert_eq!(img.release, None);
    }

    #[test]
    fn empty_and_zeroed() {
        assert_eq!(x86(&[]), Err(ImageError::Empty));
        let len = BzImage::default().build().len();
        assert_eq!(
            x86(&vec![0; len]),
            Err(ImageError::Zeroed { len: len as u64 })
        );
    }

    #[test]
    fn not_a_kernel() {
        let e = x86(b"\x7fELF\x02\x01\x01\0 this is vmlinux, not vmlinuz").unwrap_err();
        match e {
            ImageError::NotAKernel { detail } => assert!(detail.contains("vmlinux"), "{detail}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            x86(&[0xAB; 4096]),
            Err(ImageError::NotAKernel { .. })
        ));
    }

    #[test]
    fn truncations() {
        let full = BzImage::default().build();
        // Inside the boot header.
        assert!(matches!(
            x86(&full[..0x220]),
            Err(ImageError::Truncated { needed: 0x250, .. })
        ));
        // Inside the setup code.
        assert!(matches!(
            x86(&full[..1024]),
            Err(ImageError::Truncated {
                needed: 2048,
                len: 1024,
                ..
            })
        ));
        // Inside the payload.
        let half = &full[..full.len() / 2 + 1024];
        match x86(half) {
            Err(ImageError::Truncated { needed, len, .. }) => {
                assert_eq!(needed, full.len() as u64);
                assert_eq!(len, half.len() as u64);
            }
            other => panic!("{other:?}"),
        }
        // One byte short.
        assert!(matches!(
            x86(&full[..full.len() - 1]),
            Err(ImageError::Truncated { .. })
        ));
        // A truncated EFI-stub kernel too short for the headers.
        let stub = BzImage {
            pe_machine: Some(0x8664),
            ..Default::default()
        }
        .build();
        assert!(matches!(
            x86(&stub[..0x100]),
            Err(ImageError::Truncated { .. })
        ));
    }

    #[test]
    fn protocol_too_old() {
        let img = BzImage {
            protocol: 0x020B,
            ..Default::default()
        }
        .build();
        assert_eq!(
            x86(&img),
            Err(ImageError::ProtocolTooOld {
                found: BootProtocol(0x020B)
            })
        );
        assert!(x86(&img).unwrap_err().to_string().contains("2.11"));
    }

    #[test]
    fn zimage_and_32bit() {
        let zimage = BzImage {
            loadflags: 0,
            ..Default::default()
        }
        .build();
        assert_eq!(x86(&zimage), Err(ImageError::NotLoadedHigh));
        for xlf in [0x00, XLF_KERNEL_64, XLF_CAN_BE_LOADED_ABOVE_4G] {
            let img = BzImage {
                xloadflags: xlf,
                ..Default::default()
            }
            .build();
            assert_eq!(
                x86(&img),
                Err(ImageError::Not64Bit { xloadflags: xlf }),
                "{xlf:#x}"
            );
            // On a 32-bit x86 host the 64-bit flags are not required.
            assert!(inspect_for_arch(&img, "x86").is_ok());
        }
    }

    #[test]
    fn corrupt_headers() {
        let mut img = BzImage::default().build();
        img[0x1FE] = 0;
        assert!(matches!(x86(&img), Err(ImageError::Corrupt { .. })));

        let mut img = BzImage::default().build();
        img[0x1F4..0x1F8].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(x86(&img), Err(ImageError::Corrupt { .. })));

        // payload_length past syssize.
        let mut img = BzImage::default().build();
        img[0x24C..0x250].copy_from_slice(&0x10_0000u32.to_le_bytes());
        assert!(matches!(x86(&img), Err(ImageError::Corrupt { .. })));

        // Version pointer past the setup code.
        let mut img = BzImage::default().build();
        img[0x20E..0x210].copy_from_slice(&0x0F00u16.to_le_bytes());
        assert!(matches!(x86(&img), Err(ImageError::Corrupt { .. })));

        // Version string without a NUL before the end of the setup code.
        let mut img = BzImage::default().build();
        let end = 4 * 512;
        img[0x300..end].fill(b'x');
        assert!(matches!(x86(&img), Err(ImageError::Corrupt { .. })));
    }

    #[test]
    fn wrong_architecture() {
        // An x86 kernel on an arm64 host.
        assert_eq!(
            inspect_for_arch(&BzImage::default().build(), "aarch64"),
            Err(ImageError::WrongArchitecture {
                image: "x86_64".into(),
                running: "aarch64".into()
            })
        );
        // An EFI-stub kernel whose PE machine says arm64.
        let img = BzImage {
            pe_machine: Some(0xAA64),
            ..Default::default()
        }
        .build();
        assert_eq!(
            x86(&img),
            Err(ImageError::WrongArchitecture {
                image: "aarch64".into(),
                running: "x86_64".into()
            })
        );
        // A raw arm64 Image.
        let mut arm = vec![0x11u8; 8192];
        arm[0x38..0x3C].copy_from_slice(b"ARM\x64");
        let e = x86(&arm).unwrap_err();
        assert!(matches!(e, ImageError::WrongArchitecture { ref image, .. } if image == "aarch64"));
        assert!(e.to_string().contains("aarch64") && e.to_string().contains("x86_64"));
        // ... which on an arm64 host is recognised but not supported.
        assert!(matches!(
            inspect_for_arch(&arm, "aarch64"),
            Err(ImageError::UnsupportedFormat { .. })
        ));
        // A riscv64 UKI.
        let uki = pe(0x5064, &[(".linux", &BzImage::default().build())]);
        assert_eq!(
            x86(&uki),
            Err(ImageError::WrongArchitecture {
                image: "riscv64".into(),
                running: "x86_64".into()
            })
        );
    }

    #[test]
    fn valid_uki() {
        let kernel = BzImage::default().build();
        let bytes = uki(&kernel);
        let img = x86(&bytes).unwrap();
        assert_eq!(img.kind, ImageKind::Uki);
        assert_eq!(img.release.as_deref(), Some("6.1.0-99-test-amd64"));
        let parts = img.uki.as_ref().unwrap();
        assert_eq!(parts.linux.slice(&bytes).unwrap(), &kernel[..]);
        assert_eq!(parts.cmdline.as_deref(), Some("root=LABEL=root ro quiet"));
        assert_eq!(parts.uname.as_deref(), Some("6.1.0-99-test-amd64"));
        let osrel = parts.osrel.as_ref().unwrap();
        assert_eq!(osrel["NAME"], "Test OS");
        assert_eq!(osrel["ID"], "test");
        assert_eq!(osrel["VERSION_ID"], "42");
        assert_eq!(osrel.len(), 3);
        assert_eq!(parts.initrds.len(), 1);
        assert_eq!(
            parts.initrds[0].slice(&bytes).unwrap(),
            b"070701-initrd-bytes"
        );
        assert_eq!(parts.initrd_len, 19);
        assert_eq!(parts.profile, None);
        let json = serde_json::to_value(&img).unwrap();
        assert_eq!(json["kind"], "uki");
        assert_eq!(json["uki"]["cmdline"], "root=LABEL=root ro quiet");
        assert_eq!(json["uki"]["initrd_len"], 19);
    }

    #[test]
    fn uki_sections_use_virtual_size_not_padded_raw_size() {
        let kernel = BzImage::default().build();
        let bytes = uki(&kernel);
        let parts = x86(&bytes).unwrap().uki.unwrap();
        // The synthetic PE pads every section to 512 bytes (SizeOfRawData); the payloads are cut
        // at VirtualSize.
        let initrd_raw = le_u32(&bytes, section_header(4) + 16).unwrap();
        assert_eq!(initrd_raw, 512);
        assert_eq!(parts.initrds[0].len, 19);
        let cmdline_raw = le_u32(&bytes, section_header(2) + 16).unwrap();
        assert_eq!(cmdline_raw, 512);
        assert_eq!(parts.cmdline.as_deref(), Some("root=LABEL=root ro quiet"));
        assert_eq!(parts.linux.len, kernel.len() as u64);
        // A VirtualSize of 0 (old linkers) falls back to SizeOfRawData.
        let mut bytes = bytes;
        let sh = section_header(4);
        bytes[sh + 8..sh + 12].copy_from_slice(&0u32.to_le_bytes());
        let parts = x86(&bytes).unwrap().uki.unwrap();
        assert_eq!(parts.initrds[0].len, 512);
    }

    #[test]
    fn uki_ucode_comes_before_initrd() {
        let kernel = BzImage::default().build();
        let bytes = pe(
            0x8664,
            &[
                (".initrd", b"MAIN"),
                (".ucode", b"UCODE"),
                (".linux", &kernel),
            ],
        );
        let parts = x86(&bytes).unwrap().uki.unwrap();
        let pieces: Vec<&[u8]> = parts
            .initrds
            .iter()
            .map(|s| s.slice(&bytes).unwrap())
            .collect();
        assert_eq!(pieces, vec![&b"UCODE"[..], &b"MAIN"[..]]);
        assert_eq!(parts.initrd_len, 9);
        assert_eq!(parts.cmdline, None);
        assert_eq!(parts.osrel, None);
    }

    #[test]
    fn uki_profile_zero_overrides_base() {
        let kernel = BzImage::default().build();
        let bytes = pe(
            0x8664,
            &[
                (".cmdline", b"base"),
                (".linux", &kernel),
                (".profile", b"ID=default"),
                (".cmdline", b"profile0"),
                (".profile", b"ID=debug"),
                (".cmdline", b"profile1"),
            ],
        );
        let parts = x86(&bytes).unwrap().uki.unwrap();
        assert_eq!(parts.cmdline.as_deref(), Some("profile0"));
        assert_eq!(parts.profile, Some(0));
    }

    #[test]
    fn uki_missing_linux() {
        let bytes = pe(0x8664, &[(".osrel", OSREL.as_bytes()), (".initrd", b"x")]);
        assert_eq!(x86(&bytes), Err(ImageError::UkiMissingLinux));
        // A PE with no UKI sections at all is just not a kernel.
        let bytes = pe(0x8664, &[(".text", &[0xC3; 16])]);
        assert!(matches!(x86(&bytes), Err(ImageError::NotAKernel { .. })));
    }

    #[test]
    fn uki_section_virtual_size_beyond_raw_data() {
        let mut bytes = uki(&BzImage::default().build());
        let sh = section_header(5); // .linux
        let raw = le_u32(&bytes, sh + 16).unwrap();
        bytes[sh + 8..sh + 12].copy_from_slice(&(raw + 1).to_le_bytes());
        assert_eq!(
            x86(&bytes),
            Err(ImageError::SectionSizeMismatch {
                section: ".linux".into(),
                virtual_size: u64::from(raw) + 1,
                raw_size: u64::from(raw)
            })
        );
    }

    #[test]
    fn uki_section_outside_file() {
        let full = uki(&BzImage::default().build());
        // Truncate inside .linux.
        let cut = &full[..full.len() - 1024];
        assert!(matches!(
            x86(cut),
            Err(ImageError::SectionOutsideFile { ref section, .. }) if section == ".linux"
        ));
        // Or point .cmdline past the end.
        let mut bytes = full.clone();
        let sh = section_header(2);
        bytes[sh + 20..sh + 24].copy_from_slice(&(full.len() as u32).to_le_bytes());
        assert!(matches!(
            x86(&bytes),
            Err(ImageError::SectionOutsideFile { ref section, .. }) if section == ".cmdline"
        ));
    }

    #[test]
    fn uki_with_bad_embedded_kernel() {
        let kernel = BzImage {
            protocol: 0x0209,
            ..Default::default()
        }
        .build();
        match x86(&uki(&kernel)) {
            Err(ImageError::UkiLinux(inner)) => assert!(
                matches!(*inner, ImageError::ProtocolTooOld { .. }),
                "{inner:?}"
            ),
            other => panic!("{other:?}"),
        }
        // An empty .linux.
        let bytes = pe(0x8664, &[(".linux", b"")]);
        match x86(&bytes) {
            Err(ImageError::UkiLinux(inner)) => assert_eq!(*inner, ImageError::Empty),
            other => panic!("{other:?}"),
        }
        // A UKI inside a UKI.
        let inner_uki = uki(&BzImage::default().build());
        match x86(&pe(0x8664, &[(".linux", &inner_uki)])) {
            Err(ImageError::UkiLinux(inner)) => {
                assert!(matches!(*inner, ImageError::NotAKernel { .. }))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cmdline_limits() {
        let img = x86(&BzImage::default().build()).unwrap();
        assert_eq!(img.max_cmdline_len(), 2047 - 31);
        img.check_cmdline(&"a".repeat(2016)).unwrap();
        assert_eq!(
            img.check_cmdline(&"a".repeat(2017)),
            Err(ImageError::CmdlineTooLong {
                len: 2017,
                max: 2016,
                cmdline_size: 2047
            })
        );
        assert_eq!(
            img.check_cmdline("root=x\0init=/bin/sh"),
            Err(ImageError::CmdlineHasNul)
        );
    }

    #[test]
    fn os_release_parsing() {
        let m = parse_os_release(
            "NAME=\"Fedora \\\"Linux\\\"\"\nID=fedora\n\n# x\nBAD LINE\n=novalue\nEMPTY=\nQ='a b'\nDOLLAR=\"\\$HOME\"\n",
        );
        assert_eq!(m["NAME"], "Fedora \"Linux\"");
        assert_eq!(m["ID"], "fedora");
        assert_eq!(m["EMPTY"], "");
        assert_eq!(m["Q"], "a b");
        assert_eq!(m["DOLLAR"], "$HOME");
        assert_eq!(m.len(), 5);
    }

    #[test]
    fn initramfs_checks() {
        assert_eq!(check_initramfs(b""), Err(ImageError::InitramfsEmpty));
        assert_eq!(check_initramfs(b"070701000000"), Ok(InitramfsFormat::Cpio));
        assert_eq!(
            check_initramfs(&[0x1F, 0x8B, 8, 0]),
            Ok(InitramfsFormat::Gzip)
        );
        assert_eq!(
            check_initramfs(&[0x28, 0xB5, 0x2F, 0xFD, 0]),
            Ok(InitramfsFormat::Zstd)
        );
        assert_eq!(
            check_initramfs(&[0xFD, b'7', b'z', b'X', b'Z', 0]),
            Ok(InitramfsFormat::Xz)
        );
        assert_eq!(
            check_initramfs(&[0; 16]),
            Err(ImageError::InitramfsUnrecognised {
                head: "00 00 00 00 00 00".into()
            })
        );
    }

    #[test]
    fn file_wrappers_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("vmlinuz-missing");
        let e = inspect_file(&missing).unwrap_err();
        assert!(matches!(e.problem, FileProblem::Missing));
        assert!(e.to_string().contains("vmlinuz-missing"), "{e}");

        let empty = dir.path().join("initramfs.img");
        std::fs::write(&empty, b"").unwrap();
        let e = check_initramfs_file(&empty).unwrap_err();
        assert_eq!(e.image_error(), Some(&ImageError::InitramfsEmpty));
        assert!(
            e.to_string().starts_with(&empty.display().to_string()),
            "{e}"
        );
        assert!(matches!(
            check_initramfs_file(&dir.path().join("nope"))
                .unwrap_err()
                .problem,
            FileProblem::Missing
        ));

        let kernel = dir.path().join("vmlinuz");
        std::fs::write(&kernel, BzImage::default().build()).unwrap();
        assert_eq!(inspect_file(&kernel).unwrap().kind, ImageKind::BzImage);
    }
}
