//! A tiny llama with random weights, built in code, so unit tests of the engine and of every
//! method run without downloading anything. Not part of the public API.

use crate::error::Result;
use crate::model::chat_template::ChatTemplate;
use crate::model::llama::{Llama, LlamaConfig, TensorSource, WeightFormat};
use crate::model::tokenizer::{testing::tiny_test_metadata, TextTokenizer};
use crate::model::LoadedModel;
use candle_core::quantized::gguf_file::{self, Content, Value, VersionedMagic};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use frugal_numerics::rope::RopePairing;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The tiny model's shape: 3 layers, 4 query heads sharing 2 KV heads (GQA), head_dim 16.
pub fn tiny_config(vocab_size: usize) -> LlamaConfig {
    LlamaConfig {
        n_layers: 3,
        d_model: 64,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
        ffn_dim: 128,
        vocab_size,
        rope_theta: 10_000.0,
        rms_eps: 1e-5f32 as f64, // as stored in GGUF (f32)
        context_length: 512,
        rope_pairing: RopePairing::Interleaved,
        // Exact rows: the tests built on these models compare policies with the full store
        // and paths with each other bit for bit; the f16 store is tested where a test names
        // it.
        kv_dtype: crate::cache::KvDtype::F32,
    }
}

struct RandomWeights {
    tensors: HashMap<String, QTensor>,
    origin: PathBuf,
}

impl TensorSource for RandomWeights {
    fn tensor(&mut self, name: &str) -> Result<Option<QTensor>> {
        Ok(self.tensors.remove(name))
    }
    fn origin(&self) -> &Path {
        &self.origin
    }
}

/// Weights drawn uniformly from a seeded generator and stored as `dtype` (F32, Q8_0, Q4_0, …;
/// the row length 64 fits every block size). Norm weights stay F32 around 1.
fn random_weights(cfg: &LlamaConfig, dtype: GgmlDType, seed: u64) -> Result<RandomWeights> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tensors = HashMap::new();
    let mut add =
        |name: String, shape: &[usize], scale: f32, offset: f32, dtype: GgmlDType| -> Result<()> {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n)
                .map(|_| offset + scale * (rng.gen::<f32>() * 2.0 - 1.0))
                .collect();
            let t = Tensor::from_vec(data, shape, &Device::Cpu)?;
            tensors.insert(name, QTensor::quantize(&t, dtype)?);
            Ok(())
        };
    let (d, q, kv, f) = (
        cfg.d_model,
        cfg.n_heads * cfg.head_dim,
        cfg.n_kv_heads * cfg.head_dim,
        cfg.ffn_dim,
    );
    add(
        "token_embd.weight".into(),
        &[cfg.vocab_size, d],
        1.0,
        0.0,
        dtype,
    )?;
    add("output_norm.weight".into(), &[d], 0.1, 1.0, GgmlDType::F32)?;
    for i in 0..cfg.n_layers {
        let p = |s: &str| format!("blk.{i}.{s}.weight");
        add(p("attn_norm"), &[d], 0.1, 1.0, GgmlDType::F32)?;
        add(p("ffn_norm"), &[d], 0.1, 1.0, GgmlDType::F32)?;
        // Scales ~ 1/sqrt(fan_in) · 2 give attention scores of order 1 (non-trivial softmax).
        add(p("attn_q"), &[q, d], 0.4, 0.0, dtype)?;
        add(p("attn_k"), &[kv, d], 0.4, 0.0, dtype)?;
        add(p("attn_v"), &[kv, d], 0.2, 0.0, dtype)?;
        add(p("attn_output"), &[d, q], 0.2, 0.0, dtype)?;
        add(p("ffn_gate"), &[f, d], 0.2, 0.0, dtype)?;
        add(p("ffn_up"), &[f, d], 0.2, 0.0, dtype)?;
        add(p("ffn_down"), &[d, f], 0.15, 0.0, dtype)?;
    }
    Ok(RandomWeights {
        tensors,
        origin: PathBuf::from("<tiny random llama>"),
    })
}

