//! The passage analysis the policy's featurizer keeps per context (`ContextAnalysis::of`), over
//! every passage of SQuAD v1.1 dev: what the scheduler does once per passage it has not seen
//! (one request in five in a replay of the dev set in file order).
//!
//! `cargo bench --bench analysis` prints the time per passage, the median of seven passes over
//! the 2,067 passages. Under callgrind it counts instructions, a figure that does not move with
//! the machine's load (the passes are in `analyse_all`; the dataset's loading is not counted):
//!
//! ```text
//! valgrind --tool=callgrind --toggle-collect='analysis::analyse_all' \
//!     target/release/deps/analysis-HASH 1
//! ```
//!
//! (the binary's path is the one `cargo bench --bench analysis --no-run` prints; the argument is
//! the number of passes).

use l2d::core::reading::ContextAnalysis;
use l2d::squad::Dataset;
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

/// The binary's allocator (src/main.rs), so allocations cost here what they cost the scheduler.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dataset = Dataset::load(&root.join("data/squad-v1.1/dev.json")).expect("the dev set");
    let contexts: Vec<&str> = dataset
        .articles
        .iter()
        .flat_map(|a| &a.paragraphs)
        .map(|p| p.context.as_str())
        .collect();
    // `cargo bench` passes `--bench`; a number is how many passes to make.
    let passes = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(7);
    let mut per_passage = Vec::with_capacity(passes);
    let mut tokens = 0;
    for _ in 0..passes {
        let started = Instant::now();
        tokens = analyse_all(&contexts);
        per_passage.push(started.elapsed().as_secs_f64() * 1e6 / contexts.len() as f64);
    }
    per_passage.sort_by(f64::total_cmp);
    println!(
        "context analysis: {} passages ({} tokens), {:.2} µs per passage (median of {passes} \
         passes; least {:.2}, greatest {:.2})",
        contexts.len(),
        tokens,
        per_passage[per_passage.len() / 2],
        per_passage[0],
        per_passage[per_passage.len() - 1],
    );
}

/// One pass: every passage analysed, as a context the scheduler has not seen. The tokens
/// counted keep the analyses from being optimised away.
#[inline(never)]
fn analyse_all(contexts: &[&str]) -> usize {
    contexts
        .iter()
        .map(|c| black_box(ContextAnalysis::of(black_box(c))).token_count())
        .sum()
}
