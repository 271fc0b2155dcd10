//! `rbee hive info|list|start|stop|status`: describing hives, and running the hive on this
//! machine.

use std::time::Duration;

use prost_types::Timestamp;
use rbee_proto::v1::{Device, GetHiveInfoRequest, HiveInfo};
use serde::Serialize;
use tokio::time::Instant;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use super::{Context, DEFAULT_TIMEOUT, UsageError};
use crate::{
    cli::{GlobalArgs, HiveStartArgs},
    config::{self, HiveSecurity, HiveTarget, LOCALHOST},
    fanout::{Call, CallError, HiveResult},
    local_hive::{self, LocalHive, Paths, StartOptions},
    render::{self, Exit, HiveData, format, table},
};

/// Service name the hive registers with `grpc.health.v1`.
const HEALTH_SERVICE: &str = "rbee.hive.v1.HiveService";

/// Interval between health checks while a started hive comes up.
const HEALTH_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// A hive description in JSON output: the protobuf fields, with `uptime` as a protobuf JSON
/// duration and `started_at` in RFC 3339.
#[derive(Debug, Serialize)]
struct HiveInfoView {
    hive_id: String,
    name: String,
    version: String,
    hostname: String,
    os: String,
    kernel: String,
    arch: String,
    cpu_count: u32,
    memory_total_bytes: u64,
    memory_available_bytes: u64,
    devices: Vec<DeviceView>,
    catalog_dir: String,
    #[serde(serialize_with = "format::serialize_duration")]
    uptime: Option<prost_types::Duration>,
    #[serde(serialize_with = "format::serialize_time")]
    started_at: Option<Timestamp>,
}

#[derive(Debug, Serialize)]
struct DeviceView {
    id: String,
    name: String,
    memory_total_bytes: u64,
    memory_free_bytes: u64,
}

impl From<Device> for DeviceView {
    fn from(device: Device) -> Self {
        Self {
            id: device.id,
            name: device.name,
            memory_total_bytes: device.memory_total_bytes,
            memory_free_bytes: device.memory_free_bytes,
        }
    }
}

impl From<HiveInfo> for HiveInfoView {
    fn from(info: HiveInfo) -> Self {
        Self {
            hive_id: info.hive_id,
            name: info.name,
            version: info.version,
            hostname: info.hostname,
            os: info.os,
            kernel: info.kernel,
            arch: info.arch,
            cpu_count: info.cpu_count,
            memory_total_bytes: info.memory_total_bytes,
            memory_available_bytes: info.memory_available_bytes,
            devices: info.devices.into_iter().map(DeviceView::from).collect(),
            catalog_dir: info.catalog_dir,
            uptime: info.uptime,
            started_at: info.started_at,
        }
    }
}

impl HiveData for HiveInfoView {
    fn summary(&self) -> String {
        format!("{} {} on {}", self.name, self.version, self.hostname)
    }
}

/// `rbee hive info`.
pub async fn info(context: &Context) -> Exit {
    let results = context
        .run_reads(|call| async move {
            let request = call.request(GetHiveInfoRequest {
                job_id: call.job_id(),
            });
            let response = call.hive_client().get_hive_info(request).await?;
            Ok(HiveInfoView::from(
                response.into_inner().hive.unwrap_or_default(),
            ))
        })
        .await;

    render::print_results(context.output, &results, |succeeded, several| {
        if let [(_, info)] = succeeded
            && !several
        {
            return info_details(info);
        }
        info_table(succeeded)
    })
}

fn info_details(info: &HiveInfoView) -> String {
    let memory = format!(
        "{} available of {}",
        format::bytes(info.memory_available_bytes),
        format::bytes(info.memory_total_bytes)
    );
    let mut text = table::details(&[
        ("Name", info.name.clone()),
        ("Hive ID", info.hive_id.clone()),
        ("Version", info.version.clone()),
        ("Host", info.hostname.clone()),
        ("OS", info.os.clone()),
        ("Kernel", info.kernel.clone()),
        ("Arch", info.arch.clone()),
        ("CPUs", info.cpu_count.to_string()),
        ("Memory", memory),
        ("Catalog", info.catalog_dir.clone()),
        ("Started", format::time(info.started_at.as_ref())),
        ("Uptime", format::proto_duration(info.uptime.as_ref())),
    ]);

    let mut devices = table::new(&["DEVICE", "NAME", "MEMORY FREE", "MEMORY TOTAL"]);
    for device in &info.devices {
        devices.add_row(vec![
            device.id.clone(),
            device.name.clone(),
            format::bytes(device.memory_free_bytes),
            format::bytes(device.memory_total_bytes),
        ]);
    }
    text.push('\n');
    text.push_str(&table::render(&devices));
    text
}

