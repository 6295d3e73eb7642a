//! `ReportTaskEvents`: a node's task begins and ends, from its journal, checked here
//! (every field hostile until parsed: ids, the trust domain, sizes) and stored in one
//! transaction (`task.rs`).
//!
//! Each event is judged on its own: a malformed one is rejected by its `seq` and the
//! others are stored. Refusing the whole request instead would have the agent resend the
//! same batch forever (the event can never become well-formed), and every later event of
//! that node, every task end among them, would never reach the server. Only what is wrong
//! with the request as a whole (too many events, seqs not increasing: the acknowledgement
//! would be meaningless) refuses it.

use std::str::FromStr;

use tessera_identity::{Scope, ServerName, TaskId, TaskSpiffeId, TrustDomain};
use tessera_proto::tessera::v1 as pb;
use tessera_store::{MAX_REASON_LEN, MAX_SCOPES, MAX_SERIAL_HEX_LEN, MAX_SUBJECT_LEN};
use tonic::Status;

use crate::{TaskBegun, TaskEnded, TaskEvent};

/// Most events one request may carry.
pub(crate) const MAX_EVENTS: usize = 1000;

/// Most serials one event may name (a day-long task rotating a 5-minute SVID at half
/// life has under 600).
pub(crate) const MAX_SERIALS: usize = 4096;

/// Longest consent id accepted (the server's are 26-character ULIDs).
const MAX_CONSENT_ID_LEN: usize = 64;

/// A request's events, each checked on its own.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    /// The well-formed events, in request order, each with its `seq`.
    pub(crate) events: Vec<(u64, TaskEvent)>,
    /// The malformed ones, by `seq`.
    pub(crate) rejected: Vec<pb::RejectedTaskEvent>,
    /// The highest `seq` of the request (0 for none): what the answer acknowledges.
    pub(crate) last_seq: u64,
}

/// The request's events, checked: a malformed event is rejected alone (see the module's
/// comment); a request of too many events, or of seqs not increasing, is refused.
pub(crate) fn parse(
    request: pb::ReportTaskEventsRequest,
    trust_domain: &TrustDomain,
) -> Result<Parsed, Status> {
    if request.events.len() > MAX_EVENTS {
        return Err(Status::invalid_argument(format!(
            "{} events; at most {MAX_EVENTS} per request",
            request.events.len()
        )));
    }
    let mut parsed = Parsed {
        events: Vec::with_capacity(request.events.len()),
        ..Parsed::default()
    };
    for (index, event) in request.events.into_iter().enumerate() {
        if event.seq == 0 || event.seq <= parsed.last_seq {
            return Err(Status::invalid_argument(format!(
                "event {index} (seq {}): seq must be positive and increase within a request \
                 (the one before was {})",
                event.seq, parsed.last_seq
            )));
        }
        parsed.last_seq = event.seq;
        let checked = match &event.event {
            Some(pb::task_event::Event::Begun(b)) => begun(b, trust_domain).map(TaskEvent::Begun),
            Some(pb::task_event::Event::Ended(e)) => ended(e, trust_domain).map(TaskEvent::Ended),
            None => Err("neither begun nor ended".to_owned()),
        };
        match checked {
            Ok(checked) => parsed.events.push((event.seq, checked)),
            Err(message) => parsed.rejected.push(pb::RejectedTaskEvent {
                seq: event.seq,
                reason: pb::TaskEventRejection::Malformed.into(),
                message: format!("event {index} (seq {}): {message}", event.seq),
            }),
        }
    }
    Ok(parsed)
}

