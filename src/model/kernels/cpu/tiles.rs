//! Intel AMX's tile state for the kernels that use it: whether the CPU has the tile instructions, Linux's
//! per-process permission to use them, and a kernel's tile configuration, put in place and taken back so
//! that the thread's own (candle's AMX kernels configure a thread once and keep it) survives. Rust's AMX
//! intrinsics are not stable, so the kernels write the few tile instructions as inline assembly.

use std::arch::asm;
use std::arch::x86_64::{__cpuid, __cpuid_count};
use std::sync::OnceLock;

/// Whether this CPU has AMX-TILE and AMX-BF16 (CPUID.7.0:EDX bits 24 and 22), and Linux lets this
/// process use the tiles (found once: CPUID traps to the hypervisor in a virtual machine).
pub(crate) fn available() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| has_cpuid_bits(&[24, 22]) && tiles_permitted())
}

/// Whether this CPU has AMX-TILE and AMX-INT8 (CPUID.7.0:EDX bits 24 and 25), where candle's quantized
/// products take its AMX kernel for long inputs (found once; Linux's permission aside, which candle asks for
/// itself).
pub(crate) fn has_int8_tiles() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| has_cpuid_bits(&[24, 25]))
}

/// Whether CPUID leaf 7 (read only where leaf 0 reports it) sets each of `bits` in EDX.
fn has_cpuid_bits(bits: &[u32]) -> bool {
    __cpuid(0).eax >= 7 && {
        let edx = __cpuid_count(7, 0).edx;
        bits.iter().all(|b| edx & (1 << b) != 0)
    }
}

/// Linux enables the tile data state per process on request; elsewhere the tiles are not used.
fn tiles_permitted() -> bool {
    #[cfg(target_os = "linux")]
    {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a request that changes only this process's permitted state components.
        let r = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        r == 0
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// A tile configuration (palette 1): each of the eight tiles' rows and bytes per row.
#[repr(C, align(64))]
pub(crate) struct TileConfig([u8; 64]);

impl TileConfig {
    /// Tile t: `shapes[t]` = (rows, bytes per row); rows at most 16, bytes at most 64.
    pub(crate) fn new(shapes: [(u8, u8); 8]) -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for (t, (rows, bytes)) in shapes.into_iter().enumerate() {
            debug_assert!(rows <= 16 && bytes <= 64, "tile {t}: {rows} x {bytes}");
            c[16 + 2 * t] = bytes;
            c[48 + t] = rows;
        }
        Self(c)
    }

    /// Loads this configuration into the calling thread's tile state until the returned guard is dropped,
    /// which puts back the configuration the thread had (candle's AMX kernels configure a thread's tiles
    /// once and count on them staying so; the pools' threads run both) or releases the tiles if it had
    /// none. The tiles stay configured meanwhile, as no compiled code touches tile state.
    ///
    /// # Safety
    /// [`available`] must be true for the instructions the caller then runs.
    pub(crate) unsafe fn load(&self) -> Configured {
        let mut saved = TileConfig([0; 64]);
        // SAFETY: the CPU has AMX and this process may use it (caller); 64 aligned bytes each.
        unsafe {
            asm!("sttilecfg [{}]", in(reg) saved.0.as_mut_ptr(), options(nostack));
            asm!("ldtilecfg [{}]", in(reg) self.0.as_ptr(), options(nostack, readonly));
        }
        Configured { saved }
    }
}

/// A kernel's tile configuration in place; dropping it restores the thread's earlier one.
pub(crate) struct Configured {
    /// The earlier configuration (64 zero bytes where the tiles were not configured).
    saved: TileConfig,
}

impl Drop for Configured {
    fn drop(&mut self) {
        // SAFETY: the CPU has AMX (`TileConfig::load`); the saved configuration was valid when stored, and
        // palette 0 means there was none.
        unsafe {
            if self.saved.0[0] != 0 {
                asm!("ldtilecfg [{}]", in(reg) self.saved.0.as_ptr(), options(nostack, readonly));
            } else {
                asm!("tilerelease", options(nostack, nomem));
            }
        }
    }
}
