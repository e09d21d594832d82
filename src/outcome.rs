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
}

impl Failure {
    /// Every failure kind, in discriminant order.
    pub const ALL: [Failure; 6] = [
        Failure::Refused,
        Failure::Timeout,
        Failure::Reset,
        Failure::Closed,
        Failure::BadResponse,
        Failure::BadStatus,
    ];

    /// The short name used in metrics labels and JSON (`refused`, `bad_status`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::Timeout => "timeout",
            Failure::Reset => "reset",
            Failure::Closed => "closed",
            Failure::BadResponse => "bad_response",
            Failure::BadStatus => "bad_status",
        }
    }

    /// Index into per-kind counters.
    pub fn index(self) -> usize {
        self as usize - 1
    }

    /// Decodes a stored discriminant; 0 and unknown values mean "no failure".
    pub fn from_u8(v: u8) -> Option<Failure> {
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
}

impl Outcome {
    pub fn ok(status: Option<u16>) -> Outcome {
        Outcome {
            failure: None,
            status,
        }
    }

    pub fn failed(failure: Failure, status: Option<u16>) -> Outcome {
        Outcome {
            failure: Some(failure),
            status,
        }
    }
}
