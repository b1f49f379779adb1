//! The load generator's accounting: pure, so tests drive it without servers or clocks.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// How many distinct error messages a report keeps.
pub const ERROR_SAMPLES: usize = 10;

/// One finished call.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// From the intended send time (open loop) or the send (closed loop) to the reply.
    pub latency: Duration,
    pub result: Result<Answered, Failed>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Answered {
    pub expert_id: String,
    pub cost: f64,
    /// Official-metric EM and F1 against the references, when the query has some.
    pub score: Option<(f64, f64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Failed {
    /// gRPC status code name.
    pub code: &'static str,
    pub message: String,
}

pub struct Tally {
    histogram: Histogram<u64>,
    /// Answers slower than this do not count toward goodput (the calls' deadline).
    deadline: Duration,
    /// Answers within `deadline`.
    good: u64,
    count: u64,
    status_codes: BTreeMap<String, u64>,
    error_samples: BTreeMap<String, u64>,
    experts: BTreeMap<String, u64>,
    cost: f64,
    scored: u64,
    em: f64,
    f1: f64,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            histogram: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("valid histogram bounds"),
            deadline: Duration::MAX,
            good: 0,
            count: 0,
            status_codes: BTreeMap::new(),
            error_samples: BTreeMap::new(),
            experts: BTreeMap::new(),
            cost: 0.0,
            scored: 0,
            em: 0.0,
            f1: 0.0,
        }
    }
}

impl Tally {
    /// A tally whose goodput counts answers within `deadline`.
    pub fn with_deadline(deadline: Duration) -> Self {
        Self {
            deadline,
            ..Self::default()
        }
    }

    pub fn record(&mut self, outcome: &Outcome) {
        self.count += 1;
        if outcome.result.is_ok() && outcome.latency <= self.deadline {
            self.good += 1;
        }
        self.histogram
            .saturating_record((outcome.latency.as_micros() as u64).max(1));
        match &outcome.result {
            Ok(a) => {
                *self.status_codes.entry("OK".into()).or_default() += 1;
                *self.experts.entry(a.expert_id.clone()).or_default() += 1;
                self.cost += a.cost;
                if let Some((em, f1)) = a.score {
                    self.scored += 1;
                    self.em += em;
                    self.f1 += f1;
                }
            }
            Err(f) => {
                *self.status_codes.entry(f.code.into()).or_default() += 1;
                let sample = format!("{}: {}", f.code, f.message);
                if self.error_samples.len() < ERROR_SAMPLES
                    || self.error_samples.contains_key(&sample)
                {
                    *self.error_samples.entry(sample).or_default() += 1;
                }
            }
        }
    }

