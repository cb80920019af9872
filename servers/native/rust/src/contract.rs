//! The HTTP contract (servers/contract.py): routes, parameters, limits, bodies and errors, free
//! of I/O. `plan` returns what a request asks for; the server (server.rs) carries it out.

use hyper::body::Bytes;
use sha2::{Digest, Sha256};

pub const MAX_SLEEP_MS: u64 = 60_000;
pub const MAX_FANOUT_CHILDREN: u64 = 1_000;
pub const MAX_UPSTREAM_CALLS: u64 = 100;
pub const MAX_CPU_ROUNDS: u64 = 1_000_000;
pub const MAX_BLOCKING_MS: u64 = 10_000;
pub const MAX_STREAM_CHUNKS: u64 = 1_000;
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
pub const MAX_QUERY_FIELDS: usize = 50;
pub const OFFLOAD_THREADS: usize = 40;

pub const TEXT: &str = "text/plain; charset=utf-8";
pub const JSON: &str = "application/json";
pub const OTHER_ROUTE: &str = "other";

pub const ROUTES: [(&str, &str); 12] = [
    ("/", "GET, HEAD"),
    ("/json", "GET, HEAD"),
    ("/sleep", "GET, HEAD"),
    ("/fanout", "GET, HEAD"),
    ("/cpu", "GET, HEAD"),
    ("/blocking", "GET, HEAD"),
    ("/echo", "POST"),
    ("/stream", "GET, HEAD"),
    ("/healthz", "GET, HEAD"),
    ("/metrics", "GET, HEAD"),
    ("/lag", "GET, HEAD"),
    ("/upstream", "GET, HEAD"),
];

/// A finished response.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub body: Bytes,
    pub content_type: &'static str,
    pub allow: Option<&'static str>,
    /// The request body may be unread or broken: the connection cannot carry another request.
    pub close_connection: bool,
}

impl Response {
    pub fn new(status: u16, body: impl Into<Bytes>, content_type: &'static str) -> Response {
        Response {
            status,
            body: body.into(),
            content_type,
            allow: None,
            close_connection: false,
        }
    }

    pub fn json(status: u16, body: String) -> Response {
        Response::new(status, body, JSON)
    }

    pub fn closing(mut self) -> Response {
        self.close_connection = true;
        self
    }
}

/// `{"error": message}`, as json.dumps writes it (ASCII only: the messages quote targets,
/// which the framing policy limits to visible ASCII).
/// contract.error: the message as given (the callers clip what a client controls, as
/// contract.py does: the path to 200 characters, the method to 20).
pub fn error(status: u16, message: &str) -> Response {
    Response::json(status, format!("{{\"error\":{}}}", json_string(message)))
}

/// A JSON string as Python's json.dumps (ensure_ascii) writes it.
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{:04x}", unit));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub fn too_large() -> Response {
    error(413, &format!("body larger than {} bytes", MAX_BODY_BYTES)).closing()
}

pub fn timed_out() -> Response {
    error(408, "request body too slow").closing()
}

pub fn incomplete() -> Response {
    error(400, "request body incomplete or malformed").closing()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Python,
    C,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Python => "python",
            Kind::C => "c",
        }
    }
}

#[derive(Debug)]
pub enum Plan {
    Reply(Response),
    Sleep { ms: u64 },
    Fanout { children: u64, ms: u64 },
    Upstream { calls: u64, ms: u64 },
    Blocking { ms: u64, offload: bool, kind: Kind },
    Stream { chunks: u64, ms: u64 },
    Echo,
    Metrics,
    Lag,
}

pub fn sleep_response(ms: u64) -> Response {
    Response::json(200, format!("{{\"slept_ms\":{}}}", ms))
}

pub fn fanout_response(children: u64, ms: u64) -> Response {
    Response::json(200, format!("{{\"children\":{},\"slept_ms\":{}}}", children, ms))
}

