//! Runs monitors on their intervals.