fn info_table(succeeded: &[(&HiveTarget, &HiveInfoView)]) -> String {
    let mut table = table::new(&[
        "HIVE", "NAME", "VERSION", "HOST", "ARCH", "CPUS", "MEMORY", "DEVICES", "UPTIME",
    ]);
    for (hive, info) in succeeded {
        let devices: Vec<&str> = info.devices.iter().map(|d| d.id.as_str()).collect();
        table.add_row(vec![
            hive.name.clone(),
            info.name.clone(),
            info.version.clone(),
            info.hostname.clone(),
            info.arch.clone(),
            info.cpu_count.to_string(),
            format!(
                "{} / {}",
                format::bytes(info.memory_available_bytes),
                format::bytes(info.memory_total_bytes)
            ),
            devices.join(","),
            format::proto_duration(info.uptime.as_ref()),
        ]);
    }
    table::render(&table)
}

/// Health of a hive in JSON output: `serving` is the only value a successful probe gives.
#[derive(Debug, Serialize)]
struct Health {
    health: &'static str,
}

/// `data` of `hive list`: the health, and how the keeper connects to the hive.
#[derive(Debug, Serialize)]
struct ListedHive {
    health: &'static str,
    security: &'static str,
}

impl HiveData for ListedHive {
    fn summary(&self) -> String {
        self.health.to_owned()
    }
}

impl HiveData for Health {
    fn summary(&self) -> String {
        self.health.to_owned()
    }
}

/// Asks the hive's `grpc.health.v1` service whether the hive API is serving.
async fn probe_health(call: Call) -> Result<Health, tonic::Status> {
    let request = call.request(HealthCheckRequest {
        service: HEALTH_SERVICE.to_owned(),
    });
    let response = HealthClient::new(call.channel()).check(request).await?;
    match ServingStatus::try_from(response.into_inner().status) {
        Ok(ServingStatus::Serving) => Ok(Health { health: "serving" }),
        Ok(other) => Err(tonic::Status::unavailable(format!(
            "health check reports {}",
            other.as_str_name()
        ))),
        Err(_) => Err(tonic::Status::unknown(
            "health check returned an unknown status",
        )),
    }
}

/// `rbee hive list`: the hives `--all` targets, or those of `--hive`, with a health probe each.
pub async fn list(global: &GlobalArgs) -> anyhow::Result<Exit> {
    let config = super::load_config(global)?;
    let targets = if global.hive.is_empty() {
        config.all_hives(super::localhost_hive)
    } else {
        config.resolve(&global.hive, super::localhost_hive)?
    };
    // A probe is one small call: it gets the connect timeout, not the longer call timeout.
    let timeout = global.timeout.unwrap_or(global.connect_timeout);
    let context = Context::with_targets(global, targets, Some(timeout));
    let results: Vec<HiveResult<ListedHive>> = context
        .run_plain(|call| async move {
            let health = probe_health(call).await?;
            Ok(health.health)
        })
        .await
        .into_iter()
        .map(|result| HiveResult {
            outcome: result.outcome.map(|health| ListedHive {
                health,
                security: result.hive.security.label(),
            }),
            hive: result.hive,
            job_id: result.job_id,
        })
        .collect();

    match context.output {
        crate::cli::OutputFormat::Json => {
            render::write_stdout(&render::json_document(&results));
        }
        crate::cli::OutputFormat::Table => {
            let mut table = table::new(&["NAME", "ADDRESS", "SECURITY", "HEALTH"]);
            for result in &results {
                let health = match &result.outcome {
                    Ok(listed) => listed.health.to_owned(),
                    Err(error) => format!("{}: {error}", error.label()),
                };
                table.add_row(vec![
                    result.hive.name.clone(),
                    result.hive.address.clone(),
                    result.hive.security.label().to_owned(),
                    health,
                ]);
            }
            render::write_stdout(&table::render(&table));
        }
    }
    Ok(Exit::from_results(&results))
}

/// `data` of `hive start`.
#[derive(Debug, Serialize)]
struct Started {
    pid: i32,
    address: String,
    already_running: bool,
    log_file: String,
    catalog_dir: String,
}

impl HiveData for Started {
    fn summary(&self) -> String {
        format!("pid {}", self.pid)
    }
}

/// `data` of `hive stop`. `pid` is absent when no hive was running.
#[derive(Debug, Serialize)]
struct Stopped {
    was_running: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<i32>,
    #[serde(serialize_with = "format::serialize_duration")]
    elapsed: Option<prost_types::Duration>,
}

impl HiveData for Stopped {
    fn summary(&self) -> String {
        "stopped".to_owned()
    }
}

