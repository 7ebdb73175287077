//! `flowd inspect` run as a process: clean data dirs exit 0; a corrupted byte is named
//! by partition, segment and offset, and exits 1.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

use flowd::storage::layout::partition_dir;
use flowd::storage::{Durability, PartitionLog};

use crate::support::{append_expected, fast_tempdir, small_options};

fn inspect(data_dir: &Path, json: bool) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flowd"));
    command.arg("inspect").arg(data_dir);
    if json {
        command.arg("--json");
    }
    crate::support::run_bounded(&mut command, b"")
}

/// Two topics; `orders/1` is written with one synced batch per 10 records.
fn make_data_dir(data_dir: &Path) {
    for (topic, partition, count) in [("orders", 0u32, 50u64), ("orders", 1, 700), ("clicks", 0, 5)] {
        let dir = partition_dir(data_dir, topic, partition);
        let mut log = PartitionLog::open(&dir, small_options(Durability::Every)).unwrap();
        for start in (0..count).step_by(10) {
            append_expected(&mut log, start..(start + 10).min(count));
        }
        log.close().unwrap();
    }
}

#[test]
fn inspect_reports_a_clean_data_dir() {
    let data = fast_tempdir();
    make_data_dir(data.path());
    let output = inspect(data.path(), false);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("topic clicks partition 0: offsets 0..5, 5 records"),
        "{stdout}"
    );
    assert!(
        stdout.contains("topic orders partition 1: offsets 0..700, 700 records"),
        "{stdout}"
    );
    assert!(stdout.contains("ok, sealed"), "{stdout}");
    assert!(!stdout.contains("CORRUPT"), "{stdout}");

    let output = inspect(data.path(), true);
    assert!(output.status.success());
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["corrupt"], false);
    assert_eq!(report["partitions"].as_array().unwrap().len(), 3);
    assert_eq!(report["partitions"][2]["records"], 700);
    let segments = report["partitions"][2]["segments"].as_array().unwrap();
    let batches: u64 = segments.iter().map(|s| s["batches"].as_u64().unwrap()).sum();
    assert_eq!(batches, 70, "appended in batches of 10");
    assert!(segments.iter().all(|s| s["format_version"] == 2));
    let per_record = report["partitions"][2]["bytes_per_record"].as_f64().unwrap();
    let data_bytes = report["partitions"][2]["data_bytes"].as_f64().unwrap();
    assert!((per_record - data_bytes / 700.0).abs() < 1e-9, "{per_record}");
}

#[test]
fn inspect_lists_a_segment_whose_making_never_finished_and_leaves_it() {
    let data = fast_tempdir();
    make_data_dir(data.path());
    let unfinished = partition_dir(data.path(), "orders", 1).join("00000000000000000700.seg.creating");
    std::fs::write(&unfinished, vec![0u8; 1024]).unwrap();
    let output = inspect(data.path(), false);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "it holds nothing, so nothing is corrupt: {stdout}"
    );
    assert!(
        stdout.contains(
            "00000000000000000700.seg.creating making never finished: holds no record; removed on next open"
        ),
        "{stdout}"
    );
    let report: serde_json::Value = serde_json::from_slice(&inspect(data.path(), true).stdout).unwrap();
    let listed = report["partitions"][2]["unfinished"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{report}");
    assert!(unfinished.exists(), "inspection never writes");
}

#[test]
fn inspect_names_the_partition_segment_and_offset_of_a_corrupt_byte() {
    let data = fast_tempdir();
    make_data_dir(data.path());
    // Damage record 3 of orders/1's first (sealed, synced) segment: its value bytes. The
    // batch holding it (records 0..10) fails its CRC, and is named by its first.
    let dir = partition_dir(data.path(), "orders", 1);
    let segment = dir.join("00000000000000000000.seg");
    let position = {
        let log = PartitionLog::open(&dir, small_options(Durability::Every)).unwrap();
        let bytes = std::fs::read(&segment).unwrap();
        let value = log.get(3).unwrap().value().to_vec();
        let from = flowd::storage::format::SEGMENT_HEADER_BYTES as usize;
        from + bytes[from..]
            .windows(value.len())
            .position(|w| w == value)
            .unwrap()
    };
    let file = OpenOptions::new().write(true).open(&segment).unwrap();
    file.write_all_at(
        &[0xff ^ std::fs::read(&segment).unwrap()[position]],
        position as u64,
    )
    .unwrap();

    let output = inspect(data.path(), false);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains("CORRUPT topic"))
        .expect(&stdout);
    assert!(
        line.contains("topic orders partition 1 segment 00000000000000000000.seg offset 0 byte 4096"),
        "{line}"
    );
    assert!(line.contains("CRC"), "{line}");
    assert!(
        stdout.contains("topic orders partition 1: offsets 0..?"),
        "{stdout}"
    );
    assert!(
        stdout.contains("CORRUPT\n"),
        "the partition line says so: {stdout}"
    );
    // The other partitions are still reported as sound.
    assert!(
        stdout.contains("topic orders partition 0: offsets 0..50"),
        "{stdout}"
    );

    let output = inspect(data.path(), true);
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["corrupt"], true);
    let status = &report["partitions"][2]["segments"][0]["status"];
    assert_eq!(status["state"], "corrupt");
    assert_eq!(status["offset"], 0);
    assert_eq!(status["position"], 4096);

    // And opening the partition refuses, with the same place named.
    let error = PartitionLog::open(&dir, small_options(Durability::Every))
        .err()
        .unwrap();
    assert!(
        error
            .to_string()
            .contains("the batch at byte 4096, holding records from offset 0"),
        "{error}"
    );
}

#[test]
fn inspect_of_a_missing_dir_is_a_clear_error() {
    let output = inspect(Path::new("/nonexistent/flowd-data"), false);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("/nonexistent/flowd-data"), "{stderr}");
}

#[test]
fn bad_usage_exits_2() {
    let output = crate::support::run_bounded(Command::new(env!("CARGO_BIN_EXE_flowd")).arg("inspect"), b"");
    assert_eq!(output.status.code(), Some(2));
}
