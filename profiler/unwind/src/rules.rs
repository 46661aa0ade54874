//! One CFI row, as gimli evaluates it, into the compact rule the eBPF unwinder evaluates.

use gimli::{
    CfaRule, FrameDescriptionEntry, Reader, RegisterRule, UnwindContext, UnwindSection, X86_64,
    constants::{
        DW_OP_and, DW_OP_breg7, DW_OP_breg16, DW_OP_deref, DW_OP_ge, DW_OP_lit3, DW_OP_lit15, DW_OP_plus, DW_OP_shl,
    },
};
use profiler_common::unwind::{
    CFA_DEREF_RSP, CFA_END, CFA_NONE, CFA_PLT, CFA_RBP, CFA_RSP, CFA_SIGNAL, CFA_UNSUPPORTED, RBP_SAME, RBP_SAVED,
    UnwindRow,
};

/// How to unwind one frame: a `CFA_*` rule with its offset, and a `RBP_*` rule with its offset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Rule {
    pub cfa: u8,
    pub cfa_offset: u16,
    pub rbp: u8,
    pub rbp_offset: i16,
}

impl Rule {
    pub const NONE: Rule = Rule { cfa: CFA_NONE, cfa_offset: 0, rbp: RBP_SAME, rbp_offset: 0 };
    const UNSUPPORTED: Rule = Rule { cfa: CFA_UNSUPPORTED, cfa_offset: 0, rbp: RBP_SAME, rbp_offset: 0 };
    const END: Rule = Rule { cfa: CFA_END, cfa_offset: 0, rbp: RBP_SAME, rbp_offset: 0 };
    const SIGNAL: Rule = Rule { cfa: CFA_SIGNAL, cfa_offset: 0, rbp: RBP_SAME, rbp_offset: 0 };

    pub fn row(self, pc_low: u16) -> UnwindRow {
        UnwindRow { pc_low, cfa: self.cfa, rbp: self.rbp, cfa_offset: self.cfa_offset, rbp_offset: self.rbp_offset }
    }
}

/// The (address, rule) rows of one FDE.
pub fn fde_rows<R: Reader<Offset = usize>, S: UnwindSection<R>>(
    section: &S,
    bases: &gimli::BaseAddresses,
    context: &mut UnwindContext<usize>,
    fde: &FrameDescriptionEntry<R>,
) -> gimli::Result<Vec<(u64, Rule)>> {
    let signal = fde.cie().is_signal_trampoline();
    let mut table = fde.rows(section, bases, context)?;
    let mut rows = Vec::new();
    while let Some(row) = table.next_row()? {
        let rule = if signal { Rule::SIGNAL } else { rule(section, row) };
        rows.push((row.start_address(), rule));
    }
    Ok(rows)
}

fn rule<R: Reader<Offset = usize>, S: UnwindSection<R>>(section: &S, row: &gimli::UnwindTableRow<usize>) -> Rule {
    // No rule for the return address: undefined, the outermost frame.
    match row.register(X86_64::RA).unwrap_or(RegisterRule::Undefined) {
        RegisterRule::Undefined => return Rule::END,
        // Every ordinary frame's return address is just below the CFA.
        RegisterRule::Offset(-8) => {}
        _ => return Rule::UNSUPPORTED,
    }
    let (cfa, cfa_offset, plt_threshold) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let kind = match *register {
                X86_64::RSP => CFA_RSP,
                X86_64::RBP => CFA_RBP,
                _ => return Rule::UNSUPPORTED,
            };
            (kind, *offset, None)
        }
        CfaRule::Expression(expression) => {
            let Ok(expression) = expression.get(section) else { return Rule::UNSUPPORTED };
            let Ok(bytes) = expression.0.to_slice() else { return Rule::UNSUPPORTED };
            match cfa_expression(&bytes) {
                Some(known) => known,
                None => return Rule::UNSUPPORTED,
            }
        }
    };
    let Ok(cfa_offset) = u16::try_from(cfa_offset) else { return Rule::UNSUPPORTED };
    let (rbp, rbp_offset) = match (plt_threshold, row.register(X86_64::RBP).unwrap_or(RegisterRule::SameValue)) {
        (Some(threshold), _) => (RBP_SAME, i16::from(threshold)),
        // Callee-saved: no rule means the caller's value is still in the register.
        (None, RegisterRule::Undefined | RegisterRule::SameValue) => (RBP_SAME, 0),
        (None, RegisterRule::Offset(offset)) => match i16::try_from(offset) {
            Ok(offset) => (RBP_SAVED, offset),
            Err(_) => return Rule::UNSUPPORTED,
        },
        _ => return Rule::UNSUPPORTED,
    };
    Rule { cfa, cfa_offset, rbp, rbp_offset }
}

/// The CFA expressions compilers and linkers write on x86-64: a PLT stub's
/// `RSP + 8 + ((RIP & 15) >= 11 ? 8 : 0)` (10 for some linkers), and `*(RSP + N)`.
/// Returns (rule, offset, the PLT's threshold).
fn cfa_expression(bytes: &[u8]) -> Option<(u8, i64, Option<u8>)> {
    let (&first, rest) = bytes.split_first()?;
    if first != DW_OP_breg7.0 {
        return None;
    }
    let (offset, rest) = sleb128(rest)?;
    match rest {
        [op] if *op == DW_OP_deref.0 => Some((CFA_DEREF_RSP, offset, None)),
        [breg16, 0, lit15, and, lit, ge, lit3, shl, plus]
            if *breg16 == DW_OP_breg16.0
                && *lit15 == DW_OP_lit15.0
                && *and == DW_OP_and.0
                && *ge == DW_OP_ge.0
                && *lit3 == DW_OP_lit3.0
                && *shl == DW_OP_shl.0
                && *plus == DW_OP_plus.0
                && (0x30..=0x4f).contains(lit) =>
        {
            Some((CFA_PLT, offset, Some(lit - 0x30)))
        }
        _ => None,
    }
}

fn sleb128(bytes: &[u8]) -> Option<(i64, &[u8])> {
    let mut value: i64 = 0;
    let mut shift = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        value |= i64::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            if shift < 64 && byte & 0x40 != 0 {
                value |= -1 << shift;
            }
            return Some((value, &bytes[i + 1..]));
        }
        if shift >= 63 {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plt_and_dereference_expressions() {
        // What ld writes for .plt: breg7 8; breg16 0; lit15; and; lit11; ge; lit3; shl; plus.
        let plt = [0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22];
        assert_eq!(cfa_expression(&plt), Some((CFA_PLT, 8, Some(11))));
        // breg7 160; deref (glibc's __restore_rt, as the CFA).
        assert_eq!(cfa_expression(&[0x77, 0xa0, 0x01, 0x06]), Some((CFA_DEREF_RSP, 160, None)));
        assert_eq!(cfa_expression(&[0x76, 0x08, 0x06]), None, "breg6 is not handled");
        assert_eq!(sleb128(&[0x7f]), Some((-1, &[][..])));
    }
}
