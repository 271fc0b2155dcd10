//! `rbee worker spawn`: start a worker from a catalog binary on each targeted hive and wait
//! until it is ready.

use std::collections::HashMap;

use rbee_proto::v1::SpawnWorkerRequest;
use serde::Serialize;

use super::{
    Context, UsageError,
    worker_active::{ActiveWorkerView, active_details, active_table},
};
use crate::{
    cli::WorkerSpawnArgs,
    render::{self, Exit, HiveData},
};

/// A validated spawn, sent unchanged to every targeted hive.
#[derive(Debug, Clone)]
pub struct Spawn {
    request: SpawnWorkerRequest,
}

impl Spawn {
    /// Builds the request from the command line. Single values were checked while parsing;
    /// this rejects what needs them all, such as an environment variable given twice.
    pub fn from_args(args: WorkerSpawnArgs) -> Result<Self, UsageError> {
        let mut env = HashMap::with_capacity(args.env.len());
        for (name, value) in args.env {
            if env.contains_key(&name) {
                return Err(UsageError(format!(
                    "environment variable {name} is given twice with --env; give it once"
                )));
            }
            env.insert(name, value);
        }
        let ready_timeout = args
            .ready_timeout
            .and_then(|timeout| prost_types::Duration::try_from(timeout).ok());

        Ok(Self {
            request: SpawnWorkerRequest {
                job_id: String::new(),
                binary: args.binary,
                model: args.model,
                device: args.device,
                port: args.port.map_or(0, u32::from),
                args: args.args,
                env,
                ready_timeout,
            },
        })
    }
}

/// `data` of `worker spawn`: the worker, ready.
#[derive(Debug, Serialize)]
struct Spawned {
    worker: ActiveWorkerView,
}

impl HiveData for Spawned {
    fn summary(&self) -> String {
        format!(
            "{} ready, pid {}, port {}",
            self.worker.worker_id, self.worker.pid, self.worker.port
        )
    }
}

/// Runs `rbee worker spawn` on every targeted hive.
pub async fn run(context: &Context, spawn: &Spawn) -> Exit {
    let results = context
        .run_jobs(|call| {
            let mut request = spawn.request.clone();
            async move {
                request.job_id = call.job_id();
                let request = call.request(request);
                let response = call.hive_client().spawn_worker(request).await?;
                Ok(Spawned {
                    worker: response.into_inner().worker.unwrap_or_default().into(),
                })
            }
        })
        .await;

    render::print_results(context.output, &results, |succeeded, several| {
        if let [(_, spawned)] = succeeded
            && !several
        {
            return active_details(&spawned.worker);
        }
        let rows = succeeded
            .iter()
            .map(|(hive, spawned)| (*hive, &spawned.worker));
        let mut text = active_table(rows, several, "");
        for (hive, spawned) in succeeded {
            text.push_str(&format!(
                "log of {} on {}: {}\n",
                spawned.worker.worker_id, hive.name, spawned.worker.log_path
            ));
        }
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(env: &[(&str, &str)]) -> WorkerSpawnArgs {
        WorkerSpawnArgs {
            binary: "llm-cpu".to_owned(),
            model: "/models/tiny.gguf".to_owned(),
            device: "cpu".to_owned(),
            port: None,
            args: vec!["--verbose".to_owned()],
            env: env
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
            ready_timeout: None,
        }
    }

    #[test]
    fn request_carries_every_flag() {
        let spawn = Spawn::from_args(args(&[("HF_HOME", "/data")])).unwrap();
        let request = spawn.request;
        assert_eq!(request.binary, "llm-cpu");
        assert_eq!(request.model, "/models/tiny.gguf");
        assert_eq!(request.device, "cpu");
        assert_eq!(request.port, 0, "zero lets the hive pick a port");
        assert_eq!(request.args, ["--verbose"]);
        assert_eq!(
            request.env.get("HF_HOME").map(String::as_str),
            Some("/data")
        );
        assert!(request.ready_timeout.is_none());
    }

    #[test]
    fn duplicate_env_name_is_a_usage_error() {
        let error = Spawn::from_args(args(&[("A", "1"), ("A", "2")])).unwrap_err();
        assert!(error.0.contains("given twice"), "{error}");
    }
}
