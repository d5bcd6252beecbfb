//! Child processes pinned to one CPU with `taskset`: the gateway, the simulator and the
//! anchors. Their stdout (JSON log lines) is copied to a log file and scanned for the line
//! that says they are listening. Killed when dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

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
    lines: mpsc::UnboundedReceiver<String>,
    pub spawned_at: Instant,
    pub log: PathBuf,
}

impl Process {
    pub fn start(spec: &Spec<'_>) -> Result<Process, String> {
        let log = spec.log_dir.join(format!("{}.log", spec.name));
        let mut command = Command::new("taskset");
        command
            .arg("-c")
            .arg(spec.cpu.to_string())
            .arg(spec.program)
            .args(spec.args)
            .env_remove("RUST_LOG")
            .env("GATEWAY__LOG__FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in spec.env {
            command.env(key, value);
        }
        let spawned_at = Instant::now();
        let mut child = command
            .spawn()
            .map_err(|e| format!("start {} (taskset): {e}", spec.name))?;
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let log_path = log.clone();
        tokio::spawn(async move {
            let Ok(mut file) = tokio::fs::File::create(&log_path).await else {
                return;
            };
            let mut out = BufReader::new(stdout).lines();
            let mut err = BufReader::new(stderr).lines();
            let (mut out_open, mut err_open) = (true, true);
            while out_open || err_open {
                let line = tokio::select! {
                    line = out.next_line(), if out_open => match line {
                        Ok(Some(line)) => line,
                        _ => { out_open = false; continue; }
                    },
                    line = err.next_line(), if err_open => match line {
                        Ok(Some(line)) => line,
                        _ => { err_open = false; continue; }
                    },
                };
                let _ = file.write_all(line.as_bytes()).await;
                let _ = file.write_all(b"\n").await;
                let _ = tx.send(line);
            }
            let _ = file.flush().await;
        });
        Ok(Process {
            name: spec.name.to_owned(),
            child,
            lines,
            spawned_at,
            log,
        })
    }

    /// The first JSON line whose `message` contains `needle`, and when it was read.
    pub async fn wait_for(
        &mut self,
        needle: &str,
        limit: Duration,
    ) -> Result<(Value, Instant), String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .map_err(|_| {
                    format!(
                        "{} did not log {needle:?} within {limit:?}; see {}",
                        self.name,
                        self.log.display()
                    )
                })?
                .ok_or_else(|| {
                    format!(
                        "{} exited before logging {needle:?}; see {}",
                        self.name,
                        self.log.display()
                    )
                })?;
            let seen = Instant::now();
            if let Ok(json) = serde_json::from_str::<Value>(&line) {
                let message = json["message"]
                    .as_str()
                    .or_else(|| json["fields"]["message"].as_str());
                if message.is_some_and(|m| m.contains(needle)) {
                    return Ok((json, seen));
                }
            }
        }
    }

    /// Waits for the listening line and returns the address it names.
    pub async fn wait_listening(
        &mut self,
        needle: &str,
        limit: Duration,
    ) -> Result<String, String> {
        let (line, _) = self.wait_for(needle, limit).await?;
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
