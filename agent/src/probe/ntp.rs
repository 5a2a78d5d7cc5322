//! NTP preset for UDP checks.
