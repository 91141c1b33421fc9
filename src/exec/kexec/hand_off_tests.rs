//! The hand-off to systemd, against the shared fakes: what is left behind when systemd refuses.

use super::{hand_off, HandOff};
use crate::diff::{Decision, DecisionKind, DeploymentRef};
use crate::discover::HostPaths;
use crate::plan::{Plan, Step, Verb, PLAN_SCHEMA_VERSION};
use crate::system::mounts::NextRoot;
use crate::testing::{RecordingMounts, RecordingSystemd};
use std::path::Path;

fn dep(root: &Path, id: &str, booted: bool) -> DeploymentRef {
    let path = root.join("sysroot/ostree/deploy/fx/deploy").join(id);
    std::fs::create_dir_all(path.join("usr")).unwrap();
    DeploymentRef {
        index: usize::from(!booted),
        id: id.into(),
        stateroot: "fx".into(),
        path,
        booted,
        staged: !booted,
    }
}

/// A soft-reboot plan as `switch` makes it, on a host whose `/run/ostree-booted` holds `old`.
fn soft_reboot_host(dir: &Path, old: &[u8]) -> (HostPaths, Plan) {
    let paths = HostPaths {
        sysroot: dir.join("sysroot"),
        root: dir.join("root"),
        run: dir.join("run"),
        boot: dir.join("sysroot/boot"),
    };
    std::fs::create_dir_all(&paths.run).unwrap();
    std::fs::write(paths.ostree_booted_file(), old).unwrap();
    let from = dep(dir, "aaa.0", true);
    let to = dep(dir, "bbb.0", false);
    let nextroot = NextRoot {
        dir: paths.run.join("nextroot"),
        deployment: to.path.clone(),
        var: dir.join("sysroot/ostree/deploy/fx/var"),
        sysroot: paths.sysroot.clone(),
        boot: None,
        composefs: None,
    };
    let plan = Plan {
        schema_version: PLAN_SCHEMA_VERSION,
        verb: Verb::SoftReboot,
        decision: Decision {
            kind: DecisionKind::Kexec,
            reasons: vec![],
        },
        steps: vec![
            Step::FinalizeStaged,
            Step::PrepareNextroot { nextroot },
            Step::SoftReboot,
        ],
        from,
        to,
        etc_conflicts: vec![],
        host_states: vec![],
        ladder: None,
    };
    (paths, plan)
}

#[test]
fn refused_soft_reboot_puts_ostree_booted_back_and_detaches_the_next_root() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, plan) = soft_reboot_host(dir.path(), b"");
    let sd = RecordingSystemd {
        unreachable: vec!["soft-reboot.target"],
        ..RecordingSystemd::default()
    };
    let mounts = RecordingMounts::default();
    let err = hand_off(&sd, &mounts, HandOff::SoftReboot, &plan, &paths).unwrap_err();
    assert!(
        format!("{err:#}").contains("starting soft-reboot.target"),
        "{err:#}"
    );
    assert_eq!(
        std::fs::read(paths.ostree_booted_file()).unwrap(),
        b"",
        "/run/ostree-booted is the old one again"
    );
    assert_eq!(
        *mounts.log.borrow(),
        [format!("detach {}", paths.run.join("nextroot").display())]
    );
}

#[test]
fn started_soft_reboot_keeps_the_next_root_and_points_ostree_booted_at_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, plan) = soft_reboot_host(dir.path(), b"");
    let sd = RecordingSystemd::default();
    let mounts = RecordingMounts::default();
    hand_off(&sd, &mounts, HandOff::SoftReboot, &plan, &paths).unwrap();
    assert_eq!(
        *sd.log.borrow(),
        ["start-no-wait soft-reboot.target replace-irreversibly"]
    );
    assert!(mounts.log.borrow().is_empty(), "{:?}", mounts.log.borrow());
    let now = std::fs::read(paths.ostree_booted_file()).unwrap();
    let st = crate::discover::state::parse_booted(&now).unwrap();
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&plan.to.path).unwrap();
    assert_eq!(
        st.backing_root_device_inode,
        Some((m.dev(), m.ino())),
        "{st:?}"
    );
}
