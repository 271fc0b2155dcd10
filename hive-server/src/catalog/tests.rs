use std::{fs, os::unix::fs::PermissionsExt, path::Path, time::Duration};

use super::*;

fn write_executable(path: &Path, contents: &[u8]) {
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

fn name(s: &str) -> WorkerName {
    WorkerName::parse(s).unwrap()
}

#[test]
fn lists_files_folders_and_links_alike() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    write_executable(&dir.path().join("plain"), b"#!/bin/sh\nexit 0\n");
    fs::create_dir(dir.path().join("installed")).unwrap();
    write_executable(&dir.path().join("installed/bin"), b"#!/bin/sh\n");
    fs::write(
        dir.path().join("installed/manifest.json"),
        r#"{"binary": "bin", "version": "1.2.0", "source": "https://example.invalid/w"}"#,
    )
    .unwrap();
    write_executable(&outside.path().join("target"), b"\x7fELF");
    std::os::unix::fs::symlink(outside.path().join("target"), dir.path().join("linked")).unwrap();
    fs::write(dir.path().join(".partial-download"), b"x").unwrap();
    fs::create_dir(dir.path().join("empty-folder")).unwrap();

    let catalog = Catalog::open(dir.path()).unwrap();
    let binaries = catalog.list().unwrap();
    let names: Vec<_> = binaries.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["empty-folder", "installed", "linked", "plain"]);

    assert!(binaries[0].problem.is_some());
    let installed = &binaries[1];
    assert_eq!(installed.layout, Layout::Directory);
    assert_eq!(installed.version.as_deref(), Some("1.2.0"));
    assert_eq!(installed.path, catalog.dir().join("installed/bin"));
    assert_eq!(installed.platform, "script");

    let linked = &binaries[2];
    assert_eq!(linked.layout, Layout::Symlink);
    assert_eq!(
        linked.symlink_target.as_deref(),
        Some(outside.path().join("target").as_path())
    );
    assert_eq!(linked.size_bytes, 4);

    let plain = &binaries[3];
    assert_eq!(plain.layout, Layout::File);
    assert!(plain.executable);
    assert_eq!(plain.size_bytes, 17);
    assert_eq!(
        plain.sha256,
        "306c6ca7407560340797866e077e053627ad409277d1b9da58106fce4cf717cb"
    );
}

#[test]
fn file_in_place_of_catalog_dir() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("catalog");
    fs::write(&file, b"not a folder").unwrap();

    let error = Catalog::open(&file).unwrap_err();

    assert_eq!(
        error.to_string(),
        format!(
            "failed to create {}: it exists and is not a directory",
            file.display()
        )
    );
    assert_eq!(fs::read(&file).unwrap(), b"not a folder");
}

#[test]
fn removing_a_link_keeps_its_target() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("precious");
    write_executable(&target, b"keep me");
    std::os::unix::fs::symlink(&target, dir.path().join("link")).unwrap();

    let catalog = Catalog::open(dir.path()).unwrap();
    let removed = catalog.remove(&name("link")).unwrap();

    assert_eq!(removed.layout, Layout::Symlink);
    assert!(!dir.path().join("link").exists());
    assert_eq!(fs::read(&target).unwrap(), b"keep me");
}

#[test]
fn removing_a_folder_leaves_nothing_behind_and_spares_linked_files() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let precious = outside.path().join("precious");
    fs::write(&precious, b"keep me").unwrap();
    fs::create_dir(dir.path().join("w")).unwrap();
    write_executable(&dir.path().join("w/w"), b"#!/bin/sh\n");
    std::os::unix::fs::symlink(outside.path(), dir.path().join("w/escape")).unwrap();

    let catalog = Catalog::open(dir.path()).unwrap();
    catalog.remove(&name("w")).unwrap();

    let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "catalog still holds {left:?}");
    assert_eq!(fs::read(&precious).unwrap(), b"keep me");
}

#[test]
fn unknown_entry_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    let err = catalog.get(&name("nope")).unwrap_err();
    assert!(matches!(err, CatalogError::NotFound { .. }), "{err:?}");
    let err = catalog.remove(&name("nope")).unwrap_err();
    assert!(matches!(err, CatalogError::NotFound { .. }), "{err:?}");
}

