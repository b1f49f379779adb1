//! `l2d load --rps-steps`: open-loop load at rising rates, against one scheduler or several
//! (scheduler configurations compared in one run). Each step runs every target in turn, in an
//! order rotated from step to step, so slow drift of a shared machine does not favour one.

use super::tally::LoadReport;
use super::{LoadOptions, LoadQuery, run};
use crate::core::metric::MetricVersion;
use serde::Serialize;
use std::fmt::Write as _;
use std::sync::Arc;

/// One scheduler to load, under a name for the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub name: String,
    pub address: String,
}

/// `NAME=HOST:PORT` or `HOST:PORT` (then named by its address), comma-separated.
pub fn parse_targets(text: &str) -> anyhow::Result<Vec<Target>> {
    let mut out: Vec<Target> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, address) = match part.split_once('=') {
            Some((n, a)) => (n.trim(), a.trim()),
            None => (part, part),
        };
        anyhow::ensure!(
            !name.is_empty() && !address.is_empty(),
            "--router: {part:?} is not NAME=HOST:PORT or HOST:PORT"
        );
        anyhow::ensure!(
            out.iter().all(|t| t.name != name),
            "--router: the name {name:?} is given twice"
        );
        out.push(Target {
            name: name.into(),
            address: address.into(),
        });
    }
    anyhow::ensure!(!out.is_empty(), "--router: no scheduler given");
    Ok(out)
}

/// Offered rates, requests per second: positive, finite.
pub fn parse_steps(steps: &[f64]) -> anyhow::Result<Vec<f64>> {
    anyhow::ensure!(!steps.is_empty(), "--rps-steps: give at least one rate");
    if let Some(bad) = steps.iter().find(|r| !(r.is_finite() && **r > 0.0)) {
        anyhow::bail!("--rps-steps: every rate must be a positive number, got {bad}");
    }
    Ok(steps.to_vec())
}

#[derive(Debug, Clone, Serialize)]
pub struct StepRow {
    /// The target's name.
    pub config: String,
    /// The rate offered.
    pub offered_rps: f64,
    #[serde(flatten)]
    pub report: LoadReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub timeout_ms: f64,
    pub step_duration_s: f64,
    pub rows: Vec<StepRow>,
}

/// Runs every step against every target; `base` gives everything but the address, the rate
/// and the duration.
pub async fn run_steps(
    base: &LoadOptions,
    targets: &[Target],
    steps: &[f64],
    step_duration: std::time::Duration,
    queries: Arc<Vec<LoadQuery>>,
    version: MetricVersion,
) -> anyhow::Result<StepReport> {
    let mut rows = Vec::new();
    for (k, &rps) in steps.iter().enumerate() {
        for t in 0..targets.len() {
            let target = &targets[(t + k) % targets.len()];
            let options = LoadOptions {
                address: target.address.clone(),
                rps: Some(rps),
                duration: Some(step_duration),
                limit: None,
                ..base.clone()
            };
            if base.progress {
                eprintln!("l2d: step {rps} q/s against {}", target.name);
            }
            let report = run(&options, queries.clone(), version).await?;
            rows.push(StepRow {
                config: target.name.clone(),
                offered_rps: rps,
                report,
            });
        }
    }
    // Report by configuration, then by rate.
    let order: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    rows.sort_by(|a, b| {
        let pos = |c: &str| order.iter().position(|o| *o == c);
        pos(&a.config)
            .cmp(&pos(&b.config))
            .then(a.offered_rps.total_cmp(&b.offered_rps))
    });
    Ok(StepReport {
        timeout_ms: base.timeout.as_secs_f64() * 1e3,
        step_duration_s: step_duration.as_secs_f64(),
        rows,
    })
}

