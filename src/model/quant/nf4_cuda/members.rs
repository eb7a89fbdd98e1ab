//! The few-row NF4 products of one input by up to three weights (q, k and v) in one launch
//! (`nf4_gemv_mma_members` in nf4.cu): the narrow products, whose launches alone are mostly latency (k and v at
//! 7-9B dims: 2 MB each), run beside the wide one instead of after it.

use candle_core::cuda_backend::WrapErr;
use candle_core::{CpuStorage, CudaStorage, Layout, Shape, Tensor};
use cudarc::driver::{DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};
use half::bf16;

use super::{
    GEMV_SHARED_MOST, GemvAdd, GemvAddArgs, GemvKernel, MODULE, Nf4Cuda, PTX, device_address,
};

/// The most weights one launch takes (GEMV_MEMBERS in nf4.cu).
pub const GEMV_MEMBERS: usize = 3;

/// `GemvMember` in nf4.cu, field for field.
#[repr(C)]
#[derive(Clone, Copy)]
struct GemvMemberArgs {
    codes: u64,
    absmax_q: u64,
    tables: u64,
    y: u64,
    n: u64,
    add: GemvAddArgs,
}

/// `GemvMembers` in nf4.cu: the members, then where each one's blocks end in the grid.
#[repr(C)]
#[derive(Clone, Copy)]
struct GemvMembersArgs {
    m: [GemvMemberArgs; GEMV_MEMBERS],
    ends: [u32; GEMV_MEMBERS],
}

// SAFETY: plain old data with the C layout nf4.cu declares (five 8-byte values and a GemvAdd per member, then
// three unsigned ints).
unsafe impl DeviceRepr for GemvMembersArgs {}

impl Nf4Cuda {
    /// `x W_j^T` plus what `add_j` names, for each member `(W_j, add_j)`: weights that multiply the same `x`
    /// `[rows, k]` (q, k and v), in one launch, each output what [`Nf4Cuda::gemv_with`] gives with the same
    /// tensor-core kernel (`nf4_gemv_mma`, one launch shape for all: [`GemvKernel::for_width`] of their
    /// features together). None where that launch does not serve them all (more than three members, x that
    /// one of them does not take, a member whose own product takes the lut kernel, terms that overflow shared
    /// memory): the caller then runs each alone.
    pub fn gemv_members(
        x: &Tensor,
        members: &[(&Nf4Cuda, &GemvAdd)],
    ) -> candle_core::Result<Option<Vec<Tensor>>> {
        if members.is_empty() || members.len() > GEMV_MEMBERS {
            return Ok(None);
        }
        let (mut rank, mut total, mut planned) = (0, 0, None);
        for (w, add) in members {
            let r = add.rank()?;
            let Some((xc, kernel)) = w.gemv_plan(x, GemvKernel::Auto, r)? else {
                return Ok(None);
            };
            if !matches!(kernel, GemvKernel::Mma { .. }) {
                return Ok(None);
            }
            add.check(w.dims[0], xc.dim(0)?)?;
            rank = rank.max(r);
            total += w.dims[0];
            planned = Some(xc);
        }
        let Some(x) = planned else {
            return Ok(None);
        };
        let rows = x.dim(0)?;
        let kernel = GemvKernel::for_width(total);
        let fits = kernel
            .shared_bytes(rows, rank)
            .is_some_and(|bytes| bytes <= GEMV_SHARED_MOST);
        if !fits {
            return Ok(None);
        }
        let op = Nf4GemvMembers {
            members: members
                .iter()
                .map(|(w, add)| (*w, (*add).clone()))
                .collect(),
            kernel,
            rank,
        };
        let y = x.apply_op1_no_bwd(&op)?;
        let mut at = 0;
        let mut outs = Vec::with_capacity(members.len());
        for (w, _) in members {
            let n = w.dims[0];
            outs.push(y.narrow(0, at, rows * n)?.reshape((rows, n))?);
            at += rows * n;
        }
        Ok(Some(outs))
    }
}

/// [`Nf4Cuda::gemv_members`]' launch: its output is the members' outputs one after the other, flat
/// (`[rows * n_j]` each).
struct Nf4GemvMembers<'w> {
    members: Vec<(&'w Nf4Cuda, GemvAdd)>,
    /// An Mma launch shape.
    kernel: GemvKernel,
    /// The largest rank among the members' low-rank terms (the launch's shared memory).
    rank: usize,
}

