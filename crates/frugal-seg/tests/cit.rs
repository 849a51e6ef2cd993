//! Tiny, fast checks of the CIT stack: the head's formula on hand-set weights, class
//! independence when the query table grows, the losses falling on a tiny set, a whole
//! (miniature) incremental run that checkpoints, resumes and reloads, and the scene generator's
//! determinism. Procedural pictures stand in for the photographs so the tests need no download.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use frugal_nn::init::SeededVarMap;
use frugal_nn::segmentation::upsample_bilinear;
use frugal_nn::train::{self, LrSchedule, TrainConfig, TrainModel};
use frugal_seg::cit_head::{CitHead, CitHeadConfig};
use frugal_seg::encoder::{Encoder, EncoderConfig};
use frugal_seg::incremental::{self, grow_from, load_stage, stage_file, Method, RunConfig};
use frugal_seg::losses::{cit_supervised, LossConfig};
use frugal_seg::protocol::Protocol;
use frugal_seg::scenes::{self, Photos, Picture, SceneConfig, IGNORE};
use std::collections::HashMap;

fn dev() -> Device {
    Device::Cpu
}

/// Stripes and checks in distinct colours: enough texture to tell materials apart.
fn fake_photos() -> Photos {
    let pic = |k: usize| Picture {
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
    };
    Photos {
        materials: (0..4).map(pic).collect(),
        backgrounds: (4..6).map(pic).collect(),
    }
}

#[test]
fn scene_generator_is_deterministic_and_labels_are_ade_style() {
    let p = fake_photos();
    let cfg = SceneConfig::default();
    let a = scenes::generate(&p, &cfg, 3, 6);
    let b = scenes::generate(&p, &cfg, 3, 6);
    let c = scenes::generate(&p, &cfg, 4, 6);
    assert_eq!(a.images, b.images);
    assert_eq!(a.labels, b.labels);
    assert_ne!(a.labels, c.labels);
    // Scene i depends only on (seed, i): a longer set starts with the same scenes.
    let longer = scenes::generate(&p, &cfg, 3, 8);
    assert_eq!(&longer.labels[..a.labels.len()], &a.labels[..]);
    // Every label is a class or ignore, and every scene has an object and a background.
    for i in 0..a.len() {
        let l = a.label(i);
        assert!(l
            .iter()
            .all(|&v| v == IGNORE || (v as usize) < scenes::NUM_CLASSES));
        assert!(l.contains(&IGNORE));
        assert!(l.iter().any(|&v| v != IGNORE));
    }
    assert!(a.images.iter().all(|v| (0.0..=1.0).contains(v)));
}

