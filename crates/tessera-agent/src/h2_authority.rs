//! Accepting gRPC clients that name a unix socket by its path in `:authority`.
//!
//! gRPC C-core (Python `grpcio` and so py-spiffe, C++, Ruby, PHP) and grpc-java
//! send the socket's path as the HTTP/2 `:authority` of every request on a unix
//! socket, raw (`/run/tessera/workload.sock`) or percent-encoded
//! (`%2Frun%2Ftessera%2Fworkload.sock`). Neither is a valid URI authority, and
//! the HTTP/2 server under tonic (h2) resets every such stream with
//! `PROTOCOL_ERROR`, so those clients could not reach the agent at all. grpc-go
//! and tonic send `localhost` and were never affected.
//!
//! # Why a layer below h2
//!
//! h2 has no switch to accept such an authority, and no other HTTP/2 server
//! stack fits under tonic. So each accepted connection is read through
//! [`AuthorityRewrite`], which sits between the socket and h2 and changes only
//! the client-to-server header blocks, and only on connections that need it:
//!
//! - The first header block of a connection is decoded. If its `:authority` is
//!   valid (or absent), that block and everything after it pass through byte for
//!   byte and the layer costs nothing more: a client sends one authority for its
//!   whole connection. (If it later sent a bad one, h2 would reset that stream,
//!   as it always did; no check depends on the authority.)
//! - Otherwise the connection is rewritten from then on: every header block is
//!   decoded with an HPACK decoder that mirrors the client's encoder (its dynamic
//!   table included), `:authority` is replaced by `localhost` when invalid, and
//!   the block is encoded again with literals that never enter h2's dynamic
//!   table. h2's decoder table therefore stays empty and cannot disagree with
//!   ours: the one invariant that keeps both sides of the HPACK state consistent
//!   without modelling h2's table. The cost is a few bytes more per request on a
//!   local socket.
//!
//! The socket path carried no meaning for the agent (it attests the peer from
//! the kernel, never from headers), so the replacement loses nothing.
//!
//! The layer bounds what it buffers: a header block (HEADERS plus CONTINUATION
//! frames) over [`MAX_HEADER_BLOCK`] bytes, or one that decodes to more than
//! [`MAX_DECODED_HEADERS`] bytes (an HPACK "bomb" of repeated references to a
//! large table entry), closes a rewritten connection with a logged error. On a
//! connection still deciding, an oversized first block is passed through as it
//! is and h2 applies its own limits, exactly as without this layer.

use std::io;

use bytes::{BufMut, BytesMut};

mod stream;

pub use stream::AuthorityRewrite;

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;

const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;

const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// Frames this layer writes are at most this long: the initial
/// SETTINGS_MAX_FRAME_SIZE every HTTP/2 endpoint accepts (RFC 9113 §6.5.2).
const MAX_WRITTEN_FRAME: usize = 16_384;

/// The initial SETTINGS_HEADER_TABLE_SIZE (RFC 9113 §6.5.2). The agent's h2
/// server never advertises another, so a client's encoder may use at most this.
const HEADER_TABLE_SIZE: usize = 4_096;

/// Largest header block (the HEADERS and CONTINUATION payloads of one request)
/// this layer buffers. gRPC requests on the agent's sockets carry a few hundred
/// bytes of headers.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// Largest decoded header list (RFC 9113 §6.5.2's size: name + value + 32 per
/// field) of a rewritten request.
pub const MAX_DECODED_HEADERS: usize = 64 * 1024;

/// A decoded header list: (name, value) pairs in order.
type HeaderFields = Vec<(Vec<u8>, Vec<u8>)>;

/// What replaces an invalid `:authority`.
const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

