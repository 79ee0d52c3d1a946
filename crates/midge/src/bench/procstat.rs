//! CPU time and memory of a process, from Linux's `/proc` (no `unsafe`, no libc).

use std::time::Duration;

/// `/proc` reports CPU time in USER_HZ ticks, which Linux fixes at 100 per second for
/// user space whatever the kernel's internal tick rate.
const TICKS_PER_SECOND: u64 = 100;

/// Which process: ourselves or another one.
#[derive(Debug, Clone, Copy)]
pub enum Pid {
    /// The bench itself.
    Own,
    /// Another process (the broker).
    Other(u32),
}

impl Pid {
    fn dir(self) -> String {
        match self {
            Pid::Own => "/proc/self".to_string(),
            Pid::Other(pid) => format!("/proc/{pid}"),
        }
    }
}

/// User plus system CPU time the process has used so far (10 ms resolution).
pub fn cpu_time(pid: Pid) -> std::io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("{}/stat", pid.dir()))?;
    parse_cpu_time(&stat).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "unexpected /proc stat format",
        )
    })
}

fn parse_cpu_time(stat: &str) -> Option<Duration> {
    // The command name (field 2) is in parentheses and may contain spaces or ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state is field 3, utime 14, stime 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis(
        (utime + stime) * 1000 / TICKS_PER_SECOND,
    ))
}

/// Resident set size in KiB.
pub fn rss_kib(pid: Pid) -> std::io::Result<u64> {
    let status = std::fs::read_to_string(format!("{}/status", pid.dir()))?;
    status_field(&status, "VmRSS:").ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "no VmRSS in /proc status")
    })
}

fn status_field(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

/// The soft limit on open files of this process, if it can be read.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_time_is_utime_plus_stime() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 \
                    8 0 100 1000000 500 18446744073709551615";
        assert_eq!(parse_cpu_time(stat), Some(Duration::from_secs(3)));
    }

    #[test]
    fn own_process_has_cpu_time_and_rss() {
        assert!(rss_kib(Pid::Own).expect("rss") > 0);
        cpu_time(Pid::Own).expect("cpu time");
        assert!(open_files_limit().expect("limit") > 0);
    }

    #[test]
    fn status_field_reads_kib() {
        let status = "Name:\tmosquitto\nVmPeak:\t 9000 kB\nVmRSS:\t    6144 kB\n";
        assert_eq!(status_field(status, "VmRSS:"), Some(6144));
    }
}
