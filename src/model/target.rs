//! The projections of a decoder block LoRA can adapt, in one order that the fused blocks index by number.

/// A projection LoRA can adapt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    pub const ALL: [Target; 7] = [
        Self::Q,
        Self::K,
        Self::V,
        Self::O,
        Self::Gate,
        Self::Up,
        Self::Down,
    ];

    /// PEFT's module name ("q_proj" ...).
    pub fn module_name(self) -> &'static str {
        match self {
            Self::Q => "q_proj",
            Self::K => "k_proj",
            Self::V => "v_proj",
            Self::O => "o_proj",
            Self::Gate => "gate_proj",
            Self::Up => "up_proj",
            Self::Down => "down_proj",
        }
    }

    /// Path inside a decoder block ("self_attn.q_proj" ...).
    pub fn block_path(self) -> &'static str {
        match self {
            Self::Q => "self_attn.q_proj",
            Self::K => "self_attn.k_proj",
            Self::V => "self_attn.v_proj",
            Self::O => "self_attn.o_proj",
            Self::Gate => "mlp.gate_proj",
            Self::Up => "mlp.up_proj",
            Self::Down => "mlp.down_proj",
        }
    }

    /// Parses "q", "q_proj", "gate", "gate_proj" ...
    pub fn parse(name: &str) -> Option<Self> {
        let short = name.strip_suffix("_proj").unwrap_or(name);
        Self::ALL
            .into_iter()
            .find(|t| t.module_name().trim_end_matches("_proj") == short)
    }
}

/// Positions of the projections in [`Target::ALL`] (their declaration order), for the fused blocks that
/// index them by number.
pub mod slot {
    use super::Target;

    pub const Q: usize = Target::Q as usize;
    pub const K: usize = Target::K as usize;
    pub const V: usize = Target::V as usize;
    pub const O: usize = Target::O as usize;
    pub const GATE: usize = Target::Gate as usize;
    pub const UP: usize = Target::Up as usize;
    pub const DOWN: usize = Target::Down as usize;
    /// How many projections a block has.
    pub const COUNT: usize = Target::ALL.len();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_target_sits_at_its_slot_in_all() {
        for (i, t) in Target::ALL.into_iter().enumerate() {
            assert_eq!(t as usize, i, "{t:?}");
        }
    }
}
