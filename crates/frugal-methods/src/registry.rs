//! Every policy frugal knows, its knobs with defaults and ranges, and how a spec becomes a
//! [`Sequence`] (a cache policy plus an attention policy).
//!
//! Composition rule: each part of a spec contributes a cache policy, an attention policy, or
//! both; a spec may hold at most one of each (two parts that both own the KV store, or both
//! decide attention paths, are a conflict). Parts that are missing default to the full store
//! and dense attention. One exception keeps layering general: a storage format ([`STORAGE_FORMATS`],
//! e.g. `kivi`) written beside a store owner that takes a format ([`FORMAT_TAKERS`], e.g.
//! `minicache`) encodes that owner's rows instead of owning a store itself.

use crate::fps;
use crate::kivi::{self, RowFormat};
use crate::knockout;
use crate::minicache;
use crate::omnisparse;
use crate::spec::{PartSpec, PolicySpec, SpecError};
use crate::streaming;
use frugal_engine::attention::{AttentionPolicy, Dense};
use frugal_engine::cache::{CachePolicy, FullCache, KvLayout};
use frugal_engine::sequence::Sequence;

/// The accepted values of a knob.
#[derive(Clone, Copy, Debug)]
pub enum KnobKind {
    Int {
        min: i64,
        max: i64,
    },
    Float {
        min: f64,
        max: f64,
    },
    /// One of these words.
    Choice {
        options: &'static [&'static str],
    },
    /// An inclusive integer range `a-b` (or a single `a`) inside `min..=max`.
    Range {
        min: i64,
        max: i64,
    },
}

#[derive(Clone, Copy, Debug)]
pub struct KnobInfo {
    pub name: &'static str,
    pub kind: KnobKind,
    pub default: &'static str,
    pub doc: &'static str,
}

#[derive(Clone, Copy, Debug)]
pub struct PolicyInfo {
    pub name: &'static str,
    pub doc: &'static str,
    pub knobs: &'static [KnobInfo],
    /// A spec of this policy with every knob at "keep everything": it must reproduce dense
    /// logits (checked for every policy by `tests/policy_matrix.rs`).
    pub keep_everything: &'static str,
}

/// All registered policies.
pub const POLICIES: &[PolicyInfo] = &[
    PolicyInfo {
        name: "full",
        doc: "every token of every head kept; dense attention (the reference)",
        knobs: &[],
        keep_everything: "full",
    },
    streaming::INFO,
    kivi::INFO,
    minicache::INFO,
    minicache::MEAN_INFO,
    knockout::INFO,
    knockout::EARLY_EXIT_INFO,
    knockout::FRAME_LOCAL_INFO,
    omnisparse::INFO,
    omnisparse::UNIFORM_INFO,
    omnisparse::TOPK_INFO,
    fps::INFO,
];

/// A part's knobs, checked against its [`PolicyInfo`]: every given knob is known and in range;
/// missing knobs take their defaults.
pub struct Knobs<'a> {
    part: &'a PartSpec,
    info: &'static PolicyInfo,
}

