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
    let needles: Vec<(String, String)> = canaries
        .iter()
        .flat_map(|(label, secret)| {
            forms_of(secret)
                .into_iter()
                .map(move |form| (label.clone(), form))
        })
        .collect();
    let matcher = match aho_corasick::AhoCorasick::new(needles.iter().map(|(_, form)| form)) {
        Ok(matcher) => matcher,
        Err(e) => {
            row.failure = Some(format!("cannot build the canary matcher: {e}"));
            return row;
        }
    };
    // The sweep must be able to see what it looks for: a planted form of each secret is found.
    for (label, secret) in &canaries {
        let planted = format!("log line {{\"token\":\"{}\"}}", forms_of(secret)[2]);
        if matcher.find_iter(&planted).next().is_none() {
            row.failure = Some(format!("the sweep does not see a planted {label}"));
            return row;
        }
    }
    let mut files = Vec::new();
    files_under(&suite.run_dir, &mut files);
    let mut bytes_swept = 0u64;
    let mut found = Vec::new();
    for file in &files {
        let Ok(content) = std::fs::read(file) else {
            continue;
        };
        bytes_swept += content.len() as u64;
        // Overlapping, so that a form inside another (the key inside `Bearer <key>`) counts too.
        for hit in matcher.find_overlapping_iter(&content) {
            row.bad += 1;
            let (label, _) = &needles[hit.pattern().as_usize()];
            found.push(format!("{label} in {}", file.display()));
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
        found.sort();
        found.dedup();
        row.failure = Some(found.join("; "));
    }
    row
}
