//! Scenario S0: the test VM is a real ostree-booted host, its demo fixtures behave as later
//! scenarios expect, and `fastswitch status --json` agrees with `ostree admin status`, before and
//! after staging `test/layered`. On Debian 13 it also checks the firmware boot: UEFI, GRUB
//! (LoaderInfo), and `/boot` and the ESP on their own partitions.
//!
//! S0 runs inside S1 (tests/vm_apply_live.rs), which stages the same `test/layered` on the same
//! restored guest: [`before_staging`] right after the boot, [`after_staging`] right after S1's
//! staging. It was its own scenario until the CI time ran short; a restore, a staging and a
//! poweroff per guest less. It still writes `target/vm-results/s0-<guest>.json`.

use super::ostree::Deployment;
use super::{fastswitch_json, ostree_status, Guest, Image, ScenarioResult, Vm, GUEST_FASTSWITCH};
use serde_json::Value;

/// The deployment objects of `fastswitch status --json` with `key == true`.
fn marked<'a>(status: &'a Value, key: &str) -> Vec<&'a Value> {
    status["deployments"]
        .as_array()
        .expect("status: deployments is an array")
        .iter()
        .filter(|d| d[key] == Value::Bool(true))
        .collect()
}

/// Check one deployment of `fastswitch status --json` against ostree's view.
fn assert_same_deployment(json: &Value, ostree: &super::ostree::Deployment) {
    assert_eq!(json["id"], Value::from(ostree.id()), "{json}");
    assert_eq!(
        json["checksum"],
        Value::from(ostree.checksum.clone()),
        "{json}"
    );
    assert_eq!(json["serial"], Value::from(ostree.serial), "{json}");
    assert_eq!(
        json["stateroot"],
        Value::from(ostree.stateroot.clone()),
        "{json}"
    );
    for key in ["booted", "staged", "pending", "rollback", "pinned"] {
        let want = match key {
            "booted" => ostree.booted,
            "staged" => ostree.staged,
            // `ostree admin status` prints one tag, "(staged)" before
            // "(pending)"; in ostree's API (query_deployments_for) a staged
            // deployment is also the pending one.
            "pending" => ostree.pending || ostree.staged,
            "rollback" => ostree.rollback,
            _ => ostree.pinned,
        };
        assert_eq!(json[key], Value::Bool(want), "{key} of {json}");
    }
    assert_eq!(
        json["origin"]["refspec"].as_str(),
        ostree.refspec.as_deref(),
        "origin refspec of {json}"
    );
}

fn assert_status_matches_ostree(status: &Value, ostree: &[super::ostree::Deployment]) {
    assert_eq!(status["schema_version"], Value::from(1), "{status}");
    let deps = status["deployments"].as_array().expect("deployments");
    assert_eq!(deps.len(), ostree.len(), "deployment count: {status}");
    for o in ostree {
        let j = deps
            .iter()
            .find(|d| d["id"] == o.id())
            .unwrap_or_else(|| panic!("fastswitch status lacks deployment {}: {status}", o.id()));
        assert_same_deployment(j, o);
    }
}

/// Checks only a guest booted by firmware + GRUB with a separate /boot has.
fn check_firmware_boot_layout(vm: &Vm, image: &Image) {
    // UEFI boot, and GRUB said so (its bli module sets LoaderInfo)
    vm.exec_ok("test -d /sys/firmware/efi");
    let loader = vm.exec_ok(
        "tr -d '\\0' < /sys/firmware/efi/efivars/LoaderInfo-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f",
    );
    assert!(loader.contains("GRUB"), "LoaderInfo: {loader:?}");
    // /boot and /boot/efi are their own file systems, from the partitions in image.json
    let mounts = vm.exec_ok("findmnt -no SOURCE,FSTYPE /boot; findmnt -no SOURCE,FSTYPE /boot/efi; findmnt -no SOURCE / | sed 's/\\[.*//'");
    let mounts: Vec<Vec<&str>> = mounts
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let part = |name: &str| {
        image.manifest["partitions"]
            .as_array()
            .expect("image.json: partitions")
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("image.json: no partition {name}"))
            .clone()
    };
    let (boot, esp, root) = (part("boot"), part("esp"), part("root"));
    assert_eq!(
        mounts[0],
        [boot["device"].as_str().unwrap(), "ext4"],
        "{mounts:?}"
    );
    assert_eq!(
        mounts[1],
        [esp["device"].as_str().unwrap(), "vfat"],
        "{mounts:?}"
    );
    assert_eq!(mounts[2], [root["device"].as_str().unwrap()], "{mounts:?}");
    let devs = vm.exec_ok("stat -c %d / /boot /sysroot");
    let devs: Vec<&str> = devs.lines().collect();
    assert_ne!(devs[0], devs[1], "/ and /boot must be different devices");
    assert_eq!(devs[0], devs[2], "/ and /sysroot are on the root partition");
    // The physical sysroot's boot directory is only the mount point: the boot
    // entries are on the mounted /boot.
    vm.exec_ok("test -d /boot/loader/entries && test ! -e /sysroot/boot/loader");
    // GRUB follows ostree's loader/grub.cfg, whose entries ostree maintains
    let cfg = vm.exec_ok("readlink /boot/loader; grep -c '^menuentry' /boot/loader/grub.cfg");
    assert!(cfg.starts_with("loader."), "{cfg}");
}

