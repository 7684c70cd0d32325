use super::*;

fn agent(node: &str, boot: &str) -> AgentInfo {
    AgentInfo {
        node: node.into(),
        boot_id: boot.into(),
        ..AgentInfo::default()
    }
}

/// Store each of `seqs` that is not a duplicate; returns what each was.
fn ship(nodes: &mut Nodes, agent: &AgentInfo, seqs: &[u64]) -> Vec<Seen> {
    seqs.iter()
        .map(|&seq| {
            let seen = nodes.seen(agent, seq);
            if seen != Seen::Duplicate {
                nodes.stored(agent, seq, std::iter::empty(), seen == Seen::Uncertain);
            }
            seen
        })
        .collect()
}

#[test]
fn out_of_order_seqs_are_each_new_once_and_only_true_repeats_are_duplicates() {
    use Seen::{Duplicate, New};
    let mut nodes = Nodes::default();
    let a = agent("n", "b");
    assert_eq!(
        ship(&mut nodes, &a, &[1, 1, 5, 3, 2, 7, 8]),
        [New, Duplicate, New, New, New, New, New]
    );
    assert_eq!(
        ship(&mut nodes, &a, &[4, 5, 6, 8, 9]),
        [New, Duplicate, New, Duplicate, New]
    );
    let seqs = nodes.by_name["n"].seqs("b").unwrap().ranges().to_vec();
    assert_eq!(seqs, [(1, 9)], "the ranges merged");
    assert_eq!(nodes.totals().duplicate_batches, 3);
    // Another boot of the node has its own seqs.
    assert_eq!(ship(&mut nodes, &agent("n", "b2"), &[1]), [New]);
}

#[test]
fn ranges_are_bounded_and_a_forgotten_seq_is_uncertain_never_a_duplicate() {
    let mut seqs = StoredSeqs::default();
    for seq in (1..=2 * (MAX_RANGES as u64 + 10)).step_by(2) {
        seqs.insert(seq);
    }
    assert_eq!(seqs.ranges().len(), MAX_RANGES);
    assert!(
        !seqs.contains(1) && seqs.uncertain(1),
        "forgotten: it may have been stored"
    );
    assert!(!seqs.contains(2) && seqs.uncertain(2));
    let newest = 2 * (MAX_RANGES as u64 + 10) - 1;
    assert!(seqs.contains(newest) && !seqs.uncertain(newest + 2));
    let mut nodes = Nodes::default();
    let a = agent("n", "b");
    for seq in (1..=2 * (MAX_RANGES as u64 + 10)).step_by(2) {
        ship(&mut nodes, &a, &[seq]);
    }
    assert_eq!(
        ship(&mut nodes, &a, &[1, 1]),
        [Seen::Uncertain, Seen::Duplicate]
    );
    assert_eq!(nodes.totals().uncertain_batches, 1);
}

#[test]
fn after_reading_back_the_seqs_below_the_log_are_uncertain() {
    let mut nodes = Nodes::default();
    for seq in 500..=510 {
        nodes.replayed("n", "b", seq, &[]);
    }
    nodes.read_back();
    let a = agent("n", "b");
    assert_eq!(
        ship(&mut nodes, &a, &[3, 505, 511]),
        [Seen::Uncertain, Seen::Duplicate, Seen::New]
    );
}

#[test]
fn beyond_the_most_nodes_the_one_away_longest_makes_room_or_a_new_one_is_refused() {
    let mut nodes = Nodes::new(2);
    let start = Instant::now();
    nodes.connected_at(&agent("a", "1"), start).unwrap();
    nodes.connected_at(&agent("b", "1"), start).unwrap();
    assert_eq!(
        nodes.connected_at(&agent("c", "1"), start),
        Err(NodesFull { max: 2 })
    );
    nodes.disconnected("a");
    assert_eq!(nodes.connected_at(&agent("c", "1"), start), Ok(None));
    let names: Vec<String> = nodes.stats().into_iter().map(|n| n.node).collect();
    assert_eq!(names, ["b", "c"]);
    assert_eq!(nodes.totals().forgotten_nodes, 1);
}

#[test]
fn a_node_away_for_its_ttl_is_forgotten_and_a_connected_one_is_not() {
    let mut nodes = Nodes::default();
    let start = Instant::now();
    nodes.connected_at(&agent("away", "1"), start).unwrap();
    nodes.connected_at(&agent("here", "1"), start).unwrap();
    nodes.disconnected("away");
    let later = Instant::now() + NODE_TTL + Duration::from_secs(1);
    nodes.connected_at(&agent("new", "1"), later).unwrap();
    let names: Vec<String> = nodes.stats().into_iter().map(|n| n.node).collect();
    assert_eq!(names, ["here", "new"]);
}

#[test]
fn boots_kept_per_node_are_bounded() {
    let mut nodes = Nodes::default();
    for boot in 0..10 {
        let a = agent("n", &boot.to_string());
        nodes.connected(&a).unwrap();
        ship(&mut nodes, &a, &[1]);
    }
    assert_eq!(nodes.by_name["n"].boots.len(), BOOTS_PER_NODE);
    assert_eq!(nodes.totals().agent_restarts, 9);
}
