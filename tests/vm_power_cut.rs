//! VM scenarios for power cuts and crashes (issue: reliability). A real ostree-booted guest with
//! fastswitch installed the way a host would have it (binary + fastswitch-recover.service):
//!
//! - the power is cut (QEMU killed) while `apply-live` sits at a fault point, or right after it
//!   finished; the next boot must be the booted deployment again (the staged one was never
//!   finalized), with /etc exactly as before the apply (restored by fastswitch-recover.service),
//!   a cleanly running system, and no fastswitch state in /run;
//! - `kexec --load-only` is killed before and after each preparation step; `status` tells the
//!   truth, a re-run converges, `reset` unloads; a power cut after finalization boots the
//!   finalized deployment.
//!
//! What runs where, and why:
//! - Debian 12 (the harness boots the kernel directly): a cut after apply-live completed, and
//!   the kexec kill points. These tests call `Image::get()`, so `FASTSWITCH_VM_GUEST` picks the
//!   guest. The cut in the middle of apply-live, at `services:before`, is on Debian 13 only
//!   (below); `merge_etc:after` was cut here too until CI neared the hour: the recovery is the
//!   same code, and each restore, staging and boot less keeps CI under the hour.
//! - Debian 13 (OVMF + GRUB, separate /boot): one cut, at `services:before` (users created, units
//!   reloaded, nothing restarted), in its own test. Every cut there costs a fresh QEMU through
//!   firmware and GRUB, a TCG boot of 190-220 s at host load ~5 (kernel 21 s + initrd 60 s +
//!   userspace 110 s), so the other cut points stay on Debian 12, where the recovery logic is
//!   the same. A second cut after kexec's finalization (new boot entry and grub.cfg on the /boot
//!   partition, GRUB must boot the finalized deployment) would add a stage of `test/kernel`, the
//!   finalization with grub-mkconfig and another boot, about 2 min even on a quiet machine: left
//!   out to keep the test near 4 min there (it took 374-420 s at load 5-7).
//!   An earlier attempt at load ~20 timed out after the harness's 400 s boot timeout with
//!   nothing on the quiet console after GRUB; at load ~5 the same cut boots in 185-208 s to
//!   the agent, no slower than the saved guest's own cold boot (248 s), and the console is as
//!   quiet until switch-root: the load, not a hang. Each cut left both journals to replay
//!   (the root's by systemd-fsck in the initrd, /boot's by the kernel at mount); boot went on.

mod vm;

use std::time::{Duration, Instant};
use vm::{
    fastswitch_json, install_fastswitch as install, ostree_stage, ostree_status, Guest, Image,
    ScenarioResult, Vm, INSTALLED,
};

/// Path, type, mode, owner, link target and content hash of everything in /etc.
fn etc_snapshot(vm: &Vm) -> String {
    vm.exec_ok(
        "cd /etc && find . -xdev -printf '%p %y %m %U:%G %l\\n' | sort && find . -xdev -type f -print0 | sort -z | xargs -0 sha256sum",
    )
}

fn diff_lines(a: &str, b: &str) -> String {
    let sa: std::collections::BTreeSet<&str> = a.lines().collect();
    let sb: std::collections::BTreeSet<&str> = b.lines().collect();
    let mut out = String::new();
    for l in sa.difference(&sb) {
        out += &format!("- {l}\n");
    }
    for l in sb.difference(&sa) {
        out += &format!("+ {l}\n");
    }
    out
}

fn booted_checksum(vm: &Vm) -> String {
    ostree_status(vm)
        .into_iter()
        .find(|d| d.booted)
        .expect("a booted deployment")
        .checksum
}

