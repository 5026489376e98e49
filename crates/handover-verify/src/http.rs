//! The HTTP/1.1 the load speaks: the request it sends and a small response parser.
//!
//! The parser is deliberately stateless: [`parse_response`] is handed everything
//! received so far on a connection and either finds one complete response at its
//! start, says more bytes are needed, or says why the bytes are not HTTP. Only
//! the response head and chunk-size lines are scanned; body bytes are skipped by
//! length, so calling it again after every read costs little.
//!
//! ```
//! use handover_verify::http::{parse_response, pid_from_body};
//!
//! let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\npid=42\n";
//! // Not complete yet: more bytes are needed.
//! assert_eq!(parse_response(&wire[..20], false), Ok(None));
//! let (response, used) = parse_response(wire, false).unwrap().unwrap();
//! assert_eq!((response.status, used), (200, wire.len()));
//! assert_eq!(pid_from_body(&response.body), Some(42));
//! ```

use std::fmt::Write as _;

/// Largest response head (status line and headers) accepted, in bytes.
pub const MAX_HEAD: usize = 64 * 1024;
/// Largest response body accepted, in bytes.
pub const MAX_BODY: usize = 64 * 1024 * 1024;
/// Most header lines accepted in one response head.
pub const MAX_HEADERS: usize = 128;
/// Longest chunk-size or trailer line accepted in a chunked body, in bytes.
const MAX_CHUNK_LINE: usize = 4096;
/// How much of an offending line an error message quotes.
const QUOTE: usize = 80;

/// One complete HTTP/1.x response.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Response {
    /// The status code, for example 200.
    pub status: u16,
    /// The `x` of `HTTP/1.x`: 0 or 1.
    pub minor_version: u8,
    /// The body, with any chunked transfer coding removed.
    pub body: Vec<u8>,
    /// True when the connection must not carry another request after this
    /// response: `Connection: close`, HTTP/1.0 without keep-alive, a body that
    /// ends when the connection does, or a `101` answer.
    pub close: bool,
}

/// Why received bytes are not (yet) a valid HTTP/1.x response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The connection ended before the response was complete.
    #[error(
        "the connection ended after {received} response bytes, before the {expected} was \
         complete"
    )]
    Truncated {
        /// Bytes of the response received before the end.
        received: usize,
        /// Which part was being waited for: `status line`, `headers`, `body`.
        expected: &'static str,
    },
    /// The first line is not `HTTP/1.x NNN reason`.
    #[error(
        "bad status line {line:?}: expected `HTTP/1.0` or `HTTP/1.1`, a space and a \
         3-digit status; the peer does not speak HTTP/1"
    )]
    StatusLine {
        /// The line received (shortened, lossily decoded).
        line: String,
    },
    /// A header line is not `name: value`.
    #[error(
        "bad header line {line:?}: expected `name: value` with a token name and no \
         line folding or bare CR; fix the server's response headers"
    )]
    HeaderLine {
        /// The line received (shortened, lossily decoded).
        line: String,
    },
    /// The head did not end within [`MAX_HEAD`] bytes or [`MAX_HEADERS`] lines.
    #[error(
        "the response head exceeds {limit} {unit} without ending in an empty line; \
         the peer is not sending HTTP or its headers are far too large"
    )]
    HeadTooLarge {
        /// The limit that was passed.
        limit: usize,
        /// `bytes` or `header lines`.
        unit: &'static str,
    },
    /// `Content-Length` is not a single decimal number.
    #[error(
        "bad Content-Length {value:?}: expected one decimal number of bytes \
         (repeated values must agree)"
    )]
    ContentLength {
        /// The value(s) received.
        value: String,
    },
    /// The body is larger than [`MAX_BODY`].
    #[error(
        "the body announces {length} bytes, more than the {limit}-byte limit; \
         point the load at a smaller resource"
    )]
    BodyTooLarge {
        /// The announced or accumulated body size.
        length: u64,
        /// The limit.
        limit: usize,
    },
    /// A chunked body is malformed.
    #[error(
        "bad chunked body: {what}; expected a hexadecimal size line, that many bytes, \
         CRLF, and a final `0` chunk"
    )]
    Chunk {
        /// What was wrong.
        what: String,
    },
}

/// How the body of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(usize),
    Chunked,
    UntilClose,
}