fn begun(b: &pb::TaskBegun, td: &TrustDomain) -> Result<TaskBegun, String> {
    let id = task_identity(&b.task_id, &b.spiffe_id, td)?;
    if b.client != id.client.name.as_str() {
        return Err(format!(
            "client {:?} is not the one its SPIFFE ID names",
            truncated(&b.client)
        ));
    }
    if b.subject.is_empty() || b.subject.len() > MAX_SUBJECT_LEN {
        return Err(format!("subject must be 1..={MAX_SUBJECT_LEN} bytes"));
    }
    ServerName::from_str(&b.server)
        .map_err(|e| format!("server {:?}: {e}", truncated(&b.server)))?;
    if b.scopes.len() > MAX_SCOPES {
        return Err(format!("more than {MAX_SCOPES} scopes"));
    }
    for scope in &b.scopes {
        Scope::from_str(scope).map_err(|e| format!("scope {:?}: {e}", truncated(scope)))?;
    }
    if b.consent_id.is_empty()
        || b.consent_id.len() > MAX_CONSENT_ID_LEN
        || !b.consent_id.bytes().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(format!(
            "consent_id must be 1..={MAX_CONSENT_ID_LEN} ASCII letters and digits"
        ));
    }
    if b.begun_at_unix_ms <= 0 || b.deadline_unix <= 0 {
        return Err("begun_at_unix_ms and deadline_unix must be positive".to_owned());
    }
    Ok(TaskBegun::new(
        id.task.to_string(),
        id.to_string(),
        id.client.name.to_string(),
        b.subject.clone(),
        b.server.clone(),
        b.scopes.clone(),
        b.consent_id.clone(),
        b.begun_at_unix_ms,
        b.deadline_unix,
        serials(&b.serials)?,
    ))
}

fn ended(e: &pb::TaskEnded, td: &TrustDomain) -> Result<TaskEnded, String> {
    let id = task_identity(&e.task_id, &e.spiffe_id, td)?;
    if e.reason.is_empty()
        || e.reason.len() > MAX_REASON_LEN
        || !e
            .reason
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c == b'_')
    {
        return Err(format!(
            "reason must be 1..={MAX_REASON_LEN} bytes of [a-z_], e.g. \"ended\""
        ));
    }
    if e.ended_at_unix_ms <= 0 || e.until_unix <= 0 {
        return Err("ended_at_unix_ms and until_unix must be positive".to_owned());
    }
    Ok(TaskEnded::new(
        id.task.to_string(),
        id.to_string(),
        id.client.name.to_string(),
        e.reason.clone(),
        e.ended_at_unix_ms,
        serials(&e.serials)?,
        e.until_unix,
    ))
}

/// The task's id and SPIFFE ID must parse, agree, and be of this trust domain.
fn task_identity(task_id: &str, spiffe_id: &str, td: &TrustDomain) -> Result<TaskSpiffeId, String> {
    let task: TaskId = task_id
        .parse()
        .map_err(|e| format!("task_id {:?}: {e}", truncated(task_id)))?;
    let id: TaskSpiffeId = spiffe_id
        .parse()
        .map_err(|e| format!("spiffe_id {:?}: {e}", truncated(spiffe_id)))?;
    if id.trust_domain() != td {
        return Err(format!("{id} is not in trust domain {td}"));
    }
    if id.task != task {
        return Err(format!("{id} is not task {task}"));
    }
    Ok(id)
}

fn serials(serials: &[String]) -> Result<Vec<String>, String> {
    if serials.len() > MAX_SERIALS {
        return Err(format!("more than {MAX_SERIALS} serials"));
    }
    serials
        .iter()
        .map(|s| {
            if s.is_empty()
                || s.len() > MAX_SERIAL_HEX_LEN
                || !s
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
            {
                Err(format!(
                    "serial {:?}: expected 1..={MAX_SERIAL_HEX_LEN} lower-case hex digits",
                    truncated(s)
                ))
            } else {
                Ok(s.clone())
            }
        })
        .collect()
}

