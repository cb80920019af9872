//! The framing policy (servers/protocol/framing.py), ported as pure functions over bytes.
//!
//! `scan` reads one request head from the front of a buffer the way the gevent server does
//! (line by line: the request line within MAX_REQUEST_LINE_BYTES, the whole head within
//! MAX_HEAD_BYTES, every line ended by CRLF), then parses it as strictly as `parse_head` and
//! applies `check_request`. The head gate (gate.rs) calls it on the bytes a client sent, before
//! hyper sees any of them: hyper's own parser (httparse) is both stricter and laxer than the
//! policy, and answers its errors as bare `400 Bad Request` with no JSON nor impl header.

pub const MAX_REQUEST_LINE_BYTES: usize = 8 * 1024;
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
pub const MAX_HEADER_COUNT: usize = 100;
pub const MAX_FIELD_BYTES: usize = 8190;
pub const MAX_BODY_BYTES: u64 = 1024 * 1024;

pub const KNOWN_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

const SINGLETON_FIELDS: [&[u8]; 10] = [
    b"content-length",
    b"content-location",
    b"content-range",
    b"content-type",
    b"etag",
    b"host",
    b"max-forwards",
    b"server",
    b"transfer-encoding",
    b"user-agent",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub message: String,
}

impl Rejection {
    fn new(status: u16, message: impl Into<String>) -> Rejection {
        Rejection { status, message: message.into() }
    }
}

fn line_too_long() -> Rejection {
    Rejection::new(414, format!("request line longer than {} bytes", MAX_REQUEST_LINE_BYTES))
}

fn bare_lf() -> Rejection {
    Rejection::new(400, "a line ended by a bare LF (not CRLF)")
}

fn head_too_large() -> Rejection {
    Rejection::new(431, format!("request head larger than {} bytes", MAX_HEAD_BYTES))
}

/// How the request's body is framed, once the policy has accepted its head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
}

/// A head the policy accepted: what the server needs of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub target: String,
    pub http10: bool,
    pub framing: Framing,
    /// The connection ends after this request (`Connection: close`, or HTTP/1.0 as h11 reads it).
    pub close: bool,
    pub expect_continue: bool,
    pub content_type: Option<Vec<u8>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// The head is not complete yet (and within the limits so far).
    NeedMore,
    /// An accepted head, `len` bytes long (its blank line included).
    Accept { len: usize, head: Head },
    /// A refused head; `head_method`: its request line says HEAD (the answer has no body).
    Reject { rejection: Rejection, head_method: bool },
}

fn find_lf(data: &[u8]) -> Option<usize> {
    data.iter().position(|&b| b == b'\n')
}

