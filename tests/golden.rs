//! Golden files for the human output: `status`, `diff`, the dry runs (`apply-live --dry-run`,
//! `switch --dry-run`) on fixtures made by the real `ostree` CLI, and the rendering of typed
//! reports (`apply-live`, `reset`, `kexec`) built here.
//!
//! Each output is normalised (see [`normalise`]) and compared with `tests/golden/<name>.txt`.
//! After an intended change of the output, rewrite the files and review the diff:
//!
//!     FASTSWITCH_BLESS=1 cargo test --test golden

mod common;
use common::*;
use fastswitch::diff::{Decision, DecisionKind, DeploymentRef};
use fastswitch::exec::report::{
    Phase, Report, StepDetail, StepOutcome, StepReport, REPORT_SCHEMA_VERSION,
};
use fastswitch::exec::unit_jobs::UnitOutcome;
use fastswitch::exit::ExitCode;
use fastswitch::plan::Verb;
use fastswitch::services::Action;
use fastswitch::system::systemd::JobResult;
use std::path::PathBuf;

/// What varies between runs, replaced by fixed words:
/// - every occurrence of each `paths` entry (temporary directories) by its label;
/// - a run of 12 or more lowercase hex digits (commit checksums, full or shortened by `…`,
///   boot digests) by `<CSUM>`;
/// - a number of milliseconds (`123 ms`) by `N ms`, keeping the width of a padded column.
fn normalise(text: &str, paths: &[(&std::path::Path, &str)]) -> String {
    let mut t = text.to_owned();
    for (p, label) in paths {
        t = t.replace(&p.display().to_string(), label);
    }
    let chars: Vec<char> = t.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
        let boundary_before = i == 0 || !chars[i - 1].is_ascii_alphanumeric();
        if boundary_before && hex(c) {
            let mut j = i;
            while j < chars.len() && hex(chars[j]) {
                j += 1;
            }
            let boundary_after = j == chars.len() || !chars[j].is_ascii_alphanumeric();
            if j - i >= 12 && boundary_after {
                out.push_str("<CSUM>");
                i = j;
                continue;
            }
        }
        // Spaces, digits, " ms": a duration.
        if c == ' ' {
            let mut j = i;
            while j < chars.len() && chars[j] == ' ' {
                j += 1;
            }
            let d = j;
            while j < chars.len() && chars[j].is_ascii_digit() {
                j += 1;
            }
            let rest: String = chars[j..chars.len().min(j + 3)].iter().collect();
            if j > d && rest == " ms" {
                // A padded column keeps its width; a number in a sentence becomes ` N ms`.
                let width = if d - i > 1 { j - i } else { 2 };
                out.push_str(&format!("{:>width$} ms", "N"));
                i = j + 3;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

/// Compare with `tests/golden/<name>.txt`, or rewrite it under `FASTSWITCH_BLESS=1`.
fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.txt"));
    if std::env::var_os("FASTSWITCH_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run FASTSWITCH_BLESS=1 cargo test --test golden",
            path.display()
        )
    });
    assert!(
        want == actual,
        "{name}: the output differs from {} (FASTSWITCH_BLESS=1 rewrites it)\n--- want\n{want}\n--- got\n{actual}",
        path.display()
    );
}

#[test]
fn normaliser_replaces_only_what_varies() {
    let tmp = std::path::Path::new("/tmp/.tmpAbC");
    let text =
        "a 0123456789abcdef0123.0 b 0123456789ab….1 c 6.1.0-test\n  swap_usr     12 ms  done\n\
                took 3400 ms (own 5 ms)\n/tmp/.tmpAbC/x 2 units 0123456789a\n";
    assert_eq!(
        normalise(text, &[(tmp, "<SYSROOT>")]),
        "a <CSUM>.0 b <CSUM>….1 c 6.1.0-test\n  swap_usr      N ms  done\n\
         took N ms (own N ms)\n<SYSROOT>/x 2 units 0123456789a\n"
    );
}

// ---- CLI output on fixtures --------------------------------------------------------------

struct Fx {
    s: Sysroot,
    booted: String,
}

const DEMO_UNIT: &str = "[Unit]\nDescription=demo\n[Service]\nExecStart=/usr/bin/hello\n";

