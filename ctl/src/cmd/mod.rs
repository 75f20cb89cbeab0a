//! One module per command: an `Args` struct and `run`.

pub mod pair;
pub mod send;
pub mod status;
pub mod tail;
pub mod unpair;

use std::path::Path;
use std::process::ExitCode;

use crate::Command;
use crate::client::{Client, Result};

pub async fn run(command: Command, socket: &Path) -> Result<ExitCode> {
    let client = Client::connect(socket).await?;
    match command {
        Command::Status(args) => status::run(client, args).await,
        Command::Pair(args) => pair::run(client, args).await,
        Command::Send(args) => send::run(client, args).await,
        Command::Tail(args) => tail::run(client, args).await,
        Command::Unpair(args) => unpair::run(client, args).await,
    }
}
