//! `rbee model download|list|get|delete`: the model catalog of each hive.

use prost_types::Timestamp;
use rbee_proto::v1::{
    DeleteModelRequest, DownloadModelRequest, GetModelRequest, ListModelsRequest, Model,
};
use serde::Serialize;

use super::{Context, count, long_job};
use crate::{
    cli::{ModelCommand, ModelDownloadArgs},
    config::HiveTarget,
    render::{self, Exit, HiveData, format, table},
};

/// Number of leading hex digits of a SHA-256 shown in tables.
const SHORT_SHA256_DIGITS: usize = 12;

/// Runs one `rbee model` command.
pub async fn run(context: &Context, command: ModelCommand) -> Exit {
    match command {
        ModelCommand::Download(args) => download(context, args).await,
        ModelCommand::List => list(context).await,
        ModelCommand::Get { name } => get(context, name).await,
        ModelCommand::Delete { name, force } => delete(context, name, force).await,
    }
}

/// A model in JSON output: the protobuf fields, with the modification time in RFC 3339.
#[derive(Debug, Serialize)]
pub struct ModelView {
    name: String,
    path: String,
    size_bytes: u64,
    sha256: String,
    format: String,
    source_url: String,
    #[serde(serialize_with = "format::serialize_time")]
    modified_at: Option<Timestamp>,
}

impl From<Model> for ModelView {
    fn from(model: Model) -> Self {
        Self {
            name: model.name,
            path: model.path,
            size_bytes: model.size_bytes,
            sha256: model.sha256,
            format: model.format,
            source_url: model.source_url,
            modified_at: model.modified_at,
        }
    }
}

/// `data` of `model list`.
#[derive(Debug, Serialize)]
struct ModelList {
    models: Vec<ModelView>,
}

impl HiveData for ModelList {
    fn summary(&self) -> String {
        count(self.models.len(), "model", "models")
    }
}

/// `data` of `model get` and `model download`.
#[derive(Debug, Serialize)]
struct OneModel {
    model: ModelView,
    /// Whether the command installed the model, which the summary then says.
    #[serde(skip)]
    installed: bool,
}

impl HiveData for OneModel {
    fn summary(&self) -> String {
        let verb = if self.installed { "installed " } else { "" };
        format!(
            "{verb}{} ({}, {})",
            self.model.name,
            self.model.format,
            format::bytes(self.model.size_bytes)
        )
    }
}

/// `data` of `model delete`.
#[derive(Debug, Serialize)]
struct ModelDeleted {
    model: ModelView,
    retired_workers: Vec<String>,
}

impl HiveData for ModelDeleted {
    fn summary(&self) -> String {
        if self.retired_workers.is_empty() {
            format!("deleted {}", self.model.name)
        } else {
            format!(
                "deleted {} after retiring {}",
                self.model.name,
                count(self.retired_workers.len(), "worker", "workers")
            )
        }
    }
}

/// Downloads a model on every targeted hive. Ctrl-C cancels the downloads.
async fn download(context: &Context, args: ModelDownloadArgs) -> Exit {
    let request = DownloadModelRequest {
        job_id: String::new(),
        name: args.name,
        url: args.url,
        sha256: args.sha256.unwrap_or_default(),
        replace: args.replace,
    };
    let results = long_job::run_cancellable(context, |call| {
        let mut request = request.clone();
        async move {
            request.job_id = call.job_id();
            let request = call.request(request);
            let response = call.hive_client().download_model(request).await?;
            Ok(OneModel {
                model: response.into_inner().model.unwrap_or_default().into(),
                installed: true,
            })
        }
    })
    .await;

    let Some(results) = results else {
        return Exit::Interrupted;
    };
    render::print_results(context.output, &results, print_one_model)
}

async fn list(context: &Context) -> Exit {
    let results = context
        .run_reads(|call| async move {
            let request = call.request(ListModelsRequest {
                job_id: call.job_id(),
            });
            let response = call.hive_client().list_models(request).await?;
            let models = response.into_inner().models;
            Ok(ModelList {
                models: models.into_iter().map(ModelView::from).collect(),
            })
        })
        .await;

    render::print_results(context.output, &results, |succeeded, several| {
        let rows = succeeded
            .iter()
            .flat_map(|(hive, list)| list.models.iter().map(move |model| (*hive, model)));
        model_table(rows, several, "no models\n")
    })
}

async fn get(context: &Context, name: String) -> Exit {
    let results = context
        .run_reads(|call| {
            let name = name.clone();
            async move {
                let request = call.request(GetModelRequest {
                    job_id: call.job_id(),
                    name,
                });
                let response = call.hive_client().get_model(request).await?;
                Ok(OneModel {
                    model: response.into_inner().model.unwrap_or_default().into(),
                    installed: false,
                })
            }
        })
        .await;

    render::print_results(context.output, &results, print_one_model)
}

