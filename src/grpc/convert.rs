//! Protobuf ↔ domain conversions, in one place.
//!
//! The core's request machine explains each Ask in its own terms ([`Explanation`]); the Router
//! service turns that into the reply's `Decision` here. The scheduler's registry keeps domain
//! types ([`crate::core::pool_state`]); the `Pool` service turns a heartbeat's
//! `pb::LoadReport` into a [`LoadReport`] on the way in, and the registry's [`ExpertState`]s
//! into `ListPool`'s messages on the way out. The wire encodings (milliseconds as integers, the
//! origin as an enum number, "absent" as zero or an empty string) live only here.

use crate::core::ask::{AnswerText, ExpertView, Explanation};
use crate::core::call::Miss;
use crate::core::capability::{Capabilities, Holdings};
use crate::core::pool_state::{ExpertState, LoadReport, Origin, ReplicaState};
use crate::grpc::pb;
use crate::grpc::status::{code_name, code_of_miss};
use std::time::Duration;

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
            refused: matches!(miss, Miss::Failed(f) if f.could_not_take()),
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
                .map(|&(i, why)| score(i, &why.to_string())),
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

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl From<Origin> for pb::replica_state::Origin {
    fn from(origin: Origin) -> Self {
        match origin {
            Origin::Static => Self::Static,
            Origin::InProcess => Self::InProcess,
            Origin::Registered => Self::Registered,
            Origin::Dns => Self::Dns,
        }
    }
}

impl From<pb::LoadReport> for LoadReport {
    fn from(load: pb::LoadReport) -> Self {
        Self {
            in_flight: load.in_flight,
            queue_depth: load.queue_depth,
            answered_total: load.answered_total,
        }
    }
}

impl From<LoadReport> for pb::LoadReport {
    fn from(load: LoadReport) -> Self {
        Self {
            in_flight: load.in_flight,
            queue_depth: load.queue_depth,
            answered_total: load.answered_total,
        }
    }
}

impl From<ReplicaState> for pb::ReplicaState {
    fn from(r: ReplicaState) -> Self {
        Self {
            address: r.address,
            origin: pb::replica_state::Origin::from(r.origin) as i32,
            // Never sent: a lease id is its holder's handle on the lease.
            lease_id: String::new(),
            lease_remaining_ms: r.lease_remaining.map_or(0, millis),
            in_flight: r.in_flight,
            reported: r.reported.map(Into::into),
            answered_total: r.answered_total,
            failed_total: r.failed_total,
            refused_total: r.refused_total,
            capabilities: Some(capabilities_to_pb(&r.capabilities, false)),
            max_in_flight: r.max_in_flight,
            rtt_ms: r.rtt_seconds * 1e3,
            error_rate: r.error_rate,
            ejected_ms: millis(r.ejected_for),
        }
    }
}

impl From<ExpertState> for pb::ExpertState {
    fn from(e: ExpertState) -> Self {
        Self {
            expert_id: e.expert_id,
            cost: e.cost,
            backend: e.backend,
            replicas: e.replicas.into_iter().map(Into::into).collect(),
            answered_total: e.answered_total,
            cost_charged_total: e.cost_charged_total,
        }
    }
}

/// Capabilities on the wire; with `fingerprints` false, the holdings go as their size only.
pub fn capabilities_to_pb(c: &Capabilities, fingerprints: bool) -> pb::Capabilities {
    pb::Capabilities {
        max_context_chars: c.max_context_chars,
        max_context_tokens: c.max_context_tokens,
        languages: c.languages.clone(),
        holds: c.holds.as_ref().map(|h| pb::Holdings {
            ids: if fingerprints {
                h.ids().collect()
            } else {
                Vec::new()
            },
            contents: if fingerprints {
                h.contents().collect()
            } else {
                Vec::new()
            },
            count: h.len() as u64,
        }),
    }
}

