//! What this machine offers: memory, CPU description and a measured compute score.

use std::time::Instant;

/// (total, available) memory in bytes: /proc/meminfo, capped by a cgroup v2 memory limit (a
/// container sees the host's /proc/meminfo).
pub fn memory() -> (u64, u64) {
    let (total, available) = host_memory();
    match cgroup_memory_limit() {
        Some((limit, used)) if limit < total => (limit, limit.saturating_sub(used).min(available)),
        _ => (total, available),
    }
}

/// `memory.max` and `memory.current` of this process's cgroup (v2), when a limit is set.
fn cgroup_memory_limit() -> Option<(u64, u64)> {
    let cg = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cg.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = std::path::Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    let limit = read("memory.max")?.trim().parse::<u64>().ok()?;
    let used = read("memory.current")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Some((limit, used))
}

fn host_memory() -> (u64, u64) {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

pub fn cpu_description(threads: usize) -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|v| v.split_once(':')))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    format!("{model}, {threads} threads")
}

/// GFLOP/s of a small f32 matrix multiply on the compute threads: a rough, quick measure used
/// to describe nodes (the ring is weighted by memory).
pub fn compute_score() -> f32 {
    use candle_core::{Device, Tensor};
    let n = 256;
    let Ok(a) = Tensor::ones((n, n), candle_core::DType::F32, &Device::Cpu) else {
        return 0.0;
    };
    let _ = a.matmul(&a); // warm-up
    let reps = 8;
    let t = Instant::now();
    for _ in 0..reps {
        let _ = a.matmul(&a);
    }
    let flops = 2.0 * (n * n * n * reps) as f64;
    (flops / t.elapsed().as_secs_f64() / 1e9) as f32
}

/// Parses a byte count: `17179869184`, `16G`, `16GiB`, `512M`, `1.5GB`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a byte count (e.g. 17179869184, 16G, 512MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" | "ki" => 1 << 10,
        "m" | "mb" | "mib" | "mi" => 1 << 20,
        "g" | "gb" | "gib" | "gi" => 1 << 30,
        "t" | "tb" | "tib" | "ti" => 1 << 40,
        other => return Err(format!("unknown unit `{other}` in `{s}`")),
    };
    Ok((value * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_parse() {
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert_eq!(parse_bytes("16G").unwrap(), 16 << 30);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1.5gb").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("8Gi").unwrap(), 8 << 30);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
    }

    #[test]
    fn memory_is_read() {
        let (total, avail) = memory();
        assert!(total > 0 && avail > 0 && avail <= total);
    }
}
