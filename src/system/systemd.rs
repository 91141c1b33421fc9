//! Talk to systemd (PID 1) over D-Bus: the [`Systemd`] trait (the narrow seam the executor
//! and the fact gathering use) and [`SystemdDbus`], its real client. Decides nothing: which
//! units to touch is [`crate::services::decide`], in which order and batches is
//! [`crate::exec::unit_jobs`].
//!
//! [`SystemdDbus`] is the real client (blocking zbus on the system bus, never `systemctl`
//! text). It subscribes to `JobRemoved` before issuing any job, so no completion can be missed,
//! and matches completions by job object path. `Reload()` returns only when the reload is done
//! (systemd replies from `bus_send_pending_reload_message` after the reload finished), followed
//! by a ping. `Reexecute()` never replies: the client waits for `org.freedesktop.systemd1` to
//! change owner on the bus, then pings the new manager.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

const SYSTEMD_NAME: &str = "org.freedesktop.systemd1";
const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const UNIT_IFACE: &str = "org.freedesktop.systemd1.Unit";
const SERVICE_IFACE: &str = "org.freedesktop.systemd1.Service";

/// How long to wait for one job by default: systemd's default start and stop timeouts (90 s
/// each) for a restart, plus slack.
pub(crate) const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(300);
/// How long `daemon-reload`/`daemon-reexec` may take.
pub(crate) const DEFAULT_RELOAD_TIMEOUT: Duration = Duration::from_secs(180);

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1",
    gen_async = false
)]
trait Manager {
    fn subscribe(&self) -> zbus::Result<()>;
    fn reload(&self) -> zbus::Result<()>;
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn reload_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn list_units(&self) -> zbus::Result<Vec<UnitListEntry>>;
    fn list_units_by_names(&self, names: &[&str]) -> zbus::Result<Vec<UnitListEntry>>;
    #[zbus(signal)]
    fn job_removed(&self, id: u32, job: OwnedObjectPath, unit: String, result: String);
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
}

/// One row of `ListUnits`/`ListUnitsByNames`: name, description, load state, active state,
/// sub state, following, object path, job id, job type, job path.
type UnitListEntry = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

/// A unit job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum JobOp {
    Start,
    Stop,
    Restart,
    Reload,
}

/// How a job (or an action) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobResult {
    // systemd's JobRemoved results (org.freedesktop.systemd1(5)).
    Done,
    Skipped,
    Canceled,
    Timeout,
    Failed,
    Dependency,
    Invalid,
    Assert,
    Unsupported,
    Collected,
    Once,
    Frozen,
    Concurrency,
    /// A result string this version does not know.
    Unknown,
    // Ours.
    /// systemd did not report the job's end within the wait timeout.
    WaitExpired,
    /// The D-Bus call issuing the job (or the reload/re-exec) failed.
    CallFailed,
    /// Recorded but not executed (deferred units, stale processes no unit owns).
    NotExecuted,
}

impl JobResult {
    /// Map systemd's `JobRemoved` result string.
    pub(crate) fn from_systemd(s: &str) -> JobResult {
        match s {
            "done" => JobResult::Done,
            "skipped" => JobResult::Skipped,
            "canceled" => JobResult::Canceled,
            "timeout" => JobResult::Timeout,
            "failed" => JobResult::Failed,
            "dependency" => JobResult::Dependency,
            "invalid" => JobResult::Invalid,
            "assert" => JobResult::Assert,
            "unsupported" => JobResult::Unsupported,
            "collected" => JobResult::Collected,
            "once" => JobResult::Once,
            "frozen" => JobResult::Frozen,
            "concurrency" => JobResult::Concurrency,
            _ => JobResult::Unknown,
        }
    }

    /// The job achieved its goal (`skipped`: nothing to do in the unit's current state).
    pub(crate) fn is_success(self) -> bool {
        matches!(self, JobResult::Done | JobResult::Skipped)
    }
}

/// A job systemd accepted and that has not been awaited yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingJob {
    pub(crate) op: JobOp,
    pub(crate) unit: String,
    /// The job's object path.
    pub(crate) job: String,
    pub(crate) issued: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JobOutcome {
    pub(crate) op: JobOp,
    pub(crate) unit: String,
    pub(crate) job: String,
    pub(crate) result: JobResult,
    /// From issuing the job to systemd reporting its end (or the wait giving up).
    pub(crate) duration: Duration,
}

