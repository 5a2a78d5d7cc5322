//! The end-to-end suite's shared parts; the tests live in `tests/tests/`.
//! [`lab`] builds the private site and headquarters the suite runs in;
//! [`pair`] is one collector and one agent on loopback, for measurements.

pub mod lab;
pub mod pair;
