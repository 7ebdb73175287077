//! The one JSON shape of a record, shared by `flowd tail --json`, `GET /topics/T` and
//! the json sink: `{"topic","partition","offset","timestamp","key","value"}`, with key
//! and value as strings where they are UTF-8, else base64 and `<name>_base64: true`.

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
}
