//! VM scenario: fastswitch as a host carries it, from its Debian package.
//!
//! An image build in the guest installs the .deb scripts/build-deb made (on the tools disk)
//! into a checkout of the booted commit with dpkg, maintainer scripts and all, and commits
//! the tree as a new ref; the test binary on the tools disk brings that image up live
//! (fastswitch installs itself), and from then on only `/usr/bin/fastswitch` from the package
//! is used: `status`, `man fastswitch`, bash completion of a subcommand.
//! Results: target/vm-results/package-<guest>.json.

mod vm;

use serde_json::Value;
use std::time::Instant;
use vm::{
    fastswitch_deb, image_build_install, ostree_stage, ostree_status, Guest, Image, ScenarioResult,
    Vm, VmOptions, GUEST_FASTSWITCH, PACKAGED,
};

/// One guest per run: Debian 13 unless FASTSWITCH_VM_GUEST=debian12 (passed on both). The image
/// build in a TCG guest (checkout of the whole tree, dpkg, commit) and the staging cost minutes,
/// so CI runs it on the guest that boots like real hardware only.
#[test]
#[ignore = "VM scenario: run by scripts/test"]
fn package() {
    let guest = match std::env::var("FASTSWITCH_VM_GUEST") {
        Ok(_) => Guest::from_env(),
        Err(_) => Guest::Debian13,
    };
    run(guest);
}

/// Run `fastswitch <args>` (binary `bin`) in the guest; the JSON it prints.
fn json(vm: &Vm, bin: &str, args: &str) -> Value {
    let out = vm.exec_ok(&format!("{bin} {args}"));
    serde_json::from_str(&out)
        .unwrap_or_else(|e| vm.fail(&format!("{bin} {args}: not JSON ({e}):\n{out}")))
}