impl<'a> Knobs<'a> {
    fn new(part: &'a PartSpec, info: &'static PolicyInfo) -> Result<Self, SpecError> {
        let knobs = Knobs { part, info };
        for (k, _) in &part.knobs {
            let Some(knob) = info.knobs.iter().find(|i| i.name == k) else {
                let known: Vec<&str> = info.knobs.iter().map(|i| i.name).collect();
                return Err(SpecError::UnknownKnob {
                    policy: part.name.clone(),
                    knob: k.clone(),
                    known: if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    },
                });
            };
            knobs.number(knob)?;
        }
        Ok(knobs)
    }

    fn raw(&self, knob: &KnobInfo) -> &str {
        self.part
            .knobs
            .iter()
            .find(|(k, _)| k == knob.name)
            .map_or(knob.default, |(_, v)| v.as_str())
    }

    fn number(&self, knob: &KnobInfo) -> Result<f64, SpecError> {
        let value = self.raw(knob);
        let bad = |expected: String| SpecError::BadValue {
            policy: self.part.name.clone(),
            knob: knob.name.into(),
            value: value.into(),
            expected,
        };
        match knob.kind {
            KnobKind::Int { min, max } => {
                let v: i64 = value
                    .parse()
                    .map_err(|_| bad(format!("an integer in {min}..={max}")))?;
                if v < min || v > max {
                    return Err(bad(format!("an integer in {min}..={max}")));
                }
                Ok(v as f64)
            }
            KnobKind::Float { min, max } => {
                let v: f64 = value
                    .parse()
                    .map_err(|_| bad(format!("a number in [{min}, {max}]")))?;
                if !(v >= min && v <= max) {
                    return Err(bad(format!("a number in [{min}, {max}]")));
                }
                Ok(v)
            }
            KnobKind::Choice { options } => options
                .iter()
                .position(|o| *o == value)
                .map(|i| i as f64)
                .ok_or_else(|| bad(format!("one of {}", options.join(", ")))),
            KnobKind::Range { min, max } => {
                let expected = || {
                    bad(format!(
                        "a layer range a-b (or one layer a) with {min} <= a <= b <= {max}"
                    ))
                };
                let (a, b) = parse_range(value).ok_or_else(expected)?;
                if a < min || b > max || a > b {
                    return Err(expected());
                }
                Ok(a as f64)
            }
        }
    }

    /// The word given for a [`KnobKind::Choice`] knob (or its default).
    pub fn choice(&self, name: &str) -> &str {
        self.number(self.info(name))
            .expect("validated in Knobs::new");
        self.raw(self.info(name))
    }

    /// The inclusive bounds given for a [`KnobKind::Range`] knob (or its default).
    pub fn range(&self, name: &str) -> (usize, usize) {
        self.number(self.info(name))
            .expect("validated in Knobs::new");
        let (a, b) = parse_range(self.raw(self.info(name))).expect("validated in Knobs::new");
        (a as usize, b as usize)
    }

    fn info(&self, name: &str) -> &'static KnobInfo {
        self.info
            .knobs
            .iter()
            .find(|k| k.name == name)
            .unwrap_or_else(|| panic!("policy {} has no knob {name}", self.info.name))
    }

    pub fn usize(&self, name: &str) -> usize {
        self.number(self.info(name))
            .expect("validated in Knobs::new") as usize
    }

    pub fn f64(&self, name: &str) -> f64 {
        self.number(self.info(name))
            .expect("validated in Knobs::new")
    }
}

/// `a-b` or `a` as an inclusive pair.
fn parse_range(text: &str) -> Option<(i64, i64)> {
    match text.split_once('-') {
        Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
        None => text.trim().parse().ok().map(|a| (a, a)),
    }
}

/// Policies that only change how rows are encoded. Alone, such a policy owns the store (rows in its
/// format); beside a [`FORMAT_TAKERS`] part it becomes that part's row format (e.g.
/// `minicache+kivi:bits=4`, MiniCache's merged directions quantised by KIVI). Beside any other
/// store owner it is a conflict, like two owners.
pub const STORAGE_FORMATS: &[&str] = &["kivi"];
/// Store owners that keep their rows through a row format and accept one from a storage format.
pub const FORMAT_TAKERS: &[&str] = &["minicache", "mean-merge"];

/// What one part contributes.
pub struct Component {
    pub cache: Option<Box<dyn CachePolicy>>,
    pub attention: Option<Box<dyn AttentionPolicy>>,
}

