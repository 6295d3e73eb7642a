use super::*;

const SOCKET_AUTHORITY: &[u8] = b"%2Frun%2Ftessera%2Fworkload.sock";

fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream_id.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn request(authority: &[u8], method: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    [
        (":method", "POST".as_bytes()),
        (":scheme", b"http"),
        (":path", method.as_bytes()),
        (":authority", authority),
        ("te", b"trailers"),
        ("content-type", b"application/grpc"),
        (
            "user-agent",
            b"grpc-python/1.85.1 grpc-c/51.0.0 (linux; chttp2)",
        ),
        ("workload.spiffe.io", b"true"),
    ]
    .into_iter()
    .map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec()))
    .collect()
}

/// A client connection as gRPC C-core writes it: preface, SETTINGS, then per
/// request a HEADERS frame (HPACK with the dynamic table in use) and a DATA frame.
fn client_bytes(authority: &[u8], requests: usize) -> Vec<u8> {
    let mut encoder = loona_hpack::Encoder::new();
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 0]));
    for i in 0..requests {
        let stream = 1 + 2 * i as u32;
        let fields = request(authority, &format!("/tessera.v1.Tasks/Call{i}"));
        let block = encoder.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])));
        bytes.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, stream, &block));
        bytes.extend(frame(0x0, FLAG_END_STREAM, stream, &[0, 0, 0, 0, 2, 8, 1]));
    }
    bytes
}

fn feed_all(input: &[u8], chunk: usize) -> Result<(Vec<u8>, Rewriter), AuthorityRewriteError> {
    let mut rewriter = Rewriter::default();
    let mut pending = BytesMut::new();
    let mut out = BytesMut::new();
    for piece in input.chunks(chunk) {
        pending.extend_from_slice(piece);
        rewriter.feed(&mut pending, &mut out)?;
    }
    assert!(pending.is_empty(), "{} bytes left unread", pending.len());
    Ok((out.to_vec(), rewriter))
}

/// A parsed frame: (type, flags, stream, payload).
type Frame = (u8, u8, u32, Vec<u8>);

fn frames(mut bytes: &[u8]) -> Vec<Frame> {
    assert!(bytes.starts_with(PREFACE));
    bytes = &bytes[PREFACE.len()..];
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
        out.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
        bytes = &bytes[9 + len..];
    }
    out
}

/// The header lists h2 would decode from `frames`, with one decoder for the
/// connection as h2 keeps it.
fn header_lists(frames: &[Frame]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut decoder = loona_hpack::Decoder::new();
    let mut lists = Vec::new();
    let mut block = Vec::new();
    for (kind, flags, _, payload) in frames {
        if *kind == FRAME_HEADERS || *kind == FRAME_CONTINUATION {
            let (_, fragment) = if *kind == FRAME_HEADERS {
                headers_payload(*flags, payload).unwrap()
            } else {
                (None, &payload[..])
            };
            block.extend_from_slice(fragment);
            if flags & FLAG_END_HEADERS != 0 {
                lists.push(decoder.decode(&block).unwrap());
                block.clear();
            }
        }
    }
    lists
}

#[test]
fn socket_path_authority_is_replaced_in_every_request_of_the_connection() {
    let input = client_bytes(SOCKET_AUTHORITY, 3);
    let (out, rewriter) = feed_all(&input, input.len()).unwrap();
    assert!(rewriter.is_rewriting());
    assert_eq!(rewriter.rewritten_blocks(), 3);
    let lists = header_lists(&frames(&out));
    assert_eq!(lists.len(), 3);
    for (i, list) in lists.iter().enumerate() {
        let mut expected = request(b"localhost", &format!("/tessera.v1.Tasks/Call{i}"));
        expected.sort();
        let mut got = list.clone();
        got.sort();
        assert_eq!(got, expected, "request {i}");
    }
    // Frames other than headers are untouched, in order.
    let data: Vec<_> = frames(&out).into_iter().filter(|f| f.0 == 0).collect();
    assert_eq!(data.len(), 3);
    assert!(
        data.iter()
            .all(|f| f.3 == [0, 0, 0, 0, 2, 8, 1] && f.1 == FLAG_END_STREAM)
    );
}

