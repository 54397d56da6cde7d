//! The node agent's arithmetic against fdinfo text as i915 and xe write it.

// A test crate: a panic is a failed test, helpers included.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use jellyfin_ha_core::busyness::fdinfo::{self, EngineCounter, EngineUsage};
use jellyfin_ha_core::busyness::publish::should_publish;
use jellyfin_ha_core::busyness::report::MAX_REPORTED_PODS;
use jellyfin_ha_core::busyness::{AgentReport, CardReport, IntervalBusyness, Sampler, SeenClient};

const SECOND: u64 = 1_000_000_000;
const UID_A: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const UID_B: &str = "bbbbbbbb-0000-4000-8000-000000000002";

fn i915(client_id: u64, render_ns: u64, video_ns: u64) -> String {
    format!(
        "pos:\t0\nflags:\t02100002\ndrm-driver:\ti915\ndrm-client-id:\t{client_id}\n\
         drm-pdev:\t0000:00:02.0\ndrm-engine-render:\t{render_ns} ns\ndrm-engine-copy:\t0 ns\n\
         drm-engine-video:\t{video_ns} ns\ndrm-engine-capacity-video:\t2\n\
         drm-engine-video-enhance:\t0 ns\n"
    )
}

fn xe(client_id: u64, vcs: u64, total: u64) -> String {
    format!(
        "drm-driver:\txe\ndrm-client-id:\t{client_id}\ndrm-pdev:\t0000:03:00.0\n\
         drm-cycles-rcs:\t0\ndrm-total-cycles-rcs:\t{total}\n\
         drm-cycles-vcs:\t{vcs}\ndrm-total-cycles-vcs:\t{total}\ndrm-engine-capacity-vcs:\t2\n"
    )
}

fn seen(card: &str, text: &str, pod: Option<&str>) -> SeenClient {
    SeenClient {
        card: card.into(),
        client: fdinfo::parse(text).unwrap(),
        pod_uid: pod.map(str::to_string),
    }
}

fn ratio(busyness: &IntervalBusyness, card: &str, class: &str) -> f64 {
    busyness.cards[card][class]
}

fn close(actual: f64, expected: f64) {
    assert!((actual - expected).abs() < 1e-9, "{actual} != {expected}");
}

#[test]
fn parses_i915_fdinfo() {
    let client = fdinfo::parse(include_str!("fixtures/busyness/i915.fdinfo")).unwrap();
    assert_eq!(client.driver, "i915");
    assert_eq!(client.client_id, 42);
    assert_eq!(client.pdev.as_deref(), Some("0000:00:02.0"));
    assert_eq!(
        client.engines.keys().collect::<Vec<_>>(),
        ["copy", "render", "video", "video-enhance"]
    );
    assert_eq!(
        client.engines["render"],
        EngineUsage {
            counter: EngineCounter::BusyNs(25_662_044_495),
            capacity: 1
        }
    );
    assert_eq!(client.engines["video"].capacity, 2);
}

#[test]
fn parses_xe_fdinfo() {
    let client = fdinfo::parse(include_str!("fixtures/busyness/xe.fdinfo")).unwrap();
    assert_eq!(client.driver, "xe");
    assert_eq!(client.client_id, 3);
    assert_eq!(
        client.engines.keys().collect::<Vec<_>>(),
        ["bcs", "ccs", "rcs", "vcs", "vecs"]
    );
    assert_eq!(
        client.engines["rcs"].counter,
        EngineCounter::Cycles {
            busy: 28_257_900,
            total: 7_655_183_225
        }
    );
    assert_eq!(client.engines["ccs"].capacity, 4);
    assert_eq!(client.engines["bcs"].capacity, 1);
}

#[test]
fn skips_junk_lines() {
    let text = "garbage\n:\ndrm-driver:\ti915\ndrm-client-id:\t7\n\
                drm-engine-render:\tlots ns\ndrm-engine-video:\t12\n\
                drm-cycles-rcs:\t5\ndrm-engine-copy:\t3 ns\ndrm-engine-capacity-copy:\tmany\n";
    let client = fdinfo::parse(text).unwrap();
    // Only copy parses: render's value, video's unit and rcs's missing total are junk.
    assert_eq!(client.engines.keys().collect::<Vec<_>>(), ["copy"]);
    assert_eq!(client.engines["copy"].capacity, 1);
}

