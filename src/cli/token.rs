//! `flowd token add|remove|list`: the credentials file (`auth::credentials`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::auth::{Credentials, Grant};
use crate::cli::CliError;

#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Make a token for NAME, allowed what --allow says; prints it once (only its
    /// hash is stored).
    Add {
        /// A name for logs and errors: 1 to 64 of A-Z a-z 0-9 . _ -
        name: String,
        /// Comma-separated: produce:TOPIC, consume:TOPIC, group:GROUP, jobs:JOB,
        /// state:STAGE, status, admin ("*" as a name: every one).
        #[arg(long, value_name = "PERMISSIONS")]
        allow: String,
        /// The credentials file (made, mode 0600, if missing); `flowd run
        /// --credentials` or `[ingest] credentials` names it to the server.
        #[arg(long, value_name = "FILE")]
        credentials: PathBuf,
    },
    /// Remove NAME's token: new connections and HTTP requests with it are refused.
    Remove {
        name: String,
        #[arg(long, value_name = "FILE")]
        credentials: PathBuf,
    },
    /// The names in the file and what each may do (never a token).
    List {
        #[arg(long, value_name = "FILE")]
        credentials: PathBuf,
    },
}

pub fn run(action: TokenAction) -> Result<ExitCode, CliError> {
    let usage = |e: crate::auth::CredentialsError| CliError::Usage(e.to_string());
    match action {
        TokenAction::Add {
            name,
            allow,
            credentials,
        } => {
            let grants = Grant::parse_list(&allow).map_err(CliError::Usage)?;
            let token = Credentials::add(&credentials, &name, &grants).map_err(usage)?;
            eprintln!(
                "flowd: \"{name}\" added to {}; its token (shown once, stored only as a hash):",
                credentials.display()
            );
            println!("{token}");
        }
        TokenAction::Remove { name, credentials } => {
            if !Credentials::remove(&credentials, &name).map_err(usage)? {
                return Err(CliError::Usage(format!(
                    "{} holds no \"{name}\"",
                    credentials.display()
                )));
            }
            eprintln!("flowd: \"{name}\" removed from {}", credentials.display());
        }
        TokenAction::List { credentials } => {
            for identity in Credentials::load(&credentials).map_err(usage)?.identities() {
                let grants: Vec<String> = identity.grants.iter().map(Grant::to_string).collect();
                println!("{}\t{}", identity.name, grants.join(","));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
