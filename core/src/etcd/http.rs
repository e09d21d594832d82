//! An HTTP/1.1 response read in pieces as they arrive: the head by `httparse`, then the body,
//! framed by Content-Length, chunked transfer-encoding (chunk sizes by `httparse`) or the end
//! of the connection. The decoded body accumulates for the caller to take.

/// The most bytes of head or of body held at once.
pub const MAX_HELD: usize = 64 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Body {
    Length(u64),
    /// Before a chunk's size line.
    ChunkSize,
    /// Inside a chunk, this many bytes left.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailer,
    UntilClose,
    Done,
}

/// A response being read.
#[derive(Debug, Default)]
pub struct ResponseReader {
    /// Bytes not consumed yet (a partial head or chunk framing).
    raw: Vec<u8>,
    status: Option<u16>,
    body_state: Option<Body>,
    /// The decoded body so far, not yet taken.
    pub body: Vec<u8>,
}

impl ResponseReader {
    pub fn new() -> ResponseReader {
        ResponseReader::default()
    }

    /// The status, once the head is in.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// The whole body is in.
    pub fn complete(&self) -> bool {
        self.body_state == Some(Body::Done)
    }

    /// Takes in bytes read from the connection.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), String> {
        self.raw.extend_from_slice(data);
        if self.body_state.is_none() && !self.parse_head()? {
            if self.raw.len() > 64 * 1024 {
                return Err("the response head is too long".to_owned());
            }
            return Ok(());
        }
        self.parse_body()?;
        if self.body.len() > MAX_HELD {
            return Err("the response is too large".to_owned());
        }
        Ok(())
    }

    /// The connection ended: fine when the body was framed by it (or complete).
    pub fn eof(&mut self) -> Result<(), String> {
        match self.body_state {
            Some(Body::UntilClose) | Some(Body::Done) => {
                self.body_state = Some(Body::Done);
                Ok(())
            }
            None => Err("etcd closed the connection before answering".to_owned()),
            Some(_) => Err("etcd closed the connection in the middle of an answer".to_owned()),
        }
    }

    fn parse_head(&mut self) -> Result<bool, String> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(&self.raw) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(false),
            Err(e) => return Err(format!("invalid HTTP response from etcd ({e})")),
        };
        let status = resp.code.unwrap_or(0);
        let mut length = None;
        let mut chunked = false;
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let v = core::str::from_utf8(h.value)
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
                length = Some(v.ok_or("invalid Content-Length from etcd")?);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = h.value.eq_ignore_ascii_case(b"chunked");
            }
        }
        self.status = Some(status);
        self.body_state = Some(if chunked {
            Body::ChunkSize
        } else if let Some(0) = length {
            Body::Done
        } else if let Some(n) = length {
            Body::Length(n)
        } else {
            Body::UntilClose
        });
        self.raw.drain(..n);
        Ok(true)
    }

    fn parse_body(&mut self) -> Result<(), String> {
        let mut pos = 0;
        loop {
            let rest = &self.raw[pos..];
            let Some(state) = self.body_state else { break };
            match state {
                Body::Done => break,
                Body::UntilClose => {
                    self.body.extend_from_slice(rest);
                    pos = self.raw.len();
                    break;
                }
                Body::Length(left) | Body::ChunkData(left) => {
                    if rest.is_empty() {
                        break;
                    }
                    let n = (left as usize).min(rest.len());
                    self.body.extend_from_slice(&rest[..n]);
                    pos += n;
                    let left = left - n as u64;
                    self.body_state = Some(match (state, left) {
                        (Body::Length(_), 0) => Body::Done,
                        (Body::Length(_), l) => Body::Length(l),
                        (_, 0) => Body::ChunkEnd,
                        (_, l) => Body::ChunkData(l),
                    });
                }
                Body::ChunkSize => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((n, 0))) => {
                        pos += n;
                        self.body_state = Some(Body::Trailer);
                    }
                    Ok(httparse::Status::Complete((n, size))) => {
                        pos += n;
                        self.body_state = Some(Body::ChunkData(size));
                    }
                    Ok(httparse::Status::Partial) => break,
                    Err(_) => return Err("invalid chunk size from etcd".to_owned()),
                },
                Body::ChunkEnd => {
                    if rest.len() < 2 {
                        break;
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err("invalid chunk end from etcd".to_owned());
                    }
                    pos += 2;
                    self.body_state = Some(Body::ChunkSize);
                }
                Body::Trailer => {
                    let Some(i) = rest.windows(2).position(|w| w == b"\r\n") else {
                        break;
                    };
                    pos += i + 2;
                    if i == 0 {
                        self.body_state = Some(Body::Done);
                    }
                }
            }
        }
        self.raw.drain(..pos);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `raw` in pieces of `step` bytes.
    fn read(raw: &[u8], step: usize) -> ResponseReader {
        let mut r = ResponseReader::new();
        for piece in raw.chunks(step) {
            r.feed(piece).unwrap();
        }
        r
    }

    #[test]
    fn content_length_in_any_pieces() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        for step in 1..raw.len() {
            let r = read(raw, step);
            assert_eq!(r.status(), Some(200));
            assert!(r.complete());
            assert_eq!(r.body, b"hello");
        }
    }

    #[test]
    fn chunked_in_any_pieces() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                    7\r\n{\"a\":1}\r\n3;ext=1\r\n\n{}\r\n0\r\nX-T: 1\r\n\r\n";
        for step in 1..raw.len() {
            let r = read(raw, step);
            assert!(r.complete(), "step {step}");
            assert_eq!(r.body, b"{\"a\":1}\n{}");
        }
        let mut r = read(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab",
            3,
        );
        assert!(!r.complete());
        assert_eq!(r.body, b"ab");
        assert!(r.eof().is_err());
    }

    #[test]
    fn body_until_close_and_errors() {
        let mut r = read(b"HTTP/1.1 200 OK\r\n\r\nabc", 2);
        assert!(!r.complete());
        r.eof().unwrap();
        assert!(r.complete());
        assert_eq!(r.body, b"abc");
        assert!(ResponseReader::new().feed(b"garbage\r\n\r\n").is_err());
        let mut r = ResponseReader::new();
        assert!(r
            .feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
            .is_err());
        assert!(ResponseReader::new().eof().is_err());
        let r = read(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", 100);
        assert!(r.complete());
    }
}
