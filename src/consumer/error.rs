//! What a consumer request can be refused for, in words a user can act on. (The doors
//! give each its protocol code: `runtime::error::EngineError::code`.)

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsumerError {
    #[error("no consumer \"{group}\" on topic \"{topic}\"; claim with create options to make one")]
    Unknown { topic: String, group: String },
    #[error("the consumer is disabled ({0}); resume it to claim again")]
    Disabled(String),
    #[error(
        "nothing is claimed; claim records first (an earlier ack, reclaim or timeout may have settled them)"
    )]
    NothingClaimed,
    #[error("the consumer is active; only a disabled consumer can be resumed")]
    AlreadyActive,
    #[error("the consumer is already disabled")]
    AlreadyDisabled,
    #[error("invalid consumer request: {0}")]
    Invalid(String),
}