/// A CIT head with every weight set by hand, against the formula computed in plain f64.
#[test]
fn cit_head_matches_the_formula_on_hand_weights() -> anyhow::Result<()> {
    let (c, k, nh) = (8usize, 2usize, 8usize); // head dim 1
    let mut w: HashMap<String, Tensor> = HashMap::new();
    let q: Vec<f32> = (0..k * c).map(|i| ((i as f32) * 0.37).sin()).collect();
    let key_w: Vec<f32> = (0..c * c)
        .map(|i| ((i as f32) * 0.11).cos() * 0.5)
        .collect();
    let key_b: Vec<f32> = (0..c).map(|i| i as f32 * 0.01).collect();
    let cls_w: Vec<f32> = (0..2 * c).map(|i| ((i as f32) * 0.23).sin()).collect();
    let cls_b = vec![0.1f32, -0.2];
    w.insert(
        "queries.weight".into(),
        Tensor::from_vec(q.clone(), (k, c), &dev())?,
    );
    w.insert(
        "key.weight".into(),
        Tensor::from_vec(key_w.clone(), (c, c), &dev())?,
    );
    w.insert(
        "key.bias".into(),
        Tensor::from_vec(key_b.clone(), c, &dev())?,
    );
    w.insert("norm.weight".into(), Tensor::ones(c, DType::F32, &dev())?);
    w.insert("norm.bias".into(), Tensor::zeros(c, DType::F32, &dev())?);
    w.insert(
        "cls.weight".into(),
        Tensor::from_vec(cls_w.clone(), (2, c), &dev())?,
    );
    w.insert(
        "cls.bias".into(),
        Tensor::from_vec(cls_b.clone(), 2, &dev())?,
    );
    for n in ["neck1", "neck2"] {
        w.insert(
            format!("{n}.weight"),
            Tensor::zeros((c, c, 1, 1), DType::F32, &dev())?,
        );
        w.insert(format!("{n}.bias"), Tensor::zeros(c, DType::F32, &dev())?);
    }
    let cfg = CitHeadConfig {
        dim: c,
        heads: nh,
        dropout: 0.0,
    };
    let head = CitHead::new(&cfg, c, k, VarBuilder::from_tensors(w, DType::F32, &dev()))?;
    let (h, wd) = (2usize, 2usize);
    let hw = h * wd;
    let tok: Vec<f32> = (0..hw * c).map(|i| ((i as f32) * 0.29).cos()).collect();
    let out = head.attend(
        &Tensor::from_vec(tok.clone(), (1, hw, c), &dev())?,
        1,
        h,
        wd,
    )?;
    assert_eq!(out.masks.dims(), &[1, k, h, wd]);
    assert_eq!(out.classes.dims(), &[1, k, 2]);
    let masks = out.masks.flatten_all()?.to_vec1::<f32>()?;
    let classes = out.classes.flatten_all()?.to_vec1::<f32>()?;
    let scores = out.scores()?.flatten_all()?.to_vec1::<f32>()?;
    // Reference in f64.
    let f = |v: &[f32], i: usize| v[i] as f64;
    let keys: Vec<f64> = (0..hw * c)
        .map(|i| {
            let (p, o) = (i / c, i % c);
            (0..c)
                .map(|j| f(&tok, p * c + j) * f(&key_w, o * c + j))
                .sum::<f64>()
                + f(&key_b, o)
        })
        .collect();
    for kk in 0..k {
        // head dim 1: A_h(p) = q_h · k_h(p) / 1; mask = mean over heads.
        let att: Vec<Vec<f64>> = (0..nh)
            .map(|hh| {
                (0..hw)
                    .map(|p| f(&q, kk * c + hh) * keys[p * c + hh])
                    .collect()
            })
            .collect();
        let mut upd = vec![0f64; c];
        for hh in 0..nh {
            let mx = att[hh].iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = att[hh].iter().map(|a| (a - mx).exp()).collect();
            let z: f64 = e.iter().sum();
            upd[hh] =
                f(&q, kk * c + hh) + (0..hw).map(|p| e[p] / z * f(&tok, p * c + hh)).sum::<f64>();
        }
        let mean = upd.iter().sum::<f64>() / c as f64;
        let var = upd.iter().map(|u| (u - mean).powi(2)).sum::<f64>() / c as f64;
        let ln: Vec<f64> = upd
            .iter()
            .map(|u| (u - mean) / (var + 1e-5).sqrt())
            .collect();
        let logit =
            |o: usize| (0..c).map(|j| ln[j] * f(&cls_w, o * c + j)).sum::<f64>() + f(&cls_b, o);
        let (l0, l1) = (logit(0), logit(1));
        assert!((classes[kk * 2] as f64 - l0).abs() < 1e-4);
        assert!((classes[kk * 2 + 1] as f64 - l1).abs() < 1e-4);
        let present = 1.0 / (1.0 + (l1 - l0).exp());
        for p in 0..hw {
            let m = (0..nh).map(|hh| att[hh][p]).sum::<f64>() / nh as f64;
            assert!(
                (masks[kk * hw + p] as f64 - m).abs() < 1e-4,
                "mask {kk} {p}"
            );
            let want = present / (1.0 + (-m).exp());
            assert!(
                (scores[kk * hw + p] as f64 - want).abs() < 1e-5,
                "score {kk} {p}"
            );
        }
    }
    Ok(())
}

/// Growing the query table by a class leaves every old class's outputs exactly as they were:
/// the outputs are class-independent (a softmax head could not pass this).
#[test]
fn growing_the_query_table_keeps_old_outputs() -> anyhow::Result<()> {
    let cfg = CitHeadConfig::default();
    let small = SeededVarMap::new(1);
    let h3 = CitHead::new(
        &cfg,
        16,
        3,
        small.var_builder(DType::F32, &dev()).pp("head"),
    )?;
    let big = SeededVarMap::new(2);
    let h4 = CitHead::new(&cfg, 16, 4, big.var_builder(DType::F32, &dev()).pp("head"))?;
    let before_new_row = h4
        .queries()
        .narrow(0, 3, 1)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let prev: HashMap<String, Tensor> = small
        .varmap()
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().copy().unwrap()))
        .collect();
    grow_from(big.varmap(), &prev)?;
    let x = Tensor::randn(0f32, 1.0, (2, 16, 4, 4), &dev())?;
    let (a, b) = (h3.forward(&x)?, h4.forward(&x)?.narrow(0, 3)?);
    let d = (a.scores()? - b.scores()?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert!(d < 1e-6, "old scores changed by {d}");
    // The new row kept its fresh values.
    assert_eq!(
        h4.queries()
            .narrow(0, 3, 1)?
            .flatten_all()?
            .to_vec1::<f32>()?,
        before_new_row
    );
    // A shape that cannot grow is refused.
    let other = SeededVarMap::new(3);
    CitHead::new(
        &CitHeadConfig { dim: 32, ..cfg },
        16,
        4,
        other.var_builder(DType::F32, &dev()).pp("head"),
    )?;
    assert!(grow_from(other.varmap(), &prev).is_err());
    Ok(())
}

