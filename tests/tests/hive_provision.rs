//! Downloads and builds of worker binaries and models, against a local file server with faults.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use rbee_proto::v1::{
    ActiveWorkerState, BinaryLayout, BuildWorkerRequest, CancelJobRequest, DeleteModelRequest,
    DownloadModelRequest, DownloadWorkerRequest, GetModelRequest, ListModelsRequest,
    ListWorkerBinariesRequest, NarrateRequest, NarrationEvent, SpawnWorkerRequest,
    hive_service_client::HiveServiceClient,
};
use rbee_tests::{
    TestHive,
    http::{Fault, FileServer},
};
use tokio_stream::StreamExt;
use tonic::{Code, transport::Channel};

/// A body that is not all one byte, so a misplaced resume would be caught.
fn body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn sha256(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let output = child.wait_with_output().unwrap();
    String::from_utf8(output.stdout).unwrap()[..64].to_owned()
}

/// Hidden files the hive leaves in `dir`: partial downloads and staging folders.
fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".download-") || n.starts_with(".rbee-"))
        .collect()
}

fn download(name: &str, url: &str) -> DownloadWorkerRequest {
    DownloadWorkerRequest {
        name: name.into(),
        url: url.into(),
        ..Default::default()
    }
}

async fn events(client: &mut HiveServiceClient<Channel>, job_id: &str) -> Vec<NarrationEvent> {
    client
        .narrate(NarrateRequest {
            job_id: job_id.into(),
            wait_for_start: Some(Duration::from_secs(10).try_into().unwrap()),
        })
        .await
        .unwrap()
        .into_inner()
        .map(|e| e.unwrap())
        .collect()
        .await
}

#[tokio::test]
async fn download_installs_verified_executable_entry() {
    let hive = TestHive::start();
    let server = FileServer::start();
    let bytes = body(300_000);
    server.add("/w", bytes.clone(), Fault::None);
    let mut client = hive.client().await;

    let binary = client
        .download_worker(DownloadWorkerRequest {
            job_id: "job-download".into(),
            sha256: sha256(&bytes).to_uppercase(),
            version: "1.4.0".into(),
            ..download("llm-worker", &server.url("/w"))
        })
        .await
        .unwrap()
        .into_inner()
        .binary
        .unwrap();

    assert_eq!(binary.name, "llm-worker");
    assert_eq!(binary.layout(), BinaryLayout::Directory);
    assert_eq!(binary.size_bytes, 300_000);
    assert_eq!(binary.sha256, sha256(&bytes));
    assert!(binary.executable);
    assert_eq!(binary.version, "1.4.0");
    assert_eq!(binary.source, server.url("/w"));
    assert_eq!(fs::read(&binary.path).unwrap(), bytes);
    assert!(leftovers(&hive.catalog_dir()).is_empty());

    let narration = events(&mut client, "job-download").await;
    let last_progress = narration
        .iter()
        .rev()
        .find_map(|e| e.progress.clone())
        .unwrap();
    assert_eq!(last_progress.current, 300_000);
    assert_eq!(last_progress.total, 300_000);
    assert_eq!(last_progress.unit, "bytes");

    let again = client
        .download_worker(download("llm-worker", &server.url("/w")))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn dropped_connection_resumes_with_range_request() {
    let hive = TestHive::start();
    let server = FileServer::start();
    let bytes = body(200_000);
    server.add("/w", bytes.clone(), Fault::DropOnceAfter(70_000));
    let mut client = hive.client().await;

    let binary = client
        .download_worker(DownloadWorkerRequest {
            job_id: "job-resume".into(),
            sha256: sha256(&bytes),
            ..download("w", &server.url("/w"))
        })
        .await
        .unwrap()
        .into_inner()
        .binary
        .unwrap();

    assert_eq!(fs::read(&binary.path).unwrap(), bytes);
    let requests = server.requests("/w");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0].range, None);
    assert_eq!(requests[1].range.as_deref(), Some("bytes=70000-"));
    let actions: Vec<String> = events(&mut client, "job-resume")
        .await
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert!(
        actions.contains(&"download.retry".to_owned()),
        "{actions:?}"
    );
    assert!(
        actions.contains(&"download.resume".to_owned()),
        "{actions:?}"
    );
    assert!(leftovers(&hive.catalog_dir()).is_empty());
}

#[tokio::test]
async fn checksum_mismatch_installs_nothing() {
    let hive = TestHive::start();
    let server = FileServer::start();
    server.add("/w", body(10_000), Fault::None);
    let mut client = hive.client().await;
    let wrong = "0".repeat(64);

    let status = client
        .download_worker(DownloadWorkerRequest {
            sha256: wrong.clone(),
            ..download("w", &server.url("/w"))
        })
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::DataLoss);
    assert_eq!(
        status.message(),
        format!(
            "sha256 mismatch: expected {wrong}, got {}; nothing was installed",
            sha256(&body(10_000))
        )
    );
    assert!(fs::read_dir(hive.catalog_dir()).unwrap().next().is_none());
}

