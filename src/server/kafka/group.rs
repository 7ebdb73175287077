//! One Kafka consumer group's membership, as a pure state machine: who is in it, which
//! generation it is at, who leads it, the assignment each member was given. No clock,
//! no I/O: the caller passes the time, and gets back the answers due to the requests
//! that wait (a JoinGroup waits for the others to join, a SyncGroup for the leader's
//! assignments), each with the waiter `W` it came with.
//!
//! The protocol is Kafka's classic one (KIP-62's two timeouts, KIP-394's member ids):
//!
//! - **Joining.** A join (a new member, or a known one asking again) starts a round:
//!   every member must join again. The round ends when all have, or at its deadline
//!   (the longest `rebalance_timeout` of the members), when those that did not are
//!   removed. The generation goes up; the leader (kept while it stays) gets every
//!   member's metadata for the protocol chosen (the first of the leader's that every
//!   member speaks), the others none.
//! - **Syncing.** The leader's SyncGroup brings each member's assignment; those who
//!   synced first wait for it. A leader that does not sync within the longest
//!   `rebalance_timeout` starts a new round.
//! - **Stable.** Members heartbeat; one silent past its `session_timeout` is removed
//!   and the others join again. A heartbeat during a round is answered
//!   REBALANCE_IN_PROGRESS, which is how members learn to join.
//! - **Leaving.** LeaveGroup removes a member at once: the others join again, without
//!   waiting for its session to end.
//!
//! A member waiting in a join or a sync is not expired for silence: the round's own
//! deadline bounds its wait. Static membership (`group.instance.id`) is not kept: such a
//! member is a dynamic one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::errors;

/// Members one group holds, at most; a join past it is GROUP_MAX_SIZE_REACHED.
pub const MEMBERS_MAX: usize = 1000;

/// A member's join, as the group needs it.
#[derive(Debug, Clone)]
pub struct JoinAsk {
    /// Empty: a new member.
    pub member_id: String,
    /// Whether a new member must first take an id and join again with it (KIP-394,
    /// JoinGroup v4 on).
    pub id_required: bool,
    pub protocol_type: String,
    /// `(name, metadata)` in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
}

/// What a join gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Joined {
    Refused(i16),
    /// Join again with this id (MEMBER_ID_REQUIRED).
    TakeId(String),
    In {
        generation: i32,
        protocol_type: String,
        protocol: String,
        leader: String,
        member_id: String,
        /// Every member's metadata for `protocol`: for the leader alone.
        members: Vec<(String, Bytes)>,
    },
}

/// What a sync gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Synced {
    Refused(i16),
    Assigned {
        protocol_type: String,
        protocol: String,
        assignment: Bytes,
    },
}

/// An answer due to a waiting request.
#[derive(Debug)]
pub enum Due<W> {
    Join(W, Joined),
    Sync(W, Synced),
}

#[derive(Debug, Clone)]
struct Member {
    protocols: Vec<(String, Bytes)>,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    /// Last heard from (any request).
    seen: Instant,
    /// Joined in the current round.
    joined: bool,
    assignment: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Empty,
    /// A round of joins, ending at the deadline at the latest.
    Joining {
        deadline: Instant,
    },
    /// Waiting for the leader's assignments until the deadline.
    Syncing {
        deadline: Instant,
    },
    Stable,
}

/// One group.
#[derive(Debug)]
pub struct Group<W> {
    protocol_type: String,
    protocol: String,
    generation: i32,
    phase: Phase,
    members: BTreeMap<String, Member>,
    leader: Option<String>,
    /// Ids handed out with MEMBER_ID_REQUIRED, until the member joins with one (or
    /// until this time).
    issued: BTreeMap<String, Instant>,
    incarnation: u64,
    next_id: u64,
    joins: Vec<(String, W)>,
    syncs: Vec<(String, W)>,
}

impl<W> Group<W> {
    /// A new group; `incarnation`, unique among the groups this process made, keeps the
    /// member ids of a group forgotten and made again from meeting the old ones.
    pub fn new(incarnation: u64) -> Self {
        Group {
            incarnation,
            protocol_type: String::new(),
            protocol: String::new(),
            generation: 0,
            phase: Phase::Empty,
            members: BTreeMap::new(),
            leader: None,
            issued: BTreeMap::new(),
            next_id: 0,
            joins: Vec::new(),
            syncs: Vec::new(),
        }
    }

