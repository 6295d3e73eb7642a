//! How results reach the terminal: the `--output` switch, aligned tables and key/value
//! blocks for people, JSON for programs, and the time formats both share.
//!
//! Everything here returns `String`s so commands can be tested without capturing stdout;
//! [`print`] is the one place that writes.

use std::io::Write;

use clap::ValueEnum;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The `--output` format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned, human-readable text.
    #[default]
    Text,
    /// JSON: one document per command, or one object per line for streams (`audit`).
    Json,
}

/// Writes `text` to stdout, adding a final newline if it lacks one.
///
/// A closed pipe (`tessera audit | head`) surfaces as an `io::Error` of kind `BrokenPipe`,
/// which `main` treats as a normal end instead of panicking like `println!` would.
pub fn print(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Pretty-prints a JSON document (with a trailing newline).
pub fn json(value: &serde_json::Value) -> String {
    // Serializing a `Value` cannot fail: its map keys are always strings.
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// A table whose columns are padded to their widest cell, separated by two spaces.
///
/// The last column is not padded, so long values (selectors, JSON details) do not leave
/// trailing blanks.
#[derive(Debug)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headings.
    pub fn new<const N: usize>(header: [&str; N]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells render empty, extra cells are kept.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, header first, one line per row.
    pub fn render(&self) -> String {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.header.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0usize; columns];
        for line in std::iter::once(&self.header).chain(&self.rows) {
            for (i, cell) in line.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.header).chain(&self.rows) {
            let mut text = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = line.get(i).map(String::as_str).unwrap_or("");
                if i > 0 {
                    text.push_str("  ");
                }
                text.push_str(cell);
                if i + 1 < columns {
                    let pad = width - cell.chars().count();
                    text.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Key/value lines with the values aligned: `key:  value`.
///
/// A value containing newlines continues on the following lines at the same indent, so
/// lists (selectors, scopes) read as one column.
pub fn kv(indent: usize, pairs: &[(&str, String)]) -> String {
    let key_width = pairs
        .iter()
        .map(|(k, _)| k.chars().count() + 1)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        let label = format!("{key}:");
        let mut lines = value.lines();
        let first = lines.next().unwrap_or("");
        let line = format!("{:indent$}{label:<key_width$}  {first}", "");
        out.push_str(line.trim_end());
        out.push('\n');
        for more in lines {
            let line = format!("{:indent$}{:key_width$}  {more}", "", "");
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    out
}

/// A Unix time as RFC 3339 in UTC, e.g. `2025-06-01T12:00:00Z`; out-of-range values print
/// as the raw number so nothing is hidden.
pub fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("@{unix}"))
}

/// A Unix time in milliseconds as RFC 3339 with milliseconds, e.g. `2025-06-01T12:00:00.250Z`.
pub fn rfc3339_ms(unix_ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("@{unix_ms}ms"))
}

/// The current Unix time in seconds.
pub fn now_unix() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// A span of seconds in at most two units, e.g. `59s`, `4m 30s`, `2h 5m`, `3d 1h`.
pub fn human_span(secs: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    if secs == 0 {
        return "0s".to_owned();
    }
    let mut parts = Vec::new();
    let mut rest = secs;
    for (size, unit) in UNITS {
        if rest >= size {
            parts.push(format!("{}{unit}", rest / size));
            rest %= size;
        } else if !parts.is_empty() {
            // Keep the two units adjacent: `1h 0m`, never `1h 5s`.
            parts.push(format!("0{unit}"));
        }
        if parts.len() == 2 {
            break;
        }
    }
    // `1h 0m` reads worse than `1h`.
    if parts.len() == 2 && parts[1].starts_with('0') {
        parts.pop();
    }
    parts.join(" ")
}

/// How a deadline relates to `now`: `expires in 4m 30s` or `expired 2h 5m ago`.
pub fn expiry(not_after: i64, now: i64) -> String {
    if not_after > now {
        format!("expires in {}", human_span(not_after.abs_diff(now)))
    } else {
        format!("expired {} ago", human_span(now.abs_diff(not_after)))
    }
}

/// Like [`expiry`] for a task deadline: `in 4m 30s` or `passed 2h 5m ago`.
pub fn deadline(at: i64, now: i64) -> String {
    if at > now {
        format!("in {}", human_span(at.abs_diff(now)))
    } else {
        format!("passed {} ago", human_span(now.abs_diff(at)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_every_column_but_the_last() {
        let mut table = Table::new(["ID", "CLIENT", "SELECTORS"]);
        table.row(vec![
            "01A".into(),
            "code-reviewer".into(),
            "unix:uid:1001".into(),
        ]);
        table.row(vec!["01BBBB".into(), "x".into(), "k8s:ns:agents".into()]);
        assert_eq!(
            table.render(),
            "ID      CLIENT         SELECTORS\n\
             01A     code-reviewer  unix:uid:1001\n\
             01BBBB  x              k8s:ns:agents\n"
        );
    }

    #[test]
    fn table_with_no_rows_prints_the_header() {
        assert_eq!(Table::new(["A", "B"]).render(), "A  B\n");
    }

    #[test]
    fn kv_aligns_values_and_continues_multiline_values() {
        let text = kv(
            0,
            &[
                ("id", "01A".to_owned()),
                ("selectors", "unix:uid:1001\nunix:sha256:ab".to_owned()),
            ],
        );
        assert_eq!(
            text,
            "id:         01A\n\
             selectors:  unix:uid:1001\n\
             \x20           unix:sha256:ab\n"
        );
    }

    #[test]
    fn rfc3339_formats_utc_seconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_ms(1_500), "1970-01-01T00:00:01.5Z");
        assert_eq!(rfc3339(i64::MAX), format!("@{}", i64::MAX));
    }

    #[test]
    fn human_span_uses_two_adjacent_units() {
        assert_eq!(human_span(0), "0s");
        assert_eq!(human_span(59), "59s");
        assert_eq!(human_span(270), "4m 30s");
        assert_eq!(human_span(3_600), "1h");
        assert_eq!(human_span(3_605), "1h");
        assert_eq!(human_span(7_500), "2h 5m");
        assert_eq!(human_span(90_061), "1d 1h");
    }

    #[test]
    fn expiry_says_in_or_ago() {
        assert_eq!(expiry(1_300, 1_000), "expires in 5m");
        assert_eq!(expiry(1_000, 1_300), "expired 5m ago");
        assert_eq!(deadline(1_060, 1_000), "in 1m");
        assert_eq!(deadline(1_000, 1_060), "passed 1m ago");
    }
}
