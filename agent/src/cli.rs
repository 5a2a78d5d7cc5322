//! The `portwatch-agent` command line.
