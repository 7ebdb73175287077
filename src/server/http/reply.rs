//! The shapes of HTTP requests and answers both HTTP rooms share: a reply (JSON, text, an
//! error with its status), records parsed from a JSON body, offsets as text, query
//! parameters.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use crate::protocol::wire::{Cursor, OwnedWireRecord};
use crate::protocol::{ErrorCode, ProduceGroup, ProtocolError};
use crate::runtime::shard::Shard;

pub type Reply = Response<Full<Bytes>>;

pub fn json(status: StatusCode, value: &serde_json::Value) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .expect("a valid response")
}

pub fn text(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("a valid response")
}

pub fn error(status: StatusCode, message: &str) -> Reply {
    json(status, &serde_json::json!({ "error": message }))
}

pub fn protocol_error(shard: &Shard, e: &ProtocolError) -> Reply {
    shard.shared.metrics.error(e.code);
    let status = match e.code {
        ErrorCode::Malformed | ErrorCode::Invalid | ErrorCode::UnknownKind | ErrorCode::BadVersion => {
            StatusCode::BAD_REQUEST
        }
        ErrorCode::UnknownTopic
        | ErrorCode::UnknownPartition
        | ErrorCode::UnknownJob
        | ErrorCode::UnknownConsumer
        | ErrorCode::UnknownState => StatusCode::NOT_FOUND,
        ErrorCode::ConsumerDisabled | ErrorCode::NothingClaimed | ErrorCode::ConsumerActive => {
            StatusCode::CONFLICT
        }
        ErrorCode::TooLarge | ErrorCode::FrameTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::JobFailed => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::Unavailable | ErrorCode::Overloaded | ErrorCode::Damaged => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ErrorCode::Unsupported => StatusCode::NOT_IMPLEMENTED,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::TlsRequired => StatusCode::BAD_REQUEST,
    };
    error(status, &e.message)
}

/// Items of a JSON array, or NDJSON lines: each a value, or `{"key", "value"}`.
pub fn parse_records(body: &[u8]) -> Result<Vec<OwnedWireRecord>, String> {
    let trimmed = body.trim_ascii_start();
    let items: Vec<serde_json::Value> = if trimmed.first() == Some(&b'[') {
        serde_json::from_slice(trimmed).map_err(|e| format!("the body is not a JSON array: {e}"))?
    } else {
        let mut items = Vec::new();
        for (n, line) in body.split(|b| *b == b'\n').enumerate() {
            if line.trim_ascii().is_empty() {
                continue;
            }
            items.push(serde_json::from_slice(line).map_err(|e| format!("line {} is not JSON: {e}", n + 1))?);
        }
        items
    };
    if items.is_empty() {
        return Err("no records in the body; send a JSON array or NDJSON lines".into());
    }
    Ok(items.into_iter().map(item_record).collect())
}

/// `"P:O"` of every record a produce (or commit) wrote, in input order.
pub fn offset_strings(runs: &[Vec<crate::protocol::Run>]) -> Vec<String> {
    crate::protocol::records::record_offsets(runs)
        .map(|(p, o)| format!("{p}:{o}"))
        .collect()
}

/// A produce group of records parsed from a body, encoded into `encoded` and borrowed
/// from it as the binary protocol's decoder would give them.
pub fn produce_group<'a>(
    topic: &'a str,
    records: &[OwnedWireRecord],
    encoded: &'a mut Vec<u8>,
) -> ProduceGroup<'a> {
    for r in records {
        r.encode(encoded);
    }
    let mut cursor = Cursor::new(encoded);
    let wire: Result<Vec<_>, _> = records.iter().map(|_| cursor.record()).collect();
    ProduceGroup {
        topic,
        partition: None,
        records: wire.expect("records just encoded decode"),
    }
}

fn item_record(item: serde_json::Value) -> OwnedWireRecord {
    let bytes = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone().into_bytes(),
        other => other.to_string().into_bytes(),
    };
    match &item {
        serde_json::Value::Object(o)
            if o.contains_key("value") && o.keys().all(|k| k == "key" || k == "value") =>
        {
            OwnedWireRecord {
                key: o.get("key").filter(|k| !k.is_null()).map(bytes),
                value: bytes(&o["value"]),
                ..OwnedWireRecord::default()
            }
        }
        other => OwnedWireRecord::value(bytes(other)),
    }
}

pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

/// `%XX` and `+` decoding of a query value; invalid escapes stay as they are.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
