//! Discover the deployments of an ostree sysroot: which exist, which is booted, staged,
//! pending or rollback, their origins, kernels and kernel arguments.
//!
//! Parsing lives in the submodules and is pure; this module does the reading, always naming
//! the path in errors. The rules follow libostree (`ostree_sysroot_load`):
//! - deployments are the BLS entries under `boot/loader/entries` (highest `version` first),
//!   each resolved through its `ostree=` bootlink; a staged deployment comes first;
//! - the booted one is found by (dev, ino) of its directory against `/run/ostree-booted`'s
//!   `backing-root-device-inode`, or `stat` of the root when that key is absent — never
//!   from `/proc/cmdline`;
//! - pending/rollback are the neighbours of the booted deployment in the same stateroot.

pub mod bls;
pub mod composefs;
pub mod kernel;
pub mod origin;
pub mod signature;
pub mod state;

use crate::system::files::{self, Follow};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub(crate) use bls::BootEntry;
pub(crate) use kernel::{DigestSource, KernelFiles};
pub(crate) use origin::Origin;
pub(crate) use state::{BootedState, StagedState};

/// Where to look. Every verb takes these, so tests can point at fixtures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostPaths {
    /// The physical sysroot holding `ostree/` and `boot/` (`/sysroot` when booted).
    pub sysroot: PathBuf,
    /// The running system's root (`/`): where `/usr` and `/etc` are swapped and merged.
    pub(crate) root: PathBuf,
    /// The runtime state directory (`/run`).
    pub(crate) run: PathBuf,
    /// The boot directory holding `loader` → `loader.N` and the kernels the entries name. On a
    /// booted host this is the mounted `/boot` when it holds the `loader` link (a boot partition,
    /// or ostree-prepare-root's bind of `<sysroot>/boot`), else `<sysroot>/boot` — the directory
    /// libostree reads, whose sysroot is `/` on a booted host (see [`HostPaths::resolve`]).
    pub boot: PathBuf,
}

impl HostPaths {
    /// Defaults: root `/`, run `/run`, sysroot `/sysroot` when `<run>/ostree-booted` exists,
    /// else `/`. The boot directory: on an ostree-booted host, `<root>/boot` when it holds the
    /// `loader` symlink, else `<sysroot>/boot`. With a boot partition (Fedora CoreOS, most
    /// installer-made hosts) `<sysroot>/boot` is an empty directory and only the mounted `/boot`
    /// has the entries; with `/boot` on the root filesystem both show the same directory.
    pub fn resolve(sysroot: Option<PathBuf>, root: Option<PathBuf>, run: Option<PathBuf>) -> Self {
        let root = root.unwrap_or_else(|| PathBuf::from("/"));
        let run = run.unwrap_or_else(|| PathBuf::from("/run"));
        let booted = run.join("ostree-booted").symlink_metadata().is_ok();
        let sysroot = sysroot.unwrap_or_else(|| {
            if booted {
                root.join("sysroot")
            } else {
                root.clone()
            }
        });
        let mounted = root.join("boot");
        let mounted_has_loader = mounted
            .join("loader")
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink());
        let boot = if booted && mounted_has_loader {
            mounted
        } else {
            sysroot.join("boot")
        };
        HostPaths {
            sysroot,
            root,
            run,
            boot,
        }
    }

    pub(crate) fn ostree_booted_file(&self) -> PathBuf {
        self.run.join("ostree-booted")
    }

    pub(crate) fn staged_file(&self) -> PathBuf {
        self.run.join("ostree/staged-deployment")
    }

    /// The legacy finalization lock file ostree still writes next to the staged state.
    pub(crate) fn staged_locked_file(&self) -> PathBuf {
        self.run.join("ostree/staged-deployment-locked")
    }

    /// ostree's per-deployment runtime state directory (`unlocked-*` flags, rpm-ostree's
    /// live stamp).
    pub(crate) fn deployment_state_dir(&self, id: &str) -> PathBuf {
        self.run.join("ostree/deployment-state").join(id)
    }
}

