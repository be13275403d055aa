//! Peak resident memory of this process (`VmHWM` from `/proc/self/status`), for the timing
//! tables the binaries print. Linux only; `None` elsewhere.

/// Peak resident set size in bytes, if the platform reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix("VmHWM:")?;
        let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn peak_rss_is_reported_and_grows() {
        let before = super::peak_rss_bytes().expect("linux reports VmHWM");
        let big: Vec<u8> = vec![1; 64 << 20];
        std::hint::black_box(&big);
        let after = super::peak_rss_bytes().unwrap();
        assert!(after >= before && after >= 64 << 20, "{before} -> {after}");
    }
}