/// Why a rewritten connection was closed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityRewriteError {
    /// A header block grew past [`MAX_HEADER_BLOCK`].
    #[error("HTTP/2 header block over {limit} bytes")]
    HeaderBlockTooLarge {
        /// The limit.
        limit: usize,
    },
    /// A header block decoded to more than [`MAX_DECODED_HEADERS`].
    #[error("HTTP/2 header list decodes to over {limit} bytes")]
    DecodedHeadersTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The HPACK data was malformed (a COMPRESSION_ERROR in HTTP/2's terms).
    #[error("malformed HPACK header block: {0}")]
    Hpack(String),
    /// Frames of a header block were interleaved with other frames, or a
    /// CONTINUATION came with no block open (a PROTOCOL_ERROR in HTTP/2's terms).
    #[error("malformed HTTP/2 header block: {0}")]
    Framing(&'static str),
}

impl From<AuthorityRewriteError> for io::Error {
    fn from(e: AuthorityRewriteError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Waiting for the client preface.
    Preface,
    /// Framed, waiting for the first header block to decide.
    Deciding,
    /// Every header block is decoded and encoded again.
    Rewriting,
    /// Bytes pass through unread.
    Passthrough,
}

/// A header block being gathered from a HEADERS frame and its CONTINUATIONs.
#[derive(Debug)]
struct OpenBlock {
    stream_id: u32,
    end_stream: bool,
    /// The 5 priority bytes of a HEADERS frame with the PRIORITY flag.
    priority: Option<[u8; 5]>,
    /// The HPACK fragment, padding removed.
    fragment: Vec<u8>,
    /// The frames exactly as received (kept only while deciding).
    raw: Vec<u8>,
}

/// The byte-stream transformation, without I/O: feed it what the client sent,
/// get what h2 should read.
pub struct Rewriter {
    mode: Mode,
    decoder: loona_hpack::Decoder<'static>,
    /// Bytes of the current non-header frame still to pass through unread.
    skip: usize,
    block: Option<OpenBlock>,
    rewritten_blocks: u64,
}

impl std::fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewriter")
            .field("mode", &self.mode)
            .field("rewritten_blocks", &self.rewritten_blocks)
            .finish_non_exhaustive()
    }
}

impl Default for Rewriter {
    fn default() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Rewriter {
            mode: Mode::Preface,
            decoder,
            skip: 0,
            block: None,
            rewritten_blocks: 0,
        }
    }
}

impl Rewriter {
    /// Whether the connection has settled on passing bytes through unread.
    pub fn is_passthrough(&self) -> bool {
        self.mode == Mode::Passthrough
    }

    /// Whether the connection is being rewritten.
    pub fn is_rewriting(&self) -> bool {
        self.mode == Mode::Rewriting
    }

    /// Header blocks rewritten so far.
    pub fn rewritten_blocks(&self) -> u64 {
        self.rewritten_blocks
    }

