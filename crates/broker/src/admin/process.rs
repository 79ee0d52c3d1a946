//! `process_*` metrics from /proc/self (Linux); elsewhere none are reported.

/// What the Prometheus process collector reports.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(super) struct ProcessStats {
    /// User and system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory, in bytes.
    pub resident_bytes: u64,
    /// Virtual memory, in bytes.
    pub virtual_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The open files limit (soft).
    pub max_fds: u64,
    /// Start time since the Unix epoch, in seconds.
    pub start_time_seconds: f64,
    /// Threads.
    pub threads: u64,
}

/// Reads /proc/self; `None` where there is no /proc.
pub(super) fn read() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let mut stats = parse_stat(&stat)?;
    let ticks = 100.0; // USER_HZ: 100 on every Linux architecture in use.
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let boot_time = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<f64>().ok())?;
    stats.start_time_seconds = boot_time + stats.start_time_seconds / ticks;
    stats.cpu_seconds /= ticks;
    stats.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
        stats.max_fds = parse_max_fds(&limits).unwrap_or(0);
    }
    Some(stats)
}

/// Fields of /proc/self/stat, with CPU time and start time still in clock ticks.
fn parse_stat(stat: &str) -> Option<ProcessStats> {
    // The command name is in parentheses and may hold spaces: fields count from after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of proc(5), so field N is fields[N - 3].
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let page = 4096;
    Some(ProcessStats {
        cpu_seconds: (field(14)? + field(15)?) as f64,
        threads: field(20)?,
        start_time_seconds: field(22)? as f64,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page,
        open_fds: 0,
        max_fds: 0,
    })
}

fn parse_max_fds(limits: &str) -> Option<u64> {
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
    fn stat_fields_are_read_after_a_command_name_with_spaces() {
        let stat = "4242 (mid ge) S 1 4242 4242 0 -1 4194560 1 0 0 0 150 50 0 0 20 0 7 0 \
                    12345 1000000 250 18446744073709551615 0";
        let s = parse_stat(stat).unwrap();
        assert_eq!(s.cpu_seconds, 200.0);
        assert_eq!(s.threads, 7);
        assert_eq!(s.start_time_seconds, 12345.0);
        assert_eq!(s.virtual_bytes, 1_000_000);
        assert_eq!(s.resident_bytes, 250 * 4096);
    }

    #[test]
    fn the_soft_open_files_limit_is_read() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_max_fds(limits), Some(1024));
    }

    #[test]
    fn this_process_can_be_read() {
        let s = read().expect("/proc is there on Linux");
        assert!(s.resident_bytes > 0 && s.open_fds > 0 && s.start_time_seconds > 1.0e9);
    }
}
