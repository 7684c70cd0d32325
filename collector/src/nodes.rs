//! Per-node bookkeeping of a collector: which batches each agent process (node, boot id) has
//! had stored (deduplication by seq), the counters each node reported and acked, and agent
//! restarts (a new boot id of a known node: a capture gap).
//!
//! Deduplication keeps, per agent process, the seqs stored as ranges ([`StoredSeqs`]): a batch is
//! a duplicate only if its own seq was stored, so batches that arrive out of order (1, 5, 3, 2)
//! are each stored once and acked. What this costs is bounded: at most [`MAX_RANGES`] ranges per
//! process (the oldest range is forgotten beyond: a batch resent from it would be stored again,
//! counted as `uncertain`), at most [`BOOTS_PER_NODE`] processes per node, and at most
//! `max_nodes` nodes; a node whose agent has been away for [`NODE_TTL`] is forgotten, and when
//! the table is full the node away the longest makes room.

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant},
};

use mapsentry_proto::v1::{self, NodeStats};

/// Seq ranges kept per agent process.
pub const MAX_RANGES: usize = 64;
/// Agent processes (boot ids) whose stored seqs are kept per node.
pub const BOOTS_PER_NODE: usize = 4;
/// A node with no agent connected for this long is forgotten.
pub const NODE_TTL: Duration = Duration::from_hours(24);
/// Nodes kept by default (Kubernetes supports clusters of up to 5,000 nodes).
pub const DEFAULT_MAX_NODES: usize = 5000;

/// Hello of an agent stream, as the collector keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentInfo {
    pub node: String,
    pub boot_id: String,
    pub kernel: String,
    pub attach_mode: String,
    /// When the agent process started capturing, ns since the Unix epoch (0: not said).
    pub started_unix_ns: u64,
}

/// The seqs of one agent process that were stored: sorted, disjoint, non-adjacent ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredSeqs {
    ranges: Vec<(u64, u64)>,
    /// Seqs up to this one may have been stored without being in `ranges` (forgotten beyond
    /// [`MAX_RANGES`], or in segments of the retention log deleted before it was read back).
    uncertain_to: u64,
}

impl StoredSeqs {
    /// Whether `seq` was stored.
    #[must_use]
    pub fn contains(&self, seq: u64) -> bool {
        let index = self.ranges.partition_point(|&(_, end)| end < seq);
        self.ranges
            .get(index)
            .is_some_and(|&(start, _)| start <= seq)
    }

    /// Whether `seq` is in the part whose stored seqs are not all known.
    #[must_use]
    pub fn uncertain(&self, seq: u64) -> bool {
        seq <= self.uncertain_to
    }

    /// Record `seq` as stored (merging ranges); beyond [`MAX_RANGES`] the lowest other range is
    /// forgotten.
    pub fn insert(&mut self, seq: u64) {
        let index = self
            .ranges
            .partition_point(|&(_, end)| end.saturating_add(1) < seq);
        match self.ranges.get_mut(index) {
            Some(range) if range.0 <= seq && seq <= range.1 => return,
            Some(range) if range.1.saturating_add(1) == seq => range.1 = seq,
            Some(range) if seq.saturating_add(1) == range.0 => range.0 = seq,
            _ => self.ranges.insert(index, (seq, seq)),
        }
        // Join with the next range when the gap closed.
        if let Some(&(next_start, next_end)) = self.ranges.get(index + 1)
            && self.ranges[index].1.saturating_add(1) >= next_start
        {
            self.ranges[index].1 = next_end;
            self.ranges.remove(index + 1);
        }
        if self.ranges.len() > MAX_RANGES {
            // The lowest range goes, unless it holds the seq just stored: then the next.
            let (_, end) = self.ranges.remove(usize::from(index == 0));
            self.uncertain_to = self.uncertain_to.max(end);
        }
    }

    /// After reading back the retention log: the seqs below the lowest one it held may have
    /// been stored in segments deleted since.
    fn read_back(&mut self) {
        if let Some(&(start, _)) = self.ranges.first() {
            self.uncertain_to = self.uncertain_to.max(start - 1);
        }
    }

    /// Ranges kept.
    #[must_use]
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }
}

/// What a batch is to the deduplication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not stored before: store it.
    New,
    /// Its seq is below what is known of its agent process: store it (it may have been stored
    /// before; counted).
    Uncertain,
    /// Stored before: ack it, store nothing.
    Duplicate,
}

#[derive(Debug)]
struct Node {
    info: AgentInfo,
    connections: u32,
    report: v1::LossReport,
    acked: u64,
    duplicate_batches: u64,
    /// Time of the newest event stored from this boot.
    last_event_ns: u64,
    /// Boot id changes seen (kept across them).
    restarts: u64,
    /// The stored seqs of this node's latest agent processes, oldest first.
    boots: VecDeque<(String, StoredSeqs)>,
    /// When a stream of this node last began or ended (or it was read back).
    last_seen: Instant,
}

