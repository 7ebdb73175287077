//! The Kafka APIs and versions the door serves, and ApiVersions, which tells a client so.
//!
//! Only versions whose every field the door fills are listed: Produce and Fetch from the
//! record batch format (v2 of the records, Produce 3 and Fetch 4) on, Fetch up to 12
//! (13 names topics by id, which flowd's topics do not have), Metadata from 0 (whose
//! empty list of topics means every topic).

use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};

use super::errors;

/// `(api, lowest version, highest version)` served.
pub const SERVED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    // Listed from 0, as clients check for it (librdkafka's feature test), but a version 0
    // handshake, after which SASL's bytes come unframed, closes the connection: clients
    // that also see SaslAuthenticate listed send version 1.
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    // 9 on is KIP-848's protocol (member epochs), not served.
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    // 6 names topics by id, which flowd's topics do not have.
    (ApiKey::DeleteTopics, 1, 5),
];

/// The versions of `key` served, if it is.
pub fn served(key: ApiKey) -> Option<(i16, i16)> {
    SERVED
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|&(_, min, max)| (min, max))
}

/// Whether `version` of `key` is served.
pub fn serves(key: ApiKey, version: i16) -> bool {
    served(key).is_some_and(|(min, max)| (min..=max).contains(&version))
}

/// The answer to ApiVersions: what is served, or (to a version not served)
/// UNSUPPORTED_VERSION with the same list, sent as version 0 so that any client reads it
/// and asks again within the range.
pub fn answer(version: i16) -> ApiVersionsResponse {
    let mut response = ApiVersionsResponse::default();
    response.error_code = if serves(ApiKey::ApiVersions, version) {
        errors::NONE
    } else {
        errors::UNSUPPORTED_VERSION
    };
    response.api_keys = SERVED
        .iter()
        .map(|&(key, min, max)| {
            let mut v = ApiVersion::default();
            v.api_key = key as i16;
            v.min_version = min;
            v.max_version = max;
            v
        })
        .collect();
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::protocol::Message;

    #[test]
    fn every_version_served_is_one_the_codec_knows() {
        use kafka_protocol::messages::*;
        let known = |key: ApiKey| match key {
            ApiKey::Produce => ProduceRequest::VERSIONS,
            ApiKey::Fetch => FetchRequest::VERSIONS,
            ApiKey::ListOffsets => ListOffsetsRequest::VERSIONS,
            ApiKey::Metadata => MetadataRequest::VERSIONS,
            ApiKey::ApiVersions => ApiVersionsRequest::VERSIONS,
            ApiKey::SaslHandshake => SaslHandshakeRequest::VERSIONS,
            ApiKey::SaslAuthenticate => SaslAuthenticateRequest::VERSIONS,
            ApiKey::FindCoordinator => FindCoordinatorRequest::VERSIONS,
            ApiKey::JoinGroup => JoinGroupRequest::VERSIONS,
            ApiKey::SyncGroup => SyncGroupRequest::VERSIONS,
            ApiKey::Heartbeat => HeartbeatRequest::VERSIONS,
            ApiKey::LeaveGroup => LeaveGroupRequest::VERSIONS,
            ApiKey::OffsetCommit => OffsetCommitRequest::VERSIONS,
            ApiKey::OffsetFetch => OffsetFetchRequest::VERSIONS,
            ApiKey::InitProducerId => InitProducerIdRequest::VERSIONS,
            ApiKey::CreateTopics => CreateTopicsRequest::VERSIONS,
            ApiKey::DeleteTopics => DeleteTopicsRequest::VERSIONS,
            other => panic!("{other:?} is served but not checked here"),
        };
        for &(key, min, max) in SERVED {
            let range = known(key);
            assert!(
                range.min <= min && max <= range.max,
                "{key:?} {min}..={max} outside {range:?}"
            );
        }
    }

    #[test]
    fn a_version_not_served_is_answered_with_the_list_and_unsupported_version() {
        assert_eq!(answer(3).error_code, errors::NONE);
        let newer = answer(9);
        assert_eq!(newer.error_code, errors::UNSUPPORTED_VERSION);
        assert_eq!(newer.api_keys.len(), SERVED.len());
        assert!(!serves(ApiKey::Fetch, 13));
        assert!(!serves(ApiKey::AddPartitionsToTxn, 0));
        assert!(!serves(ApiKey::OffsetCommit, 9));
    }
}