    /// No member, no id handed out, no request waiting: the group may be forgotten
    /// (its committed offsets are kept elsewhere).
    pub fn is_idle(&self) -> bool {
        self.members.is_empty() && self.issued.is_empty() && self.joins.is_empty() && self.syncs.is_empty()
    }

    /// The next time `tick` may change something (a deadline or a session's end).
    pub fn next_deadline(&self) -> Option<Instant> {
        let phase = match self.phase {
            Phase::Joining { deadline } | Phase::Syncing { deadline } => Some(deadline),
            Phase::Empty | Phase::Stable => None,
        };
        let sessions = self
            .members
            .iter()
            .filter(|(id, _)| !self.waiting(id))
            .map(|(_, m)| m.seen + m.session_timeout);
        phase
            .into_iter()
            .chain(sessions)
            .chain(self.issued.values().copied())
            .min()
    }

    fn waiting(&self, id: &str) -> bool {
        self.joins.iter().chain(&self.syncs).any(|(m, _)| m == id)
    }

    /// A member's join; `waiter` gets the answer now or when the round ends.
    pub fn join(&mut self, ask: JoinAsk, waiter: W, now: Instant) -> Vec<Due<W>> {
        let mut due = self.tick(now);
        let mut ask = ask;
        if ask.member_id.is_empty() {
            if self.members.len() + self.issued.len() >= MEMBERS_MAX {
                due.push(Due::Join(waiter, Joined::Refused(errors::GROUP_MAX_SIZE_REACHED)));
                return due;
            }
            self.next_id += 1;
            let id = format!("flowd-{}.{}", self.incarnation, self.next_id);
            if ask.id_required {
                self.issued.insert(id.clone(), now + ask.session_timeout);
                due.push(Due::Join(waiter, Joined::TakeId(id)));
                return due;
            }
            ask.member_id = id;
        } else if !self.members.contains_key(&ask.member_id) && self.issued.remove(&ask.member_id).is_none() {
            due.push(Due::Join(waiter, Joined::Refused(errors::UNKNOWN_MEMBER_ID)));
            return due;
        }
        if let Some(refused) = self.inconsistent(&ask) {
            due.push(Due::Join(waiter, Joined::Refused(refused)));
            return due;
        }
        if self.members.is_empty() {
            self.protocol_type = ask.protocol_type.clone();
        }
        // The same member asking again: its earlier request is answered as superseded.
        if let Some(i) = self.joins.iter().position(|(m, _)| *m == ask.member_id) {
            let (_, old) = self.joins.swap_remove(i);
            due.push(Due::Join(old, Joined::Refused(errors::REBALANCE_IN_PROGRESS)));
        }
        let id = ask.member_id.clone();
        self.members.insert(
            id.clone(),
            Member {
                protocols: ask.protocols,
                session_timeout: ask.session_timeout,
                rebalance_timeout: ask.rebalance_timeout,
                seen: now,
                joined: false,
                assignment: Bytes::new(),
            },
        );
        if !matches!(self.phase, Phase::Joining { .. }) {
            due.extend(self.start_round(now));
        }
        if let Some(member) = self.members.get_mut(&id) {
            member.joined = true;
        }
        self.joins.push((id, waiter));
        due.extend(self.end_round_if_whole(now));
        due
    }

    /// A reason to refuse `ask`'s protocols: another type than the group's, or none in
    /// common with every member.
    fn inconsistent(&self, ask: &JoinAsk) -> Option<i16> {
        if ask.protocols.is_empty() || ask.protocol_type.is_empty() {
            return Some(errors::INCONSISTENT_GROUP_PROTOCOL);
        }
        let others: Vec<&Member> = self
            .members
            .iter()
            .filter(|(id, _)| **id != ask.member_id)
            .map(|(_, m)| m)
            .collect();
        if others.is_empty() {
            return None;
        }
        if ask.protocol_type != self.protocol_type {
            return Some(errors::INCONSISTENT_GROUP_PROTOCOL);
        }
        let common = ask
            .protocols
            .iter()
            .any(|(name, _)| others.iter().all(|m| m.protocols.iter().any(|(n, _)| n == name)));
        (!common).then_some(errors::INCONSISTENT_GROUP_PROTOCOL)
    }

    /// How long a round (or a sync) may take: the longest rebalance timeout of the members.
    fn longest_rebalance(&self) -> Duration {
        self.members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default()
    }

