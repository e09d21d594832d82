//! Incremental reading of a whole HTTP/1.x response, for probes that reuse their connection or
//! judge headers and body: the head through `httparse`, the body by its framing
//! (`Content-Length`, `chunked`, or up to the close), bounded, and whether the connection may
//! carry the next probe.
//!
//! The reader keeps at most `MAX_HEAD` bytes of head and the first `Limits::body_keep` bytes
//! of body; it reads at most `Limits::body_read` bytes of body before it gives up on the
//! connection. It never panics and gives the same answer however the input is split.

use crate::status_line::is_final;

/// The most bytes of response head (interim responses included) read before giving up.
pub const MAX_HEAD: usize = 16 * 1024;

/// The most header lines of one response head.
const MAX_HEADERS: usize = 64;

/// The longest chunk-size line (extensions included) or trailer line.
const MAX_CHUNK_LINE: usize = 4096;

/// What the caller wants of a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of body kept for the caller (a match block's `body_max`); 0 keeps none.
    pub body_keep: usize,
    /// Bytes of body read at most: past them the response ends, and its connection with it.
    pub body_read: usize,
    /// The request was `HEAD`: the response has no body whatever its headers say.
    pub head_request: bool,
}

/// A final response, read as far as its framing says (or as far as the limits allow).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Header lines as sent (names in their original case).
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// The first `Limits::body_keep` bytes of the body (de-chunked).
    pub body: Vec<u8>,
    /// The connection may carry another request: the response said so and was read to its
    /// end, with nothing after it.
    pub reusable: bool,
}

impl Response {
    /// The headers as borrowed pairs, values without the whitespace around them, as a match
    /// block reads them.
    pub fn header_pairs(&self) -> Vec<(&[u8], &[u8])> {
        self.headers
            .iter()
            .map(|(n, v)| (n.as_slice(), v.trim_ascii()))
            .collect()
    }
}

/// Where reading stands after `feed` or `eof`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    NeedMore,
    Done(Response),
    /// Not an HTTP/1.x response, or over a limit of the head: a short reason.
    Invalid(&'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Body {
    /// This many bytes still to come.
    Length(u64),
    /// Up to the close of the connection.
    UntilClose,
    /// Reading a chunk-size line (kept in `line`).
    ChunkSize,
    /// This many bytes of chunk data still to come.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// Trailer lines after the last chunk, up to an empty line.
    Trailers,
}

#[derive(Clone, Debug)]
enum State {
    Head,
    Body(Body),
    Finished(Progress),
}

/// Reads one response, in pieces of any size.
#[derive(Clone, Debug)]
pub struct ResponseReader {
    limits: Limits,
    state: State,
    /// The head so far; then, while reading chunk sizes and trailers, the current line.
    buf: Vec<u8>,
    /// Bytes of interim responses skipped.
    interim: usize,
    /// Bytes of body read so far.
    body_read: u64,
    response: Response,
}

