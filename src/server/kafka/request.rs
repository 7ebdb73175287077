//! A Kafka request's bytes decoded, with no engine in sight: first its head (API key,
//! version, correlation id, request header), then, once the door knows the client may
//! ask, its body as the crate's message for that API and version.
//!
//! A request frame, after its 4-byte big-endian size (read by the door, 8 bytes at
//! least):
//!
//! ```text
//! 0   i16 BE   API key (Kafka's numbering)
//! 2   i16 BE   API version
//! 4   i32 BE   correlation id, echoed in the response
//! 8   ...      rest of the request header (client id, tagged fields from header v2),
//!              then the body, both as Kafka's schemas for that version say
//! ```
//!
//! An API or version this door does not serve is an error naming what is served, except
//! ApiVersions, which is answered (in version 0) with the versions served, as Kafka
//! brokers do so that a newer client can step down.

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, CreateTopicsRequest, DeleteTopicsRequest, FetchRequest,
    FindCoordinatorRequest, HeartbeatRequest, InitProducerIdRequest, JoinGroupRequest, LeaveGroupRequest,
    ListOffsetsRequest, MetadataRequest, OffsetCommitRequest, OffsetFetchRequest, ProduceRequest,
    RequestHeader, SaslAuthenticateRequest, SaslHandshakeRequest, SyncGroupRequest,
};
use kafka_protocol::protocol::Decodable;

use super::versions;

/// What precedes a request's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub key: ApiKey,
    pub version: i16,
    pub correlation: i32,
}

/// A request's head, or an ApiVersions of a version not served.
#[derive(Debug)]
pub enum Opened {
    /// A served API and version; the body's bytes follow.
    Served(Head, Bytes),
    /// ApiVersions of a version this door does not serve: answered in version 0.
    VersionsUnserved { version: i16, correlation: i32 },
}

/// A served request's body.
#[derive(Debug)]
pub enum Body {
    SaslHandshake(SaslHandshakeRequest),
    SaslAuthenticate(SaslAuthenticateRequest),
    ApiVersions,
    Metadata(MetadataRequest),
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    CreateTopics(CreateTopicsRequest),
    DeleteTopics(DeleteTopicsRequest),
    InitProducerId(InitProducerIdRequest),
    FindCoordinator(FindCoordinatorRequest),
    JoinGroup(JoinGroupRequest),
    SyncGroup(SyncGroupRequest),
    Heartbeat(HeartbeatRequest),
    LeaveGroup(LeaveGroupRequest),
    OffsetCommit(OffsetCommitRequest),
    OffsetFetch(OffsetFetchRequest),
}

/// The head of `bytes` (a whole request frame after its size): the API, its version
/// and correlation id, the request header read past. An error says what was wrong, for
/// the log line that closes the connection.
pub fn open(mut bytes: Bytes) -> Result<Opened, String> {
    let Some(first) = bytes.first_chunk::<8>() else {
        return Err(format!("a request of {} bytes (8 at least)", bytes.len()));
    };
    let raw_key = i16::from_be_bytes([first[0], first[1]]);
    let version = i16::from_be_bytes([first[2], first[3]]);
    let correlation = i32::from_be_bytes([first[4], first[5], first[6], first[7]]);
    let Ok(key) = ApiKey::try_from(raw_key) else {
        return Err(format!("API key {raw_key} is none of Kafka's"));
    };
    if !versions::serves(key, version) {
        if key == ApiKey::ApiVersions {
            return Ok(Opened::VersionsUnserved { version, correlation });
        }
        return Err(format!(
            "{key:?} version {version} is not served (served: {})",
            served_list()
        ));
    }
    RequestHeader::decode(&mut bytes, key.request_header_version(version))
        .map_err(|e| undecoded(key, version, &e))?;
    Ok(Opened::Served(
        Head {
            key,
            version,
            correlation,
        },
        bytes,
    ))
}

/// The body of a request whose head `open` gave, as the crate's message.
pub fn body(head: Head, mut bytes: Bytes) -> Result<Body, String> {
    let b = &mut bytes;
    Ok(match head.key {
        ApiKey::SaslHandshake if head.version == 0 => {
            return Err(
                "a SaslHandshake of version 0 (SASL's bytes unframed after it) is not served: \
                        SaslAuthenticate is (clients from Kafka 1.0 on use it)"
                    .into(),
            );
        }
        ApiKey::SaslHandshake => Body::SaslHandshake(decode(b, head)?),
        ApiKey::SaslAuthenticate => Body::SaslAuthenticate(decode(b, head)?),
        ApiKey::ApiVersions => {
            decode::<ApiVersionsRequest>(b, head)?;
            Body::ApiVersions
        }
        ApiKey::Metadata => Body::Metadata(decode(b, head)?),
        ApiKey::Produce => Body::Produce(decode(b, head)?),
        ApiKey::Fetch => Body::Fetch(decode(b, head)?),
        ApiKey::ListOffsets => Body::ListOffsets(decode(b, head)?),
        ApiKey::CreateTopics => Body::CreateTopics(decode(b, head)?),
        ApiKey::DeleteTopics => Body::DeleteTopics(decode(b, head)?),
        ApiKey::InitProducerId => Body::InitProducerId(decode(b, head)?),
        ApiKey::FindCoordinator => Body::FindCoordinator(decode(b, head)?),
        ApiKey::JoinGroup => Body::JoinGroup(decode(b, head)?),
        ApiKey::SyncGroup => Body::SyncGroup(decode(b, head)?),
        ApiKey::Heartbeat => Body::Heartbeat(decode(b, head)?),
        ApiKey::LeaveGroup => Body::LeaveGroup(decode(b, head)?),
        ApiKey::OffsetCommit => Body::OffsetCommit(decode(b, head)?),
        ApiKey::OffsetFetch => Body::OffsetFetch(decode(b, head)?),
        other => {
            return Err(format!(
                "{other:?} is listed as served but has no decoder (a bug)"
            ));
        }
    })
}