#[tokio::test]
async fn missing_file_and_bad_input_fail_cleanly() {
    let hive = TestHive::start();
    let server = FileServer::start();
    let mut client = hive.client().await;

    let missing = client
        .download_worker(download("w", &server.url("/missing")))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(
        missing.message(),
        format!("{} not found", server.url("/missing"))
    );

    let cases = [
        (
            download("w", "ftp://127.0.0.1/w"),
            "unsupported URL scheme \"ftp\"",
        ),
        (
            download("../w", &server.url("/w")),
            "invalid worker name \"../w\"",
        ),
        (
            DownloadWorkerRequest {
                sha256: "abc".into(),
                ..download("w", &server.url("/w"))
            },
            "invalid sha256 \"abc\"",
        ),
    ];
    for (request, message) in cases {
        let status = client.download_worker(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().starts_with(message),
            "{}",
            status.message()
        );
    }
    assert!(fs::read_dir(hive.catalog_dir()).unwrap().next().is_none());
}

#[tokio::test]
async fn too_large_for_the_disk_is_resource_exhausted() {
    let hive = TestHive::start();
    let server = FileServer::start();
    server.add("/huge", Vec::new(), Fault::ClaimLength(1 << 60));
    let mut client = hive.client().await;

    let status = client
        .download_worker(download("w", &server.url("/huge")))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().starts_with("not enough disk space in "),
        "{}",
        status.message()
    );
    assert!(fs::read_dir(hive.catalog_dir()).unwrap().next().is_none());
}

#[tokio::test]
async fn download_without_content_length_completes() {
    let hive = TestHive::start();
    let server = FileServer::start();
    let bytes = body(50_000);
    server.add("/w", bytes.clone(), Fault::NoContentLength);
    let mut client = hive.client().await;

    let binary = client
        .download_worker(download("w", &server.url("/w")))
        .await
        .unwrap()
        .into_inner()
        .binary
        .unwrap();

    assert_eq!(fs::read(&binary.path).unwrap(), bytes);
    assert!(leftovers(&hive.catalog_dir()).is_empty());
}