async fn delete(context: &Context, name: String, force: bool) -> Exit {
    let results = context
        .run_jobs(|call| {
            let name = name.clone();
            async move {
                let request = call.request(DeleteModelRequest {
                    job_id: call.job_id(),
                    name,
                    force,
                });
                let response = call.hive_client().delete_model(request).await?;
                let response = response.into_inner();
                Ok(ModelDeleted {
                    model: response.model.unwrap_or_default().into(),
                    retired_workers: response.retired_workers,
                })
            }
        })
        .await;

    render::print_results(context.output, &results, |succeeded, several| {
        let mut text = String::new();
        for (hive, deleted) in succeeded {
            let on_hive = if several {
                format!(" on {}", hive.name)
            } else {
                String::new()
            };
            text.push_str(&format!("deleted model {}{on_hive}\n", deleted.model.name));
            for worker_id in &deleted.retired_workers {
                text.push_str(&format!("  retired {worker_id}\n"));
            }
        }
        text
    })
}

/// Renders one model: its details for one hive, a table for several.
fn print_one_model(succeeded: &[(&HiveTarget, &OneModel)], several: bool) -> String {
    if let [(_, found)] = succeeded
        && !several
    {
        return model_details(&found.model);
    }
    let rows = succeeded.iter().map(|(hive, found)| (*hive, &found.model));
    model_table(rows, several, "")
}

/// Renders one row per model, with a HIVE column when several hives were targeted.
fn model_table<'a>(
    rows: impl Iterator<Item = (&'a HiveTarget, &'a ModelView)>,
    several: bool,
    when_empty: &str,
) -> String {
    let mut headers = Vec::new();
    if several {
        headers.push("HIVE");
    }
    headers.extend(["NAME", "FORMAT", "SIZE", "SHA256", "SOURCE"]);
    let mut table = table::new(&headers);

    let mut empty = true;
    for (hive, model) in rows {
        empty = false;
        let mut row = Vec::new();
        if several {
            row.push(hive.name.clone());
        }
        row.extend([
            model.name.clone(),
            dash_if_empty(&model.format),
            format::bytes(model.size_bytes),
            dash_if_empty(&short_sha256(&model.sha256)),
            dash_if_empty(&model.source_url),
        ]);
        table.add_row(row);
    }

    if empty {
        when_empty.to_owned()
    } else {
        table::render(&table)
    }
}

/// `Key: value` lines for one model.
fn model_details(model: &ModelView) -> String {
    table::details(&[
        ("Name", model.name.clone()),
        ("Path", model.path.clone()),
        ("Format", model.format.clone()),
        (
            "Size",
            format!(
                "{} ({} bytes)",
                format::bytes(model.size_bytes),
                model.size_bytes
            ),
        ),
        ("Modified", format::time(model.modified_at.as_ref())),
        ("Source", model.source_url.clone()),
        ("SHA-256", model.sha256.clone()),
    ])
}

fn short_sha256(sha256: &str) -> String {
    sha256.chars().take(SHORT_SHA256_DIGITS).collect()
}

fn dash_if_empty(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str, source_url: &str) -> ModelView {
        ModelView::from(Model {
            name: name.to_owned(),
            path: format!("/models/{name}"),
            size_bytes: 3 * 1024 * 1024,
            sha256: "ab".repeat(32),
            format: "gguf".to_owned(),
            source_url: source_url.to_owned(),
            modified_at: Some(Timestamp {
                seconds: 1_765_000_000,
                nanos: 0,
            }),
        })
    }

    fn hive(name: &str) -> HiveTarget {
        HiveTarget {
            name: name.to_owned(),
            address: format!("{name}:7835"),
            security: Default::default(),
        }
    }

    #[test]
    fn table_shows_readable_size_and_short_sha() {
        let gpu1 = hive("gpu1");
        let tiny = model("tiny.gguf", "https://example.com/tiny.gguf");
        let text = model_table([(&gpu1, &tiny)].into_iter(), false, "");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        for header in ["NAME", "FORMAT", "SIZE", "SHA256", "SOURCE"] {
            assert!(lines[0].contains(header), "{header} missing: {text}");
        }
        assert!(!lines[0].contains("HIVE"), "{text}");
        assert!(lines[1].contains("3.0 MiB"), "{text}");
        assert!(lines[1].contains(&"ab".repeat(6)), "{text}");
        assert!(!lines[1].contains(&"ab".repeat(7)), "{text}");
        assert!(lines[1].contains("https://example.com/tiny.gguf"), "{text}");
    }

    #[test]
    fn table_with_hive_column() {
        let gpu1 = hive("gpu1");
        let tiny = model("tiny.gguf", "");
        let text = model_table([(&gpu1, &tiny)].into_iter(), true, "");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("HIVE"), "{text}");
        assert!(lines[1].starts_with("gpu1"), "{text}");
        assert!(lines[1].trim_end().ends_with('-'), "{text}");
    }

    #[test]
    fn json_keeps_exact_values() {
        let json = serde_json::to_value(model("tiny.gguf", "file:///srv/tiny.gguf")).unwrap();
        assert_eq!(json["size_bytes"], 3 * 1024 * 1024);
        assert_eq!(json["sha256"], "ab".repeat(32));
        assert_eq!(json["source_url"], "file:///srv/tiny.gguf");
        assert_eq!(json["modified_at"], "2025-12-06T05:46:40Z");
        assert_eq!(json["path"], "/models/tiny.gguf");
    }
}
