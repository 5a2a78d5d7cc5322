//! The end-to-end suite's shared parts; the tests live in `tests/tests/`.
//! [`lab`] builds the private site and headquarters the suite runs in;
//! [`pair`] is one collector and one agent on loopback (replay, footprint);
//! [`local`] runs the real binaries on the test's own loopback (ingest,
//! detection).

pub mod lab;
pub mod local;
pub mod pair;