/// One deployment, with everything status and diff need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deployment {
    /// Position in ostree's order (staged first, then BLS order).
    pub(crate) index: usize,
    /// `<checksum>.<serial>`.
    pub(crate) id: String,
    pub(crate) stateroot: String,
    pub(crate) checksum: String,
    pub(crate) serial: u32,
    /// Physical deployment directory `…/ostree/deploy/<stateroot>/deploy/<id>`.
    pub path: PathBuf,
    pub booted: bool,
    pub staged: bool,
    pub(crate) pending: bool,
    pub(crate) rollback: bool,
    pub(crate) pinned: bool,
    pub(crate) origin: Option<Origin>,
    pub(crate) kernel: Option<KernelFiles>,
    /// The BLS entry, absent for a staged deployment (not finalized yet).
    pub(crate) boot_entry: Option<BootEntry>,
    /// Kernel arguments: the BLS `options`; for a staged deployment the override it was
    /// staged with, else the ones it inherits from its merge deployment.
    pub(crate) kargs: Vec<String>,
    /// `ostree admin unlock` state: `development` or `transient` (runtime flags under
    /// `<run>/ostree/deployment-state/<id>/`), or `hotfix` (the origin's `unlocked=`). `/usr` is
    /// then a writable overlay, not the deployment's tree.
    pub(crate) unlocked: Option<String>,
    /// rpm-ostree applied a change live to this deployment this boot
    /// (`<run>/ostree/deployment-state/<id>/rpmostree-is-live.stamp`): `/usr` is an overlay.
    pub(crate) rpm_ostree_live: bool,
    /// The deployment has a composefs image (`<deployment>/.ostree.cfs`, written by an ostree
    /// built with composefs): on a composefs host its `usr` can go live as a composefs mount.
    #[serde(default)]
    pub(crate) composefs_image: bool,
    /// On a signed composefs host: whether its commit is signed by a trusted key, and the image
    /// digest the signature binds ([`signature`]); `None` elsewhere.
    #[serde(default)]
    pub(crate) composefs_signature: Option<signature::CommitSignature>,
    /// (st_dev, st_ino) of the deployment directory.
    #[serde(skip)]
    pub(crate) dev_ino: (u64, u64),
}

impl Deployment {
    /// Kernel arguments without `ostree=`, which differs between any two deployments.
    pub(crate) fn kargs_without_ostree(&self) -> Vec<String> {
        self.kargs
            .iter()
            .filter(|a| !a.starts_with("ostree="))
            .cloned()
            .collect()
    }
}

/// Everything discovered about a sysroot.
#[derive(Debug, Clone, Serialize)]
pub struct Host {
    pub(crate) paths: HostPaths,
    /// `<run>/ostree-booted` exists.
    pub(crate) ostree_booted: bool,
    pub(crate) booted_state: Option<BootedState>,
    pub(crate) staged_state: Option<StagedState>,
    /// The current bootversion (`boot/loader` → `loader.N`), if any entries were written.
    pub(crate) bootversion: Option<u8>,
    /// The staged deployment must not be finalized until unlocked: `locked` in
    /// `<run>/ostree/staged-deployment`, or the older `<run>/ostree/staged-deployment-locked`
    /// file (bootc `--download-only`, rpm-ostree `--lock-finalization`,
    /// `ostree admin deploy --lock-finalization`).
    pub(crate) finalization_locked: bool,
    pub deployments: Vec<Deployment>,
}

impl Host {
    pub fn booted(&self) -> Option<&Deployment> {
        self.deployments.iter().find(|d| d.booted)
    }
    pub fn staged(&self) -> Option<&Deployment> {
        self.deployments.iter().find(|d| d.staged)
    }
    pub(crate) fn pending(&self) -> Option<&Deployment> {
        self.deployments.iter().find(|d| d.pending)
    }
    pub(crate) fn rollback(&self) -> Option<&Deployment> {
        self.deployments.iter().find(|d| d.rollback)
    }