/// Start `fastswitch <args>` with a `:stop` fault and wait until it has stopped there.
fn run_until_stopped(vm: &Vm, fault: &str, args: &str) {
    vm.exec_ok(&format!(
        "rm -f /var/tmp/fs.err; setsid -f sh -c 'FASTSWITCH_FAULT={fault}:stop exec {INSTALLED} {args} > /var/tmp/fs.out 2> /var/tmp/fs.err' < /dev/null"
    ));
    let o = vm.exec_timeout(
        "for i in $(seq 1800); do grep -q ': stopped (pid' /var/tmp/fs.err 2>/dev/null && exit 0; sleep 0.2; done; cat /var/tmp/fs.err; exit 1",
        Duration::from_secs(400),
    );
    assert!(
        o.success(),
        "fastswitch never reached {fault}: {}",
        o.stdout
    );
}

/// After a power cut before finalization: the system is up, the old deployment `base` booted
/// again, fastswitch-recover.service restored /etc to `etc_before` (see [`etc_snapshot`]), and
/// nothing of the live apply is left (no record in /run or /var, no backup, no live usr copy).
fn assert_recovered(vm: &Vm, boot: &vm::BootInfo, point: &str, base: &str, etc_before: &str) {
    assert_running(boot, point);
    let serial = std::fs::read_to_string(vm.serial_log()).unwrap_or_default();
    assert!(
        !serial.contains("Ordering cycle"),
        "{point}: systemd found an ordering cycle (see {})",
        vm.serial_log().display()
    );
    // The staged deployment was never finalized: the old one booted again.
    assert_eq!(booted_checksum(vm), base, "{point}");
    // fastswitch-recover.service restored /etc before anything read it.
    let unit = vm.exec_ok(
        "systemctl show -P ActiveState fastswitch-recover; systemctl show -P ExecMainStatus fastswitch-recover",
    );
    assert_eq!(
        unit.split_whitespace().collect::<Vec<_>>(),
        ["active", "0"],
        "{point}"
    );
    let etc_after = etc_snapshot(vm);
    assert!(
        etc_after == etc_before,
        "{point}: /etc differs from before the apply:\n{}",
        diff_lines(etc_before, &etc_after)
    );
    vm.exec_ok(
        "set -e; ! getent passwd demo-extra; test ! -e /run/fastswitch/state.json; test ! -e /var/lib/fastswitch/state.json; test ! -e /var/lib/fastswitch/etc-backup; test -z \"$(ls -A /ostree/fastswitch/live 2>/dev/null)\"",
    );
    let st = fastswitch_json(vm, "status --json");
    assert!(st["live"].is_null(), "{point}: {st}");
    // Nothing is left to recover, and the host can apply again from scratch.
    let again = vm.exec(&format!("{INSTALLED} recover --json"));
    assert_eq!(again.status, 3, "{again:?}");
}

#[test]
#[ignore = "VM scenario: run by scripts/test"]
fn power_cut_after_apply_live_boots_the_old_deployment_with_its_etc() {
    let image = Image::get();
    let base = image.booted_checksum();
    // complete — apply-live finished, the staged deployment still not finalized: where a host
    // that applied live and then lost power is. (A cut in the middle of the apply is the
    // Debian 13 test's, at services:before — users created, units reloaded, nothing restarted
    // yet; `merge_etc:after` was cut here too until CI neared the hour: the recovery is the same
    // code, and tests/apply_live.rs kills apply-live at every step and journal write.)
    let point = "complete";
    let mut vm = Vm::boot(&image, "cut-complete");
    install(&vm);
    let etc_before = etc_snapshot(&vm);
    ostree_stage(&vm, "test/layered", "");
    let rep = fastswitch_json(&vm, "apply-live --json");
    assert_eq!(rep["outcome"], "ok", "{rep}");
    vm.exec_ok("systemctl is-active demo-extra && getent passwd demo-extra");
    let st = fastswitch_json(&vm, "status --json");
    assert_eq!(st["live"]["usr_is_target"], true, "{point}: {st}");
    assert!(st["live"]["etc_changes"].as_u64().unwrap() > 0, "{st}");
    vm.exec_ok("test -e /var/lib/fastswitch/state.json && test -e /etc/demo/extra.conf");

    let boot = vm.power_cut();
    assert_recovered(&vm, &boot, point, &base, &etc_before);
    eprintln!("[power-cut] {point}: booted the old deployment, /etc restored");
    vm.discard();
}

