//! The fds one `kexec_file_load` takes, built from files: the kernel checked with
//! [`crate::kernel_image`], a UKI unwrapped (mainline kernels do not take them: `.linux` becomes
//! the kernel fd, `.ucode` + `.initrd` the start of the initrd), and several initrds
//! concatenated into one sealed memfd (the kernel unpacks concatenated cpio archives). A bzImage
//! is passed by its own fd, so an IMA appraisal policy still sees the file's `security.ima` xattr.

use super::KexecError;
use crate::kernel_image::{self, FileCheckError, ImageError, KernelImage};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// The fds and cmdline for one `kexec_file_load`, ready to go.
#[derive(Debug)]
pub struct PreparedLoad {
    /// What was checked: the kernel (or, for a UKI, the kernel inside it).
    pub image: KernelImage,
    pub kernel_fd: OwnedFd,
    pub initrd_fd: Option<OwnedFd>,
    pub cmdline: String,
}

/// One piece of the initrd.
enum InitrdPiece<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

/// Check the kernel, initrds and cmdline and open (or build) the fds, without loading
/// anything. Every refusal here names the file at fault.
pub(crate) fn prepare_load(
    kernel: &Path,
    initrds: &[PathBuf],
    cmdline: &str,
) -> Result<PreparedLoad, KexecError> {
    let mut file = crate::system::files::open_regular(kernel, crate::system::files::Follow::Yes)
        .map_err(|e| io_error(kernel, "open the kernel", e.into()))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .and_then(|_| file.rewind())
        .map_err(|e| io_error(kernel, "read the kernel", e))?;
    let image = kernel_image::inspect(&bytes).map_err(|e| FileCheckError::new(kernel, e))?;
    image
        .check_cmdline(cmdline)
        .map_err(|error| KexecError::Cmdline {
            kernel: kernel.to_path_buf(),
            error,
        })?;
    for initrd in initrds {
        kernel_image::check_initramfs_file(initrd)?;
    }

    let mut pieces: Vec<InitrdPiece<'_>> = Vec::new();
    let kernel_fd = match &image.uki {
        None => OwnedFd::from(file),
        Some(parts) => {
            let linux = slice(&bytes, parts.linux, kernel)?;
            for span in &parts.initrds {
                pieces.push(InitrdPiece::Bytes(slice(&bytes, *span, kernel)?));
            }
            sealed_memfd("fastswitch-kernel", "kernel", &[InitrdPiece::Bytes(linux)])?
        }
    };
    pieces.extend(initrds.iter().map(|p| InitrdPiece::File(p)));
    pieces.retain(|p| !matches!(p, InitrdPiece::Bytes(b) if b.is_empty()));
    let initrd_fd = match pieces.as_slice() {
        [] => None,
        [InitrdPiece::File(path)] => Some(OwnedFd::from(
            crate::system::files::open_regular(path, crate::system::files::Follow::Yes)
                .map_err(|e| io_error(path, "open the initrd", e.into()))?,
        )),
        _ => Some(sealed_memfd("fastswitch-initrd", "initrd", &pieces)?),
    };
    Ok(PreparedLoad {
        image,
        kernel_fd,
        initrd_fd,
        cmdline: cmdline.to_string(),
    })
}

fn io_error(path: &Path, action: &'static str, source: io::Error) -> KexecError {
    KexecError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

fn slice<'a>(
    bytes: &'a [u8],
    span: kernel_image::Span,
    kernel: &Path,
) -> Result<&'a [u8], KexecError> {
    span.slice(bytes).ok_or_else(|| {
        FileCheckError::new(
            kernel,
            ImageError::Corrupt {
                detail: format!("section range {span:?} is not inside the file"),
            },
        )
        .into()
    })
}