/// `data` of `hive status`.
#[derive(Debug, Serialize)]
struct Status {
    pid: i32,
    health: &'static str,
    #[serde(serialize_with = "format::serialize_time")]
    started_at: Option<Timestamp>,
    log_file: String,
    catalog_dir: String,
}

impl HiveData for Status {
    fn summary(&self) -> String {
        format!("pid {}, {}", self.pid, self.health)
    }
}

/// `hive start|stop|status` act on this machine only.
fn ensure_local_only(global: &GlobalArgs) -> Result<(), UsageError> {
    let only_localhost = global.hive.iter().all(|hive| hive == LOCALHOST);
    if global.all || !only_localhost {
        return Err(UsageError(
            "`rbee hive start`, `stop` and `status` manage the hive on this machine; \
             --hive and --all do not apply"
                .to_owned(),
        ));
    }
    Ok(())
}

fn local_result<T>(address: &str, outcome: Result<T, CallError>) -> HiveResult<T> {
    HiveResult {
        hive: HiveTarget {
            name: LOCALHOST.to_owned(),
            address: address.to_owned(),
            security: HiveSecurity::default(),
        },
        job_id: None,
        outcome,
    }
}

/// `rbee hive start`.
pub async fn start(global: &GlobalArgs, args: HiveStartArgs) -> anyhow::Result<Exit> {
    ensure_local_only(global)?;
    super::check_token_file(global)?;
    let paths = Paths::new()?;
    let deadline = Instant::now() + global.timeout.unwrap_or(DEFAULT_TIMEOUT);

    match local_hive::inspect(&paths)? {
        LocalHive::Running(record) => {
            let data = Started {
                pid: record.pid,
                address: record.address.clone(),
                already_running: true,
                log_file: record.log_file.display().to_string(),
                catalog_dir: record.catalog_dir.display().to_string(),
            };
            return Ok(print_started(
                global,
                local_result(&record.address, Ok(data)),
            ));
        }
        LocalHive::Stale(record) => {
            tracing::info!(
                pid = record.pid,
                "removing the pid file of a hive that is gone"
            );
            local_hive::remove_pid_file(&paths)?;
        }
        LocalHive::NotStarted => {}
    }

    let options = StartOptions {
        binary: local_hive::find_binary(args.hive_binary.as_deref())?,
        listen: args.listen,
        catalog_dir: match args.catalog_dir {
            Some(dir) => dir,
            None => config::cache_dir()?.join("workers"),
        },
        name: args.name,
        token_file: global
            .token_file
            .as_deref()
            .map(local_hive::absolute_token_file)
            .transpose()?,
    };
    let mut started = local_hive::spawn(&paths, &options)?;

    let address = match started.wait_for_address(&paths, deadline).await {
        Ok(address) => address,
        Err(error) => {
            started.abort(&paths).await;
            let failure = CallError::Local {
                reason: error.to_string(),
            };
            let listen = options.listen.to_string();
            return Ok(print_started(global, local_result(&listen, Err(failure))));
        }
    };

    // The hive prints its address once it listens; health confirms it serves the API.
    let target = HiveTarget {
        name: LOCALHOST.to_owned(),
        address: address.clone(),
        security: HiveSecurity::token_only(options.token_file.clone()),
    };
    let outcome = loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let probe_timeout = remaining
            .min(global.connect_timeout)
            .max(Duration::from_millis(1));
        let context = Context::with_targets(global, vec![target.clone()], Some(probe_timeout));
        let mut results = context.run_plain(probe_health).await;
        let probe = results.remove(0).outcome;

        if let Err(exited) = started.check_running(&paths) {
            break Err(CallError::Local {
                reason: exited.to_string(),
            });
        }
        match probe {
            Ok(_) => break Ok(()),
            Err(error) if Instant::now() >= deadline => break Err(error),
            Err(_) => tokio::time::sleep(HEALTH_POLL_INTERVAL).await,
        }
    };

    let result = match outcome {
        Ok(()) => Ok(Started {
            pid: started.record.pid,
            address: address.clone(),
            already_running: false,
            log_file: paths.log_file.display().to_string(),
            catalog_dir: options.catalog_dir.display().to_string(),
        }),
        Err(error) => {
            started.abort(&paths).await;
            Err(error)
        }
    };
    Ok(print_started(global, local_result(&address, result)))
}

fn print_started(global: &GlobalArgs, result: HiveResult<Started>) -> Exit {
    render::print_results(global.output, &[result], |succeeded, _| {
        let Some((_, started)) = succeeded.first() else {
            return String::new();
        };
        let verb = if started.already_running {
            "already running"
        } else {
            "started"
        };
        format!(
            "hive {verb}: pid {}, listening on {}\nlog: {}\n",
            started.pid, started.address, started.log_file
        )
    })
}

