//! Test fixtures made with Debian's real `ostree` CLI: sysroots, commits, deployments, and the
//! GVariant state files a booted host has. Nothing here hand-writes ostree's on-disk layout
//! except the runtime files in `run/`, which are encoded with the real GVariant encoder.
#![allow(dead_code)]

pub mod cfs;

use fastswitch::discover::state::encode;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether tests that need root can run here. A developer's unprivileged run skips them with a
/// message; under CI (`CI` set, and CI runs as root) not being root is a failure, so a root-only
/// test can never pass without having run.
pub fn is_root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root && std::env::var_os("CI").is_some() {
        panic!("this test needs root, and CI is set: CI must run the tests as root");
    }
    root
}

/// The lines of this process's mount table that a command run on the fixture at `fixture` could
/// have made: every mount whose mount point or source root is the fixture or below it, and every
/// mount on the host's own system paths (`/`, `/usr`, `/etc`, `/sysroot`, `/boot`, `/run`: where
/// a command that escaped `--root`/`--sysroot` would mount). Mounts elsewhere are left out: other
/// work on the machine (`scripts/test` builds the guest images beside the tests, with mmdebstrap
/// and loop mounts) changes them while a test runs.
pub fn mounts_touching(fixture: &Path) -> String {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let f = fixture.to_str().unwrap();
    let under = |p: &str| p == f || p.starts_with(&format!("{f}/"));
    text.lines()
        .filter(|l| {
            let mut fields = l.split(' ');
            let root = fields.nth(3).unwrap_or("");
            let point = fields.next().unwrap_or("");
            under(root)
                || under(point)
                || ["/", "/usr", "/etc", "/sysroot", "/boot", "/run"].contains(&point)
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// A root test that mounts: `body` runs inside a private mount namespace. The test binary
/// re-runs itself, only `test`, under `unshare --mount --propagation private` with `env` set
/// (where this calls `body`), and asserts that run passed and really ran the test. Without
/// root it is skipped with a message (a failure under CI, see [`is_root`]).
pub fn in_private_mount_namespace(test: &str, env: &str, body: impl FnOnce()) {
    if std::env::var_os(env).is_some() {
        body();
        return;
    }
    if !is_root() {
        eprintln!("skipping {test}: needs root (mounts in a private mount namespace)");
        return;
    }
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(env, "1")
        .output()
        .expect("running unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the namespaced run failed:\n{stdout}\n{stderr}"
    );
    // Guard against a filter that matched nothing.
    assert!(
        stdout.contains("1 passed"),
        "the namespaced run did not run the test:\n{stdout}\n{stderr}"
    );
}

/// Run a command, panicking with its output on failure. Returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn ostree() -> Command {
    Command::new("ostree")
}

/// A directory tree to commit. Paths are relative to the tree root.
pub struct Tree {
    pub dir: tempfile::TempDir,
}

impl Tree {
    /// A minimal OS tree: kernel + initramfs under usr/lib/modules/<kver>, os-release, a binary.
    pub fn minimal(kver: &str) -> Tree {
        let t = Tree {
            dir: tempfile::tempdir().unwrap(),
        };
        t.write(
            &format!("usr/lib/modules/{kver}/vmlinuz"),
            b"kernel image\n",
        );
        t.write(
            &format!("usr/lib/modules/{kver}/initramfs.img"),
            b"initramfs\n",
        );
        t.write(
            "usr/etc/os-release",
            b"PRETTY_NAME=\"Fixture OS\"\nID=fixture\n",
        );
        t.write(
            "usr/lib/os-release",
            b"PRETTY_NAME=\"Fixture OS\"\nID=fixture\n",
        );
        t.write("usr/bin/hello", b"#!/bin/sh\necho hello v1\n");
        t.chmod("usr/bin/hello", 0o755);
        // Like a real OS tree: an empty /var, the mount point of the stateroot's var.
        std::fs::create_dir_all(t.dir.path().join("var")).unwrap();
        t
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, content: &[u8]) {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    pub fn remove(&self, rel: &str) {
        let p = self.dir.path().join(rel);
        if p.symlink_metadata().map(|m| m.is_dir()).unwrap_or(false) {
            std::fs::remove_dir_all(p).unwrap();
        } else {
            std::fs::remove_file(p).unwrap();
        }
    }

    pub fn chmod(&self, rel: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            self.dir.path().join(rel),
            std::fs::Permissions::from_mode(mode),
        )
        .unwrap();
    }

    pub fn symlink(&self, target: &str, rel: &str) {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&p);
        std::os::unix::fs::symlink(target, p).unwrap();
    }

    /// A full copy of this tree, to derive the next version from.
    pub fn fork(&self) -> Tree {
        let t = Tree {
            dir: tempfile::tempdir().unwrap(),
        };
        run(Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", self.path().display()))
            .arg(t.path()));
        t
    }
}

/// A sysroot made by `ostree admin init-fs`, with its own `run/` state directory.
pub struct Sysroot {
    pub dir: tempfile::TempDir,
}

impl Drop for Sysroot {
    /// ostree makes deployment roots immutable (`chattr +i`); clear that so the temp dir can go.
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .arg("-c")
            .arg("chattr -i \"$1\"/ostree/deploy/*/deploy/* 2>/dev/null; true")
            .arg("sh")
            .arg(self.dir.path())
            .status();
    }
}

