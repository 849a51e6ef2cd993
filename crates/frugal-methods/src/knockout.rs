//! Attention knockouts (the Video-LLM study, arXiv 2508.15360; docs/methods/knockout.md)
//! and the two efficiency policies built on its findings.
//!
//! Tokens carry a kind (prefix, context chunk = "frame", question = "language") from the
//! sequence's [`TokenStructure`]. A knockout removes one attention pathway in chosen layers,
//! as a predicate evaluated inside the dense kernel (no `n × n` mask):
//!
//! | type | queries | keys blocked |
//! |---|---|---|
//! | `lv` (LV-K, language→video) | question tokens | every context token |
//! | `vt` (VT-K, video temporal) | context token of chunk c | context tokens of chunks ≠ c |
//! | `vs` (VS-K, video spatial) | context token of chunk c | the *other* tokens of chunk c |
//!
//! Layers: `from=i` knocks out layers `i..` (0-based, so layers `0..i` run unchanged: the
//! paper's cut-off i); `width=w` limits it to the window `i..i+w`; `width=0` knocks out
//! nothing (the "keep everything" setting).
//!
//! Our choices (the paper does not settle them), labelled: a token always sees itself
//! (VS-K keeps the diagonal) and every prefix token (instructions / BOS), so no row is ever
//! fully masked — [`KnockoutMask::new`] asserts it for every position. Tokens past the end of
//! the structure (generated text) count as question tokens. Without a structure there is
//! nothing to knock out and the policies run dense.
//!
//! Efficiency policies:
//! - `early-exit:layer=i`: context tokens exit after layer `i-1`: in layers `i..` their
//!   Q/K/V, attention rows and MLP are not computed and their K/V are not cached. For the
//!   question's logits this equals `knockout:type=lv,from=i` (tested), so the cut-off sweep
//!   says which `i` is safe; it saves `(L − i)/L` of context-token work and KV bytes.
//! - `frame-local:layers=a-b`: in layers `a..=b` context attention is block-diagonal by chunk
//!   (VT-K), question tokens still see everything. Our dense kernel still computes the masked
//!   scores, so this saves no time here; the saving needs a block-sparse kernel.

use crate::policy::{configure, Component, KnobKind, LayerRange, PolicyConfig, PolicyEntry};
use frugal_engine::attention::{AttentionPolicy, StepContext};
use frugal_engine::structure::{TokenKind, TokenStructure};
use frugal_numerics::attention::KeyMask;

crate::policy_config! {
    /// One knockout: the path and the layer window.
    pub struct KnockoutConfig {
        /// the path knocked out
        pub r#type: Path = Path::Lv, Path::KIND;
        /// first knocked-out layer (0-based)
        pub from: usize = 0, KnobKind::Int { min: 0, max: 1 << 16 };
        /// layers knocked out from `from` (default: to the last)
        pub width: usize = 65536, KnobKind::Int { min: 0, max: 1 << 16 };
    }
}

crate::policy_config! {
    /// Early exit of context tokens.
    pub struct EarlyExitConfig {
        /// layers 0..layer compute context tokens; later layers skip them [ours: 10]
        pub layer: usize = 10, KnobKind::Int { min: 0, max: 1 << 16 };
    }
}

crate::policy_config! {
    /// Frame-local (block-diagonal) context attention.
    pub struct FrameLocalConfig {
        /// inclusive layer range a-b (0-based)
        pub layers: LayerRange = LayerRange { first: 0, last: 65536 },
            KnobKind::Range { min: 0, max: 1 << 16 };
    }
}

pub const KNOCKOUT: PolicyEntry = PolicyEntry::new(
    "knockout",
    "block one attention path (lv: question→context, vt: across chunks, vs: within a chunk) in layers from..from+width",
    KnockoutConfig::knobs,
    "knockout:type=lv,width=0",
    |part, _| {
        let c: KnockoutConfig = configure(part)?;
        Ok(attention_only(Knockout {
            path: c.r#type,
            from: c.from,
            width: c.width,
        }))
    },
);

pub const EARLY_EXIT: PolicyEntry = PolicyEntry::new(
    "early-exit",
    "context tokens are not computed or cached from layer `layer` on (question tokens stop reading them)",
    EarlyExitConfig::knobs,
    "early-exit:layer=65536",
    |part, _| {
        let c: EarlyExitConfig = configure(part)?;
        Ok(attention_only(EarlyExit { layer: c.layer }))
    },
);

