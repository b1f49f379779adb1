//! The evaluation as an SVG plot: EM against mean cost per query, with the policy's curve over
//! the lambda sweep, the single experts, the random-mix line, the oracle, the cascade and the
//! question-type rule. Plain SVG, no dependencies.

use super::eval::{EvalReport, MixLine};

const W: f64 = 720.0;
const H: f64 = 460.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 70.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 50.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn svg(report: &EvalReport) -> String {
    let mut points: Vec<(f64, f64)> = report
        .experts
        .values()
        .map(|r| (r.mean_cost, r.em))
        .collect();
    points.extend(
        report
            .policy
            .curve
            .iter()
            .map(|c| (c.row.mean_cost, c.row.em)),
    );
    points.push((report.oracle.mean_cost, report.oracle.em));
    let max_cost = points.iter().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    // Zoom on where the policy lives: from a little under its curve (and the rule and cascade) to
    // the oracle; experts far below are pinned to the bottom edge, their EM in the label.
    let mut focus: Vec<f64> = report.policy.curve.iter().map(|c| c.row.em).collect();
    focus.push(report.question_type_rule.em);
    focus.extend(report.cascade.as_ref().map(|c| c.em));
    let lo = (focus.iter().copied().fold(f64::INFINITY, f64::min) - 6.0)
        .floor()
        .max(0.0);
    let hi = (points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max) + 2.0)
        .ceil()
        .min(100.0);
    let x = |c: f64| LEFT + (W - LEFT - RIGHT) * c / max_cost;
    let y = |e: f64| TOP + (H - TOP - BOTTOM) * (1.0 - (e.max(lo) - lo) / (hi - lo).max(1e-9));
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"18\" font-size=\"13\">EM against mean cost per query (test articles, {} questions)</text>\n",
        LEFT, report.policy.test_questions
    );
    // Axes and grid.
    s.push_str(&format!(
        "<line x1=\"{LEFT}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{}\" stroke=\"black\"/>\n",
        H - BOTTOM, W - RIGHT, H - BOTTOM, H - BOTTOM
    ));
    for i in 0..=5 {
        let e = lo + (hi - lo) * i as f64 / 5.0;
        s.push_str(&format!(
            "<line x1=\"{LEFT}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#eee\"/><text x=\"{2}\" y=\"{3:.1}\" text-anchor=\"end\">{e:.0}</text>\n",
            y(e), W - RIGHT, LEFT - 6.0, y(e) + 4.0
        ));
        let c = max_cost * i as f64 / 5.0;
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{c:.0}</text>\n",
            x(c),
            H - BOTTOM + 16.0
        ));
    }
    s.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">mean cost per query</text>\n<text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">EM (%)</text>\n",
        (LEFT + W - RIGHT) / 2.0, H - 12.0, (TOP + H - BOTTOM) / 2.0, (TOP + H - BOTTOM) / 2.0
    ));
    // The mix line.
    let experts: Vec<(f64, f64, f64)> = report
        .experts
        .values()
        .map(|r| (r.mean_cost, r.em, r.f1))
        .collect();
    let mix = MixLine::new(&experts);
    let path: Vec<String> = mix
        .vertices()
        .map(|(c, e)| format!("{:.1},{:.1}", x(c), y(e)))
        .collect();
    s.push_str(&format!(
        "<polyline points=\"{}\" fill=\"none\" stroke=\"#999\" stroke-dasharray=\"5,4\"/>\n",
        path.join(" ")
    ));
    // The policy's curve.
    let mut curve: Vec<(f64, f64)> = report
        .policy
        .curve
        .iter()
        .map(|c| (c.row.mean_cost, c.row.em))
        .collect();
    curve.sort_by(|a, b| a.0.total_cmp(&b.0));
    let path: Vec<String> = curve
        .iter()
        .map(|(c, e)| format!("{:.1},{:.1}", x(*c), y(*e)))
        .collect();
    s.push_str(&format!(
        "<polyline points=\"{}\" fill=\"none\" stroke=\"#1f6fd1\" stroke-width=\"2\"/>\n",
        path.join(" ")
    ));
    for (c, e) in &curve {
        s.push_str(&format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#1f6fd1\"/>\n",
            x(*c),
            y(*e)
        ));
    }
    let mut mark = |label: &str, c: f64, e: f64, color: &str| {
        s.push_str(&format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"7\" height=\"7\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
            x(c) - 3.5,
            y(e) - 3.5,
            x(c) + 6.0,
            y(e) - 5.0,
            escape(label)
        ));
    };
    // Experts below the zoomed range sit on the bottom edge; their labels stack upwards.
    let mut pinned = 0.0;
    for (id, r) in &report.experts {
        if r.em < lo {
            let label = format!("{id} ({:.1} EM, off scale)", r.em);
            mark(&label, r.mean_cost, lo + pinned, "#444");
            pinned += (hi - lo) / 28.0;
        } else {
            mark(id, r.mean_cost, r.em, "#444");
        }
    }
    mark(
        "oracle",
        report.oracle.mean_cost,
        report.oracle.em,
        "#2a9d3c",
    );
    if let Some(c) = &report.cascade {
        mark("cascade", c.mean_cost, c.em, "#d1701f");
    }
    mark(
        "question-type rule",
        report.question_type_rule.mean_cost,
        report.question_type_rule.em,
        "#9b4dca",
    );
    s.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#1f6fd1\">policy ({:?}), lambda sweep</text>\n<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#999\">random mix of single experts</text>\n",
        W - RIGHT - 220.0,
        H - BOTTOM - 34.0,
        report.policy.mode,
        W - RIGHT - 220.0,
        H - BOTTOM - 20.0
    ));
    s.push_str("</svg>\n");
    s
}
