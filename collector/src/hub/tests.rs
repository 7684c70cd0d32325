use std::{pin::pin, time::Duration};

use mapsentry_proto::v1::{
    Event, MmapArgs, Syscall, event::Attribution, subscribe_response::Item as R,
};
use tokio_stream::StreamExt as _;

use super::*;
use crate::retention::LogConfig;

fn agent(node: &str, boot: &str) -> AgentInfo {
    AgentInfo {
        node: node.into(),
        boot_id: boot.into(),
        ..AgentInfo::default()
    }
}

/// Events `pids`, as ingest hands them over; the even ones from a pod (one attribution shared by
/// them all, as a V2 stream's definition is), the odd ones from the host.
fn events(pids: std::ops::Range<u32>) -> Vec<Attributed> {
    let pod =
        crate::retention::SharedAttribution::new(Attribution::Pod(Box::new(v1::PodAttribution {
            namespace: Some("shop".into()),
            pod: Some("web-1".into()),
            ..v1::PodAttribution::default()
        })));
    let host = Attribution::Host(v1::HostAttribution {
        cgroup: "/system.slice/sshd.service".into(),
        unit: None,
    });
    pids.map(|pid| {
        let attribution = if pid % 2 == 0 {
            pod.clone()
        } else {
            crate::retention::SharedAttribution::new(host.clone())
        };
        let call = Event {
            pid,
            syscall: Syscall::Mmap.into(),
            comm: if pid % 2 == 0 {
                "even".into()
            } else {
                "odd".into()
            },
            args: Some(MmapArgs {
                fd: -1,
                ..MmapArgs::default()
            }),
            ..Event::default()
        };
        Attributed::new(call, Some(attribution))
    })
    .collect()
}

fn config(retention: usize, queue: usize) -> HubConfig {
    HubConfig {
        retention_events: retention,
        subscriber_queue: queue,
        ..HubConfig::default()
    }
}

async fn next(sub: &mut Subscription) -> R {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("an item within 5 s")
        .expect("stream open")
        .item
        .expect("item set")
}

async fn pids_until(sub: &mut Subscription, count: usize) -> Vec<u32> {
    let mut pids = Vec::new();
    while pids.len() < count {
        match next(sub).await {
            R::Event(record) => pids.push(record.event.unwrap().pid),
            other => panic!("expected events, got {other:?}"),
        }
    }
    pids
}

#[tokio::test]
async fn duplicates_are_stored_once_per_node_and_boot() {
    let hub = Hub::with_first_cursor(config(100, 16), 10);
    let a = agent("n1", "boot-a");
    assert_eq!(
        hub.store_batch(&a, 1, events(0..3)).unwrap(),
        Stored::New {
            first: 10,
            count: 3
        }
    );
    assert_eq!(
        hub.store_batch(&a, 1, events(0..3)).unwrap(),
        Stored::Duplicate
    );
    assert_eq!(
        hub.store_batch(&a, 2, events(3..4)).unwrap(),
        Stored::New {
            first: 13,
            count: 1
        }
    );
    // The same seq from another boot or node is another batch.
    assert_eq!(
        hub.store_batch(&agent("n1", "boot-b"), 1, events(0..1))
            .unwrap(),
        Stored::New {
            first: 14,
            count: 1
        }
    );
    assert_eq!(
        hub.store_batch(&agent("n2", "boot-a"), 1, events(0..1))
            .unwrap(),
        Stored::New {
            first: 15,
            count: 1
        }
    );
    let stats = hub.stats();
    assert_eq!(
        (stats.oldest_cursor, stats.next_cursor, stats.retained),
        (10, 16, 6)
    );
}

