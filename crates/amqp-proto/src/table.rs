//! Field tables and values, with the type tags RabbitMQ and its clients use (the 0-9-1
//! errata: `s` is a signed 16-bit integer, `l` a signed 64-bit one, `x` a byte array).

use bytes::{Bytes, BytesMut};

use crate::error::DecodeError;
use crate::wire::{Reader, Writer};

/// Tables and arrays nest at most this deep; deeper input is a syntax error, so hostile
/// input cannot exhaust the stack.
pub const MAX_TABLE_DEPTH: usize = 16;

/// One field value.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// `t`
    Bool(bool),
    /// `b`
    I8(i8),
    /// `B`
    U8(u8),
    /// `s`
    I16(i16),
    /// `u`
    U16(u16),
    /// `I`
    I32(i32),
    /// `i`
    U32(u32),
    /// `l`
    I64(i64),
    /// `f`
    F32(f32),
    /// `d`
    F64(f64),
    /// `D`: scale, then unscaled value.
    Decimal(u8, u32),
    /// `S`: a long string (bytes; usually UTF-8).
    LongString(Bytes),
    /// `A`
    Array(Vec<FieldValue>),
    /// `T`: seconds since the epoch.
    Timestamp(u64),
    /// `F`
    Table(FieldTable),
    /// `V`
    Void,
    /// `x`
    ByteArray(Bytes),
}

/// A field table: names in order, as sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldTable(pub Vec<(String, FieldValue)>);

impl FieldTable {
    /// The first value named `name`.
    pub fn get(&self, name: &str) -> Option<&FieldValue> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// Adds a field.
    pub fn insert(&mut self, name: impl Into<String>, value: FieldValue) {
        self.0.push((name.into(), value));
    }

    /// True when it has no field.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Decodes a table's fields without the length in front (AMQPLAIN's response).
    pub fn decode_body(bytes: Bytes) -> Result<Self, DecodeError> {
        read_table_body(bytes, 0, "field table")
    }

    pub(crate) fn read(r: &mut Reader, what: &str) -> Result<Self, DecodeError> {
        let bytes = r.long_str(what)?;
        read_table_body(bytes, 0, what)
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        let mut body = BytesMut::new();
        write_table_body(self, &mut Writer::new(&mut body));
        w.long_str(&body);
    }
}

impl FieldValue {
    /// A long string value from text.
    pub fn string(s: &str) -> Self {
        Self::LongString(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// The value as an integer, whatever its integer type.
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            Self::I8(v) => v.into(),
            Self::U8(v) => v.into(),
            Self::I16(v) => v.into(),
            Self::U16(v) => v.into(),
            Self::I32(v) => v.into(),
            Self::U32(v) => v.into(),
            Self::I64(v) => v,
            Self::Timestamp(v) => i64::try_from(v).ok()?,
            _ => return None,
        })
    }

    /// The value as text, when it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::LongString(b) | Self::ByteArray(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

fn too_deep(what: &str) -> DecodeError {
    DecodeError::Syntax(format!(
        "{what}: tables nested deeper than {MAX_TABLE_DEPTH}"
    ))
}

fn read_table_body(bytes: Bytes, depth: usize, what: &str) -> Result<FieldTable, DecodeError> {
    if depth >= MAX_TABLE_DEPTH {
        return Err(too_deep(what));
    }
    let mut r = Reader::new(bytes);
    let mut fields = Vec::new();
    while r.remaining() > 0 {
        let name = r.short_str(what)?;
        let value = read_value(&mut r, depth, what)?;
        fields.push((name, value));
    }
    Ok(FieldTable(fields))
}

fn read_value(r: &mut Reader, depth: usize, what: &str) -> Result<FieldValue, DecodeError> {
    let tag = r.u8(what)?;
    Ok(match tag {
        b't' => FieldValue::Bool(r.u8(what)? != 0),
        b'b' => FieldValue::I8(r.u8(what)? as i8),
        b'B' => FieldValue::U8(r.u8(what)?),
        b's' => FieldValue::I16(r.u16(what)? as i16),
        b'u' => FieldValue::U16(r.u16(what)?),
        b'I' => FieldValue::I32(r.u32(what)? as i32),
        b'i' => FieldValue::U32(r.u32(what)?),
        b'l' => FieldValue::I64(r.u64(what)? as i64),
        b'f' => FieldValue::F32(f32::from_bits(r.u32(what)?)),
        b'd' => FieldValue::F64(f64::from_bits(r.u64(what)?)),
        b'D' => FieldValue::Decimal(r.u8(what)?, r.u32(what)?),
        b'S' => FieldValue::LongString(r.long_str(what)?),
        b'x' => FieldValue::ByteArray(r.long_str(what)?),
        b'A' => {
            if depth + 1 >= MAX_TABLE_DEPTH {
                return Err(too_deep(what));
            }
            let mut inner = Reader::new(r.long_str(what)?);
            let mut items = Vec::new();
            while inner.remaining() > 0 {
                items.push(read_value(&mut inner, depth + 1, what)?);
            }
            FieldValue::Array(items)
        }
        b'T' => FieldValue::Timestamp(r.u64(what)?),
        b'F' => FieldValue::Table(read_table_body(r.long_str(what)?, depth + 1, what)?),
        b'V' => FieldValue::Void,
        other => {
            return Err(DecodeError::Syntax(format!(
                "{what}: unknown field type {:?}",
                char::from(other)
            )));
        }
    })
}

