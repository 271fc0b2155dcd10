//! `GetHiveInfo`.

use rbee_proto::v1 as proto;

use super::{HiveApi, proto_duration};
use crate::{error::Error, host, jobs::Narrator};

impl HiveApi {
    pub(super) async fn hive_info(
        &self,
        narrator: &Narrator,
    ) -> Result<proto::GetHiveInfoResponse, Error> {
        let shared = &self.shared;
        let memory = host::memory().unwrap_or_else(|error| {
            narrator.warn(
                "hive.memory",
                format!("failed to read /proc/meminfo: {error}"),
            );
            host::Memory::default()
        });
        let devices = host::devices(memory, &shared.cpu_model, &shared.gpus).await;

        let hive = proto::HiveInfo {
            hive_id: shared.identity.id.clone(),
            name: shared.identity.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            hostname: shared.host.hostname.clone(),
            os: shared.host.os.clone(),
            kernel: shared.host.kernel.clone(),
            arch: shared.host.arch.to_owned(),
            cpu_count: shared.host.cpu_count,
            memory_total_bytes: memory.total_bytes,
            memory_available_bytes: memory.available_bytes,
            devices: devices
                .into_iter()
                .map(|device| proto::Device {
                    id: device.id,
                    name: device.name,
                    memory_total_bytes: device.memory_total_bytes,
                    memory_free_bytes: device.memory_free_bytes,
                })
                .collect(),
            catalog_dir: shared.catalog.dir().display().to_string(),
            uptime: Some(proto_duration(shared.started.elapsed())),
            started_at: Some(shared.started_at.into()),
        };
        Ok(proto::GetHiveInfoResponse {
            job_id: narrator.job_id().to_string(),
            hive: Some(hive),
        })
    }
}
