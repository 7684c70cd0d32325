use prometheus_client::metrics::{counter::Counter, family::Family};

use super::*;

#[test]
fn scraped_values_encode_as_openmetrics_with_escaped_labels() {
    let mut scrape = Scrape::default();
    scrape
        .counter("demo_events_total", "Events seen.", 7)
        .gauge("demo_ready", "1 when ready.", 1)
        .counters(
            "demo_dropped_total",
            "Drops by reason.",
            [(Labels(vec![("reason", "ring \"full\"\\\n".into())]), 3)],
        )
        .gauges(
            "demo_info",
            "What this is.",
            [(
                Labels(vec![("node", "n1".into()), ("mode", "tracepoint".into())]),
                1,
            )],
        );
    let mut own = Registry::default();
    let live: Counter = Counter::default();
    live.inc_by(2);
    own.register("demo_live", "A live counter", live);
    let text = encode(&[&own, &scrape.into_registry()]);
    assert_eq!(
        text,
        "# HELP demo_live A live counter.\n# TYPE demo_live counter\ndemo_live_total 2\n\
         # HELP demo_events Events seen.\n# TYPE demo_events counter\ndemo_events_total 7\n\
         # HELP demo_ready 1 when ready.\n# TYPE demo_ready gauge\ndemo_ready 1\n\
         # HELP demo_dropped Drops by reason.\n# TYPE demo_dropped counter\n\
         demo_dropped_total{reason=\"ring \\\"full\\\"\\\\\\n\"} 3\n\
         # HELP demo_info What this is.\n# TYPE demo_info gauge\n\
         demo_info{node=\"n1\",mode=\"tracepoint\"} 1\n# EOF\n"
    );
}

#[test]
fn label_values_are_escaped_in_families_too() {
    let family: Family<Labels, Counter> = Family::default();
    family
        .get_or_create(&Labels(vec![("pod", "a\"b\\c\nd".into())]))
        .inc();
    let mut registry = Registry::default();
    registry.register("demo_calls", "Calls", family);
    let text = encode(&[&registry]);
    assert!(
        text.contains("demo_calls_total{pod=\"a\\\"b\\\\c\\nd\"} 1\n"),
        "{text}"
    );
}
