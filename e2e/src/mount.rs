//! Mounts made for a test: removed when dropped.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// A read-only tmpfs (as a state directory under a chart's `readOnlyRootFilesystem`), mounted
/// with the system's `mount` (util-linux, or busybox in the VMs).
#[derive(Debug)]
pub struct ReadOnlyDir {
    path: PathBuf,
}

impl ReadOnlyDir {
    /// Mount it at `<temp dir>/<name>`.
    ///
    /// # Panics
    /// When it cannot (needs root), with the reason.
    #[must_use]
    pub fn mount(name: &str) -> Self {
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating the mount point {}: {e}", path.display()));
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro,size=64k", "tmpfs"])
            .arg(&path)
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mounting a read-only tmpfs at {} (needs root)",
            path.display()
        );
        Self { path }
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ReadOnlyDir {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
        let _ = std::fs::remove_dir(&self.path);
    }
}
