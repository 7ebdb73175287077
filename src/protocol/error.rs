//! What can go wrong between a client and the server: the error codes carried in ERROR
//! frames, and `ProtocolError`, the codec's own failures.

/// The code of an ERROR frame. Stable numbers: clients match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The body does not parse as its kind says.
    Malformed = 1,
    UnknownKind = 2,
    BadVersion = 3,
    FrameTooLarge = 4,
    UnknownTopic = 5,
    UnknownPartition = 6,
    UnknownJob = 7,
    /// A record or batch over a storage limit.
    TooLarge = 8,
    /// A job got no answer within its timeout.
    Timeout = 9,
    /// The engine is stopping, or a partition cannot take writes (poisoned).
    Unavailable = 10,
    Internal = 11,
    /// A well-formed request that asks for something not allowed (a reserved header).
    Invalid = 12,
    /// Too many connections; try again later or raise ingest.max_connections.
    Overloaded = 13,
    /// A kind this server knows of but does not serve yet.
    Unsupported = 14,
    /// No consumer of that name on that topic.
    UnknownConsumer = 15,
    /// The consumer is disabled (by a request or by `max_reclaims`).
    ConsumerDisabled = 16,
    /// An ack or reclaim with no claim pending.
    NothingClaimed = 17,
    /// A resume of a consumer that is not disabled.
    ConsumerActive = 18,
    /// A stage could not handle the job (an operator error, a worker that refused it).
    JobFailed = 19,
    /// No `state` stage of that name, or no state for that key.
    UnknownState = 20,
    /// The server asks for credentials: no AUTH came first, or its token is not known.
    /// The connection is closed after it.
    Unauthenticated = 21,
    /// The credential lacks the permission the request needs (the message names it).
    Forbidden = 22,
    /// The port speaks TLS and the client did not: sent in plaintext, as the only frame,
    /// and the connection is closed.
    TlsRequired = 23,
    /// A read met a batch that no longer matches its CRCs on disk (the message names
    /// the segment, the byte and the first offset it held): refused, never served,
    /// until the engine restarts (in a cluster the peer with the damaged copy stops,
    /// and a whole copy serves it through any peer).
    Damaged = 24,
}

impl ErrorCode {
    pub fn from_u16(code: u16) -> Option<ErrorCode> {
        use ErrorCode::*;
        Some(match code {
            1 => Malformed,
            2 => UnknownKind,
            3 => BadVersion,
            4 => FrameTooLarge,
            5 => UnknownTopic,
            6 => UnknownPartition,
            7 => UnknownJob,
            8 => TooLarge,
            9 => Timeout,
            10 => Unavailable,
            11 => Internal,
            12 => Invalid,
            13 => Overloaded,
            14 => Unsupported,
            15 => UnknownConsumer,
            16 => ConsumerDisabled,
            17 => NothingClaimed,
            18 => ConsumerActive,
            19 => JobFailed,
            20 => UnknownState,
            21 => Unauthenticated,
            22 => Forbidden,
            23 => TlsRequired,
            24 => Damaged,
            _ => return None,
        })
    }

    /// A short name for logs, metrics labels and JSON.
    pub fn name(self) -> &'static str {
        use ErrorCode::*;
        match self {
            Malformed => "malformed",
            UnknownKind => "unknown_kind",
            BadVersion => "bad_version",
            FrameTooLarge => "frame_too_large",
            UnknownTopic => "unknown_topic",
            UnknownPartition => "unknown_partition",
            UnknownJob => "unknown_job",
            TooLarge => "too_large",
            Timeout => "timeout",
            Unavailable => "unavailable",
            Internal => "internal",
            Invalid => "invalid",
            Overloaded => "overloaded",
            Unsupported => "unsupported",
            UnknownConsumer => "unknown_consumer",
            ConsumerDisabled => "consumer_disabled",
            NothingClaimed => "nothing_claimed",
            ConsumerActive => "consumer_active",
            JobFailed => "job_failed",
            UnknownState => "unknown_state",
            Unauthenticated => "unauthenticated",
            Forbidden => "forbidden",
            TlsRequired => "tls_required",
            Damaged => "damaged",
        }
    }

    /// Whether the connection can go on after this error: false when framing is lost.
    pub fn keeps_connection(self) -> bool {
        !matches!(
            self,
            ErrorCode::BadVersion
                | ErrorCode::FrameTooLarge
                | ErrorCode::Overloaded
                | ErrorCode::Unauthenticated
                | ErrorCode::TlsRequired
        )
    }
}

/// A failure to decode bytes from the peer, or a request the server refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ProtocolError {
        ProtocolError {
            code,
            message: message.into(),
        }
    }

    pub fn malformed(message: impl Into<String>) -> ProtocolError {
        ProtocolError::new(ErrorCode::Malformed, message)
    }
}