    /// Consumes what it can of `input` (whole frames, or the unread rest of a
    /// frame passing through) and appends what h2 should read to `out`. Bytes
    /// left in `input` wait for more.
    pub fn feed(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<(), AuthorityRewriteError> {
        loop {
            match self.mode {
                Mode::Passthrough => {
                    out.extend_from_slice(input);
                    input.clear();
                    return Ok(());
                }
                Mode::Preface => {
                    let n = input.len().min(PREFACE.len());
                    if input[..n] != PREFACE[..n] {
                        // Not HTTP/2 prior knowledge: h2 answers that itself.
                        self.mode = Mode::Passthrough;
                        continue;
                    }
                    if n < PREFACE.len() {
                        return Ok(());
                    }
                    out.extend_from_slice(&input.split_to(PREFACE.len()));
                    self.mode = Mode::Deciding;
                }
                Mode::Deciding | Mode::Rewriting => {
                    if self.skip > 0 {
                        let n = self.skip.min(input.len());
                        if n == 0 {
                            return Ok(());
                        }
                        out.extend_from_slice(&input.split_to(n));
                        self.skip -= n;
                        continue;
                    }
                    if !self.next_frame(input, out)? {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Handles the frame at the head of `input`; false when more bytes are needed.
    fn next_frame(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<bool, AuthorityRewriteError> {
        if input.len() < FRAME_HEADER_LEN {
            return Ok(false);
        }
        let len = u32::from_be_bytes([0, input[0], input[1], input[2]]) as usize;
        let kind = input[3];
        let flags = input[4];
        let stream_id = u32::from_be_bytes([input[5], input[6], input[7], input[8]]) & 0x7fff_ffff;

        let in_block = self.block.is_some();
        let header_frame = kind == FRAME_HEADERS || kind == FRAME_CONTINUATION;
        if !header_frame && !in_block {
            // Everything but header blocks passes through, without waiting for
            // the whole frame (a DATA frame may be large).
            out.extend_from_slice(&input.split_to(FRAME_HEADER_LEN));
            self.skip = len;
            return Ok(true);
        }
        let continues_block = kind == FRAME_CONTINUATION
            && self
                .block
                .as_ref()
                .is_some_and(|b| b.stream_id == stream_id);
        if (kind == FRAME_HEADERS && in_block) || (!continues_block && kind != FRAME_HEADERS) {
            return self.malformed(
                out,
                if in_block {
                    "a header block was interrupted by another frame"
                } else {
                    "CONTINUATION without an open header block"
                },
            );
        }
        let buffered = self
            .block
            .as_ref()
            .map_or(0, |b| b.raw.len().max(b.fragment.len()));
        if buffered + len > MAX_HEADER_BLOCK {
            return match self.mode {
                Mode::Rewriting => Err(AuthorityRewriteError::HeaderBlockTooLarge {
                    limit: MAX_HEADER_BLOCK,
                }),
                _ => {
                    self.give_up(out);
                    Ok(true)
                }
            };
        }
        if input.len() < FRAME_HEADER_LEN + len {
            return Ok(false);
        }
        let frame = input.split_to(FRAME_HEADER_LEN + len);
        let payload = &frame[FRAME_HEADER_LEN..];
        if kind == FRAME_HEADERS {
            let Some((priority, fragment)) = headers_payload(flags, payload) else {
                // h2 rejects the frame itself; give it the bytes as they were.
                return match self.mode {
                    Mode::Rewriting => Err(AuthorityRewriteError::Framing(
                        "HEADERS frame shorter than its padding and priority",
                    )),
                    _ => {
                        out.extend_from_slice(&frame);
                        self.mode = Mode::Passthrough;
                        Ok(true)
                    }
                };
            };
            self.block = Some(OpenBlock {
                stream_id,
                end_stream: flags & FLAG_END_STREAM != 0,
                priority,
                fragment: fragment.to_vec(),
                raw: if self.mode == Mode::Deciding {
                    frame.to_vec()
                } else {
                    Vec::new()
                },
            });
        } else if let Some(block) = self.block.as_mut() {
            block.fragment.extend_from_slice(payload);
            if self.mode == Mode::Deciding {
                block.raw.extend_from_slice(&frame);
            }
        }
        if flags & FLAG_END_HEADERS != 0 {
            let block = self.block.take().expect("a block is open");
            self.finish_block(block, out)?;
        }
        Ok(true)
    }

    /// A framing error: h2 must see it while deciding; a rewritten connection
    /// cannot forward half a block, so it closes.
    fn malformed(
        &mut self,
        out: &mut BytesMut,
        why: &'static str,
    ) -> Result<bool, AuthorityRewriteError> {
        match self.mode {
            Mode::Rewriting => Err(AuthorityRewriteError::Framing(why)),
            _ => {
                self.give_up(out);
                Ok(true)
            }
        }
    }

    /// While deciding: forward what was held back untouched and stop reading.
    fn give_up(&mut self, out: &mut BytesMut) {
        if let Some(block) = self.block.take() {
            out.extend_from_slice(&block.raw);
        }
        self.mode = Mode::Passthrough;
    }

    fn finish_block(
        &mut self,
        block: OpenBlock,
        out: &mut BytesMut,
    ) -> Result<(), AuthorityRewriteError> {
        let decoded = self.decode(&block.fragment);
        match self.mode {
            Mode::Deciding => match decoded {
                Ok(fields) if authority_is_invalid(&fields) => {
                    self.mode = Mode::Rewriting;
                    self.write_block(&block, fields, out);
                }
                // A valid authority, or a block h2 will refuse itself: from now
                // on h2 reads the client's own bytes.
                _ => {
                    out.extend_from_slice(&block.raw);
                    self.mode = Mode::Passthrough;
                }
            },
            _ => {
                let fields = decoded?;
                self.write_block(&block, fields, out);
            }
        }
        Ok(())
    }

    fn decode(&mut self, fragment: &[u8]) -> Result<HeaderFields, AuthorityRewriteError> {
        let mut fields = Vec::new();
        let mut size = 0usize;
        let mut too_large = false;
        self.decoder
            .decode_with_cb(fragment, |name, value| {
                // Decoding must still run to the end to keep the table in step;
                // past the limit nothing more is kept.
                size = size.saturating_add(name.len() + value.len() + 32);
                if size > MAX_DECODED_HEADERS {
                    too_large = true;
                } else {
                    fields.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(|e| AuthorityRewriteError::Hpack(e.to_string()))?;
        if too_large {
            return Err(AuthorityRewriteError::DecodedHeadersTooLarge {
                limit: MAX_DECODED_HEADERS,
            });
        }
        Ok(fields)
    }

    /// Writes `fields` as a HEADERS frame and CONTINUATIONs, every field a
    /// literal without indexing, `:authority` repaired.
    fn write_block(&mut self, block: &OpenBlock, fields: HeaderFields, out: &mut BytesMut) {
        let mut encoded = Vec::with_capacity(block.fragment.len() * 2);
        for (name, value) in &fields {
            let value: &[u8] = if name == b":authority" && !valid_authority(value) {
                REPLACEMENT_AUTHORITY
            } else {
                value
            };
            // Literal Header Field without Indexing, new name (RFC 7541 §6.2.2).
            encoded.push(0);
            write_string(name, &mut encoded);
            write_string(value, &mut encoded);
        }
        self.rewritten_blocks += 1;

        let mut first = true;
        let mut rest: &[u8] = &encoded;
        loop {
            let room = if first && block.priority.is_some() {
                MAX_WRITTEN_FRAME - 5
            } else {
                MAX_WRITTEN_FRAME
            };
            let (chunk, tail) = rest.split_at(rest.len().min(room));
            let last = tail.is_empty();
            let (kind, mut flags) = if first {
                (
                    FRAME_HEADERS,
                    if block.end_stream { FLAG_END_STREAM } else { 0 },
                )
            } else {
                (FRAME_CONTINUATION, 0)
            };
            if last {
                flags |= FLAG_END_HEADERS;
            }
            let priority = if first { block.priority } else { None };
            if priority.is_some() {
                flags |= FLAG_PRIORITY;
            }
            let len = chunk.len() + priority.map_or(0, |p| p.len());
            out.reserve(FRAME_HEADER_LEN + len);
            out.put_slice(&(len as u32).to_be_bytes()[1..]);
            out.put_u8(kind);
            out.put_u8(flags);
            out.put_u32(block.stream_id);
            if let Some(p) = priority {
                out.put_slice(&p);
            }
            out.put_slice(chunk);
            if last {
                break;
            }
            first = false;
            rest = tail;
        }
    }
}

/// Splits a HEADERS payload into its priority fields and its HPACK fragment,
/// without padding; `None` if the lengths do not fit.
fn headers_payload(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut body = payload;
    let mut pad = 0usize;
    if flags & FLAG_PADDED != 0 {
        let (&p, rest) = body.split_first()?;
        pad = p as usize;
        body = rest;
    }
    let mut priority = None;
    if flags & FLAG_PRIORITY != 0 {
        if body.len() < 5 {
            return None;
        }
        let (p, rest) = body.split_at(5);
        priority = Some(p.try_into().expect("5 bytes"));
        body = rest;
    }
    if pad > body.len() {
        return None;
    }
    Some((priority, &body[..body.len() - pad]))
}

fn valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

fn authority_is_invalid(fields: &[(Vec<u8>, Vec<u8>)]) -> bool {
    fields
        .iter()
        .any(|(name, value)| name == b":authority" && !valid_authority(value))
}

/// An HPACK string literal, not Huffman-coded (RFC 7541 §5.2).
fn write_string(s: &[u8], out: &mut Vec<u8>) {
    loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, out)
        .expect("writing to a Vec cannot fail");
    out.extend_from_slice(s);
}

#[cfg(test)]
mod tests;
