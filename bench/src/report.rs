//! The results table, in markdown.

use std::fmt::Write as _;
use std::time::Duration;

use crate::load::Outcome;

/// One line of the table. Rows without a target (`met: None`) are shown for context.
pub struct Row {
    pub what: String,
    pub figure: String,
    pub target: String,
    pub anchor: String,
    pub ratio: String,
    pub met: Option<bool>,
}

pub fn render(rows: &[Row]) -> String {
    let mut out = String::from(
        "| what | figure | target | anchor, same run | ratio | met? |\n|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let met = match row.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "-",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            row.what, row.figure, row.target, row.anchor, row.ratio, met
        );
    }
    out
}

pub fn ms(duration: Duration) -> String {
    let millis = duration.as_secs_f64() * 1000.0;
    if millis < 10.0 {
        format!("{millis:.2} ms")
    } else {
        format!("{millis:.1} ms")
    }
}

/// Thousands separated, for request rates and counts.
pub fn count(value: f64) -> String {
    let whole = value.round() as u64;
    let digits = whole.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `12,345 rps, p50 1.20 ms, p99 3.40 ms (n=61,725)`: the median round's figures.
pub fn load(outcome: &Outcome) -> String {
    format!(
        "{} rps, p50 {}, p99 {} (n={})",
        count(outcome.rps),
        ms(outcome.p50),
        ms(outcome.p99),
        count(outcome.ok as f64)
    )
}
