//! What a scenario prints: a human table, its own and the server's resource use, and
//! exactly one JSON line, the only line on stdout that starts with `{`.

use serde_json::{Map, Value};

use crate::common::Common;
use crate::usage::Usage;

/// The results of one scenario run.
pub struct Report {
    scenario: &'static str,
    columns: Vec<&'static str>,
    rows: Vec<Vec<String>>,
    params: Map<String, Value>,
    metrics: Map<String, Value>,
}

impl Report {
    pub fn new(scenario: &'static str, columns: &[&'static str]) -> Report {
        Report {
            scenario,
            columns: columns.to_vec(),
            rows: Vec::new(),
            params: Map::new(),
            metrics: Map::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// A setting of the run, echoed in the JSON line.
    pub fn param(&mut self, key: &str, value: impl Into<Value>) {
        self.params.insert(key.to_owned(), value.into());
    }

    /// A measured number; `summarize` compares metrics across registries.
    pub fn metric(&mut self, key: &str, value: f64) {
        self.metrics.insert(key.to_owned(), Value::from(value));
    }

    /// Adds the resource use of the measured window, then prints the table, the
    /// resource lines and the JSON line.
    pub fn print(mut self, common: &Common, seed: u64, usage: &Usage) {
        self.param("seed", seed);
        self.metric("wall_secs", usage.wall_secs);
        self.metric("client_cpu_secs", usage.client_cpu_secs);
        self.metric(
            "client_cpu_cores",
            usage.client_cpu_secs / usage.wall_secs.max(f64::MIN_POSITIVE),
        );
        if let Some(server) = usage.server {
            self.metric("server_cpu_secs", server.cpu_secs);
            self.metric("server_peak_rss_kib", server.peak_rss_kib as f64);
            self.param(
                "server_peak_rss_since",
                if server.peak_is_windowed {
                    "window"
                } else {
                    "start"
                },
            );
        }
        print!("{}", render_table(&self.columns, &self.rows));
        println!(
            "client cpu {:.2}s over {:.2}s wall ({:.2} cores)",
            usage.client_cpu_secs,
            usage.wall_secs,
            usage.client_cpu_secs / usage.wall_secs.max(f64::MIN_POSITIVE)
        );
        if let Some(server) = usage.server {
            println!(
                "server peak RSS {:.1} MiB (since {}), cpu {:.2}s",
                server.peak_rss_kib as f64 / 1024.0,
                if server.peak_is_windowed {
                    "the window started"
                } else {
                    "it started"
                },
                server.cpu_secs
            );
        }
        let mut line = Map::new();
        line.insert("scenario".into(), self.scenario.into());
        if let Some(label) = &common.label {
            line.insert("label".into(), label.as_str().into());
        }
        line.insert("params".into(), Value::Object(self.params));
        line.insert("metrics".into(), Value::Object(self.metrics));
        println!("{}", Value::Object(line));
    }
}

/// Left-aligned columns two spaces apart, one line per row, no trailing spaces.
pub fn render_table(columns: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            let pad = widths.get(i).copied().unwrap_or(0);
            out.push_str(&format!("{cell:<pad$}"));
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(&mut columns.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Column names, rows, and the rendered table.
    type Case = (&'static [&'static str], Vec<Vec<String>>, &'static str);

    #[test]
    fn tables_align_columns() {
        let cases: &[Case] = &[
            (&["a", "bb"], vec![], "a  bb\n"),
            (
                &["op", "req/s"],
                vec![
                    vec!["get-tag".into(), "1200.5".into()],
                    vec!["all".into(), "9".into()],
                ],
                "op       req/s\nget-tag  1200.5\nall      9\n",
            ),
            (
                &["x", "y"],
                vec![vec!["long".into(), String::new()]],
                "x     y\nlong\n",
            ),
        ];
        for (columns, rows, want) in cases {
            assert_eq!(render_table(columns, rows), *want);
        }
    }
}
