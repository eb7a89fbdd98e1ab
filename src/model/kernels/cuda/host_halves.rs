//! The attention half of each block's checkpointed first pass (rotated queries, keys and values, attention's
//! output and log-sum-exp, the residual stream after attention) kept in page-locked host memory until the
//! block's recomputation, which then starts at the feed-forward: no q/k/v or output projection, no rotation,
//! no flash forward a second time (24 ms of a 0.383 s step at Llama-3.1-8B dims, 2 x 2048, on an H100). The
//! copies run on a stream of their own: out while the next blocks' forward runs, back while the later
//! blocks' backward runs, so the device's memory holds one block's halves more, never all of them (Unsloth's
//! gradient checkpointing moves activations to host memory in the same spirit).

use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::cuda_backend::{CudaDType, CudaDevice, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, DType, Result, Shape, Storage, Tensor};
use cudarc::driver::sys::{CUdeviceptr, CUevent, CUevent_flags, CUevent_wait_flags, CUstream};
use cudarc::driver::{CudaContext, DevicePtr, DeviceRepr, result as driver};
use half::bf16;

use crate::model::kernels::halves_room;

/// One block's attention half, as the block's forward makes it and its recomputation reads it.
pub struct Half {
    /// Rotated queries `[b, h, t, hd]`, keys and values `[b, kvh, t, hd]` (bf16).
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    /// Attention's merged output `[n, h hd]` (bf16) and log-sum-exp per query row `[b, h, t]` (f32).
    pub attn: Tensor,
    pub lse: Tensor,
    /// The residual stream after attention `[n, d]` (bf16).
    pub x1: Tensor,
}

impl Half {
    fn parts(&self) -> [&Tensor; 6] {
        [&self.q, &self.k, &self.v, &self.attn, &self.lse, &self.x1]
    }

    fn from_parts(parts: Vec<Tensor>) -> Result<Self> {
        let Ok([q, k, v, attn, lse, x1]) = <[Tensor; 6]>::try_from(parts) else {
            candle_core::bail!("{NAME}: a half lost a part")
        };
        Ok(Self {
            q,
            k,
            v,
            attn,
            lse,
            x1,
        })
    }
}

const NAME: &str = "attention halves on the host";
/// Parts start at multiples of this many bytes in the host buffer.
const ALIGN: usize = 256;
/// A block's halves go to the host only while they are at most this share of the device's memory: beyond it
/// (sequences of ~100k tokens on an H200), the one block's halves in flight would cost the longest sequences
/// their room, and those steps are bound by attention's backward anyway.
const MOST_OF_DEVICE: f64 = 0.02;

/// Per CUDA context, kept between steps: the copies' stream and the page-locked buffer (pinning gigabytes
/// takes about a second).
struct Shuttle {
    ctx: Arc<CudaContext>,
    stream: CUstream,
    buffer: *mut u8,
    len: usize,
}

// SAFETY: the stream and the buffer belong to the shuttle alone; every use holds the pool's lock or owns the
// shuttle (taken out of the pool for a step).
unsafe impl Send for Shuttle {}

static SHUTTLES: Mutex<Vec<Shuttle>> = Mutex::new(Vec::new());
/// Bytes the shuttles of this process have pinned (several GPUs train side by side in one process).
static PINNED: AtomicUsize = AtomicUsize::new(0);

impl Shuttle {
    /// This context's shuttle from the pool, or a new one.
    fn take(ctx: &Arc<CudaContext>) -> Result<Self> {
        let mut pool = lock(&SHUTTLES)?;
        if let Some(i) = pool.iter().position(|s| Arc::ptr_eq(&s.ctx, ctx)) {
            return Ok(pool.swap_remove(i));
        }
        ctx.bind_to_thread().w()?;
        let stream = driver::stream::create(driver::stream::StreamKind::NonBlocking).w()?;
        Ok(Self {
            ctx: ctx.clone(),
            stream,
            buffer: std::ptr::null_mut(),
            len: 0,
        })
    }

