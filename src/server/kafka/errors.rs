//! Kafka's error codes for what flowd refuses: each `ProtocolError` becomes the code a
//! Kafka client acts on (retries what may pass later, gives up on the rest), and its
//! message goes in the log and, where the response has one, its error message.

use crate::protocol::{ErrorCode, ProtocolError};

/// Kafka's error codes flowd answers with (Kafka's `Errors.java`).
pub const NONE: i16 = 0;
pub const OFFSET_OUT_OF_RANGE: i16 = 1;
pub const CORRUPT_MESSAGE: i16 = 2;
pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
pub const LEADER_NOT_AVAILABLE: i16 = 5;
pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
pub const REQUEST_TIMED_OUT: i16 = 7;
pub const MESSAGE_TOO_LARGE: i16 = 10;
pub const INVALID_REQUIRED_ACKS: i16 = 21;
pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
pub const UNSUPPORTED_VERSION: i16 = 35;
pub const INVALID_REQUEST: i16 = 42;
pub const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
pub const UNKNOWN_SERVER_ERROR: i16 = -1;
pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
pub const NOT_COORDINATOR: i16 = 16;
pub const ILLEGAL_GENERATION: i16 = 22;
pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
pub const INVALID_GROUP_ID: i16 = 24;
pub const UNKNOWN_MEMBER_ID: i16 = 25;
pub const INVALID_SESSION_TIMEOUT: i16 = 26;
pub const REBALANCE_IN_PROGRESS: i16 = 27;
pub const GROUP_AUTHORIZATION_FAILED: i16 = 30;
pub const MEMBER_ID_REQUIRED: i16 = 79;
pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
pub const INVALID_PRODUCER_EPOCH: i16 = 47;
pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
pub const UNKNOWN_PRODUCER_ID: i16 = 59;
pub const TOPIC_ALREADY_EXISTS: i16 = 36;
pub const POLICY_VIOLATION: i16 = 44;
pub const TOPIC_DELETION_DISABLED: i16 = 73;
pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
pub const INVALID_RECORD: i16 = 87;
pub const KAFKA_STORAGE_ERROR: i16 = 56;

/// The Kafka error code for what the engine refused.
pub fn code(error: &ProtocolError) -> i16 {
    match error.code {
        ErrorCode::UnknownTopic | ErrorCode::UnknownPartition => UNKNOWN_TOPIC_OR_PARTITION,
        ErrorCode::TooLarge | ErrorCode::FrameTooLarge => MESSAGE_TOO_LARGE,
        ErrorCode::Invalid | ErrorCode::Malformed => INVALID_RECORD,
        ErrorCode::Timeout => REQUEST_TIMED_OUT,
        // Retriable for a Kafka client: it asks again (a partition moving, a new leader
        // not caught up, a shard over its budget).
        ErrorCode::Unavailable | ErrorCode::Overloaded => LEADER_NOT_AVAILABLE,
        // A batch damaged on this broker's disk, as Kafka says of a failed log
        // directory: retriable (a client refreshes its metadata; in a cluster the
        // damaged copy's peer stops and a whole copy leads).
        ErrorCode::Damaged => KAFKA_STORAGE_ERROR,
        ErrorCode::Forbidden | ErrorCode::Unauthenticated => TOPIC_AUTHORIZATION_FAILED,
        ErrorCode::Unsupported | ErrorCode::BadVersion | ErrorCode::UnknownKind => UNSUPPORTED_VERSION,
        _ => UNKNOWN_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_a_client_may_retry_map_onto_retriable_kafka_codes() {
        let e = |code| ProtocolError::new(code, "x");
        assert_eq!(code(&e(ErrorCode::Unavailable)), LEADER_NOT_AVAILABLE);
        assert_eq!(code(&e(ErrorCode::Overloaded)), LEADER_NOT_AVAILABLE);
        assert_eq!(code(&e(ErrorCode::Damaged)), KAFKA_STORAGE_ERROR);
        assert_eq!(code(&e(ErrorCode::UnknownTopic)), UNKNOWN_TOPIC_OR_PARTITION);
        assert_eq!(code(&e(ErrorCode::TooLarge)), MESSAGE_TOO_LARGE);
        assert_eq!(code(&e(ErrorCode::Invalid)), INVALID_RECORD);
        assert_eq!(code(&e(ErrorCode::Internal)), UNKNOWN_SERVER_ERROR);
    }
}