/// Parses one response at the start of `buf`.
///
/// `eof` tells whether the connection has ended, so no byte will follow `buf`.
/// Returns `Ok(Some((response, consumed)))` when a complete response occupies
/// `buf[..consumed]`, `Ok(None)` when more bytes are needed (never when `eof`),
/// and an error when the bytes cannot be HTTP or ended too early
/// ([`ParseError::Truncated`], only when `eof`). Interim `1xx` responses other
/// than `101` are skipped. Never panics, whatever the input.
pub fn parse_response(buf: &[u8], eof: bool) -> Result<Option<(Response, usize)>, ParseError> {
    let mut start = 0;
    loop {
        let Some(head) = parse_head(buf, start, eof)? else {
            return Ok(None);
        };
        if (100..200).contains(&head.status) && head.status != 101 {
            // Interim response (100 Continue, 103 Early Hints): the real one follows.
            start = head.end;
            continue;
        }
        let body_start = head.end;
        let (body, end) = match head.framing {
            Framing::Empty => (Vec::new(), body_start),
            Framing::Length(len) => {
                let end = body_start.saturating_add(len);
                if buf.len() < end {
                    return if eof {
                        Err(truncated(buf, "body"))
                    } else {
                        Ok(None)
                    };
                }
                (buf[body_start..end].to_vec(), end)
            }
            Framing::Chunked => match scan_chunked(buf, body_start, None)? {
                Some(end) => {
                    let mut body = Vec::new();
                    scan_chunked(buf, body_start, Some(&mut body))?;
                    (body, end)
                }
                None if eof => return Err(truncated(buf, "body")),
                None => return Ok(None),
            },
            Framing::UntilClose => {
                if !eof {
                    return Ok(None);
                }
                if buf.len() - body_start > MAX_BODY {
                    return Err(ParseError::BodyTooLarge {
                        length: (buf.len() - body_start) as u64,
                        limit: MAX_BODY,
                    });
                }
                (buf[body_start..].to_vec(), buf.len())
            }
        };
        let response = Response {
            status: head.status,
            minor_version: head.minor_version,
            body,
            close: head.close,
        };
        return Ok(Some((response, end)));
    }
}

/// Finds `pid=<N>` at the start of a line of `body` and returns `N`.
///
/// The number must be followed by a line end, a space or the end of the body.
/// Test servers and the project's example servers answer `pid=<N>\n`.
pub fn pid_from_body(body: &[u8]) -> Option<u32> {
    body.split(|&b| b == b'\n').find_map(|line| {
        let rest = line.strip_prefix(b"pid=")?;
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        match rest.get(digits) {
            None | Some(b'\r' | b' ' | b'\t') => {}
            Some(_) => return None,
        }
        if digits == 0 || digits > 10 {
            return None;
        }
        std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
    })
}

/// The bytes of a `GET` request for `path` with the given `Host` header,
/// adding `Connection: close` when `close` is true.
pub(crate) fn request_bytes(path: &str, host: &str, close: bool) -> Vec<u8> {
    let mut request = String::with_capacity(64 + path.len() + host.len());
    // Writing to a String cannot fail.
    let _ = write!(
        request,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: handover-verify\r\n"
    );
    if close {
        request.push_str("Connection: close\r\n");
    }
    request.push_str("\r\n");
    request.into_bytes()
}

/// The parsed head of a response.
struct Head {
    status: u16,
    minor_version: u8,
    framing: Framing,
    close: bool,
    /// Offset just past the empty line that ends the head.
    end: usize,
}

fn truncated(buf: &[u8], expected: &'static str) -> ParseError {
    ParseError::Truncated {
        received: buf.len(),
        expected,
    }
}

fn quote(line: &[u8]) -> String {
    let shown = &line[..line.len().min(QUOTE)];
    let mut text = String::from_utf8_lossy(shown).into_owned();
    if line.len() > QUOTE {
        text.push('…');
    }
    text
}