impl ResponseReader {
    /// What this reader was asked to read.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn new(limits: Limits) -> ResponseReader {
        ResponseReader {
            limits,
            state: State::Head,
            buf: Vec::new(),
            interim: 0,
            body_read: 0,
            response: Response::default(),
        }
    }

    /// Consumes the next piece. Once the answer is `Done` or `Invalid`, it stays the answer;
    /// bytes after a complete response make it not reusable.
    pub fn feed(&mut self, mut data: &[u8]) -> Progress {
        while !data.is_empty() {
            match self.state {
                State::Finished(ref mut done) => {
                    if let Progress::Done(r) = done {
                        r.reusable = false;
                    }
                    break;
                }
                State::Head => {
                    let room = (MAX_HEAD - self.interim).saturating_sub(self.buf.len());
                    let take = data.len().min(room.max(1));
                    self.buf.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    match self.parse_head() {
                        Ok(Some(rest)) => {
                            // Unread bytes return to the input: they are body or the next head.
                            let rest = self.buf.split_off(self.buf.len() - rest);
                            self.buf.clear();
                            let mut merged = rest;
                            merged.extend_from_slice(data);
                            return self.feed_owned(merged);
                        }
                        Ok(None) if self.buf.len() + self.interim >= MAX_HEAD => {
                            self.finish(Progress::Invalid("response head too long"));
                        }
                        Ok(None) => {}
                        Err(reason) => self.finish(Progress::Invalid(reason)),
                    }
                }
                State::Body(body) => {
                    let used = self.body_step(body, data);
                    data = &data[used..];
                }
            }
        }
        self.progress()
    }

    /// The peer closed the connection: a body read up to the close ends here; any other
    /// unfinished response is cut short (`Invalid` before the head, `Done`, not reusable,
    /// within the body).
    pub fn eof(&mut self) -> Progress {
        match self.state {
            State::Finished(_) => {}
            State::Head => self.finish(Progress::Invalid("connection closed before the head")),
            State::Body(_) => {
                self.response.reusable = false;
                self.done();
            }
        }
        self.progress()
    }

    fn progress(&self) -> Progress {
        match &self.state {
            State::Finished(p) => p.clone(),
            _ => Progress::NeedMore,
        }
    }

    fn feed_owned(&mut self, data: Vec<u8>) -> Progress {
        self.feed(&data)
    }

    fn finish(&mut self, p: Progress) {
        self.state = State::Finished(p);
    }

    fn done(&mut self) {
        let r = core::mem::take(&mut self.response);
        self.finish(Progress::Done(r));
    }

    /// Parses the head in `buf`: `Ok(Some(n))` when a final head is complete with `n` bytes
    /// after it, `Ok(None)` when more is needed (or an interim response was skipped).
    fn parse_head(&mut self) -> Result<Option<usize>, &'static str> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut r = httparse::Response::new(&mut headers);
            let len = match r.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::TooManyHeaders) => return Err("too many headers"),
                Err(httparse::Error::Version) if self.buf.starts_with(b"HTTP/") => {
                    return Err("unsupported HTTP version")
                }
                Err(_) => return Err("invalid response head"),
            };
            let status = r.code.unwrap_or(0);
            if !is_final(status) {
                // An interim response (100 Continue, 103 Early Hints): skip it.
                self.interim += len;
                self.buf.drain(..len);
                if self.interim >= MAX_HEAD {
                    return Err("response head too long");
                }
                continue;
            }
            let version = r.version.unwrap_or(0);
            let mut keep_alive = version == 1;
            let mut length: Option<u64> = None;
            let mut chunked = false;
            let mut encoded = false;
            for h in r.headers.iter() {
                let name = h.name.as_bytes();
                if name.eq_ignore_ascii_case(b"connection") {
                    for token in h.value.split(|&b| b == b',') {
                        let token = token.trim_ascii();
                        if token.eq_ignore_ascii_case(b"close") {
                            keep_alive = false;
                        } else if token.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                            keep_alive = true;
                        }
                    }
                } else if name.eq_ignore_ascii_case(b"content-length") {
                    let n = parse_length(h.value).ok_or("invalid Content-Length")?;
                    if length.is_some_and(|l| l != n) {
                        return Err("invalid Content-Length");
                    }
                    length = Some(n);
                } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                    encoded = true;
                    let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
                    chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
                }
            }
            self.response.status = status;
            self.response.headers = r
                .headers
                .iter()
                .map(|h| (h.name.as_bytes().to_vec(), h.value.to_vec()))
                .collect();
            let no_body =
                self.limits.head_request || status == 204 || status == 304 || status == 101;
            let body = if no_body {
                Body::Length(0)
            } else if encoded && chunked {
                Body::ChunkSize
            } else if encoded {
                Body::UntilClose
            } else if let Some(n) = length {
                Body::Length(n)
            } else {
                Body::UntilClose
            };
            self.response.reusable =
                keep_alive && body != Body::UntilClose && status != 101 && self.body_fits(body);
            let rest = self.buf.len() - len;
            self.state = State::Body(body);
            if body == Body::Length(0) || self.has_enough() {
                self.done();
            }
            return Ok(Some(rest));
        }
    }

    /// A body whose length is known to be over the read limit is never read to its end.
    fn body_fits(&self, body: Body) -> bool {
        match body {
            Body::Length(n) => n <= self.limits.body_read as u64,
            _ => true,
        }
    }

    /// Reads body bytes from `data` in state `body`; returns how many it used.
    fn body_step(&mut self, body: Body, data: &[u8]) -> usize {
        match body {
            Body::Length(left) | Body::ChunkData(left) => {
                let n = data.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                self.body_bytes(&data[..n]);
                let left = left - n as u64;
                if matches!(self.state, State::Finished(_)) {
                    return n;
                }
                self.state = State::Body(match body {
                    Body::Length(_) if left == 0 => {
                        self.done();
                        return n;
                    }
                    Body::Length(_) => Body::Length(left),
                    _ if left == 0 => Body::ChunkEnd,
                    _ => Body::ChunkData(left),
                });
                n
            }
            Body::UntilClose => {
                self.body_bytes(data);
                data.len()
            }
            Body::ChunkSize | Body::ChunkEnd | Body::Trailers => {
                let Some(pos) = data.iter().position(|&b| b == b'\n') else {
                    self.buf.extend_from_slice(data);
                    if self.buf.len() > MAX_CHUNK_LINE {
                        self.cut_short();
                    }
                    return data.len();
                };
                self.buf.extend_from_slice(&data[..=pos]);
                if self.buf.len() > MAX_CHUNK_LINE {
                    self.cut_short();
                    return data.len();
                }
                let line = core::mem::take(&mut self.buf);
                let empty = line == b"\r\n" || line == b"\n";
                match body {
                    Body::Trailers if empty => self.done(),
                    Body::Trailers => {}
                    Body::ChunkEnd if empty => self.state = State::Body(Body::ChunkSize),
                    Body::ChunkEnd => self.cut_short(),
                    _ => self.chunk_size(&line),
                }
                pos + 1
            }
        }
    }

    /// A chunk-size line: the next chunk's data, the trailers after the last one, or the end
    /// of the framing when the line is not one.
    fn chunk_size(&mut self, line: &[u8]) {
        match httparse::parse_chunk_size(line) {
            Ok(httparse::Status::Complete((_, 0))) => self.state = State::Body(Body::Trailers),
            Ok(httparse::Status::Complete((_, size))) => {
                self.state = State::Body(Body::ChunkData(size));
            }
            _ => self.cut_short(),
        }
    }

    /// The framing broke or a limit was reached: the response ends here, and its connection.
    fn cut_short(&mut self) {
        self.response.reusable = false;
        self.done();
    }

    /// Counts body bytes, keeps the first `body_keep`, and ends the response past the limit.
    fn body_bytes(&mut self, bytes: &[u8]) {
        let keep = self
            .limits
            .body_keep
            .saturating_sub(self.response.body.len());
        self.response
            .body
            .extend_from_slice(&bytes[..keep.min(bytes.len())]);
        self.body_read += bytes.len() as u64;
        if self.body_read > self.limits.body_read as u64 {
            self.cut_short();
        } else if self.has_enough() {
            self.done();
        }
    }

    /// A connection that will not be reused is read no further than the kept body needs.
    fn has_enough(&self) -> bool {
        !self.response.reusable && self.response.body.len() >= self.limits.body_keep
    }
}

