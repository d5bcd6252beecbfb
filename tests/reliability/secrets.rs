//! J1: the canary sweep. Every gateway of the run held the same canary Fluence key and admin
//! token and ran at `RUST_LOG=trace`; every team key minted was remembered. After all other
//! scenarios, every byte they left (gateway and simulator output, SQLite files with their WAL,
//! and every answer a client received) is searched for each secret in every form it could be
//! written in.

use std::path::{Path, PathBuf};

use crate::report::Row;
use crate::world::Suite;

/// Every way a secret could be written down: plain, as a bearer header, base64 and hex.
pub fn forms_of(secret: &str) -> Vec<String> {
    use base64::Engine;
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    vec![
        secret.to_owned(),
        format!("Bearer {secret}"),
        base64::engine::general_purpose::STANDARD.encode(secret),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
        hex.to_uppercase(),
        hex,
    ]
}

fn files_under(dir: &Path, into: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, into);
        } else {
            into.push(path);
        }
    }
}

/// The J1 row: occurrences of any canary form in any file of the run.
pub async fn j1_sweep(suite: &Suite) -> Row {
    let mut row = Row::new("J1 canary sweep", "I7", suite.seed);
    let canaries = suite.canaries();
    let needles: Vec<(String, Vec<u8>)> = canaries
        .iter()
        .flat_map(|(label, secret)| {
            forms_of(secret)
                .into_iter()
                .map(move |form| (label.clone(), form.into_bytes()))
        })
        .collect();
    let mut files = Vec::new();
    files_under(&suite.run_dir, &mut files);
    let mut bytes_swept = 0u64;
    let mut found = Vec::new();
    for file in &files {
        let Ok(content) = std::fs::read(file) else {
            continue;
        };
        bytes_swept += content.len() as u64;
        for (label, needle) in &needles {
            let hits = content
                .windows(needle.len())
                .filter(|window| window == needle)
                .count() as u64;
            if hits > 0 {
                row.bad += hits;
                found.push(format!("{label} in {}", file.display()));
            }
        }
    }
    row.runs = files.len() as u64;
    row.figures = format!(
        "canary occurrences {} across {} files, {:.1} MB ({} secrets x {} forms)",
        row.bad,
        files.len(),
        bytes_swept as f64 / 1e6,
        canaries.len(),
        needles.len() / canaries.len().max(1),
    );
    row.require(
        bytes_swept > 0 && canaries.len() >= 2,
        "nothing was captured to sweep",
    );
    if !found.is_empty() {
        found.dedup();
        row.failure = Some(found.join("; "));
    }
    row
}
