//! Per-node bookkeeping of a collector: which batches each agent process (node, boot id) has
//! had stored (deduplication by seq), the counters each node reported and acked, and agent
//! restarts (a new boot id of a known node: a capture gap).

use std::collections::{BTreeMap, HashMap};

use mapsentry_proto::v1::{self, NodeStats};

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

#[derive(Debug, Default)]
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
}

/// Every node the collector has heard of.
#[derive(Debug, Default)]
pub struct Nodes {
    /// Highest stored seq per (node, boot id).
    seqs: HashMap<(String, String), u64>,
    nodes: BTreeMap<String, Node>,
}

/// Sums over the nodes, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub acked: u64,
    pub duplicate_batches: u64,
    pub agent_restarts: u64,
}

impl Nodes {
    /// Whether `agent`'s batch `seq` was stored before; a duplicate is counted.
    pub fn duplicate(&mut self, agent: &AgentInfo, seq: u64) -> bool {
        let key = (agent.node.clone(), agent.boot_id.clone());
        let duplicate = seq <= self.seqs.get(&key).copied().unwrap_or(0);
        if duplicate {
            self.nodes
                .entry(agent.node.clone())
                .or_default()
                .duplicate_batches += 1;
        }
        duplicate
    }

    /// `agent`'s batch `seq` of `events` was stored.
    pub fn stored(&mut self, agent: &AgentInfo, seq: u64, events: &[v1::Event]) {
        self.seqs
            .insert((agent.node.clone(), agent.boot_id.clone()), seq);
        let node = self.nodes.entry(agent.node.clone()).or_default();
        node.acked += events.len() as u64;
        node.last_event_ns = events
            .iter()
            .map(|e| e.time_ns)
            .fold(node.last_event_ns, u64::max);
    }

    /// A batch read back from the retention log: its node's latest boot and dedup state.
    pub fn replayed(&mut self, node: &str, boot_id: &str, seq: u64, events: &[v1::Event]) {
        let highest = self
            .seqs
            .entry((node.to_owned(), boot_id.to_owned()))
            .or_insert(0);
        *highest = (*highest).max(seq);
        let known = self.nodes.entry(node.to_owned()).or_default();
        if known.info.boot_id != boot_id {
            *known = Node::default();
            node.clone_into(&mut known.info.node);
            boot_id.clone_into(&mut known.info.boot_id);
        }
        known.acked += events.len() as u64;
        known.last_event_ns = events
            .iter()
            .map(|e| e.time_ns)
            .fold(known.last_event_ns, u64::max);
    }

    /// An agent stream began. Returns the restart notice when the node's agent has a new boot
    /// id (its counters start over; its restart count grows).
    pub fn connected(&mut self, info: &AgentInfo) -> Option<v1::AgentRestart> {
        let node = self.nodes.entry(info.node.clone()).or_default();
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
            // A new agent process: its counters start over.
            let restarts = node.restarts + u64::from(notice.is_some());
            *node = Node {
                restarts,
                ..Node::default()
            };
        }
        node.info = info.clone();
        node.connections += 1;
        notice
    }

    pub fn disconnected(&mut self, node: &str) {
        if let Some(node) = self.nodes.get_mut(node) {
            node.connections = node.connections.saturating_sub(1);
        }
    }

    /// Keep the latest cumulative counters an agent reported.
    pub fn report(&mut self, agent: &AgentInfo, report: v1::LossReport) {
        if let Some(node) = self.nodes.get_mut(&agent.node)
            && node.info.boot_id == agent.boot_id
        {
            node.report = report;
        }
    }

    /// Per-node counters.
    #[must_use]
    pub fn stats(&self) -> Vec<NodeStats> {
        self.nodes
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
        self.nodes.values().fold(Totals::default(), |t, n| Totals {
            acked: t.acked + n.acked,
            duplicate_batches: t.duplicate_batches + n.duplicate_batches,
            agent_restarts: t.agent_restarts + n.restarts,
        })
    }
}
