//! HTTP/1.1 message framing for a byte relay (RFC 9112): where a head ends,
//! what its fields are, how its body is framed and where the body ends.
//!
//! Owns: the head parsers [`parse_request`] and [`parse_response`], which
//! return [`Field`]s as ranges into the caller's buffer (zero-copy); the
//! framing decisions [`request_framing`] and [`response_framing`]
//! (RFC 9112 §6.3); the field helpers [`field_is`], [`has_token`] and
//! [`keep_alive`] (§9.3); and [`Body`], which walks a body of any
//! [`Framing`] across reads of any size to find where the message ends
//! (§6, §7.1), without buffering and without changing a byte.
//!
//! Guarantees:
//!
//! - **Strict, because this is a proxy.** Two parsers that disagree on
//!   where a message ends are how requests get smuggled, so every
//!   leniency RFC 9112 permits is refused instead: lines end in CRLF only
//!   (a bare LF or CR is [`HeadError::Malformed`], §2.2); obsolete line
//!   folding is refused (§5.2); whitespace between a field name and its
//!   colon is refused (§5.1); a request with both `Transfer-Encoding` and
//!   `Content-Length` is refused ([`FramingError::LengthWithTransferEncoding`],
//!   §6.3 item 3), as is one whose final transfer coding is not `chunked`
//!   (§6.3 item 4); `Content-Length` values that differ are refused
//!   (§6.3 item 5); chunked bodies accept CRLF only, too.
//! - **Bounded work, no panics.** Every function does work linear in the
//!   bytes it is given (a head parser reads at most `max_head` bytes, a
//!   chunk-size line is cut off at [`MAX_CHUNK_LINE`] bytes and the
//!   trailer section at [`MAX_TRAILERS`]) and returns on every input;
//!   ranges that do not fit the buffer given to a helper are treated as
//!   absent, never indexed.
//! - **No allocation** except what the caller's reused `Vec<Field>` needs
//!   to grow; no I/O, no clock, no HTTP library.
//!
//! # Calling order
//!
//! Read into a buffer; call [`parse_request`] (or [`parse_response`]) on
//! the whole buffer until it returns a head; ask [`request_framing`] (or
//! [`response_framing`]) how its body is framed; make a [`Body`] and feed
//! it `buf[head.len..]` and then every later read through
//! [`Body::advance`]; the bytes it consumed are the message's, the rest
//! belong to the next message on the connection.
//!
//! Transfer-Encoding on an HTTP/1.0 message is faulty framing (§6.1); the
//! framing functions do not see the version, so a caller that wants to
//! refuse it checks `minor == 0` and [`field_is`] `transfer-encoding`.
//! Trailer fields are checked for CRLF line ends and their size only;
//! they never affect framing.

use core::ops::Range;

use thiserror::Error;

/// The most empty lines (CRLF) skipped before a request line (RFC 9112
/// §2.2 asks a server to ignore at least one).
pub const MAX_EMPTY_LINES: usize = 4;

/// The longest chunk-size line (size, extensions), in bytes before its
/// CRLF.
pub const MAX_CHUNK_LINE: usize = 4096;

/// The largest trailer section of a chunked body, in bytes, including the
/// CRLF of every line and of the final empty line.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// One header field line of a parsed head, as ranges into the buffer given
/// to the parser.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// The field name (a token, RFC 9110 §5.1).
    pub name: Range<usize>,
    /// The field value with leading and trailing SP/HTAB trimmed (may be
    /// empty).
    pub value: Range<usize>,
    /// The whole line, from the name through its terminating CRLF, so a
    /// relay can copy untouched lines verbatim.
    pub line: Range<usize>,
}

/// A parsed request head; ranges index the buffer given to
/// [`parse_request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// The method (a token).
    pub method: Range<usize>,
    /// The request target: one or more visible ASCII bytes.
    pub target: Range<usize>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// Bytes of the head from the start of the buffer (skipped empty lines
    /// included) through the final empty line: the body starts at
    /// `buf[len..]`.
    pub len: usize,
}

/// A parsed response head; ranges index the buffer given to
/// [`parse_response`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code, 100 to 599 (RFC 9110 §15).
    pub status: u16,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// The reason phrase as sent (may be empty, may hold SP and HTAB).
    pub reason: Range<usize>,
    /// Bytes of the head through the final empty line: the body starts at
    /// `buf[len..]`.
    pub len: usize,
}

/// Why a head was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum HeadError {
    /// No complete head within the first `max_head` bytes (431, or 414
    /// when the request line alone does not fit).
    #[error("no end of head within the size limit")]
    TooLarge,
    /// More than `max_fields` field lines (431).
    #[error("more header fields than the limit")]
    TooManyFields,
    /// The start line or a field line breaks RFC 9112; the text says
    /// which part (400, or 502 for a response).
    #[error("malformed head: {0}")]
    Malformed(&'static str),
    /// A well-formed version other than HTTP/1.0 and HTTP/1.1 (505).
    #[error("HTTP version not supported")]
    Version,
}

// Byte classes, one bit each, looked up in `CLASS`.
/// `tchar` (RFC 9110 §5.6.2): methods, field names.
const TCHAR: u8 = 1;
/// VCHAR (0x21..=0x7e): request targets.
const VISIBLE: u8 = 2;
/// HTAB, SP, VCHAR and obs-text: field values, reason phrases, chunk
/// extensions.
const TEXT: u8 = 4;
/// SP and HTAB (OWS).
const WS: u8 = 8;

