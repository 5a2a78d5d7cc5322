//! Result-buffer benchmark: how fast the agent's on-disk buffer takes results
//! in, hands them out for replay and deletes them on ack, and what a result
//! costs on disk. Prints figures; asserts nothing timed.
//!
//! `cargo bench -p portwatch-agent --bench buffer`; `PORTWATCH_BUFFER_N`
//! sets the backlog (default 1,000,000; `PW_BENCH_QUICK=1` uses 20,000).
//! Appends come in groups of 20, as the link's 20 ms linger produces them for
//! a busy agent; replay reads and acks in the link's batch size.

use std::time::Instant;

use portwatch_agent::buffer::{DEFAULT_MAX_BYTES, ResultBuffer, SledBuffer};

/// A typical encoded result (a TCP check with its phases).
const PAYLOAD: usize = 120;
const APPEND_GROUP: usize = 20;
const READ_BATCH: usize = 2000;

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    let quick = std::env::var_os("PW_BENCH_QUICK").is_some();
    let n: u64 = std::env::var("PORTWATCH_BUFFER_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 20_000 } else { 1_000_000 });
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("buffer");
    let buffer = SledBuffer::open(&path, 4 * DEFAULT_MAX_BYTES).expect("open buffer");
    let payload = vec![0x5a_u8; PAYLOAD];

    let start = Instant::now();
    let mut appended = 0u64;
    while appended < n {
        let k = (APPEND_GROUP as u64).min(n - appended) as usize;
        buffer.append(&vec![payload.clone(); k]).expect("append");
        appended += k as u64;
    }
    let fill = start.elapsed();
    let on_disk = dir_bytes(&path);

    let start = Instant::now();
    let mut after = 0u64;
    let mut read = 0u64;
    let mut read_time = std::time::Duration::ZERO;
    let mut ack_time = std::time::Duration::ZERO;
    loop {
        let t = Instant::now();
        let records = buffer.read_after(after, READ_BATCH).expect("read");
        read_time += t.elapsed();
        let Some(last) = records.last() else { break };
        after = last.seq;
        read += records.len() as u64;
        let t = Instant::now();
        buffer.ack_through(after).expect("ack");
        ack_time += t.elapsed();
    }
    let drain = start.elapsed();
    assert_eq!(read, n, "every appended result is read back once");
    let rate = |count: u64, d: std::time::Duration| count as f64 / d.as_secs_f64().max(1e-9);
    println!(
        "buffer: {n} results of {PAYLOAD} bytes, appended in groups of {APPEND_GROUP}: {:.0}/s ({fill:.2?}), {} bytes on disk = {} bytes/result",
        rate(n, fill),
        on_disk,
        on_disk / n.max(1)
    );
    println!(
        "buffer: replay read+ack in batches of {READ_BATCH}: {:.0}/s ({drain:.2?}; read {read_time:.2?}, ack {ack_time:.2?})",
        rate(n, drain)
    );
}
