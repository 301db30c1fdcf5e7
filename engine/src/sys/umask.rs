//! The process's file-mode creation mask (`umask(2)`), which every thread
//! shares.

/// Sets the mask to `mask` (permission bits only) and returns the previous
/// one. Process-wide: files any thread creates afterwards get it.
pub fn replace(mask: u32) -> u32 {
    // SAFETY: umask(2) takes a plain integer, cannot fail and touches no
    // memory of ours.
    unsafe { libc::umask((mask & 0o777) as libc::mode_t) as u32 }
}

#[cfg(test)]
mod tests {
    #[test]
    fn replace_returns_the_previous_mask() {
        let old = super::replace(0o027);
        assert_eq!(super::replace(old), 0o027);
    }
}
