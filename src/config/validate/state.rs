//! Validation of `state` stages: each key's changes go to one partition of a changelog
//! topic that only this stage writes and that retention never trims.

use toml::Spanned;

use super::Validator;
use crate::config::raw::RawStage;
use crate::config::spec::{Guarantee, OpSpec, Part, Route, Selector, SourceSpec, StageSpec, TopicSpec};

impl Validator<'_, '_> {
    /// A state stage reads one topic and routes by key; returns the route it gets.
    pub(super) fn state_route(&mut self, raw: &RawStage, route: Route, from: &[usize], key: &str) -> Route {
        let by_key = Route::ShardBy(Selector::Part(Part::Key));
        if from.len() > 1 {
            self.error(
                raw.from.span(),
                key.replace(".route", ".from"),
                "a state stage reads one topic: a key's state lives with that topic's partition of the key"
                    .into(),
                "split it into one state stage per topic".into(),
            );
        }
        if let Some(given) = &raw.route
            && route != by_key
        {
            self.error(
                given.span(),
                key,
                "a state stage writes each key's changes to one partition: its route is by key".into(),
                "remove `route` (it is { shard_by = \"key\" })".into(),
            );
        }
        by_key
    }

    /// The output topic of a state stage is its changelog: written by it alone, and
    /// never trimmed by retention (the state is rebuilt from it on start).
    pub(super) fn changelogs(
        &mut self,
        raw: &[Spanned<RawStage>],
        stages: &[StageSpec],
        sources: &[SourceSpec],
        topics: &[TopicSpec],
    ) {
        for (i, stage) in stages.iter().enumerate() {
            let (OpSpec::State { .. }, Some(to)) = (&stage.op, stage.to) else {
                continue;
            };
            let span = raw[i].get_ref().to.as_ref().map_or(0..0, Spanned::span);
            let key = format!("stage \"{}\".to", stage.name);
            if stage.guarantee != Guarantee::ExactlyOnce {
                self.error(
                    raw[i].get_ref().name.span(),
                    format!("stage \"{}\".guarantee", stage.name),
                    "a state stage is exactly once: a replayed record must not change its key twice".into(),
                    "remove `guarantee`".into(),
                );
            }
            let other_stage = stages
                .iter()
                .enumerate()
                .find(|(j, s)| *j != i && (s.to == Some(to) || s.dead_letter_topic() == Some(to)));
            let other = match other_stage {
                Some((_, s)) => Some(format!("stage \"{}\"", s.name)),
                None => sources
                    .iter()
                    .find(|s| s.to == to)
                    .map(|s| format!("source \"{}\"", s.name)),
            };
            if let Some(other) = other {
                self.error(
                    span.clone(),
                    key.clone(),
                    format!(
                        "topic \"{}\" is this state stage's changelog, and {other} writes it too",
                        topics[to].name
                    ),
                    "give the state stage a topic of its own".into(),
                );
            }
            let retention = topics[to].retention;
            if retention.max_age_ms.is_some() || retention.max_bytes.is_some() {
                self.error(
                    span,
                    key,
                    format!(
                        "topic \"{}\" is a state stage's changelog and must keep every change: it has retention",
                        topics[to].name
                    ),
                    "remove its retention (the state is rebuilt from it on start)".into(),
                );
            }
        }
    }
}
