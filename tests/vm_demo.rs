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
//! Run: scripts/demo (or `cargo test --release --test vm_demo -- --ignored --nocapture`).
//! To add a step (diff, apply-live, kexec): write a `step_*` function and call
//! it from `demo()` in order; `Demo::time` records its duration.

mod vm;

use serde_json::Value;
use std::time::{Duration, Instant};
use vm::{
    fastswitch_deb, image_build_install, ostree_stage, ostree_status, Guest, Image, Vm, VmOptions,
    GUEST_FASTSWITCH, PACKAGED,
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
    let deb = fastswitch_deb();
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
    println!(
        "commit {}; fastswitch-recover.service in the new tree: {}",
        build.checksum, build.recover_unit
    );
    assert_eq!(build.recover_unit, "enabled");
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
        "set -e; command -v fastswitch; fastswitch --version; systemctl is-enabled fastswitch-recover.service; \
         man -w fastswitch; MANPAGER=cat MANWIDTH=80 man fastswitch | head -n 12",
    );
    print!("{installed}");
    assert!(
        installed.starts_with(&format!("{PACKAGED}\n")),
        "{installed}"
    );
    assert!(installed.contains("\nenabled\n"), "{installed}");
    assert!(installed.contains("NAME"), "{installed}");

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
    step_status(&mut demo, &vm, "live");

    // reset: back to the booted deployment.
    demo.heading("fastswitch reset");
    let reset = demo.time("fastswitch reset", || vm.exec_ok(&format!("{FS} reset")));
    print!("{reset}");
    // reset goes back to the booted deployment, and the booted image predates the package:
    // until the next boot, fastswitch is the test binary on the tools disk again.
    let after_reset = vm.exec_ok("command -v fastswitch || echo 'fastswitch: not installed'");
    println!("after reset: {}", after_reset.trim());
    assert!(!after_reset.starts_with(PACKAGED), "{after_reset}");

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

    demo.time("poweroff", || vm.shutdown());
    demo.print_timings();
}
