//! Compute threads: one per physical core by default (hyper-threads slow matrix kernels down),
//! set once before candle or rayon start.

/// Physical cores available to this process.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    let physical = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            let mut cores = std::collections::HashSet::new();
            let (mut phys, mut core) = (None, None);
            for line in info.lines().chain(std::iter::once("")) {
                if let Some((k, v)) = line.split_once(':') {
                    match k.trim() {
                        "physical id" => phys = Some(v.trim().to_string()),
                        "core id" => core = Some(v.trim().to_string()),
                        _ => {}
                    }
                } else if line.trim().is_empty() {
                    if let (Some(p), Some(c)) = (phys.take(), core.take()) {
                        cores.insert((p, c));
                    }
                }
            }
            (!cores.is_empty()).then_some(cores.len())
        });
    let cores = physical.unwrap_or(logical).clamp(1, logical);
    // A container's CPU quota (cgroup v2 `cpu.max`) caps what it may use.
    cgroup_cpus().map_or(cores, |q| cores.min(q.max(1)))
}

fn cgroup_cpus() -> Option<usize> {
    let cg = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cg.lines().find_map(|l| l.strip_prefix("0::"))?;
    let max = std::fs::read_to_string(
        std::path::Path::new("/sys/fs/cgroup")
            .join(path.trim_start_matches('/'))
            .join("cpu.max"),
    )
    .ok()?;
    let mut parts = max.split_whitespace();
    let quota: f64 = parts.next()?.parse().ok()?;
    let period: f64 = parts.next()?.parse().ok()?;
    Some((quota / period).ceil() as usize)
}

/// Fixes the compute thread count for candle and rayon. Must run before either starts.
pub fn configure(threads: Option<usize>) -> usize {
    let n = threads.filter(|&n| n > 0).unwrap_or_else(physical_cores);
    // candle reads RAYON_NUM_THREADS on every matmul unless it is set; rayon reads it once.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    n
}