/// The tiny model with weights stored as `dtype`, its byte-level tokenizer and a ChatML
/// template. Same seed, same weights.
pub fn tiny_model(dtype: GgmlDType, seed: u64) -> Result<LoadedModel> {
    let content = Content {
        magic: VersionedMagic::GgufV3,
        metadata: tiny_test_metadata(),
        tensor_infos: HashMap::new(),
        tensor_data_offset: 0,
    };
    let origin = Path::new("<tiny random llama>");
    let tokenizer = TextTokenizer::from_gguf(&content, origin)?;
    let vocab = tokenizer.vocab_size().div_ceil(32) * 32;
    let cfg = tiny_config(vocab);
    let mut weights = random_weights(&cfg, dtype, seed)?;
    let model = Llama::load(cfg, &mut weights, WeightFormat::Native)?.into();
    Ok(LoadedModel {
        model,
        tokenizer,
        chat_template: ChatTemplate::chatml_fallback(),
        path: origin.to_path_buf(),
        description: format!("tiny random llama ({dtype:?})"),
    })
}

/// What to leave out of or change in a GGUF written by [`write_tiny_gguf`], to produce the
/// broken files the bad-input tests need.
#[derive(Clone, Copy, Debug, Default)]
pub struct TinyGgufOptions {
    /// Value of `general.architecture` (default `llama`).
    pub architecture: Option<&'static str>,
    /// Leave out every `tokenizer.*` key.
    pub without_tokenizer: bool,
}

/// Writes the tiny model (weights as `dtype`, same seed → same weights as [`tiny_model`]) as a
/// GGUF file, so the real loading path can be tested without a download.
pub fn write_tiny_gguf(
    path: &Path,
    dtype: GgmlDType,
    seed: u64,
    opts: TinyGgufOptions,
) -> Result<()> {
    let mut metadata = if opts.without_tokenizer {
        HashMap::new()
    } else {
        tiny_test_metadata()
    };
    let vocab = crate::model::tokenizer::testing::TINY_VOCAB_SIZE.div_ceil(32) * 32;
    let cfg = tiny_config(vocab);
    let arch = opts.architecture.unwrap_or("llama");
    let u = |x: usize| Value::U32(x as u32);
    metadata.insert("general.architecture".into(), Value::String(arch.into()));
    for (k, v) in [
        ("block_count", u(cfg.n_layers)),
        ("embedding_length", u(cfg.d_model)),
        ("feed_forward_length", u(cfg.ffn_dim)),
        ("attention.head_count", u(cfg.n_heads)),
        ("attention.head_count_kv", u(cfg.n_kv_heads)),
        ("rope.dimension_count", u(cfg.head_dim)),
        ("context_length", u(cfg.context_length)),
        ("rope.freq_base", Value::F32(cfg.rope_theta as f32)),
        (
            "attention.layer_norm_rms_epsilon",
            Value::F32(cfg.rms_eps as f32),
        ),
    ] {
        metadata.insert(format!("{arch}.{k}"), v);
    }
    let weights = random_weights(&cfg, dtype, seed)?;
    let mut names: Vec<&String> = weights.tensors.keys().collect();
    names.sort();
    let tensors: Vec<(&str, &QTensor)> = names
        .iter()
        .map(|n| (n.as_str(), &weights.tensors[*n]))
        .collect();
    let mut keys: Vec<&String> = metadata.keys().collect();
    keys.sort();
    let md: Vec<(&str, &Value)> = keys.iter().map(|k| (k.as_str(), &metadata[*k])).collect();
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    gguf_file::write(&mut file, &md, &tensors)?;
    Ok(())
}