pub fn blocking_response(ms: u64, offload: bool, kind: Kind) -> Response {
    Response::json(
        200,
        format!("{{\"blocked_ms\":{},\"offload\":{},\"kind\":\"{}\"}}", ms, offload, kind.name()),
    )
}

pub fn upstream_response(calls: u64, statuses: &[u16]) -> Response {
    let list: Vec<String> = statuses.iter().map(|s| s.to_string()).collect();
    Response::json(200, format!("{{\"calls\":{},\"status\":[{}]}}", calls, list.join(",")))
}

pub fn stream_chunk(index: u64) -> Vec<u8> {
    format!("chunk {}\n", index).into_bytes()
}

/// `rounds` chained sha256 hashes: pure CPU work with no chance to yield.
pub fn cpu_digest(rounds: u64) -> String {
    let mut digest: Vec<u8> = b"stackbench".to_vec();
    for _ in 0..rounds {
        digest = Sha256::digest(&digest).to_vec();
    }
    digest.iter().map(|b| format!("{:02x}", b)).collect()
}

/// The `route` metric label for a path: its template, or `other`.
pub fn route_label(path: &str) -> &'static str {
    ROUTES.iter().find(|(route, _)| *route == path).map(|(route, _)| *route).unwrap_or(OTHER_ROUTE)
}

pub fn method_label(method: &str) -> &'static str {
    crate::policy::KNOWN_METHODS.iter().find(|m| **m == method).copied().unwrap_or("other")
}

/// Route one request: its `route` label and its plan.
pub fn plan(method: &str, target: &str) -> (&'static str, Plan) {
    let origin;
    let target = if target.starts_with('/') {
        target
    } else {
        origin = origin_form(target);
        origin.as_str()
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, query),
        None => (target, ""),
    };
    let route = route_label(path);
    if route == OTHER_ROUTE {
        let shown: String = path.chars().take(200).collect();
        return (route, Plan::Reply(error(404, &format!("no route {}", shown))));
    }
    let allowed = ROUTES.iter().find(|(r, _)| *r == route).map(|(_, a)| *a).unwrap_or("");
    if !allowed.split(',').any(|m| m.trim_start() == method) {
        let shown: String = method.chars().take(20).collect();
        let mut response = error(405, &format!("method {} not allowed", shown));
        response.allow = Some(allowed);
        return (route, Plan::Reply(response));
    }
    match plan_route(route, query) {
        Ok(plan) => (route, plan),
        Err(message) => (route, Plan::Reply(error(400, &message))),
    }
}

fn plan_route(route: &str, query: &str) -> Result<Plan, String> {
    // The constant routes answer whatever the query (contract._CONSTANT: never parsed).
    match route {
        "/" => return Ok(Plan::Reply(Response::new(200, &b"Hello, World!"[..], TEXT))),
        "/json" => {
            return Ok(Plan::Reply(Response::json(200, "{\"message\":\"Hello, World!\"}".into())))
        }
        "/healthz" => return Ok(Plan::Reply(Response::new(200, &b"ok"[..], TEXT))),
        _ => (),
    }
    let params = Params::parse(query)?;
    Ok(match route {
        "/sleep" => Plan::Sleep { ms: params.int("ms", 0, MAX_SLEEP_MS, None)? },
        "/fanout" => Plan::Fanout {
            children: params.int("n", 1, MAX_FANOUT_CHILDREN, None)?,
            ms: params.int("ms", 0, MAX_SLEEP_MS, None)?,
        },
        "/upstream" => Plan::Upstream {
            calls: params.int("n", 1, MAX_UPSTREAM_CALLS, None)?,
            ms: params.int("ms", 0, MAX_SLEEP_MS, None)?,
        },
        "/cpu" => {
            let rounds = params.int("n", 0, MAX_CPU_ROUNDS, None)?;
            Plan::Reply(Response::json(
                200,
                format!("{{\"rounds\":{},\"digest\":\"{}\"}}", rounds, cpu_digest(rounds)),
            ))
        }
        "/blocking" => {
            let ms = params.int("ms", 0, MAX_BLOCKING_MS, None)?;
            let offload = params.int("offload", 0, 1, Some(1))? == 1;
            let kind = match params.get("kind").unwrap_or("python") {
                "python" => Kind::Python,
                "c" => Kind::C,
                _ => return Err("kind must be one of python, c".into()),
            };
            Plan::Blocking { ms, offload, kind }
        }
        "/stream" => Plan::Stream {
            chunks: params.int("chunks", 1, MAX_STREAM_CHUNKS, None)?,
            ms: params.int("ms", 0, MAX_SLEEP_MS, None)?,
        },
        "/echo" => Plan::Echo,
        "/metrics" => Plan::Metrics,
        "/lag" => Plan::Lag,
        _ => unreachable!("route {} has no plan", route),
    })
}

