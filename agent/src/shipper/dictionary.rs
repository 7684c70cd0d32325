//! The agent stream's attribution dictionary (protocol V2): each distinct attribution gets an id,
//! events carry the id, and the definition `id -> attribution` is sent once per collector stream,
//! right before the first batch on that stream that refers to it.
//!
//! An entry lives while a buffered batch refers to it (a batch is resent after a reconnect, and
//! the new stream needs the definition again). Unreferenced entries stay as a cache, so the
//! events of the next batch reuse the ids, and go least recently used first once the dictionary
//! holds [`MAX_STREAM_ATTRIBUTIONS`]. When every entry is referenced (that many distinct
//! attributions in the buffer), an event carries its attribution inline, as in protocol V1.

use std::{collections::HashMap, sync::Arc};

use mapsentry_policy::Attribution;
use mapsentry_proto::{MAX_STREAM_ATTRIBUTIONS, convert, v1};

#[derive(Debug)]
struct Entry {
    attribution: Arc<Attribution>,
    /// Buffered batches (sealed or open) that refer to the entry.
    batches: usize,
    /// The open batch that last referred to it (its seq), so each batch counts once.
    last_batch: u64,
    /// The collector stream its definition was last sent on (0: none).
    sent_on: u64,
    /// When it was last referred to (a counter), for the least recently used eviction.
    used: u64,
}

#[derive(Debug)]
pub struct Dictionary {
    entries: HashMap<u64, Entry>,
    ids: HashMap<Arc<Attribution>, u64>,
    /// Per cgroup, the attribution it was last seen with and its id: the per-event path is one
    /// lookup and a pointer comparison (the enricher shares one `Arc` per cgroup). Holding the
    /// `Arc` keeps the pointer from being reused.
    by_cgroup: HashMap<u64, (Arc<Attribution>, u64)>,
    max: usize,
    next_id: u64,
    clock: u64,
    /// The current collector stream: 1 for the first, one more for each new one.
    stream: u64,
    /// Ids defined on the current stream and evicted since, to release on it.
    released: Vec<u64>,
}

impl Default for Dictionary {
    fn default() -> Self {
        Self::new(MAX_STREAM_ATTRIBUTIONS)
    }
}

impl Dictionary {
    /// A dictionary of at most `max` entries (at least 1).
    #[must_use]
    pub fn new(max: usize) -> Self {
        Self {
            entries: HashMap::new(),
            ids: HashMap::new(),
            by_cgroup: HashMap::new(),
            max: max.max(1),
            next_id: 1,
            clock: 0,
            stream: 1,
            released: Vec::new(),
        }
    }

    /// The id of `attribution` (of an event of `cgroup_id`) for the open batch `batch`, and
    /// whether this is the batch's first reference to it (the batch then holds the entry until
    /// [`Dictionary::release`]). `None`: the dictionary is full of referenced entries.
    pub fn refer(
        &mut self,
        attribution: &Arc<Attribution>,
        cgroup_id: u64,
        batch: u64,
    ) -> Option<(u64, bool)> {
        let id = match self.by_cgroup.get(&cgroup_id) {
            Some((seen, id)) if Arc::ptr_eq(seen, attribution) => *id,
            _ => {
                let id = self.id_of(attribution)?;
                if self.by_cgroup.len() >= self.max * 4 {
                    self.by_cgroup.clear();
                }
                self.by_cgroup
                    .insert(cgroup_id, (Arc::clone(attribution), id));
                id
            }
        };
        self.clock += 1;
        let entry = self.entries.get_mut(&id)?;
        entry.used = self.clock;
        let first = entry.last_batch != batch;
        if first {
            entry.last_batch = batch;
            entry.batches += 1;
        }
        Some((id, first))
    }

    /// The id of an equal attribution, or a new one (evicting an unreferenced entry if full).
    fn id_of(&mut self, attribution: &Arc<Attribution>) -> Option<u64> {
        if let Some(id) = self.ids.get(attribution.as_ref()) {
            return Some(*id);
        }
        if self.entries.len() >= self.max {
            self.evict()?;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.ids.insert(Arc::clone(attribution), id);
        self.entries.insert(
            id,
            Entry {
                attribution: Arc::clone(attribution),
                batches: 0,
                last_batch: 0,
                sent_on: 0,
                used: 0,
            },
        );
        Some(id)
    }

    /// Drop the least recently used entry no batch refers to; `None` if there is none.
    fn evict(&mut self) -> Option<()> {
        let (&id, _) = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.batches == 0)
            .min_by_key(|(_, entry)| entry.used)?;
        let entry = self.entries.remove(&id)?;
        self.ids.remove(entry.attribution.as_ref());
        // Its cgroups' shortcuts may name it: start those over.
        self.by_cgroup.clear();
        if entry.sent_on == self.stream {
            self.released.push(id);
        }
        Some(())
    }

    /// A batch that referred to `ids` is gone (acked or dropped).
    pub fn release(&mut self, ids: &[u64]) {
        for id in ids {
            if let Some(entry) = self.entries.get_mut(id) {
                entry.batches = entry.batches.saturating_sub(1);
            }
        }
    }

    /// A new collector stream: nothing is defined on it yet.
    pub fn new_stream(&mut self) {
        self.stream += 1;
        self.released.clear();
    }

    /// The definitions of `ids` not yet sent on the current stream (marked sent now), with the
    /// ids to release on it; `None` when every one was sent.
    pub fn definitions(&mut self, ids: &[u64]) -> Option<v1::Attributions> {
        let definitions: Vec<_> = ids
            .iter()
            .filter_map(|id| {
                let entry = self.entries.get_mut(id)?;
                (entry.sent_on != self.stream).then(|| {
                    entry.sent_on = self.stream;
                    convert::definition(*id, &entry.attribution)
                })
            })
            .collect();
        (!definitions.is_empty()).then(|| v1::Attributions {
            definitions,
            released: std::mem::take(&mut self.released),
        })
    }

    /// Entries held, and how many of them buffered batches refer to.
    #[must_use]
    pub fn held(&self) -> (usize, usize) {
        let referenced = self.entries.values().filter(|e| e.batches > 0).count();
        (self.entries.len(), referenced)
    }
}