/// Undoes llama.cpp's Q/K row permutation (GGUF pairs RoPE dimensions `(2i, 2i+1)`, Hugging
/// Face pairs `(i, i + d/2)`): within each head, GGUF row `2i + j` is HF row `j·d/2 + i`.
fn gguf_rows_to_hf(w: &Tensor, n_heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let d = rows / n_heads;
    Ok(w.reshape((n_heads, d / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

/// Writes the tiny model (F32 weights, same seed → same weights as [`tiny_model`]) as a
/// Hugging Face checkpoint directory: `config.json`, `model.safetensors` with HF tensor names
/// and Q/K rows in HF order, `tokenizer.json` and `tokenizer_config.json`. Loading it must
/// give the same logits as the GGUF, which checks the name mapping and the RoPE pairing.
pub fn write_tiny_safetensors_dir(dir: &Path, seed: u64) -> Result<()> {
    let lm = tiny_model(GgmlDType::F32, seed)?;
    let cfg = lm.model.config().clone();
    let weights = random_weights(&cfg, GgmlDType::F32, seed)?;
    let mut out: HashMap<String, Tensor> = HashMap::new();
    for (name, q) in &weights.tensors {
        let t = q.dequantize(&Device::Cpu)?;
        let hf = match name.as_str() {
            "token_embd.weight" => "model.embed_tokens.weight".to_string(),
            "output_norm.weight" => "model.norm.weight".to_string(),
            _ => {
                let rest = name.strip_prefix("blk.").expect("block tensor");
                let (layer, part) = rest.split_once('.').expect("blk.N.part");
                let part = match part {
                    "attn_norm.weight" => "input_layernorm.weight",
                    "attn_q.weight" => "self_attn.q_proj.weight",
                    "attn_k.weight" => "self_attn.k_proj.weight",
                    "attn_v.weight" => "self_attn.v_proj.weight",
                    "attn_output.weight" => "self_attn.o_proj.weight",
                    "ffn_norm.weight" => "post_attention_layernorm.weight",
                    "ffn_gate.weight" => "mlp.gate_proj.weight",
                    "ffn_up.weight" => "mlp.up_proj.weight",
                    "ffn_down.weight" => "mlp.down_proj.weight",
                    other => panic!("unexpected tensor {other}"),
                };
                format!("model.layers.{layer}.{part}")
            }
        };
        let t = if name.ends_with("attn_q.weight") {
            gguf_rows_to_hf(&t, cfg.n_heads)?
        } else if name.ends_with("attn_k.weight") {
            gguf_rows_to_hf(&t, cfg.n_kv_heads)?
        } else {
            t
        };
        out.insert(hf, t);
    }
    std::fs::create_dir_all(dir)?;
    candle_core::safetensors::save(&out, dir.join("model.safetensors"))?;
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_dim,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "num_hidden_layers": cfg.n_layers,
        "vocab_size": cfg.vocab_size,
        "rms_norm_eps": cfg.rms_eps,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.context_length,
        "tie_word_embeddings": true,
        "bos_token_id": 1,
        "eos_token_id": 2
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config).expect("json"),
    )?;
    lm.tokenizer
        .inner()
        .save(dir.join("tokenizer.json"), false)
        .map_err(|e| crate::EngineError::Tokenizer(e.to_string()))?;
    let tcfg = serde_json::json!({
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "add_bos_token": false,
        "chat_template": crate::model::tokenizer::testing::TINY_CHAT_TEMPLATE
    });
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&tcfg).expect("json"),
    )?;
    Ok(())
}

/// The tiny model's sliding window for the Gemma 3 variant: small enough that a 300-token
/// policy test runs far past it.
pub const TINY_WINDOW: usize = 16;

/// The architectures [`tiny_model_of`] builds.
pub const TINY_ARCHITECTURES: &[&str] = &["llama", "gemma3", "qwen2", "qwen3"];