    /// What a selector may be, with this host's deployments (for error messages).
    fn accepted_selectors(&self) -> String {
        let known = self
            .deployments
            .iter()
            .map(|d| format!("{}={}", d.index, d.id))
            .collect::<Vec<_>>();
        let index = match self.deployments.len() {
            0 => "an index (there are no deployments)".to_owned(),
            n => format!("an index 0..={}", n - 1),
        };
        format!(
            "accepted: booted, staged, pending, rollback, {index}, or <checksum>.<serial> (known: {}); see `fastswitch status`",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        )
    }

    /// Resolve a user's deployment selector: `booted`, `staged`, `pending`, `rollback`, an index,
    /// or `<checksum>.<serial>` (a unique checksum prefix with its serial also works). Every
    /// error names the value given and what is accepted.
    pub(crate) fn select(&self, sel: &str) -> Result<&Deployment> {
        let found = match sel {
            "booted" => self.booted(),
            "staged" => self.staged(),
            "pending" => self.pending(),
            "rollback" => self.rollback(),
            s if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) => {
                let i: Option<usize> = s.parse().ok();
                match i.and_then(|i| self.deployments.get(i)) {
                    Some(d) => Some(d),
                    None => bail!(
                        "deployment index `{s}` is out of range in {}; {}",
                        self.paths.sysroot.display(),
                        self.accepted_selectors()
                    ),
                }
            }
            s => {
                let matches: Vec<&Deployment> = self
                    .deployments
                    .iter()
                    .filter(|d| d.id == s || (s.contains('.') && d.id.starts_with(s)))
                    .collect();
                if matches.len() > 1 {
                    bail!(
                        "deployment `{s}` is ambiguous: it matches {} deployments ({}); {}",
                        matches.len(),
                        matches
                            .iter()
                            .map(|d| d.id.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        self.accepted_selectors()
                    );
                }
                matches.into_iter().next()
            }
        };
        found.ok_or_else(|| {
            anyhow::anyhow!(
                "no `{sel}` deployment in {}; {}",
                self.paths.sysroot.display(),
                self.accepted_selectors()
            )
        })
    }
}

/// Check a deployment directory name: `<64 hex>.<serial>`. Returns (checksum, serial).
pub(crate) fn parse_deploy_name(name: &str) -> Result<(String, u32)> {
    let (csum, serial) = name
        .rsplit_once('.')
        .with_context(|| format!("deployment name {name:?} is not <checksum>.<serial>"))?;
    if csum.len() != 64
        || !csum
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    {
        bail!("deployment name {name:?}: checksum is not 64 lower-case hex digits");
    }
    if serial.is_empty() || !serial.bytes().all(|c| c.is_ascii_digit()) {
        bail!("deployment name {name:?}: serial is not a number");
    }
    Ok((
        csum.to_owned(),
        serial
            .parse()
            .with_context(|| format!("deployment name {name:?}: serial"))?,
    ))
}

fn check_stateroot(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        bail!("stateroot name {name:?} is not a plain directory name");
    }
    Ok(())
}

fn dev_ino(p: &Path) -> Result<(u64, u64)> {
    let m = std::fs::symlink_metadata(p).with_context(|| format!("stat {}", p.display()))?;
    if !m.is_dir() {
        bail!("{} is not a directory", p.display());
    }
    Ok((m.dev(), m.ino()))
}

/// Read the whole sysroot. Errors name the path that is missing or malformed.
pub fn load(paths: &HostPaths) -> Result<Host> {
    load_reusing(paths, None)
}

