//! The kernel-consistency harness over every numerics-level attention path: the CI grid of
//! shapes × GQA ratios × hole patterns × phases, each path against the one naive f64 reference
//! within its stated tolerance (see `frugal_numerics::consistency`).

use frugal_numerics::consistency::{self, check_all, format_report, paths, Case, KernelPath};

#[test]
fn every_path_matches_the_naive_reference_on_the_grid() {
    let paths = paths::all();
    let grid = consistency::ci_grid();
    let rows = check_all(&paths, &grid);
    let report = format_report(&rows);
    println!("{report}");
    let failed: Vec<_> = rows.iter().filter(|r| !r.pass).collect();
    assert!(failed.is_empty(), "{} failures:\n{report}", failed.len());
    // Every path ran on some case, and every path that is not prefill-only ran on every hole
    // pattern and phase.
    for p in &paths {
        let n = rows.iter().filter(|r| r.path == p.name()).count();
        assert!(n > 0, "{} ran on no case", p.name());
    }
    assert!(rows.len() > 500, "{} comparisons", rows.len());
}

/// The comparison can fail: a path whose kernel drops one visible key (or reads one wrong
/// value) is caught on every case, so the tolerances are not so loose that they accept a
/// masking or indexing bug.
#[test]
fn a_kernel_that_drops_one_key_fails() {
    use frugal_numerics::attention::{causal_attention, KeyMask};
    use frugal_numerics::consistency::Reference;
    struct DropsOne;
    impl KeyMask for DropsOne {
        fn allows(&self, _h: usize, q_pos: u32, k_pos: u32) -> bool {
            // Drops the query's own key (no hole pattern drops it): an off-by-one in causality.
            k_pos != q_pos
        }
    }
    struct Buggy;
    impl KernelPath for Buggy {
        fn name(&self) -> String {
            "buggy".into()
        }
        fn kernel<'c>(&'c self, c: &'c Case) -> Box<dyn Fn() -> Vec<f32> + 'c> {
            let s = c.slices();
            Box::new(move || causal_attention(&c.q, &c.q_positions, &s, c.shape, Some(&DropsOne)))
        }
        fn reference<'c>(&'c self, c: &'c Case) -> Reference<'c> {
            Reference::of_case(c)
        }
    }
    let paths: Vec<Box<dyn KernelPath>> = vec![Box::new(Buggy)];
    let rows = check_all(&paths, &consistency::ci_grid());
    for r in &rows {
        assert!(
            !r.pass,
            "an off-by-one mask passed on {}: {:e}",
            r.case, r.max_abs
        );
    }
}