    /// A buffer of at least `len` bytes (the old one freed once its copies are done).
    fn reserve(&mut self, len: usize) -> Result<()> {
        if self.len >= len {
            return Ok(());
        }
        self.free_buffer()?;
        // SAFETY: a fresh page-locked allocation of `len` bytes, written by device copies before it is read.
        self.buffer = unsafe { driver::malloc_host(len, 0) }.w()?.cast::<u8>();
        self.len = len;
        PINNED.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    fn free_buffer(&mut self) -> Result<()> {
        if self.buffer.is_null() {
            return Ok(());
        }
        // SAFETY: no copy into or out of the buffer is left once its stream is synchronized.
        unsafe {
            driver::stream::synchronize(self.stream).w()?;
            driver::free_host(self.buffer.cast::<c_void>()).w()?;
        }
        PINNED.fetch_sub(self.len, Ordering::Relaxed);
        self.buffer = std::ptr::null_mut();
        self.len = 0;
        Ok(())
    }

    /// `len` bytes of the buffer from `at`.
    fn bytes(&mut self, at: usize, len: usize) -> Result<&mut [u8]> {
        if at + len > self.len {
            candle_core::bail!("{NAME}: {len} bytes at {at} pass the buffer's {}", self.len)
        }
        // SAFETY: within the allocation (checked above); the device copies order every access to it.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.buffer.add(at), len) })
    }
}

/// A CUDA event, destroyed when dropped (a pending one too, as CUDA allows).
struct Event(CUevent);

// SAFETY: an event may be recorded, waited on and destroyed from any thread bound to its context.
unsafe impl Send for Event {}

impl Event {
    /// A new event recorded on `stream` now.
    fn record(stream: CUstream) -> Result<Self> {
        let event = driver::event::create(CUevent_flags::CU_EVENT_DISABLE_TIMING).w()?;
        // SAFETY: a live event and stream of the context bound to this thread.
        unsafe { driver::event::record(event, stream) }.w()?;
        Ok(Self(event))
    }

    /// Makes `stream` wait for the work recorded here.
    fn wait_on(&self, stream: CUstream) -> Result<()> {
        // SAFETY: a live event and stream of the context bound to this thread.
        unsafe {
            driver::stream::wait_event(stream, self.0, CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT)
        }
        .w()
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: the event is this value's alone.
        let _ = unsafe { driver::event::destroy(self.0) };
    }
}

/// Where one part of a block's half waits in the host buffer.
struct Placed {
    at: usize,
    bytes: usize,
    shape: Shape,
    dtype: DType,
}

/// A block's half: in host memory, or on its way back (the device tensors, usable once `arrived` is done).
enum Slot {
    OnHost(Vec<Placed>),
    Arriving(Half, Event),
}

/// Device tensors being copied out: freed once the device's stream has waited for `copied`.
struct CopyingOut {
    parts: Vec<Tensor>,
    copied: Event,
}

struct State {
    shuttle: Option<Shuttle>,
    device: Option<CudaDevice>,
    /// Block `i`'s half, if it went to the host.
    slots: Vec<Option<Slot>>,
    out: Vec<CopyingOut>,
    /// Bytes of the host buffer laid out so far this step, and the most the halves of all GPUs may pin.
    used: usize,
    budget: usize,
    /// How many blocks' halves fit this step (set by the first [`HostHalves::put`]).
    room: Option<usize>,
    /// Blocks whose halves went to the host.
    sent: usize,
}

/// The halves of one checkpointed step's blocks (see the module's note).
pub struct HostHalves {
    state: Mutex<State>,
}

fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| candle_core::Error::Msg(format!("{NAME}: poisoned lock")))
}

impl HostHalves {
    /// For a step of `blocks` checkpointed blocks, the halves of all GPUs pinning at most `budget` bytes of host
    /// memory.
    pub fn new(blocks: usize, budget: usize) -> Self {
        Self {
            state: Mutex::new(State {
                shuttle: None,
                device: None,
                slots: (0..blocks).map(|_| None).collect(),
                out: Vec::new(),
                used: 0,
                budget,
                room: None,
                sent: 0,
            }),
        }
    }

