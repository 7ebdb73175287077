//! The one integration-test binary: storage behaviour, recovery properties, crash kills
//! and the command line, each in its own module.

mod architecture;
mod bench;
mod cli_inspect;
mod cluster;
mod cluster_consumers;
mod cluster_jobs;
mod cluster_routes;
mod cluster_sinks;
mod cluster_sources;
mod cluster_state;
mod cluster_status;
mod config_check;
mod consumers;
mod crash;
mod dataflow_run;
mod exactly_once;
mod examples;
mod exec;
mod faults;
mod fixture;
mod healing;
mod ingest;
mod jobs;
mod log;
mod nemesis;
mod outputs;
mod powercut;
mod recovery_cases;
mod recovery_props;
mod replica_log;
mod replication;
mod retention;
mod security;
mod slow_clients;
mod support;