/// [`load`] again after a change (e.g. finalization), reusing the kernel digests of `prior`
/// for deployment directories that are unchanged (same id and directory inode): their kernel
/// files are immutable ostree objects, and hashing tens of MB per deployment is not free.
pub(crate) fn load_reusing(paths: &HostPaths, prior: Option<&Host>) -> Result<Host> {
    let deploy_root = paths.sysroot.join("ostree/deploy");
    if !deploy_root.is_dir() {
        // A refusal (exit 6), not an error: a host without ostree is a precondition not met.
        return Err(crate::exit::refuse(
            crate::exit::ExitCode::Refused,
            format!(
                "{} is not an ostree sysroot: {} does not exist (use --sysroot to point at one)",
                paths.sysroot.display(),
                deploy_root.display()
            ),
        ));
    }
    let booted_state = read_booted_state(paths)?;
    let staged_state = read_staged_state(paths)?;
    let (bootversion, entries) = read_boot_entries(&paths.boot)?;

    let mut deployments: Vec<Deployment> = Vec::new();
    if let Some(st) = &staged_state {
        deployments.push(staged_deployment(paths, &deploy_root, st, prior)?);
    }
    for entry in entries {
        let d = written_deployment(paths, &deploy_root, entry, prior)?;
        if !deployments
            .iter()
            .any(|o| o.id == d.id && o.stateroot == d.stateroot)
        {
            deployments.push(d);
        }
    }
    for (i, d) in deployments.iter_mut().enumerate() {
        d.index = i;
    }
    if let Some(bs) = &booted_state {
        mark_booted(paths, bs, &mut deployments)?;
        check_signatures(paths, bs, &mut deployments);
    }
    if let Some(st) = &staged_state {
        set_staged_kargs(st, &mut deployments);
    }
    mark_pending_and_rollback(&mut deployments);

    let finalization_locked = staged_state.as_ref().is_some_and(|s| s.locked)
        || (staged_state.is_some() && paths.staged_locked_file().symlink_metadata().is_ok());
    Ok(Host {
        paths: paths.clone(),
        ostree_booted: booted_state.is_some(),
        booted_state,
        staged_state,
        bootversion,
        finalization_locked,
        deployments,
    })
}

/// `<run>/ostree-booted`, parsed; `None` when the host is not ostree-booted.
fn read_booted_state(paths: &HostPaths) -> Result<Option<state::BootedState>> {
    let booted_file = paths.ostree_booted_file();
    match files::read_opt(&booted_file, Follow::Yes)? {
        Some(bytes) => {
            let mut bs = state::parse_booted(&bytes)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("parsing {}", booted_file.display()))?;
            bs.root_mount = root_mount(&paths.root);
            Ok(Some(bs))
        }
        None => Ok(None),
    }
}

/// The mount the running root is on, from this process's mount table; `None` when it cannot be
/// read (the composefs keys of `/run/ostree-booted` still count, see [`composefs`]).
fn root_mount(root: &Path) -> Option<composefs::RootMount> {
    let id = composefs::root_mount_id(root).ok()?;
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    composefs::parse_mount(&text, id)
}

/// `<run>/ostree/staged-deployment`, parsed; `None` when nothing is staged.
fn read_staged_state(paths: &HostPaths) -> Result<Option<state::StagedState>> {
    let staged_file = paths.staged_file();
    match files::read_opt(&staged_file, Follow::Yes)? {
        Some(bytes) => Ok(Some(
            state::parse_staged(&bytes)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("parsing {}", staged_file.display()))?,
        )),
        None => Ok(None),
    }
}

/// The staged deployment (first in ostree's order), from its state file.
fn staged_deployment(
    paths: &HostPaths,
    deploy_root: &Path,
    st: &state::StagedState,
    prior: Option<&Host>,
) -> Result<Deployment> {
    let staged_file = paths.staged_file();
    check_stateroot(&st.osname).with_context(|| format!("in {}", staged_file.display()))?;
    let (checksum, serial) =
        parse_deploy_name(&st.name).with_context(|| format!("in {}", staged_file.display()))?;
    let path = deploy_root.join(&st.osname).join("deploy").join(&st.name);
    if !path.is_dir() {
        bail!(
            "the staged deployment {} named in {} does not exist; re-stage it (e.g. `ostree admin deploy --stage`) or remove the stale state file",
            path.display(),
            staged_file.display()
        );
    }
    let recorded = Some((st.bootcsum.as_str(), DigestSource::StagedState));
    let mut d = make_deployment(
        paths, &st.osname, &checksum, serial, path, None, recorded, prior,
    )?;
    d.staged = true;
    Ok(d)
}

