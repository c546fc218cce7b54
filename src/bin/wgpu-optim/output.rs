//! How the commands show what they did: files written whole or not at all, progress bars, and
//! the adapter and sizes as text.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use wgpu_optim::AdapterSummary;
use wgpu_optim::tools::conformance::Status;

/// A file a command writes when its work is done, opened for writing before the work starts,
/// so that a path that cannot be written fails at once. A file it created and never wrote is
/// removed again.
pub(crate) struct Output {
    path: PathBuf,
    file: Option<std::fs::File>,
    created: bool,
    done: bool,
}

impl Output {
    pub(crate) fn open(path: &Path, what: &str) -> Result<Self> {
        let created = std::fs::symlink_metadata(path).is_err();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("cannot write the {what} to {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Some(file),
            created,
            done: false,
        })
    }

    /// Replaces the file's contents.
    pub(crate) fn write(mut self, contents: &[u8]) -> Result<()> {
        let mut file = self.file.take().expect("open until written");
        file.set_len(0)
            .and_then(|()| file.write_all(contents))
            .and_then(|()| file.flush())
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.done = true;
        Ok(())
    }

    /// Someone else has written the file: keep it.
    pub(crate) fn keep(mut self) {
        self.done = true;
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        self.file = None;
        if self.created && !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A progress bar on stderr; indicatif draws nothing when stderr is not a terminal.
pub(crate) fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>11} [{bar:30}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

pub(crate) fn mib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else if bytes >= 1 << 20 {
        format!("{:.0} MiB", bytes as f64 / (1 << 20) as f64)
    } else {
        format!("{bytes} B")
    }
}

/// An adapter and the limits that shape the arenas and the kernels, as a few lines.
pub(crate) fn describe_adapter(a: &AdapterSummary) -> String {
    format!(
        "adapter {}\n  vendor {}, type {}, backend {}\n  driver {} {}\n  limits: storage binding {}, \
         buffer {}, workgroups per dimension {}, storage offset alignment {} B, immediates {} B, \
         timestamps {}, subgroup size {}\n",
        a.name,
        a.vendor,
        a.device_type,
        a.backend,
        a.driver,
        a.driver_info,
        mib(a.max_storage_buffer_binding_size),
        mib(a.max_buffer_size),
        a.max_compute_workgroups_per_dimension,
        a.min_storage_buffer_offset_alignment,
        a.max_immediate_size,
        if a.timestamp_query { "yes" } else { "no" },
        a.subgroup_size
    )
}

pub(crate) fn status_word(status: Status) -> &'static str {
    match status {
        Status::Pass => "pass",
        Status::Fail => "FAIL",
        Status::Unsupported => "unsupported",
    }
}
