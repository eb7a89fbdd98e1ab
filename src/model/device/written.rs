//! New vectors written in parallel without zero-filling them first: zeroing a fresh buffer (a memset, or
//! the allocator's page clearing) was 7% of a CPU training step for values about to be overwritten.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// A vector of `len` values written chunk by chunk on rayon's threads: `write(i, chunk)` gets chunk `i`,
/// the values from `i * chunk` on (`chunk` of them, the last chunk possibly fewer).
///
/// # Safety
/// `write` initialises every element of each chunk it gets.
pub(crate) unsafe fn written_in_parallel<T: Send>(
    len: usize,
    chunk: usize,
    write: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, c)| write(i, c));
    // SAFETY: the chunks cover the first `len` elements, and `write` initialised each (caller).
    unsafe { out.set_len(len) };
    out
}

/// Two vectors of `len` values written together, as [`written_in_parallel`] writes one: `write(i, a, b)`
/// gets chunk `i` of each.
///
/// # Safety
/// `write` initialises every element of both chunks it gets.
pub(crate) unsafe fn two_written_in_parallel<T: Send>(
    len: usize,
    chunk: usize,
    write: impl Fn(usize, &mut [MaybeUninit<T>], &mut [MaybeUninit<T>]) + Sync,
) -> (Vec<T>, Vec<T>) {
    let (mut a, mut b) = (Vec::with_capacity(len), Vec::with_capacity(len));
    a.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .zip(b.spare_capacity_mut()[..len].par_chunks_mut(chunk.max(1)))
        .enumerate()
        .for_each(|(i, (a, b))| write(i, a, b));
    // SAFETY: the chunks cover the first `len` elements of both, and `write` initialised each (caller).
    unsafe {
        a.set_len(len);
        b.set_len(len);
    }
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_vector_in_order_with_a_short_last_chunk() {
        // SAFETY: every element of every chunk is written.
        let v = unsafe {
            written_in_parallel(10, 4, |i, c| {
                for (j, o) in c.iter_mut().enumerate() {
                    o.write(i * 4 + j);
                }
            })
        };
        assert_eq!(v, (0..10).collect::<Vec<_>>());
        // SAFETY: as above, for both vectors.
        let (a, b) = unsafe {
            two_written_in_parallel(5, 2, |i, a, b| {
                for (j, (a, b)) in a.iter_mut().zip(b).enumerate() {
                    a.write(i * 2 + j);
                    b.write(10 * (i * 2 + j));
                }
            })
        };
        assert_eq!((a, b), (vec![0, 1, 2, 3, 4], vec![0, 10, 20, 30, 40]));
        // SAFETY: an empty vector has no chunk to write.
        let empty: Vec<u8> = unsafe { written_in_parallel(0, 0, |_, _| unreachable!()) };
        assert!(empty.is_empty());
    }
}