struct Tiny {
    enc: Encoder,
    head: CitHead,
}

impl TrainModel for Tiny {
    type Batch = (Tensor, Vec<u8>);
    fn loss(&self, (x, y): &Self::Batch) -> candle_core::Result<Tensor> {
        let o = self.head.forward(&self.enc.forward_t(x, true)?)?;
        let up = upsample_bilinear(&o.masks, 64, 64)?;
        Ok(cit_supervised(&up, &o.classes, y, 0, &LossConfig::default())?.total)
    }
}

#[test]
fn cit_loss_falls_on_a_tiny_set() -> anyhow::Result<()> {
    let p = fake_photos();
    let set = scenes::generate(&p, &SceneConfig::default(), 0, 8);
    let x = Tensor::from_vec(set.images.clone(), (8, 3, 64, 64), &dev())?;
    let vm = SeededVarMap::new(0);
    let vb = vm.var_builder(DType::F32, &dev());
    let ecfg = EncoderConfig {
        widths: [8, 16, 16],
    };
    let model = Tiny {
        enc: Encoder::new(&ecfg, vb.pp("enc"))?,
        head: CitHead::new(
            &CitHeadConfig {
                dim: 16,
                heads: 8,
                dropout: 0.0,
            },
            16,
            20,
            vb.pp("head"),
        )?,
    };
    let cfg = TrainConfig {
        steps: 40,
        lr: 5e-3,
        schedule: LrSchedule::Constant,
        progress: false,
        ..Default::default()
    };
    let r = train::train(
        &model,
        &mut vm.varmap().clone(),
        |_| Ok((x.clone(), set.labels.clone())),
        &cfg,
    )?;
    let first = r.losses[..5].iter().sum::<f32>() / 5.0;
    let last = r.losses[35..].iter().sum::<f32>() / 5.0;
    assert!(last < 0.7 * first, "loss {first} -> {last}");
    Ok(())
}

fn tiny_run(method: Method) -> RunConfig {
    RunConfig {
        protocol: Protocol::parse("10-5", 20).unwrap(),
        method,
        seed: 0,
        train_scenes: 64,
        test_scenes: 6,
        batch: 4,
        base_steps: 3,
        inc_steps: 2,
        oracle_steps: 2,
        encoder: EncoderConfig {
            widths: [8, 16, 16],
        },
        head: CitHeadConfig {
            dim: 16,
            heads: 8,
            dropout: 0.0,
        },
        checkpoint_every: 1,
        progress: false,
        ..Default::default()
    }
}

/// A miniature CIT run (10-5: base + 2 tasks) writes its stages, a second call resumes (returns
/// the stored results without training), and the last stage reloads into the same predictions.
#[test]
fn incremental_run_checkpoints_resumes_and_reloads() -> anyhow::Result<()> {
    let root = std::env::temp_dir().join(format!("frugal-seg-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let p = fake_photos();
    let cfg = tiny_run(Method::Cit);
    let res = incremental::run(&cfg, &root, &p)?;
    assert_eq!(res.len(), 3);
    assert_eq!(res[2].classes_seen, 20);
    assert_eq!(res[2].teacher_heads, 2); // one frozen head per earlier task
    assert_eq!(res[1].teacher_heads, 1);
    for t in 0..3 {
        assert!(stage_file(&cfg, &root, t).is_file());
    }
    // Resume: nothing is retrained, the same results come back.
    let again = incremental::run(&cfg, &root, &p)?;
    assert_eq!(
        serde_json::to_string(&again[2].iou)?,
        serde_json::to_string(&res[2].iou)?
    );
    // The stage file reloads into a model whose test mIoU is the stored one.
    let stage = load_stage(&cfg, &stage_file(&cfg, &root, 2), false, 20)?;
    let data = incremental::Data::generate(&cfg, &p);
    let x = Tensor::from_vec(data.test.images.clone(), (6, 3, 64, 64), &dev())?;
    let pred = stage
        .head
        .predict(&stage.encoder.forward_t(&x, false)?, 64)?;
    let mut cm = frugal_nn::segmentation::ConfusionMatrix::new(20);
    cm.add(&pred, &data.test.labels, IGNORE)?;
    assert_eq!(cm.miou(0..20), res[2].miou_all);
    // The softmax baseline runs through the same machinery from its own base.
    let s = incremental::run(&tiny_run(Method::SoftmaxKd), &root, &p)?;
    assert_eq!(s.len(), 3);
    assert_eq!(s[1].teacher_heads, 1);
    std::fs::remove_dir_all(&root)?;
    Ok(())
}
