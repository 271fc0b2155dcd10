//! Worker catalog over gRPC: listing, metadata, name validation, deletion.

use std::{fs, os::unix::fs::PermissionsExt};

use rbee_proto::v1::{
    BinaryLayout, DeleteWorkerBinaryRequest, GetWorkerBinaryRequest, ListWorkerBinariesRequest,
    StopMethod,
};
use rbee_tests::{TestHive, test_worker_bin};
use tonic::Code;

#[tokio::test]
async fn list_shows_dropped_in_binary_with_metadata() {
    let hive = TestHive::start();
    let path = hive.install(&test_worker_bin(), "llm-worker");
    fs::write(hive.catalog_dir().join("notes.txt"), "not executable").unwrap();
    let mut client = hive.client().await;

    let response = client
        .list_worker_binaries(ListWorkerBinariesRequest::default())
        .await
        .unwrap()
        .into_inner();

    assert!(response.job_id.starts_with("job-"), "{}", response.job_id);
    let names: Vec<_> = response.binaries.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["llm-worker", "notes.txt"]);

    let worker = &response.binaries[0];
    assert_eq!(worker.path, path.display().to_string());
    assert_eq!(worker.layout(), BinaryLayout::File);
    assert_eq!(worker.size_bytes, fs::metadata(&path).unwrap().len());
    assert_eq!(worker.sha256.len(), 64);
    assert!(worker.executable);
    assert_eq!(worker.platform, format!("{}-linux", std::env::consts::ARCH));
    assert!(worker.modified_at.is_some());

    let notes = &response.binaries[1];
    assert!(!notes.executable);
    assert_eq!(notes.platform, "unknown");
}

#[tokio::test]
async fn get_returns_entry_and_echoes_job_id() {
    let hive = TestHive::start();
    hive.install(&test_worker_bin(), "w");
    let mut client = hive.client().await;

    let response = client
        .get_worker_binary(GetWorkerBinaryRequest {
            job_id: "my-job-42".into(),
            name: "w".into(),
        })
        .await
        .unwrap()
        .into_inner();

    assert_eq!(response.job_id, "my-job-42");
    assert_eq!(response.binary.unwrap().name, "w");
}

#[tokio::test]
async fn bad_names_are_invalid_argument() {
    let hive = TestHive::start();
    let mut client = hive.client().await;
    let long = "x".repeat(256);
    let cases = [
        ("", "it is empty"),
        (".", "`.` and `..` are not names"),
        ("..", "`.` and `..` are not names"),
        ("/", "it contains `/`"),
        ("../../etc/passwd", "it contains `/`"),
        ("a\0b", "it contains a NUL byte"),
        ("a\tb", "it contains a control character"),
        (".hidden", "it starts with `.`"),
        (long.as_str(), "it is longer than 255 bytes"),
    ];
    for (name, reason) in cases {
        let get = client
            .get_worker_binary(GetWorkerBinaryRequest {
                job_id: String::new(),
                name: name.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(get.code(), Code::InvalidArgument, "get {name:?}");
        assert!(
            get.message().ends_with(reason),
            "get {name:?}: {}",
            get.message()
        );

        let delete = client
            .delete_worker_binary(DeleteWorkerBinaryRequest {
                name: name.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(delete.code(), Code::InvalidArgument, "delete {name:?}");
    }
}

#[tokio::test]
async fn unknown_name_is_not_found_with_job_id() {
    let hive = TestHive::start();
    let mut client = hive.client().await;

    let status = client
        .get_worker_binary(GetWorkerBinaryRequest {
            job_id: "job-unknown-name".into(),
            name: "nope".into(),
        })
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status
            .message()
            .starts_with("worker binary \"nope\" not found in the catalog at "),
        "{}",
        status.message()
    );
    let job_id = status
        .metadata()
        .get(rbee_proto::JOB_ID_METADATA_KEY)
        .unwrap();
    assert_eq!(job_id.to_str().unwrap(), "job-unknown-name");
}

#[tokio::test]
async fn delete_of_symlink_keeps_target_outside_catalog() {
    let hive = TestHive::start();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("precious-binary");
    fs::write(&target, b"#!/bin/sh\necho keep\n").unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(&target, hive.catalog_dir().join("linked")).unwrap();
    let mut client = hive.client().await;

    let deleted = client
        .delete_worker_binary(DeleteWorkerBinaryRequest {
            name: "linked".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let binary = deleted.binary.unwrap();
    assert_eq!(binary.layout(), BinaryLayout::Symlink);
    assert_eq!(binary.symlink_target, target.display().to_string());
    assert!(fs::symlink_metadata(hive.catalog_dir().join("linked")).is_err());
    assert_eq!(fs::read(&target).unwrap(), b"#!/bin/sh\necho keep\n");
}

#[tokio::test]
async fn delete_of_folder_entry_removes_it_whole() {
    let hive = TestHive::start();
    let folder = hive.catalog_dir().join("installed");
    fs::create_dir(&folder).unwrap();
    fs::copy(test_worker_bin(), folder.join("bin")).unwrap();
    fs::write(
        folder.join("manifest.json"),
        r#"{"binary":"bin","version":"0.3.1"}"#,
    )
    .unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("keep"), b"keep").unwrap();
    std::os::unix::fs::symlink(outside.path(), folder.join("escape")).unwrap();
    let mut client = hive.client().await;

    let got = client
        .get_worker_binary(GetWorkerBinaryRequest {
            job_id: String::new(),
            name: "installed".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .binary
        .unwrap();
    assert_eq!(got.layout(), BinaryLayout::Directory);
    assert_eq!(got.version, "0.3.1");

    client
        .delete_worker_binary(DeleteWorkerBinaryRequest {
            name: "installed".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    let left: Vec<_> = fs::read_dir(hive.catalog_dir()).unwrap().collect();
    assert!(left.is_empty(), "catalog still holds {left:?}");
    assert_eq!(fs::read(outside.path().join("keep")).unwrap(), b"keep");
}

#[tokio::test]
async fn delete_in_use_fails_naming_pids_then_force_stops_them() {
    let hive = TestHive::start();
    let mut first = hive.start_worker("busy", &[]);
    let mut second = hive.start_worker("busy", &["--exit-code", "3"]);
    let mut client = hive.client().await;

    let status = client
        .delete_worker_binary(DeleteWorkerBinaryRequest {
            name: "busy".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::FailedPrecondition);
    let (low, high) = (first.pid().min(second.pid()), first.pid().max(second.pid()));
    assert_eq!(
        status.message(),
        format!(
            "worker binary busy is in use by worker processes {low}, {high}; \
             stop them first or delete with force (rbee: --force)"
        )
    );
    assert!(first.is_running());
    assert!(second.is_running());
    assert!(hive.catalog_dir().join("busy").exists());

    let deleted = client
        .delete_worker_binary(DeleteWorkerBinaryRequest {
            name: "busy".into(),
            force: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let mut stopped: Vec<_> = deleted
        .stopped
        .iter()
        .map(|s| (s.pid, s.method()))
        .collect();
    stopped.sort();
    assert_eq!(
        stopped,
        [
            (low, StopMethod::Terminated),
            (high, StopMethod::Terminated)
        ]
    );
    assert!(!first.is_running());
    assert!(!second.is_running());
    assert_eq!(second.process().wait().code(), Some(3));
    assert_eq!(first.process().wait().code(), Some(0));
    assert!(!hive.catalog_dir().join("busy").exists());
}
