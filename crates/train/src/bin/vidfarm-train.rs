//! `vidfarm-train vae|dit ...`: the same command as `vidfarm model train`, in a binary that links
//! no FFmpeg and no farm, so a CUDA build (`--features cuda`) can be carried to a GPU machine.

use clap::Parser;

#[derive(Parser)]
#[command(version, about = "Train vidfarm's model on synthetic clips (crates/synth/TRAINING.md)")]
struct Command {
    #[command(flatten)]
    train: vidfarm_train::cli::TrainArgs,
}

fn main() -> anyhow::Result<()> {
    vidfarm_train::cli::run(Command::parse().train)
}
