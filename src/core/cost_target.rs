//! The live cost target (beyond the paper): keep the realised mean cost per query near a target
//! by moving along a bank of policies trained at increasing prices of compute.
//!
//! Rule: after every full window of `window` answered queries, compare the window's mean cost
//! with the target. Above `target × (1 + band)`, serve the next bank entry up in lambda (cheaper);
//! below `target × (1 − band)`, the next one down (dearer); then start a fresh window, so each
//! decision measures the entry actually served. Where the target falls between two entries the
//! policy alternates between them and the long-run mean lies between their costs.

use std::collections::VecDeque;

/// Mean of the last `capacity` values.
#[derive(Debug, Clone)]
pub struct CostWindow {
    capacity: usize,
    values: VecDeque<f64>,
    sum: f64,
}

impl CostWindow {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            values: VecDeque::with_capacity(capacity.max(1)),
            sum: 0.0,
        }
    }

    pub fn push(&mut self, value: f64) {
        if self.values.len() == self.capacity
            && let Some(old) = self.values.pop_front()
        {
            self.sum -= old;
        }
        self.values.push_back(value);
        self.sum += value;
    }

    pub fn is_full(&self) -> bool {
        self.values.len() == self.capacity
    }

    pub fn mean(&self) -> f64 {
        if self.values.is_empty() {
            0.0
        } else {
            self.sum / self.values.len() as f64
        }
    }

    pub fn clear(&mut self) {
        self.values.clear();
        self.sum = 0.0;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// Serve the next entry up in lambda.
    Cheaper,
    /// Serve the next entry down in lambda.
    Dearer,
}

#[derive(Debug, Clone)]
pub struct CostTarget {
    pub target: f64,
    pub band: f64,
    window: CostWindow,
}

impl CostTarget {
    pub fn new(target: f64, window: usize, band: f64) -> Self {
        Self {
            target,
            band,
            window: CostWindow::new(window),
        }
    }

    /// Records one query's cost; returns the move to make, if the window just filled and its
    /// mean is outside the band. `position`/`len` locate the served entry in the bank, so no move
    /// is proposed past either end.
    pub fn record(&mut self, cost: f64, position: usize, len: usize) -> Option<Move> {
        self.window.push(cost);
        if !self.window.is_full() {
            return None;
        }
        let mean = self.window.mean();
        let step = if mean > self.target * (1.0 + self.band) && position + 1 < len {
            Some(Move::Cheaper)
        } else if mean < self.target * (1.0 - self.band) && position > 0 {
            Some(Move::Dearer)
        } else {
            None
        };
        self.window.clear();
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_keeps_the_last_values() {
        let mut w = CostWindow::new(3);
        for v in [1.0, 2.0, 3.0, 10.0] {
            w.push(v);
        }
        assert!(w.is_full());
        assert_eq!(w.mean(), 5.0);
    }

    /// A bank whose entries cost 100, 60, 45, 35, 27, 25 per query (as lambda rises), each query's
    /// cost drawn around the entry's mean: the controller settles where the target lies.
    #[test]
    fn the_realised_cost_tracks_the_target_within_ten_percent() {
        let bank = [100.0, 60.0, 45.0, 35.0, 27.0, 25.0];
        for target in [30.0, 40.0, 50.0, 80.0] {
            let mut controller = CostTarget::new(target, 200, 0.05);
            let mut position = 0;
            let mut served = CostWindow::new(5000);
            for i in 0..40_000u64 {
                // Deterministic spread: cost is 0.5x or 1.5x the entry's mean, alternating.
                let cost = bank[position] * if i % 2 == 0 { 0.5 } else { 1.5 };
                served.push(cost);
                match controller.record(cost, position, bank.len()) {
                    Some(Move::Cheaper) => position += 1,
                    Some(Move::Dearer) => position -= 1,
                    None => {}
                }
            }
            let realised = served.mean();
            assert!(
                (realised - target).abs() <= 0.1 * target,
                "target {target}: realised {realised}"
            );
        }
    }

    #[test]
    fn no_move_past_the_ends_of_the_bank() {
        let mut c = CostTarget::new(1.0, 2, 0.05);
        assert_eq!(c.record(50.0, 0, 1), None);
        assert_eq!(c.record(50.0, 0, 1), None);
        let mut c = CostTarget::new(100.0, 1, 0.05);
        assert_eq!(c.record(1.0, 0, 3), None);
        assert_eq!(c.record(1.0, 1, 3), Some(Move::Dearer));
    }
}