/// Debian 13 (OVMF + GRUB, /boot on its own partition): the power is cut while `apply-live`
/// sits at `services:before`, and the next boot goes through firmware and GRUB in a fresh QEMU.
#[test]
#[ignore = "VM scenario: run by scripts/test"]
fn power_cut_debian13_during_apply_live_grub_boots_the_old_deployment_with_its_etc() {
    let guest = Guest::Debian13;
    let mut result = ScenarioResult::new("power_cut", guest);
    let image = Image::get_guest(guest);
    let base = image.booted_checksum();
    let point = "services:before";
    let mut vm = Vm::boot(&image, "cut-debian13");
    result.set("boot", vm.boot_report());
    install(&vm);
    let etc_before = etc_snapshot(&vm);
    result.secs("stage_s", ostree_stage(&vm, "test/layered", ""));
    let t = Instant::now();
    run_until_stopped(&vm, point, "apply-live --json");
    result.secs("apply_live_to_fault_s", t.elapsed());
    let st = fastswitch_json(&vm, "status --json");
    assert_eq!(st["live"]["usr_is_target"], true, "{point}: {st}");
    assert!(st["live"]["etc_changes"].as_u64().unwrap() > 0, "{st}");
    vm.exec_ok("test -e /var/lib/fastswitch/state.json && test -e /etc/demo/extra.conf");

    let t = Instant::now();
    let boot = vm.power_cut();
    let cut = t.elapsed();
    assert!(
        boot.firmware.is_some() && boot.loader.is_some(),
        "the boot after the cut went through OVMF and GRUB: {boot:?}"
    );
    assert_recovered(&vm, &boot, point, &base, &etc_before);
    // systemd logs an ordering cycle to its journal even where the quiet console shows nothing.
    let cycles = vm.exec_ok("journalctl -b -o cat | grep -ci 'ordering cycle' || true");
    assert_eq!(
        cycles.trim(),
        "0",
        "{point}: systemd found an ordering cycle"
    );
    // What the cut left to the file systems: e2fsck (systemd-fsck, for the root in the initrd)
    // or the kernel at mount replays each ext4 journal (vda2 is /boot, vda3 the root).
    // Figures only: a real power cut may or may not leave one.
    let ext4 = vm.exec_ok("{ journalctl -k -b -o cat | grep -E '^EXT4-fs \\(vda[23]\\)'; journalctl -b -o cat -t systemd-fsck; } || true");
    result.set(
        "ext4_after_cut",
        ext4.lines().map(str::to_owned).collect::<Vec<_>>(),
    );
    let phases = vm.boot_phases();
    result.set(
        "cut_boot_phases",
        serde_json::json!({
            "kernel_s": phases.kernel.as_secs_f64(),
            "initrd_s": phases.initrd.as_secs_f64(),
            "userspace_s": phases.userspace.as_secs_f64(),
        }),
    );
    result.secs("cut_to_running_s", cut);
    result.set("cut_boot", boot.report());
    result.set("point", point);
    eprintln!("[power-cut] debian13 {point}: GRUB booted the old deployment, /etc restored");
}

