//! Tiny end-to-end checks of the ESA stack: the two domains share layouts and differ in look, a
//! miniature adaptation run spends exactly its clicks, keeps PA's labels exact, resumes without
//! retraining, and the preview draws a picture. Procedural pictures stand in for the
//! photographs so the tests need no download.

use frugal_seg::acquisition::Acquire;
use frugal_seg::adapt::{self, AdaptConfig, EntitySource};
use frugal_seg::domains::{self, Domain, DomainConfig, DomainPhotos, NUM_CLASSES};
use frugal_seg::scenes::Picture;

fn pic(k: usize) -> Picture {
    Picture {
        width: 80,
        height: 80,
        rgb: (0..80 * 80)
            .map(|i| {
                let (x, y) = (i % 80, i / 80);
                let on = match k % 3 {
                    0 => (x / 3) % 2 == 0,
                    1 => (y / 4) % 2 == 0,
                    _ => ((x / 2) + (y / 2)) % 2 == 0,
                } as u8 as f32;
                let base = [
                    (k * 37 % 10) as f32 / 10.0,
                    (k * 53 % 10) as f32 / 10.0,
                    (k % 4) as f32 / 4.0,
                ];
                [
                    0.5 * base[0] + 0.5 * on,
                    0.5 * base[1] + 0.3 * on,
                    0.5 * base[2] + 0.2 * on,
                ]
            })
            .collect(),
    }
}

fn fake_photos() -> DomainPhotos {
    DomainPhotos {
        source_stuff: (0..3).map(pic).collect(),
        source_objects: (3..5).map(pic).collect(),
        target_stuff: (5..8).map(pic).collect(),
        target_objects: (8..10).map(pic).collect(),
    }
}

fn tiny(acquire: Acquire, clicks: usize) -> AdaptConfig {
    AdaptConfig {
        acquire,
        clicks,
        domain: DomainConfig {
            size: 32,
            min_radius: 4.0,
            max_radius: 7.0,
            ..Default::default()
        },
        source_scenes: 16,
        target_scenes: 12,
        val_scenes: 4,
        batch: 4,
        rounds: 2,
        source_steps: 12,
        round_steps: 3,
        final_steps: 2,
        slic: frugal_seg::superpixels::SlicConfig {
            segments: 40,
            ..Default::default()
        },
        progress: false,
        checkpoint_every: 2,
        ..Default::default()
    }
}

#[test]
fn domains_share_layouts_and_differ_in_appearance() {
    let p = fake_photos();
    let cfg = DomainConfig {
        size: 32,
        ..Default::default()
    };
    let s = domains::generate(&p, &cfg, Domain::Source, 5, 0, 4);
    let t = domains::generate(&p, &cfg, Domain::Target, 5, 0, 4);
    assert_eq!(s.labels, t.labels, "same seed and index: same layout");
    assert_eq!(s.instances, t.instances);
    assert_ne!(s.images, t.images);
    assert!(s.labels.iter().all(|&l| (l as usize) < NUM_CLASSES));
    assert!(t.images.iter().all(|v| (0.0..=1.0).contains(v)));
    // Deterministic.
    let t2 = domains::generate(&p, &cfg, Domain::Target, 5, 0, 4);
    assert_eq!(t.images, t2.images);
    // Every scene has band pixels and object pixels.
    for i in 0..4 {
        let l = s.label(i);
        assert!(
            l.iter().any(|&v| v < 3) && l.iter().any(|&v| v >= 3),
            "scene {i}"
        );
    }
}

#[test]
fn miniature_runs_spend_their_clicks_and_resume() -> anyhow::Result<()> {
    let root = std::env::temp_dir().join(format!("frugal-esa-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let photos = fake_photos();
    let esa = tiny(Acquire::Esa, 6);
    let r = adapt::run(&esa, &root, &photos)?;
    assert_eq!(r.len(), 3); // source + 2 rounds
    assert_eq!(r[0].acquire, "source-only");
    assert!(
        (r[2].clicks_per_image - 6.0).abs() < 1e-9,
        "{}",
        r[2].clicks_per_image
    );
    assert!(r[2].labelled_share > r[1].labelled_share && r[1].labelled_share > 0.0);
    assert!((0.0..1.0).contains(&r[2].label_noise));
    assert!(r.iter().all(|x| x.eval.miou.is_finite()));
    // A rerun loads every round instead of training again: the same results and timings.
    let again = adapt::run(&esa, &root, &photos)?;
    assert_eq!(r.len(), again.len());
    for (a, b) in r.iter().zip(&again) {
        assert!((a.eval.miou - b.eval.miou).abs() < 1e-12);
        assert_eq!(a.train_seconds, b.train_seconds);
        assert_eq!(a.clicks_per_image, b.clicks_per_image);
    }
    // RIPU-PA: exact labels, one pixel per click.
    let pa = adapt::run(&tiny(Acquire::RipuPa, 4), &root, &photos)?;
    assert_eq!(pa[2].label_noise, 0.0);
    assert!((pa[2].labelled_share - 4.0 / (32.0 * 32.0)).abs() < 1e-9);
    // The source model is shared: same round-0 result.
    assert_eq!(pa[0].eval.miou, r[0].eval.miou);
    // ESA with oracle entities runs too; full supervision labels everything.
    let oracle = AdaptConfig {
        entities: EntitySource::Oracle,
        ..tiny(Acquire::Esa, 4)
    };
    assert_eq!(oracle.run_name(), "esa-oracle-c4-s0");
    let full = adapt::run(&tiny(Acquire::Full, 0), &root, &photos)?;
    assert_eq!(full[2].labelled_share, 1.0);
    // Preview: a PNG with one row per scene.
    let png = root.join("preview.png");
    frugal_seg::adapt_report::preview(&esa, &root, &photos, &png, 2)?;
    let img = image::open(&png)?;
    assert!(img.width() > img.height());
    // Report over the runs.
    let out = root.join("report");
    frugal_seg::adapt_report::write(&root, &out, 2)?;
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("esa.json"))?)?;
    assert!(doc["clicks_40"]["source_only"]["miou"].is_number());
    assert!(doc["clicks_40"]["full"]["miou"].is_number());
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
