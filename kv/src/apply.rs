//! What a write does, whatever stores it: each backend reads the keys a
//! call touches, [`apply`] works out the entries after the ops, their
//! results and what they change of the tenant's usage, and the backend
//! writes the changes (or nothing, when an op fails or a quota refuses).
use std::collections::HashMap;

use crate::{Entry, KvError, PutOptions, WriteOp, WriteResult};

/// A key a call changed: what was stored before it, and after.
#[derive(Debug)]
pub(crate) struct Changed {
    pub key: String,
    pub before: Option<Entry>,
    pub after: Option<Entry>,
}

/// The outcome of [`apply`].
#[derive(Debug)]
pub(crate) struct Applied {
    /// The keys whose entry changed, in the order first touched.
    pub changes: Vec<Changed>,
    /// One per op.
    pub results: Vec<WriteResult>,
    /// What the call changes of the tenant's usage: (bytes, keys).
    pub delta: (i64, i64),
}

/// What an entry takes of its tenant's `kv_bytes`: key, value, metadata.
pub(crate) fn entry_size(key_len: usize, e: &Entry) -> i64 {
    (key_len + e.value.len() + e.metadata.as_deref().map_or(0, str::len)) as i64
}

/// The entry, unless it expired by `now`.
pub(crate) fn live(entry: Option<Entry>, now: u64) -> Option<Entry> {
    entry.filter(|e| e.expires_at_ms.is_none_or(|t| t > now))
}

/// The entry a put stores at `now`.
pub(crate) fn new_entry(value: Vec<u8>, options: &PutOptions, now: u64) -> Entry {
    Entry {
        value,
        metadata: options.metadata.clone(),
        expires_at_ms: options.expires_at_ms.or_else(|| {
            options
                .ttl
                .map(|t| now.saturating_add(t.as_millis() as u64).max(now + 1))
        }),
    }
}

/// Applies `ops` at `now` to the stored entries `stored` (every key the ops
/// touch, expired entries included, `None` when absent). Fails, changing
/// nothing, when an op fails (an increment of a non-number or overflow).
pub(crate) fn apply(
    ops: &[WriteOp],
    now: u64,
    mut stored: HashMap<String, Option<Entry>>,
) -> Result<Applied, KvError> {
    // Per key: (stored before the call, value after the ops so far).
    let mut overlay: HashMap<&str, (Option<Entry>, Option<Entry>)> = HashMap::new();
    let mut order = Vec::new();
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        let k = op.key();
        let slot = overlay.entry(k).or_insert_with(|| {
            order.push(k);
            let before = stored.remove(k).flatten();
            (before.clone(), before)
        });
        let current = live(slot.1.clone(), now);
        match op {
            WriteOp::Put { value, options, .. } => {
                slot.1 = Some(new_entry(value.clone(), options, now));
                results.push(WriteResult::Done);
            }
            WriteOp::Delete { .. } => {
                slot.1 = None;
                results.push(WriteResult::Done);
            }
            WriteOp::Increment { delta, .. } => {
                let base = match &current {
                    None => 0i64,
                    Some(e) => std::str::from_utf8(&e.value)
                        .ok()
                        .and_then(|s| s.trim().parse::<i64>().ok())
                        .ok_or_else(|| {
                            KvError::NotACounter("value is not a decimal integer".into())
                        })?,
                };
                let next = base
                    .checked_add(*delta)
                    .ok_or_else(|| KvError::NotACounter("counter overflow".into()))?;
                let (metadata, expires_at_ms) = current
                    .map(|e| (e.metadata, e.expires_at_ms))
                    .unwrap_or((None, None));
                slot.1 = Some(Entry {
                    value: next.to_string().into_bytes(),
                    metadata,
                    expires_at_ms,
                });
                results.push(WriteResult::Counter(next));
            }
            WriteOp::CompareAndSwap { expected, new, .. } => {
                let matches = current.as_ref().map(|e| &e.value) == expected.as_ref();
                if matches {
                    slot.1 = new.as_ref().map(|(v, o)| new_entry(v.clone(), o, now));
                }
                results.push(WriteResult::Swapped(matches));
            }
        }
    }
    let mut delta = (0i64, 0i64);
    let mut changes = Vec::with_capacity(order.len());
    for k in order {
        let (before, after) = overlay.remove(k).expect("ordered keys are in the overlay");
        if before == after {
            continue;
        }
        let size = |e: &Option<Entry>| e.as_ref().map_or(0, |e| entry_size(k.len(), e));
        delta.0 += size(&after) - size(&before);
        delta.1 += i64::from(after.is_some()) - i64::from(before.is_some());
        changes.push(Changed {
            key: k.to_string(),
            before,
            after,
        });
    }
    Ok(Applied {
        changes,
        results,
        delta,
    })
}
