//! QEMU test-VM harness for fastswitch scenario tests (`tests/vm_*.rs`).
//!
//! The guest is an ostree-booted Debian built by `vm/build-image.sh` (cached),
//! one of two [`Guest`]s. Each [`Vm`] boots a private sparse copy of that disk
//! image with QEMU/TCG.
//! - [`Guest::Debian12`] (bookworm, one ext4 disk): the harness is the
//!   bootloader. Before every QEMU start it reads the newest BLS entry from the
//!   disk image (debugfs) and boots its kernel/initrd/options directly.
//! - [`Guest::Debian13`] (trixie, GPT disk with ESP, /boot and root
//!   partitions): boots like real hardware, OVMF firmware from pflash, then
//!   GRUB from the ESP, which reads ostree's `/boot/loader/grub.cfg`.
//!
//! `-no-reboot` turns a guest reboot into a QEMU exit, so a cold reboot is
//! "QEMU exits, new QEMU" (through the harness's BLS reading or through
//! firmware + GRUB), while a kexec stays in the same QEMU and is seen as a new
//! boot id.
//!
//! Commands run through a small agent on a virtio-serial port; the freshly
//! built fastswitch binary reaches the guest on a second, read-only disk,
//! mounted at `/run/tools` (see [`TOOLS_DIR`]).
//!
//! Only one VM runs at a time (a lock file under the cache dir), since the
//! machines this runs on have 2 cores and TCG is CPU bound.
#![allow(dead_code)] // every tests/vm_*.rs uses a different subset

mod agent;
mod b64;
pub mod composefs;
pub mod disk;
pub mod ostree;
mod qmp;
pub mod s0;

pub use agent::{AgentError, Output};

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use agent::Agent;
use qmp::Qmp;
use sha2::{Digest, Sha256};

/// Where the tools disk is mounted in the guest.
pub const TOOLS_DIR: &str = "/run/tools";
/// fastswitch in the guest, from the tools disk.
pub const GUEST_FASTSWITCH: &str = "/run/tools/fastswitch";

const TOOLS_LABEL: &str = "fstools";
/// Fixed size of the tools disk (sparse), see [`Vm::make_tools_disk`].
const TOOLS_DISK_MIB: u64 = 1024;
/// Bump when the saved-guest layout or the QEMU machine definition changes.
const SNAPSHOT_FORMAT: u32 = 1;
const BOOT_TIMEOUT: Duration = Duration::from_secs(400);
const EXEC_TIMEOUT: Duration = Duration::from_secs(600);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(180);

/// OVMF firmware (Debian package `ovmf`) for [`Guest::Debian13`].
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Which guest image a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Guest {
    /// Debian 12 (bookworm); the harness boots the newest BLS entry directly.
    Debian12,
    /// Debian 13 (trixie); GPT disk, separate /boot, OVMF + GRUB.
    Debian13,
}

impl Guest {
    /// `FASTSWITCH_VM_GUEST` (`debian12` or `debian13`), default Debian 12.
    pub fn from_env() -> Guest {
        match std::env::var("FASTSWITCH_VM_GUEST") {
            Err(_) => Guest::Debian12,
            Ok(v) => Guest::parse(&v)
                .unwrap_or_else(|| panic!("FASTSWITCH_VM_GUEST={v:?}: debian12 or debian13")),
        }
    }

    pub fn parse(name: &str) -> Option<Guest> {
        match name {
            "" | "debian12" => Some(Guest::Debian12),
            "debian13" => Some(Guest::Debian13),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Guest::Debian12 => "debian12",
            Guest::Debian13 => "debian13",
        }
    }

    /// Boots through firmware and a bootloader on the disk (no `-kernel`).
    pub fn firmware_boot(self) -> bool {
        self == Guest::Debian13
    }
}

fn cache_dir() -> PathBuf {
    std::env::var_os("FASTSWITCH_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/fastswitch-vm"))
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Print one timing line to stderr (visible in CI logs even without --nocapture
/// when the test fails, and always with it).
fn timing(vm: &str, what: &str, d: Duration) {
    eprintln!("[vm {vm}] {what:<34} {:>7.1} s", secs(d));
}

// ---------------------------------------------------------------------------
// Image

/// The cached guest image built by `vm/build-image.sh`.
#[derive(Debug, Clone)]
pub struct Image {
    pub guest: Guest,
    pub dir: PathBuf,
    pub disk: PathBuf,
    /// `image.json`: kernel_version, kargs, refs (name -> checksum), ...
    pub manifest: serde_json::Value,
}

impl Image {
    /// The image of the guest chosen by `FASTSWITCH_VM_GUEST` (default Debian 12).
    pub fn get() -> Image {
        Image::get_guest(Guest::from_env())
    }

    /// Build the image if needed (cached by vm/build-image.sh) and return it.
    /// Runs the script once per guest and test process.
    pub fn get_guest(guest: Guest) -> Image {
        static IMAGES: [OnceLock<Image>; 2] = [OnceLock::new(), OnceLock::new()];
        let slot = match guest {
            Guest::Debian12 => &IMAGES[0],
            Guest::Debian13 => &IMAGES[1],
        };
        slot.get_or_init(|| Image::build(guest)).clone()
    }

    fn build(guest: Guest) -> Image {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("vm/build-image.sh");
        let t = Instant::now();
        let out = Command::new("bash")
            .arg(&script)
            .args(["--guest", guest.name()])
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{} failed ({}); stdout:\n{stdout}",
            script.display(),
            out.status
        );
        let dir = PathBuf::from(
            stdout
                .lines()
                .last()
                .expect("build-image.sh printed no image path")
                .trim(),
        );
        timing(
            "image",
            &format!("vm/build-image.sh --guest {}", guest.name()),
            t.elapsed(),
        );
        let manifest_path = dir.join("image.json");
        let manifest: serde_json::Value = serde_json::from_slice(
            &fs::read(&manifest_path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", manifest_path.display())),
        )
        .unwrap_or_else(|e| panic!("parsing {}: {e}", manifest_path.display()));
        let disk = dir.join(manifest["disk"].as_str().expect("image.json: disk"));
        if let Some(g) = manifest["guest"].as_str() {
            assert_eq!(g, guest.name(), "image.json guest of {}", dir.display());
        }
        Image {
            guest,
            dir,
            disk,
            manifest,
        }
    }

    /// Checksum of a ref in the image's ostree repo (e.g. "test/layered").
    pub fn ref_checksum(&self, name: &str) -> String {
        self.manifest["refs"][name]
            .as_str()
            .unwrap_or_else(|| panic!("image.json has no ref {name:?}"))
            .to_string()
    }

    /// Checksum of the deployment the pristine image boots.
    pub fn booted_checksum(&self) -> String {
        self.manifest["booted_checksum"]
            .as_str()
            .expect("image.json: booted_checksum")
            .to_string()
    }

    pub fn os(&self) -> String {
        self.manifest["os"]
            .as_str()
            .expect("image.json: os")
            .to_string()
    }

    /// Byte offset of a partition (by its name in image.json: esp, boot, root)
    /// in the disk image; `None` for the unpartitioned Debian 12 image.
    pub fn partition_offset(&self, name: &str) -> Option<u64> {
        self.manifest["partitions"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["offset"].as_u64().expect("image.json: partition offset"))
    }

    pub fn kernel_version(&self) -> String {
        self.manifest["kernel_version"]
            .as_str()
            .expect("image.json: kernel_version")
            .to_string()
    }
}

// ---------------------------------------------------------------------------
// Vm

/// Options for [`Vm::boot_with`].
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// Short scenario name: run dir and log prefix.
    pub name: String,
    /// Files for the tools disk: (host path, name in /run/tools).
    pub tools: Vec<(PathBuf, String)>,
    pub memory_mib: u32,
    pub smp: u32,
    /// Appended to the BLS options of every cold boot.
    pub extra_kargs: String,
    /// Boot from firmware instead of restoring the saved booted guest
    /// (also forced by FASTSWITCH_VM_COLD_BOOT=1).
    pub cold_boot: bool,
}