const fn classes() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let mut c = 0;
        if super::head::is_tchar(b) {
            c |= TCHAR;
        }
        if b >= 0x21 && b <= 0x7e {
            c |= VISIBLE;
        }
        if b == b'\t' || b == b' ' || (b >= 0x21 && b != 0x7f) {
            c |= TEXT;
        }
        if b == b'\t' || b == b' ' {
            c |= WS;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CLASS: [u8; 256] = classes();

#[inline]
fn is(b: u8, class: u8) -> bool {
    // A u8 always indexes a 256-entry table.
    CLASS[usize::from(b)] & class != 0
}

/// The index of the first byte at or after `from` outside `class`
/// (`w.len()` when there is none).
///
/// Values and targets make up most of a head, so for [`TEXT`] and
/// [`VISIBLE`] eight bytes at a time are first tested for any byte that
/// might end the run, and only a word that has one is looked at byte by
/// byte.
#[inline]
fn run(w: &[u8], from: usize, class: u8) -> usize {
    let Some(rest) = w.get(from..) else {
        return from;
    };
    let mut i = 0;
    if class == TEXT || class == VISIBLE {
        while let Some(word) = rest.get(i..i + 8) {
            let x = word.try_into().map_or(0, u64::from_le_bytes);
            if may_end_run(x, class) {
                if let Some(k) = word.iter().position(|&b| !is(b, class)) {
                    return from + i + k;
                }
            }
            i += 8;
        }
    }
    let tail = rest.get(i..).unwrap_or_default();
    from + i
        + tail
            .iter()
            .position(|&b| !is(b, class))
            .unwrap_or(tail.len())
}

/// Whether any byte of the word `x` may be outside `class` ([`TEXT`] or
/// [`VISIBLE`]); never false when one is (HTAB, in [`TEXT`], gives a
/// false alarm).
#[inline]
fn may_end_run(x: u64, class: u8) -> bool {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    // Some byte below n (n <= 0x80): the borrow of subtracting n reaches
    // the high bit of a byte whose own high bit is clear.
    let below = |n: u64| x.wrapping_sub(ONES * n) & !x & HIGH != 0;
    let del = x ^ (ONES * 0x7f);
    let has_del = del.wrapping_sub(ONES) & !del & HIGH != 0;
    if class == VISIBLE {
        below(0x21) || has_del || x & HIGH != 0
    } else {
        below(0x20) || has_del
    }
}

/// Why a scan of the head stopped early.
enum Stop {
    /// The bytes so far are a valid beginning; the head needs more.
    More,
    Bad(HeadError),
}

type Scan<T> = Result<T, Stop>;

fn malformed<T>(what: &'static str) -> Scan<T> {
    Err(Stop::Bad(HeadError::Malformed(what)))
}

/// Expects CRLF at `i` and returns the index after it; `what` names the
/// part of the line that a stray byte at `i` would belong to.
fn crlf(w: &[u8], i: usize, what: &'static str) -> Scan<usize> {
    match (w.get(i), w.get(i + 1)) {
        (None, _) | (Some(b'\r'), None) => Err(Stop::More),
        (Some(b'\r'), Some(b'\n')) => Ok(i + 2),
        (Some(b'\r'), Some(_)) => malformed("bare CR"),
        (Some(b'\n'), _) => malformed("bare LF"),
        (Some(_), _) => malformed(what),
    }
}

/// `HTTP/1.0` or `HTTP/1.1` at `i`: the minor version and the index after
/// it. Another `HTTP/DIGIT` is [`HeadError::Version`]; anything else is
/// malformed. Decided as soon as the bytes so far rule a version out.
fn version(w: &[u8], i: usize) -> Scan<(u8, usize)> {
    const SHAPE: &[u8; 8] = b"HTTP/1.1";
    let got = w.get(i..).unwrap_or_default();
    let http_digit = got.get(..5) == Some(b"HTTP/") && got.get(5).is_some_and(u8::is_ascii_digit);
    for (k, &want) in SHAPE.iter().enumerate() {
        let Some(&b) = got.get(k) else {
            return Err(Stop::More);
        };
        let fits = match k {
            5 | 7 => b.is_ascii_digit(),
            _ => b == want,
        };
        if !fits {
            return if http_digit {
                Err(Stop::Bad(HeadError::Version))
            } else {
                malformed("version")
            };
        }
    }
    match got.get(5..8) {
        Some(b"1.1") => Ok((1, i + 8)),
        Some(b"1.0") => Ok((0, i + 8)),
        _ => Err(Stop::Bad(HeadError::Version)),
    }
}

/// The request line (after up to [`MAX_EMPTY_LINES`] empty lines).
fn request_line(w: &[u8]) -> Scan<(Range<usize>, Range<usize>, u8, usize)> {
    let mut start = 0;
    for _ in 0..MAX_EMPTY_LINES {
        match (w.get(start), w.get(start + 1)) {
            (Some(b'\r'), Some(b'\n')) => start += 2,
            (Some(b'\r'), None) => return Err(Stop::More),
            _ => break,
        }
    }
    let method_end = run(w, start, TCHAR);
    match w.get(method_end) {
        None => return Err(Stop::More),
        Some(b' ') if method_end > start => {}
        Some(b'\r') if method_end == start => {
            crlf(w, method_end, "method")?;
            return malformed("too many empty lines before the request line");
        }
        Some(b'\n') => return malformed("bare LF"),
        Some(_) => return malformed("method"),
    }
    let target_start = method_end + 1;
    let target_end = run(w, target_start, VISIBLE);
    match w.get(target_end) {
        None => return Err(Stop::More),
        Some(b' ') if target_end > target_start => {}
        Some(_) => return malformed("request target"),
    }
    let (minor, version_end) = version(w, target_end + 1)?;
    let end = crlf(w, version_end, "version")?;
    Ok((start..method_end, target_start..target_end, minor, end))
}

/// The status line.
fn status_line(w: &[u8]) -> Scan<(u16, u8, Range<usize>, usize)> {
    let (minor, i) = version(w, 0)?;
    match w.get(i) {
        None => return Err(Stop::More),
        Some(b' ') => {}
        Some(_) => return malformed("status line"),
    }
    let mut status = 0u16;
    for k in 1..=3 {
        match w.get(i + k) {
            None => return Err(Stop::More),
            Some(&d) if d.is_ascii_digit() => status = status * 10 + u16::from(d - b'0'),
            Some(_) => return malformed("status code"),
        }
    }
    if !(100..=599).contains(&status) {
        return malformed("status code");
    }
    let after = i + 4;
    match w.get(after) {
        None => Err(Stop::More),
        Some(b' ') => {
            let reason_end = run(w, after + 1, TEXT);
            let end = crlf(w, reason_end, "reason phrase")?;
            Ok((status, minor, after + 1..reason_end, end))
        }
        Some(_) => {
            let end = crlf(w, after, "status code")?;
            Ok((status, minor, after..after, end))
        }
    }
}

/// The field lines from `p` through the empty line; returns the head's
/// length.
fn field_lines(w: &[u8], mut p: usize, max_fields: usize, out: &mut Vec<Field>) -> Scan<usize> {
    loop {
        match w.get(p) {
            None => return Err(Stop::More),
            Some(b'\r') => return crlf(w, p, "end of head"),
            Some(b'\n') => return malformed("bare LF"),
            Some(b' ' | b'\t') => return malformed("obsolete line folding"),
            Some(_) => {}
        }
        let name_end = run(w, p, TCHAR);
        match w.get(name_end) {
            None => return Err(Stop::More),
            Some(b':') if name_end > p => {}
            Some(b' ' | b'\t') if name_end > p => return malformed("whitespace before colon"),
            Some(b'\n') => return malformed("bare LF"),
            Some(_) => return malformed("field name"),
        }
        let value_start = run(w, name_end + 1, WS);
        let text_end = run(w, value_start, TEXT);
        let end = crlf(w, text_end, "field value")?;
        let value_end = w
            .get(value_start..text_end)
            .and_then(|v| v.iter().rposition(|&b| !is(b, WS)))
            .map_or(value_start, |k| value_start + k + 1);
        if out.len() >= max_fields {
            return Err(Stop::Bad(HeadError::TooManyFields));
        }
        out.push(Field {
            name: p..name_end,
            value: value_start..value_end,
            line: p..end,
        });
        p = end;
    }
}

/// Turns a scan into the parsers' contract.
fn finish<T>(
    scan: Scan<T>,
    buf_len: usize,
    max_head: usize,
    fields: &mut Vec<Field>,
) -> Result<Option<T>, HeadError> {
    match scan {
        Ok(head) => Ok(Some(head)),
        Err(stop) => {
            fields.clear();
            match stop {
                Stop::Bad(e) => Err(e),
                Stop::More if buf_len >= max_head => Err(HeadError::TooLarge),
                Stop::More => Ok(None),
            }
        }
    }
}

/// Parses a request head at the start of `buf` (RFC 9112 §2, §3, §5).
///
/// Returns `Ok(Some(head))` with `fields` holding its field lines in
/// order; `Ok(None)` when the bytes so far are a valid beginning of a head
/// and `buf.len() < max_head` (read more and call again with the longer
/// buffer); [`HeadError::TooLarge`] when `buf` holds `max_head` bytes or
/// more with no complete head in the first `max_head`;
/// [`HeadError::TooManyFields`] on the field line after the
/// `max_fields`th; [`HeadError::Malformed`] or [`HeadError::Version`] as
/// soon as the bytes so far break the grammar, complete head or not.
/// `fields` is cleared first and left empty unless a head is returned.
///
/// Up to [`MAX_EMPTY_LINES`] CRLFs before the request line are skipped
/// (§2.2); `method` and `target` are offsets after them and `len` counts
/// from `buf[0]`. Bytes after the head are not looked at.
///
/// Bounded work: one pass over at most `max_head` bytes. Never panics.
pub fn parse_request(
    buf: &[u8],
    max_head: usize,
    max_fields: usize,
    fields: &mut Vec<Field>,
) -> Result<Option<RequestHead>, HeadError> {
    fields.clear();
    let w = buf.get(..max_head).unwrap_or(buf);
    let scan = request_line(w).and_then(|(method, target, minor, end)| {
        let len = field_lines(w, end, max_fields, fields)?;
        Ok(RequestHead {
            method,
            target,
            minor,
            len,
        })
    });
    finish(scan, buf.len(), max_head, fields)
}

/// Parses a response head at the start of `buf` (RFC 9112 §2, §4, §5),
/// under the same contract as [`parse_request`]. No empty lines are
/// skipped before a status line. A status line may omit the reason
/// phrase, with or without the space before it; a status code outside
/// 100 to 599 is malformed.
///
/// Bounded work: one pass over at most `max_head` bytes. Never panics.
pub fn parse_response(
    buf: &[u8],
    max_head: usize,
    max_fields: usize,
    fields: &mut Vec<Field>,
) -> Result<Option<ResponseHead>, HeadError> {
    fields.clear();
    let w = buf.get(..max_head).unwrap_or(buf);
    let scan = status_line(w).and_then(|(status, minor, reason, end)| {
        let len = field_lines(w, end, max_fields, fields)?;
        Ok(ResponseHead {
            status,
            minor,
            reason,
            len,
        })
    });
    finish(scan, buf.len(), max_head, fields)
}

/// How a message's body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// The chunked transfer coding (§7.1).
    Chunked,
    /// The body runs until the connection closes (responses only).
    Close,
}