pub const FRAME_LOCAL: PolicyEntry = PolicyEntry::new(
    "frame-local",
    "context attention block-diagonal by chunk in layers a-b (question tokens see everything)",
    FrameLocalConfig::knobs,
    "frame-local:layers=65536",
    |part, _| {
        let c: FrameLocalConfig = configure(part)?;
        Ok(attention_only(FrameLocal {
            first: c.layers.first,
            last: c.layers.last,
        }))
    },
);

fn attention_only(a: impl AttentionPolicy + 'static) -> Component {
    Component {
        cache: None,
        attention: Some(Box::new(a)),
    }
}

/// An attention pathway a knockout removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Path {
    /// Question (language) → context (video).
    Lv,
    /// Context → context of other chunks (temporal, across frames).
    Vt,
    /// Context → other tokens of its own chunk (spatial, within a frame).
    Vs,
}

impl crate::policy::KnobValue for Path {
    fn parse_knob(text: &str) -> Option<Self> {
        Path::parse(text.trim())
    }
    fn show_knob(&self) -> String {
        self.name().into()
    }
}

impl Path {
    pub const ALL: [Path; 3] = [Path::Lv, Path::Vt, Path::Vs];
    pub const KIND: KnobKind = KnobKind::Choice {
        options: &["lv", "vt", "vs"],
    };

    pub fn name(self) -> &'static str {
        match self {
            Path::Lv => "lv",
            Path::Vt => "vt",
            Path::Vs => "vs",
        }
    }

    pub fn parse(s: &str) -> Option<Path> {
        Path::ALL.into_iter().find(|p| p.name() == s)
    }

    /// Whether this knockout blocks the path from a query of (kind, chunk) to a key of
    /// (kind, chunk), the two being different tokens.
    fn blocks(self, q: (TokenKind, u32), k: (TokenKind, u32)) -> bool {
        use TokenKind::{Context, Question};
        match self {
            Path::Lv => q.0 == Question && k.0 == Context,
            Path::Vt => q.0 == Context && k.0 == Context && q.1 != k.1,
            Path::Vs => q.0 == Context && k.0 == Context && q.1 == k.1,
        }
    }
}

/// The knockout predicate for one layer over one input's structure.
pub struct KnockoutMask {
    path: Path,
    kinds: Vec<(TokenKind, u32)>,
}

impl KnockoutMask {
    /// Builds the predicate and asserts that every position keeps at least one visible key
    /// (itself), so no attention row is ever fully masked.
    pub fn new(path: Path, structure: &TokenStructure) -> Self {
        let mask = KnockoutMask {
            path,
            kinds: structure.per_token(),
        };
        for p in 0..mask.kinds.len() as u32 {
            assert!(
                mask.allows(0, p, p),
                "knockout {} would mask every key of position {p}",
                path.name()
            );
        }
        mask
    }

    fn kind(&self, pos: u32) -> (TokenKind, u32) {
        self.kinds
            .get(pos as usize)
            .copied()
            .unwrap_or((TokenKind::Question, 0))
    }
}

impl KeyMask for KnockoutMask {
    fn allows(&self, _q_head: usize, q_pos: u32, k_pos: u32) -> bool {
        if q_pos == k_pos {
            return true;
        }
        let k = self.kind(k_pos);
        k.0 == TokenKind::Prefix || !self.path.blocks(self.kind(q_pos), k)
    }
}

/// `knockout:type=…,from=…,width=…`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Knockout {
    pub path: Path,
    pub from: usize,
    pub width: usize,
}

impl Knockout {
    pub fn applies(&self, layer: usize) -> bool {
        layer >= self.from && layer - self.from < self.width
    }
}

impl AttentionPolicy for Knockout {
    fn name(&self) -> String {
        format!(
            "knockout:type={},from={},width={}",
            self.path.name(),
            self.from,
            self.width
        )
    }
    fn mask<'a>(&'a self, ctx: &StepContext<'a>) -> Option<Box<dyn KeyMask + 'a>> {
        let s = ctx.structure.filter(|_| self.applies(ctx.layer))?;
        Some(Box::new(KnockoutMask::new(self.path, s)))
    }
}

/// `early-exit:layer=i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EarlyExit {
    pub layer: usize,
}

