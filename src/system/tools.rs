//! The systemd child tools a live apply runs: `systemd-sysusers` and `systemd-tmpfiles`,
//! behind the narrow [`ConfigTools`] trait (the executor's only way to spawn a program).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Apply `sysusers.d` and `tmpfiles.d` snippets to the system at `root`.
pub(crate) trait ConfigTools {
    /// `systemd-sysusers [--root=ROOT] FILES…`: create the users and groups they declare.
    fn sysusers(&self, root: &Path, files: &[String]) -> Result<()>;
    /// `systemd-tmpfiles --create [--root=ROOT] FILES…`: create what they declare.
    fn tmpfiles_create(&self, root: &Path, files: &[String]) -> Result<()>;
}

/// The real tools, run by absolute path with a clean environment.
pub(crate) struct RealTools;

impl ConfigTools for RealTools {
    fn sysusers(&self, root: &Path, files: &[String]) -> Result<()> {
        let mut c = tool("systemd-sysusers");
        with_root(&mut c, root, files);
        run_tool(&mut c).map(drop)
    }
    fn tmpfiles_create(&self, root: &Path, files: &[String]) -> Result<()> {
        let mut c = tool("systemd-tmpfiles");
        c.arg("--create");
        with_root(&mut c, root, files);
        run_tool(&mut c).map(drop)
    }
}

fn with_root(c: &mut Command, root: &Path, files: &[String]) {
    if root != Path::new("/") {
        c.arg(format!("--root={}", root.display()));
    }
    c.args(files.iter().map(|f| under_root(root, Path::new(f))));
}

/// A config file argument for systemd-sysusers/-tmpfiles: with `--root`, they read the named
/// files as given (not below the root), so name them below it.
fn under_root(root: &Path, file: &Path) -> PathBuf {
    if root == Path::new("/") {
        file.to_path_buf()
    } else {
        root.join(file.strip_prefix("/").unwrap_or(file))
    }
}

/// A systemd tool by absolute path (`/usr/bin`, or `/bin` on a system without merged `/usr`),
/// with a clean environment: nothing from the caller's environment (`PATH`, `SYSTEMD_*`, …)
/// chooses what runs as root or how.
fn tool(name: &str) -> Command {
    let path = ["/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| Path::new("/usr/bin").join(name));
    let mut c = Command::new(path);
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C.UTF-8");
    c
}

fn run_tool(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_named_below_another_root() {
        assert_eq!(
            under_root(Path::new("/"), Path::new("/usr/lib/sysusers.d/a.conf")),
            Path::new("/usr/lib/sysusers.d/a.conf")
        );
        assert_eq!(
            under_root(Path::new("/mnt"), Path::new("/usr/lib/sysusers.d/a.conf")),
            Path::new("/mnt/usr/lib/sysusers.d/a.conf")
        );
    }

    #[test]
    fn a_failing_tool_names_itself_and_its_stderr() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo nope >&2; exit 3"]);
        let e = run_tool(&mut c).unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("sh"), "{e}");
    }
}
