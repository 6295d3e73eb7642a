//! List results inside a `text/event-stream` answer: each event is read whole (bounded),
//! an event whose `data` is a JSON-RPC result is filtered like a JSON answer, and every
//! other event (notifications, progress, server requests, comments) passes unchanged.
//!
//! Events end at a blank line (`\n\n` or `\r\n\r\n`); an event's `data:` lines are joined
//! with `\n` (the SSE rule) before parsing, and a filtered event is written back with its
//! other fields (`id:`, `event:`, `retry:`) and one `data:` line.

use std::sync::Arc;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use serde_json::Value;
use tessera_verify::mcp::proxy::ListFilter;
use tessera_verify::{Authorizer, Peer};

/// What a filtered list needs: the list, who may see what, and who is asking.
#[derive(Clone, Debug)]
pub struct Lister {
    /// The list in the result.
    pub filter: ListFilter,
    /// The decisions.
    pub authz: Arc<Authorizer>,
    /// The caller.
    pub peer: Arc<Peer>,
}

impl Lister {
    /// Filters the list in a JSON-RPC response, if it carries a result.
    pub fn filter_response(&self, msg: &mut Value) -> usize {
        match msg.get_mut("result") {
            Some(result) => self.filter.retain(&self.authz, &self.peer, result),
            None => 0,
        }
    }
}

/// An event longer than this many bytes ends the stream with an error (bounded memory).
#[derive(Debug)]
struct EventTooLarge;

impl std::fmt::Display for EventTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an upstream SSE event exceeded the gateway's bound")
    }
}
impl std::error::Error for EventTooLarge {}

/// `body` with the list results in its events filtered by `lister`; an event over
/// `max_event` bytes ends the stream.
pub fn filter_stream(body: Body, lister: Lister, max_event: usize) -> Body {
    struct St {
        body: Body,
        buf: BytesMut,
        lister: Lister,
        max: usize,
        done: bool,
    }
    let st = St {
        body,
        buf: BytesMut::new(),
        lister,
        max: max_event,
        done: false,
    };
    let stream = futures::stream::unfold(st, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            let mut out = BytesMut::new();
            while let Some((end, next)) = boundary(&st.buf) {
                let event = st.buf.split_to(next);
                out.extend_from_slice(&rewrite(&event[..end], &st.lister));
                out.extend_from_slice(b"\n");
            }
            if !out.is_empty() {
                return Some((Ok::<Bytes, Box<dyn std::error::Error + Send + Sync>>(out.freeze()), st));
            }
            if st.buf.len() > st.max {
                st.done = true;
                return Some((Err(Box::new(EventTooLarge) as _), st));
            }
            match st.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        st.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    st.done = true;
                    return Some((Err(Box::new(e) as _), st));
                }
                None => {
                    st.done = true;
                    if st.buf.is_empty() {
                        return None;
                    }
                    // An unterminated last event: a client discards it, so does this.
                    return None;
                }
            }
        }
    });
    Body::from_stream(stream)
}

/// The end of the first event in `buf` (its last line's newline included) and where
/// the next begins, if a blank line has arrived.
fn boundary(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + p;
        let rest = &buf[nl + 1..];
        if rest.first() == Some(&b'\n') {
            return Some((nl + 1, nl + 2));
        }
        if rest.starts_with(b"\r\n") {
            return Some((nl + 1, nl + 3));
        }
        i = nl + 1;
    }
    None
}

/// One event (without its blank line), filtered if it is a JSON-RPC result.
fn rewrite(event: &[u8], lister: &Lister) -> Bytes {
    let Ok(text) = std::str::from_utf8(event) else {
        return Bytes::copy_from_slice(event);
    };
    let mut data = String::new();
    let mut other = String::new();
    let mut has_data = false;
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("data:") {
            if has_data {
                data.push('\n');
            }
            data.push_str(d.strip_prefix(' ').unwrap_or(d));
            has_data = true;
        } else {
            other.push_str(line);
            other.push('\n');
        }
    }
    if !has_data {
        return Bytes::copy_from_slice(event);
    }
    let Ok(mut msg) = serde_json::from_str::<Value>(&data) else {
        return Bytes::copy_from_slice(event);
    };
    if msg.get("result").is_none() {
        return Bytes::copy_from_slice(event);
    }
    lister.filter_response(&mut msg);
    let mut out = other;
    out.push_str("data: ");
    out.push_str(&msg.to_string());
    out.push('\n');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_boundaries_are_found_for_both_line_endings() {
        assert_eq!(boundary(b"data: x\n\nrest"), Some((8, 9)));
        assert_eq!(boundary(b"data: x\r\n\r\nrest"), Some((9, 11)));
        assert_eq!(boundary(b"data: x\n"), None);
        assert_eq!(boundary(b"id: 1\ndata: x\n\n"), Some((14, 15)));
    }
}
