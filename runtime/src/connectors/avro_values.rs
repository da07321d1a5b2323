//! Avro-encoded Kafka values: one datum per value, bare or in Confluent's
//! wire format, decoded by arrow-avro against the writer's schema the
//! manifest gives, into the same JSON records an Avro file gives (see
//! [`super::columnar_files`]).
//!
//! arrow-avro decodes streams into batches; here each value is decoded
//! and flushed on its own, so that a value that does not decode is one
//! bad record, not a broken batch. After such a value the decoder is
//! built afresh: a failed datum may leave it halfway through a record.

use arrow_avro::reader::{Decoder, ReaderBuilder};
use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};
use serde_json::Value;

use super::columnar_files::json_rows;
use crate::manifest::KafkaAvroSpec;

/// Confluent's wire format: a zero byte, then the schema id (big-endian).
const CONFLUENT_HEADER: usize = 5;

pub struct AvroValues {
    spec: KafkaAvroSpec,
    decoder: Decoder,
    /// A bare value behind the header the decoder expects.
    framed: Vec<u8>,
}

impl AvroValues {
    /// A decoder of values in `spec`'s schema; fails naming what is wrong
    /// with the schema.
    pub fn new(spec: &KafkaAvroSpec) -> Result<AvroValues, String> {
        match serde_json::from_str::<Value>(&spec.schema) {
            Ok(Value::Object(schema)) if schema.get("type").and_then(Value::as_str) == Some("record") => {}
            Ok(other) => {
                let found = other.get("type").map_or_else(|| other.to_string(), Value::to_string);
                return Err(format!("expected an Avro record schema ({{\"type\": \"record\", ...}}), got {found}"));
            }
            Err(e) => return Err(format!("not JSON: {e}")),
        }
        Ok(AvroValues { spec: spec.clone(), decoder: decoder(spec)?, framed: Vec::new() })
    }

    /// The record `value` holds, or why it holds none.
    pub fn decode(&mut self, value: &[u8]) -> Result<Value, String> {
        let id = self.spec.confluent_schema_id.unwrap_or(0);
        if self.spec.confluent_schema_id.is_some() {
            match value {
                [0, a, b, c, d, ..] if u32::from_be_bytes([*a, *b, *c, *d]) == id => {}
                [0, a, b, c, d, ..] => {
                    return Err(format!(
                        "written with schema id {}, but the manifest's schema has id {id} (no registry is asked \
                         for other schemas)",
                        u32::from_be_bytes([*a, *b, *c, *d])
                    ));
                }
                _ => {
                    return Err(format!(
                        "not in Confluent's wire format: expected a zero byte and a 4-byte schema id before the \
                         datum, got {} bytes starting {:?}",
                        value.len(),
                        &value[..value.len().min(CONFLUENT_HEADER)]
                    ));
                }
            }
        }
        let result = if self.spec.confluent_schema_id.is_some() {
            decode_one(&mut self.decoder, value)
        } else {
            self.framed.clear();
            self.framed.push(0);
            self.framed.extend_from_slice(&id.to_be_bytes());
            self.framed.extend_from_slice(value);
            decode_one(&mut self.decoder, &self.framed)
        };
        if result.is_err() {
            self.reset()?;
        }
        result
    }

    /// Builds the decoder afresh, as after a value that did not decode.
    pub fn reset(&mut self) -> Result<(), String> {
        self.decoder = decoder(&self.spec)?;
        Ok(())
    }
}

/// A decoder of one record at a time, of values framed with the schema id.
fn decoder(spec: &KafkaAvroSpec) -> Result<Decoder, String> {
    let id = Fingerprint::Id(spec.confluent_schema_id.unwrap_or(0));
    let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
    store.set(id, AvroSchema::new(spec.schema.clone())).map_err(|e| e.to_string())?;
    ReaderBuilder::new()
        .with_batch_size(1)
        .with_writer_schema_store(store)
        .with_active_fingerprint(id)
        .build_decoder()
        .map_err(|e| format!("not a usable Avro schema: {e}"))
}

