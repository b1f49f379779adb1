//! Protobuf ↔ domain conversion, in one place: the core and the scheduler's logic work on
//! domain types, and the gRPC services convert at the edge with these functions.

use crate::core::ask::{AnswerText, ExpertView, Explanation};
use crate::grpc::pb;
use crate::grpc::status::{code_name, code_of_miss};

impl AnswerText for pb::AnswerResponse {
    fn text(&self) -> &str {
        &self.text
    }
}

/// The `Decision` of a reply, from the request's explanation. `address(expert, replica)` names a
/// replica of the view.
pub fn decision(
    explanation: &Explanation,
    view: &[ExpertView<'_>],
    address: impl Fn(usize, usize) -> String,
    policy_id: &str,
    lambda: f64,
) -> pb::Decision {
    let fallbacks = explanation
        .misses()
        .map(|(call, miss)| pb::Fallback {
            expert_id: view[call.expert].id.to_owned(),
            replica: address(call.expert, call.replica),
            code: code_name(code_of_miss(miss)).into(),
            message: miss.to_string(),
        })
        .collect();
    let probes = explanation
        .probes
        .iter()
        .map(|p| pb::ProbeCall {
            expert_id: view[p.expert].id.to_owned(),
            replica: p.replica.map(|r| address(p.expert, r)).unwrap_or_default(),
            text: p.text.clone().unwrap_or_default(),
            code: match (&p.text, p.miss) {
                (Some(_), _) => "OK",
                (None, Some(miss)) => code_name(code_of_miss(miss)),
                (None, None) => "UNAVAILABLE",
            }
            .into(),
        })
        .collect();
    let Some(d) = &explanation.decision else {
        return pb::Decision {
            policy_id: policy_id.to_owned(),
            fallbacks,
            probes,
            lambda,
            ..pb::Decision::default()
        };
    };
    let score = |i: usize, excluded_because: &str| pb::ExpertScore {
        expert_id: view[i].id.to_owned(),
        expected_cost: d.scores[i],
        cost: view[i].price,
        eligible: excluded_because.is_empty(),
        excluded_because: excluded_because.to_owned(),
        load: d.plan.load[i],
    };
    let scores = d
        .plan
        .ranked
        .iter()
        .map(|&i| score(i, ""))
        .chain(
            d.plan
                .excluded
                .iter()
                .map(|&(i, why)| score(i, why.as_str())),
        )
        .collect();
    pb::Decision {
        policy_id: policy_id.to_owned(),
        chosen_expert: view[d.chosen].id.to_owned(),
        reason: explanation.reason(view),
        scores,
        fallbacks,
        probes,
        lambda,
    }
}