#[test]
fn i915_ratio_is_busy_time_over_wall_time_over_capacity() {
    let mut sampler = Sampler::new();
    assert_eq!(
        sampler.sample([seen("card0", &i915(1, 0, 0), None)], 0),
        None
    );
    let busy = sampler
        .sample([seen("card0", &i915(1, SECOND / 2, SECOND), None)], SECOND)
        .unwrap();
    close(ratio(&busy, "card0", "render"), 0.5);
    // A second of video time over two video engines in one second is half of the class.
    close(ratio(&busy, "card0", "video"), 0.5);
    close(ratio(&busy, "card0", "copy"), 0.0);
}

#[test]
fn xe_ratio_is_cycles_over_total_cycles_over_capacity() {
    let mut sampler = Sampler::new();
    sampler.sample([seen("card1", &xe(3, 1_000, 10_000), None)], 0);
    let busy = sampler
        .sample([seen("card1", &xe(3, 7_000, 20_000), None)], 2 * SECOND)
        .unwrap();
    close(ratio(&busy, "card1", "vcs"), 0.3);
    close(ratio(&busy, "card1", "rcs"), 0.0);
}

#[test]
fn a_client_shared_by_several_fds_counts_once() {
    let mut sampler = Sampler::new();
    let at = |render| {
        [
            seen("card0", &i915(1, render, 0), Some(UID_A)),
            seen("card0", &i915(1, render, 0), Some(UID_A)),
            seen("card0", &i915(1, render, 0), None),
        ]
    };
    sampler.sample(at(0), 0);
    let busy = sampler.sample(at(SECOND / 4), SECOND).unwrap();
    close(ratio(&busy, "card0", "render"), 0.25);
    close(busy.pods[&(UID_A.into(), "card0".into())]["render"], 0.25);
}

#[test]
fn clients_sum_per_card_clamped_to_one_and_split_per_pod() {
    let mut sampler = Sampler::new();
    let at = |a, b, other| {
        [
            seen("card0", &i915(1, a, 0), Some(UID_A)),
            seen("card0", &i915(2, b, 0), Some(UID_B)),
            seen("card1", &i915(1, other, 0), Some(UID_A)),
        ]
    };
    sampler.sample(at(0, 0, 0), 0);
    let busy = sampler
        .sample(at(SECOND * 7 / 10, SECOND * 6 / 10, SECOND / 10), SECOND)
        .unwrap();
    close(ratio(&busy, "card0", "render"), 1.0);
    close(ratio(&busy, "card1", "render"), 0.1);
    close(busy.pods[&(UID_A.into(), "card0".into())]["render"], 0.7);
    close(busy.pods[&(UID_B.into(), "card0".into())]["render"], 0.6);
    close(busy.pods[&(UID_A.into(), "card1".into())]["render"], 0.1);
}

#[test]
fn a_counter_that_went_backwards_keeps_its_larger_previous_value() {
    let mut sampler = Sampler::new();
    let at = |render| [seen("card0", &i915(1, render, 0), None)];
    sampler.sample(at(10 * SECOND), 0);
    close(
        ratio(
            &sampler.sample(at(9 * SECOND), SECOND).unwrap(),
            "card0",
            "render",
        ),
        0.0,
    );
    // Measured from the 10 s it had reached, not from the 9 s it dipped to.
    close(
        ratio(
            &sampler
                .sample(at(10 * SECOND + SECOND / 2), 2 * SECOND)
                .unwrap(),
            "card0",
            "render",
        ),
        0.5,
    );
}

