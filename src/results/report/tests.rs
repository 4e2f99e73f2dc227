use super::*;
use crate::results::plots::XAxis;

fn obs(objective: &str, seed: i64, modes: f64) -> Obs {
    Obs {
        vars: vec![
            ("objective".into(), objective.into()),
            ("seed".into(), seed.to_string()),
        ],
        metrics: [("modes".to_string(), modes)].into_iter().collect(),
    }
}

#[test]
fn axis_charts_average_over_seeds_with_sample_std() {
    // rpgan: 8, 6 -> mean 7, std sqrt(((1)^2 + (1)^2) / 1) = sqrt(2)
    // ns:    5, 5, 8 -> mean 6, std sqrt((1 + 1 + 4) / 2) = sqrt(3)
    let o = vec![
        obs("rpgan", 0, 8.0),
        obs("ns", 0, 5.0),
        obs("rpgan", 1, 6.0),
        obs("ns", 1, 5.0),
        obs("ns", 2, 8.0),
    ];
    let c = axis_charts(&o, &["seed".to_string()]);
    assert_eq!(c.len(), 1, "one metric x one axis (seed is averaged over)");
    let c = &c[0];
    assert_eq!(c.x, XAxis::Categories(vec!["rpgan".into(), "ns".into()]));
    assert_eq!(
        (c.x_label.as_str(), c.y_label.as_str()),
        ("objective", "modes")
    );
    assert_eq!(c.series.len(), 1);
    let s = &c.series[0];
    assert_eq!(s.name, "mean ± std over seed");
    assert_eq!(s.points, vec![(0.0, 7.0), (1.0, 6.0)]);
    assert!((s.err[0] - 2f64.sqrt()).abs() < 1e-12);
    assert!((s.err[1] - 3f64.sqrt()).abs() < 1e-12);

    // Without averaging, seed is an axis too: modes by objective has one line per
    // seed, modes by seed one line per objective.
    let c = axis_charts(&o, &[]);
    assert_eq!(c.len(), 2);
    let by_obj = c.iter().find(|c| c.x_label == "objective").unwrap();
    let names: Vec<&str> = by_obj.series.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["seed=0", "seed=1", "seed=2"]);
    // seed=2 only has ns (x = 1).
    assert_eq!(by_obj.series[2].points, vec![(1.0, 8.0)]);
    assert_eq!(by_obj.series[2].err, vec![0.0]);
    let by_seed = c.iter().find(|c| c.x_label == "seed").unwrap();
    assert_eq!(by_seed.series[0].name, "objective=rpgan");
    assert_eq!(by_seed.series[0].points, vec![(0.0, 8.0), (1.0, 6.0)]);
}

#[test]
fn no_axis_with_two_values_means_no_chart() {
    let o = vec![obs("rpgan", 0, 1.0), obs("rpgan", 1, 2.0)];
    assert!(axis_charts(&o, &["seed".to_string()]).is_empty());
    // Non-finite metric values are left out of the means.
    let o = vec![obs("a", 0, f64::NAN), obs("b", 0, 2.0), obs("a", 1, 4.0)];
    let c = axis_charts(&o, &["seed".to_string()]);
    assert_eq!(c[0].series[0].points, vec![(0.0, 4.0), (1.0, 2.0)]);
}

#[test]
fn utc_matches_known_dates() {
    assert_eq!(utc(0.0), "1970-01-01 00:00:00");
    // `date -u -d @1700000000`: Tue Nov 14 22:13:20 UTC 2023.
    assert_eq!(utc(1_700_000_000.0), "2023-11-14 22:13:20");
    // A leap day: `date -u -d @951782400` is 2000-02-29 00:00:00.
    assert_eq!(utc(951_782_400.5), "2000-02-29 00:00:00");
}

