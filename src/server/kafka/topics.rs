//! CreateTopics and DeleteTopics: flowd's topics come from the dataflow file, so neither
//! changes anything. Each topic asked is answered in Kafka's terms, with a message that
//! says what to do: one the dataflow has is TOPIC_ALREADY_EXISTS (which tools that
//! "create if missing" take as success) or TOPIC_DELETION_DISABLED; one it lacks is
//! POLICY_VIOLATION (add a `[[topic]]`) or UNKNOWN_TOPIC_OR_PARTITION.

use kafka_protocol::messages::create_topics_request::CreateTopicsRequest;
use kafka_protocol::messages::create_topics_response::{CreatableTopicResult, CreateTopicsResponse};
use kafka_protocol::messages::delete_topics_request::DeleteTopicsRequest;
use kafka_protocol::messages::delete_topics_response::{DeletableTopicResult, DeleteTopicsResponse};
use kafka_protocol::protocol::StrBytes;

use super::errors;
use crate::config::DataflowSpec;

/// Whether `name` is a topic Kafka clients see (internal ones are not).
fn known(spec: &DataflowSpec, name: &str) -> bool {
    crate::server::api::client_topic(spec, name).is_ok()
}

pub fn create(spec: &DataflowSpec, request: &CreateTopicsRequest) -> CreateTopicsResponse {
    let mut response = CreateTopicsResponse::default();
    for topic in &request.topics {
        let name = topic.name.0.as_str();
        let (code, message) = if known(spec, name) {
            (
                errors::TOPIC_ALREADY_EXISTS,
                format!("topic \"{name}\" exists: it is in the dataflow file"),
            )
        } else {
            (
                errors::POLICY_VIOLATION,
                format!(
                    "flowd's topics come from the dataflow file: add [[topic]] name = \"{name}\" and restart flowd"
                ),
            )
        };
        let mut result = CreatableTopicResult::default();
        result.name = topic.name.clone();
        result.error_code = code;
        result.error_message = Some(StrBytes::from_string(message));
        response.topics.push(result);
    }
    response
}

pub fn delete(spec: &DataflowSpec, request: &DeleteTopicsRequest, version: i16) -> DeleteTopicsResponse {
    let mut response = DeleteTopicsResponse::default();
    for name in &request.topic_names {
        let text = name.0.as_str();
        let (code, message) = if known(spec, text) {
            (
                errors::TOPIC_DELETION_DISABLED,
                format!("topic \"{text}\" is in the dataflow file: remove it there (and its data directory)"),
            )
        } else {
            (
                errors::UNKNOWN_TOPIC_OR_PARTITION,
                format!("no topic \"{text}\" in the dataflow"),
            )
        };
        let mut result = DeletableTopicResult::default();
        result.name = Some(name.clone());
        result.error_code = code;
        result.error_message = (version >= 5).then(|| StrBytes::from_string(message));
        response.responses.push(result);
    }
    response
}
