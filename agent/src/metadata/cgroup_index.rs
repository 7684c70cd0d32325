//! cgroup id -> cgroup path (and what the path says about its owner), for the cgroup v2
//! hierarchy at `/sys/fs/cgroup` (unified hosts) or `/sys/fs/cgroup/unified` (hybrid hosts).
//!
//! The id is the cgroup directory's inode number, which is what `bpf_get_current_cgroup_id`
//! returns. The index is filled by one walk when opened and then kept current incrementally by
//! [`CgroupIndex::watch`]: one inotify watch per cgroup directory, a new directory is indexed
//! (with its subtree) when its `IN_CREATE` arrives, a removed one dropped on `IN_DELETE`. A lookup
//! that misses may trigger a rescan ([`CgroupIndex::resolve`]), at most one per
//! `min_rescan_interval`, which covers a lost inotify queue or a watch limit reached; there is
//! never a rescan per event. Removed cgroups are remembered for a while
//! ([`CgroupIndex::recently_removed`], bounded in count and age): a container that ran for a few
//! milliseconds is gone before the kubelet reports it, and its events still need its path.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    ffi::OsStr,
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use tracing::Instrument;

use super::cgroup_path::{self, CgroupOwner};

/// `statfs(2)` magic of cgroup2.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Where cgroup2 is mounted: unified hosts first, then hybrid hosts.
pub const CGROUP2_MOUNTS: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];

/// Default bound on rescans triggered by lookup misses.
pub const DEFAULT_MIN_RESCAN_INTERVAL: Duration = Duration::from_secs(1);
/// How long a removed cgroup is remembered.
pub const REMOVED_KEPT_FOR: Duration = Duration::from_secs(30);
/// Most removed cgroups remembered at once; past it the oldest are forgotten.
pub const REMOVED_KEPT_MAX: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no cgroup2 file system mounted at {tried:?}")]
    NoCgroup2 { tried: Vec<PathBuf> },
    #[error("{path} is not a cgroup2 mount")]
    NotCgroup2 { path: PathBuf },
    #[error("cannot read the cgroup directory {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up inotify on the cgroup hierarchy {path}: {source}")]
    Inotify {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One indexed cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    /// The cgroup id (directory inode).
    pub id: u64,
    /// Path relative to the hierarchy root, starting with `/` (`/` for the root itself).
    pub path: String,
    /// What the path says about its owner, parsed once when indexed.
    pub owner: CgroupOwner,
}

/// Counters of the index's upkeep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Cgroups currently indexed.
    pub cgroups: usize,
    /// Full walks (the opening one, queue overflows, lookup misses).
    pub rescans: u64,
    /// Lookups that missed even after any rescan they were allowed.
    pub misses: u64,
    /// Directories added from inotify events.
    pub added: u64,
    /// Directories removed from inotify events.
    pub removed: u64,
}

/// The index; cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct CgroupIndex {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    root: PathBuf,
    entries: RwLock<Entries>,
    min_rescan_interval: Duration,
    last_rescan: Mutex<Option<Instant>>,
    rescans: AtomicU64,
    misses: AtomicU64,
    added: AtomicU64,
    removed: AtomicU64,
}

#[derive(Debug, Default)]
struct Entries {
    by_id: HashMap<u64, Arc<Cgroup>>,
    by_path: HashMap<String, u64>,
    /// Cgroups removed lately, by id, and their removal order (when, id), oldest first.
    removed: HashMap<u64, Arc<Cgroup>>,
    removal_order: VecDeque<(Instant, u64)>,
}

impl Entries {
    fn insert(&mut self, cgroup: Cgroup) {
        // A path reused by a new directory, or an id reused for a new path: forget the old pair.
        if let Some(old_id) = self.by_path.remove(&cgroup.path) {
            self.by_id.remove(&old_id);
        }
        self.remove_id(cgroup.id);
        self.removed.remove(&cgroup.id);
        self.by_path.insert(cgroup.path.clone(), cgroup.id);
        self.by_id.insert(cgroup.id, Arc::new(cgroup));
    }

    fn remove_id(&mut self, id: u64) {
        if let Some(old) = self.by_id.remove(&id) {
            if self.by_path.get(&old.path) == Some(&id) {
                self.by_path.remove(&old.path);
            }
            self.remember_removed(old);
        }
    }

    fn remember_removed(&mut self, cgroup: Arc<Cgroup>) {
        let now = Instant::now();
        self.removal_order.push_back((now, cgroup.id));
        self.removed.insert(cgroup.id, cgroup);
        while let Some(&(at, id)) = self.removal_order.front() {
            if now.duration_since(at) <= REMOVED_KEPT_FOR && self.removed.len() <= REMOVED_KEPT_MAX
            {
                break;
            }
            self.removal_order.pop_front();
            // An id removed twice: only its latest removal forgets it.
            if !self.removal_order.iter().any(|&(_, other)| other == id) {
                self.removed.remove(&id);
            }
        }
    }

