//! The report card of RELIABILITY.md section 4.6: one row per scenario, and the profile that
//! decides how many runs each scenario makes.

use std::fmt::Write as _;

/// How hard the suite pushes: `quick` is the small-N profile that runs with every test run
/// and in CI; `full` runs every scenario at the N its table names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Quick,
    Full,
}

impl Profile {
    /// From `RELIABILITY_PROFILE` (`quick`, the default, or `full`).
    pub fn from_env() -> Result<Profile, String> {
        match std::env::var("RELIABILITY_PROFILE").as_deref() {
            Err(_) | Ok("") | Ok("quick") => Ok(Profile::Quick),
            Ok("full") => Ok(Profile::Full),
            Ok(other) => Err(format!(
                "RELIABILITY_PROFILE={other:?}: expected `quick` or `full`"
            )),
        }
    }

    /// The run count for this profile.
    pub fn pick<T>(self, quick: T, full: T) -> T {
        match self {
            Profile::Quick => quick,
            Profile::Full => full,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Profile::Quick => "quick",
            Profile::Full => "full",
        }
    }
}

/// Which gateway a row was measured on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Build {
    /// The gateway as shipped (the test build, with no failpoint set).
    Shipped,
    /// The same binary with a seeded bug switched on by a failpoint: the row passes only if
    /// the scenario caught the bug.
    Seeded(&'static str),
}

/// One row of the report card.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    pub invariant: &'static str,
    pub runs: u64,
    /// Runs with a bad outcome. On a seeded build, runs in which the bug went unnoticed.
    pub bad: u64,
    /// The figures the scenario's table asks for, as text.
    pub figures: String,
    pub seed: u64,
    pub build: Build,
    /// Why the row failed, beyond its count (a panic, a figure outside its target).
    pub failure: Option<String>,
}

impl Row {
    pub fn new(scenario: impl Into<String>, invariant: &'static str, seed: u64) -> Row {
        Row {
            scenario: scenario.into(),
            invariant,
            runs: 0,
            bad: 0,
            figures: String::new(),
            seed,
            build: Build::Shipped,
            failure: None,
        }
    }

    pub fn passed(&self) -> bool {
        self.bad == 0 && self.failure.is_none() && self.runs > 0
    }

    /// Marks the row failed with `why` unless `ok`.
    pub fn require(&mut self, ok: bool, why: impl Into<String>) {
        if !ok && self.failure.is_none() {
            self.failure = Some(why.into());
        }
    }
}

/// Percentile of already sorted samples (nearest rank); 0 for none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `p50/p99` of durations in seconds, in milliseconds, with the sample count.
pub fn latency_summary(samples: &mut [f64]) -> String {
    samples.sort_by(f64::total_cmp);
    format!(
        "p50 {:.1} ms, p99 {:.1} ms (n = {})",
        percentile(samples, 50.0) * 1000.0,
        percentile(samples, 99.0) * 1000.0,
        samples.len()
    )
}

/// The card as a markdown table, with a title naming the profile and when it ran.
pub fn render(profile: Profile, rows: &[Row], header: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{header}\n");
    let _ = writeln!(
        out,
        "| Scenario | Invariant | Runs | Bad outcomes | Figure(s) | Seed | Build | Result |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for row in rows {
        let build = match &row.build {
            Build::Shipped => "shipped".to_owned(),
            Build::Seeded(bug) => format!("seeded: `{bug}`"),
        };
        let result = match (&row.failure, row.passed()) {
            (_, true) => "pass".to_owned(),
            (Some(why), false) => format!("**FAIL**: {why}"),
            (None, false) => "**FAIL**".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(&row.scenario),
            row.invariant,
            row.runs,
            row.bad,
            cell(&row.figures),
            row.seed,
            build,
            cell(&result)
        );
    }
    let passed = rows.iter().filter(|r| r.passed()).count();
    let _ = writeln!(
        out,
        "\nProfile `{}`: {} rows, {} passed, {} failed.",
        profile.name(),
        rows.len(),
        passed,
        rows.len() - passed
    );
    out
}

/// Table cells hold no pipes or line breaks.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// A small seeded generator (SplitMix64) for generated corpora: the same seed, the same run.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