#[tokio::test]
async fn cancel_stops_slow_download_and_removes_temporary_file() {
    let hive = TestHive::start();
    let server = FileServer::start();
    server.add(
        "/slow",
        body(400_000),
        Fault::Slow(Duration::from_millis(20)),
    );
    let mut client = hive.client().await;

    let download_task = {
        let mut client = hive.client().await;
        let url = server.url("/slow");
        tokio::spawn(async move {
            client
                .download_worker(DownloadWorkerRequest {
                    job_id: "job-slow".into(),
                    ..download("w", &url)
                })
                .await
        })
    };
    // Waits until bytes are flowing.
    let mut stream = client
        .narrate(NarrateRequest {
            job_id: "job-slow".into(),
            wait_for_start: Some(Duration::from_secs(10).try_into().unwrap()),
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(event) = stream.next().await {
        if event.unwrap().progress.is_some() {
            break;
        }
    }
    assert_eq!(leftovers(&hive.catalog_dir()).len(), 1);

    client
        .cancel_job(CancelJobRequest {
            job_id: "job-slow".into(),
        })
        .await
        .unwrap();

    let status = download_task.await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Cancelled);
    assert!(fs::read_dir(hive.catalog_dir()).unwrap().next().is_none());
    let again = client
        .cancel_job(CancelJobRequest {
            job_id: "job-slow".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    let unknown = client
        .cancel_job(CancelJobRequest {
            job_id: "job-unknown".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test]
async fn concurrent_requests_share_one_download() {
    let hive = TestHive::start();
    let server = FileServer::start();
    let bytes = body(100_000);
    server.add("/w", bytes.clone(), Fault::Slow(Duration::from_millis(5)));
    let url = server.url("/w");

    let mut tasks = Vec::new();
    for job in ["job-first", "job-second"] {
        let mut client = hive.client().await;
        let request = DownloadWorkerRequest {
            job_id: job.into(),
            ..download("shared", &url)
        };
        tasks.push(tokio::spawn(async move {
            client.download_worker(request).await
        }));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    for task in tasks {
        let binary = task.await.unwrap().unwrap().into_inner().binary.unwrap();
        assert_eq!(binary.size_bytes, 100_000);
    }

    assert_eq!(server.requests("/w").len(), 1);
    let mut client = hive.client().await;
    let second = events(&mut client, "job-second").await;
    assert_eq!(second[1].action, "download.join");
    assert_eq!(
        second[1].message,
        "joining job job-first, which is downloading the same file"
    );
    assert!(second.iter().any(|e| e.progress.is_some()));
}

#[tokio::test]
async fn file_url_imports_a_local_binary() {
    let hive = TestHive::start();
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("my-worker");
    fs::write(&path, b"#!/bin/sh\nexit 0\n").unwrap();
    let mut client = hive.client().await;

    let binary = client
        .download_worker(download("my-worker", &format!("file://{}", path.display())))
        .await
        .unwrap()
        .into_inner()
        .binary
        .unwrap();

    assert_eq!(binary.platform, "script");
    assert!(binary.executable);
    assert_eq!(fs::read(&path).unwrap(), b"#!/bin/sh\nexit 0\n");
}

#[tokio::test]
async fn models_download_list_get_and_delete_in_use() {
    let hive = TestHive::start();
    hive.install(&rbee_tests::test_worker_bin(), "w");
    let server = FileServer::start();
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(body(5_000));
    server.add("/tiny.gguf", bytes.clone(), Fault::None);
    let mut client = hive.client().await;

    let model = client
        .download_model(DownloadModelRequest {
            name: "tiny.gguf".into(),
            url: server.url("/tiny.gguf"),
            sha256: sha256(&bytes),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    assert_eq!(model.format, "gguf");
    assert_eq!(model.size_bytes, 5_004);
    assert_eq!(model.source_url, server.url("/tiny.gguf"));
    let listed = client
        .list_models(ListModelsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .models;
    assert_eq!(listed, vec![model.clone()]);
    assert!(leftovers(&hive.model_dir()).is_empty());

    // A worker spawned on the model by its catalog name.
    let worker = client
        .spawn_worker(SpawnWorkerRequest {
            binary: "w".into(),
            model: "tiny.gguf".into(),
            device: "cpu".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .worker
        .unwrap();
    assert_eq!(worker.state(), ActiveWorkerState::Ready);
    assert_eq!(worker.model, model.path);

    let in_use = client
        .delete_model(DeleteModelRequest {
            name: "tiny.gguf".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(in_use.code(), Code::FailedPrecondition);
    assert_eq!(
        in_use.message(),
        format!(
            "model tiny.gguf is in use by active workers {}; retire them first or delete with force (rbee: --force)",
            worker.worker_id
        )
    );
    assert!(Path::new(&model.path).exists());

    let deleted = client
        .delete_model(DeleteModelRequest {
            name: "tiny.gguf".into(),
            force: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        deleted.retired_workers,
        std::slice::from_ref(&worker.worker_id)
    );
    assert!(!Path::new(&model.path).exists());
    let gone = client
        .get_model(GetModelRequest {
            name: "tiny.gguf".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
}

/// Writes a crate whose binary `name` serves like a worker: it listens on `--port`.
fn worker_crate(dir: &Path, name: &str, main: &str) -> PathBuf {
    let root = dir.join(name);
    fs::create_dir_all(root.join("src")).unwrap();
    fs::write(
        root.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n"
        ),
    )
    .unwrap();
    fs::write(root.join("src/main.rs"), main).unwrap();
    root
}

const SERVING_MAIN: &str = r#"
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port = args
        .iter()
        .position(|a| a == "--port")
        .and_then(|i| args.get(i + 1))
        .and_then(|p| p.parse::<u16>().ok())
        .expect("--port PORT");
    let _listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind");
    println!("tiny worker on {port}");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}
"#;

#[tokio::test]
async fn build_from_source_installs_a_spawnable_worker() {
    let hive = TestHive::start();
    let sources = tempfile::tempdir().unwrap();
    let root = worker_crate(sources.path(), "tiny-worker", SERVING_MAIN);
    let model = sources.path().join("model.gguf");
    fs::write(&model, b"GGUF").unwrap();
    let mut client = hive.client().await;

    let binary = client
        .build_worker(BuildWorkerRequest {
            job_id: "job-build".into(),
            name: "tiny-worker".into(),
            source: root.display().to_string(),
            profile: "dev".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .binary
        .unwrap();

    assert_eq!(binary.layout(), BinaryLayout::Directory);
    assert_eq!(binary.source, root.display().to_string());
    assert!(binary.executable);
    assert!(
        !root.join("target").exists(),
        "the build stays out of the source tree"
    );
    let output: Vec<String> = events(&mut client, "job-build")
        .await
        .into_iter()
        .filter(|e| e.action == "build.output")
        .map(|e| e.message)
        .collect();
    assert!(
        output
            .iter()
            .any(|line| line.contains("Compiling tiny-worker")),
        "{output:?}"
    );
    assert!(leftovers(&hive.catalog_dir()).is_empty());
    assert!(!hive.state_dir().join("builds/job-build").exists());

    let worker = client
        .spawn_worker(SpawnWorkerRequest {
            binary: "tiny-worker".into(),
            model: model.display().to_string(),
            device: "cpu".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .worker
        .unwrap();
    assert_eq!(worker.state(), ActiveWorkerState::Ready);
    client
        .retire_active_worker(rbee_proto::v1::RetireActiveWorkerRequest {
            worker_id: worker.worker_id,
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn failing_build_reports_compiler_output() {
    let hive = TestHive::start();
    let sources = tempfile::tempdir().unwrap();
    let root = worker_crate(
        sources.path(),
        "broken",
        "fn main() { let x: u8 = \"text\"; }\n",
    );
    let mut client = hive.client().await;

    let status = client
        .build_worker(BuildWorkerRequest {
            name: "broken".into(),
            source: root.display().to_string(),
            profile: "dev".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().starts_with("cargo build failed"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("mismatched types"),
        "{}",
        status.message()
    );
    let binaries = client
        .list_worker_binaries(ListWorkerBinariesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .binaries;
    assert!(binaries.is_empty());
    assert!(leftovers(&hive.catalog_dir()).is_empty());
}