/// The narrow interface to the service manager.
pub(crate) trait Systemd {
    /// `daemon-reload`; returns once systemd finished reloading.
    fn daemon_reload(&self) -> Result<()>;
    /// `daemon-reexec`; returns once the re-executed manager answers again.
    fn daemon_reexec(&self) -> Result<()>;
    /// Issue a job with mode `replace` and return without waiting.
    fn enqueue(&self, op: JobOp, unit: &str) -> Result<PendingJob>;
    /// Wait for every job; the outcomes are in the order of `jobs`.
    fn wait(&self, jobs: Vec<PendingJob>) -> Vec<JobOutcome>;
    /// Name → ActiveState of every loaded unit (one `ListUnits` call).
    fn active_states(&self) -> Result<HashMap<String, String>>;
    /// Facts about the named units (loading them if needed). Whether an active unit wants each
    /// one is looked up in `active` (every loaded unit's state, from [`Self::active_states`]);
    /// without it, systemd is asked for the states of just the units that want these.
    fn unit_facts(
        &self,
        names: &[String],
        active: Option<&HashMap<String, String>>,
    ) -> Result<Vec<UnitFacts>>;
    /// Queue a start job without waiting for it (the kexec handoff: `kexec.target`,
    /// `replace-irreversibly`).
    fn start_unit_no_wait(&self, unit: &str, mode: &str) -> Result<()>;
    /// The manager's `Version` property (e.g. `257.13-1~deb13u1`).
    fn version(&self) -> Result<String>;

    /// Issue one job and wait for it.
    fn run_job(&self, op: JobOp, unit: &str) -> Result<JobOutcome> {
        let job = self.enqueue(op, unit)?;
        self.wait(vec![job])
            .pop()
            .context("the job wait returned no outcome")
    }
    fn start(&self, unit: &str) -> Result<JobOutcome> {
        self.run_job(JobOp::Start, unit)
    }
    fn stop(&self, unit: &str) -> Result<JobOutcome> {
        self.run_job(JobOp::Stop, unit)
    }
    #[cfg(test)]
    fn restart(&self, unit: &str) -> Result<JobOutcome> {
        self.run_job(JobOp::Restart, unit)
    }
}

/// Lowercases the first letter (error texts are built from `{op:?}` = `Stop`).
pub(crate) trait LowercaseFirst {
    fn to_lowercase_first(self) -> String;
}

impl LowercaseFirst for String {
    fn to_lowercase_first(self) -> String {
        let mut c = self.chars();
        match c.next() {
            Some(f) => f.to_lowercase().chain(c).collect(),
            None => self,
        }
    }
}

/// Runtime facts about one loaded unit, as systemd reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitFacts {
    pub(crate) name: String,
    /// `active`, `reloading`, `inactive`, `failed`, `activating`, `deactivating`, …
    pub(crate) active_state: String,
    pub(crate) sub_state: String,
    pub(crate) refuse_manual_start: bool,
    pub(crate) refuse_manual_stop: bool,
    pub(crate) can_reload: bool,
    /// The units that trigger this one (`TriggeredBy=`: sockets, paths, timers).
    pub(crate) triggered_by: Vec<String>,
    /// Some active unit wants/requires/upholds it (e.g. an active target).
    pub(crate) wanted_by_active_target: bool,
    pub(crate) main_pid: Option<u32>,
    /// `ExecMainStartTimestamp`, µs since the epoch.
    pub(crate) exec_main_start_timestamp_us: Option<u64>,
}

impl UnitFacts {
    pub(crate) fn is_active(&self) -> bool {
        matches!(
            self.active_state.as_str(),
            "active" | "activating" | "reloading" | "refreshing"
        )
    }
}

/// A `JobRemoved` signal, as received.
#[derive(Debug, Clone)]
struct JobRemovedEvent {
    job: String,
    unit: String,
    result: String,
    at: Instant,
}

/// The real client: blocking zbus on the system bus.
pub(crate) struct SystemdDbus {
    conn: zbus::blocking::Connection,
    manager: ManagerProxy<'static>,
    events: Mutex<Receiver<JobRemovedEvent>>,
    /// Completions received but not claimed yet, by job path.
    seen: Mutex<HashMap<String, JobRemovedEvent>>,
    job_timeout: Duration,
    reload_timeout: Duration,
}

