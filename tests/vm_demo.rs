//! The VM part of `scripts/demo`: boots the test guest (Debian 13 unless
//! FASTSWITCH_VM_GUEST=debian12) and walks through fastswitch step by step, printing what
//! fastswitch prints and a timing table. Each step still asserts the facts it shows, so a
//! broken demo fails.
//!
//! fastswitch gets onto the host the way a host carries it: an image build in the guest installs
//! the .deb (scripts/build-deb, on the tools disk) into the booted commit with dpkg, the test
//! binary on the tools disk brings that image up live once, and every later step runs the
//! packaged `/usr/bin/fastswitch`. The next images (test/layered, test/kernel) are built on top
//! of that image, so they carry fastswitch too.
//!
//! The demo is also the package scenario (it was `tests/vm_package.rs`, folded in because both
//! built the same image in the guest): dpkg records the package, `man fastswitch` renders, bash
//! completes a subcommand, staging the next image over the live one leaves the packaged binary
//! running (from fastswitch's own copy of `/usr`), and reset leaves no copy behind. The timings
//! and the verdict go to target/vm-results/demo-<guest>.json.
//!
//! Run: scripts/demo (or `cargo test --release --test vm_demo -- --ignored --nocapture`).
//! To add a step (diff, apply-live, kexec): write a `step_*` function and call
//! it from `demo()` in order; `Demo::time` records its duration.

mod vm;

use serde_json::Value;
use std::time::{Duration, Instant};
use vm::{
    fastswitch_deb, image_build_install, ostree_stage, ostree_status, Guest, Image, ScenarioResult,
    Vm, VmOptions, GUEST_FASTSWITCH, PACKAGED,
};

/// fastswitch as the demo runs it after the package is live: from PATH, i.e. /usr/bin.
const FS: &str = "fastswitch";

#[derive(Default)]
struct Demo {
    timings: Vec<(String, Duration)>,
}

impl Demo {
    fn time<T>(&mut self, what: &str, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        self.timings.push((what.to_string(), t.elapsed()));
        r
    }

    fn heading(&self, text: &str) {
        println!("\n=== {text}");
    }

    fn print_timings(&self) {
        println!("\n=== timings");
        for (what, d) in &self.timings {
            println!("  {what:<40} {:>7.1} s", d.as_secs_f64());
        }
    }

    /// The timings table as `[{"step": .., "s": ..}]`, for the results JSON.
    fn timings_json(&self) -> Value {
        self.timings
            .iter()
            .map(|(what, d)| serde_json::json!({"step": what, "s": (d.as_secs_f64() * 10.0).round() / 10.0}))
            .collect()
    }
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

/// What the package put on the live host: dpkg's record, the rendered man page, and bash
/// completion of a subcommand.
fn check_package(vm: &Vm, result: &mut ScenarioResult) {
    let dpkg =
        vm.exec_ok("dpkg --admindir=/usr/share/dpkg/database -s fastswitch | grep '^Status:'");
    assert!(dpkg.contains("Status: install ok installed"), "{dpkg}");
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
    println!(
        "man fastswitch: {} lines rendered",
        rendered.lines().count()
    );
    result.set("man_lines", rendered.lines().count());
    let comp = vm.exec_ok(&format!("bash -c '{}'", COMPLETE_AP.replace('\'', r"'\''")));
    assert!(comp.contains("-F _fastswitch fastswitch"), "{comp}");
    let offered: Vec<&str> = comp
        .lines()
        .filter_map(|l| l.strip_prefix("offered: "))
        .collect();
    println!("bash: fastswitch ap<TAB> offers {offered:?}");
    assert_eq!(offered, ["apply-live"], "{comp}");
}

/// `fastswitch status` (human) and `--json` in the guest; returns the JSON.
fn step_status(demo: &mut Demo, vm: &Vm, label: &str) -> Value {
    demo.heading(&format!("fastswitch status ({label})"));
    let human = demo.time(&format!("fastswitch status ({label})"), || {
        vm.exec_ok(&format!("{FS} status"))
    });
    print!("{human}");
    demo.heading(&format!("fastswitch status --json ({label})"));
    let out = vm.exec_ok(&format!("{FS} status --json"));
    let json: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("fastswitch status --json: not JSON ({e}):\n{out}"));
    println!("{}", serde_json::to_string_pretty(&json).expect("json"));
    json
}

fn ids_with(status: &Value, key: &str) -> Vec<String> {
    status["deployments"]
        .as_array()
        .expect("deployments")
        .iter()
        .filter(|d| d[key] == Value::Bool(true))
        .map(|d| d["id"].as_str().expect("id").to_string())
        .collect()
}

