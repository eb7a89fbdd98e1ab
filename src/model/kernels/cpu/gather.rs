//! Rows of a table in host memory gathered on all of rayon's threads (into a new tensor, or into pinned
//! staging memory on the way to a GPU: `kernels::cuda::staged`): the embedding lookup of a model on a
//! GPU whose table waits in host memory (`load::builder`). candle's `index_select` copies the rows on one
//! thread: 16 ms on a 2-core EPYC for a 2 x 2048 batch of Llama 3's 4,096-wide bf16 rows, while the whole
//! H200 training step of that batch takes 460 ms.

use candle_core::{CpuStorage, Device, Result, Storage, Tensor, WithDType};
use rayon::prelude::*;

/// `table[ids]` `[ids.len(), d]` for a contiguous 2-d f32, bf16 or f16 table on the CPU (None otherwise:
/// the caller falls back on `index_select`). An id outside the table is an error, not a panic.
pub fn rows(table: &Tensor, ids: &[u32]) -> Result<Option<Tensor>> {
    let d = checked_width(table, ids)?;
    let (storage, layout) = table.storage_and_layout();
    let (Storage::Cpu(s), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else {
        return Ok(None);
    };
    Ok(match s {
        CpuStorage::F32(v) => Some(gather(&v[start..end], d, ids)?),
        CpuStorage::BF16(v) => Some(gather(&v[start..end], d, ids)?),
        CpuStorage::F16(v) => Some(gather(&v[start..end], d, ids)?),
        _ => None,
    })
}

/// The width of the 2-d `table` after checking that every id names one of its rows (an error, not a panic).
pub fn checked_width(table: &Tensor, ids: &[u32]) -> Result<usize> {
    let (n, d) = table.dims2()?;
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= n) {
        candle_core::bail!("token id {bad} is outside the embedding table's {n} rows");
    }
    Ok(d)
}

fn gather<T: WithDType>(src: &[T], d: usize, ids: &[u32]) -> Result<Tensor> {
    let mut out = vec![T::from_f64(0.0); ids.len() * d];
    gather_into(src, d, ids, &mut out);
    Tensor::from_vec(out, (ids.len(), d), &Device::Cpu)
}

/// Copies rows `ids` of the row-major table `src` (`d` wide, ids already checked) into `out`, in parallel.
pub fn gather_into<T: Copy + Send + Sync>(src: &[T], d: usize, ids: &[u32], out: &mut [T]) {
    out.par_chunks_mut(d.max(1))
        .zip(ids.par_iter())
        .for_each(|(row, &i)| {
            let i = i as usize;
            row.copy_from_slice(&src[i * d..(i + 1) * d]);
        });
}

#[cfg(test)]
mod tests {
    use candle_core::DType;

    use super::*;
    use crate::model::test_support::max_abs_diff;

    #[test]
    fn rows_equal_index_select_in_every_float_dtype_and_a_bad_id_is_refused() {
        let table = Tensor::arange(0f32, 7.0 * 5.0, &Device::Cpu)
            .unwrap()
            .reshape((7, 5))
            .unwrap();
        let ids = [6u32, 0, 3, 3];
        let idx = Tensor::new(&ids, &Device::Cpu).unwrap();
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let t = table.to_dtype(dtype).unwrap();
            let got = rows(&t, &ids).unwrap().unwrap();
            let want = t.index_select(&idx, 0).unwrap();
            let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let diff = max_abs_diff(&f32(&got), &f32(&want));
            assert_eq!((got.dims2().unwrap(), diff), ((4, 5), 0.0), "{dtype:?}");
        }
        let err = rows(&table, &[7]).unwrap_err().to_string();
        assert!(
            err.contains("token id 7") && err.contains("7 rows"),
            "{err}"
        );
        let u8_table = table.to_dtype(DType::U8).unwrap();
        assert!(rows(&u8_table, &ids).unwrap().is_none());
        let strided = table.t().unwrap();
        assert!(rows(&strided, &[0]).unwrap().is_none());
    }
}
