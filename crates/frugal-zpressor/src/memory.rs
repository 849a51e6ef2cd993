//! Peak memory of one measured stage.
//!
//! On the CPU we reset the kernel's high-water mark of resident memory (writing `5` to
//! `/proc/self/clear_refs`, Linux ≥ 4.0) before the stage and read `VmHWM` after it; the stage's
//! peak is that minus the resident size before it. On a CUDA device a helper thread samples the
//! device's used memory (total − free) about every 0.2 ms during the stage; the peak is the largest
//! sample minus the level before. Both include memory other code of this process holds at the
//! same time, which in the bench is nothing else.

use candle_core::Device;

fn status_kb(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Measures the peak memory (MiB) that `f` adds on `device`; `None` when the platform offers no
/// way to read it.
pub fn measure_peak<T>(device: &Device, f: impl FnOnce() -> T) -> (T, Option<f64>) {
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        return cuda::measure(device, f);
    }
    let _ = device;
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let before = status_kb("VmRSS:");
    let out = f();
    let peak = status_kb("VmHWM:");
    let mb = match (reset, before, peak) {
        (true, Some(b), Some(p)) => Some(p.saturating_sub(b) as f64 / 1024.0),
        _ => None,
    };
    (out, mb)
}

/// Resident memory of this process now (MiB), when readable.
pub fn resident_mb() -> Option<f64> {
    status_kb("VmRSS:").map(|k| k as f64 / 1024.0)
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::Device;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    use candle_core::cuda_backend::cudarc::driver::{result, sys};

    /// The device's current memory pool (the one `cuMemAllocAsync` draws from), with the context bound to this thread.
    fn pool(device: &Device) -> Option<sys::CUmemoryPool> {
        let ctx = device
            .as_cuda_device()
            .ok()?
            .cuda_stream()
            .context()
            .clone();
        // Without stream-ordered allocation candle's buffers do not come from a pool.
        if !ctx.has_async_alloc() {
            return None;
        }
        ctx.bind_to_thread().ok()?;
        // SAFETY: the device handle comes from a live context.
        unsafe { result::device::get_mem_pool(ctx.cu_device()).ok() }
    }

    fn attribute(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute) -> Option<u64> {
        let mut v: sys::cuuint64_t = 0;
        // SAFETY: the USED_MEM_* attributes are cuuint64_t values of a valid pool.
        unsafe {
            result::mem_pool::get_attribute(pool, attr, &mut v as *mut _ as *mut core::ffi::c_void)
                .ok()?
        };
        Some(v)
    }

    /// Resets the pool's high-water mark (setting it to 0 makes it the current use).
    fn reset_high(pool: sys::CUmemoryPool) -> Option<()> {
        let mut v: sys::cuuint64_t = 0;
        // SAFETY: as above; 0 is the one value the driver accepts for this attribute.
        unsafe {
            result::mem_pool::set_attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                &mut v as *mut _ as *mut core::ffi::c_void,
            )
            .ok()
        }
    }

    pub fn measure<T>(device: &Device, f: impl FnOnce() -> T) -> (T, Option<f64>) {
        use sys::CUmemPool_attribute::{
            CU_MEMPOOL_ATTR_USED_MEM_CURRENT, CU_MEMPOOL_ATTR_USED_MEM_HIGH,
        };
        let _ = device.synchronize();
        let pooled = pool(device).and_then(|p| {
            reset_high(p)?;
            Some((p, attribute(p, CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?))
        });
        if let Some((p, base)) = pooled {
            let out = f();
            let _ = device.synchronize();
            let mb = attribute(p, CU_MEMPOOL_ATTR_USED_MEM_HIGH)
                .map(|high| high.saturating_sub(base) as f64 / (1024.0 * 1024.0));
            return (out, mb);
        }
        with_device_peak(device, f)
    }

    fn with_device_peak<T>(device: &Device, f: impl FnOnce() -> T) -> (T, Option<f64>) {
        let ctx = match device.as_cuda_device() {
            Ok(d) => d.cuda_stream().context().clone(),
            Err(_) => return (f(), None),
        };
        let _ = device.synchronize();
        let used = |ctx: &Arc<candle_core::cuda_backend::cudarc::driver::CudaContext>| {
            ctx.mem_get_info().ok().map(|(free, total)| total - free)
        };
        let Some(base) = used(&ctx) else {
            return (f(), None);
        };
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicUsize::new(base));
        let sampler = {
            let (stop, peak, ctx) = (stop.clone(), peak.clone(), ctx.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((free, total)) = ctx.mem_get_info() {
                        peak.fetch_max(total - free, Ordering::Relaxed);
                    }
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
            })
        };
        let out = f();
        let _ = device.synchronize();
        if let Some(u) = used(&ctx) {
            peak.fetch_max(u, Ordering::Relaxed);
        }
        stop.store(true, Ordering::Relaxed);
        let _ = sampler.join();
        let p = peak.load(Ordering::Relaxed);
        (out, Some(p.saturating_sub(base) as f64 / (1024.0 * 1024.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_sees_a_large_temporary_allocation() {
        let (_, mb) = measure_peak(&Device::Cpu, || {
            let v = vec![1u8; 200 << 20];
            std::hint::black_box(&v);
            v.iter().map(|&b| b as u64).sum::<u64>()
        });
        if let Some(mb) = mb {
            assert!(mb > 150.0, "peak {mb} MiB for a 200 MiB buffer");
        }
    }
}
