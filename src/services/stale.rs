//! Find running processes that still execute or map files the switch replaces.
//!
//! Decides: which processes are *stale* with respect to a target `/usr` tree, and which unit
//! owns each one. A process is stale when
//! - its executable or an executable file-backed mapping under `/usr` is not the file now at
//!   that path in the target tree (a different `(dev, ino)`; ostree hardlinks unchanged objects,
//!   so an unchanged file is the same inode in both deployments), the file is gone from the
//!   target, or the mapping is `(deleted)`;
//! - it is a known interpreter (python, perl, shells, ruby, node, …) running a script under
//!   `/usr` that differs between the running and the target tree.
//!
//! Inode equality is the fast path: on a plain ostree host the running `/usr` is the booted
//! checkout, so a mapping shows one of the two trees' identities. When the mapping's identity
//! matches neither tree and its device is not the device of either tree (a composefs root: the
//! overlay's own anonymous device, which `/proc/PID/maps` shows since Linux 6.8; or the backing
//! object's identity on older kernels), identities say nothing, and the two trees' files are
//! compared instead: same identity on disk (ostree hardlinked the object into both), else the
//! ostree content checksum of that path in the booted and the target commit (the dirtree
//! objects of [`crate::diff::repo`], no file read), and only where the repository cannot say
//! (no commit, a missing object) size and bytes. [`StaleScan::compared`] counts which way each
//! path was decided.
//!
//! Processes whose root directory is not ours (containers, chroots, portable services) are
//! skipped and listed, because their paths are not our paths. Kernel threads are skipped;
//! processes that exit during the scan are ignored. The scan reads `proc_root`, so tests can
//! point it at a fake `/proc`; [`parse_maps_line`] and [`parse_cgroup`] are pure.

use crate::system::proc_text::unescape_octal;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::diff::repo::{CommitUsr, UsrEntry};
use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsEntry {
    pub(crate) start: u64,
    pub(crate) end: u64,
    /// `r-xp` and the like.
    pub(crate) perms: String,
    pub(crate) offset: u64,
    pub(crate) dev_major: u32,
    pub(crate) dev_minor: u32,
    pub(crate) inode: u64,
    /// The path or pseudo-name (`[heap]`), without the ` (deleted)` marker.
    pub path: Option<String>,
    pub(crate) deleted: bool,
}

impl MapsEntry {
    pub fn executable(&self) -> bool {
        self.perms.as_bytes().get(2) == Some(&b'x')
    }

    /// The mapped file, for file-backed mappings.
    pub fn file(&self) -> Option<&Path> {
        match &self.path {
            Some(p) if self.inode != 0 && p.starts_with('/') => Some(Path::new(p)),
            _ => None,
        }
    }
}

/// Parse one `/proc/PID/maps` line; `None` for a malformed line.
pub fn parse_maps_line(line: &str) -> Option<MapsEntry> {
    let mut rest = line.trim_end_matches('\n');
    let mut field = || -> Option<&str> {
        let s = rest.trim_start_matches(' ');
        let end = s.find(' ').unwrap_or(s.len());
        let (f, r) = s.split_at(end);
        rest = r;
        (!f.is_empty()).then_some(f)
    };
    let range = field()?;
    let perms = field()?;
    let offset = field()?;
    let dev = field()?;
    let inode = field()?;
    let (start, end) = range.split_once('-')?;
    let (major, minor) = dev.split_once(':')?;
    let path = rest.trim_start_matches(' ');
    let (path, deleted) = match path.strip_suffix(" (deleted)") {
        Some(p) => (p, true),
        None => (path, false),
    };
    Some(MapsEntry {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms: perms.to_string(),
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev_major: u32::from_str_radix(major, 16).ok()?,
        dev_minor: u32::from_str_radix(minor, 16).ok()?,
        inode: inode.parse().ok()?,
        // `\012` is the one escape in maps: a newline in the file name.
        path: (!path.is_empty()).then(|| unescape_octal(path, |b| b == b'\n')),
        deleted,
    })
}

/// The cgroup path of a process from `/proc/PID/cgroup`: the unified (`0::`) line, else the
/// `name=systemd` hierarchy of a hybrid setup.
pub fn parse_cgroup(text: &str) -> Option<String> {
    let mut legacy = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            return Some(path.to_string());
        }
        if controllers == "name=systemd" {
            legacy = Some(path.to_string());
        }
    }
    legacy
}

/// Who a process belongs to, from the systemd point of view.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum ProcessOwner {
    /// PID 1, the system manager itself.
    Pid1,
    /// A unit of the system manager (`foo.service`, also a `.scope`, `.mount`, …).
    SystemUnit { unit: String },
    /// A user's processes: `unit` is the `user@UID.service` manager or the `session-N.scope`.
    User { unit: String },
    /// Anything not attributable (root cgroup, a bare slice).
    Other { cgroup: String },
}