    /// Every member must join again, by the longest of their rebalance timeouts; those
    /// waiting for a sync are told so.
    fn start_round(&mut self, now: Instant) -> Vec<Due<W>> {
        self.phase = Phase::Joining {
            deadline: now + self.longest_rebalance(),
        };
        for member in self.members.values_mut() {
            member.joined = false;
        }
        self.syncs
            .drain(..)
            .map(|(_, w)| Due::Sync(w, Synced::Refused(errors::REBALANCE_IN_PROGRESS)))
            .collect()
    }

    /// Ends the round when every member joined.
    fn end_round_if_whole(&mut self, now: Instant) -> Vec<Due<W>> {
        if matches!(self.phase, Phase::Joining { .. }) && self.members.values().all(|m| m.joined) {
            return self.end_round(now);
        }
        Vec::new()
    }

    /// Ends the round: members that did not join are out, the generation goes up, and
    /// every waiting join is answered.
    fn end_round(&mut self, now: Instant) -> Vec<Due<W>> {
        self.members.retain(|_, m| m.joined);
        self.generation = self.generation.wrapping_add(1).max(1);
        if self.members.is_empty() {
            self.phase = Phase::Empty;
            self.leader = None;
            self.protocol.clear();
            return Vec::new();
        }
        if !self.leader.as_ref().is_some_and(|l| self.members.contains_key(l)) {
            self.leader = self.joins.first().map(|(id, _)| id.clone());
        }
        let leader = self.leader.clone().unwrap_or_default();
        let chosen = self.members[&leader]
            .protocols
            .iter()
            .map(|(name, _)| name)
            .find(|name| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == *name))
            })
            .cloned()
            .unwrap_or_default();
        self.protocol = chosen;
        self.phase = Phase::Syncing {
            deadline: now + self.longest_rebalance(),
        };
        let metadata: Vec<(String, Bytes)> = self
            .members
            .iter()
            .map(|(id, m)| {
                let meta = m
                    .protocols
                    .iter()
                    .find(|(n, _)| *n == self.protocol)
                    .map(|(_, meta)| meta.clone())
                    .unwrap_or_default();
                (id.clone(), meta)
            })
            .collect();
        for member in self.members.values_mut() {
            member.assignment = Bytes::new();
        }
        let joins = std::mem::take(&mut self.joins);
        joins
            .into_iter()
            .map(|(id, waiter)| {
                let members = if id == leader {
                    metadata.clone()
                } else {
                    Vec::new()
                };
                Due::Join(
                    waiter,
                    Joined::In {
                        generation: self.generation,
                        protocol_type: self.protocol_type.clone(),
                        protocol: self.protocol.clone(),
                        leader: leader.clone(),
                        member_id: id,
                        members,
                    },
                )
            })
            .collect()
    }

    /// Whether `member` at `generation` is the group's current member: NONE, or the
    /// error that says why not.
    fn check(&self, member: &str, generation: i32) -> i16 {
        if !self.members.contains_key(member) {
            errors::UNKNOWN_MEMBER_ID
        } else if generation != self.generation {
            errors::ILLEGAL_GENERATION
        } else {
            errors::NONE
        }
    }

    /// A member's sync: the leader's brings the assignments (`None` from the others).
    pub fn sync(
        &mut self,
        member: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        waiter: W,
        now: Instant,
    ) -> Vec<Due<W>> {
        let mut due = self.tick(now);
        let refused = match self.check(member, generation) {
            errors::NONE => None,
            code => Some(code),
        };
        let answer = match (refused, self.phase) {
            (Some(code), _) => Some(Synced::Refused(code)),
            (None, Phase::Joining { .. } | Phase::Empty) => {
                Some(Synced::Refused(errors::REBALANCE_IN_PROGRESS))
            }
            (None, Phase::Stable) => Some(self.assigned(member)),
            (None, Phase::Syncing { .. }) => None,
        };
        if let Some(answer) = answer {
            due.push(Due::Sync(waiter, answer));
            return due;
        }
        if let Some(m) = self.members.get_mut(member) {
            m.seen = now;
        }
        self.syncs.push((member.to_owned(), waiter));
        if self.leader.as_deref() == Some(member) {
            for (id, assignment) in assignments {
                if let Some(m) = self.members.get_mut(&id) {
                    m.assignment = assignment;
                }
            }
            self.phase = Phase::Stable;
            for m in self.members.values_mut() {
                m.seen = now;
            }
            let syncs = std::mem::take(&mut self.syncs);
            due.extend(syncs.into_iter().map(|(id, w)| Due::Sync(w, self.assigned(&id))));
        }
        due
    }

    fn assigned(&self, member: &str) -> Synced {
        Synced::Assigned {
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            assignment: self
                .members
                .get(member)
                .map(|m| m.assignment.clone())
                .unwrap_or_default(),
        }
    }

    /// `check`, and REBALANCE_IN_PROGRESS for a current member while a round runs.
    fn settled(&self, member: &str, generation: i32) -> i16 {
        match self.check(member, generation) {
            errors::NONE if matches!(self.phase, Phase::Joining { .. }) => errors::REBALANCE_IN_PROGRESS,
            code => code,
        }
    }

    /// A heartbeat: NONE while the member is current and the group not in a round.
    pub fn heartbeat(&mut self, member: &str, generation: i32, now: Instant) -> (i16, Vec<Due<W>>) {
        let due = self.tick(now);
        let code = self.settled(member, generation);
        if code == errors::NONE
            && let Some(m) = self.members.get_mut(member)
        {
            m.seen = now;
        }
        (code, due)
    }

    /// Whether a commit of `member` at `generation` may land: a member of another
    /// generation (one whose partitions went to others) is refused. A commit outside the
    /// group's management (generation -1, no member) lands while the group is empty.
    pub fn may_commit(&self, member: &str, generation: i32) -> i16 {
        if generation < 0 && member.is_empty() {
            return if self.members.is_empty() {
                errors::NONE
            } else {
                errors::UNKNOWN_MEMBER_ID
            };
        }
        self.settled(member, generation)
    }

    /// A member leaves: the others join again. NONE, or UNKNOWN_MEMBER_ID.
    pub fn leave(&mut self, member: &str, now: Instant) -> (i16, Vec<Due<W>>) {
        let mut due = self.tick(now);
        if self.members.remove(member).is_none() {
            return (errors::UNKNOWN_MEMBER_ID, due);
        }
        due.extend(self.removed(&[member.to_owned()], now));
        (errors::NONE, due)
    }

    /// After members were removed: their waiting requests are refused, and the rest join
    /// again (or the round ends, if they were the ones it waited for).
    fn removed(&mut self, gone: &[String], now: Instant) -> Vec<Due<W>> {
        let mut due: Vec<Due<W>> = take_waiters(&mut self.joins, gone)
            .map(|w| Due::Join(w, Joined::Refused(errors::UNKNOWN_MEMBER_ID)))
            .collect();
        due.extend(
            take_waiters(&mut self.syncs, gone)
                .map(|w| Due::Sync(w, Synced::Refused(errors::UNKNOWN_MEMBER_ID))),
        );
        if self.leader.as_ref().is_some_and(|l| gone.contains(l)) {
            self.leader = None;
        }
        if self.members.is_empty() {
            self.phase = Phase::Empty;
            self.generation = self.generation.wrapping_add(1).max(1);
            self.protocol.clear();
            return due;
        }
        match self.phase {
            Phase::Joining { .. } => due.extend(self.end_round_if_whole(now)),
            _ => due.extend(self.start_round(now)),
        }
        due
    }

    /// What time changed: members silent past their session out, a round or a sync past
    /// its deadline ended, ids handed out and never used forgotten.
    pub fn tick(&mut self, now: Instant) -> Vec<Due<W>> {
        self.issued.retain(|_, until| *until > now);
        let silent: Vec<String> = self
            .members
            .iter()
            .filter(|(id, m)| m.seen + m.session_timeout <= now && !self.waiting(id))
            .map(|(id, _)| id.clone())
            .collect();
        let mut due = Vec::new();
        if !silent.is_empty() {
            for id in &silent {
                self.members.remove(id);
            }
            due.extend(self.removed(&silent, now));
        }
        match self.phase {
            Phase::Joining { deadline } if deadline <= now => due.extend(self.end_round(now)),
            Phase::Syncing { deadline } if deadline <= now => due.extend(self.start_round(now)),
            _ => {}
        }
        due
    }
}