/// Capabilities from the wire (a registration, a Describe reply), checked: a zero limit or a
/// language that is not a tag is refused with the field's name.
pub fn capabilities_from_pb(c: pb::Capabilities) -> Result<Capabilities, String> {
    for (field, limit) in [
        ("max_context_chars", c.max_context_chars),
        ("max_context_tokens", c.max_context_tokens),
    ] {
        if limit == Some(0) {
            return Err(format!("{field} must be positive when set"));
        }
    }
    let languages =
        Capabilities::parse_languages(&c.languages).map_err(|e| format!("languages: {e}"))?;
    Ok(Capabilities {
        max_context_chars: c.max_context_chars,
        max_context_tokens: c.max_context_tokens,
        languages,
        // Holdings reported by their size alone (a registration) say nothing about a query.
        holds: c
            .holds
            .filter(|h| h.count == 0 || !(h.ids.is_empty() && h.contents.is_empty()))
            .map(|h| std::sync::Arc::new(Holdings::new(h.ids, h.contents))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_keep_their_wire_numbers() {
        let numbers = [
            Origin::Static,
            Origin::InProcess,
            Origin::Registered,
            Origin::Dns,
        ]
        .map(|o| pb::replica_state::Origin::from(o) as i32);
        assert_eq!(numbers, [1, 2, 3, 4]);
    }

    #[test]
    fn a_load_report_survives_the_round_trip() {
        let load = LoadReport {
            in_flight: 3,
            queue_depth: 7,
            answered_total: 1_000_000_000_000,
        };
        assert_eq!(LoadReport::from(pb::LoadReport::from(load)), load);
    }

    fn replica(origin: Origin, lease_remaining: Option<Duration>) -> ReplicaState {
        ReplicaState {
            address: "127.0.0.1:9001".into(),
            origin,
            lease_remaining,
            in_flight: 2,
            reported: lease_remaining.map(|_| LoadReport {
                in_flight: 1,
                queue_depth: 4,
                answered_total: 9,
            }),
            answered_total: 11,
            failed_total: 5,
            refused_total: 3,
            capabilities: Capabilities {
                max_context_chars: Some(4000),
                languages: vec!["en".into()],
                holds: Some(std::sync::Arc::new(Holdings::new([1, 2], [3, 4]))),
                ..Capabilities::default()
            },
            max_in_flight: 64,
            rtt_seconds: 0.0125,
            error_rate: 0.25,
            ejected_for: Duration::from_micros(1_999_999),
        }
    }

    #[test]
    fn a_replica_state_is_sent_in_milliseconds_without_its_lease_id() {
        let leased = pb::ReplicaState::from(replica(
            Origin::Registered,
            Some(Duration::from_micros(4_500_900)),
        ));
        assert_eq!(
            leased,
            pb::ReplicaState {
                address: "127.0.0.1:9001".into(),
                origin: pb::replica_state::Origin::Registered as i32,
                lease_id: String::new(),
                lease_remaining_ms: 4500,
                in_flight: 2,
                reported: Some(pb::LoadReport {
                    in_flight: 1,
                    queue_depth: 4,
                    answered_total: 9,
                }),
                answered_total: 11,
                failed_total: 5,
                refused_total: 3,
                // ListPool reports what a replica holds by its size only.
                capabilities: Some(pb::Capabilities {
                    max_context_chars: Some(4000),
                    max_context_tokens: None,
                    languages: vec!["en".into()],
                    holds: Some(pb::Holdings {
                        ids: Vec::new(),
                        contents: Vec::new(),
                        count: 2,
                    }),
                }),
                max_in_flight: 64,
                rtt_ms: 0.0125 * 1e3,
                error_rate: 0.25,
                ejected_ms: 1999,
            }
        );
        let fixed = pb::ReplicaState::from(replica(Origin::Static, None));
        assert_eq!(fixed.lease_remaining_ms, 0);
        assert_eq!(fixed.reported, None);
        assert_eq!(fixed.origin, pb::replica_state::Origin::Static as i32);
    }

    #[test]
    fn an_expert_state_carries_its_replicas_in_order() {
        let state = ExpertState {
            expert_id: "bert".into(),
            cost: 100.0,
            backend: "replay".into(),
            replicas: vec![replica(Origin::Dns, None), replica(Origin::InProcess, None)],
            answered_total: 3,
            cost_charged_total: 300.5,
        };
        let sent = pb::ExpertState::from(state);
        assert_eq!(
            (sent.expert_id.as_str(), sent.cost, sent.backend.as_str()),
            ("bert", 100.0, "replay")
        );
        assert_eq!((sent.answered_total, sent.cost_charged_total), (3, 300.5));
        let origins: Vec<i32> = sent.replicas.iter().map(|r| r.origin).collect();
        assert_eq!(
            origins,
            [
                pb::replica_state::Origin::Dns as i32,
                pb::replica_state::Origin::InProcess as i32
            ]
        );
    }
}
