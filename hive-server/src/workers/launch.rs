//! The command line and environment a worker is started with.

use std::{collections::BTreeMap, path::Path};

use super::WorkerError;
use crate::catalog::{Readiness, WorkerBinary};

/// Arguments passed to a worker binary when its manifest sets none.
pub const DEFAULT_ARGS: &[&str] = &[
    "--model", "{model}", "--device", "{device}", "--port", "{port}",
];

/// Name of the preset for llama.cpp's `llama-server`.
pub const LLAMA_SERVER: &str = "llama-server";

/// A known kind of worker whose launch convention the hive applies itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// llama.cpp's `llama-server`: `--model M --host 127.0.0.1 --port P`, `--device none` on
    /// the CPU, all layers offloaded (`-ngl 999`) on a GPU; ready when `GET /health` is 200;
    /// serves the llama.cpp completion API.
    LlamaServer,
}

impl Preset {
    /// Returns the preset of a catalog entry: the manifest's `preset`, else `llama-server` for
    /// an entry of that name.
    pub fn of(binary: &WorkerBinary) -> Result<Option<Self>, WorkerError> {
        match binary.manifest.preset.as_deref() {
            Some(LLAMA_SERVER) => Ok(Some(Self::LlamaServer)),
            Some(other) => Err(WorkerError::Template(format!(
                "unknown preset {other:?} in the manifest of {}; the known preset is {LLAMA_SERVER}",
                binary.name
            ))),
            None if binary.name.as_str() == LLAMA_SERVER => Ok(Some(Self::LlamaServer)),
            None => Ok(None),
        }
    }

    /// Returns the preset's arguments for a worker on `device`.
    fn args(self, device: &str) -> Vec<&'static str> {
        match self {
            Self::LlamaServer => {
                let mut args = vec![
                    "--model",
                    "{model}",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "{port}",
                ];
                if device == "cpu" {
                    args.extend(["--device", "none"]);
                } else {
                    args.extend(["-ngl", "999"]);
                }
                args
            }
        }
    }

    /// Returns the preset's readiness check.
    pub fn readiness(self) -> Readiness {
        match self {
            Self::LlamaServer => Readiness::Http("/health".to_owned()),
        }
    }

    /// Returns the API the preset's workers serve, as recorded for inference.
    pub fn api(self) -> &'static str {
        match self {
            Self::LlamaServer => super::infer::LLAMA_CPP_API,
        }
    }
}

/// Values substituted into command, argument and environment templates.
#[derive(Debug, Clone)]
pub struct TemplateValues<'a> {
    /// Path or name of the model.
    pub model: &'a str,
    /// Device id, `cpu` or `cuda:N`.
    pub device: &'a str,
    /// Port the worker serves on.
    pub port: u16,
    /// Worker id.
    pub worker_id: &'a str,
    /// Address of the hive, `host:port`.
    pub hive_addr: &'a str,
    /// Path of the worker binary.
    pub binary: &'a Path,
}

