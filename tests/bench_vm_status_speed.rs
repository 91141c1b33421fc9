//! VM measurement: how long `fastswitch status --json` takes in the guest right after a boot
//! (the restored saved guest), with a staged deployment, and right after a kexec into it (cold
//! page cache). Discovery takes the boot checksums ostree recorded (boot entry path, staged
//! state) instead of hashing kernels, so none of these should read a kernel or initramfs.
//!
//! With the staged deployment it also times one `fastswitch diff --json` and one `ostree diff`
//! of the same two commits.
//!
//! Figures, not assertions: each phase runs `status --json` five times and the results go to
//! `target/vm-results/status_speed-<guest>.json` (min/median/max ms, and every run). What is
//! asserted is what status reports: the deployments ostree has, each with the bootcsum ostree
//! recorded for it, and after the kexec the new deployment booted.

mod vm;

use serde_json::Value;
use std::time::Duration;
use vm::{ostree_stage, Guest, Image, ScenarioResult, Vm, GUEST_FASTSWITCH};

#[test]
#[ignore = "VM benchmark: run by scripts/bench-status"]
fn status_speed_debian12() {
    status_speed(Guest::Debian12, "status-speed");
}

#[test]
#[ignore = "VM benchmark: run by scripts/bench-status"]
fn status_speed_debian13() {
    status_speed(Guest::Debian13, "status-speed-debian13");
}

const RUNS: usize = 5;

/// Run `status --json` [`RUNS`] times in the guest, timed by the guest's own clock (the
/// command alone, not the agent round trip); returns the per-run ms, the ms of `--version`
/// (process start alone) and the last JSON. The binary (a 100 MB debug build on the tools disk;
/// a host runs a release build) is read once first, so the figures are fastswitch's work and
/// the sysroot's reads, not paging in the test binary.
fn time_status(vm: &Vm) -> (Vec<f64>, f64, Value) {
    let out = vm.exec_ok(&format!(
        r#"set -e
cat {GUEST_FASTSWITCH} > /dev/null
s=$(date +%s%N)
{GUEST_FASTSWITCH} --version > /dev/null
e=$(date +%s%N)
echo "version $(( (e - s) / 1000 ))"
for i in $(seq {RUNS}); do
  s=$(date +%s%N)
  {GUEST_FASTSWITCH} status --json > /run/status-speed.json
  e=$(date +%s%N)
  echo "ms $(( (e - s) / 1000 ))"
done
cat /run/status-speed.json"#
    ));
    let mut ms = Vec::new();
    let mut version = f64::NAN;
    let mut json = String::new();
    let parse = |us: &str| us.trim().parse::<f64>().expect("µs") / 1000.0;
    for line in out.lines() {
        if let Some(us) = line.strip_prefix("ms ") {
            ms.push(parse(us));
        } else if let Some(us) = line.strip_prefix("version ") {
            version = parse(us);
        } else {
            json.push_str(line);
            json.push('\n');
        }
    }
    assert_eq!(ms.len(), RUNS, "{out}");
    let v: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    (ms, version, v)
}

fn figures(ms: &[f64], version_ms: f64) -> Value {
    let mut s = ms.to_vec();
    s.sort_by(f64::total_cmp);
    serde_json::json!({
        "min_ms": s[0],
        "median_ms": s[s.len() / 2],
        "max_ms": s[s.len() - 1],
        "first_ms": ms[0],
        "runs_ms": ms,
        "version_ms": version_ms,
    })
}

/// Every finalized deployment's `boot_digest` is the bootcsum ostree recorded for it: the
/// `<stateroot>-<bootcsum>` directory of its boot entry's `linux` path. (The staged one's is
/// checked after the kexec: the digest its boot entry then records is the one status showed
/// while it was staged.)
fn check_digests(vm: &Vm, v: &Value) {
    let entries = vm.exec_ok(
        r#"for f in /boot/loader/entries/*.conf; do echo "$(basename "$f") $(sed -n 's/^linux //p' "$f")"; done"#,
    );
    for d in v["deployments"].as_array().expect("deployments") {
        let digest = d["kernel"]["boot_digest"].as_str().expect("boot digest");
        if d["staged"] == true {
            continue;
        }
        let file = d["boot_entry"].as_str().expect("boot entry");
        let linux = entries
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{file} ")))
            .unwrap_or_else(|| panic!("no entry {file} in:\n{entries}"));
        let stateroot = d["stateroot"].as_str().unwrap();
        assert!(
            linux.contains(&format!("/{stateroot}-{digest}/")),
            "{file}: {linux} vs {digest}"
        );
    }
}

