//! Primitive reads and writes: every read checks the length first and fails with
//! [`DecodeError::Syntax`] naming what was being read.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::DecodeError;

/// A cursor over a frame payload.
pub(crate) struct Reader {
    buf: Bytes,
    /// Bits left in the current bit octet, and the octet (consecutive bit fields share one).
    bits: Option<(u8, u8)>,
}

fn short(what: &str) -> DecodeError {
    DecodeError::Syntax(format!("{what}: cut short"))
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Self { buf, bits: None }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn take(&mut self, n: usize, what: &str) -> Result<Bytes, DecodeError> {
        self.bits = None;
        if self.buf.len() < n {
            return Err(short(what));
        }
        Ok(self.buf.split_to(n))
    }

    pub(crate) fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &str) -> Result<u16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_be_bytes(a))
    }

    /// One bit field; consecutive bit fields are packed into one octet, low bit first.
    pub(crate) fn bit(&mut self, what: &str) -> Result<bool, DecodeError> {
        let (octet, used) = match self.bits {
            Some((octet, used)) if used < 8 => (octet, used),
            _ => (self.u8(what)?, 0),
        };
        self.bits = Some((octet, used + 1));
        Ok(octet & (1 << used) != 0)
    }

    pub(crate) fn short_str(&mut self, what: &str) -> Result<String, DecodeError> {
        let len = usize::from(self.u8(what)?);
        let b = self.take(len, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Syntax(format!("{what}: not UTF-8")))
    }

    pub(crate) fn long_str(&mut self, what: &str) -> Result<Bytes, DecodeError> {
        let len = self.u32(what)? as usize;
        self.take(len, what)
    }
}

/// Writes primitives, packing consecutive bits.
pub(crate) struct Writer<'a> {
    pub(crate) out: &'a mut BytesMut,
    /// Index of the current bit octet in `out` and bits used in it.
    bits: Option<(usize, u8)>,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(out: &'a mut BytesMut) -> Self {
        Self { out, bits: None }
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.bits = None;
        self.out.put_u8(v);
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.bits = None;
        self.out.put_u16(v);
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.bits = None;
        self.out.put_u32(v);
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.bits = None;
        self.out.put_u64(v);
    }

    pub(crate) fn bit(&mut self, v: bool) {
        let (at, used) = match self.bits {
            Some((at, used)) if used < 8 => (at, used),
            _ => {
                self.out.put_u8(0);
                (self.out.len() - 1, 0)
            }
        };
        if v {
            self.out[at] |= 1 << used;
        }
        self.bits = Some((at, used + 1));
    }

    /// A short string; longer than 255 bytes is cut at a character boundary (the codec's
    /// callers only pass names the decoder produced, or short texts of our own).
    pub(crate) fn short_str(&mut self, s: &str) {
        self.bits = None;
        let mut end = s.len().min(255);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.out.put_u8(end as u8);
        self.out.put_slice(&s.as_bytes()[..end]);
    }

    pub(crate) fn long_str(&mut self, b: &[u8]) {
        self.bits = None;
        self.out.put_u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
        self.out.put_slice(&b[..b.len().min(u32::MAX as usize)]);
    }
}