#[test]
fn safe_names_are_readable_distinct_and_file_safe() {
    let n = safe_names(
        [
            "train_ring[objective=rpgan-r1+r2,seed=0]",
            "x[a=b/c]",
            "x[a=b?c]",
            "..",
        ]
        .into_iter(),
    );
    assert_eq!(n[0], "train_ring@objective=rpgan-r1+r2,seed=0");
    assert_eq!(n[1], "x@a=b_c");
    assert_eq!(n[2], "x@a=b_c~2");
    assert_eq!(n[3], "_..");
    let long = "s[".to_string() + &"a".repeat(300) + "]";
    let l = &safe_names([long.as_str()].into_iter())[0];
    assert!(l.len() < 130 && l.starts_with("s@aaa"));
}

#[test]
fn table_html_pairs_mean_and_std_and_hides_upstream_columns() {
    use crate::results::table::{frame_from_rows, Cell};
    let df = frame_from_rows(&[
        vec![
            ("pipeline".into(), Cell::Str("p".into())),
            ("objective.loss".into(), Cell::Str("ns".into())),
            ("n".into(), Cell::Int(2)),
            ("modes_mean".into(), Cell::Float(7.5)),
            ("modes_std".into(), Cell::Float(0.5)),
            ("train.wall_s_mean".into(), Cell::Float(3.0)),
            ("status".into(), Cell::Str("ok".into())),
        ],
        vec![
            ("pipeline".into(), Cell::Str("p".into())),
            ("objective.loss".into(), Cell::Str("rpgan".into())),
            ("n".into(), Cell::Int(2)),
            ("modes_mean".into(), Cell::Float(8.0)),
            ("modes_std".into(), Cell::Null),
            ("train.wall_s_mean".into(), Cell::Float(4.0)),
            ("status".into(), Cell::Str("diverged".into())),
        ],
    ])
    .unwrap();
    let stages: BTreeSet<&str> = ["train", "table"].into_iter().collect();
    let h = table_html("table_agg", &df, &stages);
    assert!(
        h.contains("<th title=\"sort\">modes (mean ± std)</th>"),
        "{h}"
    );
    assert!(!h.contains(">modes_std<"), "{h}");
    assert!(
        h.contains("<td data-v=\"7.5\" class=\"num\">7.5 ± 0.5</td>"),
        "{h}"
    );
    // A missing std shows the mean alone.
    assert!(h.contains("<td data-v=\"8.0\" class=\"num\">8</td>"), "{h}");
    // Upstream, constant (`pipeline`, `n`) columns are hidden; status is kept and marked.
    assert!(
        h.contains("<th class=\"x\" title=\"sort\">train.wall_s_mean</th>"),
        "{h}"
    );
    assert!(
        h.contains("<th class=\"x\" title=\"sort\">pipeline</th>"),
        "{h}"
    );
    assert!(h.contains("<th class=\"x\" title=\"sort\">n</th>"), "{h}");
    assert!(h.contains("class=\"st-diverged\">diverged</td>"), "{h}");
    assert!(h.contains("3 more"), "{h}");
}

#[test]
fn rewrites_are_rate_limited() {
    let d = tempfile::tempdir().unwrap();
    let mut r = Reporter {
        out: d.path().join("r.html"),
        command: String::new(),
        device: String::new(),
        memo: HashMap::new(),
        last: None,
        last_cost: Duration::ZERO,
        pending: false,
        min_interval: Duration::from_secs(2),
    };
    let t0 = Instant::now();
    let ms = |m: u64| t0 + Duration::from_millis(m);
    // The first event always writes.
    assert!(r.due(false, t0));
    r.last = Some(t0);
    // A thousand instances finishing within one second: no rewrite yet...
    assert!((0..1000).all(|i| !r.due(true, ms(i))));
    // ...but the next tick after the interval writes what was deferred.
    assert!(r.due(false, ms(2000)));
    r.last = Some(ms(2000));
    r.pending = false;
    // Nothing new: ticks do not rewrite.
    assert!(!r.due(false, ms(9000)));
    // A slow write (300 ms) stretches the interval to 3 s.
    r.last_cost = Duration::from_millis(300);
    assert!(!r.due(true, ms(4500)));
    assert!(r.due(false, ms(5000)));
}

#[test]
fn esc_escapes_markup() {
    assert_eq!(
        esc("<a href=\"x\">&'"),
        "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
    );
}
