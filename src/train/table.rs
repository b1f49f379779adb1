//! The agreement table: a tabular sequential baseline for cascade mode, with no query features.
//!
//! Its state is which agents were asked and which of their normalised answers are equal (the
//! partition of the asked agents into groups of equal answers; an agent whose call failed is
//! alone, while two that answered "no answer" agree, as SQuAD v2.0 scores it).
//! Fitted on training questions by backward induction, like the learned cascade: at the last
//! stage each state keeps the answer of the asked agent with the lowest mean loss over the
//! training questions in that state; one stage earlier, "ask `k`" costs `lambda × price_k /
//! max price` plus the mean cost the later stages then incur; and so on back to the empty
//! state. A state no training question reached falls back to what the same set of asked agents
//! does over all training questions.

use super::labels::LabelRecord;
use crate::core::metric::normalize_answer;
use std::collections::HashMap;

/// A state: the asked agents (bit mask) and, per agent in index order, its answer's group (the
/// smallest index of an asked agent with the same normalised answer; its own index when its
/// call failed).
type Key = (u64, Vec<u8>);

#[derive(Debug, Clone)]
pub struct AgreementTable {
    stages: usize,
    /// The action per state: the agent kept (if asked) or asked next.
    actions: HashMap<Key, usize>,
    /// The action per set of asked agents, over all their answer patterns.
    fallback: HashMap<u64, usize>,
}

/// The normalised answers of a question, per agent: `None` where the call failed, the empty
/// string where the agent answered "no answer" (or an answer that normalises to nothing, which
/// the official metric scores the same).
pub fn normalised(record: &LabelRecord) -> Vec<Option<String>> {
    record
        .experts
        .iter()
        .map(|e| e.answer.as_deref().map(normalize_answer))
        .collect()
}

/// A question with its agents' normalised answers ([`normalised`]), made once for every table
/// fitted on it or walked through it.
pub struct Answered<'a> {
    pub record: &'a LabelRecord,
    pub answers: Vec<Option<String>>,
}

/// `records` with their normalised answers.
pub fn answered<'a>(records: &[&'a LabelRecord]) -> Vec<Answered<'a>> {
    records
        .iter()
        .map(|&record| Answered {
            record,
            answers: normalised(record),
        })
        .collect()
}

fn key(mask: u64, answers: &[Option<String>]) -> Key {
    let groups = (0..answers.len())
        .filter(|&j| mask >> j & 1 == 1)
        .map(|j| {
            let same = (0..j)
                .find(|&i| mask >> i & 1 == 1 && answers[j].is_some() && answers[i] == answers[j]);
            same.unwrap_or(j) as u8
        })
        .collect();
    (mask, groups)
}