/// A tiny random model of `arch` (one of [`TINY_ARCHITECTURES`]) with the same shape, tokenizer
/// and chat template as [`tiny_model`], and the tensors its family adds: Q/K/V biases (qwen2),
/// QK-norm (qwen3, gemma3), sandwich norms, scaled embeddings, GeGLU and every third layer
/// global with the others sliding over [`TINY_WINDOW`] tokens at a second RoPE base (gemma3).
/// `tiny_model_of("llama", …)` is [`tiny_model`].
pub fn tiny_model_of(arch: &str, dtype: GgmlDType, seed: u64) -> Result<LoadedModel> {
    use crate::model::decoder::{Activation, ArchFlags, Decoder};
    use crate::model::gemma3::{layer_plan, Gemma3Options};
    use crate::model::qwen::{self, QwenFamily};
    use crate::model::Model;
    if arch == "llama" {
        return tiny_model(dtype, seed);
    }
    let lm = tiny_model(dtype, seed)?;
    let mut cfg = lm.model.config().clone();
    cfg.rope_pairing = RopePairing::Half;
    let mut weights = random_weights(&cfg, dtype, seed)?;
    let mut rng = StdRng::seed_from_u64(seed ^ 0x9e37_79b9);
    let mut vector = |n: usize, scale: f32, offset: f32| -> Result<QTensor> {
        let data: Vec<f32> = (0..n)
            .map(|_| offset + scale * (rng.gen::<f32>() * 2.0 - 1.0))
            .collect();
        Ok(QTensor::quantize(
            &Tensor::from_vec(data, n, &Device::Cpu)?,
            GgmlDType::F32,
        )?)
    };
    let (q, kv, hd) = (
        cfg.n_heads * cfg.head_dim,
        cfg.n_kv_heads * cfg.head_dim,
        cfg.head_dim,
    );
    for i in 0..cfg.n_layers {
        let mut add = |name: &str, t: QTensor| {
            weights.tensors.insert(format!("blk.{i}.{name}"), t);
        };
        match arch {
            "qwen2" => {
                add("attn_q.bias", vector(q, 0.5, 0.0)?);
                add("attn_k.bias", vector(kv, 0.5, 0.0)?);
                add("attn_v.bias", vector(kv, 0.5, 0.0)?);
            }
            "qwen3" | "gemma3" => {
                add("attn_q_norm.weight", vector(hd, 0.1, 1.0)?);
                add("attn_k_norm.weight", vector(hd, 0.1, 1.0)?);
                if arch == "gemma3" {
                    add("post_attention_norm.weight", vector(cfg.d_model, 0.1, 1.0)?);
                    add("post_ffw_norm.weight", vector(cfg.d_model, 0.1, 1.0)?);
                }
            }
            other => {
                return Err(crate::EngineError::UnsupportedArchitecture {
                    arch: other.into(),
                    path: PathBuf::from("<tiny random model>"),
                    supported: TINY_ARCHITECTURES.join(", "),
                })
            }
        }
    }
    let model = match QwenFamily::from_name(arch) {
        Some(family) => qwen::load(family, cfg, &mut weights, WeightFormat::Native)?,
        None => {
            let opts = Gemma3Options {
                global_every: 3,
                ..Gemma3Options::default()
            };
            let (windows, rope_bases) =
                layer_plan(cfg.n_layers, TINY_WINDOW, 1e6, opts.local_rope_base, &opts);
            let flags = ArchFlags {
                name: "gemma3".into(),
                activation: Activation::GeluTanh,
                // Smaller than Gemma's sqrt(d_model): the tiny embeddings are already O(1).
                embed_scale: Some(2.0),
                windows,
                rope_bases,
            };
            Decoder::load(cfg, flags, &mut weights, WeightFormat::Native)?
        }
    };
    Ok(LoadedModel {
        model: Model::Decoder(model),
        tokenizer: lm.tokenizer,
        chat_template: lm.chat_template,
        path: PathBuf::from(format!("<tiny random {arch}>")),
        description: format!("tiny random {arch} ({dtype:?})"),
    })
}