/// The fastswitch binary the guest runs: `FASTSWITCH_VM_BIN`, else this build's.
pub fn guest_binary() -> PathBuf {
    match std::env::var_os("FASTSWITCH_VM_BIN") {
        Some(p) if !p.is_empty() => {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "FASTSWITCH_VM_BIN={}: no such file",
                p.display()
            );
            p
        }
        _ => PathBuf::from(env!("CARGO_BIN_EXE_fastswitch")),
    }
}

/// Which build the guest runs, for the results JSON: `test` (unoptimised) or the path given.
pub fn guest_binary_kind() -> String {
    match std::env::var_os("FASTSWITCH_VM_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p).display().to_string(),
        _ => "test (unoptimised)".to_string(),
    }
}

impl VmOptions {
    /// Default options; the tools disk carries the fastswitch binary of this build (the test
    /// profile: unoptimised), or `FASTSWITCH_VM_BIN` when set — e.g. `target/release/fastswitch`
    /// to measure the timings a packaged (optimised) build gives.
    pub fn new(name: &str) -> VmOptions {
        VmOptions {
            name: name.to_string(),
            tools: vec![(guest_binary(), "fastswitch".to_string())],
            memory_mib: 2048,
            smp: 2,
            extra_kargs: String::new(),
            cold_boot: std::env::var_os("FASTSWITCH_VM_COLD_BOOT").is_some_and(|v| v != "0"),
        }
    }

    pub fn tool(mut self, host_path: impl Into<PathBuf>, name: &str) -> VmOptions {
        self.tools.push((host_path.into(), name.to_string()));
        self
    }

    pub fn cold_boot(mut self, yes: bool) -> VmOptions {
        self.cold_boot = yes;
        self
    }

