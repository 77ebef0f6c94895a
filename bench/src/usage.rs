//! Resource use over a scenario's measured window, read from /proc: this process's CPU
//! time, and the server's CPU time and peak resident set (VmHWM) when its PID is given.

use std::time::Instant;

/// /proc reports CPU time in USER_HZ ticks, which Linux fixes at 100 per second.
const TICKS_PER_SEC: f64 = 100.0;

/// Peak resident set in KiB, from the text of /proc/PID/status.
pub fn parse_vm_hwm_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// User plus system CPU ticks, from the text of /proc/PID/stat. The command name may
/// hold spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(parse_cpu_ticks(&stat)? as f64 / TICKS_PER_SEC)
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    parse_vm_hwm_kib(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Resets a process's peak RSS to its current RSS (Linux 4.0+, needs the right to
/// write its clear_refs), so that VmHWM covers only what follows.
fn reset_vm_hwm(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// What a measured window used.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub wall_secs: f64,
    pub client_cpu_secs: f64,
    pub server: Option<ServerUsage>,
}

#[derive(Debug, Clone, Copy)]
pub struct ServerUsage {
    pub cpu_secs: f64,
    pub peak_rss_kib: u64,
    /// Whether the peak covers only the window (else: since the server started).
    pub peak_is_windowed: bool,
}

/// Starts measuring when created; [`Meter::finish`] ends the window.
pub struct Meter {
    started: Instant,
    own_cpu: f64,
    server: Option<(u32, f64, bool)>,
}

impl Meter {
    pub fn start(server_pid: Option<u32>) -> Meter {
        let server = server_pid.and_then(|pid| {
            let windowed = reset_vm_hwm(pid);
            Some((pid, cpu_secs(pid)?, windowed))
        });
        Meter {
            started: Instant::now(),
            own_cpu: cpu_secs(std::process::id()).unwrap_or(0.0),
            server,
        }
    }

    pub fn finish(self) -> Usage {
        let wall_secs = self.started.elapsed().as_secs_f64();
        let own_cpu = cpu_secs(std::process::id()).unwrap_or(0.0);
        let server = self.server.and_then(|(pid, before, windowed)| {
            Some(ServerUsage {
                cpu_secs: cpu_secs(pid)? - before,
                peak_rss_kib: vm_hwm_kib(pid)?,
                peak_is_windowed: windowed,
            })
        });
        Usage {
            wall_secs,
            client_cpu_secs: own_cpu - self.own_cpu,
            server,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_parses_from_status() {
        let cases: &[(&str, Option<u64>)] = &[
            (
                "Name:\tberth\nVmPeak:\t  9 kB\nVmHWM:\t   45364 kB\nVmRSS:\t 1 kB\n",
                Some(45364),
            ),
            ("VmHWM:\t0 kB\n", Some(0)),
            ("Name:\tberth\nVmRSS:\t 1 kB\n", None),
            ("VmHWM:\t\n", None),
            ("VmHWM:\tlots kB\n", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_vm_hwm_kib(input), *want, "{input:?}");
        }
    }

    #[test]
    fn cpu_ticks_parse_from_stat_whatever_the_command_name() {
        let tail = "S 1 2 3 4 5 6 7 8 9 10 250 31 0 0 20 0 9";
        let cases: &[(String, Option<u64>)] = &[
            (format!("6098 (berth) {tail}"), Some(281)),
            (format!("6098 (a b) (c)) {tail}"), Some(281)),
            ("6098 (berth) S 1 2".to_owned(), None),
            ("no parenthesis".to_owned(), None),
            ("1 (x) S 1 2 3 4 5 6 7 8 9 10 u 31 0".to_owned(), None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_cpu_ticks(input), *want, "{input:?}");
        }
    }
}