#[test]
fn manifest_binary_may_not_leave_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    write_executable(&outside.path().join("w"), b"#!/bin/sh\n");
    fs::create_dir(dir.path().join("dots")).unwrap();
    fs::write(
        dir.path().join("dots/manifest.json"),
        r#"{"binary": "../other"}"#,
    )
    .unwrap();
    fs::create_dir(dir.path().join("linked")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("linked/sub")).unwrap();
    fs::write(
        dir.path().join("linked/manifest.json"),
        r#"{"binary": "sub/w"}"#,
    )
    .unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();

    let dots = catalog.get(&name("dots")).unwrap();
    let problem = dots.problem.unwrap();
    assert!(
        problem.contains("`binary` must be a relative path inside the folder"),
        "{problem}"
    );
    let linked = catalog.get(&name("linked")).unwrap();
    let problem = linked.problem.unwrap();
    assert!(problem.ends_with("outside the entry folder"), "{problem}");
    let err = catalog.get_usable(&name("linked")).unwrap_err();
    assert!(matches!(err, CatalogError::Unusable { .. }), "{err:?}");
}

#[test]
fn broken_entries_are_listed_and_removable() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::os::unix::fs::symlink("/dev/zero", root.join("zero")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("dirlink")).unwrap();
    std::os::unix::fs::symlink(root.join("loop"), root.join("loop")).unwrap();
    std::os::unix::fs::symlink("/nonexistent", root.join("dangling")).unwrap();
    nix::unistd::mkfifo(&outside.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    std::os::unix::fs::symlink(outside.path().join("fifo"), root.join("fifo")).unwrap();
    fs::create_dir(root.join("typo")).unwrap();
    fs::write(root.join("typo/manifest.json"), "{not json").unwrap();
    fs::create_dir(root.join("empty")).unwrap();
    let catalog = Catalog::open(root).unwrap();

    let binaries = catalog.list().unwrap();
    let listed: Vec<(&str, bool)> = binaries
        .iter()
        .map(|b| (b.name.as_str(), b.problem.is_some()))
        .collect();
    assert_eq!(
        listed,
        [
            ("dangling", true),
            ("dirlink", true),
            ("empty", true),
            ("fifo", true),
            ("loop", true),
            ("typo", true),
            ("zero", true),
        ]
    );
    assert_eq!(
        binaries[6].problem.as_deref(),
        Some("link target /dev/zero is not a regular file")
    );

    for entry in [
        "dangling", "dirlink", "empty", "fifo", "loop", "typo", "zero",
    ] {
        catalog.remove(&name(entry)).unwrap();
    }
    assert!(fs::read_dir(root).unwrap().next().is_none());
    assert!(outside.path().join("fifo").exists());
}

#[test]
fn unknown_manifest_fields_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("w")).unwrap();
    write_executable(&dir.path().join("w/w"), b"#!/bin/sh\n");
    fs::write(
        dir.path().join("w/manifest.json"),
        r#"{"description": "newer field"}"#,
    )
    .unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    assert_eq!(catalog.get(&name("w")).unwrap().problem, None);
}

#[test]
fn worker_name_of_executable_paths() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    let root = catalog.dir();

    assert_eq!(catalog.worker_name_of(&root.join("w")), Some(name("w")));
    assert_eq!(
        catalog.worker_name_of(&root.join("f/bin/x")),
        Some(name("f"))
    );
    let deleted = format!("{} (deleted)", root.join("w").display());
    assert_eq!(catalog.worker_name_of(Path::new(&deleted)), Some(name("w")));
    assert_eq!(
        catalog.worker_name_of(&root.join(".rbee-trash-w-1/w")),
        None
    );
    assert_eq!(catalog.worker_name_of(Path::new("/usr/bin/sleep")), None);
    assert_eq!(catalog.worker_name_of(root), None);
}

#[test]
fn cached_reads_never_hash() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open_with_settle_time(dir.path(), Duration::ZERO).unwrap();
    assert_eq!(catalog.list_cached().unwrap().map(|b| b.len()), Some(0));
    assert!(matches!(
        catalog.get_cached(&name("absent")),
        Err(CatalogError::NotFound { .. })
    ));

    write_executable(&dir.path().join("fresh"), b"#!/bin/sh\nexit 0\n");
    assert!(catalog.get_cached(&name("fresh")).unwrap().is_none());
    assert!(catalog.list_cached().unwrap().is_none());

    let hashed = catalog.get(&name("fresh")).unwrap();
    let cached = catalog.get_cached(&name("fresh")).unwrap().unwrap();
    assert_eq!(cached.sha256, hashed.sha256);
    assert_eq!(cached.size_bytes, hashed.size_bytes);
    let listed = catalog.list_cached().unwrap().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].sha256, hashed.sha256);

    // A changed file is not served from the cache.
    write_executable(&dir.path().join("fresh"), b"#!/bin/sh\nexit 1\n");
    assert!(catalog.get_cached(&name("fresh")).unwrap().is_none());
}