    /// Sends block `i`'s half to the host after the work queued so far; false (nothing kept) when it does
    /// not fit the budget or a block's halves are too large a share of the device (decided once a step).
    pub fn put(&self, i: usize, half: Half) -> Result<bool> {
        let mut st = lock(&self.state)?;
        let candle_core::Device::Cuda(dev) = half.q.device().clone() else {
            candle_core::bail!("{NAME}: the half is not on a CUDA device")
        };
        let sizes: Vec<usize> = half
            .parts()
            .iter()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .collect();
        let need: usize = sizes.iter().map(|s| s.next_multiple_of(ALIGN)).sum();
        if i >= st.slots.len() {
            return Ok(false);
        }
        let main = dev.cuda_stream();
        let ctx = main.context().clone();
        ctx.bind_to_thread().w()?;
        if st.shuttle.is_none() {
            st.shuttle = Some(Shuttle::take(&ctx)?);
        }
        st.device = Some(dev.clone());
        st.retire_copies()?;
        let State {
            shuttle,
            slots,
            out,
            used,
            sent,
            budget,
            room,
            ..
        } = &mut *st;
        let Some(shuttle) = shuttle.as_mut() else {
            candle_core::bail!("{NAME}: no shuttle")
        };
        // Fixed at the step's first half (the buffer must not move under the halves already in it), from what
        // the other GPUs' shuttles of this process have pinned; none where a block's halves are too large a
        // share of the device.
        let elsewhere = PINNED.load(Ordering::Relaxed).saturating_sub(shuttle.len);
        let blocks = *room.get_or_insert_with(|| {
            let total = crate::model::device::total_memory(half.q.device()).unwrap_or(0);
            match need as f64 <= MOST_OF_DEVICE * total as f64 {
                true => halves_room(slots.len(), need, *budget, elsewhere),
                false => 0,
            }
        });
        if *used + need > blocks * need {
            return Ok(false);
        }
        // Host memory that cannot be pinned leaves the step recomputing its blocks, as without halves.
        if let Err(e) = shuttle.reserve(blocks * need) {
            tracing::warn!(bytes = blocks * need, error = %e, "{NAME}: pinning failed; recomputing instead");
            *room = Some(0);
            return Ok(false);
        }
        Event::record(main.cu_stream())?.wait_on(shuttle.stream)?;
        let mut placed = Vec::with_capacity(sizes.len());
        let mut parts = Vec::with_capacity(sizes.len());
        for (t, bytes) in half.parts().into_iter().zip(sizes) {
            let t = t.contiguous()?;
            let src = device_address(&t, &main)?;
            let at = *used;
            let stream = shuttle.stream;
            let dst = shuttle.bytes(at, bytes)?;
            // SAFETY: `t` stays alive until the device's stream has waited for this copy (`retire_copies`); the
            // host bytes are the slot's until the copy back.
            unsafe { driver::memcpy_dtoh_async(dst, src, stream) }.w()?;
            placed.push(Placed {
                at,
                bytes,
                shape: t.shape().clone(),
                dtype: t.dtype(),
            });
            parts.push(t);
            *used += bytes.next_multiple_of(ALIGN);
        }
        out.push(CopyingOut {
            parts,
            copied: Event::record(shuttle.stream)?,
        });
        slots[i] = Some(Slot::OnHost(placed));
        *sent += 1;
        Ok(true)
    }

    /// The forward is over: the device tensors still being copied out are freed once the copies are done,
    /// before the head's peak.
    pub fn finish_forward(&self) -> Result<()> {
        lock(&self.state)?.retire_copies()
    }

    /// Block `i`'s half back on the device (None if it was not kept), brought back now unless
    /// [`Self::prefetch_below`] started it.
    pub fn take(&self, i: usize) -> Result<Option<Half>> {
        let mut st = lock(&self.state)?;
        let Some(slot) = st.slots.get_mut(i).and_then(Option::take) else {
            return Ok(None);
        };
        let (half, arrived) = match slot {
            Slot::Arriving(half, arrived) => (half, arrived),
            Slot::OnHost(placed) => st.bring_back(placed)?,
        };
        arrived.wait_on(st.main_stream()?)?;
        Ok(Some(half))
    }

    /// Starts the half of the nearest block below `i` still in host memory on its way back (the backward
    /// goes down the blocks): the copy runs while the device works on block `i`.
    pub fn prefetch_below(&self, i: usize) -> Result<()> {
        let mut st = lock(&self.state)?;
        let below = i.min(st.slots.len());
        let next = (0..below)
            .rev()
            .find(|&j| matches!(st.slots[j], Some(Slot::OnHost(_))));
        if let Some(j) = next
            && let Some(Slot::OnHost(placed)) = st.slots[j].take()
        {
            let (half, arrived) = st.bring_back(placed)?;
            st.slots[j] = Some(Slot::Arriving(half, arrived));
        }
        Ok(())
    }