/// One message of `head`'s API and version from `bytes`.
fn decode<T: Decodable>(bytes: &mut Bytes, head: Head) -> Result<T, String> {
    T::decode(bytes, head.version).map_err(|e| undecoded(head.key, head.version, &e))
}

fn undecoded(key: ApiKey, version: i16, e: &dyn std::fmt::Display) -> String {
    format!("a {key:?} v{version} request that does not decode: {e}")
}

/// The APIs and versions served, for an error message.
fn served_list() -> String {
    versions::SERVED
        .iter()
        .map(|(key, min, max)| format!("{key:?} {min}-{max}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::protocol::{Encodable, StrBytes};

    /// A request frame (after its size) as a client makes it.
    fn frame<R: Encodable>(key: ApiKey, version: i16, correlation: i32, body: &R) -> Bytes {
        let mut buf = BytesMut::new();
        let mut header = RequestHeader::default();
        header.request_api_key = key as i16;
        header.request_api_version = version;
        header.correlation_id = correlation;
        header.client_id = Some(StrBytes::from_static_str("test"));
        header
            .encode(&mut buf, key.request_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    fn metadata_of(topic: &str) -> MetadataRequest {
        let mut request = MetadataRequest::default();
        let mut wanted = MetadataRequestTopic::default();
        wanted.name = Some(TopicName(StrBytes::from_string(topic.to_owned())));
        request.topics = Some(vec![wanted]);
        request
    }

    fn opened(bytes: Bytes) -> (Head, Bytes) {
        match open(bytes).unwrap() {
            Opened::Served(head, rest) => (head, rest),
            other => panic!("not served: {other:?}"),
        }
    }

    #[test]
    fn a_served_request_decodes_to_its_head_and_the_body_the_client_encoded() {
        for version in [0, 4, 9, 12] {
            let sent = metadata_of("events");
            let (head, rest) = opened(frame(ApiKey::Metadata, version, 77, &sent));
            assert_eq!(
                head,
                Head {
                    key: ApiKey::Metadata,
                    version,
                    correlation: 77
                }
            );
            match body(head, rest).unwrap() {
                Body::Metadata(got) => assert_eq!(got.topics, sent.topics, "version {version}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_request_cut_short_or_of_no_kafka_api_is_an_error_that_says_so() {
        for short in [&b""[..], b"\x00", b"\x00\x03\x00\x00\x00\x00\x00"] {
            let error = open(Bytes::copy_from_slice(short)).unwrap_err();
            assert!(error.contains("8 at least"), "{error}");
        }
        let error = open(Bytes::from_static(b"\x7f\x00\x00\x00\x00\x00\x00\x01")).unwrap_err();
        assert!(error.contains("API key 32512 is none of Kafka's"), "{error}");
        // Metadata v12 with its body cut in the middle of the topic's name.
        let whole = frame(ApiKey::Metadata, 12, 1, &metadata_of("events"));
        let (head, rest) = opened(whole.slice(..whole.len() - 6));
        let error = body(head, rest).unwrap_err();
        assert!(
            error.contains("a Metadata v12 request that does not decode"),
            "{error}"
        );
    }

    #[test]
    fn an_unserved_version_is_refused_naming_what_is_served_except_api_versions_which_is_answered() {
        let head_only = |key: ApiKey, version: i16, correlation: i32| {
            let mut raw = BytesMut::new();
            raw.put_i16(key as i16);
            raw.put_i16(version);
            raw.put_i32(correlation);
            raw.freeze()
        };
        let error = open(head_only(ApiKey::Produce, 2, 1)).unwrap_err();
        assert!(error.contains("Produce version 2 is not served"), "{error}");
        assert!(error.contains("Produce 3-9"), "{error}");
        match open(head_only(ApiKey::ApiVersions, 99, 5)).unwrap() {
            Opened::VersionsUnserved { version, correlation } => assert_eq!((version, correlation), (99, 5)),
            other => panic!("{other:?}"),
        }
        let (head, rest) = opened(frame(
            ApiKey::SaslHandshake,
            0,
            1,
            &SaslHandshakeRequest::default(),
        ));
        let error = body(head, rest).unwrap_err();
        assert!(error.contains("SaslHandshake of version 0"), "{error}");
    }
}
