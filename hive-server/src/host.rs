//! Facts about the machine the hive runs on: identity, OS, memory and devices.

use std::{
    io,
    path::Path,
    process::Stdio,
    time::{Duration, Instant, SystemTime},
};

/// File in the state directory that keeps the hive id across restarts.
const HIVE_ID_FILE: &str = "hive-id";

/// How long `nvidia-smi` may take before the hive reports no GPUs.
const NVIDIA_SMI_TIMEOUT: Duration = Duration::from_secs(5);

/// Facts that do not change while the hive runs.
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// Host name.
    pub hostname: String,
    /// Operating system name from `/etc/os-release`.
    pub os: String,
    /// Kernel release.
    pub kernel: String,
    /// CPU architecture.
    pub arch: &'static str,
    /// Logical CPUs online.
    pub cpu_count: u32,
}

impl HostFacts {
    /// Reads the facts of this machine.
    pub fn read() -> Self {
        let uname = nix::sys::utsname::uname().ok();
        let kernel = uname
            .as_ref()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let cpu_count = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            hostname: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            os: os_name(),
            kernel,
            arch: std::env::consts::ARCH,
            cpu_count: u32::try_from(cpu_count).unwrap_or(u32::MAX),
        }
    }
}

/// A device workers can run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// `cpu` or `cuda:N`.
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// Total memory in bytes.
    pub memory_total_bytes: u64,
    /// Free memory in bytes.
    pub memory_free_bytes: u64,
}

/// Memory of the machine, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// `MemTotal`.
    pub total_bytes: u64,
    /// `MemAvailable`.
    pub available_bytes: u64,
}

/// Reads total and available memory from `/proc/meminfo`.
pub fn memory() -> io::Result<Memory> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    Ok(parse_meminfo(&meminfo))
}

fn parse_meminfo(meminfo: &str) -> Memory {
    let mut memory = Memory::default();
    for line in meminfo.lines() {
        let mut fields = line.split_whitespace();
        let (Some(key), Some(value)) = (fields.next(), fields.next()) else {
            continue;
        };
        let bytes = value.parse::<u64>().unwrap_or(0) * 1024;
        match key {
            "MemTotal:" => memory.total_bytes = bytes,
            "MemAvailable:" => memory.available_bytes = bytes,
            _ => {}
        }
    }
    memory
}

/// Lists the devices of this machine: `cpu`, then one `cuda:N` per NVIDIA GPU that
/// `nvidia-smi` reports. Without `nvidia-smi`, or when it fails, only `cpu` is listed.
pub async fn devices(memory: Memory, cpu_name: &str, gpus: &GpuCache) -> Vec<Device> {
    let mut devices = vec![Device {
        id: "cpu".to_owned(),
        name: cpu_name.to_owned(),
        memory_total_bytes: memory.total_bytes,
        memory_free_bytes: memory.available_bytes,
    }];
    devices.extend(gpus.gpus().await);
    devices
}

/// The GPUs `nvidia-smi` last reported, reused for a few seconds because running it takes tens
/// of milliseconds and GPUs rarely change.
#[derive(Debug, Default)]
pub struct GpuCache {
    last: tokio::sync::Mutex<Option<(Instant, Vec<Device>)>>,
}

impl GpuCache {
    /// How long a report is reused; free memory in it may be this old.
    const FRESH_FOR: Duration = Duration::from_secs(5);

    /// Returns the GPUs, asking `nvidia-smi` when the last report is stale. Concurrent callers
    /// share one run.
    pub async fn gpus(&self) -> Vec<Device> {
        let mut last = self.last.lock().await;
        if let Some((at, gpus)) = &*last
            && at.elapsed() < Self::FRESH_FOR
        {
            return gpus.clone();
        }
        let gpus = nvidia_gpus().await;
        *last = Some((Instant::now(), gpus.clone()));
        gpus
    }
}

/// Reads the CPU model name from `/proc/cpuinfo`.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, name)| name.trim().to_owned())
        })
        .unwrap_or_else(|| "cpu".to_owned())
}

async fn nvidia_gpus() -> Vec<Device> {
    let query = tokio::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=index,name,memory.total,memory.free",
            "--format=csv,noheader,nounits",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(NVIDIA_SMI_TIMEOUT, query).await {
        Ok(Ok(output)) if output.status.success() => {
            parse_nvidia_smi(&String::from_utf8_lossy(&output.stdout))
        }
        Ok(Ok(output)) => {
            tracing::debug!(status = %output.status, "nvidia-smi failed; reporting no GPUs");
            Vec::new()
        }
        Ok(Err(error)) => {
            tracing::debug!(%error, "nvidia-smi not available; reporting no GPUs");
            Vec::new()
        }
        Err(_) => {
            tracing::warn!("nvidia-smi timed out; reporting no GPUs");
            Vec::new()
        }
    }
}

/// Parses `nvidia-smi` CSV lines `index, name, total MiB, free MiB`.
fn parse_nvidia_smi(csv: &str) -> Vec<Device> {
    const MIB: u64 = 1024 * 1024;
    csv.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let [index, name, total, free] = fields.as_slice() else {
                return None;
            };
            Some(Device {
                id: format!("cuda:{}", index.parse::<u32>().ok()?),
                name: (*name).to_owned(),
                memory_total_bytes: total.parse::<u64>().ok()? * MIB,
                memory_free_bytes: free.parse::<u64>().ok()? * MIB,
            })
        })
        .collect()
}

fn os_name() -> String {
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    release
        .lines()
        .find_map(|line| line.strip_prefix("PRETTY_NAME="))
        .map(|value| value.trim_matches('"').to_owned())
        .unwrap_or_else(|| std::env::consts::OS.to_owned())
}

/// Returns the hive id stored in `state_dir`, creating and storing a new one on first start.
pub fn load_or_create_hive_id(state_dir: &Path) -> io::Result<String> {
    let path = state_dir.join(HIVE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }

    std::fs::create_dir_all(state_dir)?;
    let id = format!("hive-{}", uuid::Uuid::new_v4());
    // Written to a temporary file and renamed, so a crash never leaves an empty id behind.
    let temporary = state_dir.join(format!(".{HIVE_ID_FILE}.{}", std::process::id()));
    std::fs::write(&temporary, format!("{id}\n"))?;
    std::fs::rename(&temporary, &path)?;
    Ok(id)
}

/// Returns the time elapsed since `since`, or zero if the clock went backwards.
pub fn elapsed_since(since: SystemTime) -> Duration {
    SystemTime::now().duration_since(since).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_parsing() {
        let memory = parse_meminfo("MemTotal:  2048 kB\nMemFree: 10 kB\nMemAvailable: 1024 kB\n");
        assert_eq!(memory.total_bytes, 2048 * 1024);
        assert_eq!(memory.available_bytes, 1024 * 1024);
    }

    #[test]
    fn nvidia_smi_parsing() {
        let devices = parse_nvidia_smi(
            "0, NVIDIA A100-SXM4-40GB, 40960, 40000\n1, Tesla T4, 15360, 15000\nbad line\n",
        );
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[0].id, "cuda:0");
        assert_eq!(devices[0].name, "NVIDIA A100-SXM4-40GB");
        assert_eq!(devices[0].memory_total_bytes, 40960 * 1024 * 1024);
        assert_eq!(devices[1].id, "cuda:1");
    }

    #[test]
    fn hive_id_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_hive_id(dir.path()).unwrap();
        let second = load_or_create_hive_id(dir.path()).unwrap();
        assert_eq!(first, second);
        assert!(first.starts_with("hive-"));
    }
}
