//! Device selection (`auto | cpu | cuda:N`) and libtorch thread counts from the CPU quota.
use crate::error::ModelError;
use tch::Device;

/// Parses a device spec. `auto` picks CUDA device 0 when libtorch sees one, else the CPU.
pub fn parse_device(spec: &str) -> Result<Device, ModelError> {
    match spec.trim() {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0, spec),
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => cuda(n, spec),
            _ => Err(ModelError::BadDevice(spec.to_string())),
        },
    }
}

fn cuda(n: usize, spec: &str) -> Result<Device, ModelError> {
    if tch::Cuda::is_available() && n < tch::Cuda::device_count() as usize {
        Ok(Device::Cuda(n))
    } else {
        Err(ModelError::DeviceUnavailable(spec.to_string()))
    }
}

pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(n) => format!("cuda:{n}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// CPUs this process may really use: the cgroup v2/v1 CPU quota when one is set (containers),
/// else the affinity mask. Oversubscribing libtorch's intra-op pool to the host's core count is
/// the most reported CPU-serving slowdown.
pub fn cpu_quota() -> usize {
    let available = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let quota = cgroup_v2_quota().or_else(cgroup_v1_quota);
    match quota {
        Some(q) => q.clamp(1, available),
        None => available,
    }
}

fn cgroup_v2_quota() -> Option<usize> {
    let s = std::fs::read_to_string("/sys/fs/cgroup/cpu.max").ok()?;
    let mut it = s.split_whitespace();
    let (quota, period) = (it.next()?, it.next()?);
    if quota == "max" {
        return None;
    }
    Some(ceil_div(quota.parse().ok()?, period.parse().ok()?))
}

fn cgroup_v1_quota() -> Option<usize> {
    let q: i64 = std::fs::read_to_string("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let p: i64 = std::fs::read_to_string("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if q <= 0 || p <= 0 {
        return None;
    }
    Some(ceil_div(q as u64, p as u64))
}

fn ceil_div(a: u64, b: u64) -> usize {
    if b == 0 {
        return 1;
    }
    a.div_ceil(b).max(1) as usize
}

/// Intra-op threads for the server's model worker when the configuration says 0 (auto): the CPU quota
/// minus one core left to the HTTP threads, at least 1. On this 2-core machine a 1-thread worker
/// served 3750 req/s against 2188 req/s with 2 threads (scripts/bench.sh, BENCH_SERVER_THREADS=1 vs
/// 2, same run): libtorch's OpenMP threads otherwise fight the HTTP threads for the cores.
pub fn serving_threads(configured: usize) -> usize {
    if configured > 0 {
        configured
    } else {
        cpu_quota().saturating_sub(1).max(1)
    }
}

/// Whether the CPU multiplies bf16 natively (AVX-512 BF16 or AMX), from /proc/cpuinfo (false
/// where that file is absent): without it libtorch's bf16 GEMM is emulated and slower than f32.
pub fn cpu_has_bf16() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| {
            s.lines()
                .filter(|l| l.starts_with("flags"))
                .take(1)
                .any(|l| {
                    l.split_whitespace()
                        .any(|f| f == "avx512_bf16" || f == "amx_bf16")
                })
        })
        .unwrap_or(false)
}

/// A configured thread count where 0 means "the CPU quota".
pub fn or_cpu_quota(configured: usize) -> usize {
    if configured == 0 {
        cpu_quota()
    } else {
        configured
    }
}

/// Sets libtorch's intra-op threads (0 = the CPU quota) and a single inter-op thread. Call once, early.
pub fn configure_threads(intra_op: usize) -> usize {
    let n = or_cpu_quota(intra_op);
    tch::set_num_threads(n as i32);
    // Inter-op parallelism only helps graphs with independent branches; ours is a chain.
    // libtorch aborts if this is set twice or after parallel work started, hence the Once.
    static INTEROP: std::sync::Once = std::sync::Once::new();
    INTEROP.call_once(|| tch::set_num_interop_threads(1));
    n
}