    /// How many blocks' halves went to the host this step.
    pub fn sent(&self) -> usize {
        lock(&self.state).map_or(0, |st| st.sent)
    }
}

impl State {
    fn main_stream(&self) -> Result<CUstream> {
        match &self.device {
            Some(dev) => {
                dev.cuda_stream().context().bind_to_thread().w()?;
                Ok(dev.cuda_stream().cu_stream())
            }
            None => candle_core::bail!("{NAME}: nothing was put"),
        }
    }

    /// Frees the device tensors copied out so far: the device's stream waits for each copy first, so the
    /// memory is reused only after it was read.
    fn retire_copies(&mut self) -> Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let main = self.main_stream()?;
        for CopyingOut { parts, copied } in self.out.drain(..) {
            copied.wait_on(main)?;
            drop(parts);
        }
        Ok(())
    }

    /// New device tensors for a half in host memory, filled on the copies' stream after the device's stream
    /// has allocated them; the event marks their arrival.
    fn bring_back(&mut self, placed: Vec<Placed>) -> Result<(Half, Event)> {
        let main = self.main_stream()?;
        let (Some(dev), Some(shuttle)) = (self.device.clone(), self.shuttle.as_mut()) else {
            candle_core::bail!("{NAME}: nothing was put")
        };
        let mut tensors = Vec::with_capacity(placed.len());
        let mut targets = Vec::with_capacity(placed.len());
        for p in &placed {
            let (storage, address) = match p.dtype {
                DType::BF16 => fresh::<bf16>(&dev, p.bytes / 2)?,
                DType::F32 => fresh::<f32>(&dev, p.bytes / 4)?,
                other => candle_core::bail!("{NAME}: no copies of {other:?}"),
            };
            targets.push(address);
            tensors.push(Tensor::from_storage(
                Storage::Cuda(storage),
                p.shape.clone(),
                BackpropOp::none(),
                false,
            ));
        }
        Event::record(main)?.wait_on(shuttle.stream)?;
        for (p, address) in placed.iter().zip(targets) {
            let stream = shuttle.stream;
            let src = shuttle.bytes(p.at, p.bytes)?;
            // SAFETY: the allocation is ordered before this copy (the event above) and is `p.bytes` long.
            unsafe { driver::memcpy_htod_async(address, src, stream) }.w()?;
        }
        let arrived = Event::record(shuttle.stream)?;
        Ok((Half::from_parts(tensors)?, arrived))
    }
}

impl Drop for State {
    fn drop(&mut self) {
        let Some(shuttle) = self.shuttle.take() else {
            return;
        };
        // Copies still running read or write tensors and the buffer: they end before either is released.
        if shuttle.ctx.bind_to_thread().is_ok() {
            // SAFETY: the shuttle's own stream.
            let _ = unsafe { driver::stream::synchronize(shuttle.stream) };
        }
        self.out.clear();
        if let Ok(mut pool) = lock(&SHUTTLES) {
            pool.push(shuttle);
        }
    }
}

/// Uninitialized device memory of `len` elements, allocated on the device's stream, and its address.
fn fresh<T: CudaDType + DeviceRepr>(
    dev: &CudaDevice,
    len: usize,
) -> Result<(CudaStorage, CUdeviceptr)> {
    let stream = dev.cuda_stream();
    // SAFETY: written whole by the copy back before any kernel reads it (the caller's arrival event).
    let slice = unsafe { stream.alloc::<T>(len) }.w()?;
    let address = slice.device_ptr(&stream).0;
    Ok((CudaStorage::wrap_cuda_slice(slice, dev.clone()), address))
}

/// The device address of contiguous `t`'s first element.
fn device_address(t: &Tensor, stream: &Arc<cudarc::driver::CudaStream>) -> Result<CUdeviceptr> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(s) = &*storage else {
        candle_core::bail!("{NAME}: a part is not on a CUDA device")
    };
    let offset = (layout.start_offset() * t.dtype().size_in_bytes()) as CUdeviceptr;
    let base = match t.dtype() {
        DType::BF16 => s.as_cuda_slice::<bf16>()?.device_ptr(stream).0,
        DType::F32 => s.as_cuda_slice::<f32>()?.device_ptr(stream).0,
        other => candle_core::bail!("{NAME}: no copies of {other:?}"),
    };
    Ok(base + offset)
}