impl AttentionPolicy for EarlyExit {
    fn name(&self) -> String {
        format!("early-exit:layer={}", self.layer)
    }
    fn mask<'a>(&'a self, _ctx: &StepContext<'a>) -> Option<Box<dyn KeyMask + 'a>> {
        // Exited tokens are simply absent from the store above `layer`: nothing to mask.
        None
    }
    fn computed_rows(&self, ctx: &StepContext<'_>, positions: &[u32]) -> Option<Vec<bool>> {
        let s = ctx.structure.filter(|_| ctx.layer >= self.layer)?;
        let kinds = s.per_token();
        Some(
            positions
                .iter()
                .map(|&p| {
                    kinds
                        .get(p as usize)
                        .is_none_or(|k| k.0 != TokenKind::Context)
                })
                .collect(),
        )
    }
}

/// `frame-local:layers=a-b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLocal {
    pub first: usize,
    pub last: usize,
}

impl AttentionPolicy for FrameLocal {
    fn name(&self) -> String {
        format!("frame-local:layers={}-{}", self.first, self.last)
    }
    fn mask<'a>(&'a self, ctx: &StepContext<'a>) -> Option<Box<dyn KeyMask + 'a>> {
        let s = ctx
            .structure
            .filter(|_| (self.first..=self.last).contains(&ctx.layer))?;
        Some(Box::new(KnockoutMask::new(Path::Vt, s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn structure() -> TokenStructure {
        let mut s = TokenStructure::default();
        s.push(TokenKind::Prefix, 0, 2);
        s.push(TokenKind::Context, 0, 3);
        s.push(TokenKind::Context, 1, 3);
        s.push(TokenKind::Question, 0, 2);
        s
    }

    /// Every row keeps itself and the prefix, and exactly the paths of the table are cut.
    #[test]
    fn masks_cut_exactly_their_path_and_never_a_whole_row() {
        let s = structure();
        let n = s.len() as u32;
        for path in Path::ALL {
            let m = KnockoutMask::new(path, &s);
            for q in 0..n {
                assert!(m.allows(0, q, q));
                assert!((0..2).all(|k| m.allows(0, q, k)), "prefix visible");
                assert!((0..=q).any(|k| m.allows(0, q, k)), "row {q} not empty");
            }
        }
        let lv = KnockoutMask::new(Path::Lv, &s);
        assert!(
            !lv.allows(0, 8, 3) && !lv.allows(0, 9, 7) && lv.allows(0, 9, 8) && lv.allows(0, 6, 3)
        );
        let vt = KnockoutMask::new(Path::Vt, &s);
        assert!(
            !vt.allows(0, 5, 2) && vt.allows(0, 6, 5) && vt.allows(0, 8, 3) && vt.allows(0, 9, 2)
        );
        let vs = KnockoutMask::new(Path::Vs, &s);
        assert!(
            !vs.allows(0, 6, 5) && vs.allows(0, 5, 2) && vs.allows(0, 5, 5) && vs.allows(0, 8, 6)
        );
        // Generated tokens past the structure are question tokens.
        assert!(!lv.allows(0, 12, 3));
    }

    #[test]
    fn layers_of_cut_off_and_window() {
        let k = Knockout {
            path: Path::Lv,
            from: 4,
            width: 1 << 16,
        };
        assert!(!k.applies(3) && k.applies(4) && k.applies(29));
        let w = Knockout {
            path: Path::Vt,
            from: 4,
            width: 3,
        };
        assert!(!w.applies(3) && w.applies(4) && w.applies(6) && !w.applies(7));
        assert!(!Knockout {
            path: Path::Vs,
            from: 0,
            width: 0
        }
        .applies(0));
    }

    #[test]
    fn specs_parse_and_bad_knobs_are_named() {
        let err = |s: &str| {
            crate::validate(&s.parse().unwrap())
                .unwrap_err()
                .to_string()
        };
        assert!(crate::validate(&"knockout:type=vs,from=3,width=4".parse().unwrap()).is_ok());
        assert!(crate::validate(&"frame-local:layers=2-9".parse().unwrap()).is_ok());
        assert!(crate::validate(&"early-exit:layer=12".parse().unwrap()).is_ok());
        assert!(err("knockout:type=xx").contains("one of lv, vt, vs"));
        assert!(err("frame-local:layers=9-2").contains("layer range"));
        assert!(err("frame-local:layers=a").contains("layer range"));
        assert!(err("knockout+early-exit").contains("decide the attention paths"));
    }
}