#[test]
fn rewritten_blocks_never_enter_the_servers_dynamic_table() {
    let input = client_bytes(SOCKET_AUTHORITY, 2);
    let (out, _) = feed_all(&input, input.len()).unwrap();
    for (kind, _, _, payload) in frames(&out) {
        if kind != FRAME_HEADERS {
            continue;
        }
        // Every field is "literal without indexing, new name": a 0x00 byte,
        // then two raw strings. Walk them all.
        let mut rest = &payload[..];
        while !rest.is_empty() {
            assert_eq!(rest[0], 0, "a field that is not a literal without indexing");
            rest = &rest[1..];
            for _ in 0..2 {
                assert!(rest[0] < 0x7f, "short raw string expected");
                let len = rest[0] as usize;
                rest = &rest[1 + len..];
            }
        }
    }
}

#[test]
fn a_valid_authority_passes_through_byte_for_byte() {
    for authority in [&b"localhost"[..], b"tessera.local:443", b"[::1]:8080"] {
        let input = client_bytes(authority, 3);
        let (out, rewriter) = feed_all(&input, input.len()).unwrap();
        assert!(rewriter.is_passthrough());
        assert_eq!(out, input);
    }
}

#[test]
fn raw_and_encoded_socket_paths_are_both_repaired() {
    for authority in [&b"/run/tessera/workload.sock"[..], SOCKET_AUTHORITY, b"a b"] {
        let input = client_bytes(authority, 1);
        let (out, rewriter) = feed_all(&input, input.len()).unwrap();
        assert!(
            rewriter.is_rewriting(),
            "{:?}",
            String::from_utf8_lossy(authority)
        );
        let lists = header_lists(&frames(&out));
        assert!(lists[0].contains(&(b":authority".to_vec(), b"localhost".to_vec())));
    }
}

#[test]
fn the_output_does_not_depend_on_how_reads_split_the_input() {
    let input = client_bytes(SOCKET_AUTHORITY, 4);
    let (whole, _) = feed_all(&input, input.len()).unwrap();
    for chunk in [1, 2, 7, 9, 10, 64] {
        let (split, _) = feed_all(&input, chunk).unwrap();
        assert_eq!(split, whole, "chunk {chunk}");
    }
}

#[test]
fn padding_priority_continuation_and_end_stream_are_kept() {
    let fields = request(
        SOCKET_AUTHORITY,
        "/spiffe.workload.SpiffeWorkloadAPI/FetchX509SVID",
    );
    let block = loona_hpack::Encoder::new().encode(fields.iter().map(|(n, v)| (&n[..], &v[..])));
    let (a, b) = block.split_at(block.len() / 2);
    let mut headers = vec![3u8]; // pad length
    headers.extend_from_slice(&[0x80, 0, 0, 0, 7]); // exclusive dependency on stream 0, weight 8
    headers.extend_from_slice(a);
    headers.extend_from_slice(&[0, 0, 0]);
    let mut input = PREFACE.to_vec();
    input.extend(frame(
        FRAME_HEADERS,
        FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
        5,
        &headers,
    ));
    input.extend(frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 5, b));
    let (out, _) = feed_all(&input, 3).unwrap();
    let out_frames = frames(&out);
    assert_eq!(out_frames.len(), 1);
    let (kind, flags, stream, payload) = &out_frames[0];
    assert_eq!((*kind, *stream), (FRAME_HEADERS, 5));
    assert_eq!(*flags, FLAG_END_STREAM | FLAG_END_HEADERS | FLAG_PRIORITY);
    assert_eq!(&payload[..5], &[0x80, 0, 0, 0, 7]);
    let lists = header_lists(&out_frames);
    assert!(lists[0].contains(&(b":authority".to_vec(), b"localhost".to_vec())));
    assert_eq!(lists[0].len(), fields.len());
}

#[test]
fn a_large_rewritten_block_is_split_into_frames_every_server_accepts() {
    let mut fields = request(SOCKET_AUTHORITY, "/tessera.v1.Tasks/BeginTask");
    fields.push((b"x-big".to_vec(), vec![b'a'; 40_000]));
    let block = loona_hpack::Encoder::new().encode(fields.iter().map(|(n, v)| (&n[..], &v[..])));
    let mut input = PREFACE.to_vec();
    for (i, chunk) in block.chunks(10_000).enumerate() {
        let last = (i + 1) * 10_000 >= block.len();
        let kind = if i == 0 {
            FRAME_HEADERS
        } else {
            FRAME_CONTINUATION
        };
        input.extend(frame(
            kind,
            if last { FLAG_END_HEADERS } else { 0 },
            1,
            chunk,
        ));
    }
    let (out, _) = feed_all(&input, 4096).unwrap();
    let out_frames = frames(&out);
    assert!(out_frames.len() >= 3);
    assert!(out_frames.iter().all(|f| f.3.len() <= MAX_WRITTEN_FRAME));
    assert_eq!(out_frames[0].0, FRAME_HEADERS);
    assert!(
        out_frames[1..]
            .iter()
            .all(|f| f.0 == FRAME_CONTINUATION && f.2 == 1)
    );
    assert_eq!(header_lists(&out_frames)[0].len(), fields.len());
}

