//! Outside tools some tests need. A missing tool skips its test with one
//! clear line on the terminal; under CI (`CI` set) nothing may be skipped, so
//! a missing tool fails the test instead.

use std::io::Write;
use std::path::PathBuf;

/// Where `tool` is on `PATH`, if anywhere.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// Whether `tool` (from Debian package `package`) is installed. When it is
/// not, says `skipped: TOOL not installed` (written past the test harness's
/// capture, so it shows) and returns false; under CI it panics instead.
pub fn installed(tool: &str, package: &str) -> bool {
    which(tool).is_some() || missing(tool, package)
}

/// Says `skipped: WHAT not installed` (or, under CI, panics); false.
pub fn missing(tool: &str, package: &str) -> bool {
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("{tool} not installed (Debian package `{package}`): under CI no test may be skipped; .ci/run installs it");
    }
    let _ = writeln!(
        std::io::stderr(),
        "skipped: {tool} not installed (Debian package `{package}`)"
    );
    false
}

/// Says `skipped: WHAT not available here: WHY` for something the machine
/// lacks that no package brings (or, under CI, panics); false.
pub fn unavailable(what: &str, why: &str) -> bool {
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("{what} not available here ({why}): under CI no test may be skipped");
    }
    let _ = writeln!(
        std::io::stderr(),
        "skipped: {what} not available here: {why}"
    );
    false
}
