//! What the agent process costs its host, from `/proc/self` (Linux): its
//! resident memory and CPU time, for heartbeats. Elsewhere both read as 0.

/// (resident memory in bytes, user + system CPU seconds since start).
pub fn usage() -> (u64, f64) {
    let rss_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| vm_rss_kib(&s))
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| cpu_ticks(&s))
        .map_or(0.0, |t| t as f64 / USER_HZ);
    (rss_kib * 1024, cpu)
}

/// /proc counts CPU time in USER_HZ ticks, 100 per second on Linux.
const USER_HZ: f64 = 100.0;

fn vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime (fields 14 and 15) of a /proc stat line. The command name
/// (field 2) may hold spaces and parentheses: count from after its last ')'.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_status_lines_are_read_even_with_odd_command_names() {
        let stat = "4242 (portwatch (x) 1) S 1 4242 4242 0 -1 4194560 5117 0 0 0 731 152 0 0 20 0 9 0 1234 123456789 4096 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(731 + 152));
        assert_eq!(cpu_ticks("garbage"), None);
        let status = "Name:\tportwatch-agent\nVmHWM:\t   20480 kB\nVmRSS:\t   12345 kB\n";
        assert_eq!(vm_rss_kib(status), Some(12345));
        assert_eq!(vm_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn this_process_uses_some_memory() {
        let (rss, cpu) = usage();
        assert!(rss > 1024 * 1024, "{rss}");
        assert!(cpu >= 0.0);
    }
}
