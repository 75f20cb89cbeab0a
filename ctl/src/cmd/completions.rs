//! `p2pctl completions SHELL` and `p2pctl man`: shell completion scripts
//! and the man page, generated from the same clap definition the parser
//! uses, so they never drift. Neither needs the daemon.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;

use crate::Cli;
use crate::client::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The shell to write a completion script for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Writes the completion script on stdout.
pub fn run(args: Args) -> Result<ExitCode> {
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "p2pctl", &mut out);
    write_stdout(&out)
}

#[derive(clap::Args, Debug)]
pub struct ManArgs {}

/// Writes p2pctl(1) in roff on stdout.
pub fn man(_: ManArgs) -> Result<ExitCode> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut out)
        .context("rendering the man page")?;
    write_stdout(&out)
}

fn write_stdout(bytes: &[u8]) -> Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_script_naming_every_command() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "p2pctl", &mut out);
            let text = String::from_utf8(out).unwrap();
            for cmd in ["status", "pair", "send", "tail", "unpair", "completions"] {
                assert!(text.contains(cmd), "{shell}: no {cmd}");
            }
        }
    }

    #[test]
    fn man_page_is_roff_for_p2pctl() {
        let mut out = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(".ie") || text.contains(".TH p2pctl"),
            "{text}"
        );
    }
}
