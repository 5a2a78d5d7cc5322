//! The end-to-end suite's shared parts; the tests live in `tests/tests/`.
//! [`lab`] builds the private site and headquarters the suite runs in;
//! [`local`] runs the real binaries on the test's own loopback.

pub mod lab;
pub mod local;
