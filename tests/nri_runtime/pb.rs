//! A minimal protobuf encoder and decoder, written from the wire format, so the
//! test runtime shares no code (and no `.proto`) with the plugin under test.

/// Builds one message.
#[derive(Default, Clone)]
pub struct Enc(pub Vec<u8>);

fn varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

impl Enc {
    pub fn new() -> Enc {
        Enc::default()
    }

    fn key(&mut self, field: u32, wire: u8) {
        varint(&mut self.0, (u64::from(field) << 3) | u64::from(wire));
    }

    /// int32/int64/uint32/bool/enum; zero is omitted as proto3 does.
    pub fn uint(mut self, field: u32, v: u64) -> Enc {
        if v != 0 {
            self.key(field, 0);
            varint(&mut self.0, v);
        }
        self
    }

    pub fn bytes(mut self, field: u32, b: &[u8]) -> Enc {
        if !b.is_empty() {
            self.key(field, 2);
            varint(&mut self.0, b.len() as u64);
            self.0.extend_from_slice(b);
        }
        self
    }

    pub fn string(self, field: u32, s: &str) -> Enc {
        self.bytes(field, s.as_bytes())
    }

    /// A sub-message, always written (even when empty).
    pub fn message(mut self, field: u32, m: Enc) -> Enc {
        self.key(field, 2);
        varint(&mut self.0, m.0.len() as u64);
        self.0.extend_from_slice(&m.0);
        self
    }

    /// One `map<string,string>` entry.
    pub fn map_entry(self, field: u32, k: &str, v: &str) -> Enc {
        self.message(field, Enc::new().string(1, k).string(2, v))
    }
}

/// A decoded field value.
#[derive(Debug, Clone, Copy)]
pub enum Val<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed64(u64),
    Fixed32(u32),
}

fn read_varint(b: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint too long".into())
}

/// Every field of a message, in order.
pub fn fields(b: &[u8]) -> Result<Vec<(u32, Val<'_>)>, String> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let key = read_varint(b, &mut pos)?;
        let (field, wire) = ((key >> 3) as u32, (key & 7) as u8);
        let val = match wire {
            0 => Val::Varint(read_varint(b, &mut pos)?),
            2 => {
                let len = read_varint(b, &mut pos)? as usize;
                let end = pos
                    .checked_add(len)
                    .filter(|&e| e <= b.len())
                    .ok_or("truncated bytes")?;
                let v = Val::Bytes(&b[pos..end]);
                pos = end;
                v
            }
            1 => {
                let s = b.get(pos..pos + 8).ok_or("truncated fixed64")?;
                pos += 8;
                Val::Fixed64(u64::from_le_bytes(s.try_into().unwrap()))
            }
            5 => {
                let s = b.get(pos..pos + 4).ok_or("truncated fixed32")?;
                pos += 4;
                Val::Fixed32(u32::from_le_bytes(s.try_into().unwrap()))
            }
            w => return Err(format!("wire type {w}")),
        };
        out.push((field, val));
    }
    Ok(out)
}

/// The last varint of `field` (proto3: absent = 0).
pub fn get_uint(b: &[u8], field: u32) -> u64 {
    fields(b)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(f, v)| match v {
            Val::Varint(x) if f == field => Some(x),
            _ => None,
        })
        .next_back()
        .unwrap_or(0)
}

/// The last bytes of `field` (absent = empty).
pub fn get_bytes(b: &[u8], field: u32) -> Vec<u8> {
    fields(b)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(f, v)| match v {
            Val::Bytes(x) if f == field => Some(x.to_vec()),
            _ => None,
        })
        .next_back()
        .unwrap_or_default()
}

pub fn get_string(b: &[u8], field: u32) -> String {
    String::from_utf8_lossy(&get_bytes(b, field)).into_owned()
}

/// Whether `field` is present at all.
pub fn has(b: &[u8], field: u32) -> bool {
    fields(b)
        .unwrap_or_default()
        .iter()
        .any(|(f, _)| *f == field)
}
