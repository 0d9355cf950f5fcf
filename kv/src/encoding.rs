//! On-disk encoding of keys, values and cursors.
//!
//! Key: `tenant 0x00 namespace 0x00 key` (names never contain 0x00).
//! Value: `0x01 | expires_at_ms: u64 LE (0 = never) | metadata length: u32 LE
//! | metadata | value`.
use crate::{Entry, KvError, NamespaceId};

const FORMAT: u8 = 1;

pub(crate) fn ns_prefix(ns: &NamespaceId) -> Vec<u8> {
    let mut k = Vec::with_capacity(ns.tenant.len() + ns.name.len() + 2);
    k.extend_from_slice(ns.tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(ns.name.as_bytes());
    k.push(0);
    k
}

pub(crate) fn tenant_prefix(tenant: &str) -> Vec<u8> {
    let mut k = tenant.as_bytes().to_vec();
    k.push(0);
    k
}

pub(crate) fn full_key(ns: &NamespaceId, key: &str) -> Vec<u8> {
    let mut k = ns_prefix(ns);
    k.extend_from_slice(key.as_bytes());
    k
}

pub(crate) fn encode_entry(e: &Entry) -> Vec<u8> {
    let meta = e.metadata.as_deref().unwrap_or("").as_bytes();
    let mut out = Vec::with_capacity(13 + meta.len() + e.value.len());
    out.push(FORMAT);
    out.extend_from_slice(&e.expires_at_ms.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(meta);
    out.extend_from_slice(&e.value);
    out
}

pub(crate) fn decode_entry(b: &[u8]) -> Result<Entry, KvError> {
    let corrupt = || KvError::Storage("corrupt value record".into());
    if b.len() < 13 || b[0] != FORMAT {
        return Err(corrupt());
    }
    let exp = u64::from_le_bytes(b[1..9].try_into().map_err(|_| corrupt())?);
    let meta_len = u32::from_le_bytes(b[9..13].try_into().map_err(|_| corrupt())?) as usize;
    let meta = b.get(13..13 + meta_len).ok_or_else(corrupt)?;
    Ok(Entry {
        value: b[13 + meta_len..].to_vec(),
        metadata: if meta_len == 0 {
            None
        } else {
            Some(String::from_utf8(meta.to_vec()).map_err(|_| corrupt())?)
        },
        expires_at_ms: (exp != 0).then_some(exp),
    })
}

/// Expiry index key: `expires_at_ms BE | full key`, so a range scan finds
/// everything due.
pub(crate) fn expiry_key(expires_at_ms: u64, full: &[u8]) -> Vec<u8> {
    let mut k = expires_at_ms.to_be_bytes().to_vec();
    k.extend_from_slice(full);
    k
}

pub(crate) fn encode_cursor(key: &[u8]) -> String {
    let mut s = String::with_capacity(key.len() * 2);
    for b in key {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

pub(crate) fn decode_cursor(c: &str) -> Result<Vec<u8>, KvError> {
    if !c.len().is_multiple_of(2) || c.len() > 2048 {
        return Err(KvError::BadCursor);
    }
    (0..c.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(c.get(i..i + 2).ok_or(KvError::BadCursor)?, 16)
                .map_err(|_| KvError::BadCursor)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trip() {
        for e in [
            Entry {
                value: vec![],
                metadata: None,
                expires_at_ms: None,
            },
            Entry {
                value: b"v".to_vec(),
                metadata: Some("{\"a\":1}".into()),
                expires_at_ms: Some(42),
            },
        ] {
            assert_eq!(decode_entry(&encode_entry(&e)).unwrap(), e);
        }
        assert!(decode_entry(b"\x02").is_err());
    }

    #[test]
    fn cursor_round_trip() {
        assert_eq!(
            decode_cursor(&encode_cursor(b"a/b\xff")).unwrap(),
            b"a/b\xff"
        );
        assert!(decode_cursor("zz").is_err());
        assert!(decode_cursor("abc").is_err());
    }
}