/// Why a message's framing cannot be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum FramingError {
    /// A `Content-Length` that is not 1 to 19 digits.
    #[error("invalid Content-Length")]
    BadLength,
    /// `Content-Length` values that differ.
    #[error("conflicting Content-Length values")]
    ConflictingLength,
    /// A request's transfer codings do not end in exactly one `chunked`.
    #[error("Transfer-Encoding does not end in chunked")]
    BadTransferEncoding,
    /// A request with both `Transfer-Encoding` and `Content-Length`.
    #[error("both Transfer-Encoding and Content-Length")]
    LengthWithTransferEncoding,
}

/// `bytes` without leading and trailing SP/HTAB.
fn trim_ows(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| !is(b, WS))
        .unwrap_or(bytes.len());
    let rest = bytes.get(start..).unwrap_or_default();
    let end = rest.iter().rposition(|&b| !is(b, WS)).map_or(0, |k| k + 1);
    rest.get(..end).unwrap_or_default()
}

/// The values of every field named `name` (given in lowercase), in order.
/// Never panics: a range that does not fit `buf` gives an empty value.
pub fn values<'a>(
    buf: &'a [u8],
    fields: &'a [Field],
    name: &'a [u8],
) -> impl Iterator<Item = &'a [u8]> + 'a {
    fields
        .iter()
        .filter(move |f| field_is(buf, f, name))
        .map(move |f| buf.get(f.value.clone()).unwrap_or_default())
}

/// The comma-separated elements, OWS-trimmed (empty ones included), of
/// every field named `name` (given in lowercase), in order: `Connection`
/// options, transfer codings.
pub fn elements<'a>(
    buf: &'a [u8],
    fields: &'a [Field],
    name: &'a [u8],
) -> impl Iterator<Item = &'a [u8]> + 'a {
    values(buf, fields, name)
        .flat_map(|v| v.split(|&b| b == b','))
        .map(trim_ows)
}

/// What the `Transfer-Encoding` fields say.
struct Codings {
    /// Whether any `Transfer-Encoding` field is present.
    present: bool,
    /// How many of the codings are `chunked`.
    chunked: usize,
    /// Whether the final coding is `chunked`.
    final_chunked: bool,
}

fn codings(buf: &[u8], fields: &[Field]) -> Codings {
    let mut c = Codings {
        present: fields
            .iter()
            .any(|f| field_is(buf, f, b"transfer-encoding")),
        chunked: 0,
        final_chunked: false,
    };
    for coding in elements(buf, fields, b"transfer-encoding").filter(|e| !e.is_empty()) {
        c.final_chunked = coding.eq_ignore_ascii_case(b"chunked");
        c.chunked += usize::from(c.final_chunked);
    }
    c
}

/// 1 to 19 ASCII digits as a number.
fn digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > 19 {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &b| {
        let d = b.is_ascii_digit().then(|| u64::from(b - b'0'))?;
        n.checked_mul(10)?.checked_add(d)
    })
}

/// The `Content-Length` (RFC 9110 §8.6), if any: every element of every
/// field must be a valid length, and all must be the same.
fn content_length(buf: &[u8], fields: &[Field]) -> Result<Option<u64>, FramingError> {
    let mut length = None;
    for element in elements(buf, fields, b"content-length") {
        let n = digits(element).ok_or(FramingError::BadLength)?;
        match length {
            None => length = Some(n),
            Some(m) if m == n => {}
            Some(_) => return Err(FramingError::ConflictingLength),
        }
    }
    Ok(length)
}

fn by_length(n: u64) -> Framing {
    if n == 0 {
        Framing::Empty
    } else {
        Framing::Length(n)
    }
}

/// How a request's body is framed (RFC 9112 §6.3 items 3 to 6, with the
/// choices a proxy must make strictly):
///
/// - `Transfer-Encoding` and `Content-Length` both present:
///   [`FramingError::LengthWithTransferEncoding`].
/// - `Transfer-Encoding` present: [`Framing::Chunked`] when the final
///   coding over all its fields (comma lists, case-insensitive) is
///   `chunked` and `chunked` appears exactly once, else
///   [`FramingError::BadTransferEncoding`].
/// - `Content-Length` present: [`Framing::Length`] ([`Framing::Empty`]
///   for 0); every value 1 to 19 digits, no sign or inner space, else
///   [`FramingError::BadLength`]; repeated identical values (in several
///   fields or a comma list) count once, different ones are
///   [`FramingError::ConflictingLength`].
/// - Neither: [`Framing::Empty`].
///
/// Bounded work: linear in the fields' bytes. Never panics.
pub fn request_framing(buf: &[u8], fields: &[Field]) -> Result<Framing, FramingError> {
    let (mut te, mut cl) = (false, false);
    for f in fields {
        te |= field_is(buf, f, b"transfer-encoding");
        cl |= field_is(buf, f, b"content-length");
    }
    if te && cl {
        return Err(FramingError::LengthWithTransferEncoding);
    }
    if te {
        let c = codings(buf, fields);
        return if c.final_chunked && c.chunked == 1 {
            Ok(Framing::Chunked)
        } else {
            Err(FramingError::BadTransferEncoding)
        };
    }
    Ok(content_length(buf, fields)?.map_or(Framing::Empty, by_length))
}

/// How a response's body is framed (RFC 9112 §6.3 items 1 to 8), given
/// what the request was:
///
/// - To `HEAD`, or status 1xx, 204 or 304: [`Framing::Empty`], whatever
///   the fields say.
/// - A 2xx to `CONNECT`: [`Framing::Close`] (the connection becomes a
///   tunnel).
/// - `Transfer-Encoding` present: [`Framing::Chunked`] when its final
///   coding is `chunked` (a `Content-Length` beside it is ignored), else
///   [`Framing::Close`].
/// - `Content-Length` present: as for [`request_framing`], errors
///   included.
/// - Neither: [`Framing::Close`].
///
/// Bounded work: linear in the fields' bytes. Never panics.
pub fn response_framing(
    buf: &[u8],
    fields: &[Field],
    status: u16,
    request_was_head: bool,
    request_was_connect: bool,
) -> Result<Framing, FramingError> {
    if request_was_head || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Framing::Empty);
    }
    if request_was_connect && (200..300).contains(&status) {
        return Ok(Framing::Close);
    }
    let c = codings(buf, fields);
    if c.present {
        return Ok(if c.final_chunked {
            Framing::Chunked
        } else {
            Framing::Close
        });
    }
    Ok(content_length(buf, fields)?.map_or(Framing::Close, by_length))
}

/// Whether `field`'s name is `name` (given in lowercase), ignoring ASCII
/// case. False when the field's range does not fit `buf`.
pub fn field_is(buf: &[u8], field: &Field, name: &[u8]) -> bool {
    buf.get(field.name.clone())
        .is_some_and(|n| n.eq_ignore_ascii_case(name))
}

/// Whether any field named `name` (lowercase) lists `token` among its
/// comma-separated elements, ignoring ASCII case and OWS: `Connection:
/// close`, `keep-alive`, `upgrade`; `Expect: 100-continue`.
///
/// Bounded work: linear in the fields' bytes. Never panics.
pub fn has_token(buf: &[u8], fields: &[Field], name: &[u8], token: &[u8]) -> bool {
    elements(buf, fields, name).any(|e| e.eq_ignore_ascii_case(token))
}

/// Whether the connection stays open after this message (RFC 9112 §9.3):
/// for HTTP/1.1 (`minor` 1 or more) unless a `Connection` field lists
/// `close`; for HTTP/1.0 only when one lists `keep-alive` and none lists
/// `close`.
pub fn keep_alive(buf: &[u8], fields: &[Field], minor: u8) -> bool {
    if has_token(buf, fields, b"connection", b"close") {
        return false;
    }
    minor >= 1 || has_token(buf, fields, b"connection", b"keep-alive")
}

/// How far a [`Body::advance`] call got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// How many bytes at the start of the input belong to this message.
    pub consumed: usize,
    /// Whether the message ended with them.
    pub done: bool,
}

/// Why a chunked body cannot be followed (RFC 9112 §7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum ChunkError {
    /// A chunk-size line without a hex digit, or with a byte that cannot
    /// be in it.
    #[error("malformed chunk-size line")]
    BadSize,
    /// A chunk size of more than 16 hex digits.
    #[error("chunk size too large")]
    SizeTooLarge,
    /// A line that does not end in CRLF, or chunk data not followed by
    /// CRLF.
    #[error("chunked body line does not end in CRLF")]
    BadLineEnd,
    /// A chunk-size line longer than [`MAX_CHUNK_LINE`] bytes.
    #[error("chunk extensions too long")]
    ExtensionTooLong,
    /// A trailer section longer than [`MAX_TRAILERS`] bytes.
    #[error("trailer section too large")]
    TrailersTooLarge,
}