/// A booted v1 and a staged v2 with changes in /usr, /etc (one default the admin edited
/// too) and units (one changed, one added and enabled by multi-user.target).
fn fixture() -> Fx {
    let s = Sysroot::new();
    s.os_init("fx");
    let t1 = Tree::minimal("6.1.0-test");
    t1.write("usr/etc/demo/a.conf", b"a v1\n");
    t1.write("usr/etc/demo/edited.conf", b"edited v1\n");
    t1.write("usr/lib/systemd/system/demo.service", DEMO_UNIT.as_bytes());
    s.commit("fx/v1", &t1);
    s.deploy("fx", "fx/v1", &["root=/dev/vda", "rw"]);
    let booted = s.json(&["status"])["deployments"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.mark_booted("fx", &booted);
    std::fs::write(
        s.deploy_dir("fx", &booted).join("etc/demo/edited.conf"),
        b"the admin's edit\n",
    )
    .unwrap();
    let t2 = t1.fork();
    t2.write("usr/bin/hello", b"#!/bin/sh\necho v2\n");
    t2.write("usr/etc/demo/a.conf", b"a v2\n");
    t2.write("usr/etc/demo/new.conf", b"new\n");
    t2.write("usr/etc/demo/edited.conf", b"edited v2\n");
    t2.write(
        "usr/lib/systemd/system/demo.service",
        format!("{DEMO_UNIT}Restart=always\n").as_bytes(),
    );
    t2.write(
        "usr/lib/systemd/system/demo-extra.service",
        DEMO_UNIT.as_bytes(),
    );
    t2.symlink(
        "../demo-extra.service",
        "usr/lib/systemd/system/multi-user.target.wants/demo-extra.service",
    );
    let c2 = s.commit("fx/v2", &t2);
    s.stage("fx", &c2, "fx/v2", None);
    Fx { s, booted }
}

impl Fx {
    /// `fastswitch --root <booted deployment> <args>`: stdout, normalised; must exit 0.
    fn human(&self, args: &[&str]) -> String {
        let root = self.s.deploy_dir("fx", &self.booted);
        let out = run(self.s.fastswitch().arg("--root").arg(&root).args(args));
        normalise(&out, &[(&root, "<BOOTED>"), (self.s.path(), "<SYSROOT>")])
    }
}

/// One fixture for every CLI golden file: building it costs several ostree commands.
#[test]
fn cli_human_output() {
    let f = fixture();
    golden("status", &f.human(&["status"]));
    golden("diff", &f.human(&["diff"]));
    golden(
        "apply_live_dry_run",
        &f.human(&["apply-live", "--dry-run", "--no-services"]),
    );
    golden("switch_dry_run", &f.human(&["switch", "--dry-run"]));

    // After a live apply: the journal a completed apply leaves (two merged paths and the
    // user databases backed up before systemd-sysusers), written by the journal's own code.
    use fastswitch::exec::journal::{current_boot_id, EtcBackup, Journal, LiveState};
    let root = f.s.deploy_dir("fx", &f.booted);
    let staged = f.s.json(&["status"])["deployments"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let backup = |path: &str| EtcBackup {
        path: path.into(),
        backup: None,
        written: None,
    };
    let st = LiveState {
        schema_version: 1,
        booted: f.booted.clone(),
        target: staged.clone(),
        target_path: f.s.deploy_dir("fx", &staged),
        started_at: 1_700_000_000,
        finished_at: Some(1_700_000_003),
        steps: vec![],
        usr_binds: 1,
        etc_backups: [
            "/etc/demo/a.conf",
            "/etc/demo/new.conf",
            "/etc/passwd",
            "/etc/group",
        ]
        .map(backup)
        .to_vec(),
        unit_actions: vec![],
        boot_id: current_boot_id().unwrap(),
        resetting: false,
        usr_source: None,
        usr_composefs: false,
    };
    Journal::new(&f.s.run(), &root, &st.boot_id)
        .save(&st)
        .unwrap();
    golden("status_after_live_apply", &f.human(&["status"]));
}

// ---- typed reports ----------------------------------------------------------------------

fn dref(id: &str, booted: bool) -> DeploymentRef {
    DeploymentRef {
        index: usize::from(!booted),
        id: id.into(),
        stateroot: "fx".into(),
        path: format!("/sysroot/ostree/deploy/fx/deploy/{id}").into(),
        booted,
        staged: !booted,
    }
}

const FROM: &str = "1111111111111111111111111111111111111111111111111111111111111111.0";
const TO: &str = "2222222222222222222222222222222222222222222222222222222222222222.0";

fn step(name: &'static str, ms: u64, detail: StepDetail) -> StepReport {
    StepReport {
        step: name,
        outcome: StepOutcome::Done,
        duration_ms: ms,
        detail,
    }
}

fn unit(name: &str, action: Action, result: JobResult, error: Option<&str>) -> UnitOutcome {
    UnitOutcome {
        unit: name.into(),
        action,
        result,
        duration_ms: 40,
        error: error.map(str::to_owned),
    }
}

fn report(verb: Verb, to: &str, steps: Vec<StepReport>, outcome: ExitCode) -> Report {
    let mut r = Report {
        schema_version: REPORT_SCHEMA_VERSION,
        verb,
        from: dref(FROM, true),
        to: dref(to, to != FROM),
        decision: Decision {
            kind: DecisionKind::Live,
            reasons: vec![],
        },
        total_ms: steps.iter().map(|s| s.duration_ms).sum(),
        steps,
        outcome,
        exit_code: outcome.code(),
        etc_conflicts: vec![],
        failed_units: vec![],
        phases: vec![],
        wall_ms: 0,
        waited_ms: 0,
        own_ms: 0,
        // kexec journals in its own way and reports none.
        journal_ms: if verb == Verb::Kexec { 0 } else { 4 },
        journal_in_waiting_ms: 0,
        reset: false,
    };
    let phases = vec![
        Phase {
            phase: "discover".into(),
            ms: 12,
            compared: None,
        },
        Phase {
            phase: "plan".into(),
            ms: 1,
            compared: None,
        },
    ];
    let wall = r.total_ms + 13;
    r.account(phases, wall);
    r
}

fn human(r: &Report) -> String {
    let mut out = Vec::new();
    r.write_human(&mut out).unwrap();
    normalise(&String::from_utf8(out).unwrap(), &[])
}

#[test]
fn apply_live_report() {
    let outcomes = vec![
        unit("old.service", Action::Stop, JobResult::Done, None),
        unit("demo.service", Action::Restart, JobResult::Done, None),
        unit("web.service", Action::Restart, JobResult::Done, None),
        unit("cron.service", Action::Reload, JobResult::Done, None),
        unit("demo-extra.service", Action::Start, JobResult::Done, None),
        unit(
            "broken.service",
            Action::Restart,
            JobResult::Failed,
            Some("exit status 1"),
        ),
        unit(
            "dbus-broker.service",
            Action::Deferred,
            JobResult::NotExecuted,
            None,
        ),
    ];
    let mut r = report(
        Verb::ApplyLive,
        TO,
        vec![
            step("swap_usr", 5, StepDetail::BoundUsr { usr_binds: 1 }),
            step("merge_etc", 40, StepDetail::MergedEtc { changed: 3 }),
            step("daemon_reload", 300, StepDetail::None),
            step("services", 900, StepDetail::Services(outcomes.clone())),
        ],
        ExitCode::AppliedWithFailures,
    );
    r.etc_conflicts = vec!["/etc/demo/edited.conf".into()];
    r.failed_units = vec!["broken.service".into()];
    golden("apply_live_report", &human(&r));
}

#[test]
fn reset_report() {
    let outcomes = vec![
        unit("demo.service", Action::Restart, JobResult::Done, None),
        unit("demo-extra.service", Action::Stop, JobResult::Done, None),
    ];
    let mut r = report(
        Verb::ApplyLive,
        FROM,
        vec![
            step(
                "unmount_usr",
                3,
                StepDetail::Unmounted {
                    lazy: false,
                    removed_live_trees: vec![],
                    unmounted: 1,
                },
            ),
            step(
                "restore_etc",
                8,
                StepDetail::Restored {
                    kept_admin_changes: vec!["/etc/demo/a.conf".into()],
                    restored: 11,
                },
            ),
            step("services", 400, StepDetail::Services(outcomes.clone())),
        ],
        ExitCode::Ok,
    );
    r.reset = true;
    r.etc_conflicts = vec!["/etc/demo/a.conf".into()];
    golden("reset_report", &human(&r));
}

#[test]
fn kexec_report() {
    let r = report(
        Verb::Kexec,
        TO,
        vec![
            step("finalize_staged", 2000, StepDetail::None),
            step("kexec_load", 150, StepDetail::None),
        ],
        ExitCode::Ok,
    );
    golden("kexec_report", &human(&r));
}

#[test]
fn recover_report() {
    use fastswitch::exec::recover::{RecoverAction, RecoverReport, RECOVER_SCHEMA_VERSION};
    let mut text = String::new();
    for action in [
        RecoverAction::None,
        RecoverAction::RestoredEtc,
        RecoverAction::TargetBooted,
        RecoverAction::OtherDeploymentBooted,
    ] {
        let r = RecoverReport {
            schema_version: RECOVER_SCHEMA_VERSION,
            action,
            record_boot_id: Some("0b1d".into()),
            record_booted: Some(FROM.into()),
            record_target: Some(TO.into()),
            booted: FROM.into(),
            restored: 11,
            kept_admin_changes: vec!["/etc/demo/a.conf".into()],
            duration_ms: 7,
            outcome: ExitCode::Ok,
            exit_code: 0,
        };
        let mut out = Vec::new();
        r.write_human(&mut out).unwrap();
        text.push_str(&String::from_utf8(out).unwrap());
    }
    golden("recover_report", &normalise(&text, &[]));
}

/// The dry run of a plan with unit actions and their reasons (the fixtures have no system bus,
/// so the CLI never plans units there), and a kexec plan (the fixtures' kernels are not real
/// images, so `kexec --dry-run` refuses them).
#[test]
fn plan_dry_runs() {
    use fastswitch::plan::{Plan, Step, PLAN_SCHEMA_VERSION};
    use fastswitch::services::{DeferWhy, Reason, ServiceAction};
    let svc = |unit: &str, action, reasons| ServiceAction {
        unit: unit.into(),
        action,
        reasons,
    };
    let live = Plan {
        schema_version: PLAN_SCHEMA_VERSION,
        verb: Verb::ApplyLive,
        from: dref(FROM, true),
        to: dref(TO, false),
        decision: Decision {
            kind: DecisionKind::Live,
            reasons: vec!["3 systemd unit change(s)".into()],
        },
        steps: vec![
            Step::DaemonReload,
            Step::Services {
                actions: vec![
                    svc(
                        "old.service",
                        Action::Stop,
                        vec![Reason::UnitRemoved {
                            paths: vec![],
                            masked: false,
                        }],
                    ),
                    svc(
                        "demo.service",
                        Action::Restart,
                        vec![Reason::StaleExe {
                            pid: 42,
                            path: "/usr/bin/hello".into(),
                        }],
                    ),
                    svc(
                        "demo-extra.service",
                        Action::Start,
                        vec![Reason::NewlyEnabled {
                            by: "multi-user.target".into(),
                        }],
                    ),
                    svc(
                        "dbus-broker.service",
                        Action::Deferred,
                        vec![Reason::Deferred {
                            why: DeferWhy::Protected {
                                class: "dbus".into(),
                            },
                        }],
                    ),
                    svc(
                        "user@1000.service",
                        Action::NeedsRestart,
                        vec![Reason::StaleMapping {
                            pid: 1234,
                            path: "/usr/lib/libdemo.so.1".into(),
                        }],
                    ),
                ],
            },
        ],
        etc_conflicts: vec![],
        host_states: vec![],
        ladder: None,
    };
    let kexec = Plan {
        verb: Verb::Kexec,
        decision: Decision {
            kind: DecisionKind::Kexec,
            reasons: vec!["kernel 6.1.0-test \u{2192} 6.2.0-test".into()],
        },
        steps: vec![
            Step::FinalizeStaged,
            Step::KexecLoad {
                kernel: "/sysroot/ostree/deploy/fx/deploy/x/usr/lib/modules/6.2.0-test/vmlinuz"
                    .into(),
                initrds: vec![
                    "/sysroot/ostree/deploy/fx/deploy/x/usr/lib/modules/6.2.0-test/initramfs.img"
                        .into(),
                ],
                kargs: vec!["root=/dev/vda".into(), "rw".into()],
            },
            Step::KexecReboot,
        ],
        ..live.clone()
    };
    let mut text = Vec::new();
    fastswitch::cli::write_plan_human(&mut text, &live).unwrap();
    fastswitch::cli::write_plan_human(&mut text, &kexec).unwrap();
    golden(
        "plan_dry_runs",
        &normalise(&String::from_utf8(text).unwrap(), &[]),
    );
}
