//! The floating-point mode of the threads that run CPU kernels.
//!
//! Fine-tuning a pretrained encoder produces values small enough to be subnormal (below
//! 1.2e-38 in f32). Intel cores take a microcode assist for every
//! vector instruction that reads or writes one, tens to hundreds of cycles each: on an Intel
//! Xeon, MiniLM fine-tuning ran at 6–7 pairs/s instead of 95–101, nearly all of the time in
//! the linear layers' backward products. Flushing subnormals to zero (MXCSR's FTZ
//! and DAZ bits, as `torch.set_flush_denormal(True)` does) removes the assists; the values
//! lost are below f32's normal range, far under the rounding error of any sum they enter.

/// MXCSR bits: flush-to-zero (15) and denormals-are-zero (6).
#[cfg(target_arch = "x86_64")]
const FTZ_DAZ: u32 = 0x8040;

/// Sets flush-to-zero and denormals-are-zero on the calling thread (x86-64; elsewhere
/// nothing). Returns whether the mode is now on.
pub fn flush_subnormals_here() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let mut csr: u32 = 0;
        // SAFETY: stmxcsr/ldmxcsr read and write this thread's SSE control register; the
        // value written is the one read with two mode bits set, which every x86-64 CPU
        // accepts (DAZ since the Pentium 4).
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack));
            csr |= FTZ_DAZ;
            std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, readonly));
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the calling thread flushes subnormals (always false off x86-64).
pub fn flushes_subnormals() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let mut csr: u32 = 0;
        // SAFETY: stmxcsr only stores this thread's SSE control register.
        unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack)) };
        csr & FTZ_DAZ == FTZ_DAZ
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Flushes subnormals on the calling thread and on every thread of rayon's global pool,
/// where Flex's and our kernels run, by building that pool with a start handler. Call it
/// first thing in `main`: once the pool exists (something already ran in parallel) its
/// threads keep their mode, and this returns false.
pub fn flush_subnormals() -> bool {
    flush_subnormals_here();
    rayon::ThreadPoolBuilder::new()
        .start_handler(|_| {
            flush_subnormals_here();
        })
        .build_global()
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On x86-64 a subnormal product reads as zero once the mode is on: run on a thread of
    /// its own, so no other test's arithmetic changes.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn subnormals_flush_to_zero_on_the_thread_that_asks() {
        std::thread::spawn(|| {
            let tiny = std::hint::black_box(1e-30f32);
            assert!((tiny * 1e-10).is_subnormal(), "off by default");
            assert!(!flushes_subnormals());
            assert!(flush_subnormals_here());
            assert!(flushes_subnormals());
            assert_eq!(tiny * std::hint::black_box(1e-10f32), 0.0);
            let sub = std::hint::black_box(f32::from_bits(1));
            assert_eq!(sub * 2.0, 0.0, "a subnormal input reads as zero");
        })
        .join()
        .expect("the test thread");
    }
}