/// The checks on the freshly booted guest; returns its booted deployment.
pub fn before_staging(
    vm: &Vm,
    image: &Image,
    guest: Guest,
    result: &mut ScenarioResult,
) -> Deployment {
    result.set("boot", vm.boot_report());
    if guest.firmware_boot() {
        check_firmware_boot_layout(vm, image);
    }

    // --- the guest is ostree-booted from the image's base commit -------------
    vm.exec_ok("test -e /run/ostree-booted");
    let deployments = ostree_status(vm);
    assert_eq!(deployments.len(), 1, "{deployments:?}");
    let booted = deployments[0].clone();
    assert!(booted.booted, "{booted:?}");
    assert_eq!(booted.stateroot, image.os());
    assert_eq!(booted.checksum, image.booted_checksum());
    assert_eq!(
        booted.refspec.as_deref(),
        image.manifest["base_ref"].as_str()
    );
    // the ostree= karg (from the BLS entry the harness booted) resolves to it
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
    // /usr is a read-only mount, /sysroot is writable
    let usr_opts = vm.exec_ok("findmnt -no OPTIONS /usr");
    assert!(
        usr_opts.trim().split(',').any(|o| o == "ro"),
        "/usr options: {usr_opts}"
    );
    let touch = vm.exec("touch /usr/.fastswitch-probe");
    assert!(!touch.success(), "writing to /usr must fail");
    assert!(touch.stderr.contains("Read-only file system"), "{touch:?}");
    vm.exec_ok("test ! -e /usr/.fastswitch-probe && touch /sysroot/.probe && rm /sysroot/.probe");
    // every test ref is in the guest's repo
    let refs = image.manifest["refs"].as_object().expect("refs");
    let names: Vec<&str> = refs.keys().map(String::as_str).collect();
    let got = vm.exec_ok(&format!(
        "for r in {}; do ostree rev-parse $r; done",
        names.join(" ")
    ));
    let want: Vec<&str> = refs.values().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(got.lines().collect::<Vec<_>>(), want, "refs {names:?}");

    // --- demo fixtures --------------------------------------------------------
    let facts = vm.exec_ok(
        r#"set -e
cd /run/demo
echo "$(cat hello.version) $(cat hello.data) $(cat lib.version) $(cat reload.version) $(cat other.version)"
pid=$(systemctl show -P MainPID demo-hello); readlink /proc/$pid/exe
pid=$(systemctl show -P MainPID demo-lib); grep -c ' /usr/lib/demo/libdemo.so$' /proc/$pid/maps"#,
    );
    let lines: Vec<&str> = facts.lines().collect();
    assert_eq!(lines[0], "v1 v1 v1 v1 v1", "{facts}");
    assert_eq!(lines[1], "/usr/bin/demo-hello", "{facts}");
    assert!(lines[2].parse::<u32>().unwrap() >= 1, "{facts}");
    // ExecReload of demo-reload runs and the process counts the SIGHUP
    let reload = vm.exec_ok(
        r#"set -e
pid=$(systemctl show -P MainPID demo-reload)
systemctl reload demo-reload
for i in $(seq 50); do [ -e /run/demo/reload.reloads ] && break; sleep 0.1; done
echo "$(cat /run/demo/reload.exec-reload) $(cat /run/demo/reload.reloads) $([ "$pid" = "$(systemctl show -P MainPID demo-reload)" ] && echo same-pid)""#,
    );
    assert_eq!(reload.trim(), "v1 1 same-pid");

    // --- fastswitch status --json agrees with ostree ----------------------------
    vm.exec_ok(&format!("test -x {GUEST_FASTSWITCH}"));
    let status = fastswitch_json(vm, "status --json");
    assert_status_matches_ostree(&status, &deployments);
    let b = marked(&status, "booted");
    assert_eq!(b.len(), 1, "{status}");
    assert_eq!(
        b[0]["kernel"]["version"].as_str(),
        Some(image.kernel_version().as_str()),
        "{status}"
    );
    let kargs: Vec<&str> = b[0]["kargs"]
        .as_array()
        .expect("kargs array")
        .iter()
        .map(|k| k.as_str().expect("karg string"))
        .collect();
    for k in image.manifest["kargs"].as_array().expect("image kargs") {
        assert!(
            kargs.contains(&k.as_str().unwrap()),
            "karg {k} in {kargs:?}"
        );
    }

    booted
}

