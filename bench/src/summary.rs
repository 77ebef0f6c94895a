//! `summarize`: for two files of JSON lines (one per registry, as side-by-side.sh
//! collects them), the median of every metric per run label, the ratio A/B, and which
//! side did better, as a Markdown table.

use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::stats::median;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// First registry as NAME=FILE; the numerator of every ratio.
    #[arg(long, value_parser = parse_side)]
    pub a: Side,
    /// Second registry as NAME=FILE.
    #[arg(long, value_parser = parse_side)]
    pub b: Side,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Side {
    pub name: String,
    pub path: PathBuf,
}

/// Parses `NAME=FILE`.
pub fn parse_side(s: &str) -> anyhow::Result<Side> {
    match s.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => Ok(Side {
            name: name.to_owned(),
            path: PathBuf::from(path),
        }),
        _ => bail!("{s:?} is not NAME=FILE"),
    }
}

/// Which way a metric improves, told by its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
    /// Context, not a score: the client's own cost and the window length.
    Neither,
}

pub fn direction(metric: &str) -> Better {
    if metric.starts_with("client_") || metric == "wall_secs" {
        Better::Neither
    } else if metric.ends_with("_per_s") || metric.ends_with("_mb_s") {
        Better::Higher
    } else {
        Better::Lower
    }
}

/// Where a metric goes in the table: scores first (rates, then times), then the
/// server's resource use, then context; by name within each group.
fn table_order(metric: &str) -> (u8, &str) {
    let group = match direction(metric) {
        Better::Higher => 0,
        Better::Lower if metric.starts_with("server_") => 2,
        Better::Lower => 1,
        Better::Neither => 3,
    };
    (group, metric)
}

/// The runs of one label on one side.
#[derive(Default, Debug)]
struct Runs {
    ok: usize,
    failed: usize,
    metrics: Vec<(String, Vec<f64>)>,
}

/// Results grouped by label, in order of first appearance.
type Grouped = Vec<(String, Runs)>;

fn group(text: &str) -> anyhow::Result<Grouped> {
    let mut out: Grouped = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let doc: Value =
            serde_json::from_str(line).with_context(|| format!("line {}: not JSON", n + 1))?;
        let label = doc
            .get("label")
            .or_else(|| doc.get("scenario"))
            .and_then(Value::as_str)
            .with_context(|| format!("line {}: no label or scenario", n + 1))?;
        let pos = match out.iter().position(|(l, _)| l == label) {
            Some(pos) => pos,
            None => {
                out.push((label.to_owned(), Runs::default()));
                out.len() - 1
            }
        };
        let runs = &mut out[pos].1;
        if doc.get("failed").and_then(Value::as_bool) == Some(true) {
            runs.failed += 1;
            continue;
        }
        runs.ok += 1;
        let metrics = doc.get("metrics").and_then(Value::as_object);
        for (key, value) in metrics.into_iter().flatten() {
            let Some(v) = value.as_f64() else { continue };
            match runs.metrics.iter_mut().find(|(k, _)| k == key) {
                Some((_, values)) => values.push(v),
                None => runs.metrics.push((key.clone(), vec![v])),
            }
        }
    }
    Ok(out)
}

/// A number with about three significant digits.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn medians(grouped: &Grouped, label: &str, metric: &str) -> Option<f64> {
    let runs = &grouped.iter().find(|(l, _)| l == label)?.1;
    median(&runs.metrics.iter().find(|(k, _)| k == metric)?.1)
}

