//! `frugal policies`: every registered policy with its knobs, defaults, ranges and the spec that
//! keeps everything, read from the registry (nothing here names a method).

use anyhow::Result;
use clap::Args;
use frugal_methods::policy::KnobKind;
use frugal_methods::POLICIES;

#[derive(Args)]
pub struct PoliciesArgs {
    /// Only this policy.
    name: Option<String>,
}

pub fn run(args: &PoliciesArgs) -> Result<()> {
    let chosen: Vec<_> = match &args.name {
        Some(n) => vec![frugal_methods::entry(n)?],
        None => POLICIES.iter().collect(),
    };
    for p in chosen {
        println!("{}  {}", p.name, p.doc);
        for k in (p.knobs)() {
            let range = match k.kind {
                KnobKind::Int { min, max } => format!("{min}..={max}"),
                KnobKind::Float { min, max } => format!("[{min}, {max}]"),
                KnobKind::Choice { options } => options.join("|"),
                KnobKind::Range { min, max } => format!("a-b in {min}..={max}"),
                KnobKind::Switch => "0|1".into(),
            };
            println!(
                "    {:<12} = {:<8} {:<18} {}",
                k.name, k.default, range, k.doc
            );
        }
        println!("    keeps everything: {}", p.keep_everything);
    }
    Ok(())
}