#[tokio::test]
async fn resume_replays_after_the_cursor_then_goes_live() {
    let hub = Hub::with_first_cursor(config(100, 16), 1);
    let a = agent("n1", "b");
    hub.store_batch(&a, 1, events(0..10)).unwrap();
    let filter = RecordFilter::new(None, &[]).unwrap();
    let mut sub = hub.subscribe(filter.clone(), Some(4)).unwrap();
    let R::Started(started) = next(&mut sub).await else {
        panic!("Started first")
    };
    assert_eq!(
        (
            started.oldest_cursor,
            started.next_cursor,
            started.instance_first_cursor
        ),
        (1, 11, 1)
    );
    assert_eq!(pids_until(&mut sub, 6).await, (4..10).collect::<Vec<_>>());
    hub.store_batch(&a, 2, events(10..12)).unwrap();
    assert_eq!(pids_until(&mut sub, 2).await, vec![10, 11]);

    let comm = mapsentry_proto::v1::Filter {
        comms: vec!["even".into()],
        ..Default::default()
    };
    let mut evens = hub
        .subscribe(RecordFilter::new(Some(&comm), &[]).unwrap(), Some(0))
        .unwrap();
    assert!(matches!(next(&mut evens).await, R::Started(_)));
    assert_eq!(pids_until(&mut evens, 6).await, vec![0, 2, 4, 6, 8, 10]);
}

#[tokio::test]
async fn cursors_outside_retention_are_refused_with_the_window() {
    let hub = Hub::with_first_cursor(config(5, 16), 100);
    hub.store_batch(&agent("n", "b"), 1, events(0..8)).unwrap(); // cursors 100..108, 103..108 kept
    let filter = RecordFilter::new(None, &[]).unwrap();
    let error = hub.subscribe(filter.clone(), Some(101)).unwrap_err();
    assert_eq!(
        error,
        SubscribeError::TooOld {
            since: 101,
            oldest: 103
        }
    );
    assert!(
        error.to_string().contains("oldest retained cursor is 103"),
        "{error}"
    );
    assert!(
        hub.subscribe(filter.clone(), Some(102)).is_ok(),
        "the cursor just before the oldest resumes"
    );
    assert_eq!(
        hub.subscribe(filter.clone(), Some(108)).unwrap_err(),
        SubscribeError::Ahead {
            since: 108,
            next: 108
        }
    );
    // A cursor of an earlier collector run starts at this run's first cursor, which was evicted.
    assert_eq!(
        hub.subscribe(filter, Some(7)).unwrap_err(),
        SubscribeError::TooOld {
            since: 7,
            oldest: 103
        }
    );
}

#[tokio::test]
async fn earlier_run_cursor_resumes_from_this_runs_start() {
    let hub = Hub::with_first_cursor(config(100, 16), 1_000);
    hub.store_batch(&agent("n", "b"), 1, events(0..3)).unwrap();
    let mut sub = hub
        .subscribe(RecordFilter::new(None, &[]).unwrap(), Some(500))
        .unwrap();
    assert!(matches!(next(&mut sub).await, R::Started(_)));
    assert_eq!(pids_until(&mut sub, 3).await, vec![0, 1, 2]);
}

#[tokio::test]
async fn a_full_queue_costs_an_exact_loss_notice_and_nobody_else_waits() {
    let hub = Hub::with_first_cursor(config(1000, 4), 1);
    let a = agent("n", "b");
    let all = RecordFilter::new(None, &[]).unwrap();
    let mut slow = hub.subscribe(all.clone(), None).unwrap();
    let mut fast = hub.subscribe(all, None).unwrap();
    assert!(matches!(next(&mut fast).await, R::Started(_)));
    // slow holds Started + 3 records; the next 7 do not fit.
    for seq in 1..=10 {
        hub.store_batch(&a, seq, events(seq as u32 - 1..seq as u32))
            .unwrap();
        assert_eq!(
            pids_until(&mut fast, 1).await,
            vec![seq as u32 - 1],
            "the fast one gets every record at once"
        );
    }
    assert_eq!(hub.stats().subscriber_losses, 7);
    assert!(matches!(next(&mut slow).await, R::Started(_)));
    assert_eq!(pids_until(&mut slow, 3).await, vec![0, 1, 2]);
    let R::Loss(loss) = next(&mut slow).await else {
        panic!("a loss notice after the queued records")
    };
    assert_eq!(
        (loss.count, loss.reason),
        (7, LossReason::SubscriberBehind as i32)
    );
    hub.store_batch(&a, 11, events(10..11)).unwrap();
    assert_eq!(pids_until(&mut slow, 1).await, vec![10]);
}

