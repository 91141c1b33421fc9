//! Writes the seed corpora: `cargo run --manifest-path fuzz/Cargo.toml --example gen_seeds [DIR]`
//! (DIR defaults to `fuzz/corpus`). Seeds are small realistic inputs, one file each; the GVariant
//! ones come from fastswitch's own encoders, the kernel ones are hand-built headers (the layout
//! mirrors `kernel_image::synth`, which is test-only). Re-running overwrites `seed-*` files only.

use fastswitch::discover::state::encode;
use std::path::{Path, PathBuf};

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    assert!(bytes.len() <= 64 * 1024, "seed {target}/{name} is over 64 KiB");
    let d = dir.join(target);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(format!("seed-{name}")), bytes).unwrap();
}

struct BzImage {
    setup_sects: u8,
    protocol: u16,
    loadflags: u8,
    xloadflags: u16,
    version: Option<&'static str>,
    pe_machine: Option<u16>,
    payload_len: usize,
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
            payload_len: 256,
        }
    }
}

impl BzImage {
    fn build(&self) -> Vec<u8> {
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
        let payload: Vec<u8> = (0..self.payload_len as u32)
            .map(|i| (i % 251) as u8 + 1)
            .collect();
        b[0x1F1] = self.setup_sects;
        let syssize = payload.len().div_ceil(16) as u32;
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
        let payload_len = payload.len() as u32 - 32;
        b[0x24C..0x250].copy_from_slice(&payload_len.to_le_bytes());
        if let Some(v) = self.version {
            let at = 0x300;
            b[0x20E..0x210].copy_from_slice(&((at - 0x200) as u16).to_le_bytes());
            b[at..at + v.len()].copy_from_slice(v.as_bytes());
        }
        b.extend_from_slice(&payload);
        b.resize(kern16 + syssize as usize * 16, 0);
        b
    }
}

const SECTION_TABLE_OFFSET: usize = 0x40 + 4 + 20 + 240;

/// A minimal PE32+ EFI application with the given sections.
fn pe(machine: u16, sections: &[(&str, &[u8])]) -> Vec<u8> {
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
    b[opt + 32..opt + 36].copy_from_slice(&0x1000u32.to_le_bytes());
    b[opt + 36..opt + 40].copy_from_slice(&0x200u32.to_le_bytes());
    b[opt + 60..opt + 64].copy_from_slice(&(align(headers_end) as u32).to_le_bytes());
    b[opt + 68..opt + 70].copy_from_slice(&10u16.to_le_bytes());
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
    b[opt + 56..opt + 60].copy_from_slice(&vaddr.to_le_bytes());
    b
}

fn uki(kernel: &[u8], profiles: bool) -> Vec<u8> {
    let osrel = b"NAME=\"Test OS\"\nID=test\n# comment\nVERSION_ID='42'\n";
    let mut sections: Vec<(&str, &[u8])> = vec![
        (".text", &[0xC3; 64]),
        (".osrel", osrel),
        (".cmdline", b"root=LABEL=root ro quiet\n\0"),
        (".uname", b"6.1.0-99-test-amd64\n"),
        (".ucode", b"070701-ucode"),
        (".initrd", b"070701-initrd-bytes"),
        (".linux", kernel),
    ];
    if profiles {
        sections.push((".profile", b"ID=default\n"));
        sections.push((".cmdline", b"root=LABEL=root ro debug\n"));
        sections.push((".profile", b"ID=rescue\n"));
        sections.push((".cmdline", b"rescue\n"));
    }
    pe(0x8664, &sections)
}

fn kernel_seeds(dir: &Path) {
    let t = "kernel_image";
    let bz = BzImage::default().build();
    write(dir, t, "bzimage", &bz);
    write(
        dir,
        t,
        "bzimage-efistub",
        &BzImage {
            pe_machine: Some(0x8664),
            ..Default::default()
        }
        .build(),
    );
    write(
        dir,
        t,
        "bzimage-old-protocol",
        &BzImage {
            protocol: 0x0205,
            setup_sects: 0,
            version: None,
            ..Default::default()
        }
        .build(),
    );
    write(dir, t, "bzimage-truncated", &bz[..0x300]);
    write(dir, t, "uki", &uki(&bz, false));
    write(dir, t, "uki-profiles", &uki(&bz, true));
    write(
        dir,
        t,
        "uki-arm64",
        &pe(0xAA64, &[(".linux", b"ARMd"), (".osrel", b"ID=x\n")]),
    );
    let mut arm = vec![0u8; 64];
    arm[0x38..0x3C].copy_from_slice(b"ARM\x64");
    write(dir, t, "arm64-image", &arm);
    write(dir, t, "initramfs-newc", b"070701000000010000");
    write(dir, t, "gzip", &[0x1F, 0x8B, 8, 0, 0, 0, 0, 0]);
    // The head of a real kernel and UKI (their PE and setup headers), when the VM tests' kernel
    // has been fetched.
    let real = Path::new("/var/tmp/fastswitch-test-kernel");
    for (file, name) in [("vmlinuz", "real-vmlinuz-head"), ("uki.efi", "real-uki-head")] {
        if let Ok(bytes) = std::fs::read(real.join(file)) {
            write(dir, t, name, &bytes[..bytes.len().min(16 * 1024)]);
        }
    }
}