impl Node {
    fn new(now: Instant) -> Self {
        Self {
            info: AgentInfo::default(),
            connections: 0,
            report: v1::LossReport::default(),
            acked: 0,
            duplicate_batches: 0,
            last_event_ns: 0,
            restarts: 0,
            boots: VecDeque::new(),
            last_seen: now,
        }
    }

    /// A new agent process: its counters start over; restarts and stored seqs stay.
    fn restart(&mut self, restarts: u64) {
        self.report = v1::LossReport::default();
        self.acked = 0;
        self.duplicate_batches = 0;
        self.last_event_ns = 0;
        self.restarts = restarts;
    }

    fn seqs(&self, boot_id: &str) -> Option<&StoredSeqs> {
        self.boots
            .iter()
            .find(|(boot, _)| boot == boot_id)
            .map(|(_, seqs)| seqs)
    }

    fn seqs_mut(&mut self, boot_id: &str) -> &mut StoredSeqs {
        if let Some(index) = self.boots.iter().position(|(boot, _)| boot == boot_id) {
            return &mut self.boots[index].1;
        }
        if self.boots.len() == BOOTS_PER_NODE {
            self.boots.pop_front();
        }
        self.boots
            .push_back((boot_id.to_owned(), StoredSeqs::default()));
        &mut self.boots.back_mut().expect("just pushed").1
    }
}

/// No room for another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "this collector already tracks its maximum of {max} nodes, all with an agent connected; a new node is refused until one goes away"
)]
pub struct NodesFull {
    pub max: usize,
}

/// Every node the collector has heard of.
#[derive(Debug)]
pub struct Nodes {
    by_name: BTreeMap<String, Node>,
    max: usize,
    /// Batches stored whose seq was below what was known of their agent process.
    uncertain: u64,
    /// Nodes forgotten (away for [`NODE_TTL`], or making room).
    forgotten: u64,
}

impl Default for Nodes {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_NODES)
    }
}

/// Sums over the nodes, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub acked: u64,
    pub duplicate_batches: u64,
    pub agent_restarts: u64,
    pub nodes: u64,
    pub uncertain_batches: u64,
    pub forgotten_nodes: u64,
}

impl Nodes {
    /// At most `max_nodes` nodes (at least 1).
    #[must_use]
    pub fn new(max_nodes: usize) -> Self {
        Self {
            by_name: BTreeMap::new(),
            max: max_nodes.max(1),
            uncertain: 0,
            forgotten: 0,
        }
    }

    /// What `agent`'s batch `seq` is; a duplicate is counted.
    pub fn seen(&mut self, agent: &AgentInfo, seq: u64) -> Seen {
        let Some(node) = self.by_name.get_mut(&agent.node) else {
            return Seen::New;
        };
        let Some(seqs) = node.seqs(&agent.boot_id) else {
            return Seen::New;
        };
        if seqs.contains(seq) {
            node.duplicate_batches += 1;
            Seen::Duplicate
        } else if seqs.uncertain(seq) {
            Seen::Uncertain
        } else {
            Seen::New
        }
    }

    /// `agent`'s batch `seq`, of events at `times` (ns), was stored (`uncertain`:
    /// [`Seen::Uncertain`]).
    pub fn stored(
        &mut self,
        agent: &AgentInfo,
        seq: u64,
        times: impl ExactSizeIterator<Item = u64>,
        uncertain: bool,
    ) {
        if uncertain {
            self.uncertain += 1;
            tracing::warn!(node = %agent.node, boot_id = %agent.boot_id, seq,
                "stored a batch whose seq is below what is known of its agent process (it may have been stored before)");
        }
        let now = Instant::now();
        let node = self
            .by_name
            .entry(agent.node.clone())
            .or_insert_with(|| Node::new(now));
        node.seqs_mut(&agent.boot_id).insert(seq);
        node.acked += times.len() as u64;
        node.last_event_ns = times.fold(node.last_event_ns, u64::max);
    }

    /// A batch read back from the retention log: its node's latest boot and dedup state.
    pub fn replayed(&mut self, node: &str, boot_id: &str, seq: u64, events: &[v1::Event]) {
        let now = Instant::now();
        let known = self
            .by_name
            .entry(node.to_owned())
            .or_insert_with(|| Node::new(now));
        known.seqs_mut(boot_id).insert(seq);
        if known.info.boot_id != boot_id {
            known.restart(0);
            node.clone_into(&mut known.info.node);
            boot_id.clone_into(&mut known.info.boot_id);
        }
        known.acked += events.len() as u64;
        known.last_event_ns = events
            .iter()
            .map(|e| e.time_ns)
            .fold(known.last_event_ns, u64::max);
    }