#[tokio::test]
async fn loss_notice_comes_before_the_next_record_when_ingest_continues() {
    let hub = Hub::with_first_cursor(config(1000, 2), 1);
    let a = agent("n", "b");
    let mut slow = hub
        .subscribe(RecordFilter::new(None, &[]).unwrap(), None)
        .unwrap();
    hub.store_batch(&a, 1, events(0..5)).unwrap(); // Started + record 0 queued, 1..5 missed
    assert!(matches!(next(&mut slow).await, R::Started(_)));
    assert_eq!(pids_until(&mut slow, 1).await, vec![0]);
    hub.store_batch(&a, 2, events(5..6)).unwrap();
    // The queue had room again when record 5 came: the notice went in first.
    let R::Loss(loss) = next(&mut slow).await else {
        panic!("loss notice first")
    };
    assert_eq!(loss.count, 4);
    assert_eq!(pids_until(&mut slow, 1).await, vec![5]);
}

#[tokio::test]
async fn close_ends_subscriptions_after_their_queue() {
    let hub = Hub::with_first_cursor(config(10, 8), 1);
    let mut sub = pin!(
        hub.subscribe(RecordFilter::new(None, &[]).unwrap(), None)
            .unwrap()
    );
    hub.store_batch(&agent("n", "b"), 1, events(0..2)).unwrap();
    hub.close();
    let items: Vec<_> =
        tokio::time::timeout(Duration::from_secs(5), sub.as_mut().collect::<Vec<_>>())
            .await
            .unwrap();
    assert_eq!(items.len(), 3, "Started and both records, then the end");
    assert_eq!(
        hub.subscribe(RecordFilter::new(None, &[]).unwrap(), None)
            .unwrap_err(),
        SubscribeError::Closed
    );
}

