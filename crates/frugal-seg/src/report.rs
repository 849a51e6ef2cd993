//! Results: table, JSON, plots and strips from the stage files of finished runs.

use crate::cli::EvalArgs;

pub fn write(_args: &EvalArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