/// The checks once `test/layered` is staged on top of `booted`.
pub fn after_staging(vm: &Vm, image: &Image, booted: &Deployment) {
    // --- test/layered staged ----------------------------------------------------
    let deployments = ostree_status(vm);
    assert_eq!(deployments.len(), 2, "{deployments:?}");
    let staged: Vec<_> = deployments.iter().filter(|d| d.staged).collect();
    assert_eq!(staged.len(), 1, "{deployments:?}");
    assert_eq!(staged[0].checksum, image.ref_checksum("test/layered"));
    assert_eq!(staged[0].refspec.as_deref(), Some("test/layered"));
    assert!(!staged[0].booted);
    let still_booted: Vec<_> = deployments.iter().filter(|d| d.booted).collect();
    assert_eq!(still_booted.len(), 1);
    assert_eq!(still_booted[0].id(), booted.id());

    let status = fastswitch_json(vm, "status --json");
    assert_status_matches_ostree(&status, &deployments);
    let s = marked(&status, "staged");
    assert_eq!(s.len(), 1, "{status}");
    assert_eq!(s[0]["id"], Value::from(staged[0].id()));
    assert_eq!(s[0]["booted"], Value::Bool(false));
    assert_eq!(marked(&status, "booted")[0]["id"], Value::from(booted.id()));

    // --- fastswitch diff --json sees the layered package --------------------------
    let diff = fastswitch_json(vm, "diff --json");
    assert_eq!(diff["schema_version"], Value::from(1), "{diff}");
    assert_eq!(diff["from"]["id"], Value::from(booted.id()), "{diff}");
    assert_eq!(diff["to"]["id"], Value::from(staged[0].id()), "{diff}");
    assert_eq!(diff["decision"]["kind"], "live", "{diff}");
    let changed: Vec<(String, String)> = diff["usr"]["entries"]
        .as_array()
        .expect("usr entries")
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_owned(),
                e["change"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for path in [
        "/usr/bin/demo-extra",
        "/usr/lib/systemd/system/demo-extra.service",
        "/usr/etc/demo/extra.conf",
        "/usr/lib/sysusers.d/demo-extra.conf",
        "/usr/lib/tmpfiles.d/demo-extra.conf",
    ] {
        assert!(
            changed.contains(&(path.to_owned(), "added".to_owned())),
            "{path} not added in {changed:?}"
        );
    }
    let units: Vec<&str> = diff["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["unit"].as_str().unwrap())
        .collect();
    assert!(units.contains(&"demo-extra.service"), "{units:?}");
    // The same trees through real ostree: `ostree diff` lists the same /usr paths.
    let truth = vm.exec_ok(&format!(
        "ostree diff {} {} | grep ' /usr/' | sort",
        booted.checksum, staged[0].checksum
    ));
    let mut truth: Vec<String> = truth
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    truth.sort();
    let ours: Vec<String> = {
        let mut v: Vec<String> = changed
            .iter()
            .map(|(p, c)| {
                format!(
                    "{} {p}",
                    match c.as_str() {
                        "added" => "A",
                        "removed" => "D",
                        _ => "M",
                    }
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(ours, truth, "fastswitch diff vs ostree diff");
}
