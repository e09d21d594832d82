//! Incremental reading of an HTTP/1.x response up to its final status line, and its verdict.
//!
//! The parser is a byte-at-a-time state machine with a few counters: it never allocates, never
//! panics, and gives the same answer at the same byte however the input is split.

use crate::config::ValidStatuses;
use crate::outcome::{Failure, Outcome};

/// The longest status line, line end included.
pub const MAX_STATUS_LINE: usize = 1024;

/// The most bytes of interim (1xx) responses skipped before the final status line.
pub const MAX_INTERIM: usize = 16 * 1024;

const INVALID_STATUS_LINE: &str = "invalid status line";

/// Where parsing stands after a `feed`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Progress {
    /// The final status line has not fully arrived yet.
    #[default]
    NeedMore,
    /// The final status line arrived, with this status (100..=999, never an interim 1xx but 101).
    Status(u16),
    /// The response is not HTTP/1.x, or too long; a short reason.
    Invalid(&'static str),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    /// Nothing of the status line yet.
    #[default]
    Start,
    /// Matched this many bytes of `HTTP/`.
    Prefix(u8),
    Major,
    Dot,
    Minor,
    /// Expecting the space after the version.
    AfterVersion,
    /// Skipping spaces before the status.
    BeforeStatus,
    /// Read this many status digits (1 or 2).
    Digits(u8),
    /// Read three digits: a space, CR or LF follows.
    AfterStatus,
    Reason,
    /// Read the CR ending the status line.
    StatusCr,
    /// At the start of a header line of an interim response.
    HeaderLineStart,
    Header,
    /// Read a CR at the start of a header line: the empty line's LF follows.
    HeaderCr,
}

/// Reads a response, in pieces of any size, until its final status line.
#[derive(Clone, Debug, Default)]
pub struct StatusLineParser {
    state: State,
    /// The status digits read so far.
    status: u16,
    /// Bytes of the current status line so far.
    line_len: usize,
    /// Bytes of the interim responses skipped so far.
    interim_len: usize,
    /// `NeedMore` until the answer is known, then the answer for good.
    result: Progress,
}

impl StatusLineParser {
    pub fn new() -> StatusLineParser {
        StatusLineParser::default()
    }

    /// Consumes the next piece of the response. Once the answer is `Status` or `Invalid`, the
    /// rest of the input is ignored and every later call returns the same answer.
    pub fn feed(&mut self, data: &[u8]) -> Progress {
        if self.result == Progress::NeedMore {
            for &b in data {
                if let Some(done) = self.step(b) {
                    self.result = done;
                    break;
                }
            }
        }
        self.result
    }

    /// Advances by one byte; `Some` when the answer is known.
    fn step(&mut self, b: u8) -> Option<Progress> {
        use State::*;

        if matches!(self.state, HeaderLineStart | Header | HeaderCr) {
            self.interim_len += 1;
            if self.interim_len > MAX_INTERIM {
                return Some(Progress::Invalid("header too long"));
            }
        } else {
            self.line_len += 1;
            if b != b'\n' && self.line_len >= MAX_STATUS_LINE {
                return Some(Progress::Invalid("status line too long"));
            }
        }

        const PREFIX: &[u8; 5] = b"HTTP/";
        self.state = match (self.state, b) {
            (Start, b'H') => Prefix(1),
            (Prefix(i), _) if PREFIX.get(usize::from(i)) == Some(&b) => {
                if usize::from(i) + 1 == PREFIX.len() {
                    Major
                } else {
                    Prefix(i + 1)
                }
            }
            (Major, b'1') => Dot,
            (Major, b'0' | b'2'..=b'9') => {
                return Some(Progress::Invalid("unsupported HTTP version"));
            }
            (Dot, b'.') => Minor,
            (Minor, b'0'..=b'9') => AfterVersion,
            (AfterVersion | BeforeStatus, b' ') => BeforeStatus,
            (BeforeStatus, b'1'..=b'9') => {
                self.status = u16::from(b - b'0');
                Digits(1)
            }
            (Digits(n), b'0'..=b'9') => {
                self.status = self.status * 10 + u16::from(b - b'0');
                if n >= 2 {
                    AfterStatus
                } else {
                    Digits(n + 1)
                }
            }
            (AfterStatus, b' ') => Reason,
            (AfterStatus | Reason, b'\r') => StatusCr,
            (AfterStatus | Reason | StatusCr, b'\n') => return self.status_line_done(),
            (Reason, _) => Reason,
            (HeaderLineStart, b'\r') => HeaderCr,
            (HeaderLineStart | HeaderCr, b'\n') => {
                // The end of an interim response: the next status line follows.
                self.line_len = 0;
                self.status = 0;
                Start
            }
            (HeaderCr, _) => return Some(Progress::Invalid("invalid header line")),
            (Header, b'\n') => HeaderLineStart,
            (HeaderLineStart | Header, _) => Header,
            _ => return Some(Progress::Invalid(INVALID_STATUS_LINE)),
        };
        None
    }