fn main() {
    let dir: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));

    // bls_entry
    let t = "bls_entry";
    write(
        &dir,
        t,
        "ostree",
        b"title Debian GNU/Linux 12 (bookworm) 12 (ostree:0)\n\
          version 2\n\
          options root=UUID=0f1e2d3c-aaaa-bbbb-cccc-0123456789ab rw console=ttyS0 ostree=/ostree/boot.1/debian/1f6f3c2a9a0d5e8b7c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b/0\n\
          linux /ostree/debian-1f6f3c2a9a0d5e8b7c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b/vmlinuz-6.1.0-26-cloud-amd64\n\
          initrd /ostree/debian-1f6f3c2a9a0d5e8b7c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b/initramfs-6.1.0-26-cloud-amd64.img\n\
          aboot /ostree/deploy/debian/deploy/abc.0/usr/lib/ostree-boot/aboot.img\n",
    );
    write(
        &dir,
        t,
        "overlay-initrd",
        b"# comment\ntitle x\nversion 10\noptions quiet ostree=/ostree/boot.0/fedora-coreos/ff/1\nlinux /boot/ostree/fedora-coreos-ff/vmlinuz\ninitrd /ostree/fedora-coreos-ff/initramfs.img\ninitrd /ostree/initramfs-overlays/0123.img\ndevicetree /dtb\n",
    );

    // origin_keyfile
    let t = "origin_keyfile";
    write(
        &dir,
        t,
        "refspec",
        b"[origin]\nrefspec=debian:debian/bookworm/x86_64\n",
    );
    write(
        &dir,
        t,
        "container-pinned",
        b"# written by bootc\n[origin]\ncontainer-image-reference=ostree-unverified-registry:quay.io/example/os:latest\nunlocked=hotfix\n\n[libostree-transient]\npinned=true\n\n[rpmostree]\nrequested-packages=htop\\ttmux\\nvim\\s\\\\\n",
    );

    // gvariant_state
    let t = "gvariant_state";
    write(&dir, t, "booted", &encode::booted(2049, 1234567));
    write(&dir, t, "booted-empty", b"");
    write(
        &dir,
        t,
        "staged-kargs-locked",
        &encode::staged(
            "1f6f3c2a9a0d5e8b7c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b.0",
            "debian",
            "ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00",
            Some(&["root=/dev/vda", "rw", "console=ttyS0"]),
            true,
        ),
    );
    write(
        &dir,
        t,
        "staged-plain",
        &encode::staged("abc.1", "fedora-coreos", "ee", None, false),
    );

    kernel_seeds(&dir);

    // unit_file: one unit, and an old\0new pair
    let t = "unit_file";
    let svc = "[Unit]\nDescription=Example daemon\nAfter=network.target\n\n[Service]\nType=notify\nExecStart=/usr/bin/exampled --config /etc/example.conf \\\n  --verbose\n# a comment inside\nExecReload=/bin/kill -HUP $MAINPID\nRestart=on-failure\nEnvironment=A=1 B=2\nEnvironment=\n\n[Install]\nWantedBy=multi-user.target\n";
    write(&dir, t, "service", svc.as_bytes());
    let new = svc.replace("--verbose", "--quiet").replace("Restart=on-failure", "Restart=always\nRefuseManualStop=yes");
    write(&dir, t, "pair", format!("{svc}\0{new}").as_bytes());
    write(
        &dir,
        t,
        "socket-pair",
        b"\xef\xbb\xbf[Socket]\nListenStream=/run/x.sock\nAccept=no\n\0[Socket]\nListenStream=/run/y.sock\n[Install]\nWantedBy=sockets.target\n",
    );

    // proc_maps: real maps of this process, plus a crafted deleted-file line and a cgroup file
    let t = "proc_maps";
    if let Ok(maps) = std::fs::read_to_string("/proc/self/maps") {
        let head: String = maps.lines().take(12).map(|l| format!("{l}\n")).collect();
        write(&dir, t, "self-maps", head.as_bytes());
    }
    write(
        &dir,
        t,
        "deleted-and-cgroup",
        b"7f2a1c000000-7f2a1c021000 r-xp 00002000 fd:01 1311234                    /usr/lib/x86_64-linux-gnu/libfoo.so.1 (deleted)\n\
          55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0                          [heap]\n\
          7ffd5c000000-7ffd5c021000 r--p 00000000 00:1f 42  /tmp/a\\012b\n\
          0::/system.slice/example.service\n\
          1:name=systemd:/system.slice/example.service\n",
    );

    // mountinfo: this process's, plus a stacked /usr as fastswitch leaves it
    let t = "mountinfo";
    if let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") {
        let head: String = mi.lines().take(12).map(|l| format!("{l}\n")).collect();
        write(&dir, t, "self-mountinfo", head.as_bytes());
    }
    write(
        &dir,
        t,
        "stacked-usr",
        b"22 1 252:1 /ostree/deploy/debian/deploy/abc.0 / rw,relatime shared:1 - ext4 /dev/vda1 rw\n\
          23 22 252:1 /ostree/deploy/debian/deploy/abc.0/usr /usr ro,relatime shared:2 - ext4 /dev/vda1 rw\n\
          90 23 252:1 /ostree/deploy/debian/deploy/def.0/usr /usr ro,relatime shared:40 - ext4 /dev/vda1 rw\n\
          91 22 0:5 / /my\\040dir rw - tmpfs tmpfs rw\n",
    );
    eprintln!("seeds written under {}", dir.display());
}
