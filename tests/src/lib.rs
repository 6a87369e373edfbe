//! The end-to-end harness: the AWS emulator (moto in server mode, extended by
//! `emulator/moto_natd.py`), an IMDSv2 fixture per instance (`emulator/imds.py`),
//! network namespaces that are always deleted, TCP forwarding into a namespace, and the
//! built binaries.
//!
//! Everything listens on 127.0.0.1 or on addresses inside namespaces the test created.

#![allow(clippy::unwrap_used, missing_docs)]

pub mod app;
pub mod cli;
pub mod dataplane;
pub mod emulator;
pub mod flows;
pub mod lab;
pub mod machine;
pub mod netns;
pub mod vpc_policy;
pub mod world;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The emulator's Python (a venv with moto[server] pinned), from `NATD_TEST_VENV` or
/// `target/venv`, as `tests/run` creates it.
pub fn python() -> PathBuf {
    let venv = std::env::var_os("NATD_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/venv"));
    let py = venv.join("bin/python");
    assert!(
        py.exists(),
        "no emulator venv at {}: run `tests/run` (or .ci/run) once to create it",
        venv.display()
    );
    py
}

/// Path of a workspace binary, built once per test process (a no-op when up to date),
/// unless `NATD_TESTS_BUILT` says the runner built them already (tests/run does: with
/// one process per test, each would take cargo's lock in turn).
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        if std::env::var_os("NATD_TESTS_BUILT").is_some() {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--quiet", "--bins"])
            .current_dir(root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --bins failed");
    });
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    target.join("debug").join(name)
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `limit` with `what`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