#[test]
#[ignore = "VM scenario: run by scripts/test"]
fn kexec_preparation_killed_then_power_cut_boots_the_finalized_deployment() {
    let image = Image::get();
    let base = image.booted_checksum();
    let mut vm = Vm::boot(&image, "cut-kexec");
    install(&vm);
    ostree_stage(&vm, "test/kernel", "");
    let loaded = |vm: &Vm| vm.exec_ok("cat /sys/kernel/kexec_loaded").trim() == "1";
    let mut covered = 0;
    for point in [
        "finalize_staged:before",
        "finalize_staged:after",
        "kexec_load:before",
        "kexec_load:after",
    ] {
        let killed = vm.exec(&format!(
            "FASTSWITCH_FAULT={point} {INSTALLED} kexec --load-only --json"
        ));
        assert_eq!(killed.status, 137, "{point}: {killed:?}");
        // status agrees with ostree about staged/finalized, and with the kernel about kexec.
        let st = fastswitch_json(&vm, "status --json");
        let ours: Vec<(String, bool)> = st["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["checksum"].as_str().unwrap().to_owned(),
                    d["staged"] == true,
                )
            })
            .collect();
        let theirs: Vec<(String, bool)> = ostree_status(&vm)
            .into_iter()
            .map(|d| (d.checksum, d.staged))
            .collect();
        assert_eq!(ours, theirs, "{point}");
        let staged_now = theirs.iter().any(|(_, s)| *s);
        assert_eq!(
            staged_now,
            point == "finalize_staged:before",
            "{point}: {theirs:?}"
        );
        assert_eq!(
            st["kexec"]["loaded"].as_bool(),
            Some(loaded(&vm)),
            "{point}: {st}"
        );
        assert_eq!(loaded(&vm), point == "kexec_load:after", "{point}");
        if point == "finalize_staged:before" {
            // The re-run of the same command is the next kill point's run: it must get past
            // the finalization this run never did.
            covered += 1;
            continue;
        }
        // The same command again converges: the target's kernel is loaded.
        let rep = fastswitch_json(&vm, "kexec --load-only --json");
        assert_eq!(rep["outcome"], "ok", "{point}: {rep}");
        assert!(loaded(&vm), "{point}");
        // reset unloads it; the booted deployment keeps running.
        let r = fastswitch_json(&vm, "reset --json");
        let steps: Vec<&str> = r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["step"].as_str().unwrap())
            .collect();
        assert_eq!(steps, ["kexec_unload"], "{point}: {r}");
        assert!(!loaded(&vm), "{point}");
        assert_eq!(booted_checksum(&vm), base);
        covered += 1;
    }
    eprintln!("[power-cut] kexec preparation kill points covered: {covered}");

    // Power cut while kexec sits before the load: the deployment was finalized, so the next
    // boot is the new one, with ostree's merged /etc and no fastswitch state in /run.
    run_until_stopped(&vm, "kexec_load:before", "kexec --load-only --json");
    let boot = vm.power_cut();
    assert_running(&boot, "kexec_load:before");
    assert_eq!(booted_checksum(&vm), image.ref_checksum("test/kernel"));
    vm.exec_ok("set -e; test ! -e /run/fastswitch/state.json; test -e /etc/systemd/system/fastswitch-recover.service; test ! -e /var/lib/fastswitch/state.json");
    let unit = vm.exec_ok("systemctl show -P ActiveState fastswitch-recover");
    assert_eq!(
        unit.trim(),
        "inactive",
        "no record, so the unit's condition skipped it"
    );
    vm.discard();
}

/// The system came up `running` after the power cut. One exception, the harness's own unit:
/// `boot-marker.service` writes a line to ttyS0 for the harness, and after a power cut the getty
/// on that line can hang it up under the write (seen once in about ten cuts); that says nothing
/// about what the power cut did to the system under test, so a `degraded` state whose only
/// failed unit is the marker passes, and is reported.
fn assert_running(boot: &vm::BootInfo, point: &str) {
    if boot.state == "running" {
        return;
    }
    let failed: Vec<&str> = boot
        .failed_units
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|u| u.contains('.') && !u.chars().all(|c| c.is_ascii_digit()))
        .collect();
    if boot.state == "degraded" && failed == ["boot-marker.service"] {
        eprintln!("[power-cut] {point}: only the harness's boot-marker.service failed (serial line hung up); the system under test is running");
        return;
    }
    panic!(
        "{point}: state {} after the power cut; failed units and jobs:\n{}",
        boot.state, boot.failed_units
    );
}
