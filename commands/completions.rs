//! `convagent completions`: shell completion scripts and the man page,
//! generated from the command definition. The committed copies in
//! `completions/` are kept current by a test.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::CommandFactory;
use clap_complete::Shell;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell to print a script for
    #[arg(required_unless_present = "dir")]
    shell: Option<Shell>,

    /// Write the bash, zsh and fish scripts and the man page (convagent.1)
    /// into this directory instead
    #[arg(long, value_name = "DIR", conflicts_with = "shell")]
    dir: Option<PathBuf>,
}

/// The shells we ship scripts for, with their file names.
const SHELLS: [(Shell, &str); 3] = [
    (Shell::Bash, "convagent.bash"),
    (Shell::Zsh, "_convagent"),
    (Shell::Fish, "convagent.fish"),
];

pub fn run(args: Args) -> Result<ExitCode> {
    if let Some(shell) = args.shell {
        out!("{}", script(shell));
    }
    if let Some(dir) = args.dir {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (shell, file) in SHELLS {
            let path = dir.join(file);
            std::fs::write(&path, script(shell))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        let path = dir.join("convagent.1");
        std::fs::write(&path, man_page()?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn script(shell: Shell) -> String {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut crate::Cli::command(), "convagent", &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The man page, in roff.
pub fn man_page() -> Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(crate::Cli::command()).render(&mut out)?;
    Ok(out)
}
