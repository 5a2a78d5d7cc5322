//! The buffer's guarantees: FIFO replay, deletion only on ack, sequence numbers
//! that never repeat, gaps instead of silent loss, quarantine of corrupt
//! records, and, proven with kill -9 of a real writer process, that every
//! result whose append returned survives a crash.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use rand::Rng;

use super::*;

fn payload(i: u64, len: usize) -> Vec<u8> {
    let mut v = format!("result-{i}-").into_bytes();
    v.resize(len.max(v.len()), b'x');
    v
}

#[test]
fn replays_fifo_and_deletes_only_on_ack() {
    let dir = tempfile::tempdir().unwrap();
    let buf = SledBuffer::open(dir.path(), DEFAULT_MAX_BYTES).unwrap();
    let seqs = buf
        .append(&(0..10).map(|i| payload(i, 20)).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    let first = buf.read_after(0, 4).unwrap();
    assert_eq!(
        first.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(first[0].payload, payload(0, 20));
    // Reading does not consume: only an ack does.
    assert_eq!(buf.read_after(0, 100).unwrap().len(), 10);
    assert_eq!(buf.ack_through(4).unwrap(), 4);
    let rest = buf.read_after(0, 100).unwrap();
    assert_eq!(rest.first().map(|r| r.seq), Some(5));
    assert_eq!(buf.stats().records, 6);
    assert_eq!(buf.stats().bytes, 6 * 20);
    // A stale ack (already acked range) removes nothing.
    assert_eq!(buf.ack_through(3).unwrap(), 0);
}

#[test]
fn sequence_numbers_never_repeat_across_reopen_even_when_empty() {
    let dir = tempfile::tempdir().unwrap();
    {
        let buf = SledBuffer::open(dir.path(), DEFAULT_MAX_BYTES).unwrap();
        buf.append(&[b"a".to_vec(), b"b".to_vec()]).unwrap();
        buf.ack_through(2).unwrap();
        assert_eq!(buf.stats().records, 0);
    }
    let buf = SledBuffer::open(dir.path(), DEFAULT_MAX_BYTES).unwrap();
    // The collector deduplicates on (agent, seq): reusing 1 would lose this result.
    assert_eq!(buf.append(&[b"c".to_vec()]).unwrap(), vec![3]);
    let st = buf.stats();
    assert_eq!((st.records, st.bytes, st.next_seq), (1, 1, 4));
}

#[test]
fn the_epoch_survives_reopen_and_a_new_buffer_gets_another() {
    let dir = tempfile::tempdir().unwrap();
    let epoch = {
        let buf = SledBuffer::open(&dir.path().join("a"), DEFAULT_MAX_BYTES).unwrap();
        buf.append(&[b"a".to_vec()]).unwrap();
        buf.stats().epoch
    };
    assert_ne!(epoch, 0);
    let reopened = SledBuffer::open(&dir.path().join("a"), DEFAULT_MAX_BYTES).unwrap();
    assert_eq!(reopened.stats().epoch, epoch);
    // A wiped buffer numbers from 1 again: the collector must see a new epoch.
    let fresh = SledBuffer::open(&dir.path().join("b"), DEFAULT_MAX_BYTES).unwrap();
    assert_eq!(fresh.append(&[b"x".to_vec()]).unwrap(), vec![1]);
    assert_ne!(fresh.stats().epoch, epoch);
}

#[test]
fn full_buffer_drops_oldest_and_records_one_merged_gap() {
    let dir = tempfile::tempdir().unwrap();
    let buf = SledBuffer::open(dir.path(), 1000).unwrap();
    for i in 0..10 {
        buf.append(&[payload(i, 100)]).unwrap();
    }
    assert!(buf.gaps().unwrap().is_empty());
    buf.append(&[payload(10, 100)]).unwrap(); // drops seq 1
    buf.append(&[payload(11, 250)]).unwrap(); // drops 2, 3, 4
    assert_eq!(
        buf.gaps().unwrap(),
        vec![Gap {
            from: 1,
            to: 4,
            count: 4
        }]
    );
    let st = buf.stats();
    assert_eq!(st.dropped_total, 4);
    assert!(st.bytes <= 1000, "{st:?}");
    assert_eq!(
        buf.read_after(0, 1).unwrap()[0].seq,
        5,
        "oldest survivors first"
    );
    // Too big for the whole buffer: a clear error, nothing dropped for it.
    assert!(matches!(
        buf.append(&[vec![0; 1001]]),
        Err(BufferError::TooLarge { .. })
    ));
    assert_eq!(buf.stats().dropped_total, 4);
    // Acking past the gap clears it; the drop counter stays (it is a metric).
    buf.ack_through(5).unwrap();
    assert!(buf.gaps().unwrap().is_empty());
    drop(buf);
    let buf = SledBuffer::open(dir.path(), 1000).unwrap();
    assert_eq!(
        buf.stats().dropped_total,
        4,
        "drop counter survives a restart"
    );
}

#[test]
fn corrupt_record_is_quarantined_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let buf = SledBuffer::open(dir.path(), DEFAULT_MAX_BYTES).unwrap();
    buf.append(&[b"one".to_vec(), b"two".to_vec(), b"three".to_vec()])
        .unwrap();
    // Damage record 2 behind the buffer's back: its checksum no longer matches.
    let mut bad = frame(b"two");
    bad[5] ^= 0xff;
    buf.db.insert(key(b'r', 2), bad).unwrap();
    let got = buf.read_after(0, 10).unwrap();
    assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!(buf.stats().quarantined_total, 1);
    assert_eq!(buf.stats().records, 2);
    assert!(
        buf.db.get(key(b'q', 2)).unwrap().is_some(),
        "kept aside for inspection"
    );
    // A truncated record (shorter than its checksum) is quarantined too.
    buf.db.insert(key(b'r', 3), &b"ab"[..]).unwrap();
    assert_eq!(buf.read_after(0, 10).unwrap().len(), 1);
    assert_eq!(buf.stats().quarantined_total, 2);
}

/// The writer side of the crash test: appends forever (bounded), printing each
/// sequence number once its append has returned, acking now and then.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("PW_BUFFER_CRASH_DIR") else {
        return;
    };
    let buf = SledBuffer::open(Path::new(&dir), DEFAULT_MAX_BYTES).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut i = 0u64;
    while Instant::now() < deadline {
        let batch: Vec<Vec<u8>> = (0..1 + i % 5).map(|j| payload(i * 10 + j, 60)).collect();
        let seqs = buf.append(&batch).unwrap();
        for s in &seqs {
            println!("appended {s}");
        }
        if i % 7 == 6 {
            // Announced before the ack: once acked, records through it may be
            // gone even if the process dies before it could say so.
            let through = seqs[0].saturating_sub(3);
            println!("acking {through}");
            buf.ack_through(through).unwrap();
        }
        i += 1;
    }
}