/// Attribute a cgroup path to its owner. `pid` 1 is always [`ProcessOwner::Pid1`].
pub(crate) fn owner_of(pid: u32, cgroup: &str) -> ProcessOwner {
    if pid == 1 {
        return ProcessOwner::Pid1;
    }
    let comps: Vec<&str> = cgroup.split('/').filter(|c| !c.is_empty()).collect();
    let is_unit = |c: &&&str| !c.ends_with(".slice") && crate::units::parse::is_unit_name(c);
    if comps.first() == Some(&"user.slice") {
        let unit = comps
            .iter()
            .find(|c| c.starts_with("user@") && c.ends_with(".service"))
            .or_else(|| comps.iter().find(is_unit))
            .or(comps.last())
            .map(|c| c.to_string())
            .unwrap_or_default();
        return ProcessOwner::User { unit };
    }
    match comps.iter().find(is_unit) {
        Some(unit) => ProcessOwner::SystemUnit {
            unit: unit.to_string(),
        },
        None => ProcessOwner::Other {
            cgroup: cgroup.to_string(),
        },
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StaleKind {
    /// `/proc/PID/exe`
    Exe,
    /// An executable file-backed mapping (a shared library, or a data file when enabled).
    Mapping,
    /// The script an interpreter runs.
    Script,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StaleWhy {
    /// The target tree has a different file at that path.
    Replaced,
    /// The mapping is marked `(deleted)`.
    Deleted,
    /// The target tree has no file at that path.
    Removed,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StaleFile {
    pub kind: StaleKind,
    /// The path as the process sees it (under `/usr`).
    pub path: PathBuf,
    pub why: StaleWhy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaleProcess {
    pub pid: u32,
    pub(crate) comm: String,
    pub(crate) cgroup: String,
    pub(crate) owner: ProcessOwner,
    pub files: Vec<StaleFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedProcess {
    pub pid: u32,
    pub why: SkipWhy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SkipWhy {
    /// Its root directory is not ours (container, chroot, `RootDirectory=`).
    ForeignRoot,
    /// Its `/proc` entries could not be read (other than because it exited).
    Unreadable { error: String },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaleScan {
    /// Stale processes, by pid.
    pub processes: Vec<StaleProcess>,
    pub skipped: Vec<SkippedProcess>,
    /// How the paths whose identity could not decide were compared between the two trees.
    #[serde(default)]
    pub compared: Compared,
}

/// Paths compared between the running and the target tree (each counted once per scan), by
/// what decided.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compared {
    /// The same inode in both trees (ostree hardlinked one object into both checkouts).
    pub identity: u32,
    /// The ostree content checksums of the path in the two commits.
    pub checksum: u32,
    /// Size and bytes (no commit to ask).
    pub bytes: u32,
}

/// Where to look and what to compare.
#[derive(Debug, Clone)]
pub struct ScanConfig {
    /// `/proc`, or a fake one in tests.
    pub proc_root: PathBuf,
    /// Mapped paths under this prefix are checked (`/usr`); the rest of the path is looked up
    /// under `to_usr` and `from_usr`.
    pub usr_prefix: PathBuf,
    /// The target tree's usr: the new deployment's `…/deploy/<csum>.0/usr` before the swap, or
    /// `/usr` after it.
    pub to_usr: PathBuf,
    /// The running tree's usr (the booted deployment), for scripts and the identity fallback.
    pub from_usr: PathBuf,
    /// Also check non-executable file mappings (locale archives, caches, fonts). Off by default:
    /// a process holding old data open keeps working and restarting it is collateral.
    pub include_data_mappings: bool,
    /// Never report these (by default: this process).
    pub exclude_pids: Vec<u32>,
    /// The deployment directories (`…/deploy/<commit>.<serial>`) whose commits hold the running
    /// and the target tree: their content checksums decide whether a path changed when
    /// identities cannot. `None`: compared on disk.
    pub from_deployment: Option<PathBuf>,
    pub to_deployment: Option<PathBuf>,
}

impl ScanConfig {
    /// The deployments are found from the trees when they are a deployment's `usr`.
    pub fn new(from_usr: impl Into<PathBuf>, to_usr: impl Into<PathBuf>) -> ScanConfig {
        let (from_usr, to_usr) = (from_usr.into(), to_usr.into());
        ScanConfig {
            proc_root: PathBuf::from("/proc"),
            usr_prefix: PathBuf::from("/usr"),
            from_deployment: deployment_of(&from_usr),
            to_deployment: deployment_of(&to_usr),
            to_usr,
            from_usr,
            include_data_mappings: false,
            exclude_pids: vec![std::process::id()],
        }
    }
}

/// The deployment directory whose `usr` is `usr`, if it is one (`…/ostree/deploy/<os>/deploy/
/// <commit>.<serial>/usr` with the repository beside it).
fn deployment_of(usr: &Path) -> Option<PathBuf> {
    if usr.file_name()? != "usr" {
        return None;
    }
    let d = usr.parent()?;
    crate::diff::repo::Repo::of_deployment(d).map(|_| d.to_path_buf())
}

/// Interpreters whose first script argument is checked.
fn is_interpreter(exe: &Path) -> bool {
    let Some(name) = exe.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let base = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    matches!(
        base,
        "python" | "perl" | "ruby" | "node" | "nodejs" | "php" | "lua" | "tclsh"
    ) || matches!(name, "bash" | "sh" | "dash" | "zsh" | "ksh" | "mksh")
}

/// The script path an interpreter runs, from its argv: the first argument after the
/// interpreter's options. `None` for `-c`/`-m`/`-e` (code or a module, not a file).
pub(crate) fn script_arg(argv: &[String]) -> Option<&str> {
    const STOP: &[&str] = &[
        "-c",
        "-m",
        "-e",
        "-E",
        "-p",
        "--eval",
        "--print",
        "--command",
    ];
    const WITH_VALUE: &[&str] = &[
        "-W",
        "-X",
        "-Q",
        "-o",
        "-O",
        "+o",
        "+O",
        "-I",
        "-r",
        "--require",
    ];
    let mut args = argv.iter().skip(1);
    while let Some(a) = args.next() {
        if a == "--" {
            return args.next().map(String::as_str);
        }
        if STOP.contains(&a.as_str()) {
            return None;
        }
        if WITH_VALUE.contains(&a.as_str()) {
            args.next();
            continue;
        }
        if a.starts_with('-') || a.starts_with('+') {
            // Combined short flags such as `-Es` or `-u`; `-c` inside a group stops too.
            if a.len() > 1 && !a.starts_with("--") && a[1..].contains(['c', 'm', 'e']) {
                return None;
            }
            continue;
        }
        return Some(a);
    }
    None
}

/// What one process looks like, read from `/proc`.
#[derive(Debug)]
struct ProcInfo {
    pid: u32,
    comm: String,
    exe: Option<(PathBuf, FileId, bool)>,
    maps: Vec<MapsEntry>,
    script: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileId {
    major: u32,
    minor: u32,
    ino: u64,
}

impl FileId {
    fn of(m: &std::fs::Metadata) -> FileId {
        FileId {
            major: libc::major(m.dev()),
            minor: libc::minor(m.dev()),
            ino: m.ino(),
        }
    }
    fn same_dev(&self, o: &FileId) -> bool {
        (self.major, self.minor) == (o.major, o.minor)
    }
}

enum Inspect {
    Info(ProcInfo),
    KernelThread,
    Gone,
    ForeignRoot,
    Unreadable(String),
}

fn gone(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH))
}

/// Whether a `/proc/PID/maps` line can name a file the scan checks: executable (unless data
/// mappings are checked too) and a path below the usr prefix (`wanted` is ` /usr/`). Checked
/// on the raw line, so the many other lines are never parsed into a [`MapsEntry`]; a line this
/// keeps is still parsed and checked in full.
fn maps_line_wanted(line: &str, wanted: &str, data: bool) -> bool {
    let exec = || {
        line.find(' ')
            .is_some_and(|sp| line.as_bytes().get(sp + 3) == Some(&b'x'))
    };
    (data || exec()) && line.contains(wanted)
}

/// Read what the scan needs about `pid` (its cgroup is read later, for a stale process only).
fn inspect(config: &ScanConfig, pid: u32, our_root: Option<FileId>) -> Inspect {
    let proc_root = config.proc_root.as_path();
    let dir = proc_root.join(pid.to_string());
    macro_rules! read {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) if gone(&e) => return Inspect::Gone,
                Err(e) => return Inspect::Unreadable(format!("{e}")),
            }
        };
    }
    let stat = read!(std::fs::read_to_string(dir.join("stat")));
    let (comm, flags) = match parse_stat_comm_flags(&stat) {
        Some(v) => v,
        None => return Inspect::Unreadable(format!("malformed {}/stat", dir.display())),
    };
    const PF_KTHREAD: u64 = 0x0020_0000;
    if flags & PF_KTHREAD != 0 {
        return Inspect::KernelThread;
    }
    if let Some(ours) = our_root {
        let root = read!(std::fs::metadata(dir.join("root")));
        if FileId::of(&root) != ours {
            return Inspect::ForeignRoot;
        }
    }
    let exe = match std::fs::read_link(dir.join("exe")) {
        Ok(target) => {
            let meta = read!(std::fs::metadata(dir.join("exe")));
            let s = target.to_string_lossy();
            let (path, deleted) = match s.strip_suffix(" (deleted)") {
                Some(p) => (PathBuf::from(p), true),
                None => (target.clone(), false),
            };
            Some((path, FileId::of(&meta), deleted))
        }
        // A zombie or a process whose main thread exited: no exe, but maybe maps.
        Err(e) if gone(&e) => None,
        Err(e) => return Inspect::Unreadable(format!("{}: {e}", dir.join("exe").display())),
    };
    let maps_text = read!(std::fs::read_to_string(dir.join("maps")));
    let wanted = format!(" {}/", config.usr_prefix.display());
    let maps = maps_text
        .lines()
        .filter(|l| maps_line_wanted(l, &wanted, config.include_data_mappings))
        .filter_map(parse_maps_line)
        .collect();
    let mut script = None;
    if let Some((exe_path, _, _)) = &exe {
        if is_interpreter(exe_path) {
            let raw = read!(read_all(&dir.join("cmdline")));
            let argv: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if let Some(s) = script_arg(&argv).filter(|s| s.starts_with('/')) {
                // `/bin/foo` on a merged-/usr system is `/usr/bin/foo`. The argv is whatever
                // the process wrote there: only a path that resolves (no `..` left) is kept,
                // and it only decides whether this process's own unit restarts.
                script = std::fs::canonicalize(s).ok();
            }
        }
    }
    Inspect::Info(ProcInfo {
        pid,
        comm,
        exe,
        maps,
        script,
    })
}

fn read_all(p: &Path) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::fs::File::open(p)?.read_to_end(&mut buf)?;
    Ok(buf)
}

/// `comm` and `flags` (field 9) from `/proc/PID/stat`; comm may contain spaces and parens.
fn parse_stat_comm_flags(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    // After ") ": state(3) ppid(4) pgrp(5) session(6) tty_nr(7) tpgid(8) flags(9).
    let flags = stat
        .get(close + 1..)?
        .split_whitespace()
        .nth(6)?
        .parse()
        .ok()?;
    Some((comm, flags))
}

/// Scan every process under `config.proc_root`.
pub fn scan_stale(config: &ScanConfig) -> Result<StaleScan> {
    // The numeric names of the directory: nothing is opened per process until `inspect`.
    let listing = || format!("listing processes in {}", config.proc_root.display());
    let mut pids: Vec<u32> = Vec::new();
    for e in std::fs::read_dir(&config.proc_root).with_context(listing)? {
        let e = e.with_context(listing)?;
        let name = e.file_name();
        pids.extend(
            name.to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<u32>().ok()),
        );
    }
    pids.retain(|p| !config.exclude_pids.contains(p));
    pids.sort_unstable();
    let our_root = std::fs::metadata("/").ok().map(|m| FileId::of(&m));
    let infos: Vec<Inspect> = pids
        .par_iter()
        .map(|&pid| inspect(config, pid, our_root))
        .collect();

    let mut judge = Judge::new(config);
    let mut scan = StaleScan::default();
    for (pid, info) in pids.iter().zip(infos) {
        let info = match info {
            Inspect::Info(i) => i,
            Inspect::KernelThread | Inspect::Gone => continue,
            Inspect::ForeignRoot => {
                scan.skipped.push(SkippedProcess {
                    pid: *pid,
                    why: SkipWhy::ForeignRoot,
                });
                continue;
            }
            Inspect::Unreadable(error) => {
                scan.skipped.push(SkippedProcess {
                    pid: *pid,
                    why: SkipWhy::Unreadable { error },
                });
                continue;
            }
        };
        let files = judge.stale_files(&info)?;
        if files.is_empty() {
            continue;
        }
        // Only a stale process's owner matters: its cgroup is read now.
        let path = config.proc_root.join(pid.to_string()).join("cgroup");
        let cgroup = match std::fs::read_to_string(&path) {
            Ok(text) => parse_cgroup(&text).unwrap_or_default(),
            Err(e) if gone(&e) => continue,
            Err(e) => {
                scan.skipped.push(SkippedProcess {
                    pid: *pid,
                    why: SkipWhy::Unreadable {
                        error: format!("{e}"),
                    },
                });
                continue;
            }
        };
        scan.processes.push(StaleProcess {
            pid: info.pid,
            comm: info.comm,
            owner: owner_of(info.pid, &cgroup),
            cgroup,
            files,
        });
    }
    scan.compared = judge.compared;
    Ok(scan)
}

/// The staleness rules, with caches (many processes map the same libraries).
struct Judge<'a> {
    config: &'a ScanConfig,
    ids: HashMap<PathBuf, Option<FileId>>,
    identical: HashMap<PathBuf, bool>,
    /// The running and the target commit's `/usr`, when both deployments' repository has them;
    /// opened the first time identities cannot decide (`None` until then).
    commits: Option<Option<(CommitUsr, CommitUsr)>>,
    compared: Compared,
}

