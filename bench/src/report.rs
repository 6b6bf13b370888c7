//! Output: JSON files under the results directory, plain-text tables, progress bars.

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where results go by default: `bench/results/` of this crate.
pub fn default_out_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("results")
}

/// Write `value` as pretty JSON to `dir/name.json`; returns the path.
pub fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}.json"));
    let mut text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    text.push('\n');
    std::fs::write(&path, text)?;
    Ok(path)
}

/// A progress bar over a known wall-clock duration, drawn only when stdout is a terminal.
pub fn timed_bar(label: &str, total: Duration) -> ProgressBar {
    if !std::io::stdout().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total.as_millis().max(1) as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:<40} [{bar:30}] {elapsed:>4}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Sleep for `total`, advancing `bar` as time passes.
pub fn sleep_with(bar: &ProgressBar, total: Duration) {
    let start = Instant::now();
    while start.elapsed() < total {
        std::thread::sleep((total - start.elapsed().min(total)).min(Duration::from_millis(50)));
        bar.set_position(start.elapsed().as_millis() as u64);
    }
}

/// A plain-text table with a header row; columns are right-aligned except the first.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Self {
        Table { rows: vec![header.iter().map(|s| s.to_string()).collect()] }
    }

    /// Add a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Render.
    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| self.rows.iter().map(|r| r.get(c).map_or(0, |s| s.chars().count())).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for (i, row) in self.rows.iter().enumerate() {
            let mut line = String::new();
            for (c, width) in widths.iter().enumerate() {
                let cell = row.get(c).map_or("", String::as_str);
                let pad = width - cell.chars().count();
                if c == 0 {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad));
                } else {
                    line.push_str("  ");
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
            if i == 0 {
                out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * cols.saturating_sub(1)));
                out.push('\n');
            }
        }
        out
    }
}

/// `1234567.0` → `"1.23M"`.
pub fn si(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// A ratio as `"3.21x"`, or `"-"` when the denominator is 0.
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

/// Milliseconds with sensible precision.
pub fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Facts about the run recorded with every result file.
#[derive(Clone, Debug, Serialize)]
pub struct RunInfo {
    /// Quick mode?
    pub quick: bool,
    /// Available cores.
    pub cores: usize,
    /// Seconds since the Unix epoch at the start.
    pub unix_time: u64,
    /// How to read the numbers.
    pub note: &'static str,
}

impl RunInfo {
    /// Info for a run now.
    pub fn now(quick: bool) -> Self {
        RunInfo {
            quick,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            unix_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            note: "absolute numbers drift on a shared machine; compare ratios measured in the same run",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["impl", "req/s"]);
        t.row(vec!["flowgate".into(), "1.00M".into()]);
        t.row(vec!["fifo".into(), "12".into()]);
        let r = t.render();
        let lines: Vec<&str> = r.lines().collect();
        assert_eq!(lines[0], "impl      req/s");
        assert_eq!(lines[2], "flowgate  1.00M");
        assert_eq!(lines[3], "fifo         12");
        assert_eq!(si(2_500_000.0), "2.50M");
        assert_eq!(ratio(3.0, 0.0), "-");
    }
}
