//! VM scenarios for `fastswitch apply-live` on a real ostree-booted guest (S1 runs S0's checks
//! of the guest first, `tests/vm/s0.rs`):
//! S1 a layered package (new binary, config default, enabled service, sysusers/tmpfiles) goes
//! live without a reboot, and the next cold boot is the staged deployment with a consistent
//! /etc (on Debian 12 the harness is the bootloader and must pick the newest BLS entry
//! finalization wrote: this was `tests/vm_reboot.rs`, folded in to save a boot); S2 a changed
//! binary restarts exactly its service and nothing else.

mod vm;

use serde_json::Value;
use std::collections::BTreeMap;
use vm::{
    fastswitch_json, install_fastswitch, install_prepare_units, ostree_stage, ostree_status,
    wait_prepare_service, Guest, Image, ScenarioResult, Vm,
};

const DEMO_UNITS: [&str; 4] = ["demo-hello", "demo-lib", "demo-reload", "demo-other"];

fn main_pids(vm: &Vm) -> BTreeMap<String, String> {
    let out = vm.exec_ok(&format!(
        "for u in {}; do echo \"$u $(systemctl show -P MainPID $u)\"; done",
        DEMO_UNITS.join(" ")
    ));
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(u, p)| (u.to_owned(), p.to_owned()))
        .collect()
}

