//! Where the tests find a real kubectl: `$KUBECTL`, else the one `scripts/ci-tools.sh` installs
//! in `.ci/tools/bin` (kubectl 1.33), else one on PATH. CI installs it before the tests, so there
//! (`CI` set) a missing kubectl fails the test; elsewhere the test says so and skips.

use std::path::{Path, PathBuf};

pub fn find_kubectl() -> Option<PathBuf> {
    if let Some(explicit) = std::env::var_os("KUBECTL") {
        return Some(PathBuf::from(explicit));
    }
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/tools/bin/kubectl");
    if installed.is_file() {
        return Some(installed);
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join("kubectl"))
        .find(|p| p.is_file())
}

/// kubectl, or None to skip (outside CI only).
pub fn kubectl_or_skip(what: &str) -> Option<PathBuf> {
    let found = find_kubectl();
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install kubectl (scripts/ci-tools.sh) before the tests"
        );
        eprintln!("no kubectl found; skipping {what} (run scripts/ci-tools.sh)");
    }
    found
}
