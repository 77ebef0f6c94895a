//! Order statistics: latency percentiles of one run and medians across runs.

use std::time::Duration;

/// Nearest-rank percentile (`p` in 0..=100) of samples sorted ascending; zero when
/// there are none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median of the values (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let ms = |v: u64| Duration::from_millis(v);
        let hundred: Vec<Duration> = (1..=100).map(ms).collect();
        let cases: &[(&[Duration], f64, Duration)] = &[
            (&hundred, 50.0, ms(50)),
            (&hundred, 99.0, ms(99)),
            (&hundred, 100.0, ms(100)),
            (&hundred, 0.0, ms(1)),
            (&hundred, 99.5, ms(100)),
            (&[ms(5)], 50.0, ms(5)),
            (&[ms(5)], 99.0, ms(5)),
            (&[ms(1), ms(9)], 50.0, ms(1)),
            (&[ms(1), ms(9)], 99.0, ms(9)),
            (&[], 50.0, Duration::ZERO),
        ];
        for (samples, p, want) in cases {
            assert_eq!(
                percentile(samples, *p),
                *want,
                "p{p} of {} samples",
                samples.len()
            );
        }
    }

    #[test]
    fn medians() {
        let cases: &[(&[f64], Option<f64>)] = &[
            (&[], None),
            (&[3.0], Some(3.0)),
            (&[5.0, 1.0, 3.0], Some(3.0)),
            (&[4.0, 1.0, 3.0, 2.0], Some(2.5)),
            (&[2.0, 2.0, 100.0, 1.0, 2.0], Some(2.0)),
        ];
        for (values, want) in cases {
            assert_eq!(median(values), *want, "{values:?}");
        }
    }
}
