//! Shared helpers for the benchmarks: locating the built guest, and simple
//! statistics printed as plain text.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

/// `target/guest` of this workspace.
pub fn guest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guest")
}

/// min / median / max of `samples`, in milliseconds.
pub fn summary(samples: &mut [Duration]) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    match samples {
        [] => "no samples".into(),
        _ => format!(
            "min {:.0} ms, median {:.0} ms, max {:.0} ms (n={})",
            ms(samples[0]),
            ms(samples[samples.len() / 2]),
            ms(samples[samples.len() - 1]),
            samples.len()
        ),
    }
}

/// A file's size for the report, or why it has none.
pub fn size_of(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(m) => format!("{:.2} MiB ({} bytes)", m.len() as f64 / 1048576.0, m.len()),
        Err(e) => format!("unavailable ({}: {e})", path.display()),
    }
}