    /// Every batch was read back: seqs below the lowest one read back of each agent process
    /// may have been in segments deleted since.
    pub fn read_back(&mut self) {
        for node in self.by_name.values_mut() {
            for (_, seqs) in &mut node.boots {
                seqs.read_back();
            }
        }
    }

    /// An agent stream began. Returns the restart notice when the node's agent has a new boot
    /// id (its counters start over; its restart count grows). A new node when `max_nodes` are
    /// tracked takes the place of the one away the longest, or is refused when every agent is
    /// connected.
    pub fn connected(&mut self, info: &AgentInfo) -> Result<Option<v1::AgentRestart>, NodesFull> {
        self.connected_at(info, Instant::now())
    }

    /// [`Nodes::connected`] at `now`.
    pub fn connected_at(
        &mut self,
        info: &AgentInfo,
        now: Instant,
    ) -> Result<Option<v1::AgentRestart>, NodesFull> {
        self.expire(now);
        if !self.by_name.contains_key(&info.node) && self.by_name.len() >= self.max {
            let away_longest = self
                .by_name
                .iter()
                .filter(|(_, n)| n.connections == 0)
                .min_by_key(|(_, n)| n.last_seen)
                .map(|(name, _)| name.clone());
            let Some(name) = away_longest else {
                return Err(NodesFull { max: self.max });
            };
            tracing::info!(node = %name, "forgetting the node away the longest to make room");
            self.by_name.remove(&name);
            self.forgotten += 1;
        }
        let node = self
            .by_name
            .entry(info.node.clone())
            .or_insert_with(|| Node::new(now));
        let mut notice = None;
        if node.info.boot_id != info.boot_id {
            if !node.info.boot_id.is_empty() {
                notice = Some(v1::AgentRestart {
                    node: info.node.clone(),
                    previous_boot_id: node.info.boot_id.clone(),
                    boot_id: info.boot_id.clone(),
                    previous_last_event_ns: node.last_event_ns,
                    started_unix_ns: info.started_unix_ns,
                    previous_captured: node.report.captured,
                    previous_acked: node.acked,
                });
            }
            let restarts = node.restarts + u64::from(notice.is_some());
            node.restart(restarts);
        }
        node.info = info.clone();
        node.connections += 1;
        node.last_seen = now;
        Ok(notice)
    }

    /// Forget the nodes whose agent has been away for [`NODE_TTL`].
    fn expire(&mut self, now: Instant) {
        let before = self.by_name.len();
        self.by_name.retain(|name, node| {
            let keep = node.connections > 0 || now.saturating_duration_since(node.last_seen) < NODE_TTL;
            if !keep {
                tracing::info!(node = %name, "forgetting a node whose agent has been away for 24 h");
            }
            keep
        });
        self.forgotten += (before - self.by_name.len()) as u64;
    }

    pub fn disconnected(&mut self, node: &str) {
        if let Some(node) = self.by_name.get_mut(node) {
            node.connections = node.connections.saturating_sub(1);
            node.last_seen = Instant::now();
        }
    }

    /// Keep the latest cumulative counters an agent reported.
    pub fn report(&mut self, agent: &AgentInfo, report: v1::LossReport) {
        if let Some(node) = self.by_name.get_mut(&agent.node)
            && node.info.boot_id == agent.boot_id
        {
            node.report = report;
        }
    }

    /// What `node`'s agent last reported it captured (0 before any report).
    #[must_use]
    pub fn captured(&self, node: &str) -> u64 {
        self.by_name.get(node).map_or(0, |n| n.report.captured)
    }

    /// Per-node counters.
    #[must_use]
    pub fn stats(&self) -> Vec<NodeStats> {
        self.by_name
            .iter()
            .map(|(name, node)| NodeStats {
                node: name.clone(),
                boot_id: node.info.boot_id.clone(),
                kernel: node.info.kernel.clone(),
                attach_mode: node.info.attach_mode.clone(),
                connected: node.connections > 0,
                captured: node.report.captured,
                shipped: node.report.shipped,
                acked: node.acked,
                dropped: node.report.dropped.clone(),
                duplicate_batches: node.duplicate_batches,
                agent_restarts: node.restarts,
            })
            .collect()
    }

    /// Sums over the nodes.
    #[must_use]
    pub fn totals(&self) -> Totals {
        self.by_name.values().fold(
            Totals {
                nodes: self.by_name.len() as u64,
                uncertain_batches: self.uncertain,
                forgotten_nodes: self.forgotten,
                ..Totals::default()
            },
            |t, n| Totals {
                acked: t.acked + n.acked,
                duplicate_batches: t.duplicate_batches + n.duplicate_batches,
                agent_restarts: t.agent_restarts + n.restarts,
                ..t
            },
        )
    }
}

#[cfg(test)]
mod tests;
