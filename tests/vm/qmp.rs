//! Minimal QMP (QEMU Machine Protocol) client: JSON lines over a unix socket.
//! Used to save and restore the booted guest (migrate to/from a file).

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connect (QEMU creates the socket shortly after start), read the
    /// greeting and negotiate capabilities.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, String> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("connecting to QMP {}: {e}", path.display()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(format!("unexpected QMP greeting {greeting}"));
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn read_message(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| format!("reading QMP: {e}"))?;
        if n == 0 {
            return Err("QMP connection closed".into());
        }
        serde_json::from_str(&line).map_err(|e| format!("bad QMP message {line:?}: {e}"))
    }

    /// Run a command and return its "return" value (events are skipped).
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        let msg = json!({ "execute": command, "arguments": arguments });
        writeln!(self.writer, "{msg}").map_err(|e| format!("writing QMP: {e}"))?;
        loop {
            let m = self.read_message()?;
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = m.get("error") {
                return Err(format!("QMP {command}: {e}"));
            }
            // an asynchronous event: ignore
        }
    }

    /// Poll `query-status` until the run state is one of `states`.
    pub fn wait_status(&mut self, states: &[&str], timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.execute("query-status", json!({}))?;
            let status = st["status"].as_str().unwrap_or("").to_string();
            if states.contains(&status.as_str()) {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(format!("QEMU run state stuck at {status:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Poll `query-migrate` until the migration completed.
    pub fn wait_migration(&mut self, timeout: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.execute("query-migrate", json!({}))?;
            match st["status"].as_str() {
                Some("completed") => return Ok(st),
                Some("failed") | Some("cancelled") => {
                    return Err(format!("migration failed: {st}"))
                }
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(format!("migration did not complete: {st}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