#[test]
fn an_oversized_header_block_closes_a_rewritten_connection() {
    let mut input = client_bytes(SOCKET_AUTHORITY, 1);
    // A HEADERS frame, then CONTINUATIONs that never end the block.
    input.extend(frame(FRAME_HEADERS, 0, 3, &[0x82]));
    for _ in 0..8 {
        input.extend(frame(FRAME_CONTINUATION, 0, 3, &[0x82; 10_000]));
    }
    let err = feed_all(&input, 1024).unwrap_err();
    assert!(
        matches!(err, AuthorityRewriteError::HeaderBlockTooLarge { .. }),
        "{err}"
    );
}

#[test]
fn an_hpack_bomb_is_refused_without_decoding_into_memory() {
    // One 4 000-byte entry in the dynamic table, then 60 000 one-byte references
    // to it: 240 MB if decoded naively.
    let mut encoder = loona_hpack::Encoder::new();
    let mut fields = request(SOCKET_AUTHORITY, "/a");
    fields.push((b"x-fill".to_vec(), vec![b'f'; 4_000]));
    let mut input = PREFACE.to_vec();
    let block = encoder.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])));
    input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &block));
    let mut bomb = Vec::new();
    for _ in 0..6 {
        bomb.extend(std::iter::repeat_n(0x80 | 62u8, 10_000));
    }
    let mut stream = 3;
    for chunk in bomb.chunks(16_000).collect::<Vec<_>>().chunks(4) {
        let mut first = true;
        for (i, c) in chunk.iter().enumerate() {
            let kind = if first {
                FRAME_HEADERS
            } else {
                FRAME_CONTINUATION
            };
            let flags = if i + 1 == chunk.len() {
                FLAG_END_HEADERS
            } else {
                0
            };
            input.extend(frame(kind, flags, stream, c));
            first = false;
        }
        stream += 2;
    }
    let err = feed_all(&input, 8192).unwrap_err();
    assert!(
        matches!(err, AuthorityRewriteError::DecodedHeadersTooLarge { .. }),
        "{err}"
    );
}

#[test]
fn malformed_hpack_closes_a_rewritten_connection_but_not_a_deciding_one() {
    // Index 200 is in no table.
    let mut bad = PREFACE.to_vec();
    bad.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &[0xff, 0x49]));
    let (out, rewriter) = feed_all(&bad, bad.len()).unwrap();
    assert!(
        rewriter.is_passthrough(),
        "h2 reports the first block's error itself"
    );
    assert_eq!(out, bad);

    let mut input = client_bytes(SOCKET_AUTHORITY, 1);
    input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 3, &[0xff, 0x49]));
    assert!(matches!(
        feed_all(&input, input.len()).unwrap_err(),
        AuthorityRewriteError::Hpack(_)
    ));
}

#[test]
fn interleaved_frames_inside_a_header_block_close_a_rewritten_connection() {
    let mut input = client_bytes(SOCKET_AUTHORITY, 1);
    input.extend(frame(FRAME_HEADERS, 0, 3, &[0x82]));
    input.extend(frame(0x6, 0, 0, &[0; 8])); // PING in the middle of a block
    assert!(matches!(
        feed_all(&input, input.len()).unwrap_err(),
        AuthorityRewriteError::Framing(_)
    ));
}

#[test]
fn bytes_that_are_not_http2_pass_through() {
    let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let (out, rewriter) = feed_all(&input, 5).unwrap();
    assert!(rewriter.is_passthrough());
    assert_eq!(out, input);
}

#[tokio::test]
async fn the_async_wrapper_reads_what_the_rewriter_writes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let input = client_bytes(SOCKET_AUTHORITY, 2);
    let (expected, _) = feed_all(&input, input.len()).unwrap();
    let (mut client, server) = tokio::io::duplex(64);
    let writer = tokio::spawn({
        let input = input.clone();
        async move {
            for piece in input.chunks(13) {
                client.write_all(piece).await.unwrap();
            }
            client.shutdown().await.unwrap();
        }
    });
    let mut wrapped = AuthorityRewrite::new(server);
    let mut got = Vec::new();
    wrapped.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    assert_eq!(got, expected);
}