/// Where in the chunked coding the walk is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// In the hex size; `line` counts the chunk-size line's bytes so far.
    Size { value: u64, digits: u8, line: usize },
    /// In whitespace after the size, which only `;` may follow.
    SizeWs { value: u64, line: usize },
    /// In the extensions.
    Ext { value: u64, line: usize },
    /// After the chunk-size line's CR.
    SizeLf { value: u64 },
    /// In chunk data, this many bytes left.
    Data(u64),
    /// After chunk data, before its CR.
    DataCr,
    /// After chunk data's CR.
    DataLf,
    /// In the trailer section (`bytes` so far), at the start of a line or
    /// not.
    Trailer { bytes: usize, line_start: bool },
    /// After a trailer line's CR; `last` when the line was empty.
    TrailerLf { bytes: usize, last: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Done,
    Length(u64),
    Close,
    Chunked(Chunk),
    Failed(ChunkError),
}

/// Where a message body ends: a state machine fed the bytes after the head
/// as they arrive, in pieces of any size.
///
/// The relay passes body bytes on unchanged; `Body` only says how many of
/// them belong to this message.
#[derive(Clone, Debug)]
pub struct Body {
    state: State,
    /// Whether the framing was `Length`, for [`Body::remaining`].
    by_length: bool,
}

/// The chunked walk's next state after one byte, or `None` when that byte
/// ended the message.
fn step(c: Chunk, b: u8) -> Result<Option<Chunk>, ChunkError> {
    let line_len = |line: usize| {
        if line > MAX_CHUNK_LINE {
            Err(ChunkError::ExtensionTooLong)
        } else {
            Ok(line)
        }
    };
    let trailer_len = |bytes: usize| {
        if bytes > MAX_TRAILERS {
            Err(ChunkError::TrailersTooLarge)
        } else {
            Ok(bytes)
        }
    };
    let next = match c {
        Chunk::Size {
            value,
            digits,
            line,
        } => {
            if let Some(d) = char::from(b).to_digit(16) {
                if digits >= 16 {
                    return Err(ChunkError::SizeTooLarge);
                }
                Chunk::Size {
                    value: value << 4 | u64::from(d),
                    digits: digits + 1,
                    line: line_len(line + 1)?,
                }
            } else if digits == 0 {
                return Err(ChunkError::BadSize);
            } else {
                match b {
                    b'\r' => Chunk::SizeLf { value },
                    b';' => Chunk::Ext {
                        value,
                        line: line_len(line + 1)?,
                    },
                    b' ' | b'\t' => Chunk::SizeWs {
                        value,
                        line: line_len(line + 1)?,
                    },
                    b'\n' => return Err(ChunkError::BadLineEnd),
                    _ => return Err(ChunkError::BadSize),
                }
            }
        }
        Chunk::SizeWs { value, line } => match b {
            b' ' | b'\t' => Chunk::SizeWs {
                value,
                line: line_len(line + 1)?,
            },
            b';' => Chunk::Ext {
                value,
                line: line_len(line + 1)?,
            },
            b'\n' => return Err(ChunkError::BadLineEnd),
            _ => return Err(ChunkError::BadSize),
        },
        Chunk::Ext { value, line } => match b {
            b'\r' => Chunk::SizeLf { value },
            b'\n' => return Err(ChunkError::BadLineEnd),
            _ if is(b, TEXT) => Chunk::Ext {
                value,
                line: line_len(line + 1)?,
            },
            _ => return Err(ChunkError::BadSize),
        },
        Chunk::SizeLf { value } => match (b, value) {
            (b'\n', 0) => Chunk::Trailer {
                bytes: 0,
                line_start: true,
            },
            (b'\n', n) => Chunk::Data(n),
            _ => return Err(ChunkError::BadLineEnd),
        },
        // Data is consumed in bulk by the caller; a byte here ends none.
        Chunk::Data(n) => Chunk::Data(n),
        Chunk::DataCr if b == b'\r' => Chunk::DataLf,
        Chunk::DataLf if b == b'\n' => Chunk::Size {
            value: 0,
            digits: 0,
            line: 0,
        },
        Chunk::DataCr | Chunk::DataLf => return Err(ChunkError::BadLineEnd),
        Chunk::Trailer { bytes, line_start } => {
            let bytes = trailer_len(bytes + 1)?;
            match b {
                b'\r' => Chunk::TrailerLf {
                    bytes,
                    last: line_start,
                },
                b'\n' => return Err(ChunkError::BadLineEnd),
                _ => Chunk::Trailer {
                    bytes,
                    line_start: false,
                },
            }
        }
        Chunk::TrailerLf { bytes, last } => {
            let bytes = trailer_len(bytes + 1)?;
            match (b, last) {
                (b'\n', true) => return Ok(None),
                (b'\n', false) => Chunk::Trailer {
                    bytes,
                    line_start: true,
                },
                _ => return Err(ChunkError::BadLineEnd),
            }
        }
    };
    Ok(Some(next))
}

/// Walks the chunked coding over `input` from `c`: the state after it
/// (`None` when the message ended) and the bytes consumed.
fn walk(mut c: Chunk, input: &[u8]) -> Result<(Option<Chunk>, usize), ChunkError> {
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        if let Chunk::Data(left) = c {
            // At least one byte is available, so this takes at least one.
            let available = input.len() - i;
            let take = usize::try_from(left).map_or(available, |l| l.min(available));
            i += take;
            let left = left - take as u64;
            c = if left == 0 {
                Chunk::DataCr
            } else {
                Chunk::Data(left)
            };
            continue;
        }
        i += 1;
        match step(c, b)? {
            Some(next) => c = next,
            None => return Ok((None, i)),
        }
    }
    Ok((Some(c), i))
}

