//! Harness scenario: the cold-reboot-through-firmware path. Stage
//! `test/layered` with ostree, reboot the guest through the harness (QEMU
//! exits, the harness reads the newest BLS entry from the disk image, fresh
//! QEMU) and check the staged deployment is now booted. Prints each phase's
//! time so kexec scenarios can be compared with a cold reboot.
//!
//! Debian 12 only: on Debian 13 the same path is walked already. S1 (tests/vm_apply_live.rs)
//! stages `test/layered`, reboots through OVMF + GRUB (a fresh QEMU, as here) and checks the
//! layered commit booted with its service running; S3 (tests/vm_kexec.rs) times that firmware
//! reboot phase by phase. This test's own check, that the harness (Debian 12's bootloader)
//! picked the newest BLS entry, has no counterpart where GRUB is the bootloader, and another
//! fresh QEMU through firmware (~2 minutes of CI under TCG) would prove nothing new.

mod vm;

use std::time::Instant;
use vm::{ostree_stage, ostree_status, Guest, Image, Vm};

#[test]
#[ignore = "VM scenario: run by scripts/test"]
fn cold_reboot_boots_staged_deployment() {
    let t_all = Instant::now();
    let image = Image::get_guest(Guest::Debian12);
    let mut vm = Vm::boot(&image, "reboot");
    let old_boot_id = vm.boot_id();
    let old = ostree_status(&vm);
    assert_eq!(old.len(), 1, "{old:?}");
    let old_id = old[0].id();
    let old_entry = vm.boot_entry().clone();

    let stage = ostree_stage(&vm, "test/layered", "");
    let staged = ostree_status(&vm);
    assert!(
        staged
            .iter()
            .any(|d| d.staged && d.checksum == image.ref_checksum("test/layered")),
        "{staged:?}"
    );

    let t = vm.cold_reboot();
    assert_ne!(t.boot.boot_id, old_boot_id, "boot id must change");
    assert_eq!(vm.boot_id(), t.boot.boot_id);
    assert_eq!(
        t.boot.state, "running",
        "failed units after reboot:\n{}",
        t.boot.failed_units
    );

    // ostree: the layered commit is booted, the old one is the rollback
    let now = ostree_status(&vm);
    assert_eq!(now.len(), 2, "{now:?}");
    let booted: Vec<_> = now.iter().filter(|d| d.booted).collect();
    assert_eq!(booted.len(), 1, "{now:?}");
    let booted = booted[0];
    assert_eq!(booted.checksum, image.ref_checksum("test/layered"));
    assert_eq!(booted.refspec.as_deref(), Some("test/layered"));
    assert!(!booted.staged && !booted.pending);
    let rollback: Vec<_> = now.iter().filter(|d| d.rollback).collect();
    assert_eq!(rollback.len(), 1, "{now:?}");
    assert_eq!(rollback[0].id(), old_id);

    // the harness booted the new (finalized) BLS entry, and it names the new root
    let entry = vm.boot_entry().clone();
    assert!(
        entry.version > old_entry.version,
        "{entry:?} vs {old_entry:?}"
    );
    assert_ne!(entry.options, old_entry.options);
    let root = vm.exec_ok(
        r#"for a in $(cat /proc/cmdline); do case $a in ostree=*) readlink -f "${a#ostree=}";; esac; done"#,
    );
    assert_eq!(
        root.trim(),
        format!(
            "/sysroot/ostree/deploy/{}/deploy/{}",
            booted.stateroot,
            booted.id()
        )
    );

    // the layered package is in place and running: config merged into /etc,
    // sysusers user, tmpfiles dirs, vendor-enabled service
    let facts = vm.exec_ok(
        r#"set -e
cat /etc/demo/extra.conf
systemctl is-active demo-extra
cat /run/demo-extra/extra.data /run/demo-extra/extra.version
getent passwd demo-extra | cut -d: -f1
stat -c %U /var/lib/demo-extra /run/demo-extra
readlink /proc/$(systemctl show -P MainPID demo-extra)/exe"#,
    );
    assert_eq!(
        facts.lines().collect::<Vec<_>>(),
        [
            "greeting=hello-from-layered",
            "active",
            "greeting=hello-from-layered",
            "v1",
            "demo-extra",
            "demo-extra",
            "demo-extra",
            "/usr/bin/demo-extra",
        ],
        "{facts}"
    );

    vm.shutdown();
    eprintln!("reboot scenario timings (s):");
    eprintln!(
        "  ostree admin deploy --stage  {:>6.1}",
        stage.as_secs_f64()
    );
    eprintln!(
        "  guest shutdown -> QEMU exit  {:>6.1}",
        t.shutdown.as_secs_f64()
    );
    eprintln!(
        "  harness bootloader           {:>6.1}",
        t.bootloader.as_secs_f64()
    );
    eprintln!(
        "  QEMU start -> agent          {:>6.1}",
        t.boot.to_agent.as_secs_f64()
    );
    eprintln!(
        "  QEMU start -> running        {:>6.1}",
        t.boot.to_running.as_secs_f64()
    );
    eprintln!(
        "  reboot total (to running)    {:>6.1}",
        t.total.as_secs_f64()
    );
    eprintln!(
        "  whole scenario               {:>6.1}",
        t_all.elapsed().as_secs_f64()
    );
}