/// A `Content-Length` value: digits only, at most 18 of them.
fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter()
        .try_fold(0u64, |n, &d| Some(n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP_ALIVE: Limits = Limits {
        body_keep: 0,
        body_read: 1 << 20,
        head_request: false,
    };

    fn with_body(keep: usize) -> Limits {
        Limits {
            body_keep: keep,
            ..KEEP_ALIVE
        }
    }

    fn read(limits: Limits, input: &[u8]) -> Progress {
        ResponseReader::new(limits).feed(input)
    }

    fn done(p: Progress) -> Response {
        match p {
            Progress::Done(r) => r,
            other => panic!("not done: {other:?}"),
        }
    }

    #[test]
    fn a_keep_alive_response_with_a_length_is_read_to_its_end_and_reusable() {
        let r = done(read(
            with_body(64),
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
        ));
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello");
        assert!(r.reusable);
        assert_eq!(r.header_pairs()[1], (&b"X-A"[..], &b"b"[..]));
    }

    #[test]
    fn the_body_is_awaited_before_the_connection_counts_as_reusable() {
        let mut reader = ResponseReader::new(KEEP_ALIVE);
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel";
        assert_eq!(reader.feed(head), Progress::NeedMore);
        assert!(done(reader.feed(b"lo")).reusable);
    }

    #[test]
    fn connection_close_or_an_http_1_0_answer_ends_the_connection() {
        let close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert!(!done(read(KEEP_ALIVE, close)).reusable);
        let old = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert!(!done(read(KEEP_ALIVE, old)).reusable);
        let old_kept = b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok";
        assert!(done(read(KEEP_ALIVE, old_kept)).reusable);
    }

    #[test]
    fn a_chunked_body_is_decoded_with_extensions_and_trailers() {
        let input = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                      4;ext=1\r\n{\"st\r\nB\r\natus\":\"ok\"}\r\n0\r\nX-T: 1\r\n\r\n";
        let r = done(read(with_body(1024), input));
        assert_eq!(r.body, br#"{"status":"ok"}"#);
        assert!(r.reusable);
    }

    #[test]
    fn a_broken_chunk_ends_the_response_and_its_connection() {
        let input = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc";
        let r = done(read(with_body(1024), input));
        assert_eq!((r.status, r.reusable), (200, false));
    }

    #[test]
    fn a_body_up_to_the_close_ends_at_eof_and_is_not_reusable() {
        let mut reader = ResponseReader::new(with_body(1024));
        assert_eq!(
            reader.feed(b"HTTP/1.1 200 OK\r\n\r\nall of it"),
            Progress::NeedMore
        );
        let r = done(reader.eof());
        assert_eq!((r.body.as_slice(), r.reusable), (&b"all of it"[..], false));
    }

    #[test]
    fn a_connection_that_will_not_be_reused_is_read_only_as_far_as_needed() {
        // Status only: done at the head, whatever the body.
        let r = done(read(KEEP_ALIVE, b"HTTP/1.0 200 OK\r\n\r\n"));
        assert_eq!((r.status, r.reusable), (200, false));
        // A kept body: done once it is in.
        let r = done(read(
            with_body(3),
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabcdef",
        ));
        assert_eq!(r.body, b"abc");
    }

    #[test]
    fn responses_without_a_body_end_at_their_head() {
        let head_req = Limits {
            head_request: true,
            ..KEEP_ALIVE
        };
        let r = done(read(
            head_req,
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",
        ));
        assert!(r.reusable && r.body.is_empty());
        for status in ["204 No Content", "304 Not Modified"] {
            let input = format!("HTTP/1.1 {status}\r\nContent-Length: 9\r\n\r\n");
            assert!(
                done(read(KEEP_ALIVE, input.as_bytes())).reusable,
                "{status}"
            );
        }
    }

    #[test]
    fn interim_responses_are_skipped() {
        let input = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n\
                      HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(done(read(KEEP_ALIVE, input)).status, 503);
    }

    #[test]
    fn a_body_over_the_read_limit_ends_the_connection() {
        let limits = Limits {
            body_keep: 4,
            body_read: 10,
            head_request: false,
        };
        let announced = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nabcdef";
        let r = done(read(limits, announced));
        assert_eq!((r.body.as_slice(), r.reusable), (&b"abcd"[..], false));
        let mut chunked = ResponseReader::new(limits);
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n";
        assert_eq!(chunked.feed(head), Progress::NeedMore);
        let r = done(chunked.feed(b"8\r\n12345678\r\n"));
        assert_eq!((r.body.as_slice(), r.reusable), (&b"1234"[..], false));
    }

    #[test]
    fn bytes_after_a_response_make_the_connection_unusable() {
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n";
        assert!(!done(read(KEEP_ALIVE, input)).reusable);
    }

    #[test]
    fn what_is_not_a_response_is_invalid() {
        assert_eq!(
            read(KEEP_ALIVE, b"SSH-2.0-OpenSSH\r\n\r\n"),
            Progress::Invalid("invalid response head")
        );
        assert_eq!(
            read(KEEP_ALIVE, b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            Progress::Invalid("invalid Content-Length")
        );
        assert_eq!(
            read(
                KEEP_ALIVE,
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
            ),
            Progress::Invalid("invalid Content-Length")
        );
        let endless = [b"HTTP/1.1 200 OK\r\n".as_slice(), &[b'a'; MAX_HEAD]].concat();
        assert_eq!(
            read(KEEP_ALIVE, &endless),
            Progress::Invalid("response head too long")
        );
        let mut cut = ResponseReader::new(KEEP_ALIVE);
        assert_eq!(cut.feed(b"HTTP/1.1 2"), Progress::NeedMore);
        assert_eq!(
            cut.eof(),
            Progress::Invalid("connection closed before the head")
        );
    }
}