/// contract.origin_form: an absolute-form target as the origin-form path and query it names.
pub fn origin_form(target: &str) -> String {
    let (scheme, rest) = match target.split_once("://") {
        Some(parts) => parts,
        None => return target.to_string(),
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return target.to_string();
    }
    let slash = rest.find('/');
    let query = rest.find('?');
    match (slash, query) {
        (None, Some(q)) => format!("/{}", &rest[q..]),
        (None, None) => "/".to_string(),
        (Some(s), Some(q)) if q < s => format!("/{}", &rest[q..]),
        (Some(s), _) => rest[s..].to_string(),
    }
}

/// Query parameters as Python's parse_qsl(keep_blank_values=True, max_num_fields=50) reads
/// them; the first occurrence of a name wins.
struct Params {
    values: Vec<(String, String)>,
}

impl Params {
    fn parse(query: &str) -> Result<Params, String> {
        if 1 + query.matches('&').count() > MAX_QUERY_FIELDS {
            return Err(format!("more than {} query parameters", MAX_QUERY_FIELDS));
        }
        let mut values: Vec<(String, String)> = Vec::new();
        for field in query.split('&') {
            if field.is_empty() {
                continue;
            }
            let (name, value) = field.split_once('=').unwrap_or((field, ""));
            let name = unquote_plus(name);
            if values.iter().all(|(n, _)| *n != name) {
                values.push((name, unquote_plus(value)));
            }
        }
        Ok(Params { values })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn int(&self, name: &str, low: u64, high: u64, default: Option<u64>) -> Result<u64, String> {
        let raw = match (self.get(name), default) {
            (Some(raw), _) => raw,
            (None, Some(default)) => return Ok(default),
            (None, None) => {
                return Err(format!("missing parameter {} (integer {}..{})", name, low, high))
            }
        };
        let bad = || format!("{} must be an integer {}..{}", name, low, high);
        if raw.is_empty() || raw.len() > 9 || !raw.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let value: u64 = raw.parse().map_err(|_| bad())?;
        if value < low || value > high {
            return Err(bad());
        }
        Ok(value)
    }
}

/// urllib.parse.unquote_plus (UTF-8, errors replaced).
fn unquote_plus(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len()
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit() =>
            {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_and_routes() {
        assert_eq!(cpu_digest(0), "737461636b62656e6368");
        assert_eq!(origin_form("http://h/json?x"), "/json?x");
        assert_eq!(origin_form("http://h?x"), "/?x");
        assert_eq!(origin_form("HTTP://h"), "/");
        let (route, plan) = plan("GET", "/sleep?ms=5");
        assert_eq!(route, "/sleep");
        assert!(matches!(plan, Plan::Sleep { ms: 5 }));
        let (_, plan) = plan_for("GET", "/sleep?ms=%35");
        assert!(matches!(plan, Plan::Sleep { ms: 5 }));
        assert_eq!(unquote_plus("a%2"), "a%2");
        assert_eq!(json_string("a\"b"), "\"a\\\"b\"");
    }

    fn plan_for(method: &str, target: &str) -> (&'static str, Plan) {
        plan(method, target)
    }
}