/// The bash completion the package installs, loaded the way an interactive bash loads it
/// (bash-completion's on-demand loader finds /usr/share/bash-completion/completions/fastswitch),
/// then asked to complete `fastswitch ap`. Prints `complete -p` and one `offered: WORD` a line.
const COMPLETE_AP: &str = r#"set -e
. /usr/share/bash-completion/bash_completion
if declare -F _comp_load >/dev/null; then _comp_load fastswitch; else __load_completion fastswitch; fi
complete -p fastswitch
f=$(complete -p fastswitch | sed -n 's/.*-F \([^ ]*\) .*/\1/p')
COMP_WORDS=(fastswitch ap); COMP_CWORD=1; COMP_LINE="fastswitch ap"; COMP_POINT=${#COMP_LINE}
"$f" fastswitch ap fastswitch
printf 'offered: %s\n' "${COMPREPLY[@]}"
"#;

fn run(guest: Guest) {
    let mut result = ScenarioResult::new("package", guest);
    let deb = fastswitch_deb();
    result.set(
        "deb",
        deb.file_name().unwrap().to_string_lossy().into_owned(),
    );
    let image = Image::get_guest(guest);
    let name = format!("package-{}", guest.name());
    let vm = Vm::boot_with(&image, VmOptions::new(&name).tool(&deb, vm::DEB_TOOL));
    result.set("boot", vm.boot_report());
    vm.exec_ok(&format!(
        "test ! -e {PACKAGED}; command -v man; test -r /usr/share/bash-completion/bash_completion"
    ));

    // The image build: booted commit + the package -> test/fastswitch-pkg.
    let booted = ostree_status(&vm)
        .into_iter()
        .find(|d| d.booted)
        .expect("a booted deployment")
        .checksum;
    let build = image_build_install(&vm, &booted, "test/fastswitch-pkg");
    eprintln!("[{name}] dpkg in the image tree:\n{}", build.dpkg_log);
    assert!(
        build.dpkg_log.contains("Setting up fastswitch"),
        "{}",
        build.dpkg_log
    );
    assert_eq!(build.recover_unit, "enabled", "postinst enables the unit");
    result.secs("image_build_s", build.duration);
    let listing = vm.exec_ok(&format!(
        "ostree ls -R {} /usr/bin/fastswitch /usr/share/man/man1/fastswitch.1.gz \
         /usr/share/bash-completion/completions/fastswitch \
         /usr/lib/systemd/system/fastswitch-recover.service \
         /usr/etc/systemd/system/sysinit.target.wants/fastswitch-recover.service",
        build.checksum
    ));
    eprint!("{listing}");

    // Bring the image up live with the test binary from the tools disk.
    result.secs("stage_s", ostree_stage(&vm, "test/fastswitch-pkg", ""));
    let boot_id = vm.boot_id();
    let t = Instant::now();
    let report = json(&vm, GUEST_FASTSWITCH, "apply-live --json");
    eprintln!("[{name}] apply-live by the test binary: {report}");
    assert_eq!(report["outcome"], "ok", "{report}");
    result.secs("apply_live_self_s", t.elapsed());
    assert_eq!(vm.boot_id(), boot_id, "no reboot");
    // The live host has the package: binary, dpkg's record, the enabled unit (its link came
    // with the /etc merge). The live apply starts the newly enabled recover unit like any
    // other; it finds no record of an earlier boot and leaves /etc alone (the link is still
    // there).
    let facts = vm.exec_ok(&format!(
        "set -e; test -x {PACKAGED}; {PACKAGED} --version; \
         dpkg --admindir=/usr/share/dpkg/database -s fastswitch | grep '^Status:'; \
         echo \"enabled=$(systemctl is-enabled fastswitch-recover.service)\"; \
         echo \"active=$(systemctl is-active fastswitch-recover.service || true)\""
    ));
    eprint!("{facts}");
    assert!(facts.contains("Status: install ok installed"), "{facts}");
    assert!(facts.contains("enabled=enabled"), "{facts}");

    // From here on: the packaged fastswitch.
    let status = json(&vm, PACKAGED, "status --json");
    let deps = status["deployments"].as_array().expect("deployments");
    assert!(
        deps.iter().any(|d| d["booted"] == true),
        "status --json: {status}"
    );
    print!("{}", vm.exec_ok(&format!("{PACKAGED} status")));

    let man = vm.exec_ok("set -e; man -w fastswitch; MANPAGER=cat MANWIDTH=100 man fastswitch");
    let mut man_lines = man.lines();
    assert_eq!(
        man_lines.next(),
        Some("/usr/share/man/man1/fastswitch.1.gz"),
        "{man}"
    );
    let rendered: String = man_lines.collect::<Vec<_>>().join("\n");
    assert!(rendered.contains("NAME"), "man fastswitch:\n{rendered}");
    assert!(
        rendered.contains("apply-live"),
        "man fastswitch:\n{rendered}"
    );
    // rendered by groff, not the raw roff source
    assert!(!rendered.contains(".TH "), "man fastswitch:\n{rendered}");
    result.set("man_lines", rendered.lines().count());

    let comp = vm.exec_ok(&format!("bash -c '{}'", COMPLETE_AP.replace('\'', r"'\''")));
    eprint!("{comp}");
    assert!(comp.contains("-F _fastswitch fastswitch"), "{comp}");
    let offered: Vec<&str> = comp
        .lines()
        .filter_map(|l| l.strip_prefix("offered: "))
        .collect();
    assert_eq!(offered, ["apply-live"], "{comp}");

    // The next image (test/layered, which adds the demo-extra service, plus the package),
    // staged and applied live by the packaged fastswitch. Staging it makes ostree delete the
    // deployment staged before — the one /usr shows — and the packaged binary must still run
    // from fastswitch's own copy of that /usr.
    let next = image_build_install(
        &vm,
        &image.ref_checksum("test/layered"),
        "test/fastswitch-pkg-next",
    );
    result.secs("next_image_build_s", next.duration);
    result.secs(
        "next_stage_s",
        ostree_stage(&vm, "test/fastswitch-pkg-next", ""),
    );
    let still = vm.exec_ok(&format!("{PACKAGED} --version"));
    eprint!("[{name}] after staging the next image: {still}");
    let t = Instant::now();
    let report = json(&vm, PACKAGED, "apply-live --json");
    eprintln!("[{name}] apply-live of the next image by the packaged binary: {report}");
    assert_eq!(report["outcome"], "ok", "{report}");
    result.secs("apply_live_next_s", t.elapsed());
    result.set("apply_live_next_steps", report["steps"].clone());
    assert_eq!(vm.boot_id(), boot_id, "no reboot");
    vm.exec_ok("systemctl is-active demo-extra.service");
    let st = json(&vm, PACKAGED, "status --json");
    assert_eq!(st["live"]["usr_is_target"], true, "{st}");
    // reset, by the packaged binary, goes back to the booted image: no package, no demo-extra,
    // and no live copy of /usr left behind.
    let rep = json(&vm, PACKAGED, "reset --json");
    assert_eq!(rep["outcome"], "ok", "{rep}");
    vm.exec_ok(&format!(
        "set -e; test ! -e {PACKAGED}; ! systemctl is-active demo-extra.service; \
         test -z \"$(ls -A /ostree/fastswitch/live 2>/dev/null)\""
    ));
    drop(vm);
}