fn decode_one(decoder: &mut Decoder, framed: &[u8]) -> Result<Value, String> {
    let not_a_record = |e: &dyn std::fmt::Display| format!("not an Avro datum of the manifest's schema: {e}");
    let consumed = decoder.decode(framed).map_err(|e| not_a_record(&e))?;
    let batch = decoder.flush().map_err(|e| not_a_record(&e))?;
    let Some(batch) = batch else {
        return Err(format!(
            "the value ends inside the record ({} bytes)",
            framed.len().saturating_sub(CONFLUENT_HEADER)
        ));
    };
    if consumed < framed.len() {
        return Err(format!("{} bytes are left after the record", framed.len() - consumed));
    }
    let mut rows = json_rows(&batch).map_err(|e| not_a_record(&e))?;
    match (rows.pop(), rows.is_empty()) {
        (Some(row), true) => Ok(row),
        _ => Err("the value does not hold exactly one record".into()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const SCHEMA: &str = r#"{"type": "record", "name": "Order", "fields": [
        {"name": "id", "type": "long"},
        {"name": "item", "type": "string"},
        {"name": "note", "type": ["null", "string"], "default": null},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}}
    ]}"#;

    fn spec(id: Option<u32>) -> KafkaAvroSpec {
        KafkaAvroSpec { schema: SCHEMA.into(), confluent_schema_id: id }
    }

    /// Avro's zig-zag varint of `n`.
    fn long(n: i64) -> Vec<u8> {
        let mut z = ((n << 1) ^ (n >> 63)) as u64;
        let mut out = Vec::new();
        while z >= 0x80 {
            out.push((z as u8) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
        out
    }

    /// The datum of an order, encoded by hand after the Avro spec.
    fn datum(id: i64, item: &str, note: Option<&str>, at_micros: i64) -> Vec<u8> {
        let mut out = long(id);
        out.extend(long(item.len() as i64));
        out.extend(item.as_bytes());
        match note {
            None => out.extend(long(0)),
            Some(n) => {
                out.extend(long(1));
                out.extend(long(n.len() as i64));
                out.extend(n.as_bytes());
            }
        }
        out.extend(long(at_micros));
        out
    }

    #[test]
    fn bare_and_confluent_framed_values_decode_to_records_with_timestamps_in_milliseconds() {
        let mut bare = AvroValues::new(&spec(None)).unwrap();
        let first = bare.decode(&datum(7, "tea", None, 1_704_067_200_123_456)).unwrap();
        assert_eq!(first, json!({"id": 7, "item": "tea", "note": null, "at": 1_704_067_200_123i64}));
        let second = bare.decode(&datum(8, "cake", Some("warm"), 0)).unwrap();
        assert_eq!(second, json!({"id": 8, "item": "cake", "note": "warm", "at": 0}));

        let mut framed = AvroValues::new(&spec(Some(42))).unwrap();
        let mut value = vec![0, 0, 0, 0, 42];
        value.extend(datum(9, "jam", None, 1_000));
        assert_eq!(framed.decode(&value).unwrap()["id"], 9);
    }

    #[test]
    fn a_value_that_does_not_decode_is_refused_with_its_reason_and_the_next_one_still_decodes() {
        let mut bare = AvroValues::new(&spec(None)).unwrap();
        let good = datum(1, "tea", None, 5_000);
        let err = bare.decode(&good[..good.len() - 1]).unwrap_err();
        assert!(err.contains("ends inside the record") || err.contains("not an Avro datum"), "{err}");
        let mut long_value = good.clone();
        long_value.extend([1, 2, 3]);
        let err = bare.decode(&long_value).unwrap_err();
        assert!(err.contains("left after the record") || err.contains("not an Avro datum"), "{err}");
        assert_eq!(bare.decode(&good).unwrap()["at"], 5);

        let mut framed = AvroValues::new(&spec(Some(42))).unwrap();
        let mut other_id = vec![0, 0, 0, 0, 43];
        other_id.extend(&good);
        let err = framed.decode(&other_id).unwrap_err();
        assert!(err.contains("written with schema id 43, but the manifest's schema has id 42"), "{err}");
        let err = framed.decode(b"{\"id\": 1}").unwrap_err();
        assert!(err.contains("not in Confluent's wire format"), "{err}");
    }

    #[test]
    fn a_schema_that_is_not_a_record_or_not_json_is_refused() {
        let err =
            AvroValues::new(&KafkaAvroSpec { schema: "\"long\"".into(), confluent_schema_id: None }).err().unwrap();
        assert!(err.contains("expected an Avro record schema"), "{err}");
        let err = AvroValues::new(&KafkaAvroSpec { schema: "{type: record".into(), confluent_schema_id: None })
            .err()
            .unwrap();
        assert!(err.contains("not JSON"), "{err}");
        let bad_field = r#"{"type": "record", "name": "R", "fields": [{"name": "a", "type": "lng"}]}"#;
        assert!(AvroValues::new(&KafkaAvroSpec { schema: bad_field.into(), confluent_schema_id: None }).is_err());
    }
}
