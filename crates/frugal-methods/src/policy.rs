//! The types every policy module shares, and nothing method-specific.
//!
//! A method is one file: a typed config struct declared with [`policy_config!`] (its `Default` is
//! the paper's setting, our choices labelled in the field docs), the cache and/or attention
//! policy it builds, and a [`PolicyEntry`] constant. The registry lists the entries (one line per
//! method); the knob table, spec parsing, range checks, the policy matrix, the CLI, the server and
//! the harness all read the entry, so nothing else changes when a method is added.

use crate::spec::{PartSpec, SpecError};
use frugal_engine::attention::AttentionPolicy;
use frugal_engine::cache::{CachePolicy, KvLayout};

/// The accepted values of a knob.
#[derive(Clone, Copy, Debug, PartialEq)]
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
    /// `0`/`1` (also `false`/`true`, `off`/`on`).
    Switch,
}

impl KnobKind {
    /// Checks `text` against the kind; the error says what is accepted.
    pub fn check(&self, text: &str) -> Result<(), String> {
        match *self {
            KnobKind::Int { min, max } => {
                let expected = || format!("an integer in {min}..={max}");
                let v: i64 = text.parse().map_err(|_| expected())?;
                if v < min || v > max {
                    return Err(expected());
                }
            }
            KnobKind::Float { min, max } => {
                let expected = || format!("a number in [{min}, {max}]");
                let v: f64 = text.parse().map_err(|_| expected())?;
                if !(v >= min && v <= max) {
                    return Err(expected());
                }
            }
            KnobKind::Choice { options } => {
                if !options.contains(&text) {
                    return Err(format!("one of {}", options.join(", ")));
                }
            }
            KnobKind::Range { min, max } => {
                let expected =
                    || format!("a layer range a-b (or one layer a) with {min} <= a <= b <= {max}");
                let r = LayerRange::parse(text).ok_or_else(expected)?;
                if (r.first as i64) < min || (r.last as i64) > max || r.first > r.last {
                    return Err(expected());
                }
            }
            KnobKind::Switch => {
                bool::parse_knob(text).ok_or_else(|| "0 or 1".to_string())?;
            }
        }
        Ok(())
    }
}

/// One knob of a policy, derived from its config struct.
#[derive(Clone, Debug)]
pub struct KnobInfo {
    pub name: &'static str,
    pub kind: KnobKind,
    /// The config's `Default`, printed as a spec value.
    pub default: String,
    /// The field's doc comment.
    pub doc: String,
}

/// A value a knob can hold: parsed from and printed as spec text.
pub trait KnobValue: Sized {
    fn parse_knob(text: &str) -> Option<Self>;
    fn show_knob(&self) -> String;
}

