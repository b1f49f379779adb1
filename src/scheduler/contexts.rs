//! Analyses of recently asked contexts. Data sets like SQuAD ask about five questions of each
//! passage, and a deployment sees the same document asked about again: the question-independent
//! part of featurizing (tokenizing and stemming the context, finding its sentences) is done once
//! per context while it stays in this bounded cache (S3-FIFO eviction, `quick_cache`).
//!
//! An entry is found by a hash of the context and used only when its stored context is the
//! same text: a hash collision (accidental or crafted) costs a miss, never a wrong analysis.

use crate::core::reading::ContextAnalysis;
use quick_cache::sync::Cache;
use std::sync::Arc;

/// Contexts kept by default: about 3.5 KB each for a SQuAD dev passage of the average 776 bytes
/// (its text, 16 bytes per word for its stems' keys, a few counts per sentence).
pub const DEFAULT_CAPACITY: usize = 1024;

pub struct ContextCache {
    entries: Cache<u64, Arc<ContextAnalysis>>,
    /// `l2d_context_analyses_total{result}`, registered once.
    hits: metrics::Counter,
    misses: metrics::Counter,
}

impl ContextCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Cache::new(capacity.max(1)),
            hits: metrics::counter!("l2d_context_analyses_total", "result" => "hit"),
            misses: metrics::counter!("l2d_context_analyses_total", "result" => "miss"),
        }
    }

    /// The analysis of `context`, from the cache or made now (and kept).
    pub fn analysis(&self, context: &str) -> Arc<ContextAnalysis> {
        let key = text_hash(context);
        if let Some(analysis) = self.entries.get(&key)
            && analysis.is_of(context)
        {
            self.hits.increment(1);
            return analysis;
        }
        self.misses.increment(1);
        let analysis = Arc::new(ContextAnalysis::of(context));
        self.entries.insert(key, analysis.clone());
        analysis
    }
}

impl Default for ContextCache {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

/// FNV-1a over the text's bytes, 8 at a time: a cheap key for a context (not collision-proof:
/// compare the text before trusting a match).
fn text_hash(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut chunks = text.as_bytes().chunks_exact(8);
    for c in &mut chunks {
        h ^= u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    for &b in chunks.remainder() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_is_analysed_once_and_a_colliding_key_is_not_trusted() {
        let cache = ContextCache::new(8);
        let a = cache.analysis("The Broncos won. The Panthers lost.");
        let b = cache.analysis("The Broncos won. The Panthers lost.");
        assert!(
            Arc::ptr_eq(&a, &b),
            "the second ask reuses the first analysis"
        );
        assert_eq!(
            *a,
            ContextAnalysis::of("The Broncos won. The Panthers lost.")
        );
        // Plant another context under the key of a third: it must not be returned for it.
        let victim = "Levi's Stadium is in Santa Clara.";
        cache.entries.insert(
            text_hash(victim),
            Arc::new(ContextAnalysis::of("something else")),
        );
        assert_eq!(*cache.analysis(victim), ContextAnalysis::of(victim));
    }
}