impl StepReport {
    /// A Markdown table: one row per configuration and step.
    pub fn to_markdown(&self) -> String {
        let mut out = format!(
            "Open loop, {:.0} s per step, deadline {:.0} ms.\n\n\
             | config | offered q/s | sent q/s | OK | within deadline | goodput q/s | EM | mean cost | p50 ms | p99 ms | other codes | expert shares |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
            self.step_duration_s, self.timeout_ms
        );
        for row in &self.rows {
            let r = &row.report;
            let count = r.count.max(1) as f64;
            let ok = r.status_codes.get("OK").copied().unwrap_or(0);
            let others: Vec<String> = r
                .status_codes
                .iter()
                .filter(|(c, _)| *c != "OK")
                .map(|(c, n)| format!("{c} {n}"))
                .collect();
            let shares: Vec<String> = r
                .expert_share
                .iter()
                .map(|(e, s)| format!("{e} {:.0}%", 100.0 * s))
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.2}% | {:.2}% | {:.0} | {:.2} | {:.1} | {:.1} | {:.1} | {} | {} |",
                row.config,
                row.offered_rps,
                r.rps,
                100.0 * ok as f64 / count,
                100.0 * r.within_deadline as f64 / count,
                r.goodput_rps,
                r.em,
                r.mean_cost,
                r.latency_us.p50 as f64 / 1e3,
                r.latency_us.p99 as f64 / 1e3,
                if others.is_empty() {
                    "—".to_string()
                } else {
                    others.join(", ")
                },
                shares.join(", ")
            );
        }
        out
    }

    /// Six small panels against the offered rate, one line per configuration: EM, mean cost,
    /// p50 and p99 latency, the share answered within the deadline, and the goodput. (Status
    /// codes and expert shares are in the table.)
    pub fn to_svg(&self) -> String {
        let configs: Vec<&str> = {
            let mut c: Vec<&str> = Vec::new();
            for r in &self.rows {
                if !c.contains(&r.config.as_str()) {
                    c.push(&r.config);
                }
            }
            c
        };
        let rates: Vec<f64> = {
            let mut v: Vec<f64> = self.rows.iter().map(|r| r.offered_rps).collect();
            v.sort_by(f64::total_cmp);
            v.dedup();
            v
        };
        type Metric = Box<dyn Fn(&LoadReport) -> f64>;
        let panels: Vec<(&str, Metric)> = vec![
            ("EM", Box::new(|r: &LoadReport| r.em)),
            ("mean cost", Box::new(|r: &LoadReport| r.mean_cost)),
            (
                "p50 latency, ms",
                Box::new(|r: &LoadReport| r.latency_us.p50 as f64 / 1e3),
            ),
            (
                "p99 latency, ms",
                Box::new(|r: &LoadReport| r.latency_us.p99 as f64 / 1e3),
            ),
            (
                "% within the deadline",
                Box::new(|r: &LoadReport| 100.0 * r.within_deadline as f64 / r.count.max(1) as f64),
            ),
            ("goodput, q/s", Box::new(|r: &LoadReport| r.goodput_rps)),
        ];
        const COLOURS: [&str; 6] = [
            "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
        ];
        let (pw, ph, margin) = (300.0, 190.0, 45.0);
        let cols = 3;
        let width = cols as f64 * (pw + margin) + margin;
        let height = 2.0 * (ph + margin) + margin + 20.0 * configs.len() as f64;
        let mut out = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
             font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        );
        let x_of = |rate: f64, x0: f64| {
            let (lo, hi) = (rates[0].ln(), rates[rates.len() - 1].ln());
            let t = if hi > lo {
                (rate.ln() - lo) / (hi - lo)
            } else {
                0.5
            };
            x0 + 10.0 + t * (pw - 20.0)
        };
        for (p, (title, metric)) in panels.iter().enumerate() {
            let x0 = margin + (p % cols) as f64 * (pw + margin);
            let y0 = margin + (p / cols) as f64 * (ph + margin);
            let values: Vec<f64> = self.rows.iter().map(|r| metric(&r.report)).collect();
            let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let (lo, hi) = if hi - lo < 1e-9 {
                (lo - 1.0, hi + 1.0)
            } else {
                (lo, hi)
            };
            let y_of = |v: f64| y0 + ph - 10.0 - (v - lo) / (hi - lo) * (ph - 20.0);
            let _ = writeln!(
                out,
                "<rect x=\"{x0}\" y=\"{y0}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>\n\
                 <text x=\"{x0}\" y=\"{}\" font-weight=\"bold\">{title}</text>\n\
                 <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n\
                 <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
                y0 - 6.0,
                x0 - 3.0,
                y_of(hi) + 4.0,
                short(hi),
                x0 - 3.0,
                y_of(lo) + 4.0,
                short(lo)
            );
            for &rate in &rates {
                let _ = writeln!(
                    out,
                    "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{rate}</text>",
                    x_of(rate, x0),
                    y0 + ph + 14.0
                );
            }
            for (c, config) in configs.iter().enumerate() {
                let points: Vec<String> = self
                    .rows
                    .iter()
                    .filter(|r| r.config == *config)
                    .map(|r| {
                        format!(
                            "{:.1},{:.1}",
                            x_of(r.offered_rps, x0),
                            y_of(metric(&r.report))
                        )
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>",
                    points.join(" "),
                    COLOURS[c % COLOURS.len()]
                );
            }
        }
        let legend_y = 2.0 * (ph + margin) + margin;
        for (c, config) in configs.iter().enumerate() {
            let y = legend_y + 20.0 * c as f64;
            let _ = writeln!(
                out,
                "<line x1=\"{margin}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{}\" stroke-width=\"3\"/>\
                 <text x=\"{}\" y=\"{}\">{}</text>",
                margin + 25.0,
                COLOURS[c % COLOURS.len()],
                margin + 32.0,
                y + 4.0,
                escape(config)
            );
        }
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\">offered load, queries per second (log scale)</text>",
            width / 2.0 - 110.0,
            legend_y - 8.0
        );
        out.push_str("</svg>\n");
        out
    }
}

