//! `tessera audit`: reads the agent's audit log in order, optionally following it.

use std::time::Duration;

use clap::Args;
use serde_json::json;
use tessera_proto::tessera::v1 as pb;

use crate::admin::Admin;
use crate::output::{self, OutputFormat};

/// How often `--follow` asks the agent for new records.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

const EXAMPLES: &str = "\
Examples:
  # The whole log, oldest first:
  tessera audit
  # The 20 records after sequence number 1200:
  tessera audit --after 1200 --limit 20
  # Watch new records arrive (Ctrl-C to stop), as JSON lines:
  tessera audit --follow --output json | jq -c 'select(.kind == \"task.revoked\")'

With --output json each record is one JSON object on its own line.";

/// Arguments of `tessera audit`.
#[derive(Debug, Args)]
#[command(after_long_help = EXAMPLES)]
pub struct AuditArgs {
    /// Start after this sequence number (records are numbered from 1).
    #[arg(long, value_name = "SEQ", default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    pub after: i64,

    /// Print at most N records, then stop (also when following).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,

    /// Keep polling for new records every 500 ms until Ctrl-C.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

/// Runs `tessera audit`, printing records as they arrive.
pub async fn run(admin: &mut Admin, args: AuditArgs, format: OutputFormat) -> anyhow::Result<()> {
    let emit = |text: &str| Ok(output::print(text)?);
    if !args.follow {
        return stream(admin, &args, format, emit).await;
    }
    // One Ctrl-C listener for the whole run, so an interrupt during a request is not lost.
    tokio::select! {
        result = stream(admin, &args, format, emit) => result,
        signal = tokio::signal::ctrl_c() => Ok(signal?),
    }
}

/// Pages through the log (and follows it with `--follow`), handing each batch of rendered
/// records to `emit` as soon as it arrives.
async fn stream(
    admin: &mut Admin,
    args: &AuditArgs,
    format: OutputFormat,
    mut emit: impl FnMut(&str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut after = args.after;
    let mut remaining = args.limit;
    if format == OutputFormat::Text {
        emit(&header())?;
    }
    loop {
        // Drain every page available now.
        loop {
            if remaining == Some(0) {
                return Ok(());
            }
            let page = admin.list_audit(after, remaining.unwrap_or(0)).await?;
            let Some(last) = page.last() else { break };
            // A server that ignores `after_seq` must not make us loop forever.
            if last.seq <= after {
                anyhow::bail!(
                    "tessera-agent returned audit records out of order (seq {} after {after})",
                    last.seq
                );
            }
            after = last.seq;
            let page = match remaining {
                Some(n) => {
                    let take = page.len().min(n as usize);
                    remaining = Some(n - take as u32);
                    &page[..take]
                }
                None => &page[..],
            };
            let mut text = String::new();
            for record in page {
                text.push_str(&render_record(record, format));
            }
            emit(&text)?;
        }
        if !args.follow {
            return Ok(());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Column widths of the text format; fixed so followed output stays aligned.
const SEQ_WIDTH: usize = 8;
const TIME_WIDTH: usize = 24;
const KIND_WIDTH: usize = 22;
const ACTOR_WIDTH: usize = 40;

fn header() -> String {
    format!(
        "{:>SEQ_WIDTH$}  {:<TIME_WIDTH$}  {:<KIND_WIDTH$}  {:<ACTOR_WIDTH$}  DETAIL\n",
        "SEQ", "TIME", "KIND", "ACTOR"
    )
}

/// One record: a fixed-width line in text, one JSON object per line in JSON.
pub fn render_record(record: &pb::AuditRecord, format: OutputFormat) -> String {
    let detail: serde_json::Value = serde_json::from_str(&record.detail_json)
        .unwrap_or_else(|_| serde_json::Value::String(record.detail_json.clone()));
    match format {
        OutputFormat::Json => {
            let mut line = json!({
                "seq": record.seq,
                "at": output::rfc3339_ms(record.at_unix_ms),
                "at_unix_ms": record.at_unix_ms,
                "kind": record.kind,
                "actor": record.actor,
                "detail": detail,
            })
            .to_string();
            line.push('\n');
            line
        }
        OutputFormat::Text => {
            let detail = match &detail {
                serde_json::Value::Object(map) if map.is_empty() => String::new(),
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let line = format!(
                "{:>SEQ_WIDTH$}  {:<TIME_WIDTH$}  {:<KIND_WIDTH$}  {:<ACTOR_WIDTH$}  {detail}",
                record.seq,
                output::rfc3339_ms(record.at_unix_ms),
                record.kind,
                record.actor,
            );
            format!("{}\n", line.trim_end())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::testing::{Mock, serve};

    fn record() -> pb::AuditRecord {
        pb::AuditRecord {
            seq: 42,
            at_unix_ms: 1_000,
            kind: "entry.created".into(),
            actor: "uid:0".into(),
            detail_json: r#"{"id":"01A","client":"demo"}"#.into(),
        }
    }

    #[test]
    fn text_record_is_one_aligned_line() {
        let line = render_record(&record(), OutputFormat::Text);
        assert_eq!(line.lines().count(), 1);
        assert!(line.starts_with("      42  1970-01-01T00:00:01Z"), "{line}");
        // Key order depends on serde_json's `preserve_order`, which other crates in
        // the workspace may switch on: compare the parsed object.
        let json_start = line.find('{').expect("detail JSON");
        let detail: serde_json::Value =
            serde_json::from_str(line[json_start..].trim_end()).unwrap();
        assert_eq!(
            detail,
            serde_json::json!({"client": "demo", "id": "01A"}),
            "{line}"
        );
        assert_eq!(header().find("KIND"), line.find("entry.created"));
    }

    #[test]
    fn json_record_is_one_line_with_parsed_detail() {
        let line = render_record(&record(), OutputFormat::Json);
        assert_eq!(line.lines().count(), 1);
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["seq"], 42);
        assert_eq!(value["detail"]["client"], "demo");
    }

    async fn collect(mock: &Mock, args: AuditArgs, format: OutputFormat) -> Vec<String> {
        let (_dir, socket) = serve(mock.clone()).await;
        let mut admin = Admin::connect(&socket).await.unwrap();
        let mut lines = Vec::new();
        stream(&mut admin, &args, format, |text| {
            lines.extend(text.lines().map(str::to_owned));
            Ok(())
        })
        .await
        .unwrap();
        lines
    }

    fn seqs(lines: &[String]) -> Vec<i64> {
        lines
            .iter()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                    .as_i64()
                    .unwrap()
            })
            .collect()
    }

    #[tokio::test]
    async fn pages_through_the_whole_log() {
        let mock = Mock::default();
        for _ in 0..5 {
            mock.audit("entry.created");
        }
        let args = AuditArgs {
            after: 0,
            limit: None,
            follow: false,
        };
        let lines = collect(&mock, args, OutputFormat::Json).await;
        assert_eq!(seqs(&lines), [1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn after_and_limit_select_a_window() {
        let mock = Mock::default();
        for _ in 0..6 {
            mock.audit("entry.created");
        }
        let args = AuditArgs {
            after: 2,
            limit: Some(3),
            follow: false,
        };
        let lines = collect(&mock, args, OutputFormat::Json).await;
        assert_eq!(seqs(&lines), [3, 4, 5]);
        let args = AuditArgs {
            after: 0,
            limit: Some(1),
            follow: false,
        };
        let lines = collect(&mock, args, OutputFormat::Text).await;
        assert_eq!(lines.len(), 2, "header and one record: {lines:?}");
        assert!(lines[0].contains("SEQ"));
    }

    #[tokio::test]
    async fn follow_prints_records_that_arrive_later() {
        let mock = Mock::default();
        mock.audit("entry.created");
        let later = mock.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            later.audit("task.begun");
        });
        let args = AuditArgs {
            after: 0,
            limit: Some(2),
            follow: true,
        };
        let lines = tokio::time::timeout(
            Duration::from_secs(10),
            collect(&mock, args, OutputFormat::Json),
        )
        .await
        .expect("follow must see the new record");
        assert_eq!(seqs(&lines), [1, 2]);
    }

    #[test]
    fn unparseable_detail_is_kept_as_a_string() {
        let mut r = record();
        r.detail_json = "not json".into();
        let value: serde_json::Value =
            serde_json::from_str(&render_record(&r, OutputFormat::Json)).unwrap();
        assert_eq!(value["detail"], "not json");
    }
}
