//! Child processes pinned to one CPU with `taskset`: the gateway, the simulator and the
//! anchors. Their output (JSON log lines; the gateway logs every request) goes straight to a
//! log file, so that no CPU of the load generator is spent reading it; the file is polled for
//! the line that says they are listening. Killed when dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::process::{Child, Command};

/// How to start one child.
pub struct Spec<'a> {
    /// A short name for the log file and messages.
    pub name: &'a str,
    pub program: &'a Path,
    pub args: &'a [&'a str],
    pub env: &'a [(&'a str, String)],
    /// The CPU it may run on.
    pub cpu: u32,
    /// Where its output is kept.
    pub log_dir: &'a Path,
}

pub struct Process {
    pub name: String,
    child: Child,
    /// Wall-clock time just before the spawn, to compare with the child's own log timestamps.
    pub spawned_at: DateTime<Utc>,
    pub log: PathBuf,
    /// How far the log has been scanned.
    scanned: usize,
}

impl Process {
    pub fn start(spec: &Spec<'_>) -> Result<Process, String> {
        let log = spec.log_dir.join(format!("{}.log", spec.name));
        let out = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new("taskset");
        command
            .arg("-c")
            .arg(spec.cpu.to_string())
            .arg(spec.program)
            .args(spec.args)
            .env_remove("RUST_LOG")
            .env("GATEWAY__LOG__FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        for (key, value) in spec.env {
            command.env(key, value);
        }
        let spawned_at = Utc::now();
        let child = command
            .spawn()
            .map_err(|e| format!("start {} (taskset): {e}", spec.name))?;
        Ok(Process {
            name: spec.name.to_owned(),
            child,
            spawned_at,
            log,
            scanned: 0,
        })
    }

    /// The first JSON line (after those already scanned) whose `message` contains `needle`.
    pub async fn wait_for(&mut self, needle: &str, limit: Duration) -> Result<Value, String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            // Only whole lines: the child may be half-way through writing the last one.
            let complete = text.rfind('\n').map_or(0, |end| end + 1);
            let fresh = text.get(self.scanned..complete).unwrap_or_default();
            for line in fresh.lines() {
                if let Ok(json) = serde_json::from_str::<Value>(line) {
                    let message = json["message"]
                        .as_str()
                        .or_else(|| json["fields"]["message"].as_str());
                    if message.is_some_and(|m| m.contains(needle)) {
                        let at = fresh.find(line).unwrap_or(0) + line.len();
                        self.scanned += at.min(fresh.len());
                        return Ok(json);
                    }
                }
            }
            self.scanned = complete.max(self.scanned);
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited ({status}) before logging {needle:?}; see {}",
                    self.name,
                    self.log.display()
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "{} did not log {needle:?} within {limit:?}; see {}",
                    self.name,
                    self.log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Waits for the listening line and returns the address it names.
    pub async fn wait_listening(
        &mut self,
        needle: &str,
        limit: Duration,
    ) -> Result<String, String> {
        let line = self.wait_for(needle, limit).await?;
        listen_of(&line).ok_or_else(|| format!("{}: no address in {line}", self.name))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Ends it and waits (bounded) for it to be gone.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

fn listen_of(line: &Value) -> Option<String> {
    line["listen"]
        .as_str()
        .or_else(|| line["fields"]["listen"].as_str())
        .map(str::to_owned)
}

/// Peak and current resident memory of a process, in KiB (`VmHWM`, `VmRSS`).
pub fn memory_kib(pid: u32) -> Result<(u64, u64), String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .ok_or_else(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

/// User plus system CPU time a process has used, in seconds (`/proc/PID/stat`).
pub fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| format!("/proc/{pid}/stat: no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(|| format!("/proc/{pid}/stat: field {i} unreadable"))
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(total as f64 / clock_ticks_per_second())
}

/// `getconf CLK_TCK`: 100 on every Linux this runs on, asked rather than assumed.
fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}
