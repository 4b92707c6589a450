//! Rules of the code map (ARCHITECTURE.md) that the compiler cannot check
//! in a workspace build: cargo turns on `dkl-shared`'s `testing` feature for
//! every crate built together with `dkl-tests`, so production code could
//! reach the engine's internals and still compile there.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Production code (every crate's `src/`) never uses `jobs::testing`: only
/// the runtime claims jobs and writes outcomes.
#[test]
fn production_code_does_not_reach_the_engines_test_door() {
    let mut files = Vec::new();
    for krate in ["shared", "worker", "scheduler", "dklctl"] {
        rust_files(&root().join(krate).join("src"), &mut files);
    }
    let door = root().join("shared/src/jobs/testing.rs");
    let mut offenders = Vec::new();
    for file in files.iter().filter(|f| **f != door) {
        let text = std::fs::read_to_string(file).unwrap();
        // Unit tests inside a module may use it; production code may not.
        let production = text.split("#[cfg(test)]").next().unwrap_or("");
        if production.contains("jobs::testing") || production.contains("testing::work_one") {
            offenders.push(file.display().to_string());
        }
    }
    assert!(
        offenders.is_empty(),
        "production code uses dkl_shared::jobs::testing: {offenders:?}"
    );
}

/// `dkl-shared` (linked by the scheduler and dklctl) carries no network
/// client and no mail code.
#[test]
fn shared_has_no_network_clients() {
    let manifest = std::fs::read_to_string(root().join("shared/Cargo.toml")).unwrap();
    for client in [
        "lettre",
        "async-imap",
        "reqwest",
        "mail-parser",
        "handlebars",
        "hyper",
        "axum",
    ] {
        assert!(
            !manifest.contains(client),
            "shared/Cargo.toml depends on {client}"
        );
    }
}