/// Read one head from the front of `buf`.
pub fn scan(buf: &[u8]) -> Scan {
    // The request line: at most MAX_REQUEST_LINE_BYTES, its CRLF included.
    let window = &buf[..buf.len().min(MAX_REQUEST_LINE_BYTES + 1)];
    let end = match find_lf(window) {
        Some(end) => end,
        None if window.len() > MAX_REQUEST_LINE_BYTES => {
            return Scan::Reject { rejection: line_too_long(), head_method: false }
        }
        None => return Scan::NeedMore,
    };
    if end + 1 > MAX_REQUEST_LINE_BYTES {
        return Scan::Reject { rejection: line_too_long(), head_method: false };
    }
    let head_method = buf.starts_with(b"HEAD ");
    if end == 0 || buf[end - 1] != b'\r' {
        return Scan::Reject { rejection: bare_lf(), head_method };
    }
    let mut lines: Vec<&[u8]> = vec![&buf[..end - 1]];
    let mut size = end + 1;
    let mut pos = end + 1;
    loop {
        let limit = MAX_HEAD_BYTES + 1 - size.min(MAX_HEAD_BYTES + 1);
        let window = &buf[pos..buf.len().min(pos + limit)];
        let at = match find_lf(window) {
            Some(at) => at,
            None if window.len() >= limit => {
                return Scan::Reject { rejection: head_too_large(), head_method }
            }
            None => return Scan::NeedMore,
        };
        size += at + 1;
        if size > MAX_HEAD_BYTES {
            return Scan::Reject { rejection: head_too_large(), head_method };
        }
        if at == 0 || window[at - 1] != b'\r' {
            return Scan::Reject { rejection: bare_lf(), head_method };
        }
        let line = &window[..at - 1];
        pos += at + 1;
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    match parse_head(&lines) {
        Ok(head) => Scan::Accept { len: pos, head },
        Err(rejection) => Scan::Reject { rejection, head_method },
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(text: &[u8]) -> bool {
    !text.is_empty() && text.iter().all(|&b| is_tchar(b))
}

fn is_field_value_byte(b: u8) -> bool {
    !(b <= 0x08 || (0x0a..=0x1f).contains(&b) || b == 0x7f)
}

fn trim_sp_ht(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

/// Python's bytes.strip(): ASCII whitespace on both ends.
fn strip_ascii(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c, rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c] = value {
        value = rest;
    }
    value
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

fn truncate(text: &str, chars: usize) -> String {
    text.chars().take(chars).collect()
}

/// framing.parse_head: the request line and header lines (without their CRLFs).
fn parse_head(lines: &[&[u8]]) -> Result<Head, Rejection> {
    let line = lines[0];
    let malformed_line = || Rejection::new(400, "malformed request line");
    let mut parts = line.split(|&b| b == b' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next())
    {
        (Some(m), Some(t), Some(v), None) => (m, t, v),
        _ => return Err(malformed_line()),
    };
    if !is_token(method) || target.is_empty() || !target.iter().all(|b| (0x21..=0x7e).contains(b))
    {
        return Err(malformed_line());
    }
    let version = match version {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            format!("{}.{}", *major as char, *minor as char)
        }
        _ => return Err(malformed_line()),
    };
    let mut headers: Vec<(Vec<u8>, &[u8])> = Vec::with_capacity(lines.len() - 1);
    for field_line in &lines[1..] {
        let parsed = field_line.iter().position(|&b| b == b':').and_then(|colon| {
            let name = &field_line[..colon];
            let rest = &field_line[colon + 1..];
            if is_token(name) && rest.iter().all(|&b| is_field_value_byte(b)) {
                Some((name.to_ascii_lowercase(), trim_sp_ht(rest)))
            } else {
                None
            }
        });
        match parsed {
            Some(field) => headers.push(field),
            None if matches!(field_line.first(), Some(b' ' | b'\t')) => {
                return Err(Rejection::new(
                    400,
                    "obsolete line folding (a header line starting with whitespace)",
                ))
            }
            None => return Err(Rejection::new(400, "malformed header line")),
        }
    }
    let method = latin1(method);
    check_request(&method, &version, &headers, target == b"*")?;
    fn field<'h, 'v>(
        headers: &'h [(Vec<u8>, &'v [u8])],
        name: &'static [u8],
    ) -> impl Iterator<Item = &'h (Vec<u8>, &'v [u8])> {
        headers.iter().filter(move |(n, _)| n.as_slice() == name)
    }
    let framing = if field(&headers, b"transfer-encoding").next().is_some() {
        Framing::Chunked
    } else {
        match field(&headers, b"content-length").next() {
            // check_request accepted it: digits only, within MAX_BODY_BYTES
            Some((_, value)) => Framing::Length(content_length(value).unwrap_or(0)),
            None => Framing::Length(0),
        }
    };
    let options: Vec<Vec<u8>> = field(&headers, b"connection")
        .flat_map(|(_, value)| value.split(|&b| b == b','))
        .map(|token| strip_ascii(token).to_ascii_lowercase())
        .collect();
    let http10 = version == "1.0";
    // h11 (the runtime tier's core) keeps no HTTP/1.0 connection alive.
    let close = http10 || options.iter().any(|token| token == b"close");
    let expect_continue = !http10
        && field(&headers, b"expect").any(|(_, value)| value.eq_ignore_ascii_case(b"100-continue"));
    let content_type = field(&headers, b"content-type").next().map(|(_, value)| value.to_vec());
    Ok(Head { method, target: latin1(target), http10, framing, close, expect_continue, content_type })
}

/// A Content-Length value, if it is plain ASCII digits (any size: None past u64 is "huge").
fn content_length(value: &[u8]) -> Option<u64> {
    let digits = strip_ascii(value);
    let significant: &[u8] = {
        let first = digits.iter().position(|&b| b != b'0').unwrap_or(digits.len());
        &digits[first..]
    };
    if significant.len() > 18 {
        return Some(u64::MAX);
    }
    significant.iter().fold(Some(0u64), |acc, &b| acc.map(|n| n * 10 + u64::from(b - b'0')))
}

/// framing.check_request, with field sizes checked.
pub fn check_request(
    method: &str,
    version: &str,
    headers: &[(Vec<u8>, &[u8])],
    asterisk: bool,
) -> Result<(), Rejection> {
    if version != "1.1" && version != "1.0" {
        return Err(Rejection::new(505, format!("HTTP/{} not supported", truncate(version, 10))));
    }
    if !KNOWN_METHODS.contains(&method) {
        return Err(Rejection::new(501, format!("method {} not implemented", truncate(method, 20))));
    }
    if asterisk && method != "OPTIONS" {
        // RFC 9112 section 3.2.4
        return Err(Rejection::new(400, "the asterisk-form is for OPTIONS only"));
    }
    let mut seen: Vec<&[u8]> = Vec::new();
    let mut repeated: Option<&[u8]> = None;
    let mut lengths: Vec<&[u8]> = Vec::new();
    let mut codings: Vec<&[u8]> = Vec::new();
    for (name, value) in headers {
        if name.len() + value.len() > MAX_FIELD_BYTES {
            return Err(Rejection::new(
                431,
                format!("a header field longer than {} bytes", MAX_FIELD_BYTES),
            ));
        }
        if let Some(singleton) = SINGLETON_FIELDS.iter().find(|s| **s == name.as_slice()) {
            if seen.contains(singleton) {
                repeated = Some(singleton);
            } else {
                seen.push(singleton);
            }
            if *singleton == b"content-length" {
                lengths.push(value);
            } else if *singleton == b"transfer-encoding" {
                codings.push(value);
            }
        }
    }
    if headers.len() > MAX_HEADER_COUNT {
        return Err(Rejection::new(431, format!("more than {} header fields", MAX_HEADER_COUNT)));
    }
    if let Some(name) = repeated {
        return Err(Rejection::new(400, format!("repeated {} header", latin1(name))));
    }
    if version == "1.1" && !seen.contains(&&b"host"[..]) {
        return Err(Rejection::new(400, "HTTP/1.1 needs a Host header"));
    }
    if !codings.is_empty() {
        return check_transfer_coding(version, &codings, &lengths);
    }
    if let Some(value) = lengths.first() {
        let digits = strip_ascii(value);
        if digits.is_empty() || !digits.iter().all(|b| b.is_ascii_digit()) {
            return Err(Rejection::new(400, "malformed Content-Length"));
        }
        if content_length(value).unwrap_or(u64::MAX) > MAX_BODY_BYTES {
            return Err(Rejection::new(413, format!("body larger than {} bytes", MAX_BODY_BYTES)));
        }
    }
    Ok(())
}

fn check_transfer_coding(version: &str, codings: &[&[u8]], lengths: &[&[u8]]) -> Result<(), Rejection> {
    if !lengths.is_empty() {
        return Err(Rejection::new(400, "Content-Length and Transfer-Encoding together"));
    }
    if version != "1.1" {
        return Err(Rejection::new(400, "Transfer-Encoding in an HTTP/1.0 request"));
    }
    let tokens: Vec<Vec<u8>> = codings
        .iter()
        .flat_map(|value| value.split(|&b| b == b','))
        .map(|token| strip_ascii(token).to_ascii_lowercase())
        .collect();
    if tokens.iter().any(|token| token.is_empty()) {
        return Err(Rejection::new(400, "an empty transfer coding"));
    }
    let chunked = tokens.iter().filter(|token| token.as_slice() == b"chunked").count();
    if tokens.last().map(|t| t.as_slice()) != Some(&b"chunked"[..]) || chunked > 1 {
        return Err(Rejection::new(400, "chunked must be the final transfer coding, once"));
    }
    if tokens.len() > 1 {
        return Err(Rejection::new(501, "only the chunked transfer coding is supported"));
    }
    Ok(())
}

/// An incremental reader of a chunked body: it validates the framing and re-emits it in
/// canonical form (`{size:x}\r\n`, the data, `\r\n`, then `0\r\n\r\n`, extensions and
/// trailers dropped), so that hyper's decoder reads exactly the body the policy framed.
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
}

