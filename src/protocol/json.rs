//! The one JSON shape of a record, shared by `flowd tail --json`, `GET /topics/T` and
//! the json sink: `{"topic","partition","offset","timestamp","key","value"}`, with key
//! and value as strings where they are UTF-8, else base64 and `<name>_base64: true`;
//! `flowd tail --json` adds a record's client headers (`put_headers`).

use base64::Engine;

pub fn record_json(
    topic: &str,
    partition: u32,
    offset: u64,
    timestamp_ms: i64,
    key: Option<&[u8]>,
    value: &[u8],
) -> serde_json::Value {
    let mut object = serde_json::Map::new();
    // serde_json keeps insertion order only with a feature; the fields print sorted,
    // which is as valid JSON and as easy to read.
    object.insert("topic".into(), topic.into());
    object.insert("partition".into(), partition.into());
    object.insert("offset".into(), offset.into());
    object.insert("timestamp".into(), timestamp_ms.into());
    put_bytes(&mut object, "key", key);
    put_bytes(&mut object, "value", Some(value));
    serde_json::Value::Object(object)
}

/// Adds a record's client headers (the engine's own, `flowd-*`, left out) as
/// `"headers": [{"name", "value"}]`, in order, when it has any; a value that is not UTF-8
/// is base64 with `value_base64: true`.
pub fn put_headers<'a>(
    record: &mut serde_json::Value,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) {
    let list: Vec<serde_json::Value> = headers
        .into_iter()
        .filter(|(name, _)| !name.starts_with(crate::protocol::wire::RESERVED_HEADER_PREFIX))
        .map(|(name, value)| {
            let mut header = serde_json::Map::new();
            header.insert("name".into(), name.into());
            put_bytes(&mut header, "value", Some(value));
            serde_json::Value::Object(header)
        })
        .collect();
    if let (false, Some(object)) = (list.is_empty(), record.as_object_mut()) {
        object.insert("headers".into(), list.into());
    }
}

fn put_bytes(object: &mut serde_json::Map<String, serde_json::Value>, name: &str, bytes: Option<&[u8]>) {
    let value = match bytes.map(std::str::from_utf8) {
        None => serde_json::Value::Null,
        Some(Ok(text)) => text.into(),
        Some(Err(_)) => {
            object.insert(format!("{name}_base64"), true.into());
            base64::engine::general_purpose::STANDARD
                .encode(bytes.unwrap_or_default())
                .into()
        }
    };
    object.insert(name.into(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_stays_text_and_binary_becomes_base64() {
        let v = record_json("t", 1, 2, 3, None, b"hi");
        assert_eq!(
            v.to_string(),
            r#"{"key":null,"offset":2,"partition":1,"timestamp":3,"topic":"t","value":"hi"}"#
        );
        let v = record_json("t", 0, 0, 0, Some(&[0xFF]), b"x");
        assert_eq!(v["key"], "/w==");
        assert_eq!(v["key_base64"], true);
    }

    #[test]
    fn client_headers_are_listed_in_order_and_the_engines_left_out() {
        let mut v = record_json("t", 0, 0, 0, None, b"x");
        put_headers(
            &mut v,
            [("a", &b"1"[..]), ("flowd-src", b"t/0/1"), ("a", b"\xff")],
        );
        assert_eq!(
            v["headers"].to_string(),
            r#"[{"name":"a","value":"1"},{"name":"a","value":"/w==","value_base64":true}]"#
        );
        let mut none = record_json("t", 0, 0, 0, None, b"x");
        put_headers(&mut none, [("flowd-src", &b"t/0/1"[..])]);
        assert!(none.get("headers").is_none());
    }
}
