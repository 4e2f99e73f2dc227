use super::*;

#[test]
fn memory_sizes_in_mib() {
    assert_eq!(parse_mem_mb("512"), Some(512));
    assert_eq!(parse_mem_mb("512M"), Some(512));
    assert_eq!(parse_mem_mb("4G"), Some(4096));
    assert_eq!(parse_mem_mb("4gb"), Some(4096));
    assert_eq!(parse_mem_mb("1T"), Some(1 << 20));
    assert_eq!(parse_mem_mb("1536K"), Some(2)); // rounded up
    for bad in ["", "0", "0G", "G", "4X", "-1G", "1.5G"] {
        assert_eq!(parse_mem_mb(bad), None, "{bad}");
    }
}

#[test]
fn slurm_time_forms_in_minutes() {
    assert_eq!(parse_time_min("90"), Some(90));
    assert_eq!(parse_time_min("1:30"), Some(2)); // 1 min 30 s, rounded up
    assert_eq!(parse_time_min("1:30:00"), Some(90));
    assert_eq!(parse_time_min("2-00"), Some(2 * 24 * 60));
    assert_eq!(parse_time_min("1-02:03"), Some(24 * 60 + 2 * 60 + 3));
    assert_eq!(parse_time_min("1-00:00:01"), Some(24 * 60 + 1));
    for bad in ["", "0", "0:00", "1:2:3:4", "a", "1-", "-5", "1-2:3:4:5"] {
        assert_eq!(parse_time_min(bad), None, "{bad}");
    }
}

#[test]
fn resources_block_parses_every_key() {
    let p = Pipeline::parse(
        Path::new("p.yaml"),
        "name: t\nstages:\n  a:\n    kind: k\n    resources: {cpus: 2, gpus: 1, mem: 6G, \
         time: \"2:00:00\", partition: gpu, extra: [\"--qos=short\"]}\n",
    )
    .unwrap();
    assert_eq!(
        p.stages[0].resources,
        StageResources {
            cpus: Some(2),
            gpus: Some(1),
            mem_mb: Some(6144),
            time_min: Some(120),
            partition: Some("gpu".into()),
            extra: vec!["--qos=short".into()],
        }
    );
}
