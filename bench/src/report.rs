//! Result rows and the table `rbee-bench` prints.

use std::fmt;

/// Unit of a measured value, which also determines how it is printed.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    Millis,
    PerSecond,
    Bytes,
}

/// A measured value.
#[derive(Debug, Clone, Copy)]
pub struct Measure {
    pub value: f64,
    pub unit: Unit,
}

impl Measure {
    pub fn millis(duration: std::time::Duration) -> Self {
        Self {
            value: duration.as_secs_f64() * 1000.0,
            unit: Unit::Millis,
        }
    }

    pub fn per_second(value: f64) -> Self {
        Self {
            value,
            unit: Unit::PerSecond,
        }
    }

    pub fn bytes(value: u64) -> Self {
        Self {
            value: value as f64,
            unit: Unit::Bytes,
        }
    }
}

impl fmt::Display for Measure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.unit {
            Unit::Millis => write!(f, "{:.2} ms", self.value),
            Unit::PerSecond => write!(f, "{:.0}/s", self.value),
            Unit::Bytes => write!(f, "{:.1} MiB", self.value / (1024.0 * 1024.0)),
        }
    }
}

/// Bound that the ratio rbee / baseline must satisfy.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    AtMost(f64),
    AtLeast(f64),
    /// Reported for information; no bound is claimed.
    None,
}

impl Target {
    fn met_by(self, ratio: f64) -> Option<bool> {
        match self {
            Self::AtMost(bound) => Some(ratio <= bound),
            Self::AtLeast(bound) => Some(ratio >= bound),
            Self::None => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AtMost(bound) => write!(f, "<= {bound}x"),
            Self::AtLeast(bound) => write!(f, ">= {bound}x"),
            Self::None => f.write_str("-"),
        }
    }
}

/// One benchmark result: rbee and its baseline, measured in the same run.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub rbee: Measure,
    pub baseline: Measure,
    pub target: Target,
}

impl Row {
    pub fn ratio(&self) -> f64 {
        self.rbee.value / self.baseline.value
    }

    /// Returns whether the target is met, or `None` for a row without a target.
    pub fn passed(&self) -> Option<bool> {
        self.target.met_by(self.ratio())
    }
}

/// Formats `rows` as a table with a header line.
pub fn table(rows: &[Row]) -> String {
    let header = ["name", "rbee", "baseline", "ratio", "target", "pass/fail"].map(str::to_owned);
    let mut lines: Vec<[String; 6]> = vec![header];
    for row in rows {
        let verdict = match row.passed() {
            Some(true) => "pass",
            Some(false) => "FAIL",
            None => "info",
        };
        lines.push([
            row.name.clone(),
            row.rbee.to_string(),
            row.baseline.to_string(),
            format!("{:.3}x", row.ratio()),
            row.target.to_string(),
            verdict.to_owned(),
        ]);
    }
    let mut widths = [0; 6];
    for line in &lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join(" | ").trim_end());
        out.push('\n');
    }
    out
}