/// The Markdown table of medians and ratios.
pub fn summarize(a_name: &str, a_text: &str, b_name: &str, b_text: &str) -> anyhow::Result<String> {
    let a = group(a_text).with_context(|| format!("results of {a_name}"))?;
    let b = group(b_text).with_context(|| format!("results of {b_name}"))?;
    let mut labels: Vec<&str> = a.iter().map(|(l, _)| l.as_str()).collect();
    for (l, _) in &b {
        if !labels.contains(&l.as_str()) {
            labels.push(l);
        }
    }
    let mut out = format!(
        "| run | metric | {a_name} | {b_name} | {a_name}/{b_name} | better |\n|---|---|--:|--:|--:|---|\n"
    );
    for label in labels {
        let runs = |g: &Grouped| {
            g.iter().find(|(l, _)| l == label).map_or_else(
                || "0".to_owned(),
                |(_, r)| match r.failed {
                    0 => r.ok.to_string(),
                    f => format!("{} ({f} failed)", r.ok),
                },
            )
        };
        out.push_str(&format!(
            "| {label} | runs | {} | {} | | |\n",
            runs(&a),
            runs(&b)
        ));
        let mut metrics: Vec<&str> = Vec::new();
        for g in [&a, &b] {
            for (_, r) in g.iter().filter(|(l, _)| l == label) {
                for (k, _) in &r.metrics {
                    if !metrics.contains(&k.as_str()) {
                        metrics.push(k);
                    }
                }
            }
        }
        metrics.sort_by_key(|m| table_order(m));
        for metric in metrics {
            let (ma, mb) = (medians(&a, label, metric), medians(&b, label, metric));
            let show = |m: Option<f64>| m.map_or_else(|| "-".to_owned(), fmt_num);
            let (ratio, better) = match (ma, mb) {
                (Some(x), Some(y)) if y != 0.0 => {
                    let better = match direction(metric) {
                        Better::Higher if x > y => a_name,
                        Better::Higher if y > x => b_name,
                        Better::Lower if x < y => a_name,
                        Better::Lower if y < x => b_name,
                        _ => "",
                    };
                    (format!("{:.2}", x / y), better)
                }
                _ => (String::new(), ""),
            };
            out.push_str(&format!(
                "| {label} | {metric} | {} | {} | {ratio} | {better} |\n",
                show(ma),
                show(mb)
            ));
        }
    }
    Ok(out)
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let read = |s: &Side| {
        std::fs::read_to_string(&s.path).with_context(|| format!("reading {}", s.path.display()))
    };
    print!(
        "{}",
        summarize(&args.a.name, &read(&args.a)?, &args.b.name, &read(&args.b)?)?
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_parse() {
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            ("berth=/tmp/a.jsonl", Some(("berth", "/tmp/a.jsonl"))),
            ("d=x=y", Some(("d", "x=y"))),
            ("=x", None),
            ("berth=", None),
            ("berth", None),
        ];
        for (input, want) in cases {
            let want = want.map(|(n, p)| Side {
                name: n.to_owned(),
                path: PathBuf::from(p),
            });
            assert_eq!(parse_side(input).ok(), want, "{input:?}");
        }
    }

    #[test]
    fn metric_names_tell_which_way_is_better() {
        let cases: &[(&str, Better)] = &[
            ("push_mb_s", Better::Higher),
            ("pull_mb_s", Better::Higher),
            ("requests_per_s", Better::Higher),
            ("get_tag_requests_per_s", Better::Higher),
            ("p50_ms", Better::Lower),
            ("total_secs", Better::Lower),
            ("pull_p99_secs", Better::Lower),
            ("server_peak_rss_kib", Better::Lower),
            ("server_cpu_secs", Better::Lower),
            ("client_cpu_secs", Better::Neither),
            ("client_cpu_cores", Better::Neither),
            ("wall_secs", Better::Neither),
        ];
        for (metric, want) in cases {
            assert_eq!(direction(metric), *want, "{metric}");
        }
    }

    #[test]
    fn numbers_keep_about_three_digits() {
        let cases: &[(f64, &str)] = &[
            (1234.56, "1235"),
            (123.4, "123"),
            (12.345, "12.3"),
            (1.2345, "1.23"),
            (0.012345, "0.012"),
            (-5.5, "-5.50"),
        ];
        for (v, want) in cases {
            assert_eq!(fmt_num(*v), *want);
        }
    }

    #[test]
    fn medians_ratios_and_failures_are_tabulated_per_label() {
        let a = r#"{"label":"m","metrics":{"requests_per_s":100,"p50_ms":2}}
{"label":"m","metrics":{"requests_per_s":300,"p50_ms":4}}
{"label":"m","metrics":{"requests_per_s":200,"p50_ms":3}}
{"label":"h","failed":true}
"#;
        let b = r#"{"label":"m","metrics":{"requests_per_s":50,"p50_ms":6}}
{"label":"h","metrics":{"client_cpu_secs":1,"server_cpu_secs":2,"total_secs":4}}
"#;
        let got = summarize("berth", a, "dist", b).unwrap();
        let want = "\
| run | metric | berth | dist | berth/dist | better |
|---|---|--:|--:|--:|---|
| m | runs | 3 | 1 | | |
| m | requests_per_s | 200 | 50.0 | 4.00 | berth |
| m | p50_ms | 3.00 | 6.00 | 0.50 | berth |
| h | runs | 0 (1 failed) | 1 | | |
| h | total_secs | - | 4.00 |  |  |
| h | server_cpu_secs | - | 2.00 |  |  |
| h | client_cpu_secs | - | 1.00 |  |  |
";
        assert_eq!(got, want);
    }

    #[test]
    fn lines_that_are_not_results_are_errors() {
        for bad in ["not json", r#"{"metrics":{}}"#] {
            assert!(summarize("a", bad, "b", "").is_err(), "{bad}");
        }
    }
}
