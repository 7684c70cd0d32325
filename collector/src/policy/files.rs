//! Policies from files and directories (`--policy PATH`), reloaded when they change.
//!
//! Every `interval` the paths are scanned: a given file is read whatever its name; a directory
//! contributes its `*.yaml`, `*.yml` and `*.json` files (recursively, in name order). A file whose
//! text changed is reloaded once the text is the same on two scans in a row (debounce: an editor
//! writing in steps is read once it is done). [`PolicyStore`] decides what is in force: a new
//! version that does not validate is rejected, its errors are logged, and the previous good
//! version stays. A deleted file's policies are removed. The store may be shared with other
//! sources ([`SharedPolicies`]: in a cluster, the policy objects).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use mapsentry_policy::{PolicySet, store::StoreError};
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::{PolicyPublisher, policy::store::SharedPolicies};

/// Default time between scans.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum PolicyFilesError {
    #[error("--policy {path}: cannot read it")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What one scan changed.
#[derive(Debug, Default)]
pub struct Scan {
    /// Whether the policies in force changed.
    pub changed: bool,
    /// Problems of the documents reloaded (each already logged).
    pub errors: Vec<StoreError>,
}

/// The policy files and what they define.
#[derive(Debug)]
pub struct PolicyFiles {
    roots: Vec<PathBuf>,
    policies: SharedPolicies,
    /// The text in force per file.
    loaded: BTreeMap<PathBuf, String>,
    /// Text seen once, waiting to be seen again unchanged.
    pending: BTreeMap<PathBuf, String>,
}

impl PolicyFiles {
    /// Read `roots` for the first time (no debounce). Each root must exist; documents that do not
    /// validate are logged and left out.
    pub fn open(roots: Vec<PathBuf>) -> Result<(Self, Scan), PolicyFilesError> {
        Self::open_into(roots, SharedPolicies::new())
    }

    /// [`Self::open`] into a store shared with other sources.
    pub fn open_into(
        roots: Vec<PathBuf>,
        policies: SharedPolicies,
    ) -> Result<(Self, Scan), PolicyFilesError> {
        for root in &roots {
            std::fs::metadata(root).map_err(|source| PolicyFilesError::Read {
                path: root.clone(),
                source,
            })?;
        }
        let mut files = Self {
            roots,
            policies,
            loaded: BTreeMap::new(),
            pending: BTreeMap::new(),
        };
        let scan = files.scan_with(false);
        Ok((files, scan))
    }

    /// Look for changes; reload files whose new text was seen on the previous scan too.
    pub fn scan(&mut self) -> Scan {
        self.scan_with(true)
    }

    fn scan_with(&mut self, debounce: bool) -> Scan {
        let mut scan = Scan::default();
        let current = self.read_all();
        let gone: Vec<PathBuf> = self
            .loaded
            .keys()
            .filter(|p| !current.contains_key(*p))
            .cloned()
            .collect();
        for path in gone {
            self.loaded.remove(&path);
            let source = path.display().to_string();
            let removed = self.policies.update(|store| {
                let removed = store.remove_source(&source);
                let changed = !removed.is_empty();
                (removed, changed)
            });
            tracing::info!(file = %path.display(), ?removed, "policy file gone; its policies are removed");
            scan.changed |= !removed.is_empty();
        }
        self.pending.retain(|p, _| current.contains_key(p));
        for (path, text) in current {
            if self.loaded.get(&path) == Some(&text) {
                self.pending.remove(&path);
                continue;
            }
            if debounce && self.pending.get(&path) != Some(&text) {
                self.pending.insert(path, text);
                continue;
            }
            self.pending.remove(&path);
            let source = path.display().to_string();
            let (reload, errors) = self.policies.update(|store| {
                let (reload, errors) = store.reload_text(&source, &text);
                let changed = !reload.accepted.is_empty() || !reload.removed.is_empty();
                ((reload, errors), changed)
            });
            for error in &errors {
                tracing::error!(%error, "policy rejected; the previous good version (if any) stays in force");
            }
            if !reload.accepted.is_empty() || !reload.removed.is_empty() || !reload.kept.is_empty()
            {
                tracing::info!(
                    file = %source,
                    accepted = ?reload.accepted,
                    kept = ?reload.kept,
                    removed = ?reload.removed,
                    "policies reloaded"
                );
            }
            scan.changed |= !reload.accepted.is_empty() || !reload.removed.is_empty();
            scan.errors.extend(errors);
            self.loaded.insert(path, text);
        }
        scan
    }

    /// The policies in force (of every source of the shared store).
    #[must_use]
    pub fn policies(&self) -> &SharedPolicies {
        &self.policies
    }

    /// The policies in force, ready to evaluate. (The store refuses a second definition of a
    /// policy, so this is None only if that rule were broken; the error is logged.)
    #[must_use]
    pub fn policy_set(&self) -> Option<PolicySet> {
        self.policies.policy_set()
    }

    /// Every policy file now under the roots, with its text. Unreadable ones are logged and
    /// count as absent.
    fn read_all(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        for root in &self.roots {
            if root.is_dir() {
                collect_dir(root, &mut out);
            } else {
                read_into(root, &mut out);
            }
        }
        out
    }

    /// Publish the enforce-mode policies to agents through `publisher`: now, and after every
    /// scan that changed the policies in force.
    /// (Of the whole shared store.)
    #[must_use]
    pub fn with_publisher(self, publisher: PolicyPublisher) -> Self {
        self.policies.set_publisher(publisher);
        self
    }

    /// Scan every `interval` from now on; each change of the shared store's policies is
    /// published on the returned watch. The task ends when every receiver is gone.
    /// None stands for no policies.
    pub fn watch(mut self, interval: Duration) -> watch::Receiver<Option<Arc<PolicySet>>> {
        let rx = self.policies.subscribe();
        tokio::spawn(
            async move {
                let mut ticks = tokio::time::interval(interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let policies = self.policies.clone();
                loop {
                    tokio::select! {
                        _ = ticks.tick() => {}
                        () = policies.closed() => return,
                    }
                    self.scan();
                }
            }
            .instrument(tracing::info_span!("policy_files")),
        );
        rx
    }
}

fn collect_dir(dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "cannot list policy directory");
            return;
        }
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            collect_dir(&path, out);
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            read_into(&path, out);
        }
    }
}

fn read_into(path: &Path, out: &mut BTreeMap<PathBuf, String>) {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            out.insert(path.to_owned(), text);
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(file = %path.display(), %error, "cannot read policy file"),
    }
}

#[cfg(test)]
pub(crate) mod tests;