impl TemplateValues<'_> {
    /// Replaces every `{name}` placeholder in `template`.
    pub fn expand(&self, template: &str) -> Result<String, WorkerError> {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or_else(|| unknown(template))?;
            let value = match &after[..close] {
                "model" => self.model.to_owned(),
                "device" => self.device.to_owned(),
                "port" => self.port.to_string(),
                "worker_id" => self.worker_id.to_owned(),
                "hive_addr" => self.hive_addr.to_owned(),
                "binary" => self.binary.display().to_string(),
                _ => return Err(unknown(template)),
            };
            out.push_str(&value);
            rest = &after[close + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

fn unknown(template: &str) -> WorkerError {
    WorkerError::Template(format!(
        "template {template:?} has an unknown or unclosed placeholder; known placeholders are \
         {{model}}, {{device}}, {{port}}, {{worker_id}}, {{hive_addr}} and {{binary}}"
    ))
}

/// Builds the command line: the manifest's `command`, or the binary followed by the manifest's
/// `args` (else [`DEFAULT_ARGS`]), then the request's extra arguments verbatim.
pub fn command_line(
    binary: &WorkerBinary,
    preset: Option<Preset>,
    values: &TemplateValues<'_>,
    extra_args: &[String],
) -> Result<Vec<String>, WorkerError> {
    let manifest = &binary.manifest;
    let preset_args = preset.map(|preset| preset.args(values.device));
    let default_args = preset_args.as_deref().unwrap_or(DEFAULT_ARGS);
    let mut argv = match (&manifest.command, &manifest.args) {
        (Some(command), _) => command
            .iter()
            .map(|part| values.expand(part))
            .collect::<Result<Vec<_>, _>>()?,
        (None, args) => {
            let mut argv = vec![binary.path.display().to_string()];
            match args {
                Some(args) => {
                    for arg in args {
                        argv.push(values.expand(arg)?);
                    }
                }
                None => {
                    for arg in default_args {
                        argv.push(values.expand(arg)?);
                    }
                }
            }
            argv
        }
    };
    argv.extend(extra_args.iter().cloned());
    Ok(argv)
}

/// Builds the variables the hive sets for a worker: the manifest's `env`, then the request's
/// extra variables, then the hive's own `RBEE_*` variables and `CUDA_VISIBLE_DEVICES`.
pub fn environment(
    binary: &WorkerBinary,
    values: &TemplateValues<'_>,
    extra_env: &BTreeMap<String, String>,
    cuda_index: Option<u32>,
) -> Result<Vec<(String, String)>, WorkerError> {
    let mut env = Vec::new();
    for (name, value) in &binary.manifest.env {
        env.push((name.clone(), values.expand(value)?));
    }
    env.extend(extra_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.push(("RBEE_WORKER_ID".to_owned(), values.worker_id.to_owned()));
    env.push(("RBEE_HIVE_ADDR".to_owned(), values.hive_addr.to_owned()));
    if let Some(index) = cuda_index {
        env.push(("CUDA_VISIBLE_DEVICES".to_owned(), index.to_string()));
    }
    Ok(env)
}

/// Checks a variable name from a request: a portable shell name, not reserved for the hive.
pub fn check_env_name(name: &str) -> Result<(), WorkerError> {
    let portable = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !portable {
        return Err(WorkerError::InvalidArgument(format!(
            "invalid environment variable name {name:?}: use letters, digits and `_`, not \
             starting with a digit"
        )));
    }
    if name.starts_with("RBEE_") || name == "CUDA_VISIBLE_DEVICES" {
        return Err(WorkerError::InvalidArgument(format!(
            "environment variable {name} is set by the hive and cannot be overridden"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn values() -> TemplateValues<'static> {
        TemplateValues {
            model: "/models/tiny.gguf",
            device: "cuda:1",
            port: 9123,
            worker_id: "worker-0123456789ab",
            hive_addr: "127.0.0.1:7835",
            binary: Path::new("/cat/w"),
        }
    }

    #[test]
    fn expands_known_placeholders() {
        assert_eq!(
            values().expand("--port={port} {model}@{device}").unwrap(),
            "--port=9123 /models/tiny.gguf@cuda:1"
        );
        assert_eq!(
            values().expand("no placeholders").unwrap(),
            "no placeholders"
        );
    }

    #[test]
    fn rejects_unknown_or_unclosed_placeholders() {
        assert!(values().expand("{nope}").is_err());
        assert!(values().expand("{port").is_err());
    }

    #[test]
    fn env_names_are_checked() {
        assert!(check_env_name("HF_HOME").is_ok());
        for bad in [
            "",
            "1X",
            "A-B",
            "A=B",
            "RBEE_WORKER_ID",
            "CUDA_VISIBLE_DEVICES",
        ] {
            assert!(check_env_name(bad).is_err(), "{bad:?}");
        }
    }
}