fn info(name: &str) -> Result<&'static PolicyInfo, SpecError> {
    POLICIES
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| SpecError::UnknownPolicy {
            name: name.into(),
            known: POLICIES
                .iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

fn component(part: &PartSpec, layout: KvLayout) -> Result<Component, SpecError> {
    let knobs = Knobs::new(part, info(&part.name)?)?;
    Ok(match part.name.as_str() {
        "full" => Component {
            cache: Some(Box::new(FullCache::new(layout))),
            attention: Some(Box::new(Dense)),
        },
        "streaming" => streaming::component(&knobs, layout),
        "kivi" => kivi::component(&knobs, layout)?,
        "minicache" | "mean-merge" => {
            minicache::component(&part.name, &knobs, layout, RowFormat::F32)
        }
        "omnisparse" => omnisparse::component(&knobs, layout, part.to_string()),
        "uniform-budget" => omnisparse::uniform_component(&knobs, layout, part.to_string()),
        "topk" => omnisparse::topk_component(&knobs, layout, part.to_string()),
        "knockout" => knockout::component(&knobs),
        "early-exit" => knockout::early_exit_component(&knobs),
        "frame-local" => knockout::frame_local_component(&knobs),
        "fps" => fps::component(&knobs, part.to_string()),
        other => unreachable!("policy {other} is registered but has no builder"),
    })
}

/// Checks a spec (names, knobs, ranges, composition) without needing a model.
pub fn validate(spec: &PolicySpec) -> Result<(), SpecError> {
    build(
        spec,
        KvLayout {
            n_layers: 1,
            n_kv_heads: 1,
            head_dim: 2,
        },
    )
    .map(|_| ())
}

/// Builds the sequence state a spec describes for a model with this KV layout.
pub fn build(spec: &PolicySpec, layout: KvLayout) -> Result<Sequence, SpecError> {
    let mut cache: Option<(String, Box<dyn CachePolicy>)> = None;
    let mut attention: Option<(String, Box<dyn AttentionPolicy>)> = None;
    let conflict = |first: &str, second: &str, what: &str| SpecError::Conflict {
        first: first.into(),
        second: second.into(),
        reason: format!("both {what}"),
    };
    // Storage formats: a format part (kivi) written beside a part that stores its rows through a
    // format (minicache, mean-merge) becomes that part's row format, not a second store owner.
    let format_part = spec
        .parts
        .iter()
        .position(|p| STORAGE_FORMATS.contains(&p.name.as_str()));
    let taker = spec
        .parts
        .iter()
        .position(|p| FORMAT_TAKERS.contains(&p.name.as_str()));
    let row_format = match (format_part, taker) {
        (Some(f), Some(_)) => {
            let part = &spec.parts[f];
            Some(kivi::format(&Knobs::new(part, info(&part.name)?)?)?)
        }
        _ => None,
    };
    for (i, part) in spec.parts.iter().enumerate() {
        let c = match row_format {
            Some(_) if Some(i) == format_part => continue,
            Some(fmt) if Some(i) == taker => {
                let knobs = Knobs::new(part, info(&part.name)?)?;
                minicache::component(&part.name, &knobs, layout, fmt)
            }
            _ => component(part, layout)?,
        };
        if let Some(new) = c.cache {
            if let Some((first, _)) = &cache {
                return Err(conflict(first, &part.name, "own the KV store"));
            }
            cache = Some((part.name.clone(), new));
        }
        if let Some(new) = c.attention {
            if let Some((first, _)) = &attention {
                return Err(conflict(first, &part.name, "decide the attention paths"));
            }
            attention = Some((part.name.clone(), new));
        }
    }
    Ok(Sequence::new(
        cache.map_or_else(
            || Box::new(FullCache::new(layout)) as Box<dyn CachePolicy>,
            |c| c.1,
        ),
        attention.map_or_else(|| Box::new(Dense) as Box<dyn AttentionPolicy>, |a| a.1),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(spec: &str) -> String {
        validate(&spec.parse().unwrap()).unwrap_err().to_string()
    }

    #[test]
    fn unknown_names_knobs_and_ranges_are_named() {
        assert!(err("nosuch").contains("unknown policy `nosuch`"));
        assert!(
            err("nosuch").contains("streaming"),
            "lists the known policies"
        );
        assert!(err("streaming:foo=1").contains("unknown knob `foo` for policy `streaming`"));
        assert!(err("streaming:window=0").contains("streaming:window"));
        assert!(err("streaming:sink=abc").contains("an integer"));
        assert!(err("full:x=1").contains("its knobs: none"));
    }

    #[test]
    fn a_storage_format_composes_under_a_format_taker_only() {
        let ok = |s: &str| validate(&s.parse().unwrap()).is_ok();
        assert!(
            ok("minicache+kivi:bits=4")
                && ok("kivi:bits=4+minicache:gamma=0.1")
                && ok("mean-merge+kivi")
        );
        assert!(err("streaming+kivi").contains("cannot be combined"));
        assert!(err("minicache+mean-merge").contains("cannot be combined"));
        assert!(err("minicache+kivi+kivi").contains("cannot be combined"));
        assert!(err("minicache+kivi:bits=3").contains("1, 2, 4 or 8"));
    }

    #[test]
    fn two_owners_of_the_store_conflict() {
        assert!(err("full+streaming").contains("cannot be combined"));
        assert!(validate(&"streaming:sink=4,window=64".parse().unwrap()).is_ok());
    }
}