impl Body {
    /// A body of `framing`, before its first byte.
    pub fn new(framing: Framing) -> Body {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Close => State::Close,
            Framing::Chunked => State::Chunked(Chunk::Size {
                value: 0,
                digits: 0,
                line: 0,
            }),
        };
        Body {
            state,
            by_length: matches!(framing, Framing::Length(_)),
        }
    }

    /// Feeds the next bytes after the head (or after what earlier calls
    /// consumed). Returns how many of them belong to this message (always
    /// a prefix of `input`: the bytes after it belong to the next message
    /// and are not looked at) and whether the message ended with them.
    ///
    /// - `Empty`: done at once, nothing consumed.
    /// - `Length(n)`: up to the bytes still expected, taken at once.
    /// - `Close`: everything, never done (the relay ends it at EOF).
    /// - `Chunked` (RFC 9112 §7.1): a chunk-size line (1 to 16 hex digits,
    ///   optional `;` extensions, at most [`MAX_CHUNK_LINE`] bytes, CRLF),
    ///   the data (taken at once) and CRLF, repeated until the size is 0;
    ///   then trailer lines up to an empty line, at most [`MAX_TRAILERS`]
    ///   bytes in all.
    ///
    /// Once done, later calls consume nothing and say done. An error is
    /// final: later calls return it again.
    ///
    /// Bounded work: linear in `input`, with no buffering, whatever the
    /// split of the body into calls. Never panics.
    pub fn advance(&mut self, input: &[u8]) -> Result<Progress, ChunkError> {
        let progress = |consumed, done| Ok(Progress { consumed, done });
        match self.state {
            State::Done => progress(0, true),
            State::Failed(e) => Err(e),
            State::Close => progress(input.len(), false),
            State::Length(left) => {
                let take = usize::try_from(left).map_or(input.len(), |l| l.min(input.len()));
                let left = left - take as u64;
                self.state = if left == 0 {
                    State::Done
                } else {
                    State::Length(left)
                };
                progress(take, left == 0)
            }
            State::Chunked(c) => match walk(c, input) {
                Ok((Some(c), consumed)) => {
                    self.state = State::Chunked(c);
                    progress(consumed, false)
                }
                Ok((None, consumed)) => {
                    self.state = State::Done;
                    progress(consumed, true)
                }
                Err(e) => {
                    self.state = State::Failed(e);
                    Err(e)
                }
            },
        }
    }

    /// Whether the body is complete.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// For a `Length` body, the bytes still expected (0 once done), so the
    /// relay can read exactly; `None` for the other framings.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            _ if self.by_length => Some(0),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 8192;

    fn request(buf: &[u8]) -> Result<Option<(RequestHead, Vec<Field>)>, HeadError> {
        let mut fields = Vec::new();
        Ok(parse_request(buf, MAX, 100, &mut fields)?.map(|h| (h, fields)))
    }

    fn response(buf: &[u8]) -> Result<Option<(ResponseHead, Vec<Field>)>, HeadError> {
        let mut fields = Vec::new();
        Ok(parse_response(buf, MAX, 100, &mut fields)?.map(|h| (h, fields)))
    }

    fn req_ok(buf: &[u8]) -> (RequestHead, Vec<Field>) {
        request(buf).unwrap().expect("a complete head")
    }

    fn resp_ok(buf: &[u8]) -> (ResponseHead, Vec<Field>) {
        response(buf).unwrap().expect("a complete head")
    }

    fn text(buf: &[u8], r: &Range<usize>) -> String {
        String::from_utf8_lossy(&buf[r.clone()]).into_owned()
    }

    /// The request line, the field lines and the final CRLF make up the
    /// head exactly.
    fn assert_lines_cover(buf: &[u8], first_field: usize, len: usize, fields: &[Field]) {
        let mut at = first_field;
        for f in fields {
            assert_eq!(f.line.start, at, "{f:?}");
            assert_eq!(&buf[f.line.end - 2..f.line.end], b"\r\n");
            assert_eq!(f.name.start, f.line.start);
            assert!(f.name.end < f.value.start || f.value.is_empty());
            assert!(f.value.end <= f.line.end - 2);
            at = f.line.end;
        }
        assert_eq!(at + 2, len);
        assert_eq!(&buf[at..len], b"\r\n");
    }

    const CURL: &[u8] = b"GET /api/v1/items?id=7 HTTP/1.1\r\n\
        Host: example.com:8080\r\n\
        User-Agent: curl/8.5.0\r\n\
        Accept: */*\r\n\
        \r\n";

    const BROWSER: &[u8] = b"POST /login HTTP/1.1\r\n\
        Host: www.example.org\r\n\
        User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
        Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n\
        Accept-Language: en-US,en;q=0.5\r\n\
        Accept-Encoding: gzip, deflate, br, zstd\r\n\
        Content-Type: application/x-www-form-urlencoded\r\n\
        Content-Length: 27\r\n\
        Origin: https://www.example.org\r\n\
        Connection: keep-alive\r\n\
        Cookie: session=abc123; theme=dark\r\n\
        Upgrade-Insecure-Requests: 1\r\n\
        Sec-Fetch-Dest: document\r\n\
        \r\n\
        user=alice&password=secret1";

    #[test]
    fn the_word_test_never_misses_a_byte_that_ends_a_run() {
        for class in [TEXT, VISIBLE] {
            for b in 0..=255u8 {
                for at in 0..8 {
                    let mut word = [b'a'; 8];
                    word[at] = b;
                    let x = u64::from_le_bytes(word);
                    if !is(b, class) {
                        assert!(may_end_run(x, class), "class {class} byte {b:#x} at {at}");
                    }
                    let line = [&b"xx"[..], &word, b"yyyyyyyyy"].concat();
                    let want = if is(b, class) { line.len() } else { 2 + at };
                    assert_eq!(
                        run(&line, 1, class),
                        want,
                        "class {class} byte {b:#x} at {at}"
                    );
                }
            }
            assert!(!may_end_run(u64::from_le_bytes(*b"abcdefgh"), class));
        }
    }

    #[test]
    fn a_curl_request_parses_with_its_fields() {
        let (h, f) = req_ok(CURL);
        assert_eq!(text(CURL, &h.method), "GET");
        assert_eq!(text(CURL, &h.target), "/api/v1/items?id=7");
        assert_eq!(h.minor, 1);
        assert_eq!(h.len, CURL.len());
        let pairs: Vec<(String, String)> = f
            .iter()
            .map(|f| (text(CURL, &f.name), text(CURL, &f.value)))
            .collect();
        assert_eq!(
            pairs,
            [
                ("Host".into(), "example.com:8080".into()),
                ("User-Agent".into(), "curl/8.5.0".into()),
                ("Accept".into(), "*/*".into()),
            ]
        );
        assert_eq!(text(CURL, &f[0].line), "Host: example.com:8080\r\n");
        assert_lines_cover(CURL, 33, h.len, &f);
        assert_eq!(request_framing(CURL, &f), Ok(Framing::Empty));
        assert!(keep_alive(CURL, &f, h.minor));
    }

    #[test]
    fn a_browser_post_parses_and_its_body_follows() {
        let (h, f) = req_ok(BROWSER);
        assert_eq!(text(BROWSER, &h.method), "POST");
        assert_eq!(f.len(), 12);
        assert_eq!(&BROWSER[h.len..], b"user=alice&password=secret1");
        let line_end = BROWSER.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
        assert_lines_cover(BROWSER, line_end, h.len, &f);
        assert_eq!(request_framing(BROWSER, &f), Ok(Framing::Length(27)));
        let cookie = f.iter().find(|x| field_is(BROWSER, x, b"cookie")).unwrap();
        assert_eq!(text(BROWSER, &cookie.value), "session=abc123; theme=dark");
        let mut body = Body::new(Framing::Length(27));
        assert_eq!(body.remaining(), Some(27));
        assert_eq!(
            body.advance(&BROWSER[h.len..]),
            Ok(Progress {
                consumed: 27,
                done: true
            })
        );
        assert_eq!(body.remaining(), Some(0));
    }

    #[test]
    fn a_wrk_request_and_an_http10_request_parse() {
        let wrk = b"GET /index.html HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n\r\n";
        let (h, f) = req_ok(wrk);
        assert_eq!((h.minor, h.len, f.len()), (1, wrk.len(), 1));
        let old = b"GET / HTTP/1.0\r\n\r\n";
        let (h, f) = req_ok(old);
        assert_eq!((h.minor, h.len, f.len()), (0, old.len(), 0));
        assert!(!keep_alive(old, &f, 0));
    }

    #[test]
    fn absolute_form_connect_and_asterisk_targets_parse() {
        for (buf, target) in [
            (
                &b"GET http://a.example/x?y HTTP/1.1\r\nHost: a.example\r\n\r\n"[..],
                "http://a.example/x?y",
            ),
            (
                b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n",
                "a.example:443",
            ),
            (b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", "*"),
        ] {
            let (h, _) = req_ok(buf);
            assert_eq!(text(buf, &h.target), target);
        }
    }

    #[test]
    fn field_values_are_trimmed_and_may_be_empty_or_hold_obs_text() {
        let buf = b"GET / HTTP/1.1\r\nA:x\r\nB: \t y z \t\r\nC:\r\nD:   \r\nE: caf\xc3\xa9\r\n\r\n";
        let (h, f) = req_ok(buf);
        let values: Vec<&[u8]> = f.iter().map(|x| &buf[x.value.clone()]).collect();
        assert_eq!(values, [&b"x"[..], b"y z", b"", b"", "café".as_bytes()]);
        assert_lines_cover(buf, 16, h.len, &f);
    }

    #[test]
    fn up_to_four_empty_lines_before_a_request_line_are_skipped() {
        let buf = b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let (h, f) = req_ok(buf);
        assert_eq!(h.method, 4..7);
        assert_eq!(h.len, buf.len());
        assert_lines_cover(buf, 20, h.len, &f);
        let four = b"\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(req_ok(four).0.method, 8..11);
        let five = b"\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        assert!(matches!(request(five), Err(HeadError::Malformed(_))));
        assert_eq!(request(b"\r"), Ok(None));
        assert_eq!(request(b"\r\n\r\n\r\n\r\n\r"), Ok(None));
        assert_eq!(request(b"\r\n\r\n\r\n\r\n"), Ok(None));
        assert!(matches!(request(b"\n"), Err(HeadError::Malformed(_))));
    }

    #[test]
    fn each_malformed_request_is_refused() {
        let cases: [(&[u8], &str); 22] = [
            (
                b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
                "whitespace before colon",
            ),
            (
                b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n",
                "whitespace before colon",
            ),
            (b"GET / HTTP/1.1\nHost: a\r\n\r\n", "bare LF"),
            (b"GET / HTTP/1.1\r\nHost: a\n\r\n", "bare LF"),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\n", "bare LF"),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX\n\r\n", "bare LF"),
            (b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", "bare CR"),
            (
                b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
                "obsolete line folding",
            ),
            (b"GET / HTTP/1.1\r\n\tX: a\r\n\r\n", "obsolete line folding"),
            (b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", "field value"),
            (b"GET / HTTP/1.1\r\nX: a\x01\r\n\r\n", "field value"),
            (b"GET / HTTP/1.1\r\nX: a\x7f\r\n\r\n", "field value"),
            (b"GET / HTTP/1.1\r\n: a\r\n\r\n", "field name"),
            (b"GET / HTTP/1.1\r\nX(y): a\r\n\r\n", "field name"),
            (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", "field name"),
            (b"G(T / HTTP/1.1\r\n\r\n", "method"),
            (b" GET / HTTP/1.1\r\n\r\n", "method"),
            (b"GET  / HTTP/1.1\r\n\r\n", "request target"),
            (b"GET /a b HTTP/1.1\r\n\r\n", "version"),
            (b"GET /\x7f HTTP/1.1\r\n\r\n", "request target"),
            (b"GET / HTTP/1.1 \r\n\r\n", "version"),
            (b"GET / http/1.1\r\n\r\n", "version"),
        ];
        for (buf, what) in cases {
            assert_eq!(
                request(buf),
                Err(HeadError::Malformed(what)),
                "{}",
                String::from_utf8_lossy(buf)
            );
        }
    }

    #[test]
    fn other_versions_are_refused_as_versions() {
        for buf in [
            &b"GET / HTTP/2.0\r\n\r\n"[..],
            b"GET / HTTP/0.9\r\n\r\n",
            b"GET / HTTP/1.2\r\n\r\n",
            b"GET / HTTP/2\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert_eq!(request(buf), Err(HeadError::Version));
        }
        assert_eq!(
            response(b"HTTP/2.0 200 OK\r\n\r\n"),
            Err(HeadError::Version)
        );
        assert_eq!(
            response(b"HTTP/1.2 200 OK\r\n\r\n"),
            Err(HeadError::Version)
        );
        // Not HTTP at all.
        assert!(matches!(
            request(b"GET / SSH-2.0\r\n\r\n"),
            Err(HeadError::Malformed("version"))
        ));
        // A short bad version is refused without waiting for 8 bytes.
        assert!(matches!(
            request(b"GET / X\r\n\r\n"),
            Err(HeadError::Malformed("version"))
        ));
    }

    #[test]
    fn an_incomplete_head_waits_until_max_head_and_then_is_too_large() {
        let head = b"GET /abc HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut fields = Vec::new();
        let n = head.len();
        // Exactly max_head bytes of head: accepted.
        let h = parse_request(head, n, 10, &mut fields).unwrap().unwrap();
        assert_eq!(h.len, n);
        // One byte more than the limit: refused, even with the whole head there.
        assert_eq!(
            parse_request(head, n - 1, 10, &mut fields),
            Err(HeadError::TooLarge)
        );
        assert!(fields.is_empty());
        // Incomplete at max_head - 1 bytes: wait; at max_head: too large.
        let limit = 20;
        assert_eq!(
            parse_request(&head[..limit - 1], limit, 10, &mut fields),
            Ok(None)
        );
        assert_eq!(
            parse_request(&head[..limit], limit, 10, &mut fields),
            Err(HeadError::TooLarge)
        );
        assert_eq!(
            parse_request(head, limit, 10, &mut fields),
            Err(HeadError::TooLarge)
        );
        // A request line longer than the limit.
        let long = [&b"GET /"[..], &[b'a'; 100], b" HTTP/1.1\r\n\r\n"].concat();
        assert_eq!(
            parse_request(&long, 64, 10, &mut fields),
            Err(HeadError::TooLarge)
        );
        assert_eq!(parse_request(&long[..63], 64, 10, &mut fields), Ok(None));
        // Responses too.
        let resp = b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n";
        let m = resp.len();
        assert!(parse_response(resp, m, 10, &mut fields).unwrap().is_some());
        assert_eq!(
            parse_response(resp, m - 1, 10, &mut fields),
            Err(HeadError::TooLarge)
        );
        assert_eq!(parse_response(&resp[..m - 2], m, 10, &mut fields), Ok(None));
    }

    #[test]
    fn every_strict_prefix_of_a_head_waits() {
        for buf in [CURL, &BROWSER[..BROWSER.len() - 27]] {
            for k in 0..buf.len() {
                assert_eq!(request(&buf[..k]), Ok(None), "prefix {k}");
            }
        }
        let resp = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        for k in 0..resp.len() {
            assert_eq!(response(&resp[..k]), Ok(None), "prefix {k}");
        }
    }

    #[test]
    fn too_many_fields_is_refused_at_the_one_over() {
        let buf = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        let mut fields = Vec::new();
        assert!(parse_request(buf, MAX, 3, &mut fields).unwrap().is_some());
        assert_eq!(fields.len(), 3);
        assert_eq!(
            parse_request(buf, MAX, 2, &mut fields),
            Err(HeadError::TooManyFields)
        );
        assert!(fields.is_empty());
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\n\r\n", MAX, 0, &mut fields).map(|h| h.is_some()),
            Ok(true)
        );
    }

    #[test]
    fn fields_are_cleared_before_a_parse() {
        let mut fields = vec![
            Field {
                name: 0..1,
                value: 0..1,
                line: 0..1
            };
            5
        ];
        parse_request(CURL, MAX, 100, &mut fields).unwrap();
        assert_eq!(fields.len(), 3);
        assert_eq!(parse_request(b"GET", MAX, 100, &mut fields), Ok(None));
        assert!(fields.is_empty());
    }

    #[test]
    fn status_lines_parse_with_and_without_a_reason() {
        let buf = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";
        let (h, f) = resp_ok(buf);
        assert_eq!((h.status, h.minor), (200, 1));
        assert_eq!(text(buf, &h.reason), "OK");
        assert_eq!(&buf[h.len..], b"hello");
        assert_lines_cover(buf, 17, h.len, &f);
        assert_eq!(
            response_framing(buf, &f, h.status, false, false),
            Ok(Framing::Length(5))
        );

        let (h, _) = resp_ok(b"HTTP/1.1 200\r\n\r\n");
        assert_eq!((h.status, h.reason, h.len), (200, 12..12, 16));
        let (h, _) = resp_ok(b"HTTP/1.1 200 \r\n\r\n");
        assert_eq!((h.status, h.reason), (200, 13..13));
        let buf = b"HTTP/1.0 503 Service\tUn available \xe2\x9c\x97\r\n\r\n";
        let (h, _) = resp_ok(buf);
        assert_eq!((h.status, h.minor), (503, 0));
        assert_eq!(&buf[h.reason], "Service\tUn available \u{2717}".as_bytes());
    }

    #[test]
    fn malformed_status_lines_are_refused() {
        for buf in [
            &b"HTTP/1.1 20 OK\r\n\r\n"[..],
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 099 X\r\n\r\n",
            b"HTTP/1.1 600 X\r\n\r\n",
            b"HTTP/1.1  200 OK\r\n\r\n",
            b"HTTP/1.1 200 O\x00K\r\n\r\n",
            b"HTTP/1.1 200 OK\n\r\n",
            b"HTTP/1.1 200 OK\r\nX : y\r\n\r\n",
            b"HTTP/1.1\r\n\r\n",
            b"\r\nHTTP/1.1 200 OK\r\n\r\n",
            b"ICY 200 OK\r\n\r\n",
        ] {
            assert!(
                matches!(response(buf), Err(HeadError::Malformed(_))),
                "{}: {:?}",
                String::from_utf8_lossy(buf),
                response(buf)
            );
        }
    }

    /// Fields from `name: value` pairs over a buffer of their lines.
    fn head_of(lines: &[&str]) -> (Vec<u8>, Vec<Field>) {
        let mut buf = b"X / HTTP/1.1\r\n".to_vec();
        for l in lines {
            buf.extend_from_slice(l.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        buf.extend_from_slice(b"\r\n");
        let (_, f) = req_ok(&buf);
        (buf, f)
    }

    #[test]
    fn request_framing_follows_rfc_9112_strictly() {
        use Framing::*;
        use FramingError::*;
        let table: [(&[&str], Result<Framing, FramingError>); 22] = [
            (&[], Ok(Empty)),
            (&["Content-Length: 0"], Ok(Empty)),
            (&["Content-Length: 42"], Ok(Length(42))),
            (&["content-length:  7  "], Ok(Length(7))),
            (&["Content-Length: 5, 5"], Ok(Length(5))),
            (&["Content-Length: 5", "Content-Length: 5"], Ok(Length(5))),
            (
                &["Content-Length: 5", "Content-Length: 6"],
                Err(ConflictingLength),
            ),
            (&["Content-Length: 5,6"], Err(ConflictingLength)),
            (&["Content-Length: +5"], Err(BadLength)),
            (&["Content-Length: -5"], Err(BadLength)),
            (&["Content-Length: 5 5"], Err(BadLength)),
            (&["Content-Length: 5,"], Err(BadLength)),
            (&["Content-Length:"], Err(BadLength)),
            (&["Content-Length: 0x10"], Err(BadLength)),
            (
                &["Content-Length: 9999999999999999999"],
                Ok(Length(9_999_999_999_999_999_999)),
            ),
            (&["Content-Length: 18446744073709551615"], Err(BadLength)),
            (&["Transfer-Encoding: chunked"], Ok(Chunked)),
            (&["Transfer-Encoding: gzip , CHUNKED"], Ok(Chunked)),
            (
                &["Transfer-Encoding: gzip", "Transfer-Encoding: chunked"],
                Ok(Chunked),
            ),
            (
                &["Transfer-Encoding: chunked, gzip"],
                Err(BadTransferEncoding),
            ),
            (
                &["Transfer-Encoding: chunked, chunked"],
                Err(BadTransferEncoding),
            ),
            (
                &["Transfer-Encoding: chunked", "Content-Length: 5"],
                Err(LengthWithTransferEncoding),
            ),
        ];
        for (lines, want) in table {
            let (buf, f) = head_of(lines);
            assert_eq!(request_framing(&buf, &f), want, "{lines:?}");
        }
        for lines in [
            &["Transfer-Encoding: "][..],
            &["Transfer-Encoding: ,"],
            &["Transfer-Encoding: chunked;x=1"],
        ] {
            let (buf, f) = head_of(lines);
            assert_eq!(
                request_framing(&buf, &f),
                Err(BadTransferEncoding),
                "{lines:?}"
            );
        }
    }

    /// Fields, status, to HEAD, to CONNECT, framing.
    type ResponseCase = (
        &'static [&'static str],
        u16,
        bool,
        bool,
        Result<Framing, FramingError>,
    );

    #[test]
    fn response_framing_follows_rfc_9112() {
        use Framing::*;
        use FramingError::*;
        let chunked: &[&str] = &["Transfer-Encoding: chunked", "Content-Length: 10"];
        let length: &[&str] = &["Content-Length: 10"];
        let table: [ResponseCase; 17] = [
            (length, 200, false, false, Ok(Length(10))),
            (length, 200, true, false, Ok(Empty)),
            (chunked, 200, true, false, Ok(Empty)),
            (length, 204, false, false, Ok(Empty)),
            (length, 304, false, false, Ok(Empty)),
            (length, 100, false, false, Ok(Empty)),
            (&["Connection: upgrade"], 101, false, false, Ok(Empty)),
            (length, 200, false, true, Ok(Close)),
            (length, 407, false, true, Ok(Length(10))),
            (chunked, 200, false, false, Ok(Chunked)),
            (&["Transfer-Encoding: gzip"], 200, false, false, Ok(Close)),
            (
                &["Transfer-Encoding: chunked, gzip"],
                200,
                false,
                false,
                Ok(Close),
            ),
            (&[], 200, false, false, Ok(Close)),
            (&["Content-Length: 0"], 200, false, false, Ok(Empty)),
            (
                &["Content-Length: 1", "Content-Length: 2"],
                200,
                false,
                false,
                Err(ConflictingLength),
            ),
            (&["Content-Length: x"], 500, false, false, Err(BadLength)),
            (&["Content-Length: x"], 304, false, false, Ok(Empty)),
        ];
        for (lines, status, head, connect, want) in table {
            let (buf, f) = head_of(lines);
            assert_eq!(
                response_framing(&buf, &f, status, head, connect),
                want,
                "{lines:?} {status} head={head} connect={connect}"
            );
        }
    }

    #[test]
    fn keep_alive_and_tokens_follow_the_connection_field() {
        let table: [(&[&str], u8, bool); 9] = [
            (&[], 1, true),
            (&[], 0, false),
            (&["Connection: close"], 1, false),
            (&["Connection: Keep-Alive"], 0, true),
            (&["Connection: keep-alive, close"], 0, false),
            (&["connection: Upgrade ,  CLOSE"], 1, false),
            (&["Connection: keep-alive", "Connection: close"], 1, false),
            (&["Connection: closed"], 1, true),
            (&["X-Connection: close"], 1, true),
        ];
        for (lines, minor, want) in table {
            let (buf, f) = head_of(lines);
            assert_eq!(keep_alive(&buf, &f, minor), want, "{lines:?} 1.{minor}");
        }
        let (buf, f) = head_of(&["Connection: Upgrade", "Expect: 100-Continue"]);
        assert!(has_token(&buf, &f, b"connection", b"upgrade"));
        assert!(has_token(&buf, &f, b"expect", b"100-continue"));
        assert!(!has_token(&buf, &f, b"connection", b"close"));
        assert!(field_is(&buf, &f[0], b"connection"));
        assert!(!field_is(&buf, &f[0], b"connectio"));
        // Ranges that do not fit the buffer are absent, not a panic.
        let (five, one) = (5, 1);
        let stray = Field {
            name: 100..200,
            value: five..one,
            line: 0..1000,
        };
        assert!(!field_is(&buf, &stray, b"connection"));
        assert!(!has_token(&buf, &[stray], b"connection", b"close"));
    }

    fn feed_whole(framing: Framing, input: &[u8]) -> Result<Progress, ChunkError> {
        Body::new(framing).advance(input)
    }

    #[test]
    fn empty_length_and_close_bodies() {
        let mut b = Body::new(Framing::Empty);
        assert!(b.done());
        assert_eq!(b.remaining(), None);
        assert_eq!(
            b.advance(b"GET"),
            Ok(Progress {
                consumed: 0,
                done: true
            })
        );

        let mut b = Body::new(Framing::Length(10));
        assert_eq!(
            b.advance(b"0123"),
            Ok(Progress {
                consumed: 4,
                done: false
            })
        );
        assert_eq!(b.remaining(), Some(6));
        assert_eq!(
            b.advance(b""),
            Ok(Progress {
                consumed: 0,
                done: false
            })
        );
        assert_eq!(
            b.advance(b"456789GET / HTTP/1.1"),
            Ok(Progress {
                consumed: 6,
                done: true
            })
        );
        assert!(b.done());
        assert_eq!(
            b.advance(b"more"),
            Ok(Progress {
                consumed: 0,
                done: true
            })
        );
        assert_eq!(Body::new(Framing::Length(0)).remaining(), Some(0));
        assert!(Body::new(Framing::Length(0)).done());
        let mut big = Body::new(Framing::Length(u64::MAX));
        assert_eq!(
            big.advance(&[0; 100]),
            Ok(Progress {
                consumed: 100,
                done: false
            })
        );
        assert_eq!(big.remaining(), Some(u64::MAX - 100));

        let mut b = Body::new(Framing::Close);
        assert_eq!(
            b.advance(&[1; 70]),
            Ok(Progress {
                consumed: 70,
                done: false
            })
        );
        assert!(!b.done());
        assert_eq!(b.remaining(), None);
    }

    const WIKI: &[u8] = b"4\r\nWiki\r\n7\r\npedia i\r\nB\r\nn \r\nchunks.\r\n0\r\n\r\n";

    #[test]
    fn chunked_bodies_end_after_the_last_chunk_and_trailers() {
        let mut input = WIKI.to_vec();
        input.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(
            feed_whole(Framing::Chunked, &input),
            Ok(Progress {
                consumed: WIKI.len(),
                done: true
            })
        );
        let ext = b"5;name=value;q=\"a b\"\r\nhello\r\n000 ; last\r\nExpires: never\r\nX-Sum: 1\r\n\r\nNEXT";
        assert_eq!(
            feed_whole(Framing::Chunked, ext),
            Ok(Progress {
                consumed: ext.len() - 4,
                done: true
            })
        );
        let ws = b"a \t;x\r\n0123456789\r\n0\r\n\r\n";
        assert_eq!(
            feed_whole(Framing::Chunked, ws),
            Ok(Progress {
                consumed: ws.len(),
                done: true
            })
        );
        let big = b"fFfFfFfFfFfFfFfF\r\n";
        let mut b = Body::new(Framing::Chunked);
        assert_eq!(
            b.advance(big),
            Ok(Progress {
                consumed: big.len(),
                done: false
            })
        );
        assert_eq!(
            b.advance(&[7; 1000]),
            Ok(Progress {
                consumed: 1000,
                done: false
            })
        );
        assert_eq!(b.remaining(), None);
    }

    #[test]
    fn chunked_walks_byte_by_byte_too() {
        let mut b = Body::new(Framing::Chunked);
        for (i, &byte) in WIKI.iter().enumerate() {
            let p = b.advance(&[byte]).unwrap();
            assert_eq!(p.consumed, 1);
            assert_eq!(p.done, i == WIKI.len() - 1, "byte {i}");
        }
        assert_eq!(
            b.advance(b"x"),
            Ok(Progress {
                consumed: 0,
                done: true
            })
        );
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        use ChunkError::*;
        let long_ext = [&b"1;"[..], &[b'a'; MAX_CHUNK_LINE], b"\r\nx\r\n0\r\n\r\n"].concat();
        let just_fits = [
            &b"1;"[..],
            &[b'a'; MAX_CHUNK_LINE - 2],
            b"\r\nx\r\n0\r\n\r\n",
        ]
        .concat();
        let trailer_line = [&b"X: "[..], &[b'a'; 100], b"\r\n"].concat();
        let mut huge_trailers = b"0\r\n".to_vec();
        for _ in 0..(MAX_TRAILERS / trailer_line.len() + 1) {
            huge_trailers.extend_from_slice(&trailer_line);
        }
        huge_trailers.extend_from_slice(b"\r\n");
        let table: [(&[u8], ChunkError); 16] = [
            (b"\r\n", BadSize),
            (b";x\r\n", BadSize),
            (b"g\r\n", BadSize),
            (b"-1\r\n", BadSize),
            (b" 1\r\n", BadSize),
            (b"1 \r\n", BadSize),
            (b"1\n", BadLineEnd),
            (b"1\rx", BadLineEnd),
            (b"1;a\n", BadLineEnd),
            (b"1;a\x00\r\n", BadSize),
            (b"1\r\nxy", BadLineEnd),
            (b"1\r\nx\n", BadLineEnd),
            (b"10000000000000000\r\n", SizeTooLarge),
            (b"00000000000000001\r\n", SizeTooLarge),
            (b"0\r\nX: y\n", BadLineEnd),
            (b"0\r\n\rX", BadLineEnd),
        ];
        for (input, want) in table {
            assert_eq!(
                feed_whole(Framing::Chunked, input),
                Err(want),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        assert_eq!(
            feed_whole(Framing::Chunked, &long_ext),
            Err(ExtensionTooLong)
        );
        assert_eq!(
            feed_whole(Framing::Chunked, &just_fits).map(|p| p.done),
            Ok(true)
        );
        assert_eq!(
            feed_whole(Framing::Chunked, &huge_trailers),
            Err(TrailersTooLarge)
        );
        // An error is final.
        let mut b = Body::new(Framing::Chunked);
        assert_eq!(b.advance(b"z"), Err(BadSize));
        assert_eq!(b.advance(b"0\r\n\r\n"), Err(BadSize));
        assert!(!b.done());
    }

    /// Feeds `input` in pieces cut at `cuts`, stopping once done or failed.
    fn feed_split(input: &[u8], cuts: &[usize]) -> Result<Progress, ChunkError> {
        let mut cuts: Vec<usize> = cuts.iter().map(|&c| c % (input.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.push(input.len());
        let mut b = Body::new(Framing::Chunked);
        let (mut from, mut total) = (0, 0);
        for cut in cuts {
            let p = b.advance(&input[from..cut])?;
            assert!(p.consumed <= cut - from);
            total += p.consumed;
            if p.done {
                return Ok(Progress {
                    consumed: total,
                    done: true,
                });
            }
            assert_eq!(p.consumed, cut - from, "consumed less without being done");
            from = cut;
        }
        Ok(Progress {
            consumed: total,
            done: false,
        })
    }

    fn chunked_body(chunks: &[(Vec<u8>, bool)], trailers: &[String]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, (data, ext)) in chunks.iter().enumerate() {
            out.extend_from_slice(format!("{:x}", data.len()).as_bytes());
            if *ext {
                out.extend_from_slice(format!(";n{i}=\"v {i}\"").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n");
        for t in trailers {
            out.extend_from_slice(t.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    fn chunks() -> impl Strategy<Value = Vec<(Vec<u8>, bool)>> {
        proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 1..80), any::<bool>()),
            0..6,
        )
    }

    /// A valid request head and where its fields are.
    fn valid_head() -> impl Strategy<Value = Vec<u8>> {
        (
            0..=MAX_EMPTY_LINES,
            "[A-Z]{1,7}|M-SEARCH|[!#$%&'*+.^_`|~0-9a-z-]{1,5}",
            "/[!-~]{0,40}|\\*|[a-z]{1,8}:[0-9]{1,5}",
            any::<bool>(),
            proptest::collection::vec(
                (
                    "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}",
                    "[ \t]{0,2}",
                    "[ -~\t\u{80}-\u{ff}]{0,30}",
                ),
                0..8,
            ),
        )
            .prop_map(|(empty, method, target, one, fields)| {
                let mut buf = b"\r\n".repeat(empty);
                let version = if one { "HTTP/1.1" } else { "HTTP/1.0" };
                buf.extend_from_slice(format!("{method} {target} {version}\r\n").as_bytes());
                for (name, ows, value) in fields {
                    buf.extend_from_slice(format!("{name}:{ows}{value}\r\n").as_bytes());
                }
                buf.extend_from_slice(b"\r\n");
                buf
            })
    }

    proptest! {
        #[test]
        fn a_chunked_body_split_anywhere_ends_at_the_same_byte(
            chunks in chunks(),
            trailers in proptest::collection::vec("[A-Za-z-]{1,10}: [ -~]{0,20}", 0..3),
            next in proptest::collection::vec(any::<u8>(), 0..40),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let body = chunked_body(&chunks, &trailers);
            let mut input = body.clone();
            input.extend_from_slice(&next);
            let whole = feed_whole(Framing::Chunked, &input);
            prop_assert_eq!(whole, Ok(Progress { consumed: body.len(), done: true }));
            prop_assert_eq!(feed_split(&input, &cuts), whole);
            // Cut short, it is not done and takes everything it was given.
            let short = &body[..body.len() - 1];
            prop_assert_eq!(feed_split(short, &cuts), Ok(Progress { consumed: short.len(), done: false }));
        }

        #[test]
        fn any_bytes_walk_the_same_split_or_whole(
            input in proptest::collection::vec(
                prop_oneof![any::<u8>(), Just(b'\r'), Just(b'\n'), Just(b'0'), Just(b'1')],
                0..120,
            ),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let whole = feed_whole(Framing::Chunked, &input);
            prop_assert_eq!(feed_split(&input, &cuts), whole);
        }

        #[test]
        fn any_bytes_parse_without_panicking_and_consistently(
            buf in proptest::collection::vec(any::<u8>(), 0..300),
            max_head in 0usize..400,
            max_fields in 0usize..8,
        ) {
            let mut fields = Vec::new();
            let r = parse_request(&buf, max_head, max_fields, &mut fields);
            match &r {
                Ok(Some(h)) => {
                    prop_assert!(h.len <= buf.len().min(max_head));
                    let again = parse_request(&buf[..h.len], max_head, max_fields, &mut Vec::new());
                    prop_assert_eq!(&again, &r);
                }
                Ok(None) => prop_assert!(buf.len() < max_head),
                Err(HeadError::TooLarge) => prop_assert!(buf.len() >= max_head),
                Err(_) => {}
            }
            let r = parse_response(&buf, max_head, max_fields, &mut fields);
            if let Ok(Some(h)) = &r {
                prop_assert!(h.len <= buf.len().min(max_head));
                let _ = response_framing(&buf, &fields, h.status, false, false);
            }
        }

        #[test]
        fn a_valid_head_parses_and_its_prefixes_wait(
            head in valid_head(),
            tail in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let mut buf = head.clone();
            buf.extend_from_slice(&tail);
            let mut fields = Vec::new();
            let h = parse_request(&buf, MAX, 100, &mut fields).unwrap().expect("complete");
            prop_assert_eq!(h.len, head.len());
            let first = fields.first().map_or(h.len - 2, |f| f.line.start);
            prop_assert_eq!(&buf[h.target.end..first], if h.minor == 1 { &b" HTTP/1.1\r\n"[..] } else { b" HTTP/1.0\r\n" });
            let mut joined = buf[..first].to_vec();
            for f in &fields {
                joined.extend_from_slice(&buf[f.line.clone()]);
            }
            joined.extend_from_slice(b"\r\n");
            prop_assert_eq!(&joined, &head);
            let whole = (h.clone(), fields.clone());
            for k in 0..head.len() {
                prop_assert_eq!(parse_request(&buf[..k], MAX, 100, &mut fields), Ok(None), "prefix {}", k);
            }
            let again = parse_request(&head, MAX, 100, &mut fields).unwrap().unwrap();
            prop_assert_eq!((again, fields), whole);
        }
    }
}
