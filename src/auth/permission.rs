//! What a credential allows, and what a request needs.
//!
//! A grant is `KIND:NAME` or `admin`; NAME `*` is every name of that kind:
//!
//! | grant          | allows                                                             |
//! |----------------|--------------------------------------------------------------------|
//! | `produce:T`    | writing records to topic T (PRODUCE, PRODUCE_BATCH, `POST /topics/T`, an ack-and-commit's outputs to T) |
//! | `consume:T`    | reading topic T: fetches, `GET /topics/T`, range and length reads |
//! | `group:G`      | the named consumer G on a topic it may consume: claim, ack, reclaim, ack-and-commit, its own listing |
//! | `jobs:J`       | running job J (`POST /jobs/J`, JOB)                                |
//! | `state:S`      | reading state stage S's keys (`GET /state/S/K`, STATE)             |
//! | `status`       | the status, the page, `/metrics` and the metadata                  |
//! | `admin`        | everything above, and disabling, resuming and deleting consumers  |

use std::fmt;

/// One thing a credential allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    Produce(String),
    Consume(String),
    Group(String),
    Jobs(String),
    State(String),
    Status,
    Admin,
}

/// What one request needs (one of several, when it does several things).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    Produce(&'a str),
    Consume(&'a str),
    Group(&'a str),
    Jobs(&'a str),
    State(&'a str),
    Status,
    Admin,
}

impl Grant {
    /// `produce:events`, `admin`, ... as `flowd token add --allow` takes them.
    pub fn parse(text: &str) -> Result<Grant, String> {
        let text = text.trim();
        match text {
            "admin" => return Ok(Grant::Admin),
            "status" => return Ok(Grant::Status),
            _ => {}
        }
        let Some((kind, name)) = text.split_once(':') else {
            return Err(format!(
                "\"{text}\" is not a permission: write produce:TOPIC, consume:TOPIC, group:GROUP, jobs:JOB, state:STAGE, status or admin"
            ));
        };
        if name.is_empty() || name.contains([',', ' ', '\t']) {
            return Err(format!(
                "\"{text}\": the name after \"{kind}:\" is empty or holds a comma or a space (\"*\" is every name)"
            ));
        }
        let name = name.to_owned();
        Ok(match kind {
            "produce" => Grant::Produce(name),
            "consume" => Grant::Consume(name),
            "group" => Grant::Group(name),
            "jobs" => Grant::Jobs(name),
            "state" => Grant::State(name),
            _ => {
                return Err(format!(
                    "\"{kind}\" is not a kind of permission: produce, consume, group, jobs, state, status or admin"
                ));
            }
        })
    }

    /// A comma-separated list, as `--allow` and the credentials file hold it.
    pub fn parse_list(text: &str) -> Result<Vec<Grant>, String> {
        let grants: Vec<Grant> = text
            .split(',')
            .filter(|g| !g.trim().is_empty())
            .map(Grant::parse)
            .collect::<Result<_, _>>()?;
        if grants.is_empty() {
            return Err("no permission given: --allow produce:TOPIC,consume:TOPIC,... or admin".into());
        }
        Ok(grants)
    }

    fn allows(&self, need: Need<'_>) -> bool {
        let named = |granted: &str, asked: &str| granted == "*" || granted == asked;
        match (self, need) {
            (Grant::Admin, _) => true,
            (Grant::Status, Need::Status) => true,
            (Grant::Produce(g), Need::Produce(t)) => named(g, t),
            (Grant::Consume(g), Need::Consume(t)) => named(g, t),
            (Grant::Group(g), Need::Group(c)) => named(g, c),
            (Grant::Jobs(g), Need::Jobs(j)) => named(g, j),
            (Grant::State(g), Need::State(s)) => named(g, s),
            _ => false,
        }
    }
}

/// Whether `grants` allow every one of `needs`; else the first need missing.
pub fn check<'a>(grants: &[Grant], needs: &[Need<'a>]) -> Result<(), Need<'a>> {
    match needs.iter().find(|need| !grants.iter().any(|g| g.allows(**need))) {
        Some(missing) => Err(*missing),
        None => Ok(()),
    }
}

/// A grant prints as the need it meets: `produce:events`, `admin`.
impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let need = match self {
            Grant::Produce(n) => Need::Produce(n),
            Grant::Consume(n) => Need::Consume(n),
            Grant::Group(n) => Need::Group(n),
            Grant::Jobs(n) => Need::Jobs(n),
            Grant::State(n) => Need::State(n),
            Grant::Status => Need::Status,
            Grant::Admin => Need::Admin,
        };
        need.fmt(f)
    }
}

impl fmt::Display for Need<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Need::Produce(n) => write!(f, "produce:{n}"),
            Need::Consume(n) => write!(f, "consume:{n}"),
            Need::Group(n) => write!(f, "group:{n}"),
            Need::Jobs(n) => write!(f, "jobs:{n}"),
            Need::State(n) => write!(f, "state:{n}"),
            Need::Status => f.write_str("status"),
            Need::Admin => f.write_str("admin"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_print_and_allow_by_name() {
        let grants = Grant::parse_list("produce:events, consume:*,group:g1,jobs:greet,status").unwrap();
        let printed: Vec<String> = grants.iter().map(Grant::to_string).collect();
        assert_eq!(
            printed,
            ["produce:events", "consume:*", "group:g1", "jobs:greet", "status"]
        );
        assert_eq!(
            check(&grants, &[Need::Produce("events"), Need::Consume("any")]),
            Ok(())
        );
        assert_eq!(
            check(&grants, &[Need::Produce("other")]),
            Err(Need::Produce("other"))
        );
        assert_eq!(
            check(&grants, &[Need::Consume("t"), Need::Group("g2")]),
            Err(Need::Group("g2"))
        );
        assert_eq!(check(&grants, &[Need::Admin]), Err(Need::Admin));
        assert_eq!(check(&grants, &[Need::State("s")]), Err(Need::State("s")));
        assert_eq!(check(&[Grant::Admin], &[Need::Admin, Need::Produce("x")]), Ok(()));
        for bad in ["", "produce", "produce:", "write:x", "produce:a b"] {
            assert!(Grant::parse_list(bad).is_err(), "{bad:?}");
        }
    }
}