/// Returns the line starting at `pos` without its `\n` or `\r\n`, and the
/// offset after it; `None` when no `\n` follows yet.
fn line_at(buf: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(pos..)?;
    let nl = rest.iter().position(|&b| b == b'\n')?;
    let line = &rest[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Some((line, pos + nl + 1))
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Splits a comma-separated header value into trimmed, non-empty elements.
fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

fn parse_status_line(line: &[u8]) -> Option<(u8, u16)> {
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let (&minor, rest) = rest.split_first()?;
    let minor_version = match minor {
        b'0' => 0,
        b'1' => 1,
        _ => return None,
    };
    let rest = rest.strip_prefix(b" ")?;
    let code = rest.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    match rest.get(3) {
        None | Some(b' ') => {}
        Some(_) => return None,
    }
    if rest.contains(&b'\r') {
        return None;
    }
    let status = code
        .iter()
        .fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
    (status >= 100).then_some((minor_version, status))
}

fn parse_head(buf: &[u8], start: usize, eof: bool) -> Result<Option<Head>, ParseError> {
    let need_more = |expected| {
        if buf.len().saturating_sub(start) > MAX_HEAD {
            Err(ParseError::HeadTooLarge {
                limit: MAX_HEAD,
                unit: "bytes",
            })
        } else if eof {
            Err(truncated(buf, expected))
        } else {
            Ok(None)
        }
    };
    let Some((status_line, mut pos)) = line_at(buf, start) else {
        // Reject garbage early instead of waiting for a newline that may never come.
        let partial = buf.get(start..).unwrap_or_default();
        let prefix = b"HTTP/1.";
        let n = partial.len().min(prefix.len());
        if partial[..n] != prefix[..n] {
            return Err(ParseError::StatusLine {
                line: quote(partial),
            });
        }
        return need_more("status line");
    };
    let Some((minor_version, status)) = parse_status_line(status_line) else {
        return Err(ParseError::StatusLine {
            line: quote(status_line),
        });
    };

    let mut content_length: Option<u64> = None;
    let mut length_values = String::new();
    let mut chunked = false;
    let mut has_transfer_encoding = false;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut headers = 0usize;
    loop {
        if pos - start > MAX_HEAD {
            return Err(ParseError::HeadTooLarge {
                limit: MAX_HEAD,
                unit: "bytes",
            });
        }
        let Some((line, next)) = line_at(buf, pos) else {
            return need_more("headers");
        };
        pos = next;
        if line.is_empty() {
            break;
        }
        headers += 1;
        if headers > MAX_HEADERS {
            return Err(ParseError::HeadTooLarge {
                limit: MAX_HEADERS,
                unit: "header lines",
            });
        }
        let bad = || ParseError::HeaderLine { line: quote(line) };
        let colon = line.iter().position(|&b| b == b':').ok_or_else(bad)?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) || value.contains(&b'\r') {
            return Err(bad());
        }
        let value = trim_ows(value);
        if name.eq_ignore_ascii_case(b"content-length") {
            if !length_values.is_empty() {
                length_values.push_str(", ");
            }
            length_values.push_str(&quote(value));
            let bad_length = || ParseError::ContentLength {
                value: length_values.clone(),
            };
            let mut any = false;
            for element in value.split(|&b| b == b',').map(trim_ows) {
                any = true;
                if element.is_empty()
                    || element.len() > 19
                    || !element.iter().all(u8::is_ascii_digit)
                {
                    return Err(bad_length());
                }
                let n = element
                    .iter()
                    .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0'));
                if content_length.is_some_and(|previous| previous != n) {
                    return Err(bad_length());
                }
                content_length = Some(n);
            }
            if !any {
                return Err(bad_length());
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            has_transfer_encoding = true;
            // Only the last coding decides whether the body is chunked.
            if let Some(last) = list_elements(value).last() {
                chunked = last.eq_ignore_ascii_case(b"chunked");
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in list_elements(value) {
                conn_close |= token.eq_ignore_ascii_case(b"close");
                conn_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }

    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Empty
    } else if has_transfer_encoding {
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else if let Some(length) = content_length {
        if length > MAX_BODY as u64 {
            return Err(ParseError::BodyTooLarge {
                length,
                limit: MAX_BODY,
            });
        }
        // Cannot truncate: length <= MAX_BODY, which fits in usize.
        Framing::Length(length as usize)
    } else {
        Framing::UntilClose
    };
    let close = conn_close
        || (minor_version == 0 && !conn_keep_alive)
        || framing == Framing::UntilClose
        // A response with both is suspicious (RFC 9112 §6.3): do not reuse.
        || (has_transfer_encoding && content_length.is_some())
        || status == 101;
    Ok(Some(Head {
        status,
        minor_version,
        framing,
        close,
        end: pos,
    }))
}

/// Walks a chunked body starting at `pos`. Returns the offset just past the
/// body when it is complete, `None` when more bytes are needed. Appends the
/// decoded data to `sink` when given.
fn scan_chunked(
    buf: &[u8],
    mut pos: usize,
    mut sink: Option<&mut Vec<u8>>,
) -> Result<Option<usize>, ParseError> {
    let chunk_error = |what: String| ParseError::Chunk { what };
    let mut total: u64 = 0;
    loop {
        let Some((line, next)) = line_at(buf, pos) else {
            if buf.len().saturating_sub(pos) > MAX_CHUNK_LINE {
                return Err(chunk_error(format!(
                    "chunk-size line longer than {MAX_CHUNK_LINE} bytes"
                )));
            }
            return Ok(None);
        };
        let size_text = trim_ows(line.split(|&b| b == b';').next().unwrap_or_default());
        if size_text.is_empty()
            || size_text.len() > 15
            || !size_text.iter().all(u8::is_ascii_hexdigit)
            || line.contains(&b'\r')
        {
            return Err(chunk_error(format!(
                "bad chunk-size line {:?}",
                quote(line)
            )));
        }
        let size = size_text.iter().fold(0u64, |acc, &d| {
            // Cannot fail: all bytes are hex digits.
            acc * 16 + u64::from((d as char).to_digit(16).unwrap_or(0))
        });
        pos = next;
        if size == 0 {
            // Trailer section: header lines until an empty line.
            loop {
                let Some((line, next)) = line_at(buf, pos) else {
                    if buf.len().saturating_sub(pos) > MAX_CHUNK_LINE {
                        return Err(chunk_error(format!(
                            "trailer line longer than {MAX_CHUNK_LINE} bytes"
                        )));
                    }
                    return Ok(None);
                };
                pos = next;
                if line.is_empty() {
                    return Ok(Some(pos));
                }
                if !line.contains(&b':') || line.contains(&b'\r') {
                    return Err(chunk_error(format!("bad trailer line {:?}", quote(line))));
                }
            }
        }
        total = total.saturating_add(size);
        if total > MAX_BODY as u64 {
            return Err(ParseError::BodyTooLarge {
                length: total,
                limit: MAX_BODY,
            });
        }
        // Cannot truncate: size <= MAX_BODY.
        let data_end = pos.saturating_add(size as usize);
        if buf.len() < data_end {
            return Ok(None);
        }
        let data = &buf[pos..data_end];
        match buf.get(data_end..data_end.saturating_add(2)) {
            None | Some([b'\r']) => return Ok(None),
            Some([b'\n', ..]) => pos = data_end + 1,
            Some([b'\r', b'\n']) => pos = data_end + 2,
            Some(_) => {
                return Err(chunk_error(format!(
                    "chunk of {size} bytes not followed by CRLF"
                )));
            }
        }
        if let Some(sink) = sink.as_deref_mut() {
            sink.extend_from_slice(data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(wire: &[u8]) -> Response {
        match parse_response(wire, false) {
            Ok(Some((response, used))) => {
                assert_eq!(used, wire.len());
                response
            }
            other => panic!("expected a complete response, got {other:?}"),
        }
    }

    #[test]
    fn content_length_and_keep_alive() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc");
        assert_eq!(
            (r.status, r.body.as_slice(), r.close),
            (200, &b"abc"[..], false)
        );
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let r = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n\
              3;x=y\r\nabc\r\n1\r\nd\r\n0\r\nX-Trailer: 1\r\n\r\n",
        );
        assert_eq!(r.body, b"abcd");
        assert!(!r.close);
    }

    #[test]
    fn connection_close_and_http10() {
        assert!(
            parse(b"HTTP/1.1 200 OK\r\nConnection: foo, close\r\nContent-Length: 0\r\n\r\n").close
        );
        assert!(parse(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").close);
        assert!(
            !parse(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n").close
        );
    }

    #[test]
    fn until_close_needs_eof() {
        let wire = b"HTTP/1.1 200 OK\r\n\r\npid=7\n";
        assert_eq!(parse_response(wire, false), Ok(None));
        let (r, used) = parse_response(wire, true).unwrap().unwrap();
        assert_eq!(
            (r.body.as_slice(), used, r.close),
            (&b"pid=7\n"[..], wire.len(), true)
        );
    }

    #[test]
    fn interim_responses_are_skipped() {
        let r = parse(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n",
        );
        assert_eq!((r.status, r.body.len()), (204, 0));
    }

    #[test]
    fn errors_are_specific() {
        assert!(matches!(
            parse_response(b"SSH-2.0", false),
            Err(ParseError::StatusLine { .. })
        ));
        assert!(matches!(
            parse_response(b"HTTP/1.1 2x0 OK\r\n", false),
            Err(ParseError::StatusLine { .. })
        ));
        assert!(matches!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false
            ),
            Err(ParseError::ContentLength { .. })
        ));
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\n folded\r\n\r\n", false),
            Err(ParseError::HeaderLine { .. })
        ));
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", true),
            Err(ParseError::Truncated {
                received: 40,
                expected: "body"
            })
        ));
        assert!(matches!(
            parse_response(b"", true),
            Err(ParseError::Truncated { received: 0, .. })
        ));
        assert!(matches!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                false
            ),
            Err(ParseError::Chunk { .. })
        ));
        let err = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
            false,
        );
        assert!(matches!(err, Err(ParseError::BodyTooLarge { .. })));
    }

    #[test]
    fn pid_parsing() {
        assert_eq!(pid_from_body(b"pid=123\n"), Some(123));
        assert_eq!(pid_from_body(b"hello\npid=9"), Some(9));
        assert_eq!(pid_from_body(b"pid=9x\n"), None);
        assert_eq!(pid_from_body(b"xpid=9\n"), None);
        assert_eq!(pid_from_body(b"pid=\n"), None);
        assert_eq!(pid_from_body(b"pid=99999999999\n"), None);
    }

    #[test]
    fn request_shape() {
        assert_eq!(
            request_bytes("/x", "h:1", true),
            b"GET /x HTTP/1.1\r\nHost: h:1\r\nUser-Agent: handover-verify\r\nConnection: close\r\n\r\n"
        );
    }
}