impl std::fmt::Debug for SystemdDbus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemdDbus")
            .field("job_timeout", &self.job_timeout)
            .field("reload_timeout", &self.reload_timeout)
            .finish_non_exhaustive()
    }
}

/// The system bus socket (`/var/run` is a symlink to `/run`).
pub(crate) const SYSTEM_BUS_ADDRESS: &str = "unix:path=/run/dbus/system_bus_socket";

impl SystemdDbus {
    /// Connect to the system bus and subscribe to job completions. The socket is the fixed
    /// system path: `DBUS_SYSTEM_BUS_ADDRESS` is not read, so whoever sets a root process's
    /// environment cannot hand fastswitch another "systemd".
    pub(crate) fn connect() -> Result<SystemdDbus> {
        let conn = zbus::blocking::connection::Builder::address(SYSTEM_BUS_ADDRESS)
            .context("connecting to the D-Bus system bus")?
            // Reload() replies only when the reload is finished, which can take long.
            .method_timeout(DEFAULT_RELOAD_TIMEOUT)
            .build()
            .context("connecting to the D-Bus system bus")?;
        SystemdDbus::with_connection(conn)
    }

    /// Use an existing connection (e.g. a peer-to-peer one to `/run/systemd/private`).
    pub(crate) fn with_connection(conn: zbus::blocking::Connection) -> Result<SystemdDbus> {
        let manager = ManagerProxy::builder(&conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .context("creating the systemd manager proxy")?;
        // Match rule first, then Subscribe, then (later) jobs: no completion can be missed.
        let signals = manager
            .receive_job_removed()
            .context("subscribing to systemd's JobRemoved signal")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("systemd-jobs".into())
            .spawn(move || {
                for sig in signals {
                    let Ok(args) = sig.args() else { continue };
                    let ev = JobRemovedEvent {
                        job: args.job.to_string(),
                        unit: args.unit.clone(),
                        result: args.result.clone(),
                        at: Instant::now(),
                    };
                    if tx.send(ev).is_err() {
                        break;
                    }
                }
            })
            .context("spawning the JobRemoved listener")?;
        subscribe(&manager)?;
        Ok(SystemdDbus {
            conn,
            manager,
            events: Mutex::new(rx),
            seen: Mutex::new(HashMap::new()),
            job_timeout: DEFAULT_JOB_TIMEOUT,
            reload_timeout: DEFAULT_RELOAD_TIMEOUT,
        })
    }

    fn ping(&self) -> Result<()> {
        self.conn
            .call_method(
                Some(SYSTEMD_NAME),
                SYSTEMD_PATH,
                Some("org.freedesktop.DBus.Peer"),
                "Ping",
                &(),
            )
            .context("pinging systemd")?;
        Ok(())
    }

    /// Active state of every loaded unit (one `ListUnits` call).
    fn list_active_states(&self) -> Result<HashMap<String, String>> {
        Ok(self
            .manager
            .list_units()
            .context("listing systemd units")?
            .into_iter()
            .map(|u| (u.0, u.3))
            .collect())
    }

    /// One property (`Get`); `None` when this systemd does not have it (an older version
    /// without `UpheldBy`, say), as `GetAll` would have left it out.
    fn get(&self, path: &str, iface: &str, key: &str) -> Result<Option<OwnedValue>> {
        let reply = self.conn.call_method(
            Some(SYSTEMD_NAME),
            path,
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &(iface, key),
        );
        let msg = match reply {
            Ok(m) => m,
            Err(zbus::Error::MethodError(name, _, _))
                if matches!(
                    name.as_str(),
                    "org.freedesktop.DBus.Error.UnknownProperty"
                        | "org.freedesktop.DBus.Error.InvalidArgs"
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e).with_context(|| format!("reading {iface}.{key} of {path}")),
        };
        let v: OwnedValue = msg
            .body()
            .deserialize::<OwnedValue>()
            .with_context(|| format!("decoding {iface}.{key} of {path}"))?;
        // `Get` answers a variant: the property, unless it arrives still wrapped.
        Ok(Some(match &*v {
            zbus::zvariant::Value::Value(inner) => inner
                .try_to_owned()
                .with_context(|| format!("decoding {iface}.{key} of {path}"))?,
            _ => v,
        }))
    }

    fn get_all(&self, path: &str, iface: &str) -> Result<HashMap<String, OwnedValue>> {
        let msg = self
            .conn
            .call_method(
                Some(SYSTEMD_NAME),
                path,
                Some("org.freedesktop.DBus.Properties"),
                "GetAll",
                &(iface,),
            )
            .with_context(|| format!("reading {iface} properties of {path}"))?;
        msg.body()
            .deserialize::<HashMap<String, OwnedValue>>()
            .with_context(|| format!("decoding {iface} properties of {path}"))
    }

    /// The `Unit` properties of each unit (`GetAll`) and, for a service, the two `Service`
    /// properties the decision reads ([`SERVICE_PROPERTIES`], each with `Get`), all requests
    /// in flight at once: one thread per call on the shared connection, so the round trips
    /// overlap instead of adding up. Not the `Service` interface's `GetAll`: that is some 250
    /// properties, among them the resource counters systemd reads from the unit's cgroup for
    /// the answer. The unit's object path is systemd's own ([`unit_object_path`]); systemd
    /// loads a unit whose path is asked for, as `LoadUnit` does.
    fn unit_properties(&self, names: &[String]) -> Result<Vec<UnitProperties>> {
        type Props = HashMap<String, OwnedValue>;
        type Got<'s> = std::thread::ScopedJoinHandle<'s, Result<Option<OwnedValue>>>;
        fn join<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
            h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        }
        std::thread::scope(|sc| {
            let calls: Vec<_> = names
                .iter()
                .map(|name| {
                    let path = unit_object_path(name);
                    let unit = {
                        let path = path.clone();
                        sc.spawn(move || {
                            self.get_all(&path, UNIT_IFACE)
                                .with_context(|| format!("reading the state of {name}"))
                        })
                    };
                    let service = name.ends_with(".service").then(|| {
                        SERVICE_PROPERTIES
                            .iter()
                            .map(|&key| {
                                let path = path.clone();
                                let h: Got<'_> = sc.spawn(move || {
                                    self.get(&path, SERVICE_IFACE, key)
                                        .with_context(|| format!("reading the state of {name}"))
                                });
                                (key, h)
                            })
                            .collect::<Vec<_>>()
                    });
                    (name, unit, service)
                })
                .collect();
            let props = |hs: Vec<(&'static str, Got<'_>)>| -> Result<Props> {
                let mut props = Props::new();
                for (key, h) in hs {
                    if let Some(v) = join(h)? {
                        props.insert(key.to_owned(), v);
                    }
                }
                Ok(props)
            };
            calls
                .into_iter()
                .map(|(name, unit, service)| {
                    Ok(UnitProperties {
                        name: name.clone(),
                        unit: join(unit)?,
                        service: service.map(props).transpose()?,
                    })
                })
                .collect()
        })
    }

    /// ActiveState of the named units (one `ListUnitsByNames` call; systemd loads the ones not
    /// loaded yet, which are then inactive).
    fn active_states_of(&self, names: &[String]) -> Result<HashMap<String, String>> {
        if names.is_empty() {
            return Ok(HashMap::new());
        }
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        Ok(self
            .manager
            .list_units_by_names(&names)
            .with_context(|| format!("reading the states of {}", names.join(" ")))?
            .into_iter()
            .map(|u| (u.0, u.3))
            .collect())
    }
}