fn write_table_body(table: &FieldTable, w: &mut Writer) {
    for (name, value) in &table.0 {
        w.short_str(name);
        write_value(value, w);
    }
}

fn write_value(value: &FieldValue, w: &mut Writer) {
    match value {
        FieldValue::Bool(v) => {
            w.u8(b't');
            w.u8(u8::from(*v));
        }
        FieldValue::I8(v) => {
            w.u8(b'b');
            w.u8(*v as u8);
        }
        FieldValue::U8(v) => {
            w.u8(b'B');
            w.u8(*v);
        }
        FieldValue::I16(v) => {
            w.u8(b's');
            w.u16(*v as u16);
        }
        FieldValue::U16(v) => {
            w.u8(b'u');
            w.u16(*v);
        }
        FieldValue::I32(v) => {
            w.u8(b'I');
            w.u32(*v as u32);
        }
        FieldValue::U32(v) => {
            w.u8(b'i');
            w.u32(*v);
        }
        FieldValue::I64(v) => {
            w.u8(b'l');
            w.u64(*v as u64);
        }
        FieldValue::F32(v) => {
            w.u8(b'f');
            w.u32(v.to_bits());
        }
        FieldValue::F64(v) => {
            w.u8(b'd');
            w.u64(v.to_bits());
        }
        FieldValue::Decimal(scale, v) => {
            w.u8(b'D');
            w.u8(*scale);
            w.u32(*v);
        }
        FieldValue::LongString(b) => {
            w.u8(b'S');
            w.long_str(b);
        }
        FieldValue::ByteArray(b) => {
            w.u8(b'x');
            w.long_str(b);
        }
        FieldValue::Array(items) => {
            w.u8(b'A');
            let mut body = BytesMut::new();
            let mut inner = Writer::new(&mut body);
            for item in items {
                write_value(item, &mut inner);
            }
            w.long_str(&body);
        }
        FieldValue::Timestamp(v) => {
            w.u8(b'T');
            w.u64(*v);
        }
        FieldValue::Table(t) => {
            w.u8(b'F');
            t.write(w);
        }
        FieldValue::Void => w.u8(b'V'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(t: &FieldTable) -> FieldTable {
        let mut out = BytesMut::new();
        t.write(&mut Writer::new(&mut out));
        FieldTable::read(&mut Reader::new(out.freeze()), "table").unwrap()
    }

    #[test]
    fn every_type_round_trips() {
        let mut t = FieldTable::default();
        t.insert("bool", FieldValue::Bool(true));
        t.insert("i8", FieldValue::I8(-3));
        t.insert("u8", FieldValue::U8(200));
        t.insert("i16", FieldValue::I16(-300));
        t.insert("u16", FieldValue::U16(60000));
        t.insert("i32", FieldValue::I32(-70000));
        t.insert("u32", FieldValue::U32(4_000_000_000));
        t.insert("i64", FieldValue::I64(-5));
        t.insert("f32", FieldValue::F32(1.5));
        t.insert("f64", FieldValue::F64(-2.25));
        t.insert("dec", FieldValue::Decimal(2, 1234));
        t.insert("s", FieldValue::string("héllo"));
        t.insert("x", FieldValue::ByteArray(Bytes::from_static(b"\0\xff")));
        t.insert("ts", FieldValue::Timestamp(1_700_000_000));
        t.insert("void", FieldValue::Void);
        let mut inner = FieldTable::default();
        inner.insert(
            "n",
            FieldValue::Array(vec![FieldValue::U8(1), FieldValue::Void]),
        );
        t.insert("t", FieldValue::Table(inner));
        assert_eq!(round_trip(&t), t);
    }

    #[test]
    fn spec_bytes_of_a_client_properties_table() {
        // {"product": S"pika"} as pika sends it: table length 17, name, 'S', length, text.
        let bytes: &[u8] = b"\x00\x00\x00\x11\x07productS\x00\x00\x00\x04pika";
        let t = FieldTable::read(&mut Reader::new(Bytes::from_static(bytes)), "t").unwrap();
        assert_eq!(t.get("product").and_then(FieldValue::as_str), Some("pika"));
    }

    #[test]
    fn deep_nesting_is_a_syntax_error_not_a_stack_overflow() {
        // Each level: 'A', length, then the next level. 10 000 levels.
        let mut value = vec![b'V'];
        for _ in 0..10_000 {
            let mut outer = vec![b'A'];
            outer.extend_from_slice(&(value.len() as u32).to_be_bytes());
            outer.extend_from_slice(&value);
            value = outer;
        }
        let mut table = vec![1u8, b'k'];
        table.extend_from_slice(&value);
        let mut bytes = (table.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&table);
        let err = FieldTable::read(&mut Reader::new(Bytes::from(bytes)), "t").unwrap_err();
        assert!(matches!(err, DecodeError::Syntax(m) if m.contains("nested")));
    }

    #[test]
    fn unknown_type_and_short_input_are_syntax_errors() {
        let bad: &[u8] = b"\x00\x00\x00\x03\x01kZ";
        assert!(FieldTable::read(&mut Reader::new(Bytes::from_static(bad)), "t").is_err());
        let short: &[u8] = b"\x00\x00\x00\x09\x01kS\x00\x00\x00\x09ab";
        assert!(FieldTable::read(&mut Reader::new(Bytes::from_static(short)), "t").is_err());
    }
}
