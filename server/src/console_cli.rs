//! `communesync admin create-operator`: a console account. The password is read from the first
//! line of standard input (never from the command line, which other users of the machine can
//! see), at least 12 characters.

use clap::Subcommand;
use communesync_server::storage::ServerStorage;

/// Console tasks.
#[derive(Subcommand)]
pub enum ConsoleTask {
    /// Create a console operator; the password is read from standard input.
    CreateOperator {
        /// Login name.
        username: String,
        /// viewer (reads), operator (also enrolls and revokes tablets) or admin (also wipes
        /// tablets and publishes catalogues).
        #[arg(long, default_value = "viewer")]
        role: String,
    },
}

/// Runs a console task.
pub async fn run(storage: &dyn ServerStorage, task: ConsoleTask, now: i64) -> anyhow::Result<()> {
    match task {
        ConsoleTask::CreateOperator { username, role } => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']);
            communesync_server::console::create_operator(storage, &username, password, &role, now)
                .await
                .map_err(anyhow::Error::msg)?;
            println!(
                "{}",
                serde_json::json!({ "operator": username.trim(), "role": role })
            );
        }
    }
    Ok(())
}