/// What systemd answered about one unit, before it becomes [`UnitFacts`].
struct UnitProperties {
    name: String,
    unit: HashMap<String, OwnedValue>,
    service: Option<HashMap<String, OwnedValue>>,
}

/// systemd's object path of a unit (`unit_dbus_path()`): the name with every byte that is not
/// an ASCII letter or digit written as `_` and two lowercase hex digits (`bus_label_escape()`).
pub(crate) fn unit_object_path(name: &str) -> String {
    let mut p = String::with_capacity(SYSTEMD_PATH.len() + 6 + 3 * name.len());
    p.push_str(SYSTEMD_PATH);
    p.push_str("/unit/");
    if name.is_empty() {
        p.push('_');
    }
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() {
            p.push(char::from(b));
        } else {
            p.push_str(&format!("_{b:02x}"));
        }
    }
    p
}

/// The units that want `unit` (`WantedBy=`, `RequiredBy=`, `UpheldBy=`, `BoundBy=`): an active
/// one among them makes [`UnitFacts::wanted_by_active_target`].
const WANTED_BY: [&str; 4] = ["WantedBy", "RequiredBy", "UpheldBy", "BoundBy"];

/// The `Service` properties [`facts_from_properties`] reads.
const SERVICE_PROPERTIES: [&str; 2] = ["MainPID", "ExecMainStartTimestamp"];