/// Takes the waiters of the members `gone` out of `waiting`.
fn take_waiters<W>(waiting: &mut Vec<(String, W)>, gone: &[String]) -> impl Iterator<Item = W> {
    let (out, kept): (Vec<_>, Vec<_>) = std::mem::take(waiting)
        .into_iter()
        .partition(|(m, _)| gone.contains(m));
    *waiting = kept;
    out.into_iter().map(|(_, w)| w)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(10);

    fn ask(id: &str, protocols: &[&str]) -> JoinAsk {
        JoinAsk {
            member_id: id.to_owned(),
            id_required: false,
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| ((*p).to_owned(), Bytes::from(format!("meta-{p}"))))
                .collect(),
            session_timeout: S,
            rebalance_timeout: S,
        }
    }

    fn joined(due: &[Due<u32>], waiter: u32) -> Option<&Joined> {
        due.iter().find_map(|d| match d {
            Due::Join(w, j) if *w == waiter => Some(j),
            _ => None,
        })
    }

    fn synced(due: &[Due<u32>], waiter: u32) -> Option<&Synced> {
        due.iter().find_map(|d| match d {
            Due::Sync(w, s) if *w == waiter => Some(s),
            _ => None,
        })
    }

    fn member_of(j: &Joined) -> (String, i32) {
        match j {
            Joined::In {
                member_id,
                generation,
                ..
            } => (member_id.clone(), *generation),
            other => panic!("not in: {other:?}"),
        }
    }

    #[test]
    fn a_new_member_takes_an_id_first_then_leads_a_group_of_one() {
        let mut g = Group::<u32>::new(1);
        let t = Instant::now();
        let mut a = ask("", &["range"]);
        a.id_required = true;
        let due = g.join(a.clone(), 1, t);
        let Some(Joined::TakeId(id)) = joined(&due, 1) else {
            panic!("{due:?}")
        };
        a.member_id = id.clone();
        let due = g.join(a, 2, t);
        match joined(&due, 2).unwrap() {
            Joined::In {
                generation,
                leader,
                members,
                protocol,
                ..
            } => {
                assert_eq!(
                    (*generation, leader.as_str(), protocol.as_str()),
                    (1, id.as_str(), "range")
                );
                assert_eq!(members, &vec![(id.clone(), Bytes::from("meta-range"))]);
            }
            other => panic!("{other:?}"),
        }
        let due = g.sync(id, 1, vec![(id.clone(), Bytes::from("all"))], 3, t);
        assert!(matches!(synced(&due, 3), Some(Synced::Assigned { assignment, .. }) if assignment == "all"));
        assert_eq!(g.heartbeat(id, 1, t).0, errors::NONE);
        // An id never handed out is refused.
        let due = g.join(ask("made-up", &["range"]), 4, t);
        assert_eq!(joined(&due, 4), Some(&Joined::Refused(errors::UNKNOWN_MEMBER_ID)));
    }

    /// Two members: a second join starts a round; the first learns of it by its
    /// heartbeat, joins, and both get the next generation; the follower's sync waits for
    /// the leader's.
    #[test]
    fn a_second_member_makes_the_first_join_again_and_both_get_their_assignment() {
        let mut g = Group::<u32>::new(1);
        let t = Instant::now();
        let (a, _) = member_of(joined(&g.join(ask("", &["range"]), 1, t), 1).unwrap());
        g.sync(&a, 1, vec![(a.clone(), Bytes::from("a:0,1"))], 2, t);
        assert!(joined(&g.join(ask("", &["range", "roundrobin"]), 3, t), 3).is_none());
        assert_eq!(g.heartbeat(&a, 1, t).0, errors::REBALANCE_IN_PROGRESS);
        let due = g.join(ask(&a, &["roundrobin", "range"]), 4, t);
        let (a2, gen_a) = member_of(joined(&due, 4).unwrap());
        let (b, gen_b) = member_of(joined(&due, 3).unwrap());
        assert_eq!((a2.as_str(), gen_a, gen_b), (a.as_str(), 2, 2));
        // The leader stays; the protocol is its first that both speak.
        match joined(&due, 4).unwrap() {
            Joined::In {
                leader,
                protocol,
                members,
                ..
            } => {
                assert_eq!((leader, protocol.as_str(), members.len()), (&a, "roundrobin", 2));
            }
            _ => unreachable!(),
        }
        assert!(
            synced(&g.sync(&b, 2, vec![], 5, t), 5).is_none(),
            "the follower waits"
        );
        let due = g.sync(
            &a,
            2,
            vec![(a.clone(), Bytes::from("a:0")), (b.clone(), Bytes::from("b:1"))],
            6,
            t,
        );
        assert!(matches!(synced(&due, 5), Some(Synced::Assigned { assignment, .. }) if assignment == "b:1"));
        assert!(matches!(synced(&due, 6), Some(Synced::Assigned { assignment, .. }) if assignment == "a:0"));
        // An old generation is fenced, for heartbeats and commits.
        assert_eq!(g.heartbeat(&a, 1, t).0, errors::ILLEGAL_GENERATION);
        assert_eq!(g.may_commit(&a, 1), errors::ILLEGAL_GENERATION);
        assert_eq!(g.may_commit(&a, 2), errors::NONE);
        assert_eq!(g.may_commit("", -1), errors::UNKNOWN_MEMBER_ID);
    }

    #[test]
    fn a_member_that_leaves_or_goes_silent_hands_its_partitions_to_the_rest() {
        let mut g = Group::<u32>::new(1);
        let t = Instant::now();
        let (a, _) = member_of(joined(&g.join(ask("", &["range"]), 1, t), 1).unwrap());
        g.join(ask("", &["range"]), 2, t);
        let due = g.join(ask(&a, &["range"]), 3, t);
        let (b, generation) = member_of(joined(&due, 2).unwrap());
        g.sync(&b, generation, vec![], 4, t);
        g.sync(&a, generation, vec![], 5, t);
        // b leaves: a must join again, and is alone in the next generation, leading.
        assert_eq!(g.leave(&b, t).0, errors::NONE);
        assert_eq!(g.heartbeat(&a, generation, t).0, errors::REBALANCE_IN_PROGRESS);
        let due = g.join(ask(&a, &["range"]), 6, t);
        match joined(&due, 6).unwrap() {
            Joined::In {
                generation: g2,
                leader,
                members,
                ..
            } => assert_eq!((*g2, leader, members.len()), (generation + 1, &a, 1)),
            other => panic!("{other:?}"),
        }
        g.sync(&a, generation + 1, vec![], 7, t);
        // A member silent past its session is removed at the next look.
        let later = t + S + Duration::from_millis(1);
        assert!(g.next_deadline().is_some_and(|d| d <= later));
        g.tick(later);
        assert!(g.is_idle(), "{g:?}");
        assert_eq!(
            g.heartbeat(&a, generation + 1, later).0,
            errors::UNKNOWN_MEMBER_ID
        );
    }

    #[test]
    fn a_round_ends_at_its_deadline_without_the_members_that_did_not_join() {
        let mut g = Group::<u32>::new(1);
        let t = Instant::now();
        let (a, _) = member_of(joined(&g.join(ask("", &["range"]), 1, t), 1).unwrap());
        g.sync(&a, 1, vec![], 2, t);
        // b joins; a never comes back (and its heartbeats stopped).
        let b_join = g.join(ask("", &["range"]), 3, t + Duration::from_secs(1));
        assert!(joined(&b_join, 3).is_none());
        let due = g.tick(t + Duration::from_secs(11));
        let (b, generation) = member_of(joined(&due, 3).unwrap());
        assert_ne!(a, b);
        assert_eq!(generation, 2);
        assert_eq!(
            g.heartbeat(&a, 1, t + Duration::from_secs(11)).0,
            errors::UNKNOWN_MEMBER_ID
        );
    }

    #[test]
    fn protocols_in_common_are_required() {
        let mut g = Group::<u32>::new(1);
        let t = Instant::now();
        g.join(ask("", &["range"]), 1, t);
        let due = g.join(ask("", &["sticky"]), 2, t);
        assert_eq!(
            joined(&due, 2),
            Some(&Joined::Refused(errors::INCONSISTENT_GROUP_PROTOCOL))
        );
        let mut other = ask("", &["range"]);
        other.protocol_type = "connect".into();
        let due = g.join(other, 3, t);
        assert_eq!(
            joined(&due, 3),
            Some(&Joined::Refused(errors::INCONSISTENT_GROUP_PROTOCOL))
        );
    }

    #[test]
    fn a_leader_that_never_syncs_starts_a_new_round() {
        let mut g = Group::<u32>::new(1);
        let t = Instant::now();
        let (a, _) = member_of(joined(&g.join(ask("", &["range"]), 1, t), 1).unwrap());
        g.sync(&a, 1, vec![], 2, t);
        g.join(ask("", &["range"]), 3, t);
        let due = g.join(ask(&a, &["range"]), 4, t);
        let (b, generation) = member_of(joined(&due, 3).unwrap());
        assert!(g.sync(&b, generation, vec![], 5, t).is_empty());
        let due = g.tick(t + S + Duration::from_millis(1));
        assert_eq!(
            synced(&due, 5),
            Some(&Synced::Refused(errors::REBALANCE_IN_PROGRESS))
        );
    }
}