/// A sealed memfd holding `pieces` back to back, each padded with NULs to a multiple of 4 bytes
/// so that every cpio archive starts aligned (the kernel's unpacker skips the NULs).
fn sealed_memfd(
    name: &str,
    what: &'static str,
    pieces: &[InitrdPiece<'_>],
) -> Result<OwnedFd, KexecError> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MFdFlags};

    let memfd_err = |source: io::Error| KexecError::Memfd { what, source };
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)
        .map_err(|e| memfd_err(e.into()))?;
    let mut out = File::from(fd);
    let mut written: u64 = 0;
    let last = pieces.len().saturating_sub(1);
    for (i, piece) in pieces.iter().enumerate() {
        let n = match piece {
            InitrdPiece::Bytes(b) => {
                out.write_all(b).map_err(memfd_err)?;
                b.len() as u64
            }
            InitrdPiece::File(path) => {
                let mut f =
                    crate::system::files::open_regular(path, crate::system::files::Follow::Yes)
                        .map_err(|e| io_error(path, "open the initrd", e.into()))?;
                io::copy(&mut f, &mut out).map_err(|e| io_error(path, "copy the initrd", e))?
            }
        };
        written += n;
        let pad = (4 - written % 4) % 4;
        if i != last && pad != 0 {
            out.write_all(&[0; 3][..pad as usize]).map_err(memfd_err)?;
            written += pad;
        }
    }
    let seals = SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE
        | SealFlag::F_SEAL_SEAL;
    fcntl(&out, FcntlArg::F_ADD_SEALS(seals)).map_err(|e| memfd_err(e.into()))?;
    Ok(OwnedFd::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_image::synth::{self, BzImage};
    use crate::kernel_image::ImageKind;

    fn read_all(fd: OwnedFd) -> Vec<u8> {
        let mut f = File::from(fd);
        let mut v = Vec::new();
        f.rewind().unwrap();
        f.read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn prepare_bzimage_with_concatenated_initrds() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz");
        std::fs::write(&kernel, BzImage::default().build()).unwrap();
        let a = dir.path().join("early.cpio");
        let b = dir.path().join("main.img");
        std::fs::write(&a, b"070701abc").unwrap(); // 9 bytes: padded to 12
        std::fs::write(&b, [0x28, 0xB5, 0x2F, 0xFD, 1, 2]).unwrap();

        let p = prepare_load(&kernel, &[a.clone(), b.clone()], "root=/dev/vda ro").unwrap();
        assert_eq!(p.image.kind, ImageKind::BzImage);
        assert_eq!(read_all(p.kernel_fd), std::fs::read(&kernel).unwrap());
        let mut want = b"070701abc\0\0\0".to_vec();
        want.extend_from_slice(&[0x28, 0xB5, 0x2F, 0xFD, 1, 2]);
        assert_eq!(read_all(p.initrd_fd.unwrap()), want);

        // One initrd: its own fd, no copy. None: no fd.
        let p = prepare_load(&kernel, std::slice::from_ref(&b), "").unwrap();
        assert_eq!(read_all(p.initrd_fd.unwrap()), std::fs::read(&b).unwrap());
        assert!(prepare_load(&kernel, &[], "").unwrap().initrd_fd.is_none());
    }

    #[test]
    fn prepare_unwraps_a_uki() {
        let dir = tempfile::tempdir().unwrap();
        let kernel_bytes = BzImage::default().build();
        let uki = dir.path().join("linux.efi");
        std::fs::write(&uki, synth::uki(&kernel_bytes)).unwrap();
        let extra = dir.path().join("extra.cpio");
        std::fs::write(&extra, b"070701extra").unwrap();

        let p = prepare_load(&uki, std::slice::from_ref(&extra), "root=LABEL=root").unwrap();
        assert_eq!(p.image.kind, ImageKind::Uki);
        assert_eq!(read_all(p.kernel_fd), kernel_bytes);
        // The UKI's .initrd (19 bytes, padded to 20), then the extra initrd.
        let mut want = b"070701-initrd-bytes\0".to_vec();
        want.extend_from_slice(b"070701extra");
        assert_eq!(read_all(p.initrd_fd.unwrap()), want);
    }

    #[test]
    fn memfd_is_sealed() {
        let fd = sealed_memfd("t", "initrd", &[InitrdPiece::Bytes(b"abc")]).unwrap();
        let mut f = File::from(fd);
        assert!(
            f.write_all(b"more").is_err(),
            "sealed memfd must refuse writes"
        );
    }

    #[test]
    fn prepare_refuses_bad_inputs_before_any_syscall() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz");

        let e = prepare_load(&kernel, &[], "").unwrap_err();
        assert!(matches!(e, KexecError::Io { .. }));
        assert!(e.to_string().contains("vmlinuz"), "{e}");

        std::fs::write(&kernel, vec![0u8; 8192]).unwrap();
        match prepare_load(&kernel, &[], "").unwrap_err() {
            KexecError::Image(f) => {
                assert_eq!(f.image_error(), Some(&ImageError::Zeroed { len: 8192 }));
                assert!(f.to_string().starts_with(&kernel.display().to_string()));
            }
            other => panic!("{other:?}"),
        }

        std::fs::write(&kernel, BzImage::default().build()).unwrap();
        let e = prepare_load(&kernel, &[], &"x".repeat(3000)).unwrap_err();
        assert!(matches!(
            e,
            KexecError::Cmdline {
                error: ImageError::CmdlineTooLong { .. },
                ..
            }
        ));

        let empty = dir.path().join("initrd.img");
        std::fs::write(&empty, b"").unwrap();
        match prepare_load(&kernel, std::slice::from_ref(&empty), "").unwrap_err() {
            KexecError::Image(f) => {
                assert_eq!(f.image_error(), Some(&ImageError::InitramfsEmpty));
                assert_eq!(f.path, empty);
            }
            other => panic!("{other:?}"),
        }
        match prepare_load(&kernel, &[dir.path().join("gone.img")], "").unwrap_err() {
            KexecError::Image(f) => {
                assert!(matches!(f.problem, kernel_image::FileProblem::Missing));
            }
            other => panic!("{other:?}"),
        }
    }
}
