//! The portwatch collector.
