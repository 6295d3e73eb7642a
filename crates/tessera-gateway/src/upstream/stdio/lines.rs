//! A line reader with a bound: what a child writes is hostile until parsed, and a
//! child that never writes a newline must not make the gateway buffer without end.

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// One line from the child, without its `\n` (or `\r\n`).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Line {
    /// A line within the bound.
    Complete(Vec<u8>),
    /// A line longer than the bound: its bytes were read and thrown away as they came,
    /// never held.
    Oversized {
        /// Its length.
        bytes: usize,
    },
}

/// Reads lines of at most `max` bytes; longer ones come back as [`Line::Oversized`].
/// Blank lines are skipped.
#[derive(Debug)]
pub(super) struct LineReader<R> {
    inner: BufReader<R>,
    max: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub(super) fn new(inner: R, max: usize) -> Self {
        LineReader {
            inner: BufReader::with_capacity(64 << 10, inner),
            max,
        }
    }

    /// The next non-blank line, or `None` at the end of the stream. A last line without
    /// a newline counts as a line.
    pub(super) async fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            match self.read_one().await? {
                Some(Line::Complete(line)) if line.iter().all(u8::is_ascii_whitespace) => {
                    continue;
                }
                other => return Ok(other),
            }
        }
    }

    async fn read_one(&mut self) -> std::io::Result<Option<Line>> {
        let mut line = Vec::new();
        let mut total = 0usize;
        let mut oversized = false;
        loop {
            let available = self.inner.fill_buf().await?;
            if available.is_empty() {
                return Ok((total > 0).then(|| finish(line, total, oversized)));
            }
            let newline = available.iter().position(|&b| b == b'\n');
            let chunk = &available[..newline.unwrap_or(available.len())];
            total = total.saturating_add(chunk.len());
            if !oversized {
                if line.len() + chunk.len() > self.max {
                    oversized = true;
                    line = Vec::new();
                } else {
                    line.extend_from_slice(chunk);
                }
            }
            let used = newline.map_or(available.len(), |i| i + 1);
            self.inner.consume(used);
            if newline.is_some() {
                return Ok(Some(finish(line, total, oversized)));
            }
        }
    }
}

fn finish(mut line: Vec<u8>, total: usize, oversized: bool) -> Line {
    if oversized {
        return Line::Oversized { bytes: total };
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Line::Complete(line)
}

/// A line of the child's stderr made safe for a log line: lossy UTF-8, control
/// characters (ANSI escapes, carriage returns a child could use to forge or hide log
/// lines) escaped, and cut at `max` characters.
pub(super) fn sanitize_for_log(line: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(line);
    let mut out = String::with_capacity(text.len().min(max));
    for (n, c) in text.chars().enumerate() {
        if n == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn all(input: &[u8], max: usize) -> Vec<Line> {
        let mut reader = LineReader::new(input, max);
        let mut lines = Vec::new();
        while let Some(line) = reader.next_line().await.unwrap() {
            lines.push(line);
        }
        lines
    }

    #[tokio::test]
    async fn lines_are_split_on_newlines_and_crlf_is_trimmed() {
        assert_eq!(
            all(b"one\r\ntwo\n\n  \nthree", 16).await,
            [
                Line::Complete(b"one".to_vec()),
                Line::Complete(b"two".to_vec()),
                Line::Complete(b"three".to_vec()),
            ]
        );
    }

    #[tokio::test]
    async fn an_oversized_line_is_reported_by_size_and_the_next_line_still_reads() {
        let mut input = vec![b'x'; 200_000];
        input.extend_from_slice(b"\nafter\n");
        assert_eq!(
            all(&input, 1024).await,
            [
                Line::Oversized { bytes: 200_000 },
                Line::Complete(b"after".to_vec())
            ]
        );
        // Exactly at the bound is still a line.
        assert_eq!(all(b"abcd\n", 4).await, [Line::Complete(b"abcd".to_vec())]);
        assert_eq!(all(b"abcde\n", 4).await, [Line::Oversized { bytes: 5 }]);
    }

    #[test]
    fn log_lines_escape_control_characters_and_are_cut() {
        assert_eq!(
            sanitize_for_log(b"a\x1b[31mred\rfake", 100),
            "a\\u{1b}[31mred\\rfake"
        );
        assert_eq!(sanitize_for_log("ééé".as_bytes(), 2), "éé…");
    }
}