    /// A whole status line arrived: the answer, or the skip of an interim response.
    fn status_line_done(&mut self) -> Option<Progress> {
        if is_final(self.status) {
            return Some(Progress::Status(self.status));
        }
        self.interim_len += self.line_len;
        if self.interim_len > MAX_INTERIM {
            return Some(Progress::Invalid("header too long"));
        }
        self.state = State::HeaderLineStart;
        None
    }
}

/// Whether a status line with `status` is the final answer: interim responses (1xx, all but
/// 101 Switching Protocols) are skipped, so a probe never reports them.
pub fn is_final(status: u16) -> bool {
    !(100..=199).contains(&status) || status == 101
}

/// The verdict on a final status: passed when `valid` allows it, `BadStatus` otherwise.
pub fn judge(status: u16, valid: &ValidStatuses) -> Outcome {
    if valid.is_valid(status) {
        Outcome::ok(Some(status))
    } else {
        Outcome::failed(Failure::BadStatus, Some(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StatusRange;
    use Progress::{Invalid, NeedMore, Status};

    fn whole(input: &[u8]) -> Progress {
        StatusLineParser::new().feed(input)
    }

    /// Feeds one byte at a time; the answer and the index of the byte that gave it.
    fn bytewise(input: &[u8]) -> (Progress, Option<usize>) {
        let mut p = StatusLineParser::new();
        for (i, b) in input.iter().enumerate() {
            let r = p.feed(core::slice::from_ref(b));
            if r != NeedMore {
                return (r, Some(i));
            }
        }
        (p.feed(&[]), None)
    }

    /// Checks that every split in two and in three pieces, and one-byte feeds, give `expected`.
    fn check_splits(input: &[u8], expected: Progress) {
        assert_eq!(
            whole(input),
            expected,
            "whole {:?}",
            String::from_utf8_lossy(input)
        );
        let (r, at) = bytewise(input);
        assert_eq!(r, expected, "bytewise {:?}", String::from_utf8_lossy(input));
        // Every split of inputs up to 4 KiB; a sample of longer ones, ends included.
        let stride = if input.len() <= 4096 { 1 } else { 61 };
        let splits = (0..=input.len())
            .step_by(stride)
            .chain(input.len().saturating_sub(3)..=input.len());
        for i in splits {
            let mut p = StatusLineParser::new();
            let first = p.feed(&input[..i]);
            if let Some(at) = at {
                assert_eq!(first != NeedMore, i > at, "answer early or late, split {i}");
            }
            assert_eq!(p.feed(&input[i..]), expected, "split at {i}");
        }
        if input.len() <= 200 {
            for i in 0..=input.len() {
                for j in i..=input.len() {
                    let mut p = StatusLineParser::new();
                    p.feed(&input[..i]);
                    p.feed(&input[i..j]);
                    assert_eq!(p.feed(&input[j..]), expected, "splits at {i}, {j}");
                }
            }
        }
    }

    #[test]
    fn simple_status_lines() {
        check_splits(b"HTTP/1.1 200 OK\r\n", Status(200));
        check_splits(
            b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            Status(404),
        );
        check_splits(b"HTTP/1.1 503\r\n", Status(503));
        check_splits(b"HTTP/1.1 204 \r\n", Status(204));
        check_splits(b"HTTP/1.1 302 Found\n", Status(302));
        check_splits(b"HTTP/1.1 200\n", Status(200));
        check_splits(b"HTTP/1.1  200  OK\r\n", Status(200));
        check_splits(b"HTTP/1.2 200 OK\r\n", Status(200));
        check_splits(b"HTTP/1.1 999 Whatever\r\n", Status(999));
        check_splits(b"HTTP/1.1 200 \xff\x00 odd \t reason\r\n", Status(200));
    }

    #[test]
    fn answer_arrives_with_the_line_end() {
        let input = b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\nbody";
        assert_eq!(bytewise(input), (Status(200), Some(16)));
        let mut p = StatusLineParser::new();
        assert_eq!(p.feed(b"HTTP/1.1 200 OK"), NeedMore);
        assert_eq!(p.feed(b"\r"), NeedMore);
        assert_eq!(p.feed(b"\n"), Status(200));
    }

    #[test]
    fn incomplete_input_needs_more() {
        for input in [
            &b""[..],
            b"H",
            b"HTTP/",
            b"HTTP/1.1",
            b"HTTP/1.1 20",
            b"HTTP/1.1 200",
            b"HTTP/1.1 200 OK\r",
        ] {
            check_splits(input, NeedMore);
        }
        check_splits(b"HTTP/1.1 100 Continue\r\n\r\n", NeedMore);
        check_splits(b"HTTP/1.1 100 Continue\r\nX: y\r\n", NeedMore);
    }

    #[test]
    fn answer_sticks() {
        let mut p = StatusLineParser::new();
        assert_eq!(
            p.feed(b"HTTP/1.1 500 Oops\r\nHTTP/1.1 200 OK\r\n"),
            Status(500)
        );
        assert_eq!(p.feed(b"HTTP/1.1 200 OK\r\n"), Status(500));
        assert_eq!(p.feed(b""), Status(500));
        let mut p = StatusLineParser::new();
        assert_eq!(p.feed(b"<html>"), Invalid("invalid status line"));
        assert_eq!(
            p.feed(b"HTTP/1.1 200 OK\r\n"),
            Invalid("invalid status line")
        );
        assert_eq!(p.feed(b""), Invalid("invalid status line"));
    }

    #[test]
    fn invalid_status_lines() {
        for input in [
            &b"<html><body>hello</body></html>"[..],
            b"garbage\r\n",
            b"\r\nHTTP/1.1 200 OK\r\n",
            b" HTTP/1.1 200 OK\r\n",
            b"http/1.1 200 OK\r\n",
            b"HTTPS/1.1 200 OK\r\n",
            b"HTTP/1.1200 OK\r\n",
            b"HTTP/1.1\t200 OK\r\n",
            b"HTTP/1 200 OK\r\n",
            b"HTTP/1. 200 OK\r\n",
            b"HTTP/1.x 200 OK\r\n",
            b"HTTP/1.10 200 OK\r\n",
            b"HTTP/11.1 200 OK\r\n",
            b"HTTP/x.1 200 OK\r\n",
            b"HTTP/1.1 20 OK\r\n",
            b"HTTP/1.1 2000 OK\r\n",
            b"HTTP/1.1 20x OK\r\n",
            b"HTTP/1.1 099 Low\r\n",
            b"HTTP/1.1 000\r\n",
            b"HTTP/1.1 OK\r\n",
            b"HTTP/1.1 200\r\r\n",
            b"HTTP/1.1 200 OK\rX\n",
            b"HTTP/1.1 \r\n",
            b"HTTP/1.1\r\n",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"\x16\x03\x01\x00",
            b"\0\0\0\0",
        ] {
            check_splits(input, Invalid("invalid status line"));
        }
    }

    #[test]
    fn other_http_versions_are_invalid() {
        for input in [
            &b"HTTP/2.0 200 OK\r\n"[..],
            b"HTTP/2 200\r\n",
            b"HTTP/0.9 200 OK\r\n",
            b"HTTP/3.0 200 OK\r\n",
        ] {
            check_splits(input, Invalid("unsupported HTTP version"));
        }
    }

    #[test]
    fn interim_responses_are_skipped() {
        check_splits(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n",
            Status(200),
        );
        check_splits(
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\nLink: </a.js>\r\n\r\n\
              HTTP/1.1 204 No Content\r\n\r\n",
            Status(204),
        );
        check_splits(
            b"HTTP/1.1 100 Continue\n\nHTTP/1.1 102 Processing\r\nX: 1\n\r\nHTTP/1.0 503 Busy\n",
            Status(503),
        );
        check_splits(
            b"HTTP/1.1 199 Odd\r\n\r\nHTTP/1.1 404 Not Found\r\n",
            Status(404),
        );
        check_splits(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/2.0 200 OK\r\n",
            Invalid("unsupported HTTP version"),
        );
        check_splits(
            b"HTTP/1.1 100 Continue\r\n\r\n<html>",
            Invalid("invalid status line"),
        );
        check_splits(
            b"HTTP/1.1 100 Continue\r\n\rX",
            Invalid("invalid header line"),
        );
        check_splits(b"HTTP/1.1 100 Continue\r\nHTTP/1.1 200 OK\r\n", NeedMore);
    }

    #[test]
    fn switching_protocols_is_final() {
        check_splits(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            Status(101),
        );
    }

    #[test]
    fn status_line_length_bound() {
        // The longest accepted line: 1024 bytes with its CRLF.
        let mut line = b"HTTP/1.1 200 ".to_vec();
        line.resize(MAX_STATUS_LINE - 2, b'x');
        line.extend_from_slice(b"\r\n");
        assert_eq!(line.len(), MAX_STATUS_LINE);
        check_splits(&line, Status(200));

        let mut line = b"HTTP/1.1 200 ".to_vec();
        line.resize(MAX_STATUS_LINE - 1, b'x');
        line.push(b'\n');
        check_splits(&line, Status(200));

        // One more byte and the line end no longer fits.
        let mut line = b"HTTP/1.1 200 ".to_vec();
        line.resize(MAX_STATUS_LINE - 1, b'x');
        line.extend_from_slice(b"\r\n");
        check_splits(&line, Invalid("status line too long"));
        assert_eq!(
            bytewise(&line),
            (Invalid("status line too long"), Some(MAX_STATUS_LINE - 1))
        );

        // Spaces before the status count too.
        let mut line = b"HTTP/1.1".to_vec();
        line.resize(4096, b' ');
        check_splits(&line, Invalid("status line too long"));
    }

    #[test]
    fn megabyte_line_without_end() {
        let mut line = b"HTTP/1.1 200 OK".to_vec();
        line.resize(1 << 20, b'a');
        assert_eq!(whole(&line), Invalid("status line too long"));
        assert_eq!(
            bytewise(&line),
            (Invalid("status line too long"), Some(MAX_STATUS_LINE - 1))
        );
        let mut p = StatusLineParser::new();
        for chunk in line.chunks(4096) {
            p.feed(chunk);
        }
        assert_eq!(p.feed(b"\r\n"), Invalid("status line too long"));
    }

    #[test]
    fn status_line_bound_restarts_after_interim() {
        let mut input = b"HTTP/1.1 100 ".to_vec();
        input.resize(1000, b'c');
        input.extend_from_slice(b"\r\n\r\nHTTP/1.1 200 ");
        input.resize(2000, b'o');
        input.extend_from_slice(b"\r\n");
        check_splits(&input, Status(200));
    }

    #[test]
    fn interim_headers_bound() {
        // Exactly at the bound: the interim status line, headers and empty line fill 16 KiB.
        let head = b"HTTP/1.1 103 Early Hints\r\n";
        let mut input = head.to_vec();
        input.resize(MAX_INTERIM - 4, b'h');
        input.extend_from_slice(b"\r\n\r\n");
        assert_eq!(input.len(), MAX_INTERIM);
        let mut ok = input.clone();
        ok.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        check_splits(&ok, Status(200));

        // One byte more does not fit.
        let mut over = input[..head.len()].to_vec();
        over.push(b'X');
        over.extend_from_slice(&input[head.len()..]);
        over.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        check_splits(&over, Invalid("header too long"));
        assert_eq!(bytewise(&over).1, Some(MAX_INTERIM));

        // An endless header, and endless interim responses.
        let mut endless = head.to_vec();
        endless.resize(1 << 20, b'h');
        assert_eq!(whole(&endless), Invalid("header too long"));
        let many = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(10_000);
        assert_eq!(whole(&many), Invalid("header too long"));
        assert_eq!(bytewise(&many).0, Invalid("header too long"));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_split_alike() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"HTP/1.0 2\r\n\x00\xffx";
        for round in 0..2000 {
            let len = (next() % 64) as usize;
            let mut input: Vec<u8> = if round % 2 == 0 {
                b"HTTP/1.1 1".to_vec()
            } else {
                Vec::new()
            };
            for _ in 0..len {
                let r = next();
                input.push(if r % 4 == 0 {
                    r as u8
                } else {
                    alphabet[(r >> 8) as usize % alphabet.len()]
                });
            }
            let expected = whole(&input);
            assert_eq!(bytewise(&input).0, expected);
            let cut = (next() as usize) % (input.len() + 1);
            let mut p = StatusLineParser::new();
            p.feed(&input[..cut]);
            assert_eq!(p.feed(&input[cut..]), expected);
        }
    }

    #[test]
    fn judge_uses_valid_statuses() {
        let default = ValidStatuses::default();
        assert_eq!(judge(200, &default), Outcome::ok(Some(200)));
        assert_eq!(judge(399, &default), Outcome::ok(Some(399)));
        assert_eq!(
            judge(101, &default),
            Outcome::failed(Failure::BadStatus, Some(101))
        );
        assert_eq!(
            judge(502, &default),
            Outcome::failed(Failure::BadStatus, Some(502))
        );
        let not_502 = ValidStatuses {
            entries: vec![StatusRange {
                lo: 502,
                hi: 502,
                negated: true,
            }],
        };
        assert_eq!(judge(500, &not_502), Outcome::ok(Some(500)));
        assert_eq!(
            judge(502, &not_502),
            Outcome::failed(Failure::BadStatus, Some(502))
        );
    }
}