/// How the device path ([`crate::model::device_model`]) compared with the host path on one
/// tiny model: a prefill of every row's logits, then single-token decode steps.
#[derive(Clone, Debug)]
pub struct DeviceComparison {
    /// Largest |Δlogit| over every prefill row and every decode step.
    pub max_abs: f32,
    /// Mean |Δlogit| over the same.
    pub mean_abs: f32,
    /// Largest minus smallest host logit (the scale `max_abs` is read against).
    pub logit_range: f32,
    /// Fraction of rows and steps whose argmax agrees.
    pub argmax_agree: f64,
    /// K/V bytes each sequence holds at the end (device store vs host f32 store).
    pub device_kv_bytes: usize,
    pub host_kv_bytes: usize,
}

/// Runs `prompt_len` tokens as one prefill then `decode_steps` greedy single-token steps (each
/// feeding back the host path's argmax, so both paths see the same tokens) on a tiny `arch`
/// model with weights as `dtype`, on the host path (f32 KV store, candle's quantised kernel for
/// every row) and on the device path on `device` with the given attention score budget.
pub fn compare_device_path(
    arch: &str,
    dtype: GgmlDType,
    device: &Device,
    prompt_len: usize,
    decode_steps: usize,
    score_budget: usize,
) -> Result<DeviceComparison> {
    use crate::cache::KvDtype;
    use crate::model::llama::LogitRows;
    use crate::model::Model;
    use crate::sequence::Sequence;
    let mut host = tiny_model_of(arch, dtype, 11)?.model;
    host.set_dequant_rows(usize::MAX);
    let mut on_device = tiny_model_of(arch, dtype, 11)?.model.onto_device(device)?;
    if let Model::Device(m) = &mut on_device {
        m.set_score_budget(score_budget);
    }
    let cfg = host.config().clone();
    let prompt: Vec<u32> = (0..prompt_len)
        .map(|i| ((i * 7919 + 13) % cfg.vocab_size) as u32)
        .collect();
    let mut hs = Sequence::dense_with_dtype(cfg.kv_layout(), KvDtype::F32);
    let mut ds = Sequence::dense(cfg.kv_layout());
    let mut pairs: Vec<(Vec<f32>, Vec<f32>)> = Vec::new();
    let rows = |t: candle_core::Tensor| -> Result<Vec<Vec<f32>>> { Ok(t.to_vec2::<f32>()?) };
    let h = rows(host.forward(&prompt, &mut hs, LogitRows::All)?)?;
    let d = rows(on_device.forward(&prompt, &mut ds, LogitRows::All)?)?;
    pairs.extend(h.into_iter().zip(d));
    for _ in 0..decode_steps {
        let next = crate::generate::argmax(&pairs.last().expect("a prefill row").0);
        let h = rows(host.forward(&[next], &mut hs, LogitRows::Last)?)?;
        let d = rows(on_device.forward(&[next], &mut ds, LogitRows::Last)?)?;
        pairs.extend(h.into_iter().zip(d));
    }
    let (mut max_abs, mut sum, mut n, mut agree) = (0f32, 0f64, 0usize, 0usize);
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for (h, d) in &pairs {
        for (a, b) in h.iter().zip(d) {
            let diff = (a - b).abs();
            // NaN on either side must fail any bound.
            max_abs = if diff.is_nan() {
                f32::INFINITY
            } else {
                max_abs.max(diff)
            };
            sum += diff as f64;
            n += 1;
            lo = lo.min(*a);
            hi = hi.max(*a);
        }
        agree += (crate::generate::argmax(h) == crate::generate::argmax(d)) as usize;
    }
    Ok(DeviceComparison {
        max_abs,
        mean_abs: (sum / n.max(1) as f64) as f32,
        logit_range: hi - lo,
        argmax_agree: agree as f64 / pairs.len().max(1) as f64,
        device_kv_bytes: ds.kv_resident_bytes(),
        host_kv_bytes: hs.kv_resident_bytes(),
    })
}