fn status_speed(guest: Guest, name: &str) {
    let mut result = ScenarioResult::new("status_speed", guest);
    let image = Image::get_guest(guest);
    let mut vm = Vm::boot(&image, name);
    result.set("boot", vm.boot_report());
    result.set("restored", vm.was_restored());
    result.set(
        "binary",
        format!(
            "{} from the tools disk, read once before timing",
            vm::guest_binary_kind()
        ),
    );

    let (ms, ver, v) = time_status(&vm);
    eprintln!("[status-speed] after boot: {ms:?} ms (--version {ver} ms)");
    assert_eq!(v["deployments"].as_array().unwrap().len(), 1, "{v}");
    check_digests(&vm, &v);
    result.set("after_boot", figures(&ms, ver));

    ostree_stage(&vm, "test/kernel", "");
    let (ms, ver, v) = time_status(&vm);
    eprintln!("[status-speed] with a staged deployment: {ms:?} ms (--version {ver} ms)");
    let deps = v["deployments"].as_array().unwrap();
    assert_eq!(deps.len(), 2, "{v}");
    assert_eq!(deps[0]["staged"], true, "{v}");
    assert_ne!(
        deps[0]["kernel"]["boot_digest"], deps[1]["kernel"]["boot_digest"],
        "test/kernel has another initramfs: {v}"
    );
    check_digests(&vm, &v);
    result.set("with_staged", figures(&ms, ver));
    let staged_digest = deps[0]["kernel"]["boot_digest"].clone();
    // While both deployments are there: `fastswitch diff` (which loads the same deployments)
    // against `ostree diff` of the two commits, one run each, guest clock.
    let (staged_csum, booted_csum) = (
        deps[0]["checksum"].as_str().unwrap(),
        deps[1]["checksum"].as_str().unwrap(),
    );
    let t = vm.exec_ok(&format!(
        r#"set -e
s=$(date +%s%N); {GUEST_FASTSWITCH} diff --json > /dev/null; e=$(date +%s%N)
echo $(( (e - s) / 1000 ))
s=$(date +%s%N); ostree diff {booted_csum} {staged_csum} > /dev/null; e=$(date +%s%N)
echo $(( (e - s) / 1000 ))"#
    ));
    let ms: Vec<f64> = t
        .lines()
        .map(|l| l.trim().parse::<f64>().expect("µs") / 1000.0)
        .collect();
    eprintln!(
        "[status-speed] fastswitch diff {} ms, ostree diff {} ms",
        ms[0], ms[1]
    );
    result.set("diff_ms", ms[0]);
    result.set("ostree_diff_ms", ms[1]);

    // kexec into it (finalize, hash-verify the tree against the entry, load, kexec), then status
    // with a cold page cache.
    let old_boot = vm.boot_id();
    vm.exec_ok(&format!(
        "nohup {GUEST_FASTSWITCH} switch --json > /var/tmp/switch.json 2> /var/tmp/switch.err < /dev/null &"
    ));
    // Generous: finalization alone took 250 s once on a loaded build machine.
    let boot = vm.wait_for_new_boot(&old_boot, Duration::from_secs(900));
    assert_ne!(boot.boot_id, old_boot);
    let (ms, ver, v) = time_status(&vm);
    eprintln!("[status-speed] after kexec: {ms:?} ms (--version {ver} ms)");
    let booted: Vec<&Value> = v["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["booted"] == true)
        .collect();
    assert_eq!(booted.len(), 1, "{v}");
    assert_eq!(
        booted[0]["checksum"],
        Value::from(image.ref_checksum("test/kernel"))
    );
    assert_eq!(booted[0]["kernel"]["boot_digest"], staged_digest, "{v}");
    check_digests(&vm, &v);
    result.set("after_kexec", figures(&ms, ver));
    // For comparison, in the same boot: ostree's own status.
    let t = vm.exec_ok(
        "s=$(date +%s%N); ostree admin status >/dev/null; e=$(date +%s%N); echo $(( (e - s) / 1000 ))",
    );
    result.set(
        "ostree_admin_status_ms",
        t.trim().parse::<f64>().unwrap_or(f64::NAN) / 1000.0,
    );
    vm.shutdown();
}
