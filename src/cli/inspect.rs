//! `flowd inspect DATA_DIR [--json]`: the offline report, as a table or as JSON.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use crate::cli::CliError;
use crate::storage::LogOptions;
use crate::storage::inspect::{self, InspectReport, SegmentReport, SegmentStatus};

pub fn run(data_dir: &Path, json: bool) -> Result<ExitCode, CliError> {
    let report = inspect::inspect(data_dir, LogOptions::default().index_interval_bytes)?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write_table(&mut out, &report)?;
    }
    out.flush()?;
    Ok(if report.corrupt {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn write_table(out: &mut impl Write, report: &InspectReport) -> std::io::Result<()> {
    writeln!(out, "data dir {}", report.data_dir)?;
    if report.partitions.is_empty() {
        writeln!(out, "no topics")?;
    }
    for p in &report.partitions {
        writeln!(
            out,
            "\ntopic {} partition {}: offsets {}..{}, {} records, {}{}{}",
            p.topic,
            p.partition,
            p.start_offset.map_or("-".into(), |o| o.to_string()),
            p.next_offset.map_or("?".into(), |o| o.to_string()),
            p.records,
            bytes(p.data_bytes),
            p.bytes_per_record
                .map_or(String::new(), |b| format!(" ({b:.1} B per record)")),
            if p.corrupt { ", CORRUPT" } else { "" }
        )?;
        writeln!(
            out,
            "  {:<26} {:>21} {:>10} {:>9} {:<51} status",
            "segment", "offsets", "bytes", "batches", "time range (UTC)"
        )?;
        for s in &p.segments {
            write_segment(out, &p.topic, p.partition, s)?;
        }
        for file in &p.unfinished {
            let name = Path::new(file)
                .file_name()
                .map_or(file.clone(), |n| n.to_string_lossy().into_owned());
            writeln!(
                out,
                "  {name:<26} making never finished: holds no record; removed on next open"
            )?;
        }
    }
    for s in &report.set_aside {
        writeln!(
            out,
            "\nrepaired: topic {} partition {} was damaged at {} and copied again from its replicas; \
             the damaged files are kept in {}: {}",
            s.topic,
            s.partition,
            time(s.at_ms),
            s.dir,
            s.why
        )?;
    }
    if report.corrupt {
        writeln!(out, "\nCORRUPT: see the segments marked above")?;
    }
    Ok(())
}

fn write_segment(
    out: &mut impl Write,
    topic: &str,
    partition: u32,
    s: &SegmentReport,
) -> std::io::Result<()> {
    let name = Path::new(&s.file)
        .file_name()
        .map_or(s.file.clone(), |n| n.to_string_lossy().into_owned());
    let offsets = match s.next_offset {
        Some(next) => format!("{}..{}", s.base_offset, next),
        None => format!("{}..?", s.base_offset),
    };
    let times = match (s.min_timestamp_ms, s.max_timestamp_ms) {
        (Some(min), Some(max)) => format!("{} .. {}", time(min), time(max)),
        _ => "-".into(),
    };
    let old = if s.format_version == Some(crate::storage::format::FORMAT_VERSION_FRAMES) {
        ", format 1 (read only)"
    } else {
        ""
    };
    let status = match &s.status {
        SegmentStatus::Ok if s.sealed => format!("ok, sealed{old}"),
        SegmentStatus::Ok => format!("ok{old}"),
        SegmentStatus::TornTail { at_byte, reason, .. } => {
            format!("torn tail at byte {at_byte} ({reason}); cut on next open")
        }
        SegmentStatus::Corrupt {
            offset,
            position,
            error,
        } => format!(
            "CORRUPT topic {topic} partition {partition} segment {name}{}{}: {error}",
            offset.map_or(String::new(), |o| format!(" offset {o}")),
            position.map_or(String::new(), |p| format!(" byte {p}")),
        ),
    };
    writeln!(
        out,
        "  {name:<26} {offsets:>21} {:>10} {:>9} {times:<51} {status}",
        bytes(s.data_bytes),
        s.batches
    )
}

fn time(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(ms) => humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string(),
        Err(_) => format!("{ms}ms"),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
