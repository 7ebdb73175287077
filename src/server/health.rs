//! Health for probes and load balancers, answered without credentials (a kubelet has no
//! token) and revealing only readiness and, when not ready, why (the partitions not
//! ready yet named as TOPIC/PARTITION):
//!
//! - `GET /healthz`: 200 while the process serves HTTP (liveness).
//! - `GET /readyz`: 200 `{"ready":true}` when this peer should get traffic, else 503
//!   `{"ready":false,"why":[...]}`. Ready means: the engine is not stopping, its data
//!   was recovered (the doors open only after that), and in a cluster: the metadata group
//!   has a leader this peer knows, no partition this peer serves is still being copied in
//!   from its previous holder, and every replicated partition whose replica set names
//!   this peer is led or followed here (not left without a role).

use crate::protocol::status::{Standing, Status};

/// One partition as readiness sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub standing: Option<Standing>,
    /// `Some(role)` when the partition is replicated and its replica set names this peer.
    pub replica_role: Option<&'a str>,
}

/// Why this peer is not ready (empty: ready). `group_leader` is `None` outside a cluster.
pub fn reasons(stopping: bool, group_leader: Option<bool>, rows: &[Row<'_>]) -> Vec<String> {
    let mut why = Vec::new();
    if stopping {
        why.push("the engine is stopping".to_owned());
    }
    if group_leader == Some(false) {
        why.push("the cluster's metadata group has no leader this peer knows yet (joining)".to_owned());
    }
    let claiming = places(rows, |r| r.standing == Some(Standing::Claiming));
    if !claiming.is_empty() {
        why.push(format!("being copied in from their previous holder: {claiming}"));
    }
    let roleless = places(rows, |r| {
        r.replica_role
            .is_some_and(|role| role != "leader" && role != "follower")
    });
    if !roleless.is_empty() {
        why.push(format!("replicas here neither lead nor follow yet: {roleless}"));
    }
    why
}

/// `TOPIC/PARTITION, ...` of the rows `which` picks (empty: none).
fn places(rows: &[Row<'_>], which: impl Fn(&Row<'_>) -> bool) -> String {
    let picked: Vec<String> = rows
        .iter()
        .filter(|r| which(r))
        .map(|r| format!("{}/{}", r.topic, r.partition))
        .collect();
    picked.join(", ")
}

/// Why this peer, whose own status is `status`, is not ready (empty: ready).
pub fn why_not_ready(status: &Status, stopping: bool) -> Vec<String> {
    let me = status.peers.iter().find(|p| p.me).map(|p| p.addr.as_str());
    let group_leader = status.metadata_group.as_ref().map(|g| g.leader.is_some());
    let rows: Vec<Row<'_>> = status
        .topics
        .iter()
        .chain(&status.internal_topics)
        .flat_map(|t| t.partitions.iter().map(move |p| (t, p)))
        .map(|(t, p)| Row {
            topic: &t.name,
            partition: p.partition,
            standing: p.standing,
            replica_role: p
                .replica
                .as_ref()
                .filter(|r| me.is_some_and(|me| r.replicas.iter().any(|a| a == me)))
                .map(|r| r.role.as_str()),
        })
        .collect();
    reasons(stopping, group_leader, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(standing: Option<Standing>, replica_role: Option<&str>) -> Row<'_> {
        Row {
            topic: "t",
            partition: 3,
            standing,
            replica_role,
        }
    }

    #[test]
    fn ready_when_serving_or_replicating_and_not_while_stopping_joining_claiming_or_roleless() {
        let serving = row(Some(Standing::Serving), None);
        assert!(
            reasons(false, None, &[serving]).is_empty(),
            "one machine, serving"
        );
        assert!(reasons(false, Some(true), &[serving, row(Some(Standing::Away), None)]).is_empty());
        assert!(
            reasons(
                false,
                Some(true),
                &[row(None, Some("leader")), row(None, Some("follower"))]
            )
            .is_empty()
        );
        assert_eq!(reasons(true, None, &[serving]), ["the engine is stopping"]);
        assert!(reasons(false, Some(false), &[serving])[0].contains("no leader"));
        assert_eq!(
            reasons(false, Some(true), &[row(Some(Standing::Claiming), None)]),
            ["being copied in from their previous holder: t/3"]
        );
        assert_eq!(
            reasons(false, Some(true), &[row(None, Some("none"))]),
            ["replicas here neither lead nor follow yet: t/3"]
        );
        assert_eq!(
            reasons(true, Some(false), &[row(Some(Standing::Claiming), Some("none"))]).len(),
            4
        );
    }
}
