//! Generation's KV cache: per layer, key and value buffers written in place (grown by doubling when a
//! generation outlives them, and kept for the next generation of the same batch shape), which attention
//! reads as a view of the filled positions instead of a fresh concatenation every step.

use candle_core::{Result, Tensor};

/// Positions a layer's buffers hold at least when first allocated.
const MIN_CAPACITY: usize = 64;

/// One layer's keys and values `[b, kv_heads, capacity, head_dim]`, the first `len` positions filled.
#[derive(Debug)]
struct LayerCache {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl LayerCache {
    /// Positions the buffers hold.
    fn capacity(&self) -> usize {
        self.k.dims().get(2).copied().unwrap_or(0)
    }

    /// Whether new keys shaped like `k` `[b, kv_heads, t, head_dim]` can go into these buffers.
    fn fits(&self, k: &Tensor) -> bool {
        let (have, new) = (self.k.dims(), k.dims());
        have.len() == 4
            && new.len() == 4
            && (have[0], have[1], have[3]) == (new[0], new[1], new[3])
            && self.k.dtype() == k.dtype()
            && self.k.device().same_device(k.device())
    }
}

/// Buffers for `positions` positions shaped like `like` `[b, kv_heads, t, head_dim]` (zeros).
fn buffer(like: &Tensor, positions: usize) -> Result<Tensor> {
    let mut dims = like.dims().to_vec();
    dims[2] = positions;
    Tensor::zeros(dims, like.dtype(), like.device())
}

/// Keys and values of past positions, one entry per layer (`[b, kv_heads, T, head_dim]` each).
///
/// The buffers are shared with the views handed out by [`KvCache::append`] and written in place, so the
/// cache is not `Clone`: a copy would see the other's writes.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| None).collect(),
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(Option::as_ref)
            .map_or(0, |l| l.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Positions the first layer's buffers hold before they must grow (0 before the first append).
    pub fn capacity(&self) -> usize {
        self.layers
            .first()
            .and_then(Option::as_ref)
            .map_or(0, LayerCache::capacity)
    }

    /// Forgets every cached position. The buffers stay for the next generation: one of the same batch size
    /// writes into them (a question set's batches: no fresh, zeroed memory for every batch); another batch
    /// shape replaces them at its first append. Positions past the filled ones are never read.
    pub fn clear(&mut self) {
        self.layers.iter_mut().flatten().for_each(|l| l.len = 0);
    }

    /// Layers the cache holds: reset to `num_layers` empty ones when it holds another count.
    pub(super) fn ensure_layers(&mut self, num_layers: usize) {
        if self.layers.len() != num_layers {
            *self = Self::new(num_layers);
        }
    }

    /// Writes layer `i`'s new keys and values `[b, kv_heads, t, head_dim]` after its cached
    /// positions and returns views of all of them, cached then new: `[b, kv_heads, len + t, head_dim]`,
    /// each head's positions contiguous rows of `head_dim`.
    pub fn append(&mut self, i: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let Some(slot) = self.layers.get_mut(i) else {
            candle_core::bail!(
                "KV cache: layer {i} of a cache for {} layers",
                self.layers.len()
            )
        };
        let (_, _, t, _) = k.dims4()?;
        v.dims4()?;
        let (k, v) = (&k.contiguous()?, &v.contiguous()?);
        if let Some(layer) = slot.as_ref()
            && !layer.fits(k)
        {
            if layer.len > 0 {
                candle_core::bail!(
                    "KV cache: new keys {:?} do not continue cached ones {:?}",
                    k.dims(),
                    layer.k.dims()
                )
            }
            // Buffers kept from a generation of another batch shape: replaced.
            *slot = None;
        }
        let layer = match slot.take() {
            Some(layer) => layer,
            None => {
                let capacity = t.next_power_of_two().max(MIN_CAPACITY);
                LayerCache {
                    k: buffer(k, capacity)?,
                    v: buffer(v, capacity)?,
                    len: 0,
                }
            }
        };
        let layer = slot.insert(grown(layer, t)?);
        layer.k.slice_set(k, 2, layer.len)?;
        layer.v.slice_set(v, 2, layer.len)?;
        layer.len += t;
        Ok((
            layer.k.narrow(2, 0, layer.len)?,
            layer.v.narrow(2, 0, layer.len)?,
        ))
    }
}

/// `layer` with room for `t` more positions: its buffers, or buffers of twice the capacity (or more, for a
/// long input) holding the same filled positions.
fn grown(layer: LayerCache, t: usize) -> Result<LayerCache> {
    let capacity = layer.capacity();
    if layer.len + t <= capacity {
        return Ok(layer);
    }
    let wanted = (2 * capacity).max(layer.len + t);
    let (k, v) = (buffer(&layer.k, wanted)?, buffer(&layer.v, wanted)?);
    // The whole old buffers, contiguous sources (the filled positions alone are not, for several heads, when
    // some positions are free): positions past the filled ones are never read.
    if layer.len > 0 {
        k.slice_set(&layer.k, 2, 0)?;
        v.slice_set(&layer.v, 2, 0)?;
    }
    Ok(LayerCache { k, v, ..layer })
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, IndexOp};