#[test]
fn clients_appearing_start_from_a_baseline_and_vanished_ones_are_forgotten() {
    let mut sampler = Sampler::new();
    sampler.sample([seen("card0", &i915(1, 0, 0), None)], 0);
    // Client 2 appears with a large counter: none of it belongs to this interval.
    let busy = sampler
        .sample(
            [
                seen("card0", &i915(1, SECOND / 10, 0), None),
                seen("card0", &i915(2, 50 * SECOND, 0), None),
            ],
            SECOND,
        )
        .unwrap();
    close(ratio(&busy, "card0", "render"), 0.1);
    let busy = sampler
        .sample(
            [seen("card0", &i915(2, 50 * SECOND + SECOND / 5, 0), None)],
            2 * SECOND,
        )
        .unwrap();
    close(ratio(&busy, "card0", "render"), 0.2);
    // Client 1 vanished for an interval; when its id comes back it is a new baseline.
    let busy = sampler
        .sample([seen("card0", &i915(1, 40 * SECOND, 0), None)], 3 * SECOND)
        .unwrap();
    close(ratio(&busy, "card0", "render"), 0.0);
}

#[test]
fn a_clock_that_did_not_advance_gives_no_interval() {
    let mut sampler = Sampler::new();
    sampler.sample([seen("card0", &i915(1, 0, 0), None)], 5);
    assert_eq!(
        sampler.sample([seen("card0", &i915(1, 9, 0), None)], 5),
        None
    );
}

fn card(name: &str, driver: &str, usable: bool) -> CardReport {
    CardReport {
        card: name.into(),
        driver: Some(driver.into()),
        pci_address: Some("0000:00:02.0".into()),
        render_node: Some("renderD128".into()),
        render_gid: Some(993),
        usable,
        problem: None,
        engines: Default::default(),
    }
}

#[test]
fn a_report_lists_every_engine_class_and_the_busiest_pods() {
    let mut busyness = IntervalBusyness::default();
    busyness
        .cards
        .insert("card0".into(), [("video".to_string(), 0.4)].into());
    for n in 0..(MAX_REPORTED_PODS + 4) {
        let uid = format!("aaaaaaaa-0000-4000-8000-{n:012}");
        let ratio = n as f64 / 100.0;
        busyness
            .pods
            .insert((uid, "card0".into()), [("video".to_string(), ratio)].into());
    }
    let report = AgentReport::assemble(
        "n1",
        "2026-11-25T20:00:00Z".parse().unwrap(),
        vec![card("card0", "i915", true), card("card1", "xe", true)],
        &busyness,
    );
    let classes = |i: usize| report.cards[i].engines.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        classes(0),
        ["compute", "copy", "render", "video", "video-enhance"]
    );
    assert_eq!(classes(1), ["bcs", "ccs", "rcs", "vcs", "vecs"]);
    close(report.cards[0].engines["video"], 0.4);
    close(report.cards[1].engines["vcs"], 0.0);
    assert_eq!(report.pods.len(), MAX_REPORTED_PODS);
    assert_eq!(
        report.pods[0].pod_uid,
        format!("aaaaaaaa-0000-4000-8000-{:012}", MAX_REPORTED_PODS + 3)
    );
    assert!(
        report
            .pods
            .windows(2)
            .all(|w| w[0].busiest_ratio() >= w[1].busiest_ratio())
    );
}

fn report_at(time: &str, video: f64, usable: bool) -> AgentReport {
    let mut card = card("card0", "i915", usable);
    card.engines.insert("video".into(), video);
    AgentReport {
        node: "n1".into(),
        observed_at: time.parse().unwrap(),
        cards: vec![card],
        pods: vec![],
    }
}

#[test]
fn publishes_when_moved_meaningfully_or_the_refresh_passed() {
    let last = report_at("2026-11-25T20:00:00Z", 0.30, true);
    assert!(should_publish(None, &last, 0.05, 15));
    let small = report_at("2026-11-25T20:00:02Z", 0.33, true);
    assert!(!should_publish(Some(&last), &small, 0.05, 15));
    let big = report_at("2026-11-25T20:00:02Z", 0.36, true);
    assert!(should_publish(Some(&last), &big, 0.05, 15));
    let broken = report_at("2026-11-25T20:00:02Z", 0.30, false);
    assert!(should_publish(Some(&last), &broken, 0.05, 15));
    let quiet_but_due = report_at("2026-11-25T20:00:15Z", 0.30, true);
    assert!(should_publish(Some(&last), &quiet_but_due, 0.05, 15));
    let quiet = report_at("2026-11-25T20:00:14Z", 0.30, true);
    assert!(!should_publish(Some(&last), &quiet, 0.05, 15));
}