impl<'a> Judge<'a> {
    fn new(config: &'a ScanConfig) -> Self {
        Judge {
            config,
            ids: HashMap::new(),
            identical: HashMap::new(),
            commits: None,
            compared: Compared::default(),
        }
    }

    /// Whether the two commits have the same content at `rel`; `None` when they cannot say
    /// (no commits, a missing object, not a file on both sides).
    fn same_checksum(&mut self, rel: &Path) -> Option<bool> {
        let config = self.config;
        let (from, to) = self
            .commits
            .get_or_insert_with(|| {
                let open = |d: &Option<PathBuf>| d.as_deref().and_then(CommitUsr::of_deployment);
                open(&config.from_deployment).zip(open(&config.to_deployment))
            })
            .as_mut()?;
        match (from.entry(rel)?, to.entry(rel)?) {
            (UsrEntry::File(a), UsrEntry::File(b)) => Some(a == b),
            _ => None,
        }
    }

    fn id(&mut self, path: PathBuf) -> Result<Option<FileId>> {
        if let Some(id) = self.ids.get(&path) {
            return Ok(*id);
        }
        let id = match std::fs::metadata(&path) {
            Ok(m) => Some(FileId::of(&m)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => None,
            Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
        };
        self.ids.insert(path, id);
        Ok(id)
    }

    /// Whether `rel` is the same file in both trees: the same inode, else the same content
    /// checksum in the two commits, else (no commits to ask) the same size and bytes.
    fn trees_identical(&mut self, rel: &Path) -> Result<bool> {
        if let Some(v) = self.identical.get(rel) {
            return Ok(*v);
        }
        let from = self.id(self.config.from_usr.join(rel))?;
        let to = self.id(self.config.to_usr.join(rel))?;
        let v = if from.is_some() && from == to {
            self.compared.identity += 1;
            true
        } else if let Some(v) = self.same_checksum(rel) {
            self.compared.checksum += 1;
            v
        } else {
            self.compared.bytes += 1;
            files_identical(
                &self.config.from_usr.join(rel),
                &self.config.to_usr.join(rel),
            )?
        };
        self.identical.insert(rel.to_path_buf(), v);
        Ok(v)
    }

    /// Is a file the process maps (with identity `mapped`) stale?
    fn mapped_file(&mut self, rel: &Path, mapped: FileId) -> Result<Option<StaleWhy>> {
        let Some(new) = self.id(self.config.to_usr.join(rel))? else {
            return Ok(Some(StaleWhy::Removed));
        };
        if new == mapped {
            return Ok(None);
        }
        let old = self.id(self.config.from_usr.join(rel))?;
        if old == Some(mapped) {
            return Ok(Some(StaleWhy::Replaced));
        }
        // Neither tree's identity. If the device is comparable, it maps some third (older)
        // version; otherwise (overlay-style identities) decide by the files themselves.
        if mapped.same_dev(&new) || old.is_some_and(|o| mapped.same_dev(&o)) {
            return Ok(Some(StaleWhy::Replaced));
        }
        Ok((!self.trees_identical(rel)?).then_some(StaleWhy::Replaced))
    }

    fn stale_files(&mut self, info: &ProcInfo) -> Result<Vec<StaleFile>> {
        let prefix = self.config.usr_prefix.clone();
        let mut out: BTreeMap<PathBuf, StaleFile> = BTreeMap::new();
        if let Some((path, id, deleted)) = &info.exe {
            if let Ok(rel) = path.strip_prefix(&prefix) {
                let why = if *deleted {
                    Some(StaleWhy::Deleted)
                } else {
                    self.mapped_file(rel, *id)?
                };
                if let Some(why) = why {
                    out.insert(
                        path.clone(),
                        StaleFile {
                            kind: StaleKind::Exe,
                            path: path.clone(),
                            why,
                        },
                    );
                }
            }
        }
        for m in &info.maps {
            let Some(file) = m.file() else { continue };
            if !(m.executable() || self.config.include_data_mappings) {
                continue;
            }
            let Ok(rel) = file.strip_prefix(&prefix) else {
                continue;
            };
            if out.contains_key(file) {
                continue;
            }
            let why = if m.deleted {
                Some(StaleWhy::Deleted)
            } else {
                let id = FileId {
                    major: m.dev_major,
                    minor: m.dev_minor,
                    ino: m.inode,
                };
                self.mapped_file(rel, id)?
            };
            if let Some(why) = why {
                out.insert(
                    file.to_path_buf(),
                    StaleFile {
                        kind: StaleKind::Mapping,
                        path: file.to_path_buf(),
                        why,
                    },
                );
            }
        }
        if let Some(script) = &info.script {
            if let Ok(rel) = script.strip_prefix(&prefix) {
                let why = if self.id(self.config.to_usr.join(rel))?.is_none() {
                    Some(StaleWhy::Removed)
                } else if self.trees_identical(rel)? {
                    None
                } else {
                    Some(StaleWhy::Replaced)
                };
                if let Some(why) = why {
                    out.entry(script.clone()).or_insert(StaleFile {
                        kind: StaleKind::Script,
                        path: script.clone(),
                        why,
                    });
                }
            }
        }
        Ok(out.into_values().collect())
    }
}

/// Same inode, or same size and bytes. A missing side is "different".
pub(crate) fn files_identical(a: &Path, b: &Path) -> Result<bool> {
    let meta = |p: &Path| match std::fs::metadata(p) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("inspecting {}", p.display())),
    };
    let (Some(ma), Some(mb)) = (meta(a)?, meta(b)?) else {
        return Ok(false);
    };
    if (ma.dev(), ma.ino()) == (mb.dev(), mb.ino()) {
        return Ok(true);
    }
    if ma.len() != mb.len() || ma.file_type() != mb.file_type() || !ma.is_file() {
        return Ok(false);
    }
    let open =
        |p: &Path| std::fs::File::open(p).with_context(|| format!("reading {}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let mut ba = vec![0u8; 1 << 16];
    let mut bb = vec![0u8; 1 << 16];
    loop {
        let n = read_full(&mut fa, &mut ba).with_context(|| format!("reading {}", a.display()))?;
        let m = read_full(&mut fb, &mut bb).with_context(|| format!("reading {}", b.display()))?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn maps_lines() {
        let e = parse_maps_line(
            "7f1c2a000000-7f1c2a022000 r-xp 00028000 fd:01 1835032                    /usr/lib/x86_64-linux-gnu/libc.so.6",
        )
        .unwrap();
        assert_eq!(e.start, 0x7f1c2a000000);
        assert_eq!(e.end, 0x7f1c2a022000);
        assert_eq!(e.offset, 0x28000);
        assert_eq!((e.dev_major, e.dev_minor, e.inode), (0xfd, 1, 1835032));
        assert!(e.executable());
        assert_eq!(
            e.file(),
            Some(Path::new("/usr/lib/x86_64-linux-gnu/libc.so.6"))
        );
        assert!(!e.deleted);

        let d = parse_maps_line(
            "55d4c1e00000-55d4c1e02000 r--p 00000000 103:02 42 /usr/bin/my prog (deleted)",
        )
        .unwrap();
        assert_eq!((d.dev_major, d.dev_minor), (0x103, 2));
        assert_eq!(d.path.as_deref(), Some("/usr/bin/my prog"));
        assert!(d.deleted && !d.executable());

        let anon = parse_maps_line(
            "7ffd1a1f0000-7ffd1a211000 rw-p 00000000 00:00 0                          [stack]",
        )
        .unwrap();
        assert_eq!(anon.file(), None);
        let bare = parse_maps_line("7ffd1a1f0000-7ffd1a211000 rw-p 00000000 00:00 0").unwrap();
        assert_eq!(bare.path, None);
        let nl = parse_maps_line("1-2 r-xp 0 08:01 5 /usr/lib/a\\012b.so").unwrap();
        assert_eq!(nl.path.as_deref(), Some("/usr/lib/a\nb.so"));

        assert_eq!(parse_maps_line(""), None);
        assert_eq!(parse_maps_line("garbage"), None);
        assert_eq!(parse_maps_line("1-2 r-xp zz 08:01 5 /x"), None);
    }

    #[test]
    fn cgroups_and_owners() {
        assert_eq!(
            parse_cgroup("0::/system.slice/foo.service\n").as_deref(),
            Some("/system.slice/foo.service")
        );
        let hybrid =
            "12:cpu,cpuacct:/system.slice/x.service\n1:name=systemd:/system.slice/x.service\n";
        assert_eq!(
            parse_cgroup(hybrid).as_deref(),
            Some("/system.slice/x.service")
        );
        let both = "1:name=systemd:/legacy\n0::/unified.service\n";
        assert_eq!(parse_cgroup(both).as_deref(), Some("/unified.service"));
        assert_eq!(parse_cgroup("garbage"), None);

        let cases: &[(u32, &str, ProcessOwner)] = &[
            (1, "/init.scope", ProcessOwner::Pid1),
            (
                5,
                "/system.slice/foo.service",
                ProcessOwner::SystemUnit {
                    unit: "foo.service".into(),
                },
            ),
            (
                5,
                "/system.slice/foo.service/worker/inner",
                ProcessOwner::SystemUnit {
                    unit: "foo.service".into(),
                },
            ),
            (
                5,
                "/system.slice/system-getty.slice/getty@tty1.service",
                ProcessOwner::SystemUnit {
                    unit: "getty@tty1.service".into(),
                },
            ),
            (
                5,
                "/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service",
                ProcessOwner::User {
                    unit: "user@1000.service".into(),
                },
            ),
            (
                5,
                "/user.slice/user-1000.slice/session-3.scope",
                ProcessOwner::User {
                    unit: "session-3.scope".into(),
                },
            ),
            (5, "/", ProcessOwner::Other { cgroup: "/".into() }),
            (
                5,
                "/system.slice",
                ProcessOwner::Other {
                    cgroup: "/system.slice".into(),
                },
            ),
        ];
        for (pid, cg, want) in cases {
            assert_eq!(&owner_of(*pid, cg), want, "{cg}");
        }
    }

    #[test]
    fn interpreter_scripts() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            script_arg(&v(&[
                "/usr/bin/python3",
                "-s",
                "/usr/sbin/firewalld",
                "--nofork"
            ])),
            Some("/usr/sbin/firewalld")
        );
        assert_eq!(
            script_arg(&v(&["python3", "-W", "ignore", "/usr/lib/x.py"])),
            Some("/usr/lib/x.py")
        );
        assert_eq!(script_arg(&v(&["python3", "-m", "http.server"])), None);
        assert_eq!(script_arg(&v(&["bash", "-c", "echo hi"])), None);
        assert_eq!(script_arg(&v(&["perl", "-e", "print 1"])), None);
        assert_eq!(
            script_arg(&v(&["sh", "--", "/usr/libexec/a.sh"])),
            Some("/usr/libexec/a.sh")
        );
        assert_eq!(script_arg(&v(&["bash"])), None);
        assert!(is_interpreter(Path::new("/usr/bin/python3.12")));
        assert!(is_interpreter(Path::new("/usr/bin/perl5.36.0")));
        assert!(is_interpreter(Path::new("/usr/bin/dash")));
        assert!(!is_interpreter(Path::new("/usr/bin/sleep")));
        assert!(!is_interpreter(Path::new("/usr/bin/pythonista")));
    }

    #[test]
    fn stat_fields() {
        let (comm, flags) =
            parse_stat_comm_flags("42 (a (weird) name) S 1 42 42 0 -1 4194560 100 0").unwrap();
        assert_eq!(comm, "a (weird) name");
        assert_eq!(flags, 4194560);
        let (_, kflags) = parse_stat_comm_flags("2 (kthreadd) S 0 0 0 0 -1 2129984 0").unwrap();
        assert_ne!(kflags & 0x0020_0000, 0);
    }

    /// A fake `/proc/PID` entry: stat, cgroup, exe link, maps, cmdline and a root link to `/`.
    struct Fake<'a> {
        pid: u32,
        flags: u64,
        cgroup: &'a str,
        exe: Option<PathBuf>,
        maps: String,
        cmdline: Vec<String>,
    }

    impl Fake<'_> {
        fn write(&self, proc_root: &Path) {
            let d = proc_root.join(self.pid.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("stat"),
                format!("{0} (p{0}) S 1 {0} {0} 0 -1 {1} 0 0", self.pid, self.flags),
            )
            .unwrap();
            std::fs::write(d.join("cgroup"), format!("0::{}\n", self.cgroup)).unwrap();
            if let Some(exe) = &self.exe {
                symlink(exe, d.join("exe")).unwrap();
            }
            std::fs::write(d.join("maps"), &self.maps).unwrap();
            std::fs::write(d.join("cmdline"), self.cmdline.join("\0")).unwrap();
            symlink("/", d.join("root")).unwrap();
        }
    }

    fn fake<'a>(pid: u32, cgroup: &'a str, exe: Option<PathBuf>, maps: &str) -> Fake<'a> {
        Fake {
            pid,
            flags: 0,
            cgroup,
            exe,
            maps: maps.to_string(),
            cmdline: vec![],
        }
    }

    fn id_line(path: &Path, perms: &str) -> String {
        let m = std::fs::metadata(path).unwrap();
        format!(
            "1000-2000 {perms} 00000000 {:02x}:{:02x} {} {}\n",
            libc::major(m.dev()),
            libc::minor(m.dev()),
            m.ino(),
            path.display()
        )
    }

    /// The rules over a fake /proc and real trees: the "process-visible" /usr is a directory
    /// `live/usr` whose files are hardlinks into the old tree, as on an ostree system.
    #[test]
    fn scan_over_fake_proc() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let from = root.join("old/usr");
        let to = root.join("new/usr");
        for d in [&from, &to] {
            std::fs::create_dir_all(d.join("lib")).unwrap();
            std::fs::create_dir_all(d.join("bin")).unwrap();
        }
        // unchanged: hardlinked into both trees.
        std::fs::write(from.join("lib/libsame.so"), b"same").unwrap();
        std::fs::hard_link(from.join("lib/libsame.so"), to.join("lib/libsame.so")).unwrap();
        // changed library.
        std::fs::write(from.join("lib/libchg.so"), b"old").unwrap();
        std::fs::write(to.join("lib/libchg.so"), b"new").unwrap();
        // changed binary.
        std::fs::write(from.join("bin/daemon"), b"old daemon").unwrap();
        std::fs::write(to.join("bin/daemon"), b"new daemon").unwrap();
        // a library that the target drops.
        std::fs::write(from.join("lib/libgone.so"), b"gone").unwrap();
        // unchanged interpreter and a changed script.
        std::fs::write(from.join("bin/python3"), b"py").unwrap();
        std::fs::hard_link(from.join("bin/python3"), to.join("bin/python3")).unwrap();
        std::fs::write(from.join("lib/tool.py"), b"print(1)").unwrap();
        std::fs::write(to.join("lib/tool.py"), b"print(2)").unwrap();
        // same content, different inode (e.g. a rebuilt but identical file): not stale for a
        // script, since the trees are compared by content after identity.
        std::fs::write(from.join("lib/same.py"), b"x").unwrap();
        std::fs::write(to.join("lib/same.py"), b"x").unwrap();

        let proc_root = root.join("proc");
        let usr_prefix = from.clone(); // the processes "see" the old tree at its own path
        let maps_same = id_line(&from.join("lib/libsame.so"), "r-xp");
        let maps_chg = id_line(&from.join("lib/libchg.so"), "r-xp");
        let maps_gone = id_line(&from.join("lib/libgone.so"), "r-xp");
        let data_chg = id_line(&from.join("lib/libchg.so"), "r--p");

        let py = |pid, cgroup, script: &Path, flags: &[&str]| Fake {
            cmdline: std::iter::once("python3".to_string())
                .chain(flags.iter().map(|f| f.to_string()))
                .chain(std::iter::once(script.to_string_lossy().into_owned()))
                .collect(),
            ..fake(pid, cgroup, Some(from.join("bin/python3")), "")
        };
        let deleted = "1-2 r-xp 0 08:01 77 /usr/lib/libx.so (deleted)\n"
            .replace("/usr", &from.to_string_lossy());
        let fakes = [
            fake(1, "/init.scope", None, &maps_chg),
            fake(
                10,
                "/system.slice/fresh.service",
                Some(from.join("lib/libsame.so")),
                &maps_same,
            ),
            fake(
                11,
                "/system.slice/lib.service/sub",
                None,
                &format!("{maps_same}{maps_chg}{maps_chg}"),
            ),
            fake(
                12,
                "/system.slice/daemon.service",
                Some(from.join("bin/daemon")),
                &id_line(&from.join("bin/daemon"), "r-xp"),
            ),
            fake(
                13,
                "/user.slice/user-1000.slice/session-2.scope",
                None,
                &maps_gone,
            ),
            fake(14, "/system.slice/del.service", None, &deleted),
            py(
                15,
                "/system.slice/tool.service",
                &from.join("lib/tool.py"),
                &["-u"],
            ),
            py(
                16,
                "/system.slice/same.service",
                &from.join("lib/same.py"),
                &[],
            ),
            // Only data mapped: ignored by default.
            fake(17, "/system.slice/data.service", None, &data_chg),
            // A kernel thread.
            Fake {
                flags: 0x0020_0040,
                ..fake(2, "/", None, &maps_chg)
            },
            // A mapping outside /usr.
            fake(
                18,
                "/system.slice/else.service",
                None,
                "1-2 r-xp 0 08:01 77 /opt/lib/libx.so\n",
            ),
            // Excluded pid.
            fake(19, "/system.slice/me.service", None, &maps_chg),
        ];
        for f in &fakes {
            f.write(&proc_root);
        }

        let config = ScanConfig {
            proc_root: proc_root.clone(),
            usr_prefix,
            to_usr: to.clone(),
            from_usr: from.clone(),
            include_data_mappings: false,
            exclude_pids: vec![19],
            from_deployment: None,
            to_deployment: None,
        };
        let scan = scan_stale(&config).unwrap();
        assert_eq!(scan.skipped, []);
        type Summary = Vec<(u32, Vec<(StaleKind, String, StaleWhy)>)>;
        let got: Summary = scan
            .processes
            .iter()
            .map(|p| {
                (
                    p.pid,
                    p.files
                        .iter()
                        .map(|f| {
                            let rel = f.path.strip_prefix(&from).unwrap();
                            (f.kind, rel.display().to_string(), f.why)
                        })
                        .collect(),
                )
            })
            .collect();
        use StaleKind::*;
        use StaleWhy::*;
        assert_eq!(
            got,
            vec![
                (1, vec![(Mapping, "lib/libchg.so".into(), Replaced)]),
                (11, vec![(Mapping, "lib/libchg.so".into(), Replaced)]),
                (12, vec![(Exe, "bin/daemon".into(), Replaced)]),
                (13, vec![(Mapping, "lib/libgone.so".into(), Removed)]),
                (14, vec![(Mapping, "lib/libx.so".into(), Deleted)]),
                (15, vec![(Script, "lib/tool.py".into(), Replaced)]),
            ]
        );
        assert_eq!(scan.processes[0].owner, ProcessOwner::Pid1);
        assert_eq!(
            scan.processes[1].owner,
            ProcessOwner::SystemUnit {
                unit: "lib.service".into()
            }
        );
        assert_eq!(
            scan.processes[3].owner,
            ProcessOwner::User {
                unit: "session-2.scope".into()
            }
        );

        // With data mappings included, the data-only process shows up too.
        let scan = scan_stale(&ScanConfig {
            include_data_mappings: true,
            ..config.clone()
        })
        .unwrap();
        assert!(scan.processes.iter().any(|p| p.pid == 17));

        // After the swap: the target is what the processes' path now shows. Pointing `to_usr`
        // at the old tree itself means nothing is stale except deleted and dropped files.
        let scan = scan_stale(&ScanConfig {
            to_usr: from.clone(),
            ..config
        })
        .unwrap();
        let pids: Vec<u32> = scan.processes.iter().map(|p| p.pid).collect();
        assert_eq!(pids, [14]);
    }

    /// A composefs-style host: processes map `/usr` files with an identity of neither tree (the
    /// overlay's device). Two commits by the real `ostree` CLI differ in one library; the scan
    /// flags exactly the process mapping it, decided by the commits' content checksums (or by
    /// the shared inode where ostree hardlinked an unchanged object), never by reading bytes.
    /// Mappings with a tree's own identity (a plain checkout) still take the inode fast path.
    #[test]
    fn content_checksums_decide_for_foreign_identities() {
        use crate::testing::{write_file, OstreeRepo};
        let r = OstreeRepo::new();
        let t = tempfile::tempdir().unwrap();
        let tree = t.path().join("tree");
        write_file(&tree, "usr/bin/daemon", b"daemon v1");
        write_file(&tree, "usr/lib/x86_64-linux-gnu/libfoo.so.1", b"foo v1");
        write_file(&tree, "usr/lib/x86_64-linux-gnu/libbar.so.1", b"bar v1");
        let c1 = r.commit(&tree, "v1");
        write_file(&tree, "usr/lib/x86_64-linux-gnu/libfoo.so.1", b"foo v2");
        let c2 = r.commit(&tree, "v2");

        let proc_root = t.path().join("proc");
        let lib = "/usr/lib/x86_64-linux-gnu";
        // Overlay identities: device 0:99, the image's inode numbers.
        let foreign =
            |ino: u64, name: &str| format!("1000-2000 r-xp 00000000 00:99 {ino} {lib}/{name}\n");
        let own = |usr: &Path, name: &str| {
            id_line(&usr.join("lib/x86_64-linux-gnu").join(name), "r-xp")
                .replace(&usr.display().to_string(), "/usr")
        };
        // (hardlinked deployments as ostree makes them, compared counts expected)
        for (hardlink, want) in [
            (
                true,
                Compared {
                    identity: 1,
                    checksum: 1,
                    bytes: 0,
                },
            ),
            (
                false,
                Compared {
                    identity: 0,
                    checksum: 2,
                    bytes: 0,
                },
            ),
        ] {
            let serial = u32::from(!hardlink);
            let from = r.deploy_as(&c1, serial, hardlink).join("usr");
            let to = r.deploy_as(&c2, serial, hardlink).join("usr");
            let _ = std::fs::remove_dir_all(&proc_root);
            let mut fakes = vec![
                fake(
                    20,
                    "/system.slice/foo.service",
                    None,
                    &foreign(11, "libfoo.so.1"),
                ),
                fake(
                    21,
                    "/system.slice/bar.service",
                    None,
                    &foreign(12, "libbar.so.1"),
                ),
            ];
            let plain = [own(&from, "libfoo.so.1"), own(&from, "libbar.so.1")];
            if hardlink {
                // A plain checkout's identities: the inode fast path, no comparison.
                fakes.push(fake(22, "/system.slice/plainfoo.service", None, &plain[0]));
                fakes.push(fake(23, "/system.slice/plainbar.service", None, &plain[1]));
            }
            for f in &fakes {
                f.write(&proc_root);
            }
            let config = ScanConfig {
                proc_root: proc_root.clone(),
                exclude_pids: vec![],
                ..ScanConfig::new(&from, &to)
            };
            assert_eq!(config.from_deployment.as_deref(), from.parent());
            assert_eq!(config.to_deployment.as_deref(), to.parent());
            let scan = scan_stale(&config).unwrap();
            let got: Vec<(u32, String, StaleWhy)> = scan
                .processes
                .iter()
                .flat_map(|p| {
                    p.files
                        .iter()
                        .map(move |f| (p.pid, f.path.display().to_string(), f.why))
                })
                .collect();
            let mut want_stale = vec![(20, format!("{lib}/libfoo.so.1"), StaleWhy::Replaced)];
            if hardlink {
                want_stale.push((22, format!("{lib}/libfoo.so.1"), StaleWhy::Replaced));
            }
            assert_eq!(got, want_stale, "hardlink={hardlink}");
            assert_eq!(scan.compared, want, "hardlink={hardlink}");

            // Without the commits (not deployment directories), the same answer from bytes.
            let scan = scan_stale(&ScanConfig {
                from_deployment: None,
                to_deployment: None,
                ..config
            })
            .unwrap();
            assert_eq!(
                scan.processes.len(),
                want_stale.len(),
                "hardlink={hardlink}"
            );
            assert_eq!(scan.compared.checksum, 0);
            assert_eq!(scan.compared.bytes, want.checksum, "hardlink={hardlink}");
        }
    }

    #[test]
    fn identical_files() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        let b = t.path().join("b");
        let c = t.path().join("c");
        std::fs::write(&a, vec![7u8; 200_000]).unwrap();
        std::fs::write(&b, vec![7u8; 200_000]).unwrap();
        let mut other = vec![7u8; 200_000];
        other[150_000] = 8;
        std::fs::write(&c, other).unwrap();
        assert!(files_identical(&a, &b).unwrap());
        assert!(!files_identical(&a, &c).unwrap());
        assert!(!files_identical(&a, &t.path().join("missing")).unwrap());
    }
}