#[derive(Debug, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

impl Default for ChunkState {
    fn default() -> ChunkState {
        ChunkState::Size
    }
}

pub enum ChunkStep {
    /// Consumed this many bytes of the input (and appended what hyper gets to `out`).
    Consumed(usize),
    /// The input holds no complete step yet.
    NeedMore,
    /// The body has ended after consuming this many bytes.
    Done(usize),
    Broken,
}

const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 8192;

impl Chunked {
    pub fn step(&mut self, input: &[u8], out: &mut Vec<u8>) -> ChunkStep {
        match self.state {
            ChunkState::Size => {
                let end = match find_lf(&input[..input.len().min(MAX_CHUNK_LINE)]) {
                    Some(end) => end,
                    None if input.len() >= MAX_CHUNK_LINE => return ChunkStep::Broken,
                    None => return ChunkStep::NeedMore,
                };
                if end == 0 || input[end - 1] != b'\r' {
                    return ChunkStep::Broken;
                }
                let line = &input[..end - 1];
                let hex_end = line.iter().position(|b| !b.is_ascii_hexdigit()).unwrap_or(line.len());
                let (hex, rest) = line.split_at(hex_end);
                if hex.is_empty() || hex.len() > 16 {
                    return ChunkStep::Broken;
                }
                if !chunk_extensions(rest) {
                    return ChunkStep::Broken;
                }
                let size = match u64::from_str_radix(std::str::from_utf8(hex).unwrap_or("x"), 16) {
                    Ok(size) => size,
                    Err(_) => return ChunkStep::Broken,
                };
                if size == 0 {
                    self.state = ChunkState::Trailers;
                } else {
                    out.extend_from_slice(format!("{:x}\r\n", size).as_bytes());
                    self.state = ChunkState::Data(size);
                }
                ChunkStep::Consumed(end + 1)
            }
            ChunkState::Data(left) => {
                if input.is_empty() {
                    return ChunkStep::NeedMore;
                }
                let take = (input.len() as u64).min(left) as usize;
                out.extend_from_slice(&input[..take]);
                self.state = if take as u64 == left { ChunkState::DataEnd } else { ChunkState::Data(left - take as u64) };
                ChunkStep::Consumed(take)
            }
            ChunkState::DataEnd => {
                if input.len() < 2 {
                    return if input.is_empty() || input[0] == b'\r' { ChunkStep::NeedMore } else { ChunkStep::Broken };
                }
                if &input[..2] != b"\r\n" {
                    return ChunkStep::Broken;
                }
                out.extend_from_slice(b"\r\n");
                self.state = ChunkState::Size;
                ChunkStep::Consumed(2)
            }
            ChunkState::Trailers => {
                // Trailer lines until an empty one, within MAX_TRAILERS, each ended by CRLF.
                let mut pos = 0;
                loop {
                    let window = &input[pos..input.len().min(MAX_TRAILERS)];
                    let end = match find_lf(window) {
                        Some(end) => end,
                        None if input.len() >= MAX_TRAILERS => return ChunkStep::Broken,
                        None => return ChunkStep::NeedMore,
                    };
                    if end == 0 || window[end - 1] != b'\r' {
                        return ChunkStep::Broken;
                    }
                    let line = &window[..end - 1];
                    pos += end + 1;
                    if line.is_empty() {
                        out.extend_from_slice(b"0\r\n\r\n");
                        self.state = ChunkState::Done;
                        return ChunkStep::Done(pos);
                    }
                    if !trailer_line(line) {
                        return ChunkStep::Broken;
                    }
                }
            }
            ChunkState::Done => ChunkStep::Done(0),
        }
    }
}