fn short(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_named_or_named_by_their_address() {
        let t = parse_targets("priced=127.0.0.1:1, 127.0.0.1:2").unwrap();
        assert_eq!(
            t,
            vec![
                Target {
                    name: "priced".into(),
                    address: "127.0.0.1:1".into()
                },
                Target {
                    name: "127.0.0.1:2".into(),
                    address: "127.0.0.1:2".into()
                }
            ]
        );
        assert!(
            parse_targets("a=1:1,a=1:2")
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        assert!(parse_targets("=1:1").is_err());
        assert!(parse_targets(" , ").is_err());
        assert!(
            parse_steps(&[50.0, 0.0])
                .unwrap_err()
                .to_string()
                .contains("positive")
        );
        assert!(parse_steps(&[]).is_err());
    }

    fn row(config: &str, rps: f64, ok: u64, late: u64, shed: u64) -> StepRow {
        use super::super::tally::{Answered, Failed, Outcome, Tally};
        use std::time::Duration;
        let mut t = Tally::with_deadline(Duration::from_millis(500));
        let answer = |ms| Outcome {
            latency: Duration::from_millis(ms),
            result: Ok(Answered {
                expert_id: "e".into(),
                cost: 2.0,
                score: Some((1.0, 1.0)),
            }),
        };
        for _ in 0..ok {
            t.record(&answer(10));
        }
        for _ in 0..late {
            t.record(&answer(900));
        }
        for _ in 0..shed {
            t.record(&Outcome {
                latency: Duration::from_millis(1),
                result: Err(Failed {
                    code: "RESOURCE_EXHAUSTED",
                    message: "full".into(),
                }),
            });
        }
        StepRow {
            config: config.into(),
            offered_rps: rps,
            report: t.report(Duration::from_secs(1)),
        }
    }

    #[test]
    fn the_table_and_plot_show_every_configuration_and_step() {
        let report = StepReport {
            timeout_ms: 500.0,
            step_duration_s: 1.0,
            rows: vec![
                row("priced", 50.0, 50, 0, 0),
                row("priced", 800.0, 790, 5, 5),
                row("a<b", 50.0, 50, 0, 0),
                row("a<b", 800.0, 700, 0, 100),
            ],
        };
        let md = report.to_markdown();
        assert!(
            md.contains("| priced | 800 | 800 | 99.38% | 98.75% | 790 |"),
            "{md}"
        );
        assert!(md.contains("RESOURCE_EXHAUSTED 100"), "{md}");
        let svg = report.to_svg();
        assert_eq!(svg.matches("<polyline").count(), 12, "6 panels x 2 configs");
        assert!(svg.contains("a&lt;b") && !svg.contains("a<b"));
        assert!(!svg.contains("NaN"));
    }
}