    pub fn merge(&mut self, other: &Tally) {
        self.count += other.count;
        self.good += other.good;
        let _ = self.histogram.add(&other.histogram);
        for (k, v) in &other.status_codes {
            *self.status_codes.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.error_samples {
            if self.error_samples.len() < ERROR_SAMPLES || self.error_samples.contains_key(k) {
                *self.error_samples.entry(k.clone()).or_default() += v;
            }
        }
        for (k, v) in &other.experts {
            *self.experts.entry(k.clone()).or_default() += v;
        }
        self.cost += other.cost;
        self.scored += other.scored;
        self.em += other.em;
        self.f1 += other.f1;
    }

    /// The report for calls recorded over `elapsed`.
    pub fn report(&self, elapsed: Duration) -> LoadReport {
        let answered = self.status_codes.get("OK").copied().unwrap_or(0);
        let q = |p: f64| {
            if self.count == 0 {
                0
            } else {
                self.histogram.value_at_quantile(p)
            }
        };
        let secs = elapsed.as_secs_f64();
        LoadReport {
            count: self.count,
            errors: self.count - answered,
            status_codes: self.status_codes.clone(),
            error_samples: self.error_samples.clone(),
            total_s: secs,
            rps: if secs > 0.0 {
                self.count as f64 / secs
            } else {
                0.0
            },
            within_deadline: self.good,
            goodput_rps: if secs > 0.0 {
                self.good as f64 / secs
            } else {
                0.0
            },
            latency_us: Latency {
                fastest: if self.count == 0 {
                    0
                } else {
                    self.histogram.min()
                },
                average: if self.count == 0 {
                    0.0
                } else {
                    self.histogram.mean()
                },
                p50: q(0.50),
                p75: q(0.75),
                p90: q(0.90),
                p95: q(0.95),
                p99: q(0.99),
                p999: q(0.999),
                max: if self.count == 0 {
                    0
                } else {
                    self.histogram.max()
                },
            },
            histogram: self.buckets(10),
            em: if self.scored == 0 {
                0.0
            } else {
                100.0 * self.em / self.scored as f64
            },
            f1: if self.scored == 0 {
                0.0
            } else {
                100.0 * self.f1 / self.scored as f64
            },
            scored: self.scored,
            mean_cost: if answered == 0 {
                0.0
            } else {
                self.cost / answered as f64
            },
            expert_share: self
                .experts
                .iter()
                .map(|(k, v)| (k.clone(), *v as f64 / answered.max(1) as f64))
                .collect(),
        }
    }

    /// `n` equal-width latency buckets between the fastest and the slowest call, as ghz prints.
    fn buckets(&self, n: u64) -> Vec<Bucket> {
        if self.count == 0 {
            return Vec::new();
        }
        let (lo, hi) = (self.histogram.min(), self.histogram.max());
        let width = ((hi - lo) / n).max(1);
        (0..n)
            .map(|i| {
                let start = lo + i * width;
                let end = if i + 1 == n { hi } else { start + width - 1 };
                let count = self
                    .histogram
                    .iter_recorded()
                    .filter(|v| {
                        let x = v.value_iterated_to();
                        x >= start && x <= end
                    })
                    .map(|v| v.count_at_value())
                    .sum();
                Bucket {
                    upper_us: end,
                    count,
                }
            })
            .filter(|b| b.upper_us >= lo)
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    pub fastest: u64,
    pub average: f64,
    pub p50: u64,
    pub p75: u64,
    pub p90: u64,
    pub p95: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bucket {
    pub upper_us: u64,
    pub count: u64,
}

/// What `l2d load` reports; `--json` writes it as is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadReport {
    pub count: u64,
    pub errors: u64,
    pub status_codes: BTreeMap<String, u64>,
    pub error_samples: BTreeMap<String, u64>,
    pub total_s: f64,
    pub rps: f64,
    /// Answers (OK) within the calls' deadline, counted from when each call was due.
    pub within_deadline: u64,
    /// `within_deadline` per second.
    pub goodput_rps: f64,
    pub latency_us: Latency,
    pub histogram: Vec<Bucket>,
    /// Official-metric EM/F1 (percent) over the answered queries that have references.
    pub em: f64,
    pub f1: f64,
    pub scored: u64,
    /// Mean cost charged per answered query.
    pub mean_cost: f64,
    pub expert_share: BTreeMap<String, f64>,
}

impl LoadReport {
    /// The report in ghz's layout, plus answers, experts and cost.
    pub fn to_text(&self) -> String {
        let ms = |us: f64| us / 1000.0;
        let mut out = format!(
            "\nSummary:\n  Count:\t{}\n  Total:\t{:.2} s\n  Slowest:\t{:.3} ms\n  Fastest:\t{:.3} ms\n  Average:\t{:.3} ms\n  Requests/sec:\t{:.2}\n  Goodput/sec:\t{:.2} (answered within the deadline)\n",
            self.count,
            self.total_s,
            ms(self.latency_us.max as f64),
            ms(self.latency_us.fastest as f64),
            ms(self.latency_us.average),
            self.rps,
            self.goodput_rps
        );
        out.push_str("\nResponse time histogram:\n");
        let peak = self
            .histogram
            .iter()
            .map(|b| b.count)
            .max()
            .unwrap_or(1)
            .max(1);
        for b in &self.histogram {
            let bar = "∎".repeat((40 * b.count / peak) as usize);
            out.push_str(&format!(
                "  {:.3} [{}]\t|{bar}\n",
                ms(b.upper_us as f64),
                b.count
            ));
        }
        out.push_str("\nLatency distribution:\n");
        let l = &self.latency_us;
        for (p, v) in [
            ("50", l.p50),
            ("75", l.p75),
            ("90", l.p90),
            ("95", l.p95),
            ("99", l.p99),
            ("99.9", l.p999),
        ] {
            out.push_str(&format!("  {p} % in {:.3} ms\n", ms(v as f64)));
        }
        out.push_str("\nStatus code distribution:\n");
        for (code, n) in &self.status_codes {
            out.push_str(&format!("  [{code}]\t{n} responses\n"));
        }
        if !self.error_samples.is_empty() {
            out.push_str("\nError distribution:\n");
            for (message, n) in &self.error_samples {
                out.push_str(&format!("  [{n}]\t{message}\n"));
            }
        }
        let shares: Vec<String> = self
            .expert_share
            .iter()
            .map(|(k, v)| format!("{k} {:.1}%", 100.0 * v))
            .collect();
        out.push_str(&format!(
            "\nAnswers: EM {:.2}  F1 {:.2}  ({} scored)\nExperts: {}\nMean cost per query: {:.2}\n",
            self.em,
            self.f1,
            self.scored,
            shares.join(", "),
            self.mean_cost
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(expert: &str, cost: f64, micros: u64, score: Option<(f64, f64)>) -> Outcome {
        Outcome {
            latency: Duration::from_micros(micros),
            result: Ok(Answered {
                expert_id: expert.into(),
                cost,
                score,
            }),
        }
    }

    fn failed(code: &'static str, message: &str) -> Outcome {
        Outcome {
            latency: Duration::from_micros(50),
            result: Err(Failed {
                code,
                message: message.into(),
            }),
        }
    }

    #[test]
    fn counts_statuses_experts_scores_and_cost() {
        let mut t = Tally::default();
        t.record(&ok("a", 1.0, 100, Some((1.0, 1.0))));
        t.record(&ok("b", 10.0, 300, Some((0.0, 0.5))));
        t.record(&ok("b", 10.0, 200, None));
        t.record(&failed("UNAVAILABLE", "down"));
        t.record(&failed("UNAVAILABLE", "down"));
        let r = t.report(Duration::from_secs(2));
        assert_eq!((r.count, r.errors), (5, 2));
        assert_eq!(r.status_codes["OK"], 3);
        assert_eq!(r.status_codes["UNAVAILABLE"], 2);
        assert_eq!(r.error_samples["UNAVAILABLE: down"], 2);
        assert_eq!(r.rps, 2.5);
        assert_eq!((r.em, r.f1, r.scored), (50.0, 75.0, 2));
        assert_eq!(r.mean_cost, 7.0);
        assert!((r.expert_share["b"] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!((r.latency_us.fastest, r.latency_us.max), (50, 300));
        assert_eq!(r.histogram.iter().map(|b| b.count).sum::<u64>(), 5);
    }

    #[test]
    fn goodput_counts_answers_within_the_deadline_only() {
        let mut t = Tally::with_deadline(Duration::from_micros(250));
        t.record(&ok("a", 1.0, 100, None));
        t.record(&ok("a", 1.0, 250, None));
        t.record(&ok("a", 1.0, 300, None));
        t.record(&failed("UNAVAILABLE", "down"));
        let mut other = Tally::with_deadline(Duration::from_micros(250));
        other.record(&ok("b", 1.0, 10, None));
        t.merge(&other);
        let r = t.report(Duration::from_secs(2));
        assert_eq!(r.within_deadline, 3);
        assert_eq!(r.goodput_rps, 1.5);
    }

    #[test]
    fn merging_equals_recording_in_one() {
        let outcomes = [
            ok("a", 1.0, 100, Some((1.0, 1.0))),
            failed("INTERNAL", "x"),
            ok("c", 2.0, 900, None),
        ];
        let mut one = Tally::default();
        let (mut left, mut right) = (Tally::default(), Tally::default());
        for (i, o) in outcomes.iter().enumerate() {
            one.record(o);
            if i % 2 == 0 {
                left.record(o)
            } else {
                right.record(o)
            }
        }
        left.merge(&right);
        assert_eq!(
            one.report(Duration::from_secs(1)),
            left.report(Duration::from_secs(1))
        );
    }

    #[test]
    fn error_samples_are_bounded() {
        let mut t = Tally::default();
        for i in 0..50 {
            t.record(&failed("INTERNAL", &format!("error {i}")));
        }
        let r = t.report(Duration::from_secs(1));
        assert_eq!(r.error_samples.len(), ERROR_SAMPLES);
        assert_eq!(r.status_codes["INTERNAL"], 50);
    }

    #[test]
    fn the_json_report_has_the_documented_keys() {
        let mut t = Tally::default();
        t.record(&ok("a", 1.0, 100, Some((1.0, 1.0))));
        let json = serde_json::to_value(t.report(Duration::from_secs(1))).unwrap();
        for key in [
            "count",
            "errors",
            "status_codes",
            "rps",
            "latency_us",
            "em",
            "f1",
            "mean_cost",
            "expert_share",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        for key in ["p50", "p90", "p99", "p999", "max"] {
            assert!(
                json["latency_us"].get(key).is_some(),
                "missing latency_us.{key}"
            );
        }
        assert_eq!(json["status_codes"]["OK"], 1);
        assert_eq!(json["expert_share"]["a"], 1.0);
    }
}