/// RFC 9112 section 2.2: the bytes of empty lines (CRLF only) at the start of `data`, which
/// a server ignores before a request line (framing.empty_lines).
pub fn empty_lines(data: &[u8]) -> usize {
    let mut at = 0;
    while data[at..].starts_with(b"\r\n") {
        at += 2;
    }
    at
}

/// framing.check_chunk_line's extensions: *( ";" token [ "=" ( token / quoted-string ) ] ),
/// no whitespace anywhere (the discrepancy chunk-line smuggling uses).
fn chunk_extensions(line: &[u8]) -> bool {
    let token_end = |at: usize| at + line[at..].iter().take_while(|&&b| is_tchar(b)).count();
    let mut at = 0;
    while at < line.len() {
        if line[at] != b';' {
            return false;
        }
        let end = token_end(at + 1);
        if end == at + 1 {
            return false; // an extension without a name
        }
        at = end;
        if at == line.len() || line[at] != b'=' {
            continue;
        }
        at += 1;
        if line.get(at) == Some(&b'"') {
            match quoted_string_end(line, at) {
                Some(end) => at = end,
                None => return false,
            }
            continue;
        }
        let end = token_end(at);
        if end == at {
            return false; // `=` without a value
        }
        at = end;
    }
    true
}

/// The end of the quoted-string (RFC 9110 section 5.6.4) opening at `line[at]`.
fn quoted_string_end(line: &[u8], mut at: usize) -> Option<usize> {
    let text = |b: u8| b == b'\t' || (b >= 0x20 && b != 0x7f);
    at += 1;
    while at < line.len() {
        match line[at] {
            b'"' => return Some(at + 1),
            b'\\' => {
                at += 1;
                if !line.get(at).map_or(false, |&b| text(b)) {
                    return None;
                }
            }
            b if !text(b) => return None,
            _ => {}
        }
        at += 1;
    }
    None
}