/// A written deployment, from its BLS entry and the `ostree=` bootlink in it.
fn written_deployment(
    paths: &HostPaths,
    deploy_root: &Path,
    entry: BootEntry,
    prior: Option<&Host>,
) -> Result<Deployment> {
    let ostree_arg = entry
        .ostree_karg()
        .with_context(|| format!("boot entry {} has no `ostree=` kernel argument", entry.file))?;
    let link = bls::parse_bootlink(&ostree_arg)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("boot entry {}", entry.file))?;
    let name = resolve_bootlink(&paths.sysroot, &link).with_context(|| {
        format!(
            "resolving `ostree={ostree_arg}` of boot entry {}",
            entry.file
        )
    })?;
    let (checksum, serial) = parse_deploy_name(&name)?;
    let path = deploy_root.join(&link.stateroot).join("deploy").join(&name);
    // ostree's bootcsum for this deployment, when the bootlink and the directory the
    // kernel was copied to agree on it.
    let linux_csum = entry
        .linux
        .as_deref()
        .and_then(|l| bls::bootcsum_from_linux_path(l, &link.stateroot));
    let csum = linux_csum.filter(|c| *c == link.bootcsum);
    let recorded = csum.as_deref().map(|c| (c, DigestSource::BootEntry));
    make_deployment(
        paths,
        &link.stateroot,
        &checksum,
        serial,
        path,
        Some(entry),
        recorded,
        prior,
    )
}

/// Booted: (dev, ino) match; fallback: stat the root.
fn mark_booted(
    paths: &HostPaths,
    bs: &state::BootedState,
    deployments: &mut [Deployment],
) -> Result<()> {
    let key = match bs.backing_root_device_inode {
        Some(k) => k,
        None => {
            let m = std::fs::metadata(&paths.root)
                .with_context(|| format!("stat {}", paths.root.display()))?;
            (m.dev(), m.ino())
        }
    };
    for d in deployments.iter_mut() {
        if d.dev_ino == key {
            d.booted = true;
        }
    }
    Ok(())
}

/// Staged kargs: the override, else inherited from the merge deployment (booted if the same
/// stateroot, else the first written deployment of that stateroot).
fn set_staged_kargs(st: &state::StagedState, deployments: &mut [Deployment]) {
    if deployments.iter().position(|d| d.staged) != Some(0) {
        return;
    }
    let inherited = || -> Vec<String> {
        let merge = st
            .merge_deployment
            .as_ref()
            .and_then(|m| {
                deployments
                    .iter()
                    .find(|d| &d.id == m && d.stateroot == st.osname)
            })
            .or_else(|| {
                deployments
                    .iter()
                    .find(|d| d.booted && d.stateroot == st.osname)
            })
            .or_else(|| {
                deployments
                    .iter()
                    .find(|d| !d.staged && d.stateroot == st.osname)
            });
        merge.map(|m| m.kargs_without_ostree()).unwrap_or_default()
    };
    let kargs = st.kargs.clone().unwrap_or_else(inherited);
    deployments[0].kargs = kargs;
}

/// pending / rollback, exactly as ostree_sysroot_query_deployments_for().
fn mark_pending_and_rollback(deployments: &mut [Deployment]) {
    let Some(bi) = deployments.iter().position(|d| d.booted) else {
        return;
    };
    let osname = deployments[bi].stateroot.clone();
    let (mut pending, mut rollback) = (None, None);
    for (i, d) in deployments.iter().enumerate() {
        if d.stateroot != osname || i == bi {
            continue;
        }
        if i < bi && pending.is_none() {
            pending = Some(i);
        } else if i > bi && rollback.is_none() {
            rollback = Some(i);
        }
    }
    if let Some(p) = pending {
        deployments[p].pending = true;
    }
    if let Some(r) = rollback {
        deployments[r].rollback = true;
    }
}

