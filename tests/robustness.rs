//! Random input against every parser of outside data: request validation, the pool file, the
//! policy file, the labels file. Nothing may panic or hang; every refusal is an error value.
//! (proptest: each property runs its default 256 cases; shrinking names the smallest failure.)

use l2d::core::learned::PolicyFile;
use l2d::core::query::{Query, QueryError, QueryLimits};
use l2d::pool_file::PoolFile;
use proptest::prelude::*;
use std::path::Path;

fn shipped_policy() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/squad-v1.1.json"),
        )
        .unwrap()
    })
}

/// Pool-file fragments that parse on their own, to splice into random text.
const POOL_PIECES: &[&str] = &[
    "[[expert]]\n",
    "id = \"x\"\n",
    "id = \"\"\n",
    "backend = \"replay\"\n",
    "backend = \"lexical\"\n",
    "predictions = \"p.json\"\n",
    "cost = 1\n",
    "cost = -1\n",
    "cost = nan\n",
    "cost = inf\n",
    "cost = 1e308\n",
    "accuracy = 2\n",
    "replicas = 99999999999\n",
    "address = \"127.0.0.1:1\"\n",
    "addresses = []\n",
    "addresses = [\"x\"]\n",
    "dns = \"a:1\"\n",
    "dns = \":\"\n",
    "max_in_flight = -5\n",
    "max_in_flight = 4294967297\n",
    "[expert]\n",
    "\u{0}",
    "= = =\n",
];

proptest! {
    #[test]
    fn query_validation_refuses_with_a_reason_and_keeps_what_it_accepts(
        question in ".{0,64}",
        context in ".{0,256}",
        id in prop::option::of(".{0,40}"),
        limit in 1usize..128,
    ) {
        let limits = QueryLimits { max_question_bytes: limit, max_context_bytes: 4 * limit, max_id_bytes: limit };
        match Query::new(question.clone(), context.clone(), id.clone(), &limits) {
            Ok(q) => {
                prop_assert_eq!(q.question(), question.trim());
                prop_assert!(!q.question().is_empty());
                prop_assert_eq!(q.context(), context.as_str());
                prop_assert!(question.len() <= limit && context.len() <= 4 * limit);
            }
            Err(QueryError::TooLarge { actual, limit: l, .. }) => prop_assert!(actual > l),
            Err(QueryError::EmptyQuestion) => prop_assert!(question.trim().is_empty()),
            Err(QueryError::EmptyContext) => prop_assert!(context.trim().is_empty()),
            Err(QueryError::EmptyId) => prop_assert!(id.is_some_and(|i| i.trim().is_empty())),
        }
    }

    #[test]
    fn the_pool_file_parser_returns_an_error_for_any_text(
        pieces in prop::collection::vec(prop::sample::select(POOL_PIECES), 0..24),
        noise in ".{0,40}",
    ) {
        let text = pieces.concat() + &noise;
        match PoolFile::parse(&text, Path::new("fuzz.toml")) {
            Ok(pool) => {
                for e in &pool.experts {
                    prop_assert!(e.cost.is_finite() && e.cost > 0.0);
                    prop_assert!(!e.id.is_empty());
                }
            }
            // A refusal names the file, so the operator knows which one to fix.
            Err(e) => prop_assert!(e.to_string().contains("fuzz.toml"), "{}", e),
        }
    }

    #[test]
    fn the_policy_parser_survives_a_damaged_file(
        cut in 0usize..4000,
        at in 0usize..1_000_000,
        byte in any::<u8>(),
    ) {
        let text = shipped_policy();
        // Truncated anywhere in its first 4000 bytes.
        prop_assert!(PolicyFile::parse(&text[..cut.min(text.len())]).is_err());
        // One byte replaced anywhere (kept as UTF-8 by replacing within ASCII).
        let mut bytes = text.as_bytes().to_vec();
        let at = at % bytes.len();
        bytes[at] = byte & 0x7f;
        let damaged = String::from_utf8(bytes).unwrap();
        // A damaged file either is refused, or (a weight changed, say) is a policy that can be
        // served: every score it gives is a number or none.
        if let Ok(file) = PolicyFile::parse(&damaged) {
            use l2d::core::policy::{ExpertMeta, Policy};
            let policy = l2d::core::learned::LearnedPolicy::new(file, None, "damaged");
            let experts: Vec<ExpertMeta<'_>> = policy
                .file()
                .experts
                .iter()
                .map(|a| ExpertMeta { id: &a.id, cost: a.cost })
                .collect();
            let query = Query::new("Who won?", "The Broncos won.", None, &QueryLimits::default()).unwrap();
            let mut scores = Vec::new();
            policy.score(policy.default_position(), &query, &[], &experts, &mut scores);
            prop_assert_eq!(scores.len(), experts.len());
            prop_assert!(scores.iter().flatten().all(|s| s.is_finite()), "{:?}", scores);
        }
    }

    #[test]
    fn the_labels_reader_returns_an_error_for_any_text(
        header in prop::sample::select(&[
            "",
            "{\"format\":\"l2d-labels/1\"}\n",
            "{\"format\":\"l2d-labels/1\",\"experts\":[]}\n",
            "{\"format\":\"l2d-labels/1\",\"data\":\"d.json\",\"metric\":\"v1.1\",\"experts\":[]}\n",
        ][..]),
        text in prop_oneof![Just(String::new()), Just("\n".to_owned()), ".{0,300}"],
    ) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), format!("{header}{text}")).unwrap();
        // None of these is a labels file: a header without experts, or a line that is not a
        // record. The error names the file.
        let error = l2d::train::labels::Labels::read(file.path())
            .expect_err("a labels file needs experts and records of them");
        let message = format!("{error:#}");
        prop_assert!(message.contains(&file.path().display().to_string()), "{}", message);
    }
}

#[test]
fn the_shipped_policy_still_parses() {
    PolicyFile::parse(shipped_policy()).unwrap();
}
