//! `skprof export`: the probes' aggregates as Prometheus/OpenMetrics
//! metrics.
//!
//! - [`metrics`]: readings → metric families → OpenMetrics text (pure);
//!   bucket boundaries, series budget, leak and overhead families.
//! - [`http`]: the `/metrics` endpoint (std, a fixed worker pool).
//! - [`log`]: structured log lines (logfmt or JSON).
//! - [`procstat`]: skprof's own memory, CPU and BPF run time.
//! - [`dashboards`]: the shipped Grafana dashboards' queries, for tests.
//!
//! The collector loop that ties them to a probe session is
//! `cli::export`.

pub mod dashboards;
pub mod http;
pub mod log;
pub mod metrics;
pub mod procstat;

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use openmetrics_parser::{MetricNumber, OpenMetricsType, OpenMetricsValue, PrometheusValue};

    use super::metrics::*;
    use crate::model::hist::LogHist;
    use crate::model::ids::{Helper, Outcome, SockClass};
    use crate::model::ledger::{OutstandingRef, RunLeak, Tuple};
    use crate::model::snapshot::{Cell, CellKey, ProgramRef, Snapshot};

    const MS: u64 = 1_000_000;

    fn key(prog: u32, helper: Helper, outcome: Outcome, netns: u32) -> CellKey {
        CellKey {
            prog,
            helper,
            outcome,
            netns,
            ifindex: 1,
            site: 0,
        }
    }

    fn cell(values: &[u64], acquired: &[(SockClass, u64)]) -> Cell {
        let mut c = Cell {
            calls: LogHist::from_values(values).count,
            hist: LogHist::from_values(values),
            ..Default::default()
        };
        for &(cls, n) in acquired {
            c.hits[cls.index()] = n;
            c.acquired[cls.index()] = n;
        }
        c
    }

    fn reference(sk: u64, prog_id: u32, age_ms: u64, now: u64, dport: u16) -> OutstandingRef {
        let mut t = vec![10, 0, 0, 1, 10, 0, 0, 2];
        t.extend(40000u16.to_be_bytes());
        t.extend(dport.to_be_bytes());
        OutstandingRef {
            sk,
            acquired_ns: now - age_ms * MS,
            count: 1,
            prog_id,
            helper: Helper::TcSkLookupTcp,
            class: SockClass::Established,
            state: 1,
            tuple: Tuple::decode(&t, 12),
            netns: 4026531840,
            cpu: 0,
            refcnt: 2,
            stack_id: -1,
            site: 0,
        }
    }

    /// Two programs (slots 1 and 2) calling the tc helper in two network
    /// namespaces, an untraced caller, references held and one leaked, a
    /// run leak.
    pub(crate) fn sample_collection() -> Collection {
        let tc = Helper::TcSkLookupTcp;
        let mut s = Snapshot::default();
        s.cells.insert(
            key(1, tc, Outcome::Hit, 1),
            cell(&[200, 300, 5000], &[(SockClass::Established, 2)]),
        );
        // The same (program, helper, outcome) in a second namespace: merged.
        s.cells.insert(
            key(1, tc, Outcome::Hit, 2),
            cell(&[100_000], &[(SockClass::Listener, 0)]),
        );
        s.cells
            .insert(key(1, tc, Outcome::NoSocket, 1), cell(&[150, 160], &[]));
        s.cells.insert(
            key(2, Helper::XdpSkLookupUdp, Outcome::Hit, 1),
            cell(&[700], &[]),
        );
        s.cells.insert(
            key(0, Helper::SkLookupTcp, Outcome::BadLen, 1),
            cell(&[50], &[]),
        );
        s.holds.insert(1, LogHist::from_values(&[1000, 3000]));
        s.counters.released[SockClass::Established.index()] = 2;
        s.counters.release_noop[SockClass::Listener.index()] = 4;
        s.counters.unmatched_exit[0] = 3;
        s.recursion_misses = 1;
        let mut programs = BTreeMap::new();
        for (slot, id, name) in [(1, 101, "tc_steer"), (2, 102, "xdp_fwd")] {
            programs.insert(
                slot,
                ProgramRef {
                    slot,
                    id,
                    name: name.into(),
                },
            );
        }
        programs.insert(
            0,
            ProgramRef {
                slot: 0,
                id: 0,
                name: "(not traced)".into(),
            },
        );
        let now = 100_000 * MS;
        let young = reference(1, 101, 1, now, 80);
        let old = reference(2, 101, 2000, now, 81);
        Collection {
            reading: crate::model::reading::Reading {
                snapshot: s,
                names: [(101, "tc_steer".to_string()), (102, "xdp_fwd".to_string())].into(),
                programs,
                ledger: Some(crate::model::ledger::LedgerScan {
                    now_ns: now,
                    refs: vec![young, old.clone()],
                }),
                run_leaks: vec![RunLeak {
                    ts_ns: now,
                    prog_id: 101,
                    prog_name: String::new(),
                    reference: old,
                    site: None,
                }],
                ..Default::default()
            },
            probe: ProbeInfo {
                mode: "fentry".into(),
                kernel: "6.12.0-test".into(),
                attribution: "trace".into(),
                probes_attached: 25,
                programs_traced: 2,
                programs_by_stack: 0,
                programs_untraceable: 0,
            },
            self_stats: SelfStats {
                rss_bytes: 10 << 20,
                cpu_seconds: 1.5,
                probe_run_ns: 2_000_000,
                probe_runs: 400,
                bpf_stats_enabled: true,
                collect_seconds: 0.002,
            },
        }
    }

    fn exporter(opts: ExportOptions) -> (Exporter, Collection) {
        let mut r = sample_collection();
        let mut e = Exporter::new(opts);
        e.update(&mut r, &[]);
        (e, r)
    }

    pub(crate) fn sample_exposition() -> String {
        let (e, r) = exporter(ExportOptions::default());
        e.render(&r).unwrap().openmetrics
    }

    type Om = openmetrics_parser::MetricsExposition<OpenMetricsType, OpenMetricsValue>;

    fn parse(text: &str) -> Om {
        openmetrics_parser::openmetrics::parse_openmetrics(text)
            .unwrap_or_else(|e| panic!("not valid OpenMetrics: {e:?}\n{text}"))
    }

    fn labels_match(
        s: &openmetrics_parser::Sample<OpenMetricsValue>,
        want: &[(&str, &str)],
    ) -> bool {
        let ls = s.get_labelset().unwrap();
        want.iter().all(|(k, v)| ls.get_label_value(k) == Some(*v))
    }

    fn sample<'a>(om: &'a Om, family: &str, want: &[(&str, &str)]) -> &'a OpenMetricsValue {
        let fam = om
            .families
            .get(family)
            .unwrap_or_else(|| panic!("no family {family}"));
        let found: Vec<_> = fam
            .iter_samples()
            .filter(|s| labels_match(s, want))
            .collect();
        assert_eq!(found.len(), 1, "{family} {want:?}: {found:?}");
        &found[0].value
    }

    fn counter(v: &OpenMetricsValue) -> f64 {
        match v {
            OpenMetricsValue::Counter(c) => c.value.as_f64(),
            o => panic!("not a counter: {o:?}"),
        }
    }

    fn gauge(v: &OpenMetricsValue) -> f64 {
        match v {
            OpenMetricsValue::Gauge(g) => g.as_f64(),
            o => panic!("not a gauge: {o:?}"),
        }
    }

    #[test]
    fn exposition_parses_back_with_the_expected_values() {
        let text = sample_exposition();
        assert!(text.ends_with("# EOF\n"));
        let om = parse(&text);
        let tc = [
            ("program", "tc_steer"),
            ("prog_id", "101"),
            ("helper", "bpf_tc_sk_lookup_tcp"),
        ];
        let with = |extra: (&'static str, &'static str)| {
            let mut v = tc.to_vec();
            v.push(extra);
            v
        };
        // Two namespaces merged: 3 + 1 hits.
        let hits = sample(&om, "skprof_helper_calls", &with(("outcome", "hit")));
        assert_eq!(counter(hits), 4.0);
        assert_eq!(
            counter(sample(
                &om,
                "skprof_helper_calls",
                &with(("outcome", "no_socket"))
            )),
            2.0
        );
        assert_eq!(
            counter(sample(
                &om,
                "skprof_helper_calls",
                &[("program", "(not traced)"), ("outcome", "bad_len")]
            )),
            1.0
        );
        match sample(
            &om,
            "skprof_helper_latency_seconds",
            &with(("outcome", "hit")),
        ) {
            OpenMetricsValue::Histogram(h) => {
                assert_eq!(h.count, Some(4));
                let sum = h.sum.as_ref().unwrap().as_f64();
                assert!((sum - 105_500e-9).abs() < 1e-12, "{sum}");
                // 200 and 300 ns are under 512 ns, 5000 under 8192, 100 us
                // under 131072 ns; cumulative.
                let at = |le: f64| {
                    h.buckets
                        .iter()
                        .find(|b| b.upper_bound == le || (b.upper_bound - le).abs() < le * 1e-9)
                        .map(|b| b.count.as_f64())
                        .unwrap_or_else(|| panic!("no bucket {le}: {:?}", h.buckets))
                };
                assert_eq!(at(256e-9), 1.0);
                assert_eq!(at(512e-9), 2.0);
                assert_eq!(at(4096e-9), 2.0);
                assert_eq!(at(8192e-9), 3.0);
                assert_eq!(at(65536e-9), 3.0);
                assert_eq!(at(131072e-9), 4.0);
                assert_eq!(at(f64::INFINITY), 4.0);
                assert_eq!(h.buckets.len(), BUCKET_EXPONENTS.count() + 1);
            }
            o => panic!("not a histogram: {o:?}"),
        }
        assert_eq!(
            counter(sample(
                &om,
                "skprof_references_acquired",
                &with(("class", "established"))
            )),
            2.0
        );
        match sample(&om, "skprof_reference_hold_seconds", &tc[..2]) {
            OpenMetricsValue::Histogram(h) => assert_eq!(h.count, Some(2)),
            o => panic!("{o:?}"),
        }
        assert_eq!(
            counter(sample(
                &om,
                "skprof_references_released",
                &[("class", "established")]
            )),
            2.0
        );
        assert_eq!(
            counter(sample(
                &om,
                "skprof_sk_release_noop",
                &[("class", "listener")]
            )),
            4.0
        );
        // Ledger: two references of tc_steer, one older than 500 ms.
        assert_eq!(
            gauge(sample(&om, "skprof_references_outstanding", &tc)),
            2.0
        );
        assert_eq!(gauge(sample(&om, "skprof_references_leaked", &tc)), 1.0);
        assert_eq!(counter(sample(&om, "skprof_run_leaks", &tc)), 1.0);
        assert_eq!(
            gauge(sample(
                &om,
                "skprof_ledger",
                &[("value", "leaked_references")]
            )),
            1.0
        );
        assert_eq!(
            gauge(sample(&om, "skprof_leak_threshold_seconds", &[])),
            0.5
        );
        assert_eq!(
            counter(sample(&om, "skprof_drops", &[("reason", "unmatched_exit")])),
            3.0
        );
        assert_eq!(
            counter(sample(&om, "skprof_drops", &[("reason", "recursion_miss")])),
            1.0
        );
        match sample(&om, "skprof_probe", &[("mode", "fentry")]) {
            OpenMetricsValue::Info => {}
            o => panic!("not an info: {o:?}"),
        }
        assert_eq!(
            gauge(sample(&om, "skprof_programs", &[("method", "trace")])),
            2.0
        );
        assert_eq!(counter(sample(&om, "skprof_probe_run_seconds", &[])), 0.002);
        // No calibration yet: no figure.
        assert!(!om
            .families
            .contains_key("skprof_probe_overhead_per_call_seconds"));
        // The series count is the number of sample lines.
        let lines = text.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(
            gauge(sample(&om, "skprof_export_series", &[])),
            lines as f64
        );
        // Addresses stay out without --export-tuples.
        assert!(!text.contains("10.0.0.1") && !text.contains("tuple="));
    }

    #[test]
    fn prometheus_text_parses_too() {
        let (e, r) = exporter(ExportOptions::default());
        let text = e.render(&r).unwrap().prometheus;
        let p = openmetrics_parser::prometheus::parse_prometheus(&text)
            .unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        let calls = &p.families["skprof_helper_calls_total"];
        let hit = calls
            .iter_samples()
            .find(|s| {
                let l = s.get_labelset().unwrap();
                l.get_label_value("program") == Some("tc_steer")
                    && l.get_label_value("outcome") == Some("hit")
            })
            .unwrap();
        match &hit.value {
            PrometheusValue::Counter(c) => assert_eq!(c.value, MetricNumber::Int(4)),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn buckets_are_exact_for_any_values() {
        // Values spread over 1 ns .. 10 s, with every power of two and its
        // neighbours.
        let mut vals: Vec<u64> = (0..40)
            .flat_map(|e| {
                let p = 1u64 << e;
                [p.saturating_sub(1), p, p + 1]
            })
            .collect();
        let mut x = 12345u64;
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            vals.push(x % 10_000_000_000);
        }
        let h = LogHist::from_values(&vals);
        let b = buckets(&h);
        // As documented (README, --max-export-series): 21 finite bounds,
        // 128 ns to 134.2 ms; a label set costs 25 series.
        assert_eq!(bucket_bounds_ns().first(), Some(&128));
        assert_eq!(bucket_bounds_ns().last(), Some(&134_217_728));
        assert_eq!(label_set_cost(), 25);
        let bounds = bucket_bounds_ns();
        assert_eq!(b.len(), bounds.len() + 1);
        for (i, &bound) in bounds.iter().enumerate() {
            let lo = if i == 0 { 0 } else { bounds[i - 1] };
            let want = vals.iter().filter(|&&v| v >= lo && v < bound).count() as u64;
            assert_eq!(b[i].1, want, "bucket < {bound} ns");
            assert_eq!(b[i].0, bound as f64 / 1e9);
        }
        let over = vals
            .iter()
            .filter(|&&v| v >= *bounds.last().unwrap())
            .count() as u64;
        assert_eq!(b.last().unwrap(), &(f64::INFINITY, over));
        assert_eq!(b.iter().map(|x| x.1).sum::<u64>(), vals.len() as u64);
    }

    #[test]
    fn the_series_budget_keeps_the_first_label_sets_and_frees_gone_programs() {
        // Room for three label sets of the five.
        let opts = ExportOptions {
            max_series: 3 * label_set_cost(),
            keep_gone: 0,
            ..Default::default()
        };
        let (mut e, mut r) = exporter(opts);
        assert_eq!(e.refused(), 1);
        let names = |e: &Exporter, r: &Collection| -> Vec<(String, String)> {
            let om = parse(&e.render(r).unwrap().openmetrics);
            om.families["skprof_helper_calls"]
                .iter_samples()
                .map(|s| {
                    let l = s.get_labelset().unwrap();
                    (
                        l.get_label_value("program").unwrap().to_string(),
                        l.get_label_value("outcome").unwrap().to_string(),
                    )
                })
                .collect()
        };
        let first = names(&e, &r);
        assert_eq!(first.len(), 3, "{first:?}");
        let series = e.render(&r).unwrap().series;
        assert!(series < 3 * label_set_cost() + 150, "{series}");
        // Stable at the cap: the same label sets next time.
        e.update(&mut r, &[]);
        assert_eq!(names(&e, &r), first);

        // Program slot 1 goes away: its series leave, the refused one is
        // admitted.
        r.reading.run_leaks.clear();
        e.update(&mut r, &[1]);
        assert_eq!(e.refused(), 0);
        let after = names(&e, &r);
        assert!(after.iter().all(|(p, _)| p != "tc_steer"), "{after:?}");
        assert_eq!(after.len(), 2);
        let om = parse(&e.render(&r).unwrap().openmetrics);
        // The run-leak counter of the gone program is gone too; its ledger
        // entries (still outstanding) stay visible by id.
        assert_eq!(om.families["skprof_run_leaks"].iter_samples().count(), 1);
        assert!(!om.families.contains_key("skprof_reference_hold_seconds"));
    }

    #[test]
    fn overflows_accumulate_across_programs_going_away() {
        let mut r = sample_collection();
        let k = key(2, Helper::XdpSkLookupUdp, Outcome::Hit, 1);
        r.reading.snapshot.cells.get_mut(&k).unwrap().hist.overflow = 2;
        let mut e = Exporter::new(ExportOptions::default());
        e.update(&mut r, &[]);
        r.reading.snapshot.cells.get_mut(&k).unwrap().hist.overflow = 3;
        e.update(&mut r, &[]);
        // Slot 2 goes away: its cell (and overflow count) with it.
        e.update(&mut r, &[2]);
        e.update(&mut r, &[]);
        let om = parse(&e.render(&r).unwrap().openmetrics);
        assert_eq!(
            counter(sample(
                &om,
                "skprof_drops",
                &[("reason", "latency_overflow")]
            )),
            3.0
        );
    }

    #[test]
    fn tuples_only_with_the_flag_and_capped() {
        let opts = ExportOptions {
            export_tuples: true,
            max_tuples: 1,
            ..Default::default()
        };
        let (e, mut r) = exporter(opts.clone());
        let text = e.render(&r).unwrap().openmetrics;
        let om = parse(&text);
        let age = sample(
            &om,
            "skprof_leaked_reference_age_seconds",
            &[("tuple", "10.0.0.1:40000 -> 10.0.0.2:81")],
        );
        assert_eq!(gauge(age), 2.0);
        // Three leaked references, one exported.
        let now = r.now_ns();
        if let Some(l) = r.reading.ledger.as_mut().map(|l| &mut l.refs) {
            l.push(reference(3, 101, 900, now, 82));
            l.push(reference(4, 102, 700, now, 83));
        }
        let om = parse(&e.render(&r).unwrap().openmetrics);
        assert_eq!(
            om.families["skprof_leaked_reference_age_seconds"]
                .iter_samples()
                .count(),
            1
        );
    }

    #[test]
    fn calibration_is_exported_when_given() {
        let (mut e, r) = exporter(ExportOptions::default());
        e.calibration = Some(Calibration {
            seconds_per_call: 45e-9,
            source: "bench".into(),
        });
        let om = parse(&e.render(&r).unwrap().openmetrics);
        assert_eq!(
            gauge(sample(
                &om,
                "skprof_probe_overhead_per_call_seconds",
                &[("source", "bench")]
            )),
            45e-9
        );
    }

    /// A program that goes away keeps its final figures for `keep_gone`
    /// collections (a scrape in between sees its last calls), then leaves.
    #[test]
    fn gone_programs_keep_their_final_figures_for_a_while() {
        let opts = ExportOptions {
            keep_gone: 2,
            ..Default::default()
        };
        let (mut e, mut r) = exporter(opts);
        let calls_of = |e: &Exporter, r: &Collection, prog: &str| -> Option<f64> {
            let om = parse(&e.render(r).unwrap().openmetrics);
            om.families["skprof_helper_calls"]
                .iter_samples()
                .filter(|s| s.get_labelset().unwrap().get_label_value("program") == Some(prog))
                .map(|s| counter(&s.value))
                .reduce(|a, b| a + b)
        };
        assert_eq!(calls_of(&e, &r, "tc_steer"), Some(6.0));
        // Slot 1 made one more call, then its program went away.
        let c = r
            .reading
            .snapshot
            .cells
            .get_mut(&key(1, Helper::TcSkLookupTcp, Outcome::NoSocket, 1))
            .unwrap();
        c.hist = LogHist::from_values(&[150, 160, 170]);
        c.calls = 3;
        e.update(&mut r, &[1]);
        assert!(
            !r.reading.programs.contains_key(&1) && r.reading.snapshot.programs() == vec![0, 2]
        );
        assert_eq!(calls_of(&e, &r, "tc_steer"), Some(7.0));
        let om = parse(&e.render(&r).unwrap().openmetrics);
        assert_eq!(
            om.families["skprof_reference_hold_seconds"]
                .iter_samples()
                .count(),
            1
        );
        e.update(&mut r, &[]);
        assert_eq!(calls_of(&e, &r, "tc_steer"), Some(7.0));
        e.update(&mut r, &[]);
        assert_eq!(calls_of(&e, &r, "tc_steer"), None);
        assert_eq!(calls_of(&e, &r, "xdp_fwd"), Some(1.0));
    }

    #[test]
    fn no_ledger_means_no_ledger_families() {
        let mut r = sample_collection();
        r.reading.ledger = None;
        let mut e = Exporter::new(ExportOptions::default());
        e.update(&mut r, &[]);
        let om = parse(&e.render(&r).unwrap().openmetrics);
        assert!(!om.families.contains_key("skprof_references_outstanding"));
        assert!(!om.families.contains_key("skprof_ledger"));
    }
}
