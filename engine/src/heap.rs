//! PLACEHOLDER — being written by the heap helper. API contract below.
#![allow(missing_docs, unused_variables, dead_code)]

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Handle {
    index: u32,
    generation: u32,
    heap_id: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaleHandle;

#[derive(Debug)]
pub struct Entry<K, T> {
    pub handle: Handle,
    pub key: K,
    pub bytes: u64,
    pub value: T,
}

pub struct MaxMinHeap<K, T> {
    _p: std::marker::PhantomData<(K, T)>,
}

impl<K: Ord + Copy, T> MaxMinHeap<K, T> {
    pub fn with_capacity(capacity: usize) -> Self { todo!() }
    pub fn len(&self) -> usize { todo!() }
    pub fn is_empty(&self) -> bool { todo!() }
    pub fn bytes(&self) -> u64 { todo!() }
    pub fn push(&mut self, key: K, bytes: u64, value: T) -> Handle { todo!() }
    pub fn peek_head(&self) -> Option<(Handle, K, &T)> { todo!() }
    pub fn peek_tail(&self) -> Option<(Handle, K, &T)> { todo!() }
    pub fn pop_head(&mut self) -> Option<Entry<K, T>> { todo!() }
    pub fn pop_tail(&mut self) -> Option<Entry<K, T>> { todo!() }
    pub fn remove(&mut self, handle: Handle) -> Result<Entry<K, T>, StaleHandle> { todo!() }
    pub fn get(&self, handle: Handle) -> Option<(K, &T)> { todo!() }
    pub fn contains(&self, handle: Handle) -> bool { todo!() }
    pub fn rekey_retain(&mut self, f: impl FnMut(&T, K) -> Option<K>, removed: impl FnMut(Entry<K, T>)) { todo!() }
    pub fn drain(&mut self, f: impl FnMut(Entry<K, T>)) { todo!() }
}