impl AgreementTable {
    /// Fits the table on `questions` at price of compute `lambda`, asking at most `stages`
    /// agents. `costs` are the agents' declared costs; `loss` gives an agent's loss on a record.
    pub fn fit(
        questions: &[Answered<'_>],
        costs: &[f64],
        stages: usize,
        lambda: f64,
        loss: impl Fn(&LabelRecord, usize) -> f64,
    ) -> Self {
        let agents = costs.len();
        let max_cost = costs.iter().copied().fold(0.0, f64::max);
        let price: Vec<f64> = costs.iter().map(|c| lambda * c / max_cost).collect();
        let answers: Vec<&[Option<String>]> =
            questions.iter().map(|q| q.answers.as_slice()).collect();
        let losses: Vec<Vec<f64>> = questions
            .iter()
            .map(|q| (0..agents).map(|j| loss(q.record, j)).collect())
            .collect();
        let mut table = Self {
            stages,
            actions: HashMap::new(),
            fallback: HashMap::new(),
        };
        // value[i][mask]: the cost-to-go of question i from state mask under the fitted table.
        let mut value: Vec<HashMap<u64, f64>> = vec![HashMap::new(); questions.len()];
        for t in (0..=stages).rev() {
            let masks: Vec<u64> = (0u64..1 << agents)
                .filter(|m| m.count_ones() as usize == t)
                .collect();
            for &mask in &masks {
                // Per question, the cost of every action from this state.
                let action_costs: Vec<Vec<Option<f64>>> = (0..questions.len())
                    .map(|i| {
                        (0..agents)
                            .map(|j| {
                                if mask >> j & 1 == 1 {
                                    Some(losses[i][j])
                                } else if t < stages {
                                    Some(price[j] + value[i][&(mask | 1 << j)])
                                } else {
                                    None
                                }
                            })
                            .collect()
                    })
                    .collect();
                let mut sums: HashMap<Key, Vec<f64>> = HashMap::new();
                let mut all = vec![0.0; agents];
                for (i, row) in action_costs.iter().enumerate() {
                    let entry = sums
                        .entry(key(mask, answers[i]))
                        .or_insert_with(|| vec![0.0; agents]);
                    for j in 0..agents {
                        let c = row[j].unwrap_or(f64::INFINITY);
                        entry[j] += c;
                        all[j] += c;
                    }
                }
                table.fallback.insert(mask, argmin(&all));
                for (k, s) in sums {
                    table.actions.insert(k, argmin(&s));
                }
                for (i, row) in action_costs.iter().enumerate() {
                    let a = table.action(mask, answers[i]);
                    value[i].insert(mask, row[a].unwrap_or(f64::INFINITY));
                }
            }
        }
        table
    }

    fn action(&self, mask: u64, answers: &[Option<String>]) -> usize {
        self.actions
            .get(&key(mask, answers))
            .or_else(|| self.fallback.get(&mask))
            .copied()
            .unwrap_or(0)
    }

    /// The table's walk on a question with normalised answers `answers`: the agent kept and
    /// the agents asked (bit mask).
    pub fn walk(&self, answers: &[Option<String>]) -> (usize, u64) {
        let mut mask = 0u64;
        loop {
            let a = self.action(mask, answers);
            if mask >> a & 1 == 1 {
                return (a, mask);
            }
            // Only stages before the last ask (the last one's asks cost infinitely much).
            debug_assert!((mask.count_ones() as usize) < self.stages);
            mask |= 1 << a;
        }
    }
}

fn argmin(values: &[f64]) -> usize {
    let mut best = 0;
    for (j, v) in values.iter().enumerate() {
        if *v < values[best] {
            best = j;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::labels::ExpertLabel;

    fn record(i: usize, answers: [Option<&str>; 3], right: [bool; 3]) -> LabelRecord {
        LabelRecord {
            id: format!("q{i}"),
            title: "T".into(),
            question: "Q?".into(),
            context: "C.".into(),
            experts: (0..3)
                .map(|j| ExpertLabel {
                    expert: format!("e{j}"),
                    answer: answers[j].map(str::to_owned),
                    em: f64::from(u8::from(right[j])),
                    f1: f64::from(u8::from(right[j])),
                    latency_us: 1,
                    cost: [1.0, 1.0, 10.0][j],
                    error: None,
                })
                .collect(),
        }
    }

    #[test]
    fn two_agents_answering_no_answer_agree_and_a_failed_call_agrees_with_none() {
        let both = [Some(String::new()), Some(String::new())];
        assert_eq!(key(0b11, &both).1, vec![0, 0]);
        let failed = [None, Some(String::new())];
        assert_eq!(key(0b11, &failed).1, vec![0, 1]);
        let failed_twice = [None, None];
        assert_eq!(key(0b11, &failed_twice).1, vec![0, 1]);
    }

    /// Unanswerable questions (SQuAD v2.0), where both cheap agents answer "no answer" and are
    /// right, and answerable ones where they disagree and only the dear agent is surely right:
    /// the table keeps the cheap agents' "no answer" and pays for the dear one only on a
    /// disagreement. (Had "no answer" never agreed, both would be one state.)
    #[test]
    fn the_table_keeps_an_agreed_no_answer_and_asks_on_a_disagreement() {
        let records: Vec<LabelRecord> = (0..40)
            .map(|i| {
                if i % 2 == 0 {
                    record(i, [Some(""), Some(""), Some("x")], [true, true, false])
                } else {
                    let first_right = i % 4 == 1;
                    let answers = [Some("a"), Some("b"), Some("a")];
                    let answers = if first_right {
                        answers
                    } else {
                        [Some("a"), Some("b"), Some("b")]
                    };
                    record(i, answers, [first_right, !first_right, true])
                }
            })
            .collect();
        let refs: Vec<&LabelRecord> = records.iter().collect();
        let table = AgreementTable::fit(&answered(&refs), &[1.0, 1.0, 10.0], 3, 0.3, |r, j| {
            1.0 - r.experts[j].em
        });
        for r in &records {
            let (kept, asked) = table.walk(&normalised(r));
            assert_eq!(r.experts[kept].em, 1.0, "{}: kept {kept}", r.id);
            let dear_asked = asked >> 2 & 1 == 1;
            let unanswerable = r.experts[0].answer.as_deref() == Some("");
            assert_eq!(dear_asked, !unanswerable, "{}: asked {asked:b}", r.id);
        }
    }
}