impl Sysroot {
    pub fn new() -> Sysroot {
        let s = Sysroot {
            dir: tempfile::tempdir().unwrap(),
        };
        run(ostree()
            .args(["admin", "init-fs", "--modern"])
            .arg(s.path()));
        run(ostree()
            .arg(format!("--repo={}", s.repo().display()))
            .args(["config", "set", "sysroot.bootloader", "none"]));
        std::fs::create_dir_all(s.run()).unwrap();
        s
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn repo(&self) -> PathBuf {
        self.path().join("ostree/repo")
    }
    pub fn run(&self) -> PathBuf {
        self.path().join("run")
    }

    fn sysroot_arg(&self) -> String {
        format!("--sysroot={}", self.path().display())
    }

    pub fn os_init(&self, stateroot: &str) {
        run(ostree().args(["admin", "os-init", &self.sysroot_arg(), stateroot]));
    }

    /// `ostree commit` a tree on `branch`; returns the commit checksum.
    pub fn commit(&self, branch: &str, tree: &Tree) -> String {
        run(ostree()
            .arg(format!("--repo={}", self.repo().display()))
            .args(["commit", "--no-xattrs", &format!("--branch={branch}")])
            .arg(format!("--tree=dir={}", tree.path().display())))
        .trim()
        .to_owned()
    }

    /// `ostree admin deploy` (written to the BLS, becomes index 0).
    pub fn deploy(&self, stateroot: &str, refspec: &str, kargs: &[&str]) {
        let mut c = ostree();
        c.args([
            "admin",
            "deploy",
            "--retain",
            &self.sysroot_arg(),
            &format!("--os={stateroot}"),
            "--karg-none",
        ]);
        for k in kargs {
            c.arg(format!("--karg={k}"));
        }
        c.arg(refspec);
        run(&mut c);
    }

    /// `ostree admin status --sysroot` text.
    pub fn ostree_status(&self) -> String {
        run(ostree().args(["admin", "status", &self.sysroot_arg()]))
    }

    pub fn deploy_dir(&self, stateroot: &str, id: &str) -> PathBuf {
        self.path()
            .join("ostree/deploy")
            .join(stateroot)
            .join("deploy")
            .join(id)
    }

    /// Mark a deployment as booted: write `run/ostree-booted` as ostree-prepare-root does,
    /// with the deployment directory's (dev, ino).
    pub fn mark_booted(&self, stateroot: &str, id: &str) {
        let m = std::fs::metadata(self.deploy_dir(stateroot, id)).unwrap();
        std::fs::write(
            self.run().join("ostree-booted"),
            encode::booted(m.dev(), m.ino()),
        )
        .unwrap();
    }

    /// Stage `commit` the way `ostree admin deploy --stage` does on a booted host: a hardlink
    /// checkout by the real `ostree checkout`, `/etc` from `/usr/etc`, the origin file, and
    /// `run/ostree/staged-deployment`. (The real `--stage` needs a booted host; the VM scenarios
    /// cover that path.) Returns the deployment id.
    pub fn stage(
        &self,
        stateroot: &str,
        commit: &str,
        refspec: &str,
        kargs: Option<&[&str]>,
    ) -> String {
        let deploy = self
            .path()
            .join("ostree/deploy")
            .join(stateroot)
            .join("deploy");
        let mut serial = 0;
        while deploy.join(format!("{commit}.{serial}")).exists() {
            serial += 1;
        }
        let id = format!("{commit}.{serial}");
        let dir = deploy.join(&id);
        run(ostree()
            .arg(format!("--repo={}", self.repo().display()))
            .args(["checkout", "-H", "--require-hardlinks", commit])
            .arg(&dir));
        run(Command::new("cp")
            .arg("-a")
            .arg(dir.join("usr/etc"))
            .arg(dir.join("etc")));
        std::fs::write(
            deploy.join(format!("{id}.origin")),
            format!("[origin]\nrefspec={refspec}\n"),
        )
        .unwrap();
        let kernel = fastswitch::discover::kernel::find_kernel(&dir)
            .unwrap()
            .unwrap();
        std::fs::create_dir_all(self.run().join("ostree")).unwrap();
        std::fs::write(
            self.run().join("ostree/staged-deployment"),
            encode::staged(&id, stateroot, &kernel.boot_digest, kargs, false),
        )
        .unwrap();
        id
    }

    /// The `fastswitch` binary with `--sysroot/--run-dir` pointing here.
    pub fn fastswitch(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_fastswitch"));
        c.arg("--sysroot")
            .arg(self.path())
            .arg("--run-dir")
            .arg(self.run());
        c
    }

    /// Run `fastswitch <args> --json`, expecting success; returns the parsed JSON.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = run(self.fastswitch().args(args).arg("--json"));
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("fastswitch {args:?}: bad JSON ({e}):\n{out}"))
    }
}

/// One parsed line of `ostree admin status`: (booted, stateroot, id, tag).
#[derive(Debug, PartialEq, Eq)]
pub struct OstreeStatusLine {
    pub booted: bool,
    pub stateroot: String,
    pub id: String,
    pub tag: Option<String>,
    pub refspec: Option<String>,
    pub pinned: bool,
}

/// Parse `ostree admin status` text (the ground truth the JSON is compared against).
pub fn parse_ostree_status(text: &str) -> Vec<OstreeStatusLine> {
    let mut v: Vec<OstreeStatusLine> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("    ") {
            let last = v.last_mut().expect("detail line before a deployment line");
            if let Some(r) = rest.trim().strip_prefix("origin refspec: ") {
                last.refspec = Some(r.to_owned());
            }
            if rest.trim() == "Pinned: yes" {
                last.pinned = true;
            }
            continue;
        }
        let booted = line.starts_with('*');
        let mut parts = line[2..].split_whitespace();
        let stateroot = parts.next().unwrap().to_owned();
        let id = parts.next().unwrap().to_owned();
        let tag = parts
            .next()
            .map(|t| t.trim_matches(|c| c == '(' || c == ')').to_owned());
        v.push(OstreeStatusLine {
            booted,
            stateroot,
            id,
            tag,
            refspec: None,
            pinned: false,
        });
    }
    v
}