    /// Remove `path` and everything under it; returns how many.
    fn remove_subtree(&mut self, path: &str) -> u64 {
        let prefix = if path == "/" {
            "/".to_owned()
        } else {
            format!("{path}/")
        };
        let gone: Vec<String> = self
            .by_path
            .keys()
            .filter(|p| *p == path || p.starts_with(&prefix))
            .cloned()
            .collect();
        for p in &gone {
            if let Some(id) = self.by_path.remove(p)
                && let Some(old) = self.by_id.remove(&id)
            {
                self.remember_removed(old);
            }
        }
        gone.len() as u64
    }
}

impl CgroupIndex {
    /// Find the cgroup2 mount (unified, then hybrid) and index it.
    pub fn open_default() -> Result<Self> {
        let root = find_cgroup2_root()?;
        Self::open(root, DEFAULT_MIN_RESCAN_INTERVAL)
    }

    /// Index the cgroup2 hierarchy mounted at `root`.
    pub fn open(root: impl Into<PathBuf>, min_rescan_interval: Duration) -> Result<Self> {
        let root = root.into();
        if !is_cgroup2(&root) {
            return Err(Error::NotCgroup2 { path: root });
        }
        let index = Self {
            shared: Arc::new(Shared {
                root,
                entries: RwLock::default(),
                min_rescan_interval,
                last_rescan: Mutex::new(None),
                rescans: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                added: AtomicU64::new(0),
                removed: AtomicU64::new(0),
            }),
        };
        index.rescan()?;
        Ok(index)
    }

    /// The cgroup2 mount point this index covers.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// The cgroup with this id, if indexed. No I/O.
    #[must_use]
    pub fn get(&self, id: u64) -> Option<Arc<Cgroup>> {
        self.shared
            .entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_id
            .get(&id)
            .cloned()
    }

    /// The cgroup with this id if it was removed within [`REMOVED_KEPT_FOR`] (and is not one of
    /// more than [`REMOVED_KEPT_MAX`] removed since). No I/O.
    #[must_use]
    pub fn recently_removed(&self, id: u64) -> Option<Arc<Cgroup>> {
        self.shared
            .entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .removed
            .get(&id)
            .cloned()
    }

    /// The cgroup with this id; on a miss, rescan the hierarchy if the last rescan is older than
    /// the minimum interval, then look again. Misses are counted.
    pub fn resolve(&self, id: u64) -> Option<Arc<Cgroup>> {
        if let Some(found) = self.get(id) {
            return Some(found);
        }
        if self.rescan_allowed() {
            if let Err(error) = self.rescan() {
                tracing::warn!(%error, "cgroup rescan after a lookup miss failed");
            }
            if let Some(found) = self.get(id) {
                return Some(found);
            }
        }
        self.shared.misses.fetch_add(1, Ordering::Relaxed);
        None
    }

    #[must_use]
    pub fn stats(&self) -> IndexStats {
        let s = &self.shared;
        IndexStats {
            cgroups: s
                .entries
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .by_id
                .len(),
            rescans: s.rescans.load(Ordering::Relaxed),
            misses: s.misses.load(Ordering::Relaxed),
            added: s.added.load(Ordering::Relaxed),
            removed: s.removed.load(Ordering::Relaxed),
        }
    }