#[test]
fn rewrite_keeping_size_and_mtime_is_hashed_again() {
    let dir = tempfile::tempdir().unwrap();
    let entry = dir.path().join("same");
    write_executable(&entry, b"#!/bin/sh\n#A\n");
    let catalog = Catalog::open_with_settle_time(dir.path(), Duration::ZERO).unwrap();
    let first = catalog.get(&name("same")).unwrap().sha256;

    // What `cp -p` or `touch -r` leave: new content with the old size and modification time.
    let mtime = fs::metadata(&entry).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(&entry, b"#!/bin/sh\n#B\n").unwrap();
    fs::File::options()
        .write(true)
        .open(&entry)
        .unwrap()
        .set_modified(mtime)
        .unwrap();

    let second = catalog.get(&name("same")).unwrap().sha256;
    assert_ne!(first, second);
    assert_eq!(second, sha256_hex(&mut &b"#!/bin/sh\n#B\n"[..]).unwrap());
}

#[test]
fn platform_follows_rewritten_file() {
    let dir = tempfile::tempdir().unwrap();
    let entry = dir.path().join("shifting");
    write_executable(&entry, b"#!/bin/sh\n");
    let catalog = Catalog::open_with_settle_time(dir.path(), Duration::ZERO).unwrap();
    assert_eq!(catalog.get(&name("shifting")).unwrap().platform, "script");
    let cached = catalog.get_cached(&name("shifting")).unwrap().unwrap();
    assert_eq!(cached.platform, "script");

    let mut elf = [0u8; 64];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2;
    elf[5] = 1;
    elf[18] = 0x3e;
    write_executable(&entry, &elf);

    let uncached = catalog.get_cached(&name("shifting")).unwrap();
    assert!(uncached.is_none(), "served stale facts: {uncached:?}");
    let read = catalog.get(&name("shifting")).unwrap();
    assert_eq!(read.platform, "x86_64-linux");
    assert_eq!(read.size_bytes, 64);
    assert_eq!(read.sha256, sha256_hex(&mut &elf[..]).unwrap());
    let cached = catalog.get_cached(&name("shifting")).unwrap().unwrap();
    assert_eq!(cached.platform, "x86_64-linux");
    assert_eq!(cached.sha256, read.sha256);
}

#[test]
fn reads_see_outside_changes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    assert!(catalog.list().unwrap().is_empty());
    assert!(matches!(
        catalog.get_cached(&name("late")),
        Err(CatalogError::NotFound { .. })
    ));

    for round in 0..50 {
        write_executable(&dir.path().join("late"), b"#!/bin/sh\n");
        let listed: Vec<_> = catalog
            .list()
            .unwrap()
            .iter()
            .map(|b| b.name.to_string())
            .collect();
        assert_eq!(listed, ["late"], "round {round}");
        assert_eq!(catalog.get(&name("late")).unwrap().name.as_str(), "late");

        fs::rename(dir.path().join("late"), dir.path().join("renamed")).unwrap();
        assert!(
            matches!(
                catalog.get_cached(&name("late")),
                Err(CatalogError::NotFound { .. })
            ),
            "round {round}"
        );
        assert_eq!(
            catalog.get(&name("renamed")).unwrap().name.as_str(),
            "renamed"
        );

        fs::remove_file(dir.path().join("renamed")).unwrap();
        assert!(
            catalog.list_cached().unwrap().unwrap().is_empty(),
            "round {round}"
        );
    }
}

#[test]
fn reads_follow_a_catalog_directory_that_was_replaced() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("workers");
    fs::create_dir(&dir).unwrap();
    write_executable(&dir.join("old"), b"#!/bin/sh\n");
    let catalog = Catalog::open(&dir).unwrap();
    assert_eq!(catalog.list().unwrap().len(), 1);

    fs::rename(&dir, root.path().join("moved-away")).unwrap();
    fs::create_dir(&dir).unwrap();
    write_executable(&dir.join("new"), b"#!/bin/sh\n");

    let listed: Vec<_> = catalog
        .list()
        .unwrap()
        .iter()
        .map(|b| b.name.to_string())
        .collect();
    assert_eq!(listed, ["new"]);
    assert!(matches!(
        catalog.get(&name("old")),
        Err(CatalogError::NotFound { .. })
    ));
    write_executable(&dir.join("newer"), b"#!/bin/sh\n");
    assert_eq!(catalog.get(&name("newer")).unwrap().name.as_str(), "newer");
}

