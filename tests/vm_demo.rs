//! The VM part of `scripts/demo`: boots the test guest and walks through
//! fastswitch step by step, printing what fastswitch prints and a timing table.
//! Each step still asserts the facts it shows, so a broken demo fails.
//!
//! Run: scripts/demo (or `cargo test --release --test vm_demo -- --ignored --nocapture`).
//! To add a step (diff, apply-live, kexec): write a `step_*` function and call
//! it from `demo()` in order; `Demo::time` records its duration.

mod vm;

use serde_json::Value;
use std::time::{Duration, Instant};
use vm::{fastswitch_json, ostree_stage, Image, Vm, GUEST_FASTSWITCH};

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
        vm.exec_ok(&format!("{GUEST_FASTSWITCH} status"))
    });
    print!("{human}");
    demo.heading(&format!("fastswitch status --json ({label})"));
    let json = fastswitch_json(vm, "status --json");
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
    let image = demo.time("guest image (build or cache)", Image::get);
    demo.heading(&format!("booting the test VM ({})", image.dir.display()));
    let t = Instant::now();
    let mut vm = Vm::boot(&image, "demo");
    let how = if vm.was_restored() {
        "start guest (restore of a saved boot)"
    } else {
        "cold boot to running"
    };
    demo.timings.push((how.to_string(), t.elapsed()));

    let before = step_status(&mut demo, &vm, "freshly booted");
    let booted = ids_with(&before, "booted");
    assert_eq!(booted.len(), 1, "{before}");
    assert!(ids_with(&before, "staged").is_empty(), "{before}");

    demo.heading("ostree admin deploy --stage test/layered");
    demo.time("ostree admin deploy --stage test/layered", || {
        ostree_stage(&vm, "test/layered", "")
    });

    let after = step_status(&mut demo, &vm, "test/layered staged");
    assert_eq!(ids_with(&after, "booted"), booted, "{after}");
    let staged = ids_with(&after, "staged");
    assert_eq!(staged.len(), 1, "{after}");
    assert!(
        staged[0].starts_with(&image.ref_checksum("test/layered")),
        "{after}"
    );

    // diff: what changed and what it takes.
    demo.heading("fastswitch diff (booted → staged)");
    let diff = demo.time("fastswitch diff", || {
        vm.exec_ok(&format!("{GUEST_FASTSWITCH} diff"))
    });
    print!("{diff}");
    demo.heading("fastswitch apply-live --dry-run (the plan)");
    let plan = demo.time("fastswitch apply-live --dry-run", || {
        vm.exec_ok(&format!("{GUEST_FASTSWITCH} apply-live --dry-run"))
    });
    print!("{plan}");

    // apply-live: the layered package runs without a reboot.
    let boot_id = vm.boot_id();
    demo.heading("fastswitch apply-live");
    let report = demo.time("fastswitch apply-live", || {
        vm.exec_ok(&format!("{GUEST_FASTSWITCH} apply-live"))
    });
    print!("{report}");
    let live = vm.exec_ok("systemctl is-active demo-extra; cat /etc/demo/extra.conf");
    println!("demo-extra: {}", live.replace('\n', " "));
    assert!(live.starts_with("active"), "{live}");
    assert_eq!(vm.boot_id(), boot_id, "apply-live must not reboot");
    step_status(&mut demo, &vm, "live");

    // reset: back to the booted deployment.
    demo.heading("fastswitch reset");
    let reset = demo.time("fastswitch reset", || {
        vm.exec_ok(&format!("{GUEST_FASTSWITCH} reset"))
    });
    print!("{reset}");

    // kernel change: switch kexecs into the new deployment.
    demo.heading("ostree admin deploy --stage --karg-append=fastswitch.demo=1 test/kernel");
    demo.time("ostree admin deploy --stage test/kernel", || {
        ostree_stage(&vm, "test/kernel", "--karg-append=fastswitch.demo=1")
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