/// Check a deployment's recorded boot digest against its tree ([`kernel::verify_boot_digest`]):
/// call it before loading the deployment's kernel, since discovery takes ostree's recorded
/// bootcsum instead of hashing. A mismatch is a refusal (exit 6) naming both checksums.
pub(crate) fn verify_kernel(d: &Deployment) -> Result<()> {
    let Some(k) = &d.kernel else {
        return Ok(());
    };
    kernel::verify_boot_digest(&d.path, k).map_err(|e| {
        crate::exit::refuse(
            crate::exit::ExitCode::Refused,
            format!("deployment {}: {e:#}", d.id),
        )
    })
}

#[allow(clippy::too_many_arguments)]
fn make_deployment(
    paths: &HostPaths,
    stateroot: &str,
    checksum: &str,
    serial: u32,
    path: PathBuf,
    entry: Option<BootEntry>,
    recorded: Option<(&str, DigestSource)>,
    prior: Option<&Host>,
) -> Result<Deployment> {
    check_stateroot(stateroot)?;
    let id = format!("{checksum}.{serial}");
    let dev_ino = dev_ino(&path)?;
    let origin_path = path.with_file_name(format!("{id}.origin"));
    let origin = match files::read_to_string_opt(&origin_path, Follow::Yes)? {
        Some(text) => Some(
            origin::parse_origin(&text)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("parsing origin file {}", origin_path.display()))?,
        ),
        None => None,
    };
    let known = prior.and_then(|h| {
        h.deployments
            .iter()
            .find(|d| d.id == id && d.stateroot == stateroot && d.dev_ino == dev_ino)
    });
    let kernel = match known {
        Some(d) => d.kernel.clone(),
        None => kernel::find_kernel_recorded(&path, recorded)
            .with_context(|| format!("kernel of deployment {id}"))?,
    };
    let kargs = entry.as_ref().map(|e| e.kargs()).unwrap_or_default();
    // As ostree_sysroot_load: the runtime flags first, then the origin's `unlocked=hotfix`.
    let run_state = paths.deployment_state_dir(&id);
    let flag = |name: &str| run_state.join(name).symlink_metadata().is_ok();
    let unlocked = if flag("unlocked-development") {
        Some("development".to_owned())
    } else if flag("unlocked-transient") {
        Some("transient".to_owned())
    } else {
        origin
            .as_ref()
            .and_then(|o| o.unlocked())
            .filter(|u| *u == "hotfix")
            .map(str::to_owned)
    };
    let rpm_ostree_live = flag("rpmostree-is-live.stamp");
    let composefs_image = path.join(crate::system::composefs::IMAGE_NAME).is_file();
    Ok(Deployment {
        index: 0,
        id,
        stateroot: stateroot.to_owned(),
        checksum: checksum.to_owned(),
        serial,
        pinned: origin.as_ref().is_some_and(Origin::pinned),
        path,
        booted: false,
        staged: false,
        pending: false,
        rollback: false,
        origin,
        kernel,
        boot_entry: entry,
        kargs,
        unlocked,
        rpm_ostree_live,
        composefs_image,
        composefs_signature: None,
        dev_ino,
    })
}

/// On a signed composefs host (`composefs.signed`), the commit signature and image digest of
/// every other deployment with a composefs image ([`signature::check_deployment`]).
fn check_signatures(paths: &HostPaths, bs: &BootedState, deployments: &mut [Deployment]) {
    let Some(key) = composefs::composefs(bs).signed else {
        return;
    };
    let objects = paths.sysroot.join("ostree/repo/objects");
    for d in deployments
        .iter_mut()
        .filter(|d| !d.booted && d.composefs_image)
    {
        d.composefs_signature = Some(signature::check_deployment(
            &paths.root,
            &objects,
            &d.checksum,
            &key,
        ));
    }
}