    /// Everything a saved guest depends on besides the image.
    fn snapshot_key(&self) -> String {
        let qemu = Command::new("qemu-system-x86_64")
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let key = format!(
            "v{SNAPSHOT_FORMAT}|{qemu}|{}|{}|{TOOLS_DISK_MIB}|{}",
            self.memory_mib, self.smp, self.extra_kargs
        );
        let digest = Sha256::digest(key.as_bytes());
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

/// One boot of the guest, as seen by the harness.
#[derive(Debug, Clone)]
pub struct BootInfo {
    pub boot_id: String,
    /// `systemctl is-system-running --wait`: "running" or e.g. "degraded".
    pub state: String,
    /// Failed units when state is not "running".
    pub failed_units: String,
    /// From the start of the wait (QEMU start, or the call for kexec) to the agent.
    pub to_agent: Duration,
    /// ... to the end of startup (is-system-running --wait returned).
    pub to_running: Duration,
    /// Firmware-booted guests, cold boots: QEMU start → OVMF starts the boot
    /// option (`BdsDxe: starting` on the serial console).
    pub firmware: Option<Duration>,
    /// Firmware-booted guests, cold boots: from there to the kernel start
    /// (host time of the agent greeting minus the guest uptime it reports);
    /// GRUB, including its 1 s menu timeout and loading kernel + initrd.
    pub loader: Option<Duration>,
}

impl BootInfo {
    /// The figures of this boot, for a scenario's results file.
    pub fn report(&self) -> serde_json::Value {
        serde_json::json!({
            "state": self.state,
            "to_agent_s": secs(self.to_agent),
            "to_running_s": secs(self.to_running),
            "firmware_s": self.firmware.map(secs),
            "loader_s": self.loader.map(secs),
        })
    }
}

/// Phases of the current boot as systemd recorded them (monotonic clock, which starts when the
/// kernel starts, whether by firmware or by kexec).
#[derive(Debug, Clone, Copy)]
pub struct BootPhases {
    /// Kernel start → initrd's systemd started.
    pub kernel: Duration,
    /// initrd → switch-root into the real root's systemd.
    pub initrd: Duration,
    /// Real root's systemd → startup finished.
    pub userspace: Duration,
    /// Kernel start → startup finished.
    pub total: Duration,
}

/// Phases of [`Vm::cold_reboot`].
#[derive(Debug, Clone)]
pub struct RebootTimings {
    /// `systemctl reboot` until QEMU exited.
    pub shutdown: Duration,
    /// Journal replay + newest BLS entry + kernel/initrd read from the image.
    pub bootloader: Duration,
    pub boot: BootInfo,
    pub total: Duration,
}

/// What QEMU boots: a kernel (from a BLS entry), or a saved guest to restore.
struct BootSpec {
    kernel: PathBuf,
    initrd: PathBuf,
    append: String,
    entry: disk::BlsEntry,
    /// Saved guest state (zstd-compressed migration stream) to restore.
    incoming: Option<PathBuf>,
}

pub struct Vm {
    name: String,
    guest: Guest,
    /// Where the /boot file system starts in the disk image (Debian 13).
    boot_offset: Option<u64>,
    opts: VmOptions,
    run_dir: PathBuf,
    disk: PathBuf,
    tools_img: PathBuf,
    serial_log: PathBuf,
    qemu_log: PathBuf,
    socket: PathBuf,
    qmp_socket: PathBuf,
    /// Per-VM copy of the OVMF variable store (firmware-booted guests).
    ovmf_vars: PathBuf,
    /// When the current QEMU started, and when its firmware started the boot
    /// option (watched on the serial log, firmware-booted guests only).
    launched: Option<Instant>,
    firmware_done: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
    child: Option<Child>,
    agent: Option<Agent>,
    starts: u32,
    restored: bool,
    /// Figures of the boot this Vm started with: the cold boot, or the restore
    /// plus the saved guest's cold boot (see [`Vm::boot_report`]).
    boot_report: serde_json::Value,
    boot_id: String,
    /// BLS entry of the last cold boot.
    entry: disk::BlsEntry,
    keep: bool,
    _lock: Option<File>,
}

impl Vm {
    /// A booted guest on a fresh copy of `image`, with default options
    /// (fastswitch on the tools disk). By default the guest is restored from
    /// a saved, fully booted state of the image (made once per image by a real
    /// cold boot, a few seconds instead of a TCG boot); see [`VmOptions`].
    pub fn boot(image: &Image, name: &str) -> Vm {
        Vm::boot_with(image, VmOptions::new(name))
    }

    pub fn boot_with(image: &Image, opts: VmOptions) -> Vm {
        let lock = vm_lock(&opts.name);
        let base = std::env::var_os("FASTSWITCH_VM_RUNDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm"));
        let snapshot = if opts.cold_boot {
            None
        } else {
            Some(Snapshot::get(image, &opts))
        };
        let mut vm = Vm::new(image, base.join(&opts.name), opts, Some(lock));
        let name = vm.name.clone();
        eprintln!(
            "[vm {name}] run dir {} (serial log: {})",
            vm.run_dir.display(),
            vm.serial_log.display()
        );
        let src = snapshot.as_ref().map_or(&image.disk, |s| &s.disk);
        vm.copy_disk(src);
        let t = Instant::now();
        vm.make_tools_disk();
        timing(&name, "tools disk", t.elapsed());

        match snapshot {
            Some(snap) => vm.restore(&snap),
            None => {
                let (spec, bootloader) = vm.bootloader();
                timing(&name, "bootloader (BLS from image)", bootloader);
                vm.launch(&spec, "cold boot");
                let info = vm.wait_boot(None, BOOT_TIMEOUT);
                vm.boot_report = serde_json::json!({
                    "restored": false,
                    "cold_boot": info.report(),
                });
                if info.state != "running" {
                    vm.fail(&format!(
                        "fresh guest is not cleanly up: state {:?}, failed units:\n{}",
                        info.state, info.failed_units
                    ));
                }
            }
        }
        vm
    }

    fn new(image: &Image, run_dir: PathBuf, opts: VmOptions, lock: Option<File>) -> Vm {
        let name = opts.name.clone();
        if run_dir.exists() {
            fs::remove_dir_all(&run_dir)
                .unwrap_or_else(|e| panic!("removing old {}: {e}", run_dir.display()));
        }
        fs::create_dir_all(run_dir.join("boot")).expect("creating VM run dir");
        // sun_path is limited to 108 bytes
        let sock = |file: &str| {
            let p = run_dir.join(file);
            if p.as_os_str().len() > 100 {
                std::env::temp_dir().join(format!(
                    "fastswitch-vm-{}-{name}-{file}",
                    std::process::id()
                ))
            } else {
                p
            }
        };
        assert!(
            !image.guest.firmware_boot() || opts.extra_kargs.is_empty(),
            "extra_kargs need the harness as bootloader ({} boots through GRUB)",
            image.guest.name()
        );
        Vm {
            name: name.clone(),
            guest: image.guest,
            boot_offset: image.partition_offset("boot"),
            ovmf_vars: run_dir.join("OVMF_VARS.fd"),
            launched: None,
            firmware_done: Default::default(),
            disk: run_dir.join("disk.img"),
            tools_img: run_dir.join("tools.img"),
            serial_log: run_dir.join("serial.log"),
            qemu_log: run_dir.join("qemu.log"),
            socket: sock("agent.sock"),
            qmp_socket: sock("qmp.sock"),
            run_dir,
            opts,
            child: None,
            agent: None,
            starts: 0,
            restored: false,
            boot_report: serde_json::Value::Null,
            boot_id: String::new(),
            entry: disk::BlsEntry::default(),
            keep: std::env::var_os("FASTSWITCH_VM_KEEP").is_some(),
            _lock: lock,
        }
    }

    fn copy_disk(&self, src: &Path) {
        let t = Instant::now();
        let st = Command::new("cp")
            .arg("--sparse=always")
            .arg(src)
            .arg(&self.disk)
            .status()
            .expect("running cp");
        assert!(st.success(), "cp {} failed", src.display());
        fs::set_permissions(&self.disk, fs::Permissions::from_mode(0o644)).expect("chmod disk");
        timing(&self.name, "copy disk image", t.elapsed());
    }

    /// The tools disk always has the same size: a restored guest keeps the
    /// capacity it saw when it was saved.
    fn make_tools_disk(&self) {
        let dir = self.run_dir.join("tools");
        fs::create_dir_all(&dir).expect("creating tools dir");
        for (src, name) in &self.opts.tools {
            fs::copy(src, dir.join(name))
                .unwrap_or_else(|e| panic!("copying tool {}: {e}", src.display()));
        }
        disk::make_ext4(&dir, &self.tools_img, TOOLS_LABEL, TOOLS_DISK_MIB)
            .unwrap_or_else(|e| self.fail(&format!("tools disk: {e}")));
    }

    /// Act as the bootloader: replay the journal, read the newest BLS entry
    /// from the disk image and extract its kernel and initrd. For a
    /// firmware-booted guest only read the newest BLS entry on the /boot
    /// partition as it is on disk (no journal replay: GRUB does not replay it
    /// either), for the logs; GRUB picks what it boots from its grub.cfg.
    fn bootloader(&self) -> (BootSpec, Duration) {
        let t = Instant::now();
        if self.guest.firmware_boot() {
            let offset = self.boot_offset.expect("image.json: no boot partition");
            let dev = PathBuf::from(format!("{}?offset={offset}", self.disk.display()));
            let entry = disk::bls_entries_in(&dev, "/loader/entries")
                .map(|mut v| v.remove(0))
                .unwrap_or_else(|e| self.fail(&format!("reading BLS entries: {e}")));
            let spec = BootSpec {
                kernel: PathBuf::new(),
                initrd: PathBuf::new(),
                append: String::new(),
                entry,
                incoming: None,
            };
            return (spec, t.elapsed());
        }
        let entry = disk::replay_journal(&self.disk)
            .and_then(|()| disk::bls_entries(&self.disk))
            .map(|mut v| v.remove(0))
            .unwrap_or_else(|e| self.fail(&format!("bootloader: {e}")));
        let kernel = self.run_dir.join("boot/vmlinuz");
        let initrd = self.run_dir.join("boot/initrd");
        disk::dump(&self.disk, &format!("/boot{}", entry.linux), &kernel)
            .and_then(|()| disk::dump(&self.disk, &format!("/boot{}", entry.initrd), &initrd))
            .unwrap_or_else(|e| self.fail(&format!("bootloader: {e}")));
        let append = format!("{} {}", entry.options, self.opts.extra_kargs)
            .trim()
            .to_string();
        let spec = BootSpec {
            kernel,
            initrd,
            append,
            entry,
            incoming: None,
        };
        (spec, t.elapsed())
    }

    /// Start QEMU and connect the agent socket.
    fn launch(&mut self, spec: &BootSpec, why: &str) {
        assert!(self.child.is_none(), "QEMU already running");
        self.starts += 1;
        let mut serial = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.serial_log)
            .expect("opening serial log");
        writeln!(
            serial,
            "\n===== fastswitch harness: QEMU start #{} ({why}): BLS {} version {}\n===== options: {}",
            self.starts, spec.entry.file, spec.entry.version, spec.append
        )
        .expect("writing serial log");
        drop(serial);
        let serial_len = fs::metadata(&self.serial_log).map_or(0, |m| m.len());
        eprintln!(
            "[vm {}] {why}: {} ({})",
            self.name, spec.entry.file, spec.entry.title
        );

        let qemu_log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.qemu_log)
            .expect("opening qemu log");
        let _ = fs::remove_file(&self.socket);
        let _ = fs::remove_file(&self.qmp_socket);
        let mut cmd = Command::new("setpriv");
        // QEMU dies with the thread that started it, even on SIGKILL of the test.
        cmd.args(["--pdeathsig", "KILL", "--", "qemu-system-x86_64"]);
        // Keep the machine definition identical for cold boots and restores.
        cmd.args(["-name", &format!("fastswitch-{}", self.name)])
            .args(["-accel", "tcg", "-cpu", "max"])
            .args(["-m", &self.opts.memory_mib.to_string()])
            .args(["-smp", &self.opts.smp.to_string()])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .arg("-no-reboot")
            .arg("-chardev")
            .arg(format!(
                "file,id=ser0,path={},append=on",
                self.serial_log.display()
            ))
            .args(["-serial", "chardev:ser0"])
            .arg("-drive")
            .arg(format!(
                "file={},if=virtio,format=raw,cache=unsafe",
                self.disk.display()
            ))
            .arg("-drive")
            .arg(format!(
                "file={},if=virtio,format=raw,readonly=on",
                self.tools_img.display()
            ))
            .args(["-device", "virtio-rng-pci"])
            .args(["-device", "virtio-serial-pci,id=vser0"])
            .arg("-chardev")
            .arg(format!(
                "socket,id=agent,path={},server=on,wait=off",
                self.socket.display()
            ))
            .args([
                "-device",
                "virtserialport,bus=vser0.0,chardev=agent,name=agent0",
            ])
            .arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                self.qmp_socket.display()
            ));
        if self.guest.firmware_boot() {
            // Like real hardware: firmware from flash, then GRUB from the ESP.
            if !self.ovmf_vars.exists() {
                fs::copy(OVMF_VARS, &self.ovmf_vars)
                    .unwrap_or_else(|e| self.fail(&format!("copying {OVMF_VARS}: {e}")));
            }
            cmd.args(["-machine", "q35"])
                .arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=0,file={OVMF_CODE},readonly=on"
                ))
                .arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=1,file={}",
                    self.ovmf_vars.display()
                ));
            if spec.incoming.is_none() {
                self.watch_firmware(serial_len);
            }
        } else {
            cmd.arg("-kernel")
                .arg(&spec.kernel)
                .arg("-initrd")
                .arg(&spec.initrd)
                .arg("-append")
                .arg(&spec.append);
        }
        if let Some(state) = &spec.incoming {
            cmd.arg("-incoming")
                .arg(format!("exec:zstd -d -q -c '{}'", state.display()));
        }
        cmd.stdin(Stdio::null())
            .stdout(qemu_log.try_clone().expect("dup qemu log"))
            .stderr(qemu_log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| self.fail(&format!("starting QEMU: {e}")));
        self.launched = Some(Instant::now());
        self.child = Some(child);
        self.entry = spec.entry.clone();

        let deadline = Instant::now() + Duration::from_secs(20);
        let stream = loop {
            if let Ok(s) = UnixStream::connect(&self.socket) {
                break s;
            }
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.fail(&format!("QEMU exited at start: {st}"));
            }
            if Instant::now() > deadline {
                self.fail("QEMU agent socket did not appear");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.agent = Some(Agent::new(stream).expect("agent reader thread"));
    }

    /// Note when the firmware starts the boot option (`BdsDxe: starting` on
    /// the serial console, after byte `from` of the serial log).
    fn watch_firmware(&mut self, from: u64) {
        let done = std::sync::Arc::new(std::sync::Mutex::new(None));
        self.firmware_done = done.clone();
        let log = self.serial_log.clone();
        let deadline = Instant::now() + Duration::from_secs(300);
        std::thread::spawn(move || {
            use std::io::{Read, Seek, SeekFrom};
            let mut seen = Vec::new();
            while Instant::now() < deadline {
                if let Ok(mut f) = File::open(&log) {
                    if f.seek(SeekFrom::Start(from + seen.len() as u64)).is_ok() {
                        let _ = f.read_to_end(&mut seen);
                    }
                }
                if seen.windows(18).any(|w| w == b"BdsDxe: starting B") {
                    *done.lock().unwrap() = Some(Instant::now());
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
    }

    fn qmp(&self) -> Qmp {
        Qmp::connect(&self.qmp_socket, Duration::from_secs(20))
            .unwrap_or_else(|e| self.fail(&format!("QMP: {e}")))
    }

    /// Restore the saved booted guest: QEMU loads the state, then runs on.
    fn restore(&mut self, snap: &Snapshot) {
        let t = Instant::now();
        if self.guest.firmware_boot() {
            // the flash contents must be those the saved guest ran with
            fs::copy(snap.dir.join("OVMF_VARS.fd"), &self.ovmf_vars)
                .unwrap_or_else(|e| self.fail(&format!("saved OVMF_VARS.fd: {e}")));
        }
        let spec = BootSpec {
            kernel: snap.dir.join("boot/vmlinuz"),
            initrd: snap.dir.join("boot/initrd"),
            append: snap.append.clone(),
            entry: snap.entry.clone(),
            incoming: Some(snap.state.clone()),
        };
        self.launch(&spec, "restore saved guest");
        let mut qmp = self.qmp();
        qmp.wait_status(&["paused", "running"], Duration::from_secs(120))
            .unwrap_or_else(|e| self.fail(&format!("loading saved guest: {e}")));
        qmp.execute("cont", serde_json::json!({}))
            .unwrap_or_else(|e| self.fail(&format!("resuming saved guest: {e}")));
        self.boot_id = snap.boot_id.clone();
        // The guest clock stopped when it was saved.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        self.exec_ok(&format!("date -s @{now} >/dev/null"));
        let seen = self.exec_ok("cat /proc/sys/kernel/random/boot_id");
        if seen.trim() != self.boot_id {
            self.fail(&format!(
                "restored guest has boot id {seen:?}, saved {:?}",
                self.boot_id
            ));
        }
        self.mount_tools();
        self.restored = true;
        self.boot_report = serde_json::json!({
            "restored": true,
            "restore_s": t.elapsed().as_secs_f64(),
            "saved_guest_cold_boot": snap.meta["cold_boot"].clone(),
        });
        timing(&self.name, "restore saved guest", t.elapsed());
    }

    fn agent(&self) -> &Agent {
        self.agent
            .as_ref()
            .unwrap_or_else(|| self.fail("QEMU is not running"))
    }

    /// Wait for an agent start with a boot id other than `not_boot_id`, then
    /// for the end of startup; mount the tools disk.
    fn wait_boot(&mut self, not_boot_id: Option<&str>, timeout: Duration) -> BootInfo {
        let info = self.wait_startup(not_boot_id, timeout);
        self.mount_tools();
        info
    }

    fn wait_startup(&mut self, not_boot_id: Option<&str>, timeout: Duration) -> BootInfo {
        let t0 = Instant::now();
        let ready = self
            .agent()
            .wait_ready(0, not_boot_id, timeout)
            .unwrap_or_else(|e| self.fail(&format!("waiting for the guest to boot: {e}")));
        let to_agent = t0.elapsed();
        self.boot_id = ready.boot_id.clone();
        let (mut firmware, mut loader) = (None, None);
        // take(): one measurement per QEMU start (a kexec later is not firmware)
        let fw_done = self.firmware_done.lock().unwrap().take();
        if let (true, Some(launched), Some(fw)) =
            (self.guest.firmware_boot(), self.launched, fw_done)
        {
            let kernel_start = ready
                .at
                .checked_sub(Duration::from_secs_f64(ready.uptime))
                .unwrap_or(fw);
            if kernel_start > fw && fw > launched {
                firmware = Some(fw - launched);
                loader = Some(kernel_start - fw);
                timing(&self.name, "boot: firmware (OVMF)", fw - launched);
                timing(&self.name, "boot: loader (GRUB)", kernel_start - fw);
            }
        }
        let left = timeout
            .saturating_sub(t0.elapsed())
            .max(Duration::from_secs(30));
        let out = self.exec_timeout(
            &format!(
                "timeout {} systemctl is-system-running --wait",
                left.as_secs()
            ),
            left + Duration::from_secs(10),
        );
        let to_running = t0.elapsed();
        let state = out.stdout.trim().to_string();
        let failed_units = if state == "running" {
            String::new()
        } else {
            self.exec("systemctl --failed --no-legend --plain; systemctl list-jobs --no-legend")
                .stdout
        };
        if std::env::var_os("FASTSWITCH_VM_ANALYZE").is_some() {
            let a = self.exec(
                "systemd-analyze; systemd-analyze blame --no-pager | head -25; \
                 systemd-analyze critical-chain --no-pager",
            );
            eprintln!(
                "[vm {}] FASTSWITCH_VM_ANALYZE:\n{}{}",
                self.name, a.stdout, a.stderr
            );
        }
        timing(&self.name, "boot: agent ready", to_agent);
        timing(
            &self.name,
            &format!("boot: startup finished ({state})"),
            to_running,
        );
        BootInfo {
            boot_id: ready.boot_id,
            state,
            failed_units,
            to_agent,
            to_running,
            firmware,
            loader,
        }
    }

    /// Mount the tools disk (the 2nd virtio disk, /dev/vdb) on TOOLS_DIR.
    /// `blockdev --flushbufs` first: a restored guest may have cached blocks
    /// of the blank disk it saw when it was saved.
    fn mount_tools(&self) {
        self.exec_ok(&format!(
            "mountpoint -q {TOOLS_DIR} && exit 0; mkdir -p {TOOLS_DIR} && blockdev --flushbufs /dev/vdb && mount -o ro,noload /dev/vdb {TOOLS_DIR}"
        ));
    }

    // --- commands ---------------------------------------------------------

    /// Run a bash script in the guest (as root, cwd /, stdin /dev/null).
    /// Panics if the guest does not answer (QEMU died, reboot, timeout).
    pub fn exec(&self, script: &str) -> Output {
        self.exec_timeout(script, EXEC_TIMEOUT)
    }

    pub fn exec_timeout(&self, script: &str, timeout: Duration) -> Output {
        self.try_exec(script, timeout)
            .unwrap_or_else(|e| self.fail(&format!("guest command {script:?}: {e}")))
    }

    /// Like [`Vm::exec`] but returns transport errors (e.g. the guest rebooted
    /// while the command ran).
    pub fn try_exec(&self, script: &str, timeout: Duration) -> Result<Output, AgentError> {
        let t = Instant::now();
        let r = self.agent().run(script, timeout);
        let first = script.lines().next().unwrap_or("");
        let first: String = first.chars().take(70).collect();
        let shown = if script.lines().count() > 1 || first.len() < script.len() {
            format!("{first} ...")
        } else {
            first
        };
        match &r {
            Ok(o) => eprintln!(
                "[vm {}] $ {shown}  (rc={}, {:.1} s)",
                self.name,
                o.status,
                secs(t.elapsed())
            ),
            Err(e) => eprintln!("[vm {}] $ {shown}  ({e})", self.name),
        }
        r
    }

    /// Run a script that must succeed; returns its stdout.
    pub fn exec_ok(&self, script: &str) -> String {
        let o = self.exec(script);
        if !o.success() {
            self.fail(&format!(
                "guest command failed (rc={}):\n{script}\n--- stdout:\n{}--- stderr:\n{}",
                o.status, o.stdout, o.stderr
            ));
        }
        o.stdout
    }

    /// Write a file in the guest (small files: the upload goes through the agent).
    pub fn put_file(&self, guest_path: &str, data: &[u8], mode: u32) {
        self.exec_ok(&format!(
            "set -e; mkdir -p \"$(dirname '{guest_path}')\"; base64 -d > '{guest_path}' <<'EOF_B64'\n{}\nEOF_B64\nchmod {mode:o} '{guest_path}'",
            b64::encode(data)
        ));
    }

    // --- boots ------------------------------------------------------------

    /// The current boot's kernel / initrd / userspace phases, from systemd's manager
    /// timestamps (`systemctl show -P …TimestampMonotonic`, in µs since the kernel started).
    pub fn boot_phases(&self) -> BootPhases {
        let out = self.exec_ok(
            "for p in InitRDTimestampMonotonic UserspaceTimestampMonotonic FinishTimestampMonotonic; do systemctl show -P $p; done",
        );
        let v: Vec<u64> = out
            .split_whitespace()
            .map(|x| {
                x.parse()
                    .unwrap_or_else(|e| self.fail(&format!("timestamp {x:?}: {e}")))
            })
            .collect();
        let [initrd, userspace, finish] = v[..] else {
            self.fail(&format!("manager timestamps: {out:?}"));
        };
        let us = Duration::from_micros;
        let kernel_end = if initrd > 0 { initrd } else { userspace };
        BootPhases {
            kernel: us(kernel_end),
            initrd: us(userspace.saturating_sub(kernel_end)),
            userspace: us(finish.saturating_sub(userspace)),
            total: us(finish),
        }
    }

    /// Boot id of the current boot.
    pub fn boot_id(&self) -> String {
        self.boot_id.clone()
    }

    /// How this Vm came up: `{"restored": false, "cold_boot": {...}}` or
    /// `{"restored": true, "restore_s": .., "saved_guest_cold_boot": {...}}`
    /// (see [`BootInfo::report`]).
    pub fn boot_report(&self) -> serde_json::Value {
        self.boot_report.clone()
    }

    pub fn guest(&self) -> Guest {
        self.guest
    }

    /// Whether [`Vm::boot`] restored the saved guest (rather than a cold boot).
    pub fn was_restored(&self) -> bool {
        self.restored
    }

    /// BLS entry the harness booted last (for a restored guest: the one the
    /// saved guest was booted from).
    pub fn boot_entry(&self) -> &disk::BlsEntry {
        &self.entry
    }

    /// Wait for a boot with a boot id other than `old_boot_id` in the same QEMU
    /// (e.g. after a kexec), then for the end of its startup. Does not check
    /// that startup was clean: see [`BootInfo::state`].
    pub fn wait_for_new_boot(&mut self, old_boot_id: &str, timeout: Duration) -> BootInfo {
        self.wait_boot(Some(old_boot_id), timeout)
    }

    /// How many times the guest agent has greeted on this QEMU's connection; pass it to
    /// [`Vm::wait_for_soft_reboot`] (read it before starting what restarts userspace).
    pub fn agent_starts(&self) -> usize {
        self.agent().ready_count()
    }

    /// Wait for a soft reboot in the same QEMU: the agent greets again after `starts_before`
    /// (see [`Vm::agent_starts`]) because all of userspace restarted, the boot id is the one
    /// this boot had (the kernel stayed), and startup ends (`is-system-running --wait`).
    /// Fails if the agent came back with another boot id (the guest rebooted instead). Does
    /// not check that startup was clean: see [`BootInfo::state`]; `to_agent` and
    /// `to_running` count from this call.
    pub fn wait_for_soft_reboot(&mut self, starts_before: usize, timeout: Duration) -> BootInfo {
        let t0 = Instant::now();
        let ready = self
            .agent()
            .wait_ready(starts_before, None, timeout)
            .unwrap_or_else(|e| self.fail(&format!("waiting for the soft reboot: {e}")));
        let to_agent = t0.elapsed();
        if ready.boot_id != self.boot_id {
            self.fail(&format!(
                "expected a soft reboot (boot id {}), the agent came back with boot id {}",
                self.boot_id, ready.boot_id
            ));
        }
        let left = timeout
            .saturating_sub(t0.elapsed())
            .max(Duration::from_secs(30));
        let out = self.exec_timeout(
            &format!(
                "timeout {} systemctl is-system-running --wait",
                left.as_secs()
            ),
            left + Duration::from_secs(10),
        );
        let to_running = t0.elapsed();
        let state = out.stdout.trim().to_string();
        let failed_units = if state == "running" {
            String::new()
        } else {
            self.exec("systemctl --failed --no-legend --plain; systemctl list-jobs --no-legend")
                .stdout
        };
        timing(&self.name, "soft reboot: agent ready", to_agent);
        timing(
            &self.name,
            &format!("soft reboot: startup finished ({state})"),
            to_running,
        );
        self.mount_tools();
        BootInfo {
            boot_id: ready.boot_id,
            state,
            failed_units,
            to_agent,
            to_running,
            firmware: None,
            loader: None,
        }
    }

    /// Phases of the userspace restart after a soft reboot, from systemd's manager timestamps
    /// (µs of the kernel's monotonic clock, which runs on through a soft reboot): the old
    /// userspace's stop (`ShutdownStartTimestampMonotonic`, kept across the soft reboot, up to
    /// the new manager's `UserspaceTimestampMonotonic`: systemd-analyze's "soft reboot #N")
    /// and the new userspace's startup (up to `FinishTimestampMonotonic`).
    /// `None` when this systemd does not record the shutdown's start.
    pub fn soft_reboot_phases(&self) -> Option<(Duration, Duration)> {
        let out = self.exec_ok(
            "for p in ShutdownStartTimestampMonotonic UserspaceTimestampMonotonic FinishTimestampMonotonic; do echo \"$(systemctl show -P $p)\"; done",
        );
        let v: Vec<Option<u64>> = out.lines().map(|x| x.trim().parse().ok()).collect();
        let [Some(start), Some(userspace), Some(finish)] = v[..] else {
            eprintln!(
                "[vm {}] soft reboot timestamps not available: {out:?}",
                self.name
            );
            return None;
        };
        if start == 0 || userspace < start || finish < userspace {
            self.fail(&format!(
                "no soft reboot in the manager timestamps (shutdown start {start}, userspace {userspace}, finish {finish})"
            ));
        }
        let us = Duration::from_micros;
        Some((us(userspace - start), us(finish - userspace)))
    }

    /// Reboot through "firmware": guest `systemctl reboot`, QEMU exits
    /// (-no-reboot), the harness reads the newest BLS entry from the disk and
    /// starts a fresh QEMU. Does not check that startup was clean.
    pub fn cold_reboot(&mut self) -> RebootTimings {
        let t0 = Instant::now();
        let old = self.boot_id.clone();
        self.exec_ok("systemctl --no-block reboot");
        self.wait_qemu_exit(SHUTDOWN_TIMEOUT);
        let shutdown = t0.elapsed();
        timing(&self.name, "cold reboot: guest shutdown", shutdown);
        let (spec, bootloader) = self.bootloader();
        timing(&self.name, "cold reboot: bootloader", bootloader);
        self.launch(&spec, "cold reboot");
        let boot = self.wait_boot(Some(&old), BOOT_TIMEOUT);
        let total = t0.elapsed();
        timing(&self.name, "cold reboot: total to running", total);
        RebootTimings {
            shutdown,
            bootloader,
            boot,
            total,
        }
    }

    /// Cut the power: kill QEMU (whatever the guest had not written to its disk is lost, as on
    /// real hardware), then boot the newest BLS entry on the disk in a fresh QEMU.
    pub fn power_cut(&mut self) -> BootInfo {
        let t0 = Instant::now();
        let old = self.boot_id.clone();
        self.kill_qemu();
        let (spec, bootloader) = self.bootloader();
        timing(&self.name, "power cut: bootloader", bootloader);
        self.launch(&spec, "boot after a power cut");
        let boot = self.wait_boot(Some(&old), BOOT_TIMEOUT);
        timing(&self.name, "power cut: total to running", t0.elapsed());
        boot
    }

    /// End a scenario without a clean poweroff: QEMU is killed and the run directory (the disk
    /// overlay) removed, as when the `Vm` is dropped. A poweroff at the end would prove nothing
    /// that the scenarios' own reboots (S1, S3) do not: a clean shutdown with a live `/usr` and
    /// ostree's finalization at shutdown. It cost 10–30 s of TCG each (more with a staged
    /// deployment to finalize). [`Vm::shutdown`] stays for scenarios that need a clean poweroff.
    pub fn discard(self) {}

    /// Power the guest off cleanly and wait for QEMU to exit.
    pub fn shutdown(&mut self) -> Duration {
        let t = Instant::now();
        self.exec_ok("systemctl --no-block poweroff");
        self.wait_qemu_exit(SHUTDOWN_TIMEOUT);
        timing(&self.name, "poweroff", t.elapsed());
        t.elapsed()
    }

    fn wait_qemu_exit(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self
                .child
                .as_mut()
                .expect("QEMU not running")
                .try_wait()
                .expect("waiting for QEMU");
            if let Some(st) = status {
                self.child = None;
                self.agent = None;
                if !st.success() {
                    self.fail(&format!("QEMU exited with {st}"));
                }
                return;
            }
            if Instant::now() > deadline {
                self.fail("guest did not power off / reboot in time");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill_qemu(&mut self) {
        self.agent = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    // --- diagnostics -------------------------------------------------------

    pub fn serial_log(&self) -> &Path {
        &self.serial_log
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Panic with the paths of the logs and the tail of the serial console.
    pub fn fail(&self, msg: &str) -> ! {
        let serial = fs::read(&self.serial_log).unwrap_or_default();
        let serial = String::from_utf8_lossy(&serial);
        let tail: Vec<&str> = serial.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "[vm {}] {msg}\n  serial log: {}\n  qemu log:   {}\n--- last lines of the serial log:\n{}",
            self.name,
            self.serial_log.display(),
            self.qemu_log.display(),
            tail.join("\n")
        );
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill_qemu();
        let _ = fs::remove_file(&self.socket);
        let _ = fs::remove_file(&self.qmp_socket);
        if !self.run_dir.exists() {
            // nothing to keep or remove (a saved guest's renamed run dir)
        } else if std::thread::panicking() || self.keep {
            eprintln!(
                "[vm {}] kept {} (serial log: {})",
                self.name,
                self.run_dir.display(),
                self.serial_log.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.run_dir);
        }
    }
}

// ---------------------------------------------------------------------------
// Saved booted guest

/// A fully booted guest saved once per image (and machine options), so each
/// scenario starts in seconds instead of a TCG boot: `<image>/snapshot-<key>/`
/// holds the disk as it was when saved, the zstd-compressed migration stream,
/// and the boot's kernel/initrd/kargs. The cold-boot path is still exercised
/// by making the snapshot and by every [`Vm::cold_reboot`].
struct Snapshot {
    meta: serde_json::Value,
    dir: PathBuf,
    disk: PathBuf,
    state: PathBuf,
    boot_id: String,
    append: String,
    entry: disk::BlsEntry,
}

impl Snapshot {
    /// Load the saved guest, making it first if needed (caller holds the VM lock).
    fn get(image: &Image, opts: &VmOptions) -> Snapshot {
        let key = opts.snapshot_key();
        let dir = image.dir.join(format!("snapshot-{key}"));
        if !dir.join("meta.json").exists() {
            Snapshot::create(image, opts, &dir);
        }
        Snapshot::load(&dir).unwrap_or_else(|e| panic!("saved guest {}: {e}", dir.display()))
    }

    fn load(dir: &Path) -> Result<Snapshot, String> {
        let meta: serde_json::Value = serde_json::from_slice(
            &fs::read(dir.join("meta.json")).map_err(|e| format!("meta.json: {e}"))?,
        )
        .map_err(|e| format!("meta.json: {e}"))?;
        let s = |k: &str| {
            meta[k]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("meta.json: no {k}"))
        };
        Ok(Snapshot {
            meta: meta.clone(),
            dir: dir.to_path_buf(),
            disk: dir.join("disk.img"),
            state: dir.join("state.zst"),
            boot_id: s("boot_id")?,
            append: s("append")?,
            entry: disk::parse_bls(&s("bls_file")?, &s("bls_entry")?),
        })
    }

    fn create(image: &Image, opts: &VmOptions, dir: &Path) {
        let t0 = Instant::now();
        let tmp = dir.with_extension(format!("tmp.{}", std::process::id()));
        let snap_opts = VmOptions {
            name: "save-guest".into(),
            tools: Vec::new(), // a blank tools disk of the fixed size
            ..opts.clone()
        };
        eprintln!(
            "[vm save-guest] saving a booted guest of {} in {}",
            image.dir.display(),
            dir.display()
        );
        let mut vm = Vm::new(image, tmp.clone(), snap_opts, None);
        vm.keep = true; // the directory becomes the snapshot
        vm.copy_disk(&image.disk);
        let f = File::create(&vm.tools_img).expect("tools disk");
        f.set_len(TOOLS_DISK_MIB << 20).expect("tools disk size");
        drop(f);
        let (spec, _) = vm.bootloader();
        vm.launch(&spec, "cold boot to save");
        let info = vm.wait_startup(None, BOOT_TIMEOUT);
        if info.state != "running" {
            vm.fail(&format!(
                "guest to save is not cleanly up: state {:?}, failed units:\n{}",
                info.state, info.failed_units
            ));
        }
        // Let the post-boot writes settle, so the disk and RAM agree.
        vm.exec_ok("sync");
        let t = Instant::now();
        let state = tmp.join("state.zst");
        let mut qmp = vm.qmp();
        let saved = qmp
            .execute("stop", serde_json::json!({}))
            .and_then(|_| {
                qmp.execute(
                    "migrate",
                    serde_json::json!({
                        "uri": format!("exec:zstd -1 -q -T2 -f -o '{}'", state.display())
                    }),
                )
            })
            .and_then(|_| qmp.wait_migration(Duration::from_secs(300)));
        if let Err(e) = saved {
            vm.fail(&format!("saving the guest: {e}"));
        }
        vm.kill_qemu();
        timing("save-guest", "save guest state", t.elapsed());
        let meta = serde_json::json!({
            "boot_id": info.boot_id,
            "append": spec.append,
            "bls_file": spec.entry.file,
            "bls_entry": format!(
                "title {}\nversion {}\nlinux {}\ninitrd {}\noptions {}\n",
                spec.entry.title, spec.entry.version, spec.entry.linux,
                spec.entry.initrd, spec.entry.options
            ),
            "cold_boot_to_running_s": info.to_running.as_secs_f64(),
            "cold_boot": info.report(),
        });
        fs::write(tmp.join("meta.json"), format!("{meta:#}\n")).expect("meta.json");
        let _ = fs::remove_file(&vm.tools_img);
        let _ = fs::remove_dir_all(tmp.join("tools"));
        let _ = fs::remove_file(&vm.socket);
        let _ = fs::remove_file(&vm.qmp_socket);
        fs::rename(&tmp, dir)
            .unwrap_or_else(|e| panic!("renaming {} to {}: {e}", tmp.display(), dir.display()));
        vm.keep = false; // its run dir (tmp) is gone: Drop only kills leftovers
        drop(vm);
        timing("save-guest", "booted guest saved (total)", t0.elapsed());
    }
}

/// One VM at a time on this machine (across test processes).
fn vm_lock(name: &str) -> File {
    let dir = cache_dir();
    fs::create_dir_all(&dir).expect("creating VM cache dir");
    let path = dir.join(".vm-run.lock");
    let f = File::create(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if f.try_lock().is_err() {
        eprintln!(
            "[vm {name}] waiting for another VM to finish (lock {})",
            path.display()
        );
        f.lock().expect("locking VM lock");
    }
    f
}

// ---------------------------------------------------------------------------
// Helpers shared by the scenarios

/// Where [`install_fastswitch`] puts the binary (/usr is read-only; /var persists).
pub const INSTALLED: &str = "/var/local/bin/fastswitch";

/// Install fastswitch in the guest the way a host has it: the binary, and
/// `dist/fastswitch-recover.service` enabled, so a boot after a power cut recovers /etc.
pub fn install_fastswitch(vm: &Vm) {
    let unit = include_str!("../../dist/fastswitch-recover.service")
        .replace("/usr/bin/fastswitch", INSTALLED);
    vm.put_file(
        "/etc/systemd/system/fastswitch-recover.service",
        unit.as_bytes(),
        0o644,
    );
    vm.exec_ok(&format!(
        "set -e; install -D -m 755 {GUEST_FASTSWITCH} {INSTALLED}; systemctl daemon-reload; systemctl enable fastswitch-recover.service; sync"
    ));
}

/// `dist/fastswitch-prepare.{path,service}` installed and enabled, running the binary on the
/// tools disk; with `load_kernel`, plus the documented drop-in that also loads the kernel at
/// staging.
pub fn install_prepare_units(vm: &Vm, load_kernel: bool) {
    for (name, text) in [
        (
            "fastswitch-prepare.path",
            include_str!("../../dist/fastswitch-prepare.path"),
        ),
        (
            "fastswitch-prepare.service",
            include_str!("../../dist/fastswitch-prepare.service"),
        ),
    ] {
        let unit = text.replace("/usr/bin/fastswitch", GUEST_FASTSWITCH);
        vm.put_file(
            &format!("/etc/systemd/system/{name}"),
            unit.as_bytes(),
            0o644,
        );
    }
    // The opt-in the service documents: a drop-in that drops --no-kexec, so that staging also
    // loads the kernel.
    let shipped = include_str!("../../dist/fastswitch-prepare.service");
    assert!(shipped.contains("ExecStart=/usr/bin/fastswitch prepare --no-kexec\n"));
    if load_kernel {
        vm.put_file(
            "/etc/systemd/system/fastswitch-prepare.service.d/kexec.conf",
            format!("[Service]\nExecStart=\nExecStart={GUEST_FASTSWITCH} prepare\n").as_bytes(),
            0o644,
        );
    }
    vm.exec_ok("systemctl daemon-reload && systemctl enable --now fastswitch-prepare.path");
}

/// Wait until `fastswitch-prepare.service`, started by the path unit after a staging, has
/// finished successfully; returns how long its `fastswitch prepare` ran (ms).
pub fn wait_prepare_service(vm: &Vm) -> u64 {
    let out = vm.exec_timeout(
        "for i in $(seq 600); do \
           s=$(systemctl show -P ActiveState fastswitch-prepare.service); \
           x=$(systemctl show -P ExecMainExitTimestampMonotonic fastswitch-prepare.service); \
           [ \"$s\" != activating ] && [ \"$x\" != 0 ] && break; sleep 0.2; done; \
         systemctl show -P Result fastswitch-prepare.service; \
         echo $(( ($(systemctl show -P ExecMainExitTimestampMonotonic fastswitch-prepare.service) \
           - $(systemctl show -P ExecMainStartTimestampMonotonic fastswitch-prepare.service)) / 1000 ))",
        Duration::from_secs(180),
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    if !(out.success() && lines.len() == 2 && lines[0] == "success") {
        vm.fail(&format!(
            "fastswitch-prepare.service after staging: {out:?}\n{}",
            vm.exec("journalctl -b -u fastswitch-prepare.service -o cat")
                .stdout
        ));
    }
    lines[1].parse().unwrap()
}

/// `ostree admin status` in the guest, parsed.
pub fn ostree_status(vm: &Vm) -> Vec<ostree::Deployment> {
    let text = vm.exec_ok("ostree admin status");
    ostree::parse_admin_status(&text)
        .unwrap_or_else(|e| vm.fail(&format!("parsing `ostree admin status`: {e}\n{text}")))
}

/// Run `fastswitch <args>` in the guest and parse its stdout as JSON; panics
/// (with stdout/stderr) if it fails or does not print JSON.
pub fn fastswitch_json(vm: &Vm, args: &str) -> serde_json::Value {
    let out = vm.exec(&format!("{GUEST_FASTSWITCH} {args}"));
    if !out.success() {
        vm.fail(&format!(
            "fastswitch {args} failed (rc={}):\n--- stdout:\n{}--- stderr:\n{}",
            out.status, out.stdout, out.stderr
        ));
    }
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        vm.fail(&format!(
            "fastswitch {args}: stdout is not JSON ({e}):\n{}",
            out.stdout
        ))
    })
}

/// Stage `refspec` with ostree (13-22 s under TCG); returns the time taken.
pub fn ostree_stage(vm: &Vm, refspec: &str, extra_args: &str) -> Duration {
    let t = Instant::now();
    vm.exec_ok(&format!(
        "ostree admin deploy --stage {extra_args}{}{refspec}",
        if extra_args.is_empty() { "" } else { " " }
    ));
    let d = t.elapsed();
    timing(
        &vm.name,
        &format!("ostree admin deploy --stage {refspec}"),
        d,
    );
    d
}

/// The results file of one VM scenario on one guest,
/// `target/vm-results/<scenario>-<guest>.json`:
/// `{"scenario", "guest", "pass", "wall_s", ...figures}`. Written when dropped;
/// `pass` is false when the test is panicking.
pub struct ScenarioResult {
    scenario: String,
    guest: Guest,
    t0: Instant,
    figures: serde_json::Map<String, serde_json::Value>,
}

impl ScenarioResult {
    pub fn new(scenario: &str, guest: Guest) -> ScenarioResult {
        let mut figures = serde_json::Map::new();
        // Timings of fastswitch's own work depend on it: the test build is unoptimised.
        figures.insert("fastswitch_build".into(), guest_binary_kind().into());
        ScenarioResult {
            scenario: scenario.to_string(),
            guest,
            t0: Instant::now(),
            figures,
        }
    }

    /// Add (or replace) one figure.
    pub fn set(&mut self, key: &str, value: impl Into<serde_json::Value>) {
        self.figures.insert(key.to_string(), value.into());
    }

    /// Add a duration, in seconds.
    pub fn secs(&mut self, key: &str, d: Duration) {
        self.set(key, secs(d));
    }

    pub fn path(&self) -> PathBuf {
        Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("target dir")
            .join("vm-results")
            .join(format!("{}-{}.json", self.scenario, self.guest.name()))
    }
}

impl Drop for ScenarioResult {
    fn drop(&mut self) {
        let mut out = serde_json::Map::new();
        out.insert("scenario".into(), self.scenario.clone().into());
        out.insert("guest".into(), self.guest.name().into());
        out.insert("pass".into(), (!std::thread::panicking()).into());
        let wall = secs(self.t0.elapsed());
        out.insert("wall_s".into(), wall.into());
        eprintln!(
            "[vm results] {} on {}: {} in {wall:.1} s",
            self.scenario,
            self.guest.name(),
            if std::thread::panicking() {
                "FAIL"
            } else {
                "pass"
            }
        );
        out.extend(std::mem::take(&mut self.figures));
        let path = self.path();
        let text = format!("{:#}\n", serde_json::Value::Object(out));
        let written = path
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| fs::write(&path, text));
        match written {
            Ok(()) => eprintln!("[vm results] {}", path.display()),
            Err(e) => eprintln!("[vm results] writing {}: {e}", path.display()),
        }
    }
}

// ---------------------------------------------------------------------------
// fastswitch from its Debian package

/// Name of the .deb on the tools disk (`/run/tools/fastswitch.deb`).
pub const DEB_TOOL: &str = "fastswitch.deb";
/// fastswitch as the package installs it.
pub const PACKAGED: &str = "/usr/bin/fastswitch";

/// The Debian package of this build's fastswitch: the newest `target/deb/fastswitch_*.deb`
/// if it is newer than the test binary (scripts/test builds it with `scripts/build-deb
/// --profile debug`), else made now from the test binary by `scripts/build-deb --bin`.
pub fn fastswitch_deb() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = Path::new(env!("CARGO_BIN_EXE_fastswitch"));
    let mtime = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    let bin_time = mtime(bin).unwrap_or_else(|| panic!("{}: no test binary", bin.display()));
    let newest = || {
        fs::read_dir(root.join("target/deb"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("fastswitch_") && n.ends_with(".deb"))
            })
            .filter_map(|p| mtime(&p).map(|t| (t, p)))
            .max()
    };
    if let Some((t, p)) = newest() {
        if t >= bin_time {
            return p;
        }
    }
    let out = Command::new(root.join("scripts/build-deb"))
        .arg("--bin")
        .arg(bin)
        .arg("--no-lintian")
        .output()
        .expect("running scripts/build-deb");
    assert!(
        out.status.success(),
        "scripts/build-deb --bin {} failed:\n{}{}",
        bin.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match newest() {
        Some((t, p)) if t >= bin_time => p,
        _ => panic!("scripts/build-deb made no target/deb/fastswitch_*.deb newer than the binary"),
    }
}

/// What [`image_build_install`] made.
pub struct ImageBuild {
    /// The new commit's checksum.
    pub checksum: String,
    /// Output of the in-tree `dpkg -i`.
    pub dpkg_log: String,
    /// `systemctl --root=TREE is-enabled fastswitch-recover.service` in the new tree.
    pub recover_unit: String,
    /// The same for `fastswitch-prepare.path`.
    pub prepare_unit: String,
    pub duration: Duration,
}

/// An image build in the guest: check out commit `base` from the system repo, install the
/// .deb from the tools disk into that tree with dpkg in a chroot (/proc, /dev, /sys bound;
/// maintainer scripts run, as for a Containerfile's `RUN apt-get install ./fastswitch.deb`),
/// and commit the tree as `new_ref`. The tree is shaped back and forth the way the image
/// build shapes it (vm/build-image.sh): /usr/etc is /etc while dpkg runs, and the dpkg
/// database lives in /usr/share/dpkg/database (reached through /var/lib/dpkg), since /var
/// is not part of a commit. The checkout hardlinks into the repo (same filesystem, like
/// rpm-ostree's); dpkg replaces files by rename, never in place.
pub fn image_build_install(vm: &Vm, base: &str, new_ref: &str) -> ImageBuild {
    let t = Instant::now();
    let out = vm.exec_ok(&format!(
        r#"set -eu
repo=/ostree/repo
w=$repo/tmp/fastswitch-image-build
t=$w/root
rm -rf "$w"; mkdir -p "$w"
ostree --repo=$repo checkout {base} "$t"
mv "$t/usr/etc" "$t/etc"
mkdir -p "$t/var/lib" "$t/var/log"
ln -s ../../usr/share/dpkg/database "$t/var/lib/dpkg"
cp {TOOLS_DIR}/{DEB_TOOL} "$t/tmp/fastswitch.deb"
unshare -m --propagation private sh -ec '
  mount --rbind /dev "$1/dev"; mount -t proc proc "$1/proc"; mount -t sysfs sysfs "$1/sys"
  chroot "$1" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 dpkg -i /tmp/fastswitch.deb
' sh "$t" > "$w/dpkg.log" 2>&1 || {{ cat "$w/dpkg.log" >&2; exit 1; }}
enabled=$(systemctl --root="$t" is-enabled fastswitch-recover.service || true)
prepare=$(systemctl --root="$t" is-enabled fastswitch-prepare.path || true)
rm "$t/tmp/fastswitch.deb" "$t/var/lib/dpkg"
find "$t/var" -mindepth 1 -delete
mv "$t/etc" "$t/usr/etc"
c=$(ostree --repo=$repo commit --branch={new_ref} --link-checkout-speedup \
  --subject="image build: {base:.12} + apt-get install ./fastswitch.deb" --tree=dir="$t")
echo "checksum=$c"
echo "enabled=$enabled"
echo "prepare=$prepare"
echo "--- dpkg"
cat "$w/dpkg.log"
rm -rf "$w"
"#
    ));
    let field = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| vm.fail(&format!("image build printed no {k}=:\n{out}")))
            .to_string()
    };
    let build = ImageBuild {
        checksum: field("checksum"),
        recover_unit: field("enabled"),
        prepare_unit: field("prepare"),
        dpkg_log: out
            .split_once("--- dpkg\n")
            .map(|(_, l)| l.to_string())
            .unwrap_or_default(),
        duration: t.elapsed(),
    };
    timing(
        &vm.name,
        &format!("image build: {base:.12} + fastswitch.deb -> {new_ref}"),
        build.duration,
    );
    build
}
