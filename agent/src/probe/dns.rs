//! DNS query preset for UDP checks.
