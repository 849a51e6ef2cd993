//! How a spec becomes a [`Sequence`] (a cache policy plus an attention policy), reading only the
//! registered [`PolicyEntry`]s: no method is named here.
//!
//! Composition rule: each part of a spec contributes a cache policy, an attention policy, or
//! both; a spec may hold at most one of each (two parts that both own the KV store, or both
//! decide attention paths, are a conflict). Parts that are missing default to the full store
//! and dense attention. One exception keeps layering general: a storage-format part (an entry
//! with a `row_format`, e.g. `kivi`) written beside a store owner that `takes_format` (e.g.
//! `minicache`) encodes that owner's rows instead of owning a store itself.

use crate::policy::{Build, Component, PolicyConfig, PolicyEntry};
use crate::spec::{PartSpec, PolicySpec, SpecError};
use crate::POLICIES;
use frugal_engine::attention::{AttentionPolicy, Dense};
use frugal_engine::cache::{CachePolicy, FullCache, KvDtype, KvLayout};
use frugal_engine::sequence::Sequence;

crate::policy_config! {
    /// `full` has no knobs.
    pub struct FullConfig {}
}

/// The reference: every token of every head kept, dense attention.
pub const FULL: PolicyEntry = PolicyEntry::new(
    "full",
    "every token of every head kept; dense attention (the reference)",
    FullConfig::knobs,
    "full",
    |part, b| {
        crate::policy::configure::<FullConfig>(part)?;
        Ok(Component {
            cache: Some(Box::new(FullCache::new(b.layout))),
            attention: Some(Box::new(Dense)),
        })
    },
);

/// The registered policy of this name, or an error listing the known ones.
pub fn entry(name: &str) -> Result<&'static PolicyEntry, SpecError> {
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

/// Checks a spec (names, knobs, ranges, composition) without needing a model.
pub fn validate(spec: &PolicySpec) -> Result<(), SpecError> {
    build(
        spec,
        KvLayout {
            n_layers: 1,
            n_kv_heads: 1,
            head_dim: 2,
            dtype: KvDtype::default(),
        },
    )
    .map(|_| ())
}

/// Builds the sequence state a spec describes for a model with this KV layout.
pub fn build(spec: &PolicySpec, layout: KvLayout) -> Result<Sequence, SpecError> {
    let entries = spec
        .parts
        .iter()
        .map(|p| entry(&p.name))
        .collect::<Result<Vec<_>, _>>()?;
    // A storage-format part beside a store owner that takes a format becomes that owner's row
    // format, not a second store owner.
    let format_part = entries.iter().position(|e| e.row_format.is_some());
    let taker = entries.iter().position(|e| e.takes_format);
    let row_format = match (format_part, taker) {
        (Some(f), Some(_)) => {
            let read = entries[f].row_format.expect("position found a format");
            Some(read(&spec.parts[f])?)
        }
        _ => None,
    };
    let conflict = |first: &str, second: &str, what: &str| SpecError::Conflict {
        first: first.into(),
        second: second.into(),
        reason: format!("both {what}"),
    };
    let mut cache: Option<(&str, Box<dyn CachePolicy>)> = None;
    let mut attention: Option<(&str, Box<dyn AttentionPolicy>)> = None;
    for (i, (part, e)) in spec.parts.iter().zip(&entries).enumerate() {
        if row_format.is_some() && Some(i) == format_part {
            continue;
        }
        let c = build_part(part, e, layout, row_format.filter(|_| Some(i) == taker))?;
        if let Some(new) = c.cache {
            if let Some((first, _)) = &cache {
                return Err(conflict(first, &part.name, "own the KV store"));
            }
            cache = Some((&part.name, new));
        }
        if let Some(new) = c.attention {
            if let Some((first, _)) = &attention {
                return Err(conflict(first, &part.name, "decide the attention paths"));
            }
            attention = Some((&part.name, new));
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

fn build_part(
    part: &PartSpec,
    e: &PolicyEntry,
    layout: KvLayout,
    row_format: Option<crate::policy::RowFormat>,
) -> Result<Component, SpecError> {
    (e.build)(
        part,
        &Build {
            layout,
            row_format,
            spec: part.to_string(),
        },
    )
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
