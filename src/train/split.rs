//! Train/test split by article: questions about one article never sit on both sides, so the
//! evaluation measures how the policy does on unseen passages.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Splits distinct article titles into (train, test), deterministically from `seed`: the titles
/// are shuffled with ChaCha8 and the first `round(n × test_fraction)` go to test (at least one
/// on each side when there are two or more articles and the fraction is strictly between 0 and 1).
/// Both lists come back sorted.
pub fn split_by_article(
    titles: &[String],
    seed: u64,
    test_fraction: f64,
) -> (Vec<String>, Vec<String>) {
    let mut shuffled: Vec<String> = titles.to_vec();
    shuffled.sort();
    shuffled.dedup();
    shuffled.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let n = shuffled.len();
    let mut n_test = (n as f64 * test_fraction.clamp(0.0, 1.0)).round() as usize;
    if n >= 2 && test_fraction > 0.0 && test_fraction < 1.0 {
        n_test = n_test.clamp(1, n - 1);
    }
    let mut test: Vec<String> = shuffled[..n_test].to_vec();
    let mut train: Vec<String> = shuffled[n_test..].to_vec();
    test.sort();
    train.sort();
    (train, test)
}

/// The distinct `titles` in `k` folds by article (one per article when there are fewer), as
/// (train, test) pairs: fold `f` tests on the articles at positions `f`, `f + k`, … of a ChaCha8
/// shuffle from `seed` (of the sorted titles) and trains on the others, so every article is
/// tested on exactly once. Each list sorted.
pub fn folds_by_article(titles: &[String], seed: u64, k: usize) -> Vec<(Vec<String>, Vec<String>)> {
    let mut shuffled: Vec<String> = titles.to_vec();
    shuffled.sort();
    shuffled.dedup();
    shuffled.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let k = k.min(shuffled.len());
    (0..k)
        .map(|f| {
            let (mut test, mut train): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
            for (i, t) in shuffled.iter().enumerate() {
                if i % k == f {
                    test.push(t.clone());
                } else {
                    train.push(t.clone());
                }
            }
            test.sort();
            train.sort();
            (train, test)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn no_article_is_on_both_sides_and_none_is_lost(
            n in 1usize..60,
            seed in any::<u64>(),
            fraction in 0.0f64..1.0,
        ) {
            let titles: Vec<String> = (0..n).map(|i| format!("article-{i}")).collect();
            let (train, test) = split_by_article(&titles, seed, fraction);
            prop_assert_eq!(train.len() + test.len(), n);
            prop_assert!(train.iter().all(|t| !test.contains(t)));
            if n >= 2 && fraction > 0.0 {
                prop_assert!(!test.is_empty() && !train.is_empty());
            }
        }
    }

    #[test]
    fn the_split_is_a_function_of_the_seed() {
        let titles: Vec<String> = (0..48).map(|i| format!("t{i}")).collect();
        let a = split_by_article(&titles, 7, 0.5);
        assert_eq!(a, split_by_article(&titles, 7, 0.5));
        assert_ne!(a, split_by_article(&titles, 8, 0.5));
        assert_eq!(a.1.len(), 24);
    }
}
