//! The result of one probe and the classification of its failures.

use core::fmt;

/// Why a probe failed. The discriminants are stored in shared memory: never reorder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Failure {
    /// The connection was refused (or could not be made at all).
    Refused = 1,
    /// No answer within the configured timeout.
    Timeout = 2,
    /// The connection was reset by the peer.
    Reset = 3,
    /// The peer closed the connection before the status line was complete.
    Closed = 4,
    /// The peer answered something that is not an HTTP/1.x status line.
    BadResponse = 5,
    /// The status line was fine but the status is not a valid one.
    BadStatus = 6,
    /// The TLS handshake failed or did not finish in time.
    TlsHandshake = 7,
    /// The peer's certificate was rejected.
    TlsVerify = 8,
    /// The response failed a condition of the upstream's `upstream_healthcheck_match` block.
    Mismatch = 9,
    /// Not a probe's: proxied requests failed (`upstream_healthcheck_passive`). Counted beside
    /// the probes' kinds, not in `ALL`.
    Passive = 10,
}

impl Failure {
    /// Every kind a probe reports, in discriminant order.
    pub const ALL: [Failure; 9] = [
        Failure::Refused,
        Failure::Timeout,
        Failure::Reset,
        Failure::Closed,
        Failure::BadResponse,
        Failure::BadStatus,
        Failure::TlsHandshake,
        Failure::TlsVerify,
        Failure::Mismatch,
    ];

    /// The kinds a check can report: the connection and HTTP kinds always, the TLS kinds for
    /// `https`, `mismatch` with a match block. Metrics list these, so a plain http check
    /// does not carry series that can never move.
    pub fn possible(tls: bool, matched: bool) -> impl Iterator<Item = Failure> {
        Failure::ALL.into_iter().filter(move |f| match f {
            Failure::TlsHandshake | Failure::TlsVerify => tls,
            Failure::Mismatch => matched,
            _ => true,
        })
    }

    /// The short name used in metrics labels and JSON (`refused`, `bad_status`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::Timeout => "timeout",
            Failure::Reset => "reset",
            Failure::Closed => "closed",
            Failure::BadResponse => "bad_response",
            Failure::BadStatus => "bad_status",
            Failure::TlsHandshake => "tls_handshake",
            Failure::TlsVerify => "tls_verify",
            Failure::Mismatch => "mismatch",
            Failure::Passive => "passive",
        }
    }

    /// Index into per-kind counters (of the kinds in `ALL`).
    pub fn index(self) -> usize {
        self as usize - 1
    }

    /// Decodes a stored discriminant; 0 and unknown values mean "no failure".
    pub fn from_u8(v: u8) -> Option<Failure> {
        if v == Failure::Passive as u8 {
            return Some(Failure::Passive);
        }
        Failure::ALL.get((v as usize).wrapping_sub(1)).copied()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Failure::Refused => "connection refused",
            Failure::Timeout => "timed out",
            Failure::Reset => "connection reset by peer",
            Failure::Closed => "connection closed before the status line",
            Failure::BadResponse => "invalid response status line",
            Failure::BadStatus => "invalid HTTP status",
            Failure::TlsHandshake => "TLS handshake failed",
            Failure::TlsVerify => "certificate rejected",
            Failure::Mismatch => "response did not match",
            Failure::Passive => "proxied requests failed",
        })
    }
}

/// What one probe found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// `None` when the peer passed.
    pub failure: Option<Failure>,
    /// The HTTP status, when a status line was read.
    pub status: Option<u16>,
    /// What exactly failed, as a code the failure kind gives meaning to (0: nothing more to
    /// say): for `Mismatch` the failing condition's index + 1, for `TlsVerify` OpenSSL's
    /// verify result, for `TlsHandshake` OpenSSL's error code. Kept as a number so a peer's
    /// record stays fixed-size in shared memory; the glue turns it into text.
    pub detail: u32,
}

impl Outcome {
    pub fn ok(status: Option<u16>) -> Outcome {
        Outcome {
            failure: None,
            status,
            detail: 0,
        }
    }

    pub fn failed(failure: Failure, status: Option<u16>) -> Outcome {
        Outcome::failed_with(failure, status, 0)
    }

    /// A failure with a detail code (see `detail`).
    pub fn failed_with(failure: Failure, status: Option<u16>, detail: u32) -> Outcome {
        Outcome {
            failure: Some(failure),
            status,
            detail,
        }
    }
}

/// Why a probe's connection could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectError {
    /// The network or the peer answered: the failure counts against the peer.
    Peer(Failure),
    /// This host ran out of something (connections, descriptors, source ports, buffers): the
    /// peer is not to blame, the probe gives no verdict.
    Local,
}

/// Classifies the `errno` of a failed `connect()` (Linux values). Only answers from the
/// network or the peer's own socket count against it; anything else, known or not, is
/// treated as local, because the checker must not declare a peer down when in doubt.
pub fn classify_connect_errno(errno: i32) -> ConnectError {
    match errno {
        // Refused, or a unix socket that is missing or not ours to use: requests would fail too.
        libc::ECONNREFUSED | libc::ENOENT | libc::EACCES | libc::EPERM | libc::ENOTSOCK => {
            ConnectError::Peer(Failure::Refused)
        }
        // The network answered that the peer cannot be reached.
        libc::ENETDOWN | libc::ENETUNREACH | libc::EHOSTDOWN | libc::EHOSTUNREACH => {
            ConnectError::Peer(Failure::Refused)
        }
        libc::ECONNRESET => ConnectError::Peer(Failure::Reset),
        libc::ETIMEDOUT => ConnectError::Peer(Failure::Timeout),
        _ => ConnectError::Local,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_answers_from_the_network_count_against_a_peer() {
        assert_eq!(
            classify_connect_errno(libc::ECONNREFUSED),
            ConnectError::Peer(Failure::Refused)
        );
        assert_eq!(
            classify_connect_errno(libc::ENOENT),
            ConnectError::Peer(Failure::Refused),
            "a unix socket that is missing"
        );
        assert_eq!(
            classify_connect_errno(libc::ECONNRESET),
            ConnectError::Peer(Failure::Reset)
        );
        for local in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::ENOMEM,
            libc::EADDRNOTAVAIL,
            libc::EAGAIN,
            0,
            12345,
        ] {
            assert_eq!(
                classify_connect_errno(local),
                ConnectError::Local,
                "{local}"
            );
        }
    }
}