/// `rbee hive stop`.
pub async fn stop(global: &GlobalArgs) -> anyhow::Result<Exit> {
    ensure_local_only(global)?;
    let paths = Paths::new()?;
    let timeout = global.timeout.unwrap_or(DEFAULT_TIMEOUT);

    let record = match local_hive::inspect(&paths)? {
        LocalHive::Running(record) => record,
        LocalHive::Stale(record) => {
            tracing::info!(
                pid = record.pid,
                "removing the pid file of a hive that is gone"
            );
            local_hive::remove_pid_file(&paths)?;
            return Ok(print_stopped(global, &record.address, Ok(not_running())));
        }
        LocalHive::NotStarted => {
            let address = rbee_proto::DEFAULT_HIVE_ADDR;
            return Ok(print_stopped(global, address, Ok(not_running())));
        }
    };

    let began = Instant::now();
    let gone = local_hive::stop(&paths, &record, began + timeout).await?;
    let outcome = if gone {
        Ok(Stopped {
            was_running: true,
            pid: Some(record.pid),
            elapsed: prost_types::Duration::try_from(began.elapsed()).ok(),
        })
    } else {
        Err(CallError::Unreachable {
            reason: format!(
                "the hive (pid {}) still runs {} after SIGTERM; see {}, or force it with \
                 `kill -KILL {}`",
                record.pid,
                format::duration(timeout),
                record.log_file.display(),
                record.pid
            ),
        })
    };
    Ok(print_stopped(global, &record.address, outcome))
}

fn not_running() -> Stopped {
    Stopped {
        was_running: false,
        pid: None,
        elapsed: None,
    }
}

fn print_stopped(global: &GlobalArgs, address: &str, outcome: Result<Stopped, CallError>) -> Exit {
    render::print_results(
        global.output,
        &[local_result(address, outcome)],
        |succeeded, _| match succeeded.first() {
            Some((
                _,
                Stopped {
                    pid: Some(pid),
                    elapsed,
                    ..
                },
            )) => format!(
                "hive stopped: pid {pid}, in {}\n",
                format::proto_duration(elapsed.as_ref())
            ),
            Some(_) => "hive is not running\n".to_owned(),
            None => String::new(),
        },
    )
}

/// `rbee hive status`.
pub async fn status(global: &GlobalArgs) -> anyhow::Result<Exit> {
    ensure_local_only(global)?;
    super::check_token_file(global)?;
    let paths = Paths::new()?;

    let record = match local_hive::inspect(&paths)? {
        LocalHive::Running(record) => record,
        LocalHive::Stale(record) => {
            let failure = CallError::Unreachable {
                reason: format!(
                    "not running: the hive recorded in {} (pid {}) is gone",
                    paths.pid_file.display(),
                    record.pid
                ),
            };
            return Ok(print_status(
                global,
                local_result(&record.address, Err(failure)),
            ));
        }
        LocalHive::NotStarted => {
            let failure = CallError::Unreachable {
                reason: "not running: no hive was started with `rbee hive start`".to_owned(),
            };
            let address = rbee_proto::DEFAULT_HIVE_ADDR;
            return Ok(print_status(global, local_result(address, Err(failure))));
        }
    };

    let target = HiveTarget {
        name: LOCALHOST.to_owned(),
        address: record.address.clone(),
        security: HiveSecurity::token_only(record.token_file.clone()),
    };
    let timeout = global.timeout.unwrap_or(global.connect_timeout);
    let context = Context::with_targets(global, vec![target], Some(timeout));
    let mut results = context.run_plain(probe_health).await;
    let probe = results.remove(0);

    let outcome = probe.outcome.map(|health| Status {
        pid: record.pid,
        health: health.health,
        started_at: Some(Timestamp {
            seconds: i64::try_from(record.started_at_unix).unwrap_or(i64::MAX),
            nanos: 0,
        }),
        log_file: record.log_file.display().to_string(),
        catalog_dir: record.catalog_dir.display().to_string(),
    });
    Ok(print_status(global, local_result(&record.address, outcome)))
}

fn print_status(global: &GlobalArgs, result: HiveResult<Status>) -> Exit {
    let address = result.hive.address.clone();
    render::print_results(global.output, &[result], |succeeded, _| {
        let Some((_, status)) = succeeded.first() else {
            return String::new();
        };
        table::details(&[
            ("State", "running".to_owned()),
            ("PID", status.pid.to_string()),
            ("Address", address.clone()),
            ("Health", status.health.to_owned()),
            ("Started", format::time(status.started_at.as_ref())),
            ("Catalog", status.catalog_dir.clone()),
            ("Log", status.log_file.clone()),
        ])
    })
}
