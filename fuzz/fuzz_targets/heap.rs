//! Differential fuzzing of the max-min heap against a sorted-`Vec` reference model.
//!
//! The input decodes (via `arbitrary`) into a sequence of operations; after every one the heap's
//! head, tail, length, byte total, key multiset and structural invariants must match the model.
//! Keys are `(u8, u8)` so duplicates are common. The model and the checks are shared with the
//! integration test `engine/tests/heap_model.rs` (`engine/tests/common/heap_model.rs`).
//!
//! Run with `scripts/fuzz.sh heap 60`.
#![no_main]

use arbitrary::Arbitrary;
use heap_model::Op;
use libfuzzer_sys::fuzz_target;

#[path = "../../engine/tests/common/heap_model.rs"]
mod heap_model;

type K = (u8, u8);

/// The fuzz input's encoding of an [`Op`]: the shared enum cannot derive `Arbitrary`, and this one
/// keeps the byte format (so the corpus) unchanged, with `u16` indices.
#[derive(Arbitrary, Debug)]
enum Input {
    Push(K, u16),
    PopHead,
    PopTail,
    /// Remove the live item at this index (mod the live count).
    Remove(u16),
    /// Try a handle whose item is gone (mod the stale count).
    RemoveStale(u16),
    /// Try a handle issued by another heap.
    RemoveForeign,
    /// Rekey every item: keep iff `(id ^ salt) % modulus != 0`; new key from id and salt.
    Rekey(u64, u8),
    Drain,
    /// Give the live item at this index a new key from `salt` (last, so older corpus entries
    /// decode as before).
    RekeyOne(u16, u64),
}

impl From<Input> for Op<K> {
    fn from(input: Input) -> Self {
        match input {
            Input::Push(key, bytes) => Op::Push(key, bytes),
            Input::PopHead => Op::PopHead,
            Input::PopTail => Op::PopTail,
            Input::Remove(i) => Op::Remove(usize::from(i)),
            Input::RemoveStale(i) => Op::RemoveStale(usize::from(i)),
            Input::RemoveForeign => Op::RemoveForeign,
            Input::Rekey(salt, modulus) => Op::Rekey(salt, modulus),
            Input::Drain => Op::Drain,
            Input::RekeyOne(i, salt) => Op::RekeyOne(usize::from(i), salt),
        }
    }
}

/// A rekeyed item's new key.
fn fresh_key(h: u64) -> K {
    ((h >> 8) as u8, (h >> 16) as u8 % 8)
}

fuzz_target!(|ops: Vec<Input>| {
    heap_model::run(4, fresh_key, ops.into_iter().map(Op::from));
});
