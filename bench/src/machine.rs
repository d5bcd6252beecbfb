//! What the figures were measured on, as the commands an operator would type report it.

use std::process::Command;

pub struct Machine {
    pub nproc: String,
    pub cpu_model: String,
    pub free_h: String,
    pub kernel: String,
}

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        // Only the end: `free -h` aligns its header row with leading spaces.
        .map(|o| String::from_utf8_lossy(&o.stdout).trim_end().to_owned())
        .unwrap_or_else(|e| format!("({program} failed: {e})"))
}

pub fn describe() -> Machine {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    Machine {
        // `--all`: the harness itself is pinned to one CPU, which plain `nproc` would report.
        nproc: output("nproc", &["--all"]),
        cpu_model,
        free_h: output("free", &["-h"]),
        kernel: output("uname", &["-sr"]),
    }
}

/// `/proc/loadavg`'s three averages: other work on the machine moves every figure, and this
/// says how much there was.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "unknown".to_owned())
}