#[test]
fn concurrent_reads_see_every_finished_change() {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    const ENTRIES: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let catalog = Arc::new(Catalog::open(dir.path()).unwrap());
    // Number of entries created so far; entry `w-N` exists once this is above N.
    let created = Arc::new(AtomicUsize::new(0));

    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (catalog, created) = (Arc::clone(&catalog), Arc::clone(&created));
            std::thread::spawn(move || {
                let mut checks = 0;
                loop {
                    let count = created.load(Ordering::Acquire);
                    if count > 0 {
                        let newest = name(&format!("w-{}", count - 1));
                        let found = catalog.get_cached(&newest);
                        assert!(
                            !matches!(found, Err(CatalogError::NotFound { .. })),
                            "{newest} was created before the read but not found"
                        );
                        checks += 1;
                    }
                    if count == ENTRIES {
                        return checks;
                    }
                }
            })
        })
        .collect();

    for index in 0..ENTRIES {
        write_executable(&dir.path().join(format!("w-{index}")), b"#!/bin/sh\n");
        created.store(index + 1, Ordering::Release);
    }
    for reader in readers {
        assert!(reader.join().unwrap() > 0);
    }
    assert_eq!(catalog.list().unwrap().len(), ENTRIES);
}

#[test]
fn fresh_file_is_hashed_on_every_read() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    write_executable(&dir.path().join("fresh"), b"#!/bin/sh\n");

    let hashed = catalog.get(&name("fresh")).unwrap();
    assert_eq!(hashed.sha256, sha256_hex(&mut &b"#!/bin/sh\n"[..]).unwrap());
    // Changed within the settle time, so a write may still be under way.
    assert!(catalog.get_cached(&name("fresh")).unwrap().is_none());
    assert!(catalog.list_cached().unwrap().is_none());
}

#[test]
fn settled_listing_follows_changes_and_replaced_parents() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("home/workers");
    fs::create_dir_all(&dir).unwrap();
    write_executable(&dir.join("old"), b"#!/bin/sh\n");
    let catalog = Catalog::open_with_settle_time(&dir, Duration::from_millis(300)).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let names = |catalog: &Catalog| -> Vec<String> {
        let listed = catalog.list().unwrap();
        listed.iter().map(|b| b.name.to_string()).collect()
    };
    assert_eq!(names(&catalog), ["old"]);
    // Served from the kept scan now, so the checks below exercise its validation.
    assert_eq!(names(&catalog), ["old"]);

    write_executable(&dir.join("added"), b"#!/bin/sh\n");
    assert_eq!(names(&catalog), ["added", "old"]);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(names(&catalog), ["added", "old"]);

    // A parent renamed and a new directory at the same path: no change inside the old one.
    fs::rename(root.path().join("home"), root.path().join("home-before")).unwrap();
    fs::create_dir_all(&dir).unwrap();
    write_executable(&dir.join("new"), b"#!/bin/sh\n");
    assert_eq!(names(&catalog), ["new"]);
    assert!(matches!(
        catalog.get(&name("old")),
        Err(CatalogError::NotFound { .. })
    ));
}

#[test]
fn future_modification_time_is_still_cached() {
    let dir = tempfile::tempdir().unwrap();
    let entry = dir.path().join("dated");
    write_executable(&entry, b"#!/bin/sh\n");
    let next_year = std::time::SystemTime::now() + Duration::from_secs(365 * 24 * 3600);
    fs::File::options()
        .write(true)
        .open(&entry)
        .unwrap()
        .set_modified(next_year)
        .unwrap();
    let catalog = Catalog::open_with_settle_time(dir.path(), Duration::from_millis(300)).unwrap();
    std::thread::sleep(Duration::from_millis(400));

    let hashed = catalog.get(&name("dated")).unwrap();
    let cached = catalog.get_cached(&name("dated")).unwrap();
    assert_eq!(cached.map(|b| b.sha256), Some(hashed.sha256));
}
