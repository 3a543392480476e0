//! The parts of proto3 JSON input that serde_json and prost-reflect leave to the caller:
//! a body with a key given twice is refused (serde_json would keep the last one silently, so
//! two parsers could read two different requests), and integers may be written in exponent
//! or fraction form (`"1.03e2"`, `1e2`) when their value is whole, as the proto3 JSON mapping
//! allows.

use std::fmt;

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// A JSON value parsed from text, refusing an object that repeats a key.
pub fn parse(text: &str) -> Result<Value, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = de
        .deserialize_any(StrictVisitor)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

struct Strict(Value);

impl<'de> de::Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
            }
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// The decimal integer `text` denotes when written with a fraction or exponent (`1.03e2` →
/// `103`); `None` when it has neither, is not a number, or is not whole.
fn whole_number(text: &str) -> Option<String> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
        None => (unsigned, None),
    };
    let (int_part, frac_part) = match mantissa.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (mantissa, None),
    };
    if exponent.is_none() && frac_part.is_none() {
        return None;
    }
    let frac = frac_part.unwrap_or("");
    let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int_part.is_empty() || !digits_ok(int_part) || !digits_ok(frac) {
        return None;
    }
    let exponent: i64 = match exponent {
        Some(e) => {
            let unsigned_e = e.strip_prefix(['+', '-']).unwrap_or(e);
            if unsigned_e.is_empty() || unsigned_e.len() > 4 || !digits_ok(unsigned_e) {
                return None;
            }
            e.parse().ok()?
        }
        None => 0,
    };
    let mut digits = format!("{int_part}{frac}");
    let shift = exponent - frac.len() as i64;
    if shift >= 0 {
        // Anything longer than 20 digits is out of every integer type's range anyway.
        if digits.len() as i64 + shift > 40 {
            return None;
        }
        digits.extend(std::iter::repeat_n('0', shift as usize));
    } else {
        let cut = digits.len().saturating_sub((-shift) as usize);
        if digits[cut..].bytes().any(|b| b != b'0') {
            return None;
        }
        digits.truncate(cut);
    }
    let trimmed = digits.trim_start_matches('0');
    let magnitude = if trimmed.is_empty() { "0" } else { trimmed };
    Some(if negative && magnitude != "0" {
        format!("-{magnitude}")
    } else {
        magnitude.to_string()
    })
}

fn is_integer(kind: &Kind) -> bool {
    match kind {
        Kind::Int32
        | Kind::Sint32
        | Kind::Sfixed32
        | Kind::Uint32
        | Kind::Fixed32
        | Kind::Int64
        | Kind::Sint64
        | Kind::Sfixed64
        | Kind::Uint64
        | Kind::Fixed64 => true,
        Kind::Message(m) => matches!(
            m.full_name(),
            "google.protobuf.Int32Value"
                | "google.protobuf.Int64Value"
                | "google.protobuf.UInt32Value"
                | "google.protobuf.UInt64Value"
        ),
        _ => false,
    }
}

fn normalize_integer(value: &mut Value) {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_f64() => n.to_string(),
        _ => return,
    };
    if let Some(whole) = whole_number(&text) {
        *value = Value::String(whole);
    }
}

fn normalize_value(kind: &Kind, value: &mut Value) -> Result<(), String> {
    if is_integer(kind) {
        normalize_integer(value);
    } else if let (Kind::Message(m), Value::Object(_)) = (kind, &*value)
        && !m.full_name().starts_with("google.protobuf.")
    {
        normalize(m, value)?;
    }
    Ok(())
}

/// The field `key` names in `desc`: its JSON name or its proto name, as proto3 JSON accepts.
pub fn field_named(desc: &MessageDescriptor, key: &str) -> Option<FieldDescriptor> {
    desc.get_field_by_json_name(key)
        .or_else(|| desc.get_field_by_name(key))
}

/// Prepares `value` (JSON for a `desc` message) for the proto3 JSON parser: a field given
/// under both its JSON and its proto name is refused, and whole numbers in fraction or
/// exponent form, wherever an integer field holds them, become plain decimal strings.
pub fn normalize(desc: &MessageDescriptor, value: &mut Value) -> Result<(), String> {
    let Value::Object(object) = value else {
        return Ok(());
    };
    let mut seen = Vec::with_capacity(object.len());
    for (key, item) in object.iter_mut() {
        let Some(field) = field_named(desc, key) else {
            continue;
        };
        if seen.contains(&field.number()) {
            return Err(format!(
                "{} is given twice (as {} and {})",
                field.name(),
                field.json_name(),
                field.name()
            ));
        }
        seen.push(field.number());
        if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                continue;
            };
            let value_field = entry.map_entry_value_field();
            if let Value::Object(entries) = item {
                for v in entries.values_mut() {
                    normalize_value(&value_field.kind(), v)?;
                }
            }
        } else if field.is_list() {
            if let Value::Array(items) = item {
                for v in items {
                    normalize_value(&field.kind(), v)?;
                }
            }
        } else {
            normalize_value(&field.kind(), item)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_key_is_refused_at_any_depth() {
        assert!(parse(r#"{"a":1,"b":{"c":2}}"#).is_ok());
        let e = parse(r#"{"a":1,"a":2}"#).unwrap_err();
        assert!(e.contains("duplicate key \"a\""), "{e}");
        assert!(parse(r#"{"x":[{"c":1,"c":1}]}"#).is_err());
        assert!(parse(r#"{"a":1} trailing"#).is_err());
        assert!(parse(r#"{"a":"#).is_err());
    }

    #[test]
    fn whole_numbers_in_any_notation() {
        for (text, want) in [
            ("1.03e2", Some("103")),
            ("1e2", Some("100")),
            ("100.0", Some("100")),
            ("-2.5E1", Some("-25")),
            ("1230e-1", Some("123")),
            ("0.0", Some("0")),
            ("-0e5", Some("0")),
            ("9223372036854775807e0", Some("9223372036854775807")),
            ("1.5", None),
            ("1e-1", None),
            ("12", None),
            ("1e", None),
            ("1e99999", None),
            ("1e400", None),
            ("abc", None),
            (".5e1", None),
        ] {
            assert_eq!(whole_number(text).as_deref(), want, "{text}");
        }
    }
}
