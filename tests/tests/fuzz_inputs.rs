//! The fuzz targets' drivers (`tests/fuzz/src/lib.rs`, the same code
//! libFuzzer runs) over every saved input, in the ordinary test build: the
//! seeds in `tests/fuzz/seeds/<target>/` (real replies captured from the
//! servers, hand-made edge cases), the minimized corpus the plateau
//! campaigns reached (`tests/fuzz/corpus-min.tar.xz`, packed by
//! `pack-corpus.sh`), and a local corpus when one exists (`PW_FUZZ_CORPUS`,
//! default `tests/fuzz/corpus`).
//! So what fuzzing once reached is checked on every CI run, with the
//! drivers' own checks (escaped text, split-independent verdicts, round
//! trips), without the instrumented build a fuzzing run needs.

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod drivers;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::Command;

use portwatch_agent::check::TcpPreset;

type Driver = fn(&[u8]);

const TARGETS: &[(&str, Driver)] = &[
    ("preset_redis", |d| drivers::preset(TcpPreset::Redis, d)),
    ("preset_postgres", |d| {
        drivers::preset(TcpPreset::Postgres, d)
    }),
    ("preset_mysql", |d| drivers::preset(TcpPreset::Mysql, d)),
    ("preset_smtp", |d| drivers::preset(TcpPreset::Smtp, d)),
    ("preset_imap", |d| drivers::preset(TcpPreset::Imap, d)),
    ("preset_pop3", |d| drivers::preset(TcpPreset::Pop3, d)),
    ("preset_ftp", |d| drivers::preset(TcpPreset::Ftp, d)),
    ("preset_ssh", |d| drivers::preset(TcpPreset::Ssh, d)),
    ("preset_memcached", |d| {
        drivers::preset(TcpPreset::Memcached, d)
    }),
    ("preset_amqp", |d| drivers::preset(TcpPreset::Amqp, d)),
    ("preset_mqtt", |d| drivers::preset(TcpPreset::Mqtt, d)),
    ("preset_kafka", |d| drivers::preset(TcpPreset::Kafka, d)),
    ("expect", drivers::expect),
    ("starttls", drivers::starttls),
    ("dns", drivers::dns),
    ("ntp", drivers::ntp),
    ("config", drivers::config),
    ("join", drivers::join),
    ("csr", drivers::csr),
    ("proto", drivers::proto),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files directly in `dir` (none when it does not exist).
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_saved_fuzz_input_passes_its_driver() {
    let here = fuzz_dir();
    let local =
        std::env::var_os("PW_FUZZ_CORPUS").map_or_else(|| here.join("corpus"), PathBuf::from);
    // Every target has a driver here and a target for libFuzzer.
    let listed = std::fs::read_dir(here.join("fuzz_targets"))
        .unwrap()
        .count();
    assert_eq!(listed, TARGETS.len(), "a fuzz target without a driver here");
    // The packed corpus, unpacked with Debian's tar and xz.
    let unpacked = tempfile::tempdir().unwrap();
    let status = Command::new("tar")
        .arg("-xJf")
        .arg(here.join("corpus-min.tar.xz"))
        .arg("-C")
        .arg(unpacked.path())
        .status()
        .expect("run tar");
    assert!(status.success(), "unpacking corpus-min.tar.xz: {status}");
    let mut failed = Vec::new();
    let mut total = 0;
    for (name, driver) in TARGETS {
        let roots = [
            here.join("seeds"),
            unpacked.path().join("corpus-min"),
            local.clone(),
        ];
        let files: Vec<PathBuf> = roots
            .iter()
            .flat_map(|root| inputs(&root.join(name)))
            .collect();
        assert!(
            !inputs(&roots[1].join(name)).is_empty(),
            "{name}: nothing in corpus-min.tar.xz (tests/fuzz/pack-corpus.sh packs it)"
        );
        for f in &files {
            // A running fuzzer replaces corpus files as it goes.
            let Ok(data) = std::fs::read(f) else { continue };
            if catch_unwind(AssertUnwindSafe(|| driver(&data))).is_err() {
                failed.push(f.display().to_string());
            }
        }
        println!("{name}: {} inputs", files.len());
        total += files.len();
    }
    println!("{total} inputs in all");
    assert!(
        failed.is_empty(),
        "inputs that fail their driver: {failed:#?}"
    );
}