fn property_strings(m: &HashMap<String, OwnedValue>, k: &str) -> Vec<String> {
    m.get(k)
        .and_then(|v| v.try_clone().ok())
        .and_then(|v| Vec::<String>::try_from(v).ok())
        .unwrap_or_default()
}

/// Every unit that wants one of `props`, sorted, once.
fn wanting_units(props: &[UnitProperties]) -> Vec<String> {
    props
        .iter()
        .flat_map(|p| WANTED_BY.iter().flat_map(|k| property_strings(&p.unit, k)))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn subscribe(manager: &ManagerProxy<'_>) -> Result<()> {
    match manager.subscribe() {
        Ok(()) => Ok(()),
        // After a re-exec the manager may remember us.
        Err(zbus::Error::MethodError(name, _, _))
            if name.as_str() == "org.freedesktop.systemd1.AlreadySubscribed" =>
        {
            Ok(())
        }
        Err(e) => Err(e).context("subscribing to systemd signals"),
    }
}

impl Systemd for SystemdDbus {
    fn daemon_reload(&self) -> Result<()> {
        // The reply is sent only after the reload finished.
        self.manager.reload().context("systemd daemon-reload")?;
        self.ping()
            .context("systemd did not answer after daemon-reload")
    }

    fn daemon_reexec(&self) -> Result<()> {
        let dbus = zbus::blocking::fdo::DBusProxy::new(&self.conn)
            .context("creating the D-Bus daemon proxy")?;
        let owners = dbus
            .receive_name_owner_changed_with_args(&[(0, SYSTEMD_NAME)])
            .context("watching the systemd bus name")?;
        let old = dbus
            .get_name_owner(SYSTEMD_NAME.try_into().context("systemd bus name")?)
            .context("looking up systemd's bus connection")?
            .to_string();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("systemd-reexec".into())
            .spawn(move || {
                for sig in owners {
                    let Ok(args) = sig.args() else { continue };
                    if let Some(new) = args.new_owner().as_ref() {
                        if new.as_str() != old {
                            let _ = tx.send(new.to_string());
                            break;
                        }
                    }
                }
            })
            .context("spawning the re-exec watcher")?;
        // Reexecute() never replies: systemd drops its bus connection and comes back.
        self.manager
            .inner()
            .call_noreply("Reexecute", &())
            .context("systemd daemon-reexec")?;
        match rx.recv_timeout(self.reload_timeout) {
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => bail!(
                "systemd did not come back on the bus within {:?} after daemon-reexec",
                self.reload_timeout
            ),
            Err(RecvTimeoutError::Disconnected) => {
                bail!("lost the bus while waiting for systemd to re-execute")
            }
        }
        subscribe(&self.manager)?;
        self.ping()
            .context("systemd did not answer after daemon-reexec")
    }

    fn enqueue(&self, op: JobOp, unit: &str) -> Result<PendingJob> {
        let issued = Instant::now();
        let mode = "replace";
        let job = match op {
            JobOp::Start => self.manager.start_unit(unit, mode),
            JobOp::Stop => self.manager.stop_unit(unit, mode),
            JobOp::Restart => self.manager.restart_unit(unit, mode),
            JobOp::Reload => self.manager.reload_unit(unit, mode),
        }
        .with_context(|| format!("queueing a {op:?} job for {unit}").to_lowercase_first())?;
        Ok(PendingJob {
            op,
            unit: unit.to_string(),
            job: job.to_string(),
            issued,
        })
    }

    fn wait(&self, jobs: Vec<PendingJob>) -> Vec<JobOutcome> {
        let deadline = Instant::now() + self.job_timeout;
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let mut done: HashMap<String, JobRemovedEvent> = HashMap::new();
        let mut open: Vec<&str> = jobs.iter().map(|j| j.job.as_str()).collect();
        loop {
            open.retain(|j| match seen.remove(*j) {
                Some(ev) => {
                    done.insert(j.to_string(), ev);
                    false
                }
                None => true,
            });
            if open.is_empty() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match events.recv_timeout(left) {
                Ok(ev) => {
                    seen.insert(ev.job.clone(), ev);
                }
                Err(_) => break,
            }
        }
        jobs.into_iter()
            .map(|j| match done.remove(&j.job) {
                Some(ev) => JobOutcome {
                    result: JobResult::from_systemd(&ev.result),
                    duration: ev.at.saturating_duration_since(j.issued),
                    unit: if ev.unit.is_empty() { j.unit } else { ev.unit },
                    op: j.op,
                    job: j.job,
                },
                None => JobOutcome {
                    result: JobResult::WaitExpired,
                    duration: j.issued.elapsed(),
                    op: j.op,
                    unit: j.unit,
                    job: j.job,
                },
            })
            .collect()
    }

    fn active_states(&self) -> Result<HashMap<String, String>> {
        self.list_active_states()
    }

    fn unit_facts(
        &self,
        names: &[String],
        active: Option<&HashMap<String, String>>,
    ) -> Result<Vec<UnitFacts>> {
        let props = self.unit_properties(names)?;
        let asked;
        let active = match active {
            Some(a) => a,
            None => {
                asked = self.active_states_of(&wanting_units(&props))?;
                &asked
            }
        };
        Ok(props
            .iter()
            .map(|p| facts_from_properties(&p.name, &p.unit, p.service.as_ref(), active))
            .collect())
    }

    fn start_unit_no_wait(&self, unit: &str, mode: &str) -> Result<()> {
        self.manager
            .start_unit(unit, mode)
            .with_context(|| format!("starting {unit} (mode {mode})"))?;
        Ok(())
    }

    fn version(&self) -> Result<String> {
        self.manager
            .version()
            .context("reading systemd's Version property")
    }
}

/// Build [`UnitFacts`] from the `Unit` (and, for services, `Service`) properties. `active` maps
/// loaded unit names to their ActiveState, to tell whether a unit wanting this one is active.
pub(crate) fn facts_from_properties(
    name: &str,
    unit: &HashMap<String, OwnedValue>,
    service: Option<&HashMap<String, OwnedValue>>,
    active: &HashMap<String, String>,
) -> UnitFacts {
    let string = |m: &HashMap<String, OwnedValue>, k: &str| -> String {
        m.get(k)
            .and_then(|v| <&str>::try_from(v).ok())
            .unwrap_or_default()
            .to_string()
    };
    let boolean = |k: &str| {
        unit.get(k)
            .and_then(|v| bool::try_from(v).ok())
            .unwrap_or(false)
    };
    let strings = |k: &str| property_strings(unit, k);
    let is_active = |u: &String| {
        active.get(u).is_some_and(|s| {
            matches!(
                s.as_str(),
                "active" | "activating" | "reloading" | "refreshing"
            )
        })
    };
    let wanted_by_active = WANTED_BY
        .iter()
        .flat_map(|k| strings(k))
        .any(|u| is_active(&u));
    let main_pid = service
        .and_then(|s| s.get("MainPID"))
        .and_then(|v| u32::try_from(v).ok())
        .filter(|p| *p != 0);
    let started = service
        .and_then(|s| s.get("ExecMainStartTimestamp"))
        .and_then(|v| u64::try_from(v).ok())
        .filter(|t| *t != 0);
    UnitFacts {
        name: name.to_string(),
        active_state: string(unit, "ActiveState"),
        sub_state: string(unit, "SubState"),
        refuse_manual_start: boolean("RefuseManualStart"),
        refuse_manual_stop: boolean("RefuseManualStop"),
        can_reload: boolean("CanReload"),
        triggered_by: strings("TriggeredBy"),
        wanted_by_active_target: wanted_by_active,
        main_pid,
        exec_main_start_timestamp_us: started,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::zvariant::Value;

    #[test]
    fn job_results() {
        assert_eq!(JobResult::from_systemd("done"), JobResult::Done);
        assert_eq!(JobResult::from_systemd("failed"), JobResult::Failed);
        assert_eq!(JobResult::from_systemd("timeout"), JobResult::Timeout);
        assert_eq!(JobResult::from_systemd("dependency"), JobResult::Dependency);
        assert_eq!(JobResult::from_systemd("canceled"), JobResult::Canceled);
        assert_eq!(JobResult::from_systemd("skipped"), JobResult::Skipped);
        assert_eq!(JobResult::from_systemd("weird"), JobResult::Unknown);
        assert!(JobResult::Done.is_success() && JobResult::Skipped.is_success());
        for r in [
            "failed",
            "timeout",
            "dependency",
            "canceled",
            "invalid",
            "weird",
        ] {
            assert!(!JobResult::from_systemd(r).is_success(), "{r}");
        }
        assert_eq!(
            serde_json::to_string(&JobResult::WaitExpired).unwrap(),
            "\"wait_expired\""
        );
    }

    #[test]
    fn convenience_methods_wait_for_their_job() {
        let sd = crate::testing::RecordingSystemd::default();
        let o = sd.restart("a.service").unwrap();
        assert_eq!((o.op, o.result), (JobOp::Restart, JobResult::Done));
        let o = sd.stop("fail-x.service").unwrap();
        assert_eq!(o.result, JobResult::Failed);
        assert_eq!(
            *sd.log.borrow(),
            [
                "enqueue Restart a.service",
                "wait 1",
                "enqueue Stop fail-x.service",
                "wait 1"
            ]
        );
    }

    fn ov<'a>(v: impl Into<Value<'a>>) -> OwnedValue {
        OwnedValue::try_from(v.into()).unwrap()
    }

    #[test]
    fn facts_from_dbus_properties() {
        let unit: HashMap<String, OwnedValue> = [
            ("ActiveState", ov("active")),
            ("SubState", ov("running")),
            ("RefuseManualStop", ov(true)),
            ("RefuseManualStart", ov(false)),
            ("CanReload", ov(true)),
            ("TriggeredBy", ov(vec!["cups.socket", "cups.path"])),
            ("WantedBy", ov(vec!["printer.target", "multi-user.target"])),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let service: HashMap<String, OwnedValue> = [
            ("MainPID", ov(4242u32)),
            ("ExecMainStartTimestamp", ov(1_700_000_000_000_000u64)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let active: HashMap<String, String> = [
            ("multi-user.target", "active"),
            ("printer.target", "inactive"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let f = facts_from_properties("cups.service", &unit, Some(&service), &active);
        assert_eq!(
            f,
            UnitFacts {
                name: "cups.service".into(),
                active_state: "active".into(),
                sub_state: "running".into(),
                refuse_manual_start: false,
                refuse_manual_stop: true,
                can_reload: true,
                triggered_by: vec!["cups.socket".into(), "cups.path".into()],
                wanted_by_active_target: true,
                main_pid: Some(4242),
                exec_main_start_timestamp_us: Some(1_700_000_000_000_000),
            }
        );
        let mut inactive = active.clone();
        inactive.insert("multi-user.target".into(), "inactive".into());
        let f = facts_from_properties("cups.service", &unit, None, &inactive);
        assert!(!f.wanted_by_active_target);
        assert_eq!(f.main_pid, None);
    }

    #[test]
    fn unit_object_paths_are_systemds() {
        // As `busctl tree org.freedesktop.systemd1` lists them.
        for (name, path) in [
            ("demo-hello.service", "demo_2dhello_2eservice"),
            ("user@1000.service", "user_401000_2eservice"),
            ("-.mount", "_2d_2emount"),
            ("init.scope", "init_2escope"),
            (
                "dev-disk-by\\x2duuid.device",
                "dev_2ddisk_2dby_5cx2duuid_2edevice",
            ),
            ("", "_"),
        ] {
            assert_eq!(
                unit_object_path(name),
                format!("/org/freedesktop/systemd1/unit/{path}")
            );
        }
    }

    #[test]
    fn units_wanting_others_once() {
        let props = |wanted: Vec<&str>, required: Vec<&str>| UnitProperties {
            name: "x".into(),
            unit: [("WantedBy", ov(wanted)), ("RequiredBy", ov(required))]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            service: None,
        };
        let all = [
            props(vec!["multi-user.target", "b.target"], vec![]),
            props(vec![], vec!["a.target", "multi-user.target"]),
        ];
        assert_eq!(
            wanting_units(&all),
            ["a.target", "b.target", "multi-user.target"]
        );
    }
}
