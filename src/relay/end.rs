//! How a relay ends, and which side a socket error came from: an abort on
//! one side becomes an abort on the other.

use std::io;

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides closed their write half.
    Closed,
    /// No byte moved either way for the idle timeout.
    Idle,
    /// The daemon's shutdown grace ran out.
    Shutdown,
    /// Stopped at a safe point to be handed to a new process (a binary
    /// upgrade): no byte was held, and both sockets are intact.
    HandedOver,
    /// This side reset the connection (or went away mid-write); the other
    /// side was reset in turn.
    Reset(Side),
    /// Another socket error on this side; the other side was reset.
    Error(Side),
}

/// One of a relay's two sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client's connection.
    Client,
    /// The backend's connection.
    Backend,
}

impl RelayEnd {
    /// The `end` field of the access log.
    pub fn as_str(self) -> &'static str {
        match self {
            RelayEnd::Closed => "closed",
            RelayEnd::Idle => "idle_timeout",
            RelayEnd::Shutdown => "shutdown",
            RelayEnd::HandedOver => "handed_over",
            RelayEnd::Reset(Side::Client) => "client_reset",
            RelayEnd::Reset(Side::Backend) => "backend_reset",
            RelayEnd::Error(Side::Client) => "client_error",
            RelayEnd::Error(Side::Backend) => "backend_error",
        }
    }
}

/// Which socket of one direction a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum At {
    /// The socket read from.
    Read,
    /// The socket written to.
    Write,
}

/// A direction that ended in a socket error.
#[derive(Debug)]
pub(super) struct Broken {
    at: At,
    error: io::Error,
}

impl Broken {
    pub(super) fn read(error: io::Error) -> Broken {
        Broken {
            at: At::Read,
            error,
        }
    }

    pub(super) fn write(error: io::Error) -> Broken {
        Broken {
            at: At::Write,
            error,
        }
    }

    /// How the relay ends, given which side this direction reads from.
    pub(super) fn end(&self, reads_from: Side) -> RelayEnd {
        let side = match (self.at, reads_from) {
            (At::Read, s) => s,
            (At::Write, Side::Client) => Side::Backend,
            (At::Write, Side::Backend) => Side::Client,
        };
        match self.error.kind() {
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => RelayEnd::Reset(side),
            _ => RelayEnd::Error(side),
        }
    }
}