impl candle_core::CustomOp1 for Nf4GemvMembers<'_> {
    fn name(&self) -> &'static str {
        "nf4-gemv-members"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("nf4-gemv-members runs on CUDA only")
    }

    fn cuda_fwd(&self, x: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let (rows, k) = l.shape().dims2()?;
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("nf4-gemv-members: x must be contiguous")
        };
        let GemvKernel::Mma { groups, warps } = self.kernel else {
            candle_core::bail!("nf4-gemv-members: {:?} is no Mma launch", self.kernel)
        };
        let dev = &x.device;
        let stream = dev.cuda_stream();
        let xs = x.as_cuda_slice::<bf16>()?.slice(start..end);
        let total: usize = self.members.iter().map(|(w, _)| w.dims[0]).sum();
        // SAFETY: the kernel writes every element: each member's blocks all of its rows x n outputs.
        let out = unsafe { dev.alloc::<bf16>(rows * total) }?;
        let out_base = {
            let (base, _sync) = out.device_ptr(&stream);
            base
        };
        // The storages of the members' arrays and added terms, borrowed until the launch.
        let mut arrays = Vec::new();
        let mut add_guards = Vec::new();
        let mut m = Vec::with_capacity(GEMV_MEMBERS);
        let (mut ends, mut blocks, mut first) = ([0u32; GEMV_MEMBERS], 0u32, 0usize);
        for (j, (w, add)) in self.members.iter().enumerate() {
            let n = w.dims[0];
            let (codes, absmax_q, tables) = (
                w.codes.storage_and_layout(),
                w.absmax_q.storage_and_layout(),
                w.tables.storage_and_layout(),
            );
            let (add, guards) = add.args(&stream)?;
            add_guards.push(guards);
            m.push(GemvMemberArgs {
                codes: device_address::<u8>(&codes.0, codes.1, &stream, "codes")?,
                absmax_q: device_address::<u8>(&absmax_q.0, absmax_q.1, &stream, "absmax_q")?,
                tables: device_address::<f32>(&tables.0, tables.1, &stream, "tables")?,
                y: out_base + (first * std::mem::size_of::<bf16>()) as u64,
                n: n as u64,
                add,
            });
            arrays.extend([codes, absmax_q, tables]);
            blocks += n.div_ceil(16 * groups) as u32;
            ends[j] = blocks;
            first += rows * n;
        }
        // Unused slots repeat the last member, their blocks ending where its do (the kernel never reaches them).
        let last = *m
            .last()
            .ok_or_else(|| candle_core::Error::Msg("nf4-gemv-members: no member".into()))?;
        m.resize(GEMV_MEMBERS, last);
        for end in ends.iter_mut().skip(self.members.len()) {
            *end = blocks;
        }
        let args = GemvMembersArgs {
            m: [m[0], m[1], m[2]],
            ends,
        };
        let name = match groups {
            1 => "nf4_gemv_mma_members1",
            _ => "nf4_gemv_mma_members2",
        };
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (32 * warps as u32, 1, 1),
            shared_mem_bytes: self.kernel.shared_bytes(rows, self.rank).unwrap_or(0) as u32,
        };
        let func = dev.get_or_load_custom_func(name, MODULE, PTX)?;
        let rows_i = rows as i32;
        let mut b = func.builder();
        b.arg(&args).arg(&xs).arg(&k).arg(&rows_i);
        // SAFETY: argument types and counts match nf4_gemv_mma_members* in nf4.cu; `gemv_members` checked what
        // `gemv_with` checks for each member (rows <= 16, k a multiple of 64, a 16-byte aligned x, the added
        // terms' shapes, the 64-blocks within 32 bits: Auto gives no Mma kernel otherwise), an Mma launch shape
        // of 1 or 2 groups and the shared memory of the largest rank within 48 KiB; y_j points into `out` at
        // the member's share; the guards above keep the storages borrowed.
        unsafe { b.launch(cfg) }.w()?;
        drop((arrays, add_guards));
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from(rows * total),
        ))
    }
}
