//! `bdc-backupctl generate` (hidden, for packagers): man pages and shell completions rendered from the
//! clap definitions (`clap_mangen`, `clap_complete`), with the README's examples in the top pages.

use super::{CtlArgs, CtlError};
use clap::{CommandFactory, Subcommand, ValueEnum};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What `generate` writes.
#[derive(Debug, Clone, Subcommand)]
pub enum GenerateCommand {
    /// One man page per command and subcommand (bdc-backupctl.1, bdc-backupctl-restore-cluster.1, …)
    /// and bdc-backupd.8, into DIR (created if missing).
    Man { dir: PathBuf },
    /// The shell completion script for bdc-backupctl: to stdout, or into DIR under its usual name.
    Completions { shell: Shell, dir: Option<PathBuf> },
}

/// The shells we ship completions for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl Shell {
    fn clap(self) -> clap_complete::Shell {
        match self {
            Shell::Bash => clap_complete::Shell::Bash,
            Shell::Zsh => clap_complete::Shell::Zsh,
            Shell::Fish => clap_complete::Shell::Fish,
        }
    }
}

const CTL: &str = "bdc-backupctl";
const README: &str = include_str!("../../README.md");

/// Runs `generate …`; prints the files written.
pub fn run(what: GenerateCommand) -> Result<(), CtlError> {
    match what {
        GenerateCommand::Man { dir } => {
            for path in man_pages(&dir)? {
                println!("{}", path.display());
            }
            Ok(())
        }
        GenerateCommand::Completions { shell, dir } => {
            let mut cmd = CtlArgs::command();
            match dir {
                None => {
                    clap_complete::generate(shell.clap(), &mut cmd, CTL, &mut std::io::stdout());
                    Ok(())
                }
                Some(dir) => {
                    create_dir(&dir)?;
                    let path = clap_complete::generate_to(shell.clap(), &mut cmd, CTL, &dir)
                        .map_err(|e| io_error(&dir, e))?;
                    println!("{}", path.display());
                    Ok(())
                }
            }
        }
    }
}

fn io_error(path: &Path, err: std::io::Error) -> CtlError {
    CtlError::failed(format!("{}: {err}", path.display()))
}

fn create_dir(dir: &Path) -> Result<(), CtlError> {
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))
}

/// Writes every page into `dir`; returns their paths.
pub fn man_pages(dir: &Path) -> Result<Vec<PathBuf>, CtlError> {
    create_dir(dir)?;
    let (ctl_examples, daemon_examples) = readme_examples(README);
    let mut written = Vec::new();
    let mut ctl = CtlArgs::command().disable_help_subcommand(true);
    ctl.build();
    for sub in ctl.get_subcommands().filter(|s| !s.is_hide_set()) {
        sub_pages(sub.clone(), dir, &mut written)?;
    }
    written.push(top_page(ctl, "1", &ctl_examples, dir)?);
    let mut daemon = crate::daemon::args::command();
    daemon.build();
    written.push(top_page(daemon, "8", &daemon_examples, dir)?);
    Ok(written)
}

fn sub_pages(cmd: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> Result<(), CtlError> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        sub_pages(sub.clone(), dir, written)?;
    }
    let path = clap_mangen::Man::new(cmd)
        .manual("bdc-backup")
        .generate_to(dir)
        .map_err(|e| io_error(dir, e))?;
    written.push(path);
    Ok(())
}

/// A top page: clap_mangen's sections plus EXAMPLES (from the README) and SEE ALSO.
fn top_page(
    cmd: clap::Command,
    section: &str,
    examples: &[Example],
    dir: &Path,
) -> Result<PathBuf, CtlError> {
    let man = clap_mangen::Man::new(cmd.clone())
        .section(section)
        .manual("bdc-backup");
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    let render = |page: &mut Vec<u8>| -> std::io::Result<()> {
        man.render_title(page)?;
        man.render_name_section(page)?;
        man.render_synopsis_section(page)?;
        man.render_description_section(page)?;
        man.render_options_section(page)?;
        if cmd.has_subcommands() {
            man.render_subcommands_section(page)?;
        }
        let mut roff = roff::Roff::new();
        roff.control("SH", ["EXAMPLES"]);
        for example in examples {
            roff.control("TP", [] as [&str; 0]);
            roff.text([roff::bold(example.command.as_str())]);
            roff.text([roff::roman(example.what.as_str())]);
        }
        roff.control("SH", ["SEE ALSO"]);
        roff.text([roff::roman(see_also(cmd.get_name()))]);
        roff.to_writer(page)?;
        man.render_version_section(page)
    };
    render(&mut page).map_err(|e| io_error(&path, e))?;
    let mut file = std::fs::File::create(&path).map_err(|e| io_error(&path, e))?;
    file.write_all(&page).map_err(|e| io_error(&path, e))?;
    Ok(path)
}

fn see_also(name: &str) -> String {
    let other = if name == CTL {
        "bdc-backupd(8)"
    } else {
        "bdc-backupctl(1)"
    };
    format!(
        "{other}; the documentation in /usr/share/doc/bdc-backup/ (operator-guide.md, catalogue.md, design.md)."
    )
}

/// One README example: the command line and its comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub command: String,
    pub what: String,
}

/// The commands of the README's "Using it" block: (the ctl's, the daemon's and systemctl's).
pub fn readme_examples(readme: &str) -> (Vec<Example>, Vec<Example>) {
    let block = readme
        .split("## Using it")
        .nth(1)
        .and_then(|rest| rest.split("```sh\n").nth(1))
        .and_then(|rest| rest.split("```").next())
        .unwrap_or("");
    let mut examples: Vec<Example> = Vec::new();
    let mut continued = false;
    for line in block.lines() {
        let (code, comment) = match line.find("  # ") {
            Some(at) => (line[..at].trim(), line[at + 4..].trim()),
            None => (line.trim(), ""),
        };
        if continued {
            if let Some(last) = examples.last_mut() {
                last.command = format!("{} {}", last.command.trim_end_matches('\\').trim(), code);
                if !comment.is_empty() {
                    last.what = comment.to_string();
                }
            }
        } else if !code.is_empty() {
            examples.push(Example {
                command: code.to_string(),
                what: comment.to_string(),
            });
        }
        continued = code.ends_with('\\');
    }
    examples
        .into_iter()
        .partition(|e| e.command.starts_with(CTL))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_examples_are_split_by_program() {
        let (ctl, daemon) = readme_examples(README);
        assert!(ctl.len() >= 10, "{ctl:?}");
        assert!(ctl.iter().all(|e| e.command.starts_with("bdc-backupctl ")));
        let cluster = ctl
            .iter()
            .find(|e| e.command.contains("restore cluster"))
            .expect("the PITR example");
        assert!(cluster.command.contains("--start"), "{cluster:?}");
        assert!(!cluster.command.contains('\\'), "{cluster:?}");
        assert!(
            daemon
                .iter()
                .any(|e| e.command.starts_with("bdc-backupd ") && e.command.contains("--check"))
        );
    }

    #[test]
    fn a_readme_without_the_block_gives_no_examples() {
        let (ctl, daemon) = readme_examples("# nothing\n");
        assert!(ctl.is_empty() && daemon.is_empty());
    }
}