/// At most 80 characters of something hostile, for an error message.
fn truncated(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TD: &str = "acme.corp";

    fn td() -> TrustDomain {
        TD.parse().unwrap()
    }

    fn begun_event(seq: u64, task: &TaskId) -> pb::TaskEvent {
        pb::TaskEvent {
            seq,
            event: Some(pb::task_event::Event::Begun(pb::TaskBegun {
                task_id: task.to_string(),
                spiffe_id: format!("spiffe://{TD}/client/reviewer/task/{task}"),
                client: "reviewer".into(),
                subject: "alice".into(),
                server: "github".into(),
                scopes: vec!["github/tool/*".into()],
                consent_id: ulid::Ulid::new().to_string(),
                begun_at_unix_ms: 1_700_000_000_000,
                deadline_unix: 1_700_000_300,
                serials: vec!["0a1b".into()],
            })),
        }
    }

    fn request(events: Vec<pb::TaskEvent>) -> pb::ReportTaskEventsRequest {
        pb::ReportTaskEventsRequest { events }
    }

    fn refusal(events: Vec<pb::TaskEvent>) -> String {
        let status = parse(request(events), &td()).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        status.message().to_owned()
    }

    /// The message the one event of `events` is rejected with.
    fn rejection(events: Vec<pb::TaskEvent>) -> String {
        let parsed = parse(request(events), &td()).unwrap();
        let [rejected] = &parsed.rejected[..] else {
            panic!("one rejection: {parsed:?}");
        };
        assert_eq!(rejected.reason(), pb::TaskEventRejection::Malformed);
        rejected.message.clone()
    }

    #[test]
    fn well_formed_events_parse_and_the_highest_seq_is_acknowledged() {
        let a = TaskId::new();
        let mut end = begun_event(9, &a);
        end.event = Some(pb::task_event::Event::Ended(pb::TaskEnded {
            task_id: a.to_string(),
            spiffe_id: format!("spiffe://{TD}/client/reviewer/task/{a}"),
            reason: "process_exited".into(),
            ended_at_unix_ms: 1_700_000_001_000,
            serials: vec!["0a1b".into(), "ff".into()],
            until_unix: 1_700_000_300,
        }));
        let parsed = parse(request(vec![begun_event(7, &a), end]), &td()).unwrap();
        assert_eq!(parsed.last_seq, 9);
        assert!(parsed.rejected.is_empty());
        assert!(
            matches!(&parsed.events[..], [(7, TaskEvent::Begun(_)), (9, TaskEvent::Ended(e))] if e.client == "reviewer")
        );
        assert_eq!(parse(request(Vec::new()), &td()).unwrap().last_seq, 0);
    }

    #[test]
    fn a_bad_event_is_rejected_by_seq_and_the_others_still_parse() {
        let a = TaskId::new();
        let mut foreign = begun_event(2, &a);
        if let Some(pb::task_event::Event::Begun(b)) = &mut foreign.event {
            b.spiffe_id = format!("spiffe://evil.corp/client/reviewer/task/{a}");
        }
        let parsed = parse(
            request(vec![begun_event(1, &a), foreign, begun_event(3, &a)]),
            &td(),
        )
        .unwrap();
        assert_eq!(parsed.last_seq, 3, "the rejected event is acknowledged too");
        assert_eq!(
            parsed
                .events
                .iter()
                .map(|(seq, _)| *seq)
                .collect::<Vec<_>>(),
            [1, 3]
        );
        let [rejected] = &parsed.rejected[..] else {
            panic!("{parsed:?}");
        };
        assert_eq!(rejected.seq, 2);
        assert!(
            rejected.message.starts_with("event 1 (seq 2)"),
            "{rejected:?}"
        );
        assert!(rejected.message.contains("trust domain"), "{rejected:?}");

        let mut other_task = begun_event(1, &a);
        if let Some(pb::task_event::Event::Begun(b)) = &mut other_task.event {
            b.task_id = TaskId::new().to_string();
        }
        assert!(rejection(vec![other_task]).contains("is not task"));

        let mut upper = begun_event(1, &a);
        if let Some(pb::task_event::Event::Begun(b)) = &mut upper.event {
            b.serials = vec!["0A".into()];
        }
        assert!(rejection(vec![upper]).contains("serial"));

        let mut huge = begun_event(1, &a);
        if let Some(pb::task_event::Event::Begun(b)) = &mut huge.event {
            b.subject = "x".repeat(MAX_SUBJECT_LEN + 1);
        }
        assert!(rejection(vec![huge]).contains("subject"));
        assert!(
            rejection(vec![pb::TaskEvent {
                seq: 1,
                event: None
            }])
            .contains("neither")
        );
    }

    #[test]
    fn a_request_of_too_many_events_or_unordered_seqs_is_refused_whole() {
        let a = TaskId::new();
        assert!(refusal(vec![begun_event(3, &a), begun_event(3, &a)]).contains("seq"));
        assert!(refusal(vec![begun_event(0, &a)]).contains("seq must be positive"));
        let many: Vec<_> = (1..=MAX_EVENTS as u64 + 1)
            .map(|seq| begun_event(seq, &a))
            .collect();
        assert!(refusal(many).contains("at most 1000"));
    }
}