/// Read `<boot>/loader/entries/*.conf`, following `loader` → `loader.N`.
fn read_boot_entries(boot: &Path) -> Result<(Option<u8>, Vec<BootEntry>)> {
    let loader = boot.join("loader");
    let target = match std::fs::read_link(&loader) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((None, Vec::new())),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            bail!(
                "{} is not a symlink to loader.0 or loader.1",
                loader.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", loader.display())),
    };
    let bootversion = match target.to_str() {
        Some("loader.0") => 0,
        Some("loader.1") => 1,
        _ => bail!(
            "{} points to {}, expected loader.0 or loader.1",
            loader.display(),
            target.display()
        ),
    };
    let dir = boot.join(&target).join("entries");
    let mut entries = Vec::new();
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Some(bootversion), entries))
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for ent in rd {
        let ent = ent.with_context(|| format!("reading {}", dir.display()))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".conf") {
            continue;
        }
        let p = ent.path();
        let text = files::read_to_string(&p, Follow::Yes)?;
        entries.push(
            bls::parse_entry(&name, &text)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("parsing {}", p.display()))?,
        );
    }
    bls::sort_entries(&mut entries);
    Ok((Some(bootversion), entries))
}

/// Resolve `/ostree/boot.N/<stateroot>/<bootcsum>/<serial>` inside the sysroot to a deployment
/// name, without ever leaving the sysroot: `ostree/boot.N` must be a symlink to `boot.N.M`, and
/// the bootlink a symlink to `../../../deploy/<stateroot>/deploy/<checksum>.<serial>`.
pub(crate) fn resolve_bootlink(sysroot: &Path, link: &bls::Bootlink) -> Result<String> {
    let bootn = sysroot.join(format!("ostree/boot.{}", link.bootversion));
    let sub = std::fs::read_link(&bootn).with_context(|| {
        format!(
            "{} must be a symlink to boot.{}.<subbootversion>",
            bootn.display(),
            link.bootversion
        )
    })?;
    let sub = sub.to_string_lossy().into_owned();
    let ok_sub = sub
        .strip_prefix(&format!("boot.{}.", link.bootversion))
        .is_some_and(|s| s == "0" || s == "1");
    if !ok_sub {
        bail!(
            "{} points to {sub:?}, expected boot.{}.0 or .1",
            bootn.display(),
            link.bootversion
        );
    }
    let bl = sysroot
        .join("ostree")
        .join(&sub)
        .join(&link.stateroot)
        .join(&link.bootcsum)
        .join(link.bootserial.to_string());
    let meta =
        std::fs::symlink_metadata(&bl).with_context(|| format!("bootlink {}", bl.display()))?;
    if !meta.file_type().is_symlink() {
        bail!(
            "bootlink {} is not a symbolic link (ostree-prepare-root would refuse it too)",
            bl.display()
        );
    }
    let target =
        std::fs::read_link(&bl).with_context(|| format!("reading bootlink {}", bl.display()))?;
    let t = target.to_string_lossy();
    let prefix = format!("../../../deploy/{}/deploy/", link.stateroot);
    let name = t.strip_prefix(&prefix).with_context(|| {
        format!(
            "bootlink {} points to {t:?}, outside {}ostree/deploy/{}/deploy",
            bl.display(),
            sysroot
                .display()
                .to_string()
                .trim_end_matches('/')
                .to_owned()
                + "/",
            link.stateroot
        )
    })?;
    parse_deploy_name(name).with_context(|| format!("bootlink {}", bl.display()))?;
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_names() {
        let c = "a".repeat(64);
        assert_eq!(parse_deploy_name(&format!("{c}.3")).unwrap().1, 3);
        for bad in [
            c.clone(),
            format!("{c}.x"),
            "../x.0".into(),
            format!("{}/.0", "a".repeat(63)),
            format!("{c}.0/.."),
        ] {
            assert!(parse_deploy_name(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_paths() {
        let d = tempfile::tempdir().unwrap();
        let p = HostPaths::resolve(None, Some(d.path().into()), Some(d.path().join("run")));
        assert_eq!(p.sysroot, d.path());
        std::fs::create_dir_all(d.path().join("run")).unwrap();
        std::fs::write(d.path().join("run/ostree-booted"), b"").unwrap();
        let p = HostPaths::resolve(None, Some(d.path().into()), Some(d.path().join("run")));
        assert_eq!(p.sysroot, d.path().join("sysroot"));
    }
}
