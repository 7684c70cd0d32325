//! Policies from files and directories (`--policy PATH`), reloaded when they change.
//!
//! Every `interval` the paths are scanned: a given file is read whatever its name; a directory
//! contributes its `*.yaml`, `*.yml` and `*.json` files (recursively, in name order). A file whose
//! text changed is reloaded once the text is the same on two scans in a row (debounce: an editor
//! writing in steps is read once it is done). [`PolicyStore`] decides what is in force: a new
//! version that does not validate is rejected, its errors are logged, and the previous good
//! version stays. A deleted file's policies are removed. The store may be shared with other
//! sources ([`SharedPolicies`]: in a cluster, the policy objects).
//!
//! Reading and parsing happen on a thread of their own ([`PolicyFiles::start`]), never on the
//! runtime's workers, and outside the store's lock, so a slow or hostile file never stops
//! serving; and each file is held to [`TextLimits`] (size, documents, nesting depth) before it is
//! parsed: a file beyond one is refused unread, with the file and the limit named, and the
//! previous version stays in force. At most the size limit (plus one byte) of a file is read.

use std::{
    collections::BTreeMap,
    io::Read as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use mapsentry_policy::{
    PolicySet, Reload,
    limits::TextLimits,
    store::{StoreError, load_within},
};
use tokio::sync::watch;

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

    /// The files of `roots` (each must exist), into a store shared with other sources, not read
    /// yet ([`Self::start`] reads them).
    pub fn new(roots: Vec<PathBuf>, policies: SharedPolicies) -> Result<Self, PolicyFilesError> {
        for root in &roots {
            std::fs::metadata(root).map_err(|source| PolicyFilesError::Read {
                path: root.clone(),
                source,
            })?;
        }
        Ok(Self {
            roots,
            policies,
            loaded: BTreeMap::new(),
            pending: BTreeMap::new(),
        })
    }

    /// [`Self::open`] into a store shared with other sources.
    pub fn open_into(
        roots: Vec<PathBuf>,
        policies: SharedPolicies,
    ) -> Result<(Self, Scan), PolicyFilesError> {
        let mut files = Self::new(roots, policies)?;
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
            // The slow part, outside the store's lock.
            let (reload, errors) = match load_within(&source, &text, TextLimits::DEFAULT) {
                Ok(outcome) => self.policies.update(|store| {
                    let (reload, errors) = store.reload_loaded(&source, &text, outcome);
                    let changed = !reload.accepted.is_empty() || !reload.removed.is_empty();
                    ((reload, errors), changed)
                }),
                Err(error) => (Reload::default(), vec![error]),
            };
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

    /// Scan every `interval` from now on, on a thread of its own; each change of the shared
    /// store's policies is published on the returned watch. The thread ends when every receiver
    /// is gone. None stands for no policies.
    #[must_use]
    pub fn watch(self, interval: Duration) -> watch::Receiver<Option<Arc<PolicySet>>> {
        let rx = self.policies.subscribe();
        self.spawn(interval, None);
        rx
    }

    /// Read the files for the first time and then scan every `interval`, all on a thread of its
    /// own (a start never waits for the files, and a slow file never holds up the runtime). The
    /// store's agents' set is held back until the first read is done ([`SharedPolicies`]'s
    /// `hold_publishing`), then `publisher` gets it. Returns the policies in force as they change
    /// and, once the first read is done, how many documents it rejected (each logged).
    #[must_use]
    pub fn start(
        self,
        publisher: Option<PolicyPublisher>,
        interval: Duration,
    ) -> (FirstRead, watch::Receiver<Option<Arc<PolicySet>>>) {
        let rx = self.policies.subscribe();
        let (first_read, done) = watch::channel(None);
        self.policies.hold_publishing(1);
        self.spawn(interval, Some((publisher, first_read)));
        (FirstRead(done), rx)
    }

    fn spawn(
        mut self,
        interval: Duration,
        first: Option<(Option<PolicyPublisher>, watch::Sender<Option<usize>>)>,
    ) {
        let span = tracing::info_span!("policy_files");
        let thread = std::thread::Builder::new()
            .name("policy-files".into())
            .spawn(move || {
                let _entered = span.enter();
                if let Some((publisher, first_read)) = first {
                    let first_scan = self.scan_with(false);
                    self.report_first(&first_scan);
                    if let Some(publisher) = publisher {
                        self.policies.set_publisher(publisher);
                    }
                    self.policies.source_synced();
                    first_read.send_replace(Some(first_scan.errors.len()));
                }
                loop {
                    std::thread::sleep(interval);
                    if self.policies.is_closed() {
                        return;
                    }
                    self.scan();
                }
            });
        if let Err(error) = thread {
            tracing::error!(%error, "cannot start the policy files thread: the --policy files are not read");
        }
    }

    fn report_first(&self, scan: &Scan) {
        if self.roots.is_empty() {
            return;
        }
        let policies = self.policies.read(|store| store.ids().len());
        mapsentry_service::status!(
            "{policies} policies in force{}",
            if scan.errors.is_empty() {
                String::new()
            } else {
                format!(" ({} documents rejected, see the log)", scan.errors.len())
            }
        );
        for error in &scan.errors {
            tracing::error!(target: mapsentry_service::STATUS_TARGET, "policy rejected: {error}");
        }
    }
}

/// The first read of the files by [`PolicyFiles::start`].
#[derive(Debug, Clone)]
pub struct FirstRead(watch::Receiver<Option<usize>>);

impl FirstRead {
    /// Resolves once the files were read for the first time, with the number of documents
    /// rejected then (each already logged).
    pub async fn done(mut self) -> usize {
        match self.0.wait_for(Option::is_some).await {
            Ok(rejected) => rejected.unwrap_or(0),
            // The thread never ran (logged): nothing was read, nothing rejected.
            Err(_) => 0,
        }
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
        } else if mapsentry_policy::load::is_policy_file(&path) {
            read_into(&path, out);
        }
    }
}

/// Read `path` into `out`: at most one byte beyond the size limit (a larger file is refused by
/// its length, never read whole).
fn read_into(path: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let limit = TextLimits::DEFAULT.max_bytes as u64 + 1;
    let mut bytes = Vec::new();
    let read = std::fs::File::open(path).and_then(|file| file.take(limit).read_to_end(&mut bytes));
    match read {
        Ok(_) if bytes.len() as u64 >= limit => {
            out.insert(
                path.to_owned(),
                String::from_utf8_lossy(&bytes).into_owned(),
            );
        }
        Ok(_) => match String::from_utf8(bytes) {
            Ok(text) => {
                out.insert(path.to_owned(), text);
            }
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "cannot read policy file: not UTF-8");
            }
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(file = %path.display(), %error, "cannot read policy file"),
    }
}

#[cfg(test)]
pub(crate) mod tests;