#[test]
#[ignore = "demo: run by scripts/demo"]
fn demo() {
    let mut demo = Demo::default();
    let guest = match std::env::var("FASTSWITCH_VM_GUEST") {
        Ok(_) => Guest::from_env(),
        Err(_) => Guest::Debian13,
    };
    let mut result = ScenarioResult::new("demo", guest);
    let deb = fastswitch_deb();
    result.set(
        "deb",
        deb.file_name().unwrap().to_string_lossy().into_owned(),
    );
    let image = demo.time("guest image (build or cache)", || Image::get_guest(guest));
    demo.heading(&format!(
        "booting the test VM ({}, {})",
        guest.name(),
        image.dir.display()
    ));
    let t = Instant::now();
    let mut vm = Vm::boot_with(&image, VmOptions::new("demo").tool(&deb, vm::DEB_TOOL));
    let how = if vm.was_restored() {
        "start guest (restore of a saved boot)"
    } else {
        "cold boot to running"
    };
    demo.timings.push((how.to_string(), t.elapsed()));

    // The package goes into the image, as an image build (Containerfile `RUN apt-get install
    // ./fastswitch.deb`) puts it there.
    demo.heading(&format!(
        "image build: booted commit + {} (dpkg in a checkout, committed as test/fastswitch-pkg)",
        deb.file_name().unwrap().to_string_lossy()
    ));
    println!(
        "before: {}",
        vm.exec_ok("command -v fastswitch || echo 'fastswitch: not installed'")
            .trim()
    );
    let booted = ostree_status(&vm)
        .into_iter()
        .find(|d| d.booted)
        .expect("a booted deployment")
        .checksum;
    let build = demo.time("image build (dpkg -i into a checkout, commit)", || {
        image_build_install(&vm, &booted, "test/fastswitch-pkg")
    });
    print!("{}", build.dpkg_log);
    assert!(
        build.dpkg_log.contains("Setting up fastswitch"),
        "{}",
        build.dpkg_log
    );
    println!(
        "commit {}; fastswitch-recover.service in the new tree: {}",
        build.checksum, build.recover_unit
    );
    assert_eq!(build.recover_unit, "enabled", "postinst enables the unit");
    println!(
        "fastswitch-prepare.path in the new tree: {}",
        build.prepare_unit
    );
    assert_eq!(
        build.prepare_unit, "enabled",
        "postinst enables the path unit"
    );
    print!(
        "{}",
        vm.exec_ok(&format!(
            "ostree ls {} /usr/bin/fastswitch /usr/share/man/man1/fastswitch.1.gz \
             /usr/share/bash-completion/completions/fastswitch \
             /usr/lib/systemd/system/fastswitch-recover.service \
             /usr/etc/systemd/system/sysinit.target.wants/fastswitch-recover.service",
            build.checksum
        ))
    );
    demo.heading("ostree admin deploy --stage test/fastswitch-pkg");
    demo.time("ostree admin deploy --stage test/fastswitch-pkg", || {
        ostree_stage(&vm, "test/fastswitch-pkg", "")
    });
    demo.heading("/run/tools/fastswitch apply-live (fastswitch installs itself, live)");
    let report = demo.time("apply-live of the image with fastswitch", || {
        vm.exec_ok(&format!("{GUEST_FASTSWITCH} apply-live"))
    });
    print!("{report}");
    let installed = vm.exec_ok(
        "set -e; command -v fastswitch; fastswitch --version; systemctl is-enabled fastswitch-recover.service fastswitch-prepare.path; \
         man -w fastswitch; MANPAGER=cat MANWIDTH=80 man fastswitch | head -n 12",
    );
    print!("{installed}");
    assert!(
        installed.starts_with(&format!("{PACKAGED}\n")),
        "{installed}"
    );
    assert!(installed.contains("\nenabled\nenabled\n"), "{installed}");
    assert!(installed.contains("NAME"), "{installed}");
    check_package(&vm, &mut result);

    // The next images carry the package too: built on test/fastswitch-pkg.
    vm.exec_ok(
        "set -e; ostree commit --branch=test/layered-pkg --subject='test/layered + fastswitch' \
         --tree=ref=test/layered --tree=ref=test/fastswitch-pkg >/dev/null
         d=/ostree/repo/tmp/demo-kernel; rm -rf $d; mkdir -p $d/usr/lib
         ostree checkout --subpath=/usr/lib/modules test/kernel $d/usr/lib/modules
         ostree commit --branch=test/kernel-pkg --subject='test/kernel + fastswitch' \
           --tree=ref=test/fastswitch-pkg --tree=dir=$d >/dev/null; rm -rf $d",
    );

    let before = step_status(&mut demo, &vm, "the packaged fastswitch, its image live");
    let booted = ids_with(&before, "booted");
    assert_eq!(booted.len(), 1, "{before}");
    let staged = ids_with(&before, "staged");
    assert_eq!(staged.len(), 1, "{before}");
    assert!(staged[0].starts_with(&build.checksum), "{before}");

    demo.heading("ostree admin deploy --stage test/layered-pkg (test/layered + fastswitch)");
    demo.time("ostree admin deploy --stage test/layered-pkg", || {
        ostree_stage(&vm, "test/layered-pkg", "")
    });

    let after = step_status(&mut demo, &vm, "test/layered-pkg staged");
    // ostree deleted the deployment staged before, whose usr /usr shows: the packaged binary
    // that printed this status ran from fastswitch's own copy of that usr.
    assert_eq!(ids_with(&after, "booted"), booted, "{after}");
    let staged = ids_with(&after, "staged");
    assert_eq!(staged.len(), 1, "{after}");
    assert!(
        staged[0].starts_with(vm.exec_ok("ostree rev-parse test/layered-pkg").trim()),
        "{after}"
    );

    // diff: what changed and what it takes.
    demo.heading("fastswitch diff (booted → staged)");
    let diff = demo.time("fastswitch diff", || vm.exec_ok(&format!("{FS} diff")));
    print!("{diff}");
    demo.heading("fastswitch apply-live --dry-run (the plan)");
    let plan = demo.time("fastswitch apply-live --dry-run", || {
        vm.exec_ok(&format!("{FS} apply-live --dry-run"))
    });
    print!("{plan}");

    // apply-live: the layered package runs without a reboot.
    let boot_id = vm.boot_id();
    demo.heading("fastswitch apply-live");
    let report = demo.time("fastswitch apply-live", || {
        vm.exec_ok(&format!("{FS} apply-live"))
    });
    print!("{report}");
    let live = vm.exec_ok("systemctl is-active demo-extra; cat /etc/demo/extra.conf");
    println!("demo-extra: {}", live.replace('\n', " "));
    assert!(live.starts_with("active"), "{live}");
    assert_eq!(vm.boot_id(), boot_id, "apply-live must not reboot");
    let live = step_status(&mut demo, &vm, "live");
    assert_eq!(live["live"]["usr_is_target"], true, "{live}");

    // reset: back to the booted deployment.
    demo.heading("fastswitch reset");
    let reset = demo.time("fastswitch reset", || vm.exec_ok(&format!("{FS} reset")));
    print!("{reset}");
    // reset goes back to the booted deployment, and the booted image predates the package:
    // until the next boot, fastswitch is the test binary on the tools disk again.
    let after_reset = vm.exec_ok("command -v fastswitch || echo 'fastswitch: not installed'");
    println!("after reset: {}", after_reset.trim());
    assert!(!after_reset.starts_with(PACKAGED), "{after_reset}");
    // nothing of the live image is left: no demo-extra, no copy of its /usr
    vm.exec_ok(&format!(
        "set -e; test ! -e {PACKAGED}; ! systemctl is-active demo-extra.service; \
         test -z \"$(ls -A /ostree/fastswitch/live 2>/dev/null)\""
    ));

    // kernel change: switch kexecs into the new deployment, which carries the package.
    demo.heading(
        "ostree admin deploy --stage --karg-append=fastswitch.demo=1 test/kernel-pkg (new initramfs + fastswitch)",
    );
    demo.time("ostree admin deploy --stage test/kernel-pkg", || {
        ostree_stage(&vm, "test/kernel-pkg", "--karg-append=fastswitch.demo=1")
    });
    demo.heading("fastswitch switch --dry-run");
    print!(
        "{}",
        vm.exec_ok(&format!("{GUEST_FASTSWITCH} switch --dry-run"))
    );
    demo.heading("fastswitch switch (kexec)");
    let old = vm.boot_id();
    let t = Instant::now();
    vm.exec_ok(&format!(
        "nohup {GUEST_FASTSWITCH} switch > /var/tmp/switch.txt 2>&1 < /dev/null &"
    ));
    let boot = vm.wait_for_new_boot(&old, Duration::from_secs(420));
    demo.timings
        .push(("fastswitch switch → new kernel running".into(), t.elapsed()));
    print!("{}", vm.exec_ok("cat /var/tmp/switch.txt"));
    println!(
        "new boot {} (state {}), /proc/cmdline: {}",
        boot.boot_id,
        boot.state,
        vm.exec_ok("cat /proc/cmdline").trim()
    );
    assert!(vm
        .exec_ok("cat /proc/cmdline")
        .contains("fastswitch.demo=1"));
    step_status(&mut demo, &vm, "after kexec");

    vm.discard();
    demo.print_timings();
    result.set("timings", demo.timings_json());
}