    use super::*;

    /// Keys `[b, kvh, t, d]` whose values say where they were made: `base + position * 10 + row`.
    fn keys(b: usize, t: usize, base: f32) -> Tensor {
        let (kvh, d) = (2, 4);
        let v: Vec<f32> = (0..b * kvh * t * d)
            .map(|i| base + ((i / d) % t) as f32 * 10.0 + (i / (kvh * t * d)) as f32)
            .collect();
        Tensor::from_vec(v, (b, kvh, t, d), &Device::Cpu).unwrap()
    }

    /// The largest difference between two tensors' elements.
    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        diff.to_scalar::<f32>().unwrap()
    }

    #[test]
    fn appends_return_every_position_in_order_across_growth() {
        let mut cache = KvCache::new(2);
        let prompt = keys(3, 5, 0.0);
        let (k, _) = cache.append(1, &prompt, &prompt).unwrap();
        assert_eq!(
            (k.dims(), cache.len()),
            (&[3, 2, 5, 4][..], 0),
            "layer 0 is empty"
        );
        let mut all = vec![prompt];
        for step in 0..MIN_CAPACITY {
            let new = keys(3, 1, 1000.0 * (step + 1) as f32);
            let (k, v) = cache.append(1, &new, &(&new + 0.5).unwrap()).unwrap();
            all.push(new);
            let want = Tensor::cat(&all, 2).unwrap();
            assert_eq!(k.dims(), want.dims());
            assert_eq!(max_diff(&k, &want), 0.0, "keys, step {step}");
            let values = want.narrow(2, 5, step + 1).unwrap();
            let got = (v.narrow(2, 5, step + 1).unwrap() - 0.5).unwrap();
            assert_eq!(max_diff(&got, &values), 0.0, "values, step {step}");
        }
        let grown = cache.layers[1].as_ref().unwrap();
        assert_eq!(
            (grown.len, grown.capacity()),
            (5 + MIN_CAPACITY, 2 * MIN_CAPACITY)
        );
    }

    #[test]
    fn several_new_positions_past_the_capacity_grow_the_buffers_and_keep_the_cached_ones() {
        let mut cache = KvCache::new(1);
        let (prompt, more) = (keys(2, 5, 0.0), keys(2, 70, 100.0));
        cache.append(0, &prompt, &prompt).unwrap();
        assert_eq!(cache.capacity(), MIN_CAPACITY);
        // 5 cached + 70 new: the buffers grow while only some of their positions are filled.
        let (k, v) = cache.append(0, &more, &(&more * 2.0).unwrap()).unwrap();
        assert_eq!((cache.len(), cache.capacity()), (75, 128));
        let want = Tensor::cat(&[&prompt, &more], 2).unwrap();
        assert_eq!(max_diff(&k, &want), 0.0, "keys");
        let got = v.narrow(2, 5, 70).unwrap();
        assert_eq!(max_diff(&got, &(&more * 2.0).unwrap()), 0.0, "values");
    }

    #[test]
    fn a_long_prompt_gets_room_for_itself_and_a_view_of_whole_rows() {
        let mut cache = KvCache::new(1);
        let prompt = keys(2, 100, 0.0);
        let (k, _) = cache.append(0, &prompt, &prompt).unwrap();
        assert_eq!((cache.len(), cache.capacity()), (100, 128));
        // Each head's positions are contiguous rows: the stride between positions is one row.
        assert_eq!(k.stride()[2..], [4, 1]);
        assert_eq!(
            k.i((1, 1, 99)).unwrap().to_vec1::<f32>().unwrap(),
            vec![991.0; 4]
        );
    }

    #[test]
    fn clearing_starts_afresh_for_any_batch_and_foreign_keys_are_refused() {
        let mut cache = KvCache::new(1);
        let first = keys(2, 3, 0.0);
        cache.append(0, &first, &first).unwrap();
        cache.clear();
        assert_eq!((cache.len(), cache.capacity()), (0, MIN_CAPACITY));
        // The same batch shape writes into the kept buffers: no stale position shows.
        let again = keys(2, 2, 300.0);
        let address = |t: &Tensor| match &*t.storage_and_layout().0 {
            candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => v.as_ptr() as usize,
            _ => 0,
        };
        let kept = address(&cache.layers[0].as_ref().unwrap().k);
        let (k, _) = cache.append(0, &again, &again).unwrap();
        assert_eq!(address(&k), kept, "the buffers are reused");
        assert_eq!(max_diff(&k, &again), 0.0, "no stale position");
        cache.clear();
        let second = keys(4, 2, 500.0);
        let (k, _) = cache.append(0, &second, &second).unwrap();
        assert_eq!(cache.len(), 2);
        assert_eq!(max_diff(&k, &second), 0.0, "no stale position");
        // Keys that do not continue the cached ones are refused.
        let wrong = keys(3, 1, 0.0);
        assert!(cache.append(0, &wrong, &wrong).is_err(), "another batch");
        let half = second.to_dtype(DType::F16).unwrap();
        assert!(cache.append(0, &half, &half).is_err(), "another dtype");
        assert!(cache.append(1, &second, &second).is_err(), "no layer 1");
    }
}