    fn rescan_allowed(&self) -> bool {
        let mut last = self
            .shared
            .last_rescan
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match *last {
            Some(at) if now.duration_since(at) < self.shared.min_rescan_interval => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }

    /// Walk the whole hierarchy: add what is missing, drop what was indexed before the walk and
    /// is gone (entries added concurrently by the watcher are kept).
    pub fn rescan(&self) -> Result<()> {
        let before: HashSet<u64> = {
            let entries = self
                .shared
                .entries
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            entries.by_id.keys().copied().collect()
        };
        let mut found = Vec::new();
        walk(&self.shared.root, "/", &mut |dir, rel| {
            found.push((rel.to_owned(), dir_id(dir)?));
            Ok(())
        })?;
        let seen: HashSet<u64> = found.iter().map(|(_, id)| *id).collect();
        let mut entries = self
            .shared
            .entries
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for (path, id) in found {
            if entries.by_id.get(&id).is_none_or(|c| c.path != path) {
                entries.insert(Cgroup {
                    id,
                    owner: cgroup_path::parse(&path),
                    path,
                });
            }
        }
        for id in before.difference(&seen) {
            entries.remove_id(*id);
        }
        drop(entries);
        self.shared.rescans.fetch_add(1, Ordering::Relaxed);
        *self
            .shared
            .last_rescan
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        Ok(())
    }

    /// Keep the index current from inotify events until the returned handle is dropped.
    /// Must run inside a tokio runtime.
    pub fn watch(&self) -> Result<Watcher> {
        let root = self.shared.root.clone();
        let inotify_error = |source| Error::Inotify {
            path: root.clone(),
            source,
        };
        let inotify = Inotify::init().map_err(inotify_error)?;
        let stream = inotify
            .into_event_stream(vec![0u8; 64 * 1024])
            .map_err(inotify_error)?;
        let mut state = WatchState {
            index: self.clone(),
            watches: stream.watches(),
            dirs: HashMap::new(),
            limited: false,
        };
        // Watches first, then the walk under them: a directory made in between is still seen.
        state.add_subtree("/");
        let task = tokio::spawn(state.run(stream).in_current_span());
        Ok(Watcher { task })
    }
}

/// The inotify upkeep task; stops when dropped.
#[derive(Debug)]
pub struct Watcher {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct WatchState {
    index: CgroupIndex,
    watches: Watches,
    dirs: HashMap<WatchDescriptor, String>,
    /// The inotify watch limit was hit: lookups rely on rescans for what is not watched.
    limited: bool,
}

const DIR_EVENTS: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::ONLYDIR)
    .union(WatchMask::DONT_FOLLOW);

impl WatchState {
    async fn run(mut self, mut stream: inotify::EventStream<Vec<u8>>) {
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(event) => event,
                Err(error) => {
                    tracing::warn!(%error, "reading cgroup inotify events failed; index updates stop");
                    return;
                }
            };
            if event.mask.contains(EventMask::Q_OVERFLOW) {
                tracing::warn!("cgroup inotify queue overflowed; rescanning");
                self.add_subtree("/");
                continue;
            }
            if event.mask.contains(EventMask::IGNORED) {
                self.dirs.remove(&event.wd);
                continue;
            }
            let (Some(parent), Some(name)) = (self.dirs.get(&event.wd), event.name.as_deref())
            else {
                continue;
            };
            if !event.mask.contains(EventMask::ISDIR) {
                continue;
            }
            let path = join(parent, name);
            if event
                .mask
                .intersects(EventMask::CREATE | EventMask::MOVED_TO)
            {
                self.add_subtree(&path);
            } else if event
                .mask
                .intersects(EventMask::DELETE | EventMask::MOVED_FROM)
            {
                let mut entries = self
                    .index
                    .shared
                    .entries
                    .write()
                    .unwrap_or_else(PoisonError::into_inner);
                let removed = entries.remove_subtree(&path);
                drop(entries);
                self.index
                    .shared
                    .removed
                    .fetch_add(removed, Ordering::Relaxed);
            }
        }
    }

    /// Watch and index `rel` and every directory under it.
    fn add_subtree(&mut self, rel: &str) {
        let root = self.index.shared.root.clone();
        let start = if rel == "/" {
            root.clone()
        } else {
            root.join(rel.trim_start_matches('/'))
        };
        let mut added = Vec::new();
        let walked = walk(&start, rel, &mut |dir, rel| {
            match self.watches.add(dir, DIR_EVENTS) {
                Ok(wd) => {
                    self.dirs.insert(wd, rel.to_owned());
                }
                Err(error) if error.raw_os_error() == Some(28) => {
                    if !self.limited {
                        tracing::warn!(
                            "inotify watch limit reached; new cgroups below unwatched ones are found by rescans"
                        );
                        self.limited = true;
                    }
                }
                Err(error) => return Err(error),
            }
            added.push(Cgroup {
                id: dir_id(dir)?,
                path: rel.to_owned(),
                owner: cgroup_path::parse(rel),
            });
            Ok(())
        });
        if let Err(error) = walked {
            tracing::debug!(%error, path = rel, "indexing a new cgroup subtree");
        }
        let count = added.len() as u64;
        let mut entries = self
            .index
            .shared
            .entries
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for cgroup in added {
            entries.insert(cgroup);
        }
        drop(entries);
        self.index.shared.added.fetch_add(count, Ordering::Relaxed);
    }
}

fn join(parent: &str, name: &OsStr) -> String {
    let name = name.to_string_lossy();
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// Visit `dir` (whose path relative to the root is `rel`) and every directory below it,
/// parents before children. Directories that vanish during the walk are skipped.
fn walk(dir: &Path, rel: &str, visit: &mut dyn FnMut(&Path, &str) -> io::Result<()>) -> Result<()> {
    let read_error = |path: &Path, source| Error::Read {
        path: path.to_owned(),
        source,
    };
    match visit(dir, rel) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(read_error(dir, e)),
    }
    let children = match std::fs::read_dir(dir) {
        Ok(children) => children,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(read_error(dir, e)),
    };
    for child in children {
        let child = child.map_err(|e| read_error(dir, e))?;
        if !child.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let child_rel = join(rel, &child.file_name());
        walk(&child.path(), &child_rel, visit)?;
    }
    Ok(())
}

/// The cgroup id of a cgroup directory: its inode number.
fn dir_id(dir: &Path) -> io::Result<u64> {
    Ok(std::fs::symlink_metadata(dir)?.ino())
}

fn is_cgroup2(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type == CGROUP2_SUPER_MAGIC)
}

/// The first of [`CGROUP2_MOUNTS`] that is a cgroup2 mount.
pub fn find_cgroup2_root() -> Result<PathBuf> {
    CGROUP2_MOUNTS
        .iter()
        .map(PathBuf::from)
        .find(|p| is_cgroup2(p))
        .ok_or_else(|| Error::NoCgroup2 {
            tried: CGROUP2_MOUNTS.iter().map(PathBuf::from).collect(),
        })
}

#[cfg(test)]
mod tests;
