//! `kernel-check`: the kernel-consistency harness from the command line.
//!
//! Usage: `kernel-check [--perf] [--reps N] [--json FILE]`
//! - without `--perf`: every numerics-level path on the CI grid against the naive reference;
//!   prints the table and exits 1 when a comparison fails;
//! - `--perf`: every path on the perf grid (longer inputs), median kernel time over `--reps`
//!   calls (default 5) relative to the dense kernel on the same inputs. Numbers depend on the
//!   machine's load; the output says so.
//!
//! `--json FILE` also writes the rows (comparisons or timings) as JSON.

use frugal_numerics::consistency::{self, check_all, format_report, paths, time_case, Case};
use std::process::ExitCode;

struct Args {
    perf: bool,
    reps: usize,
    json: Option<String>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        perf: false,
        reps: 5,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--perf" => a.perf = true,
            "--reps" => {
                let v = it.next().ok_or("--reps needs a number")?;
                a.reps = v
                    .parse()
                    .ok()
                    .filter(|&n: &usize| n > 0)
                    .ok_or(format!("--reps: '{v}' is not a positive integer"))?;
            }
            "--json" => a.json = Some(it.next().ok_or("--json needs a file name")?),
            "-h" | "--help" => {
                return Err("usage: kernel-check [--perf] [--reps N] [--json FILE]".into())
            }
            other => return Err(format!("unknown argument '{other}' (try --help)")),
        }
    }
    Ok(a)
}

fn write_json<T: serde::Serialize>(path: &str, rows: &T) -> Result<(), String> {
    let text = serde_json::to_string_pretty(rows).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("writing {path}: {e}"))
}

fn run(a: &Args) -> Result<bool, String> {
    let paths = paths::all();
    if !a.perf {
        let rows = check_all(&paths, &consistency::ci_grid());
        print!("{}", format_report(&rows));
        if let Some(p) = &a.json {
            write_json(p, &rows)?;
        }
        let failed = rows.iter().filter(|r| !r.pass).count();
        println!("{} comparisons, {failed} failed", rows.len());
        return Ok(failed == 0);
    }
    println!(
        "perf mode: median of {} calls; measured on this machine under its current load",
        a.reps
    );
    println!(
        "{:<28} {:<48} {:>10} {:>10} {:>8}",
        "path", "case", "ms", "dense ms", "x dense"
    );
    let mut rows = Vec::new();
    for spec in consistency::perf_grid() {
        let case = Case::new(spec);
        for p in &paths {
            if !p.applies(&case) {
                continue;
            }
            let t = time_case(p.as_ref(), &case, a.reps);
            println!(
                "{:<28} {:<48} {:>10.3} {:>10.3} {:>8.2}",
                t.path,
                t.case,
                t.seconds * 1e3,
                t.dense_seconds * 1e3,
                t.relative
            );
            rows.push(t);
        }
    }
    if let Some(p) = &a.json {
        write_json(p, &rows)?;
    }
    Ok(true)
}

fn main() -> ExitCode {
    match parse().and_then(|a| run(&a)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("kernel-check: {e}");
            ExitCode::from(2)
        }
    }
}