#[test]
fn kill_dash_nine_never_loses_an_appended_result() {
    let mut rng = rand::rng();
    let mut total_checked = 0usize;
    for iteration in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let mut child = portwatch_harness::spawn_test_child(
            "buffer::tests::crash_child",
            "PW_BUFFER_CRASH_DIR",
            dir.path(),
        );
        let stdout = child.stdout.take().unwrap();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut appended = Vec::new();
            let mut acked = 0u64;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(s) = line.strip_prefix("appended ") {
                    appended.push(s.parse::<u64>().unwrap());
                    if appended.len() == 1 {
                        let _ = started_tx.send(());
                    }
                } else if let Some(s) = line.strip_prefix("acking ") {
                    acked = s.parse().unwrap();
                }
            }
            (appended, acked)
        });
        // Kill at a random point once the writer is under way (its start-up
        // time varies with the machine's load, so wait for its first append).
        started_rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("iteration {iteration}: the writer never got going"));
        std::thread::sleep(Duration::from_millis(rng.random_range(5..300)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let (appended, acked) = reader.join().unwrap();
        assert!(
            !appended.is_empty(),
            "iteration {iteration}: the writer never got going"
        );

        let buf = SledBuffer::open(dir.path(), DEFAULT_MAX_BYTES).unwrap();
        let stored: Vec<Record> = buf.read_after(0, usize::MAX).unwrap();
        let stored_seqs: std::collections::BTreeSet<u64> = stored.iter().map(|r| r.seq).collect();
        for s in appended.iter().filter(|&&s| s > acked) {
            assert!(
                stored_seqs.contains(s),
                "iteration {iteration}: appended seq {s} lost after kill -9 (acked through {acked}, \
                 last appended {:?}, stored {:?}..{:?} n={}, next_seq {})",
                appended.last(),
                stored_seqs.first(),
                stored_seqs.last(),
                stored_seqs.len(),
                buf.stats().next_seq
            );
        }
        assert_eq!(
            buf.stats().quarantined_total,
            0,
            "iteration {iteration}: no corruption"
        );
        let max_seen = appended.iter().max().copied().unwrap_or(0);
        assert!(
            buf.stats().next_seq > max_seen,
            "iteration {iteration}: sequence numbers must not be reused"
        );
        // Replay after the crash is still FIFO.
        assert!(stored.windows(2).all(|w| w[0].seq < w[1].seq));
        total_checked += appended.len();
    }
    assert!(total_checked > 20);
}
