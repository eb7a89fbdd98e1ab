//! Decoding's parallel loops on candle's spinning thread pool (`candle_core::utils::barrier_pool`, the
//! calling thread taking part). A decode step runs hundreds of short parallel loops, a product or an
//! attention per block, with a little serial work between them. rayon's idle workers sleep within tens of
//! microseconds, and waking one again (in a virtual machine, an interrupt to a halted virtual CPU) costs
//! about what the loop does: on 2 cores a second rayon thread made the demo model's batch 10 only 1.1x
//! faster than one thread. candle's pool workers spin for about a millisecond before they park, so they stay
//! awake through a step. Only generation uses it (the quantized products of prompts and decoding, one-query
//! attention): training's loops stay on rayon, whose threads a worker spinning between them would take a core
//! from.

use std::cell::Cell;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

thread_local! {
    /// Whether this thread is running a loop's task: a loop started from inside one runs on this thread
    /// alone (the pool serves one loop at a time).
    static IN_LOOP: Cell<bool> = const { Cell::new(false) };
}

/// `task(i, range)` for each piece `i` of `0..len`, `chunk` indices each (the last may be shorter).
///
/// The threads take pieces in shrinking runs (guided scheduling): each takes a share of what is left,
/// `left / (2 * threads)` pieces and at least one, so that a loop starts with few claims and ends with
/// single pieces, and no thread waits long at its end for another's last run. (candle's `execute_chunked`
/// hands out sixteenths of the loop to the last: a decoding product's last run kept the other thread
/// waiting for up to a sixteenth of the product, and the threads' runs interleaved through the weight.) Each
/// thread's first run is a quarter of the loop, contiguous in memory, which the weights' prefetches stream
/// ahead of (`cargo bench --bench qdot`, 2 threads, streamed weights: 181 -> 160 cycles a block; decoding
/// about 5% faster at batch 1 and 3-5% at batch 10, bench/results/cpu-amd-2026-12-06.txt section 7).
fn for_each_piece(len: usize, chunk: usize, task: impl Fn(usize, Range<usize>) + Sync) {
    let chunk = chunk.max(1);
    let pieces = len.div_ceil(chunk);
    let run = |i: usize| {
        let start = i * chunk;
        task(i, start..len.min(start + chunk));
    };
    if pieces <= 1 || IN_LOOP.get() {
        (0..pieces).for_each(run);
        return;
    }
    let pool = candle_core::utils::barrier_pool();
    let threads = pool.n_workers() + 1;
    let next = AtomicUsize::new(0);
    pool.execute(|_| {
        let _in_loop = InLoop::enter();
        loop {
            let left = pieces.saturating_sub(next.load(Ordering::Relaxed));
            let grab = (left / (2 * threads)).max(1);
            let start = next.fetch_add(grab, Ordering::Relaxed);
            if start >= pieces {
                break;
            }
            (start..pieces.min(start + grab)).for_each(run);
        }
    });
}

/// [`IN_LOOP`] set while it lives, restored after (a task's panic included).
struct InLoop(bool);

impl InLoop {
    fn enter() -> Self {
        Self(IN_LOOP.replace(true))
    }
}

impl Drop for InLoop {
    fn drop(&mut self) {
        IN_LOOP.set(self.0);
    }
}

/// `f()` with every loop it starts run on this thread alone: for work that already has a thread of its own
/// (a batch's rows split between threads), where the loops would otherwise queue on the one pool.
pub(crate) fn alone<R>(f: impl FnOnce() -> R) -> R {
    let _in_loop = InLoop::enter();
    f()
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
        // A loop started inside a task runs there, whole.
        let inner: Vec<std::sync::atomic::AtomicU32> = (0..40).map(|_| 0.into()).collect();
        for_each_index(4, |i| {
            for_each_index(10, |j| {
                inner[i * 10 + j].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })
        });
        assert!(
            inner
                .iter()
                .all(|c| c.load(std::sync::atomic::Ordering::Relaxed) == 1)
        );
    }
}
