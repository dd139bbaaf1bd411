//! Reused frame buffers: the pipeline's 2 MiB plaintext and compressed frames come from and go
//! back to a small process-wide pool instead of being allocated (and page-faulted) afresh.
//!
//! Only buffers of a useful size are kept, and at most [`KEPT`] of them, so the pool never holds
//! more than a few frames' worth of memory beyond what the pipeline has in flight anyway.

use bytes::Bytes;
use std::sync::Mutex;

/// Buffers kept at most (idle memory ≈ KEPT × frame size).
const KEPT: usize = 16;
/// Buffers larger than this are not kept (a 1 GiB WAL segment, a huge single frame).
const MAX_KEPT_CAPACITY: usize = 16 << 20;
/// Buffers smaller than this are not worth keeping.
const MIN_KEPT_CAPACITY: usize = 64 << 10;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A kept buffer, preferring one already large enough for `capacity` bytes.
fn pop(capacity: usize) -> Option<Vec<u8>> {
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    match pool.iter().position(|v| v.capacity() >= capacity) {
        Some(i) => Some(pool.swap_remove(i)),
        None => pool.pop(),
    }
}

/// An empty buffer with room for at least `capacity` bytes (a kept one when there is one).
pub fn take(capacity: usize) -> Vec<u8> {
    match pop(capacity) {
        Some(mut v) => {
            v.clear();
            v.reserve(capacity);
            v
        }
        None => Vec::with_capacity(capacity),
    }
}

/// A buffer of exactly `len` bytes of unspecified content, for `Read::read` to overwrite: a kept
/// buffer keeps the length it came back with, so only bytes never written before are zeroed.
pub fn take_filled(len: usize) -> Vec<u8> {
    let mut v = pop(len).unwrap_or_default();
    if v.len() < len {
        v.resize(len, 0);
    } else {
        v.truncate(len);
    }
    v
}

/// Gives a buffer back.
pub fn give(v: Vec<u8>) {
    if !(MIN_KEPT_CAPACITY..=MAX_KEPT_CAPACITY).contains(&v.capacity()) {
        return;
    }
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if pool.len() < KEPT {
        pool.push(v);
    }
}

/// Gives back the buffer behind `b` when nothing else refers to it (else just drops it).
pub fn recycle(b: Bytes) {
    if let Ok(m) = b.try_into_mut() {
        give(Vec::from(m));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_empty_and_large_enough() {
        let mut v = take(1 << 20);
        v.extend_from_slice(&[1u8; 1000]);
        let b = Bytes::from(v);
        let shared = b.clone();
        recycle(b); // still shared: dropped, not kept
        recycle(shared);
        let again = take(2 << 20);
        assert!(again.is_empty());
        assert!(again.capacity() >= 2 << 20);
        give(again);
    }

    #[test]
    fn filled_buffers_have_the_length_asked_for() {
        let v = take_filled(100 << 10);
        assert_eq!(v.len(), 100 << 10);
        give(v);
        let v = take_filled(70 << 10);
        assert_eq!(v.len(), 70 << 10);
        give(v);
        assert_eq!(take_filled(300 << 10).len(), 300 << 10);
    }
}