/// A trailer field line (CRLF gone), held to a header line's syntax: token ":" value.
fn trailer_line(line: &[u8]) -> bool {
    let name = line.iter().take_while(|&&b| is_tchar(b)).count();
    name > 0
        && line.get(name) == Some(&b':')
        && line[name + 1..].iter().all(|&b| is_field_value_byte(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(wire: &[u8]) -> Option<u16> {
        match scan(wire) {
            Scan::Reject { rejection, .. } => Some(rejection.status),
            Scan::Accept { .. } => None,
            Scan::NeedMore => Some(0),
        }
    }

    #[test]
    fn corpus_statuses() {
        let post = |fields: &str| format!("POST /echo HTTP/1.1\r\nHost: c\r\n{}\r\n", fields);
        assert_eq!(status(post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n").as_bytes()), Some(400));
        assert_eq!(status(post("Content-Length: 5, 5\r\n").as_bytes()), Some(400));
        assert_eq!(status(post("Content-Length: +5\r\n").as_bytes()), Some(400));
        assert_eq!(status(post("Content-Length: \r\n").as_bytes()), Some(400));
        assert_eq!(status(post("Transfer-Encoding: gzip, chunked\r\n").as_bytes()), Some(501));
        assert_eq!(status(post("Transfer-Encoding: chunked,\r\n").as_bytes()), Some(400));
        assert_eq!(status(post("Transfer-Encoding: ChUnKeD\r\n").as_bytes()), None);
        assert_eq!(status(post("Content-Length : 5\r\n").as_bytes()), Some(400));
        assert_eq!(status(post("X-A: a\r\n b\r\n").as_bytes()), Some(400));
        assert_eq!(status(post("Content-Length: 99999999999999999999999999\r\n").as_bytes()), Some(413));
        assert_eq!(status(b"GET /json HTTP/1.1\r\n\r\n"), Some(400));
        assert_eq!(status(b"GET /json HTTP/1.0\r\n\r\n"), None);
        assert_eq!(status(b"GET /json HTTP/2.0\r\nHost: c\r\n\r\n"), Some(505));
        assert_eq!(status(b"GET /json HTTP/1.x\r\nHost: c\r\n\r\n"), Some(400));
        assert_eq!(status(b"BREW /json HTTP/1.1\r\nHost: c\r\n\r\n"), Some(501));
        assert_eq!(status(b"BREW /json HTTP/2.0\r\nHost: c\r\n\r\n"), Some(505));
        assert_eq!(status(b"M-SEARCH * HTTP/1.1\r\nHost: c\r\n\r\n"), Some(501));
        assert_eq!(status(b"GET * HTTP/1.1\r\nHost: c\r\n\r\n"), Some(400));
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: c\r\nX: a\x7fb\r\n\r\n"), Some(400));
        assert_eq!(status(b"G(T /json HTTP/1.1\r\nHost: c\r\n\r\n"), Some(400));
        assert_eq!(status(b"GET /json HTTP/1.1\nHost: c\n\n"), Some(400));
        assert_eq!(status(b"GET /json HTTP/1.1\r\r\nHost: c\r\n\r\n"), Some(400));
        assert_eq!(status(b"GET /json HTTP/1.1\r\nHost: c"), Some(0));
        let long = format!("GET /{} HTTP/1.1\r\nHost: c\r\n\r\n", "a".repeat(20 * 1024));
        assert_eq!(status(long.as_bytes()), Some(414));
        let fields: String = (0..100).map(|i| format!("X-{}: v\r\n", i)).collect();
        assert_eq!(status(format!("GET / HTTP/1.1\r\nHost: c\r\n{}\r\n", fields).as_bytes()), Some(431));
    }

    #[test]
    fn chunked_is_reframed() {
        let mut parser = Chunked::default();
        let mut input: &[u8] = b"5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\nGET";
        let mut out = Vec::new();
        loop {
            match parser.step(input, &mut out) {
                ChunkStep::Consumed(n) => input = &input[n..],
                ChunkStep::Done(n) => {
                    input = &input[n..];
                    break;
                }
                _ => panic!("broken"),
            }
        }
        assert_eq!(out, b"5\r\nhello\r\n0\r\n\r\n");
        assert_eq!(input, b"GET");
        let mut parser = Chunked::default();
        assert!(matches!(parser.step(b"zz\r\n", &mut out), ChunkStep::Broken));
        // tests/test_framing_policy.py's test_a_chunk_line_is_read_strictly, in part.
        for line in [&b"2;a\r\n"[..], b"2;a=b;c\r\n", b"2;a=\"b;c\\\" d\"\r\n", b"2;a=\"\"\r\n", b"2;a=\"\xff\"\r\n"] {
            assert!(matches!(Chunked::default().step(line, &mut out), ChunkStep::Consumed(_)), "{:?}", line);
        }
        for line in [&b"2;\r\n"[..], b"5 \r\n", b"2\t\r\n", b"2; a\r\n", b"2;a \r\n", b"2;a = b\r\n", b"2;=b\r\n",
                     b"2;;a\r\n", b"2;a=\r\n", b"2;a=\"b\r\n", b"2;a(\r\n", b"2;a=\x7f\r\n", b"2;a=\xff\r\n", b"2\r\r\n"] {
            assert!(matches!(Chunked::default().step(line, &mut out), ChunkStep::Broken), "{:?}", line);
        }
        assert_eq!(empty_lines(b"\r\n\r\n\nGET"), 4);
    }
}
