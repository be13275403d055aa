//! A tiny HTTP/1.1 client for the server tests: each request on a fresh connection
//! (`Connection: close`), chunked bodies de-chunked, streamed answers read until the server
//! closes or a time limit passes.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    /// Chunked: the terminating zero-size chunk arrived (the body was not cut short).
    pub(crate) complete: bool,
}

impl Answer {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub(crate) fn invalid(m: impl Into<String>) -> std::io::Error {
    std::io::Error::new(ErrorKind::InvalidData, m.into())
}

/// De-chunk a `Transfer-Encoding: chunked` body; whether the final chunk was there.
pub(crate) fn dechunk(mut rest: &[u8]) -> std::io::Result<(Vec<u8>, bool)> {
    let mut out = vec![];
    while let Some(p) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&rest[..p]);
        let size = size.split(';').next().unwrap_or("").trim();
        let n = usize::from_str_radix(size, 16).map_err(|_| invalid(format!("chunk `{size}`")))?;
        if n == 0 {
            return Ok((out, true));
        }
        let data = rest
            .get(p + 2..p + 2 + n)
            .ok_or_else(|| invalid("a chunk cut short"))?;
        out.extend_from_slice(data);
        rest = rest.get(p + 2 + n + 2..).unwrap_or(&[]);
    }
    Ok((out, false))
}

pub(crate) fn parse_answer(raw: &[u8]) -> std::io::Result<Answer> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid(format!("no header end in {} bytes", raw.len())))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("status line of `{head}`")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let body = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let (body, complete) = if chunked {
        dechunk(body)?
    } else {
        (body.to_vec(), true)
    };
    Ok(Answer {
        status,
        headers,
        body,
        complete,
    })
}

pub(crate) fn request_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut out = req.into_bytes();
    out.extend_from_slice(body);
    out
}

/// One request; the answer read until the server closes the connection.
pub(crate) fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Answer> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(&request_bytes(addr, method, path, headers, body))?;
    let mut raw = vec![];
    s.read_to_end(&mut raw)?;
    parse_answer(&raw)
}

pub(crate) fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    try_http(addr, method, path, headers, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

pub(crate) fn get(addr: SocketAddr, path: &str) -> Answer {
    http(addr, "GET", path, &[], b"")
}

/// A GET whose answer streams: read until the server closes or `limit` passes; whether it
/// closed.
pub(crate) fn get_stream(addr: SocketAddr, path: &str, limit: Duration) -> (Answer, bool) {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.write_all(&request_bytes(addr, "GET", path, &[], b""))
        .unwrap();
    let mut raw = vec![];
    let mut buf = [0u8; 8192];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("GET {path}: {e}"),
        }
        if t.elapsed() > limit {
            break false;
        }
    };
    (parse_answer(&raw).unwrap(), closed)
}

/// One request to a server that may keep the connection open after its answer (ChromeDriver
/// does, whatever `Connection: close` says): the answer read until its `Content-Length` bytes
/// are in (or the server closes); an error if that takes longer than `limit`.
pub(crate) fn try_http_sized(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    limit: Duration,
) -> std::io::Result<Answer> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, limit)?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    s.write_all(&request_bytes(addr, method, path, headers, body))?;
    let mut raw = vec![];
    let mut buf = [0u8; 1 << 16];
    loop {
        if let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..split]);
            let len = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok());
            if let Some(n) = len
                && raw.len() >= split + 4 + n
            {
                raw.truncate(split + 4 + n);
                break;
            }
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e),
        }
        if t.elapsed() > limit {
            return Err(std::io::Error::new(
                ErrorKind::TimedOut,
                format!("{method} {path}: no complete answer within {limit:?}"),
            ));
        }
    }
    parse_answer(&raw)
}