macro_rules! numeric_knob {
    ($($t:ty),*) => {$(
        impl KnobValue for $t {
            fn parse_knob(text: &str) -> Option<Self> {
                text.trim().parse().ok()
            }
            fn show_knob(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
numeric_knob!(usize, u32, i64, f64, f32);

impl KnobValue for bool {
    fn parse_knob(text: &str) -> Option<Self> {
        match text.trim() {
            "1" | "true" | "on" => Some(true),
            "0" | "false" | "off" => Some(false),
            _ => None,
        }
    }
    fn show_knob(&self) -> String {
        (if *self { "1" } else { "0" }).into()
    }
}

/// An inclusive layer range `a-b` (or one layer `a`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerRange {
    pub first: usize,
    pub last: usize,
}

impl LayerRange {
    fn parse(text: &str) -> Option<Self> {
        let (a, b) = match text.split_once('-') {
            Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
            None => {
                let a = text.trim().parse().ok()?;
                (a, a)
            }
        };
        Some(LayerRange { first: a, last: b })
    }
}

impl KnobValue for LayerRange {
    fn parse_knob(text: &str) -> Option<Self> {
        LayerRange::parse(text)
    }
    fn show_knob(&self) -> String {
        if self.first == self.last {
            self.first.to_string()
        } else {
            format!("{}-{}", self.first, self.last)
        }
    }
}

/// A typed policy config: its knobs and how a spec's `key=value` pairs set them. Implemented by
/// [`policy_config!`], never by hand.
pub trait PolicyConfig: Default + Clone {
    fn knobs() -> Vec<KnobInfo>;
    /// Sets one knob from spec text; the error names what is accepted.
    fn set(&mut self, knob: &str, text: &str) -> Result<(), KnobError>;
}

/// Why a knob could not be set.
#[derive(Debug)]
pub enum KnobError {
    Unknown,
    Bad(String),
}

/// Reads a spec part into its config: defaults, then every given knob (known, in range).
pub fn configure<C: PolicyConfig>(part: &PartSpec) -> Result<C, SpecError> {
    let mut cfg = C::default();
    for (k, v) in &part.knobs {
        cfg.set(k, v).map_err(|e| match e {
            KnobError::Unknown => {
                let known: Vec<&str> = C::knobs().iter().map(|i| i.name).collect();
                SpecError::UnknownKnob {
                    policy: part.name.clone(),
                    knob: k.clone(),
                    known: if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    },
                }
            }
            KnobError::Bad(expected) => SpecError::BadValue {
                policy: part.name.clone(),
                knob: k.clone(),
                value: v.clone(),
                expected,
            },
        })?;
    }
    Ok(cfg)
}

/// The knob table of a config type (a registry entry's `knobs`).
pub fn knobs_of<C: PolicyConfig>() -> Vec<KnobInfo> {
    C::knobs()
}

/// A field name as a knob name (a raw identifier such as `r#type` is the knob `type`).
pub fn knob_name(field: &'static str) -> &'static str {
    field.strip_prefix("r#").unwrap_or(field)
}

/// A knob value checked against its kind, then converted to the field's type.
pub fn parse_checked<T: KnobValue>(kind: KnobKind, text: &str) -> Result<T, KnobError> {
    kind.check(text).map_err(KnobError::Bad)?;
    T::parse_knob(text)
        .ok_or_else(|| KnobError::Bad(format!("a value of the knob's type ({kind:?})")))
}

/// Declares a policy config struct with one knob per field: `pub name: Type = default, KIND;`,
/// where `KIND` is a [`KnobKind`]. The field's doc comment is the knob's doc. An optional first
/// field `flatten pub name: Type;` embeds another config's knobs (shared by several policies,
/// declared once). Generates the struct, its `Default` and its [`PolicyConfig`] implementation.
#[macro_export]
macro_rules! policy_config {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                flatten pub $flat:ident : $flat_ty:ty;
            )?
            $(
                $(#[doc = $doc:literal])*
                pub $field:ident : $ty:ty = $default:expr, $kind:expr;
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq)]
        pub struct $name {
            $(
                /// Knobs shared with other policies.
                pub $flat: $flat_ty,
            )?
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    $( $flat: <$flat_ty as Default>::default(), )?
                    $( $field: $default, )*
                }
            }
        }

        impl $crate::policy::PolicyConfig for $name {
            fn knobs() -> Vec<$crate::policy::KnobInfo> {
                let d = <$name as Default>::default();
                let _ = &d;
                #[allow(unused_mut)]
                let mut knobs = vec![$(
                    $crate::policy::KnobInfo {
                        name: $crate::policy::knob_name(stringify!($field)),
                        kind: $kind,
                        default: $crate::policy::KnobValue::show_knob(&d.$field),
                        doc: [$($doc),*].iter().map(|l| l.trim()).collect::<Vec<_>>().join(" "),
                    },
                )*];
                $( knobs.extend(<$flat_ty as $crate::policy::PolicyConfig>::knobs()); )?
                knobs
            }

            fn set(&mut self, knob: &str, text: &str) -> Result<(), $crate::policy::KnobError> {
                let _ = (knob, text);
                $(
                    if knob == $crate::policy::knob_name(stringify!($field)) {
                        self.$field = $crate::policy::parse_checked($kind, text)?;
                        return Ok(());
                    }
                )*
                $(
                    return $crate::policy::PolicyConfig::set(&mut self.$flat, knob, text);
                )?
                #[allow(unreachable_code)]
                Err($crate::policy::KnobError::Unknown)
            }
        }
    };
}

/// Declares a knob enum: its variants and their spec words. Generates `KIND` (the
/// [`KnobKind::Choice`] of the words) and the [`KnobValue`] implementation.
#[macro_export]
macro_rules! knob_choice {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[doc = $doc:literal])* $variant:ident = $word:literal, )* }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $( $(#[doc = $doc])* $variant, )* }

        impl $name {
            pub const KIND: $crate::policy::KnobKind =
                $crate::policy::KnobKind::Choice { options: &[$($word),*] };
        }

        impl $crate::policy::KnobValue for $name {
            fn parse_knob(text: &str) -> Option<Self> {
                match text.trim() {
                    $( $word => Some($name::$variant), )*
                    _ => None,
                }
            }
            fn show_knob(&self) -> String {
                match self { $( $name::$variant => $word.to_string(), )* }
            }
        }
    };
}

/// How rows of a KV store are encoded: `bits == 32` is plain f32 (nothing quantised). A
/// storage-format policy (KIVI) produces one; a store owner that accepts a format keeps its rows
/// in it (`minicache+kivi:bits=4`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowFormat {
    /// Code width of keys (and of values unless `value_bits` differs).
    pub bits: u32,
    /// Tokens per key block (keys share a scale and minimum per channel per block).
    pub group: usize,
    /// Code width of values.
    pub value_bits: u32,
    /// Channels per value group (values share a scale and minimum per group of one token).
    pub value_group: usize,
    pub residual: usize,
    /// Full-precision rows are stored as f16 (else f32).
    pub half_rows: bool,
}

impl RowFormat {
    pub const F32: RowFormat = RowFormat {
        bits: 32,
        group: 1,
        value_bits: 32,
        value_group: 1,
        residual: usize::MAX,
        half_rows: false,
    };

