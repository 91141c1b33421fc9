//! Host side of the guest test agent (vm/guest/test-agent) on a virtio-serial
//! port, exposed by QEMU as a unix socket. One line per message:
//!   guest -> host  `AGENT-READY boot_id=<id> uptime=<seconds>`   at agent start
//!   host  -> guest `RUN <nonce> <base64 script>`
//!   guest -> host  `RESULT <nonce> <rc> <base64 stdout> <base64 stderr>`
//! The connection lives as long as the QEMU process, so it survives a kexec:
//! a new boot shows up as an AGENT-READY line with a new boot id.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::b64;

/// Result of a script run in the guest.
#[derive(Debug, Clone)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    /// Exit status of `bash script`.
    pub status: i32,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

#[derive(Debug, Clone)]
pub struct Ready {
    pub boot_id: String,
    /// Guest uptime when the agent started (wrong after kexec: the TSC keeps counting).
    pub uptime: f64,
    /// Host time the line arrived.
    pub at: Instant,
}

#[derive(Default)]
struct State {
    readies: Vec<Ready>,
    results: HashMap<String, Output>,
    closed: bool,
}

type Shared = Arc<(Mutex<State>, Condvar)>;

pub struct Agent {
    stream: UnixStream,
    shared: Shared,
    reader: Option<JoinHandle<()>>,
}

#[derive(Debug)]
pub enum AgentError {
    Timeout,
    /// The socket closed: QEMU exited.
    Closed,
    /// A new AGENT-READY arrived while a command was running: the guest
    /// rebooted (or the agent restarted) and the command's result is lost.
    Restarted(Ready),
    Io(std::io::Error),
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentError::Timeout => write!(f, "timed out waiting for the guest agent"),
            AgentError::Closed => write!(f, "agent connection closed (QEMU exited?)"),
            AgentError::Restarted(r) => {
                write!(
                    f,
                    "agent restarted (boot_id={}) while a command was running",
                    r.boot_id
                )
            }
            AgentError::Io(e) => write!(f, "agent socket: {e}"),
        }
    }
}

static NONCE: AtomicU64 = AtomicU64::new(0);

impl Agent {
    pub fn new(stream: UnixStream) -> std::io::Result<Agent> {
        let shared: Shared = Arc::default();
        let reader_stream = stream.try_clone()?;
        let reader_shared = shared.clone();
        let reader = std::thread::Builder::new()
            .name("vm-agent-reader".into())
            .spawn(move || read_loop(reader_stream, reader_shared))?;
        Ok(Agent {
            stream,
            shared,
            reader: Some(reader),
        })
    }

    /// Number of AGENT-READY lines seen so far.
    pub fn ready_count(&self) -> usize {
        self.shared.0.lock().unwrap().readies.len()
    }

    /// Wait for the first AGENT-READY line after index `from` whose boot id is
    /// not `not_boot_id`.
    pub fn wait_ready(
        &self,
        from: usize,
        not_boot_id: Option<&str>,
        timeout: Duration,
    ) -> Result<Ready, AgentError> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.shared;
        let mut st = lock.lock().unwrap();
        loop {
            if let Some(r) = st
                .readies
                .iter()
                .skip(from)
                .find(|r| Some(r.boot_id.as_str()) != not_boot_id)
            {
                return Ok(r.clone());
            }
            if st.closed {
                return Err(AgentError::Closed);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(AgentError::Timeout);
            }
            st = cv.wait_timeout(st, left).unwrap().0;
        }
    }

    pub fn run(&self, script: &str, timeout: Duration) -> Result<Output, AgentError> {
        let nonce = format!(
            "{}-{}",
            std::process::id(),
            NONCE.fetch_add(1, Ordering::Relaxed)
        );
        let (lock, cv) = &*self.shared;
        let readies_before = lock.lock().unwrap().readies.len();
        let line = format!("RUN {nonce} {}\n", b64::encode(script.as_bytes()));
        (&self.stream)
            .write_all(line.as_bytes())
            .map_err(AgentError::Io)?;
        let deadline = Instant::now() + timeout;
        let mut st = lock.lock().unwrap();
        loop {
            if let Some(out) = st.results.remove(&nonce) {
                return Ok(out);
            }
            if st.readies.len() > readies_before {
                return Err(AgentError::Restarted(st.readies[readies_before].clone()));
            }
            if st.closed {
                return Err(AgentError::Closed);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(AgentError::Timeout);
            }
            st = cv.wait_timeout(st, left).unwrap().0;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }
}

fn read_loop(stream: UnixStream, shared: Shared) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        let (lock, cv) = &*shared;
        if let Some(rest) = text.strip_prefix("AGENT-READY ") {
            let mut boot_id = String::new();
            let mut uptime = 0.0;
            for kv in rest.split(' ') {
                if let Some(v) = kv.strip_prefix("boot_id=") {
                    boot_id = v.to_string();
                } else if let Some(v) = kv.strip_prefix("uptime=") {
                    uptime = v.parse().unwrap_or(0.0);
                }
            }
            lock.lock().unwrap().readies.push(Ready {
                boot_id,
                uptime,
                at: Instant::now(),
            });
            cv.notify_all();
        } else if let Some(rest) = text.strip_prefix("RESULT ") {
            let f: Vec<&str> = rest.split(' ').collect();
            let parsed = (f.len() == 4)
                .then(|| {
                    Some((
                        f[1].parse::<i32>().ok()?,
                        b64::decode(f[2]).ok()?,
                        b64::decode(f[3]).ok()?,
                    ))
                })
                .flatten();
            match parsed {
                Some((status, out, err)) => {
                    let output = Output {
                        stdout: String::from_utf8_lossy(&out).into_owned(),
                        stderr: String::from_utf8_lossy(&err).into_owned(),
                        status,
                    };
                    lock.lock()
                        .unwrap()
                        .results
                        .insert(f[0].to_string(), output);
                    cv.notify_all();
                }
                None => eprintln!("[vm agent] malformed RESULT line ({} bytes)", text.len()),
            }
        } else if !text.is_empty() {
            let shown: String = text.chars().take(200).collect();
            eprintln!("[vm agent] unexpected line: {shown}");
        }
    }
    let (lock, cv) = &*shared;
    lock.lock().unwrap().closed = true;
    cv.notify_all();
}
