//! How the server's heap gives memory back. glibc serves a block from its heap arenas unless it
//! is at least the *mmap threshold*, and by default that threshold is dynamic: it rises to the
//! size of every mapped block freed, up to 32 MiB. Under batched load the per-step buffers of
//! a megabyte or more (logits of the batch, activations of prefill chunks) soon raise it, and
//! from then on they come from the heap arenas, where interleaved with longer-lived blocks
//! they leave memory that `malloc_trim` does not return:
//! a 10-minute soak at 8 clients ended with the idle RSS 20 % above its post-warm-up value
//! although every KV byte had been freed. A fixed threshold keeps every block at or above it in
//! its own mapping, returned to the OS the moment it is freed. Measured with
//! `scripts/server/soak.py` (3-minute soaks, 8 clients; `docs/results/server.md`): 64 KiB and
//! 1 MiB both end within 1 % of the post-warm-up RSS, 4 MiB at +16 %; 64 KiB costs about 13 %
//! of 8-client throughput (every step maps and unmaps its activations), 1 MiB about 1 %.
/// Why an allocator setting was not made.
#[derive(Debug, PartialEq, Eq)]
pub enum ThresholdError {
    /// The process does not run on glibc's allocator: the knob has no effect.
    NotGlibc,
    /// glibc refused the value (or it does not fit a C int).
    Refused(usize),
}

/// Fixes glibc's mmap threshold at `bytes` (0 leaves glibc's dynamic threshold). Blocks of at
/// least `bytes` are then mapped on their own and unmapped when freed. Ours: 1 MiB by default
/// (`--malloc-mmap-threshold`), the largest of those measured that still returns the memory.
pub fn set_mmap_threshold(bytes: usize) -> Result<(), ThresholdError> {
    mallopt(Setting::MmapThreshold, bytes)
}

/// The glibc `mallopt` settings the server changes.
#[derive(Clone, Copy)]
enum Setting {
    MmapThreshold,
    ArenaMax,
}

/// Sets one glibc `mallopt` setting; 0 leaves glibc's own. `value` must fit a C int and be
/// accepted.
fn mallopt(setting: Setting, value: usize) -> Result<(), ThresholdError> {
    if value == 0 {
        return Ok(());
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let param = match setting {
            Setting::MmapThreshold => libc::M_MMAP_THRESHOLD,
            Setting::ArenaMax => libc::M_ARENA_MAX,
        };
        let v = libc::c_int::try_from(value).map_err(|_| ThresholdError::Refused(value))?;
        // SAFETY: mallopt only changes the allocator's tuning for later allocations.
        match unsafe { libc::mallopt(param, v) } {
            1 => Ok(()),
            _ => Err(ThresholdError::Refused(value)),
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = setting;
        Err(ThresholdError::NotGlibc)
    }
}

/// Caps glibc's heap arenas at `arenas` (0 leaves glibc's default of eight per core). By
/// default every thread that allocates while the others hold their arenas gets one of its own;
/// the threads that run the batched steps then mix long-lived blocks (a sequence's KV rows,
/// appended while its attention runs on a worker) with the steps' short-lived ones in their
/// own arenas, and after the load those arenas keep free memory resident that `malloc_trim`
/// cannot return. Measured with `scripts/server/soak.py` (10 minutes, 8 clients;
/// `docs/results/server.md`): glibc's default ended at +27.7 % and +7.6 % of the post-warm-up
/// RSS in two runs, with the bytes in use unchanged (`malloc_stats`); one arena ended at
/// +0.1 % after three times the requests. Ours: one arena by default (`--malloc-arenas`). Call
/// it before the process starts its threads: a thread keeps the arena it first allocated from.
pub fn set_arena_max(arenas: usize) -> Result<(), ThresholdError> {
    mallopt(Setting::ArenaMax, arenas)
}

/// Hands the heap's free pages back to the OS when the engine falls idle. glibc keeps what a
/// burst of load freed in its per-thread arenas, so without this the RSS of an idle server
/// stays at the load's peak (measured: +11 % after 30 s of 8 clients) although every KV byte
/// was freed. One call per transition to idle; it costs milliseconds.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of the allocator's arenas to the OS; it
    // touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_arena_cap_is_set_zero_changes_nothing_and_a_value_past_c_int_is_refused() {
        assert_eq!(set_arena_max(0), Ok(()));
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            assert_eq!(
                set_arena_max(usize::MAX),
                Err(ThresholdError::Refused(usize::MAX))
            );
        }
    }

    #[test]
    fn a_threshold_is_set_zero_changes_nothing_and_a_value_past_c_int_is_refused() {
        assert_eq!(set_mmap_threshold(0), Ok(()));
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            assert_eq!(set_mmap_threshold(1 << 20), Ok(()));
            assert_eq!(
                set_mmap_threshold(usize::MAX),
                Err(ThresholdError::Refused(usize::MAX))
            );
        }
    }
}