#[tokio::test]
async fn a_reopened_hub_has_its_records_cursors_and_dedup_state_back() {
    let dir = std::env::temp_dir().join(format!("mapsentry-hub-reopen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let a = agent("n1", "b");
    {
        let hub = Hub::open(config(100, 16), LogConfig::new(&dir)).unwrap();
        let first = hub.stats().next_cursor;
        assert_eq!(
            hub.store_batch(&a, 1, events(0..3)).unwrap(),
            Stored::New { first, count: 3 }
        );
        assert_eq!(
            hub.store_batch(&a, 2, events(3..5)).unwrap(),
            Stored::New {
                first: first + 3,
                count: 2
            }
        );
    }
    let hub = Hub::open(config(100, 16), LogConfig::new(&dir)).unwrap();
    let stats = hub.stats();
    assert_eq!(
        (stats.retained, stats.next_cursor - stats.oldest_cursor),
        (5, 5)
    );
    let first = stats.oldest_cursor;
    assert_eq!(
        hub.store_batch(&a, 2, events(3..5)).unwrap(),
        Stored::Duplicate,
        "a resend after the restart"
    );
    assert_eq!(
        hub.store_batch(&a, 3, events(5..6)).unwrap(),
        Stored::New {
            first: first + 5,
            count: 1
        }
    );
    // A subscriber of the first run resumes where it was.
    let mut sub = hub
        .subscribe(RecordFilter::new(None, &[]).unwrap(), Some(first + 1))
        .unwrap();
    let R::Started(started) = next(&mut sub).await else {
        panic!("Started first")
    };
    assert_eq!(started.instance_first_cursor, first);
    assert_eq!(pids_until(&mut sub, 4).await, vec![2, 3, 4, 5]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn new_cursors_start_from_the_clock_and_stay_exact_in_json() {
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let next = Hub::new(HubConfig::default()).stats().next_cursor;
    assert!(next >= before && next < 1 << 53, "{next}");
}

fn timed(pids: std::ops::Range<u32>, time_ns: u64) -> Vec<Attributed> {
    events(pids)
        .into_iter()
        .map(|held| {
            let (call, attribution) = held.into_parts();
            Attributed::new(Event { time_ns, ..call }, attribution)
        })
        .collect()
}

#[tokio::test]
async fn a_new_boot_id_is_announced_as_a_capture_gap_even_across_a_collector_restart() {
    let dir = std::env::temp_dir().join(format!("mapsentry-hub-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let first = agent("n1", "boot-1");
    {
        let hub = Hub::open(config(100, 16), LogConfig::new(&dir)).unwrap();
        let mut n1 = hub
            .subscribe(
                RecordFilter::new(
                    Some(&v1::Filter {
                        nodes: vec!["n1".into()],
                        ..v1::Filter::default()
                    }),
                    &[],
                )
                .unwrap(),
                None,
            )
            .unwrap();
        let mut n2 = hub
            .subscribe(
                RecordFilter::new(
                    Some(&v1::Filter {
                        nodes: vec!["n2".into()],
                        ..v1::Filter::default()
                    }),
                    &[],
                )
                .unwrap(),
                None,
            )
            .unwrap();
        assert!(matches!(next(&mut n1).await, R::Started(_)));
        assert!(matches!(next(&mut n2).await, R::Started(_)));
        assert_eq!(
            hub.agent_connected(&first),
            Ok(None),
            "a first boot is no gap"
        );
        hub.agent_report(
            &first,
            v1::LossReport {
                captured: 5,
                ..v1::LossReport::default()
            },
        );
        hub.store_batch(&first, 1, timed(0..3, 1_000)).unwrap();
        assert_eq!(
            hub.agent_connected(&first),
            Ok(None),
            "a reconnect is no gap"
        );
        let second = AgentInfo {
            started_unix_ns: 5_000,
            ..agent("n1", "boot-2")
        };
        let notice = hub.agent_connected(&second).unwrap().expect("a restart");
        assert_eq!(
            notice,
            v1::AgentRestart {
                node: "n1".into(),
                previous_boot_id: "boot-1".into(),
                boot_id: "boot-2".into(),
                previous_last_event_ns: 1_000,
                started_unix_ns: 5_000,
                previous_captured: 5,
                previous_acked: 3,
            }
        );
        assert_eq!(pids_until(&mut n1, 3).await, vec![0, 1, 2]);
        assert_eq!(next(&mut n1).await, R::AgentRestart(notice));
        hub.store_batch(&second, 1, timed(3..4, 6_000)).unwrap();
        assert_eq!(
            pids_until(&mut n2, 0).await,
            Vec::<u32>::new(),
            "n2 subscriber"
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(100), n2.next())
                .await
                .is_err(),
            "another node's subscriber gets nothing"
        );
        let stats = hub.stats();
        assert_eq!(stats.nodes[0].agent_restarts, 1);
    }
    // The collector restarts: the log says which boot of n1 it last stored.
    let hub = Hub::open(config(100, 16), LogConfig::new(&dir)).unwrap();
    let third = agent("n1", "boot-3");
    let notice = hub
        .agent_connected(&third)
        .unwrap()
        .expect("a restart seen from the log");
    assert_eq!(notice.previous_boot_id, "boot-2");
    assert_eq!(
        (notice.previous_last_event_ns, notice.previous_acked),
        (6_000, 1)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn out_of_order_batches_are_each_stored_once_and_acked() {
    let hub = Hub::with_first_cursor(config(1000, 16), 1);
    let a = agent("n", "b");
    let mut stored = Vec::new();
    for seq in [1, 1, 5, 3, 2, 7, 8] {
        let outcome = hub
            .store_batch(&a, seq, events(seq as u32..seq as u32 + 1))
            .unwrap();
        stored.push(matches!(outcome, Stored::New { .. }));
    }
    assert_eq!(stored, [true, false, true, true, true, true, true]);
    assert_eq!(hub.stats().retained, 6, "every new seq stored");
    assert_eq!(hub.stats().nodes[0].duplicate_batches, 1);
}

#[tokio::test]
async fn the_window_evicts_by_bytes_as_well_as_by_events() {
    let newest_ten: usize = events(15..25)
        .iter()
        .map(crate::budgets::record_bytes)
        .sum();
    let hub = Hub::with_first_cursor(
        HubConfig {
            retention_events: 1000,
            retention_bytes: newest_ten,
            ..HubConfig::default()
        },
        1,
    );
    hub.store_batch(&agent("n", "b"), 1, events(0..25)).unwrap();
    let stats = hub.stats();
    assert_eq!((stats.retained, stats.oldest_cursor), (10, 16));
}

#[tokio::test]
async fn a_subscriber_queue_full_in_bytes_costs_an_exact_loss_notice() {
    let first_three: usize = events(0..3).iter().map(crate::budgets::record_bytes).sum();
    let hub = Hub::with_first_cursor(
        HubConfig {
            subscriber_queue: 1000,
            subscriber_queue_bytes: first_three,
            ..HubConfig::default()
        },
        1,
    );
    let mut slow = hub
        .subscribe(RecordFilter::new(None, &[]).unwrap(), None)
        .unwrap();
    hub.store_batch(&agent("n", "b"), 1, events(0..10)).unwrap();
    assert!(matches!(next(&mut slow).await, R::Started(_)));
    assert_eq!(pids_until(&mut slow, 3).await, vec![0, 1, 2]);
    let R::Loss(loss) = next(&mut slow).await else {
        panic!("a loss notice after the queued records")
    };
    assert_eq!(loss.count, 7);
    hub.store_batch(&agent("n", "b"), 2, events(10..11))
        .unwrap();
    assert_eq!(pids_until(&mut slow, 1).await, vec![10], "room again");
}

#[tokio::test]
async fn stats_fit_the_message_limit_and_leave_nodes_out_of_namespace_scopes() {
    let hub = Hub::with_first_cursor(config(1000, 16), 1);
    for i in 0..100 {
        let node = AgentInfo {
            kernel: "k".repeat(200),
            ..agent(&format!("node-{i:03}"), "b")
        };
        hub.agent_connected(&node).unwrap();
    }
    let all = hub.stats_within(true, usize::MAX);
    assert_eq!((all.nodes.len(), all.nodes_omitted), (100, 0));
    let limited = hub.stats_within(true, 5000);
    assert!(prost::Message::encoded_len(&limited) <= 5000);
    assert!(!limited.nodes.is_empty() && limited.nodes.len() < 100);
    assert_eq!(
        limited.nodes.len() + limited.nodes_omitted as usize,
        100,
        "every node shown or counted"
    );
    let scoped = hub.stats_within(false, usize::MAX);
    assert_eq!((scoped.nodes.len(), scoped.nodes_omitted), (0, 100));
}

#[tokio::test]
async fn batches_stored_with_names_beyond_the_limits_are_not_read_back() {
    let dir = std::env::temp_dir().join(format!("mapsentry-hub-limits-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    {
        // As an older collector without the limits wrote them.
        let (mut log, _) = Log::open(LogConfig::new(&dir)).unwrap();
        log.append(&"n".repeat(300), "b", 1, 1, &events(0..3))
            .unwrap();
        log.append("n", "b", 1, 4, &events(3..5)).unwrap();
    }
    let hub = Hub::open(config(100, 16), LogConfig::new(&dir)).unwrap();
    let limits = hub.recovery().dropped[&DropCause::Limits];
    assert_eq!((limits.batches, limits.events), (1, 3));
    let stats = hub.stats();
    assert_eq!(stats.retained, 2);
    assert_eq!(stats.nodes.len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A retention log write that blocks (here another thread holds the log, as a write stuck in the
/// page cache's dirty-page throttling would) holds up only the stores waiting on it: with more
/// stores waiting than the runtime has workers, the workers still run other tasks.
#[test]
fn stores_waiting_on_the_log_leave_the_runtime_running() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("mapsentry-hub-held-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let hub = Hub::open(config(100, 16), LogConfig::new(&dir)).unwrap();
    let held = lock(hub.durable.as_ref().expect("a retention log"));
    let stores: Vec<_> = (0..4)
        .map(|node| {
            let hub = Arc::clone(&hub);
            runtime.spawn(async move {
                let node = format!("node-{node}");
                hub.store(&agent(&node, "boot"), 1, events(0..2)).await
            })
        })
        .collect();
    // Time for both workers to reach the held log with a store each.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        stores.iter().all(|store| !store.is_finished()),
        "no store can finish while the log is held"
    );
    let (ran, probe) = std::sync::mpsc::channel();
    runtime.spawn(async move { ran.send(()).unwrap() });
    let probed = probe.recv_timeout(Duration::from_secs(5));
    drop(held);
    assert!(
        probed.is_ok(),
        "the runtime ran no other task while the stores waited on the log"
    );
    for store in stores {
        let outcome = runtime.block_on(store).unwrap().unwrap();
        assert!(
            matches!(outcome, Stored::New { count: 2, .. }),
            "each store went on once the log was free: {outcome:?}"
        );
    }
    drop(hub);
    std::fs::remove_dir_all(&dir).unwrap();
}