fn steps(v: &Value) -> Vec<String> {
    v["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["step"].as_str().unwrap().to_owned())
        .collect()
}

fn service_actions(plan: &Value) -> BTreeMap<String, String> {
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["step"] == "services")
        .flat_map(|s| s["actions"].as_array().unwrap().iter())
        .map(|a| {
            (
                a["unit"].as_str().unwrap().to_owned(),
                a["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
#[ignore = "VM scenario: run by scripts/test"]
fn s1_layered_package_goes_live_then_boots() {
    s1(Guest::Debian12, "s1-layered");
}

/// S1 on Debian 13: the cold reboot goes through OVMF + GRUB, which boots the
/// entry ostree's finalization wrote to grub.cfg on the /boot partition.
#[test]
#[ignore = "VM scenario: run by scripts/test"]
fn s1_debian13_layered_package_goes_live_then_boots() {
    s1(Guest::Debian13, "s1-layered-debian13");
}

fn s1(guest: Guest, name: &str) {
    let mut s0 = ScenarioResult::new("s0", guest);
    let mut result = ScenarioResult::new("s1", guest);
    let image = Image::get_guest(guest);
    let mut vm = Vm::boot(&image, name);
    result.set("boot", vm.boot_report());
    // S0 first: the guest as booted, then the same staging as S1's.
    let base = vm::s0::before_staging(&vm, &image, guest, &mut s0);
    install_fastswitch(&vm);
    // As the packages ship it: fastswitch-prepare.path enabled, its service `prepare --no-kexec`.
    install_prepare_units(&vm, false);
    let boot_id = vm.boot_id();
    let stage = ostree_stage(&vm, "test/layered", "");
    s0.secs("stage_s", stage);
    result.secs("stage_s", stage);
    // The staging started the path unit's prepare, which links the live copy of the target's
    // usr while nobody waits.
    let prepare_ms = wait_prepare_service(&vm);
    eprintln!("[s1] fastswitch prepare (path unit, after staging): {prepare_ms} ms");
    result.set("prepare_service_ms", serde_json::json!(prepare_ms));
    let again = fastswitch_json(&vm, "prepare --no-kexec --json");
    assert_eq!(again["live_copy"]["outcome"], "already_linked", "{again}");
    assert_eq!(again["kexec"]["outcome"], "skipped", "{again}");
    vm::s0::after_staging(&vm, &image, &base);
    drop(s0);

    // diff sees the layered package and decides "live".
    let diff = fastswitch_json(&vm, "diff --json");
    assert_eq!(diff["decision"]["kind"], "live", "{diff}");
    let usr: Vec<(&str, &str)> = diff["usr"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap(), e["change"].as_str().unwrap()))
        .collect();
    assert!(usr.contains(&("/usr/bin/demo-extra", "added")), "{usr:?}");
    assert!(
        usr.contains(&("/usr/etc/demo/extra.conf", "added")),
        "{usr:?}"
    );
    assert!(diff["kernel"]["reasons"].as_array().unwrap().is_empty());

    // The dry run is the plan the executor will walk; nothing changes.
    let plan = fastswitch_json(&vm, "apply-live --dry-run --json");
    assert_eq!(plan["schema_version"], 1);
    assert_eq!(
        steps(&plan),
        [
            "link_usr",
            "swap_usr",
            "merge_etc",
            "sysusers",
            "tmpfiles",
            "daemon_reload",
            "services",
        ]
    );
    let actions = service_actions(&plan);
    assert_eq!(
        actions.get("demo-extra.service").map(String::as_str),
        Some("start"),
        "{plan}"
    );
    for u in DEMO_UNITS {
        assert!(
            !actions.contains_key(&format!("{u}.service")),
            "collateral {u} in {actions:?}"
        );
    }
    vm.exec_ok("test ! -e /usr/bin/demo-extra && test ! -e /etc/demo/extra.conf");

    let before = main_pids(&vm);
    let t = std::time::Instant::now();
    let report = fastswitch_json(&vm, "apply-live --json");
    eprintln!(
        "[s1] apply-live took {:.1}s (report total {} ms)",
        t.elapsed().as_secs_f64(),
        report["total_ms"]
    );
    for s in report["steps"].as_array().unwrap() {
        eprintln!(
            "[s1]   {:<14} {:>6} ms",
            s["step"].as_str().unwrap(),
            s["duration_ms"]
        );
    }
    assert_eq!(report["outcome"], "ok", "{report}");
    assert_eq!(report["steps"][0]["detail"]["reused"], true, "{report}");
    result.secs("apply_live_s", t.elapsed());
    result.set("apply_own_ms", report["own_ms"].clone());
    result.set("apply_journal_ms", report["journal_ms"].clone());
    result.set("apply_phases", report["phases"].clone());
    // The /etc plan decides every comparison by inode: the default the package added is new,
    // every other default is the booted one's very object, so no file of /etc is read.
    let etc_phase = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == "diff.etc")
        .unwrap_or_else(|| panic!("no diff.etc phase: {report}"));
    assert_eq!(etc_phase["compared"]["bytes"], 0, "{etc_phase}");
    assert!(
        etc_phase["compared"]["identity"].as_u64().unwrap() > 100,
        "{etc_phase}"
    );
    result.set("apply_wall_ms", report["wall_ms"].clone());
    result.set("apply_steps", report["steps"].clone());
    assert_eq!(vm.boot_id(), boot_id, "no reboot");
    // The new binary is there, its config is in /etc, its user exists, and it runs.
    let facts = vm.exec_ok(
        "set -e; test -x /usr/bin/demo-extra; cat /etc/demo/extra.conf; getent passwd demo-extra >/dev/null && echo user-ok; \
         systemctl is-active demo-extra; for i in $(seq 50); do [ -e /run/demo-extra/extra.data ] && break; sleep 0.1; done; cat /run/demo-extra/extra.data",
    );
    let lines: Vec<&str> = facts.lines().collect();
    assert_eq!(
        lines,
        [
            "greeting=hello-from-layered",
            "user-ok",
            "active",
            "greeting=hello-from-layered"
        ],
        "{facts}"
    );
    assert_eq!(main_pids(&vm), before, "no collateral restarts");
    let status = fastswitch_json(&vm, "status --json");
    assert_eq!(status["live"]["complete"], true);
    assert_eq!(status["live"]["target"], plan["to"]["id"]);
    // /usr is one read-only bind, of fastswitch's copy of the target's usr, over the booted one.
    let usr_src = vm.exec_ok("findmnt -no FSROOT,OPTIONS /usr | tail -1");
    assert!(
        usr_src.contains(&format!(
            "/ostree/fastswitch/live/{}/usr",
            plan["to"]["id"].as_str().unwrap()
        )),
        "{usr_src}"
    );
    assert!(usr_src.contains("ro"), "{usr_src}");

    // A cold reboot through firmware boots the staged deployment with a consistent /etc.
    let old_deps = ostree_status(&vm);
    let old_booted = old_deps.iter().find(|d| d.booted).expect("booted").id();
    let old_entry = vm.boot_entry().clone();
    let timings = vm.cold_reboot();
    eprintln!("[s1] cold reboot: {timings:?}");
    result.secs("cold_reboot_s", timings.total);
    result.secs("cold_reboot_shutdown_s", timings.shutdown);
    result.set("cold_reboot_boot", timings.boot.report());
    assert_ne!(timings.boot.boot_id, boot_id, "the boot id changes");
    assert_eq!(
        timings.boot.state, "running",
        "failed units after the reboot:\n{}",
        timings.boot.failed_units
    );
    // ostree: the layered commit is booted, the old deployment is the rollback.
    let deps = ostree_status(&vm);
    assert_eq!(deps.len(), 2, "{deps:?}");
    let booted = deps.iter().find(|d| d.booted).expect("a booted deployment");
    assert_eq!(booted.checksum, image.ref_checksum("test/layered"));
    assert_eq!(booted.refspec.as_deref(), Some("test/layered"));
    assert!(!booted.staged && !booted.pending, "{booted:?}");
    let rollback: Vec<_> = deps.iter().filter(|d| d.rollback).collect();
    assert_eq!(rollback.len(), 1, "{deps:?}");
    assert_eq!(rollback[0].id(), old_booted);
    // The kernel command line's ostree= names the booted deployment (GRUB on Debian 13 read
    // the grub.cfg finalization regenerated on /boot; on Debian 12 the harness, as the
    // bootloader, must have picked the newest BLS entry finalization wrote).
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
    if guest == Guest::Debian12 {
        let entry = vm.boot_entry();
        assert!(
            entry.version > old_entry.version,
            "{entry:?} vs {old_entry:?}"
        );
        assert_ne!(entry.options, old_entry.options);
    }
    vm.exec_ok("grep -qx greeting=hello-from-layered /etc/demo/extra.conf && systemctl is-active demo-extra");
    // The live apply's persistent /etc record was dropped at boot, not undone: its target
    // is what booted (extra.conf above is still there).
    let unit = vm.exec_ok(
        "systemctl show -P ExecMainStatus fastswitch-recover; test ! -e /var/lib/fastswitch/state.json && echo dropped",
    );
    assert_eq!(
        unit.split_whitespace().collect::<Vec<_>>(),
        ["0", "dropped"]
    );
    let status = fastswitch_json(&vm, "status --json");
    assert_eq!(
        status["live"],
        Value::Null,
        "live state is gone with the boot"
    );
    vm.discard();
}

#[test]
#[ignore = "VM scenario: run by scripts/test"]
fn s2_changed_binary_restarts_exactly_its_service() {
    s2(Guest::Debian12, "s2-hello-v2");
}

/// S2 on Debian 13 (Linux 6.12): the second apply-live replaces the /usr bind in place
/// (`MOVE_MOUNT_BENEATH`) instead of stacking.
#[test]
#[ignore = "VM scenario: run by scripts/test"]
fn s2_debian13_changed_binary_restarts_exactly_its_service() {
    s2(Guest::Debian13, "s2-hello-v2-debian13");
}

/// The mounts at /usr in the agent's mount namespace, bottom first, from /proc/self/mountinfo:
/// each one's FSROOT (the deployment directory it shows).
fn usr_mounts(vm: &Vm) -> Vec<String> {
    vm.exec_ok("awk '$5 == \"/usr\" { print $4 }' /proc/self/mountinfo")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The mounts at /usr that are not the booted deployment's own /usr: fastswitch's binds (of its
/// live copies, `/ostree/fastswitch/live/<id>/usr`).
fn fastswitch_binds(mounts: &[String], booted_id: &str) -> Vec<String> {
    mounts
        .iter()
        .filter(|m| !m.ends_with(&format!("/deploy/{booted_id}/usr")))
        .cloned()
        .collect()
}

fn wait_version(vm: &Vm, file: &str, want: &str) -> String {
    vm.exec_ok(&format!(
        "for i in $(seq 50); do [ \"$(cat /run/demo/{file})\" = {want} ] && break; sleep 0.1; done; cat /run/demo/{file}"
    ))
    .trim()
    .to_owned()
}

/// S2, then §3 of the real-hosts issue in the same boot: a second apply-live to a newer target
/// (`test/lib-v2`, staged over the live `test/hello-v2`) leaves exactly one fastswitch bind on
/// /usr where the kernel has `MOVE_MOUNT_BENEATH` (Linux ≥ 6.5: Debian 13's 6.12), stacked binds
/// on Debian 12's 6.1; `reset` removes every bind on both.
///
/// Both targets are staged for real, as `rpm-ostree upgrade` or `bootc upgrade` would: staging
/// the second makes ostree delete the first staged deployment, whose files /usr shows. /usr must
/// keep working (it shows fastswitch's own hardlinked copy), and the second apply-live plans from
/// the booted deployment, saying why.
fn s2(guest: Guest, name: &str) {
    let mut result = ScenarioResult::new("s2", guest);
    let image = Image::get_guest(guest);
    let vm = Vm::boot(&image, name);
    result.set("boot", vm.boot_report());
    let booted = ostree_status(&vm)
        .into_iter()
        .find(|d| d.booted)
        .expect("a booted deployment")
        .id();
    let os = image.os();
    let live_usr = |id: &str| format!("/ostree/fastswitch/live/{id}/usr");
    let base = usr_mounts(&vm);
    assert!(fastswitch_binds(&base, &booted).is_empty(), "{base:?}");
    result.set("kernel", vm.exec_ok("uname -r").trim());

    let t = std::time::Instant::now();
    ostree_stage(&vm, "test/hello-v2", "");
    let plan = fastswitch_json(&vm, "apply-live --dry-run --json");
    let actions = service_actions(&plan);
    assert_eq!(
        actions.get("demo-hello.service").map(String::as_str),
        Some("restart"),
        "{plan}"
    );
    let executed: Vec<_> = actions
        .iter()
        .filter(|(_, a)| *a != "deferred" && *a != "needs_restart")
        .collect();
    assert_eq!(executed.len(), 1, "only demo-hello restarts: {actions:?}");
    let before = main_pids(&vm);
    let report = fastswitch_json(&vm, "apply-live --json");
    assert_eq!(report["outcome"], "ok", "{report}");
    let after = main_pids(&vm);
    assert_ne!(
        after["demo-hello"], before["demo-hello"],
        "demo-hello got a new PID"
    );
    for u in ["demo-lib", "demo-reload", "demo-other"] {
        assert_eq!(after[u], before[u], "{u} kept its PID");
    }
    assert_eq!(wait_version(&vm, "hello.version", "v2"), "v2");
    for s in report["steps"].as_array().unwrap() {
        if s["step"] == "services" {
            for o in s["detail"].as_array().unwrap() {
                eprintln!(
                    "[s2]   {} {} {} ms",
                    o["unit"], o["action"], o["duration_ms"]
                );
            }
        }
    }
    let first = fastswitch_binds(&usr_mounts(&vm), &booted);
    let first_target = plan["to"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        first,
        [live_usr(&first_target)],
        "one bind (of the live copy) after the first apply-live"
    );
    let link = report["steps"][0].clone();
    assert_eq!(link["step"], "link_usr", "{report}");
    assert!(
        steps(&report).contains(&"prune_usr_copies".to_owned()),
        "{report}"
    );
    result.set("link_usr", link.clone());
    result.set("first_apply_own_ms", report["own_ms"].clone());
    result.set("first_apply_phases", report["phases"].clone());
    result.set("first_apply_wall_ms", report["wall_ms"].clone());
    result.set("usr_binds_after_first_apply", first.len());
    result.secs("s2_first_apply_s", t.elapsed());
    eprintln!(
        "[s2] first apply-live (deploy + apply): {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // A newer target while the first is live: stage another ref. ostree deletes the first
    // staged deployment; /usr keeps working from the live copy.
    let t = std::time::Instant::now();
    ostree_stage(&vm, "test/lib-v2", "");
    vm.exec_ok(&format!(
        "test ! -e /ostree/deploy/{os}/deploy/{first_target}"
    ));
    let files = vm
        .exec_ok("ls /usr/bin | wc -l")
        .trim()
        .parse::<u32>()
        .unwrap();
    assert!(files > 100, "/usr/bin still lists {files} files");
    vm.exec_ok("/usr/bin/env true && systemctl --version >/dev/null");
    assert_eq!(wait_version(&vm, "hello.version", "v2"), "v2");
    let status = fastswitch_json(&vm, "status --json");
    assert_eq!(
        status["live"]["target_deployment_present"], false,
        "{status}"
    );
    assert_eq!(status["live"]["usr_is_target"], true, "{status}");
    result.set("usr_bin_files_after_first_target_removed", files);
    // The plan runs from the booted deployment (the live target is gone); the stale scan still
    // finds demo-hello running v2, so it goes back to v1, and demo-lib goes to v2.
    // What fastswitch-prepare.path runs after staging (S3 runs it through the unit): the same
    // kernel, so it links the live copy of the new target now; the first target's copy is
    // mounted, so it stays.
    let prepared = fastswitch_json(&vm, "prepare --json");
    let copy = &prepared["live_copy"];
    assert_eq!(copy["outcome"], "linked", "{prepared}");
    assert_eq!(prepared["kexec"]["outcome"], "not_needed", "{prepared}");
    assert_eq!(copy["pruned"], serde_json::json!([]), "{prepared}");
    eprintln!("[s2] prepare after staging: {copy}");
    result.set("prepare_live_copy", copy.clone());
    let plan2 = fastswitch_json(&vm, "apply-live --dry-run --json");
    let second_target = plan2["to"]["id"].as_str().unwrap().to_owned();
    assert_ne!(second_target, first_target);
    assert_eq!(
        plan2["from"]["id"].as_str(),
        Some(booted.as_str()),
        "{plan2}"
    );
    let actions2 = service_actions(&plan2);
    eprintln!("[s2] second apply-live plans: {actions2:?}");
    let report2 = fastswitch_json(&vm, "apply-live --json");
    assert_eq!(report2["outcome"], "ok", "{report2}");
    // The prepared copy is reused, and pruning is left to the next prepare or reset.
    assert_eq!(report2["steps"][0]["step"], "link_usr", "{report2}");
    assert_eq!(report2["steps"][0]["detail"]["reused"], true, "{report2}");
    assert!(
        !steps(&report2).contains(&"prune_usr_copies".to_owned()),
        "{report2}"
    );
    result.set("second_apply_own_ms", report2["own_ms"].clone());
    result.set("second_apply_journal_ms", report2["journal_ms"].clone());
    result.set("second_apply_phases", report2["phases"].clone());
    result.set("second_apply_wall_ms", report2["wall_ms"].clone());
    result.set("second_apply_steps", report2["steps"].clone());
    result.set("second_apply_link_usr", report2["steps"][0].clone());
    let swap = report2["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "swap_usr")
        .unwrap_or_else(|| panic!("no swap_usr step: {report2}"))
        .clone();
    let mounts = usr_mounts(&vm);
    let binds = fastswitch_binds(&mounts, &booted);
    eprintln!("[s2] /usr after the second apply-live: {mounts:?}; swap_usr: {swap}");
    result.set("usr_binds_after_second_apply", binds.len());
    result.set("usr_mounts_after_second_apply", mounts.clone());
    let top = live_usr(&second_target);
    assert_eq!(mounts.last(), Some(&top), "/usr shows the second target");
    match guest {
        // Linux 6.12: the first target's bind was replaced beneath, then detached.
        Guest::Debian13 => {
            assert_eq!(
                binds,
                std::slice::from_ref(&top),
                "exactly one fastswitch bind"
            );
            assert_eq!(swap["detail"]["replaced"], true, "{swap}");
        }
        // Linux 6.1 has no MOVE_MOUNT_BENEATH: the second bind stacks over the first.
        Guest::Debian12 => {
            assert_eq!(
                binds,
                [live_usr(&first_target), top.clone()],
                "stacked binds"
            );
            assert_eq!(swap["detail"]["usr_binds"], 2, "{swap}");
        }
    }
    // The running system is the second target's: hello back to v1, the library at v2.
    assert_eq!(wait_version(&vm, "hello.version", "v1"), "v1");
    assert_eq!(wait_version(&vm, "lib.version", "v2"), "v2");
    result.secs("s2_second_apply_s", t.elapsed());
    eprintln!(
        "[s2] second apply-live (deploy + apply): {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // reset goes back: no fastswitch bind left, /usr is the booted deployment's, old binaries.
    let rep = fastswitch_json(&vm, "reset --json");
    assert_eq!(rep["outcome"], "ok", "{rep}");
    assert_eq!(wait_version(&vm, "hello.version", "v1"), "v1");
    assert_eq!(wait_version(&vm, "lib.version", "v1"), "v1");
    let mounts = usr_mounts(&vm);
    assert_eq!(mounts, base, "reset restores /usr");
    result.set(
        "usr_binds_after_reset",
        fastswitch_binds(&mounts, &booted).len(),
    );
    vm.exec_ok("test ! -e /run/fastswitch/state.json");
    let left = vm.exec_ok("ls /ostree/fastswitch/live 2>/dev/null | wc -l");
    assert_eq!(left.trim(), "0", "reset leaves no live copy");
    vm.discard();
}

/// Stage `refspec`, check the plan's executed service actions are exactly `expect`, apply, and
/// return (report, pids before, pids after). Leaves the system live on `refspec`.
fn apply_expecting(
    vm: &Vm,
    refspec: &str,
    expect: &[(&str, &str)],
) -> (Value, BTreeMap<String, String>, BTreeMap<String, String>) {
    ostree_stage(vm, refspec, "");
    apply_staged_expecting(vm, refspec, expect)
}

/// [`apply_expecting`] for a target staged already.
fn apply_staged_expecting(
    vm: &Vm,
    refspec: &str,
    expect: &[(&str, &str)],
) -> (Value, BTreeMap<String, String>, BTreeMap<String, String>) {
    let plan = fastswitch_json(vm, "apply-live --dry-run --json");
    let actions = service_actions(&plan);
    let executed: BTreeMap<String, String> = actions
        .iter()
        .filter(|(_, a)| *a != "deferred" && *a != "needs_restart")
        .map(|(u, a)| (u.clone(), a.clone()))
        .collect();
    let want: BTreeMap<String, String> = expect
        .iter()
        .map(|(u, a)| (u.to_string(), a.to_string()))
        .collect();
    assert_eq!(
        executed, want,
        "{refspec}: planned unit actions {actions:?}"
    );
    let before = main_pids(vm);
    let report = fastswitch_json(vm, "apply-live --json");
    assert_eq!(report["outcome"], "ok", "{refspec}: {report}");
    for s in report["steps"].as_array().unwrap() {
        if s["step"] == "services" {
            for o in s["detail"].as_array().unwrap() {
                eprintln!(
                    "[{refspec}]   {} {} {} ms",
                    o["unit"], o["action"], o["duration_ms"]
                );
            }
        }
    }
    let after = main_pids(vm);
    (plan, before, after)
}

#[test]
#[ignore = "VM scenario: run by scripts/test"]
fn s4_library_reload_only_and_dbus() {
    s4(Guest::Debian12, "s4-services");
}

// S4 runs on Debian 12 only. On Debian 13 each of its parts is proven elsewhere, and one
// restore, four stagings and four applies less keep CI under the hour: the changed library
// restarts exactly its service on the composefs guest (tests/vm_composefs.rs, S4 there), and
// the dbus change picks soft-reboot and really soft-reboots (tests/vm_soft_reboot.rs).

fn s4(guest: Guest, name: &str) {
    let mut result = ScenarioResult::new("s4", guest);
    let image = Image::get_guest(guest);
    let vm = Vm::boot(&image, name);
    result.set("boot", vm.boot_report());

    // (b) a changed shared library restarts exactly the service that maps it.
    let (plan, before, after) =
        apply_expecting(&vm, "test/lib-v2", &[("demo-lib.service", "restart")]);
    let reasons = plan.to_string();
    assert!(
        reasons.contains("/usr/lib/demo/libdemo.so"),
        "the reason names the mapping: {reasons}"
    );
    assert_ne!(after["demo-lib"], before["demo-lib"]);
    for u in ["demo-hello", "demo-reload", "demo-other"] {
        assert_eq!(after[u], before[u], "{u} kept its PID");
    }
    let v = vm.exec_ok("for i in $(seq 50); do [ \"$(cat /run/demo/lib.version)\" = v2 ] && break; sleep 0.1; done; cat /run/demo/lib.version");
    assert_eq!(v.trim(), "v2");
    assert_eq!(fastswitch_json(&vm, "reset --json")["outcome"], "ok");

    // (c) only ExecReload= changed: reload, same PID, the new ExecReload ran.
    let (_, before, after) = apply_expecting(
        &vm,
        "test/reload-only",
        &[("demo-reload.service", "reload")],
    );
    assert_eq!(after, before, "no PID changed");
    assert_eq!(vm.exec_ok("cat /run/demo/reload.exec-reload").trim(), "v2");
    assert_eq!(fastswitch_json(&vm, "reset --json")["outcome"], "ok");

    // (d) dbus changed. `switch` would not apply it live (dbus would be deferred). On
    // Debian 13 (systemd 257) the ladder picks soft-reboot; on Debian 12 (systemd 252) there is
    // no soft-reboot, so it picks kexec and says why.
    ostree_stage(&vm, "test/dbus-changed", "");
    let p = fastswitch_json(&vm, "switch --dry-run --json");
    let ladder = &p["ladder"];
    let reasons = |i: usize| ladder["rungs"][i]["reasons"].to_string();
    assert!(reasons(1).contains("dbus.service"), "live: {}", reasons(1));
    result.set("dbus_change_rung", ladder["chosen"].clone());
    match guest {
        Guest::Debian13 => {
            assert_eq!(ladder["chosen"], "soft-reboot", "{ladder}");
            assert_eq!(ladder["rungs"][2]["rung"], "soft-reboot", "{ladder}");
            assert_eq!(ladder["rungs"][2]["possible"], true, "{ladder}");
        }
        Guest::Debian12 => {
            assert_eq!(ladder["chosen"], "kexec", "{ladder}");
            assert!(
                reasons(2).contains("systemd 252") && reasons(2).contains("needs systemd ≥ 254"),
                "soft-reboot: {}",
                reasons(2)
            );
            assert_eq!(p["steps"][0]["step"], "finalize_staged", "{p}");
        }
    }
    // apply-live does it anyway when asked: dbus deferred with its reason, not restarted.
    let dbus_pid = vm.exec_ok("systemctl show -P MainPID dbus");
    let (plan, before, after) = apply_staged_expecting(&vm, "test/dbus-changed", &[]);
    let actions = service_actions(&plan);
    assert_eq!(
        actions.get("dbus.service").map(String::as_str),
        Some("deferred"),
        "{plan}"
    );
    assert_eq!(after, before);
    assert_eq!(
        vm.exec_ok("systemctl show -P MainPID dbus"),
        dbus_pid,
        "dbus was not restarted"
    );
    vm.discard();
}
