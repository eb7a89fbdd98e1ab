//! Decoding's parallel loops on candle's spinning thread pool (`candle_core::utils::barrier_pool`, the
//! calling thread taking part). A decode step runs hundreds of short parallel loops, a product or an
//! attention per block, with a little serial work between them. rayon's idle workers sleep within tens of
//! microseconds, and waking one again (in a virtual machine, an interrupt to a halted virtual CPU) costs
//! about what the loop does: on 2 cores a second rayon thread made the demo model's batch 10 only 1.1x
//! faster than one thread. candle's pool workers spin for about a millisecond before they park, so they stay
//! awake through a step. Only generation uses it (the quantized products of prompts and decoding, one-query
//! attention): training's loops stay on rayon, whose threads a worker spinning between them would take a core
//! from.

use std::ops::Range;

/// `task(i, range)` for each piece `i` of `0..len`, `chunk` indices each (the last may be shorter).
fn for_each_piece(len: usize, chunk: usize, task: impl Fn(usize, Range<usize>) + Sync) {
    let chunk = chunk.max(1);
    candle_core::utils::barrier_pool().execute_chunked(len.div_ceil(chunk), |pieces| {
        for i in pieces {
            let start = i * chunk;
            task(i, start..len.min(start + chunk));
        }
    });
}

/// `task(i)` for each `i` of `0..len`.
pub(crate) fn for_each_index(len: usize, task: impl Fn(usize) + Sync) {
    for_each_piece(len, 1, |i, _| task(i));
}

/// A slice's start, shared with the pool's threads, which write disjoint pieces of it.
struct Shared<T>(*mut T);

// SAFETY: `for_each_chunk_mut` hands each piece of the slice to exactly one task, so the threads never
// touch the same element; the slice outlives the loop, which returns only when every task is done.
unsafe impl<T: Send> Send for Shared<T> {}
unsafe impl<T: Send> Sync for Shared<T> {}

/// [`for_each_chunk`] with each piece writable by its task.
pub(crate) fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    chunk: usize,
    task: impl Fn(usize, &mut [T]) + Sync,
) {
    let start = Shared(data.as_mut_ptr());
    let start = &start;
    for_each_piece(data.len(), chunk, |i, range| {
        // SAFETY: `range` lies inside `data`, and the pool runs each piece once: no other task reads or
        // writes these elements while this one holds them.
        let piece =
            unsafe { std::slice::from_raw_parts_mut(start.0.add(range.start), range.len()) };
        task(i, piece);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_piece_is_visited_once_in_place() {
        let data: Vec<u32> = (0..103).collect();
        let sums: Vec<std::sync::atomic::AtomicU32> = (0..11).map(|_| 0.into()).collect();
        for_each_index(11, |i| {
            let s = data.chunks(10).nth(i).map_or(0, |c| c.iter().sum::<u32>());
            sums[i].fetch_add(s, std::sync::atomic::Ordering::Relaxed);
        });
        let want: Vec<u32> = data.chunks(10).map(|c| c.iter().sum()).collect();
        let got: Vec<u32> = sums
            .iter()
            .map(|s| s.load(std::sync::atomic::Ordering::Relaxed))
            .collect();
        assert_eq!(got, want);
        let mut out = vec![0u32; 103];
        for_each_chunk_mut(&mut out, 10, |i, piece| {
            for (j, o) in piece.iter_mut().enumerate() {
                *o += (i * 10 + j) as u32;
            }
        });
        assert_eq!(out, data);
        for_each_chunk_mut(&mut [0u8; 0], 4, |_, _| unreachable!("no piece"));
    }
}