    /// Unquantised rows in the store's dtype: what a store owner keeps when no storage-format
    /// part is written beside it, so it holds no more per row than the full store does.
    pub fn plain(dtype: frugal_engine::cache::KvDtype) -> RowFormat {
        RowFormat {
            half_rows: dtype == frugal_engine::cache::KvDtype::F16,
            ..RowFormat::F32
        }
    }

    pub fn quantises(&self) -> bool {
        self.bits < 32 && self.residual < usize::MAX / 2
    }

    pub fn label(&self) -> String {
        let mut s = format!("kivi:bits={}", self.bits);
        if self.value_bits != self.bits {
            s += &format!(",vbits={}", self.value_bits);
        }
        s += &format!(",group={}", self.group);
        if self.value_group != self.group {
            s += &format!(",vgroup={}", self.value_group);
        }
        s + &format!(
            ",residual={},fp={}",
            self.residual,
            if self.half_rows { 16 } else { 32 }
        )
    }
}

/// What one part contributes.
pub struct Component {
    pub cache: Option<Box<dyn CachePolicy>>,
    pub attention: Option<Box<dyn AttentionPolicy>>,
}

/// Reads a storage-format part as the row format it supplies.
pub type ReadRowFormat = fn(&PartSpec) -> Result<RowFormat, SpecError>;

/// A registered policy: everything the registry, the policy matrix and the front-ends need.
#[derive(Clone, Copy)]
pub struct PolicyEntry {
    pub name: &'static str,
    pub doc: &'static str,
    pub knobs: fn() -> Vec<KnobInfo>,
    /// A spec of this policy with every knob at "keep everything": it must reproduce dense
    /// logits (checked for every policy by the policy matrix).
    pub keep_everything: &'static str,
    /// Builds the part. `spec` is the part as written.
    pub build: fn(&PartSpec, &Build) -> Result<Component, SpecError>,
    /// A storage format: beside a store owner that [`takes_format`](Self::takes_format), the
    /// part becomes that owner's row format instead of a second store.
    pub row_format: Option<ReadRowFormat>,
    /// Keeps its rows through a row format supplied by a storage-format part.
    pub takes_format: bool,
}

/// What a build function receives besides its part.
pub struct Build {
    pub layout: KvLayout,
    /// The row format a storage-format part beside this one supplies (takers only).
    pub row_format: Option<RowFormat>,
    /// The part as written, for the policy's name in reports.
    pub spec: String,
}

impl PolicyEntry {
    /// An entry with no storage-format role.
    pub const fn new(
        name: &'static str,
        doc: &'static str,
        knobs: fn() -> Vec<KnobInfo>,
        keep_everything: &'static str,
        build: fn(&PartSpec, &Build) -> Result<Component, SpecError>,
    ) -> Self {
        PolicyEntry {
            name,
            doc,
            knobs,
            keep_everything,
            build,
            row_format: None,
            takes_format: false,
        }
    }

    /// An entry that owns a store and keeps its rows in the row format a storage-format part
    /// beside it supplies (`snapkv+kivi:bits=4`), f32 rows when none does.
    pub const fn taking_format(
        name: &'static str,
        doc: &'static str,
        knobs: fn() -> Vec<KnobInfo>,
        keep_everything: &'static str,
        build: fn(&PartSpec, &Build) -> Result<Component, SpecError>,
    ) -> Self {
        PolicyEntry {
            takes_format: true,
            ..PolicyEntry::new(name, doc, knobs, keep_everything, build)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    knob_choice! {
        /// A test choice.
        pub enum Pick { A = "a", B = "b", }
    }

    policy_config! {
        /// A test config.
        pub struct TestConfig {
            /// a count
            /// over two lines
            pub n: usize = 3, KnobKind::Int { min: 1, max: 9 };
            /// a word
            pub pick: Pick = Pick::B, Pick::KIND;
            /// a switch
            pub on: bool = true, KnobKind::Switch;
        }
    }

    #[test]
    fn knobs_derive_from_the_config() {
        let k = TestConfig::knobs();
        assert_eq!(k.len(), 3);
        assert_eq!((k[0].name, k[0].default.as_str()), ("n", "3"));
        assert_eq!(k[0].doc, "a count over two lines");
        assert_eq!(k[1].default, "b");
        assert_eq!(k[2].default, "1");
        let part: PartSpec = "x:n=5,pick=a,on=0"
            .parse::<crate::spec::PolicySpec>()
            .unwrap()
            .parts
            .remove(0);
        let c: TestConfig = configure(&part).unwrap();
        assert_eq!(
            c,
            TestConfig {
                n: 5,
                pick: Pick::A,
                on: false
            }
        );
        for (bad, says) in [
            ("x:n=10", "an integer in 1..=9"),
            ("x:pick=c", "one of a, b"),
            ("x:on=2", "0 or 1"),
            ("x:typo=1", "unknown knob `typo`"),
        ] {
            let part = bad
                .parse::<crate::spec::PolicySpec>()
                .unwrap()
                .parts
                .remove(0);
            let e = configure::<TestConfig>(&part).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
