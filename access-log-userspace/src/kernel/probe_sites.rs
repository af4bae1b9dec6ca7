//! Where a uprobe goes so that it costs the probed process little.
//!
//! At a uprobe, x86-64 Linux emulates a few instructions (push of a register, near call, jmp
//! and jcc, nop) and single-steps a copy of any other: a second trap per hit, which under this
//! machine's hypervisor costs about 15 µs against 0.5 µs emulated (measured with a uprobe on
//! each kind of first instruction). A probe therefore goes at the first emulated instruction of
//! its function when nothing before it changes what the probe reads (the registers it is
//! given, memory); the TLS sites (`tls_sites`) and the Go runtime sites (`go`) use this.
use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, OpAccess,
    OpKind, Register,
};
use object::{Object as _, ObjectSection as _};

/// How many instructions from a function's entry are looked at.
const SCAN: usize = 24;

/// The registers the TLS probes read at a site: the stack pointer (return address) and the
/// first five arguments of the C calling convention.
pub const C_ARGUMENTS: [Register; 6] = [
    Register::RSP,
    Register::RDI,
    Register::RSI,
    Register::RDX,
    Register::RCX,
    Register::R8,
];

/// Code bytes and file layout of one ELF file, by virtual address.
pub struct Image<'a> {
    sections: Vec<(u64, &'a [u8], u64)>,
    text: Option<(u64, u64)>,
}

impl<'a> Image<'a> {
    pub fn new(file: &object::File<'a>) -> Self {
        let mut sections = Vec::new();
        let mut text = None;
        for section in file.sections() {
            let (Ok(data), Some((offset, _))) = (section.data(), section.file_range()) else {
                continue;
            };
            if section.name() == Ok(".text") {
                text = Some((section.address(), section.address() + section.size()));
            }
            sections.push((section.address(), data, offset));
        }
        Image { sections, text }
    }

    /// The bytes from `address` to the end of its section.
    fn bytes_at(&self, address: u64) -> Option<&'a [u8]> {
        self.sections.iter().find_map(|(start, data, _)| {
            let index = address.checked_sub(*start)? as usize;
            data.get(index..).filter(|rest| !rest.is_empty())
        })
    }

    pub fn file_offset(&self, address: u64) -> Option<u64> {
        self.sections.iter().find_map(|(start, data, offset)| {
            let index = address.checked_sub(*start)?;
            (index < data.len() as u64).then_some(offset + index)
        })
    }

    fn in_text(&self, address: u64) -> bool {
        self.text
            .is_some_and(|(start, end)| (start..end).contains(&address))
    }

    fn instructions(&self, address: u64) -> Vec<Instruction> {
        let Some(bytes) = self.bytes_at(address) else {
            return Vec::new();
        };
        let mut decoder = Decoder::with_ip(64, bytes, address, DecoderOptions::NONE);
        let mut out = Vec::new();
        while decoder.can_decode() && out.len() < SCAN {
            let instruction = decoder.decode();
            if instruction.is_invalid() {
                break;
            }
            out.push(instruction);
        }
        out
    }
}

/// Whether the kernel emulates this instruction at a uprobe instead of single-stepping it.
fn emulated(instruction: &Instruction) -> bool {
    match instruction.code() {
        Code::Push_r64 | Code::Nopd | Code::Nopq | Code::Nopw => true,
        _ => {
            matches!(
                instruction.flow_control(),
                FlowControl::Call
                    | FlowControl::UnconditionalBranch
                    | FlowControl::ConditionalBranch
            ) && instruction.op0_kind() == OpKind::NearBranch64
        }
    }
}

/// Whether an instruction before the site leaves everything the probes read as it was at the
/// entry: no branch, no write to memory or to a register of `kept`.
fn harmless(
    instruction: &Instruction,
    info: &mut InstructionInfoFactory,
    kept: &[Register],
) -> bool {
    if instruction.flow_control() != FlowControl::Next {
        return false;
    }
    let info = info.info(instruction);
    let writes = |access: OpAccess| {
        matches!(
            access,
            OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
        )
    };
    if info.used_memory().iter().any(|m| writes(m.access())) {
        return false;
    }
    !info
        .used_registers()
        .iter()
        .any(|r| writes(r.access()) && kept.contains(&r.register().full_register()))
}

/// The first place in the function at `address` where a probe is emulated and sees the
/// registers of `kept` as they were at the entry.
pub fn cheap_site(code: &Image<'_>, address: u64, kept: &[Register]) -> Option<u64> {
    let mut info = InstructionInfoFactory::new();
    for instruction in code.instructions(address) {
        if emulated(&instruction) {
            return Some(instruction.ip());
        }
        if !harmless(&instruction, &mut info, kept) {
            return None;
        }
    }
    None
}

/// The target of the first direct call in the function at `address`, before any return or
/// jump away, when it lies in `.text` (not a PLT stub).
pub fn first_call(code: &Image<'_>, address: u64) -> Option<u64> {
    for instruction in code.instructions(address) {
        match instruction.flow_control() {
            FlowControl::Call if instruction.op0_kind() == OpKind::NearBranch64 => {
                let target = instruction.near_branch_target();
                return code.in_text(target).then_some(target);
            }
            FlowControl::Return
            | FlowControl::UnconditionalBranch
            | FlowControl::IndirectBranch
            | FlowControl::Interrupt
            | FlowControl::Exception => return None,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake file: one `.text` section of `bytes` at 0x1000, file offset 0x1000.
    fn code(bytes: &[u8]) -> Image<'_> {
        Image {
            sections: vec![(0x1000, bytes, 0x1000)],
            text: Some((0x1000, 0x1000 + bytes.len() as u64)),
        }
    }

    #[test]
    fn a_push_at_the_entry_is_the_site() {
        // push %rbp; mov %rsp,%rbp
        assert_eq!(
            cheap_site(&code(&[0x55, 0x48, 0x89, 0xe5]), 0x1000, &C_ARGUMENTS),
            Some(0x1000)
        );
    }

    #[test]
    fn endbr64_and_a_flag_test_are_stepped_over() {
        // endbr64; cmpq $0x0,0x30(%rdi); je +9
        let bytes = [
            0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x83, 0x7f, 0x30, 0x00, 0x74, 0x09,
        ];
        assert_eq!(
            cheap_site(&code(&bytes), 0x1000, &C_ARGUMENTS),
            Some(0x1009)
        );
    }

    #[test]
    fn stack_set_up_first_has_no_cheap_site() {
        // Debian's SSL_read: sub $0x18,%rsp; mov %fs:0x28,%rax; ...
        let bytes = [
            0x48, 0x83, 0xec, 0x18, 0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0x00, 0x00, 0x00,
        ];
        assert_eq!(cheap_site(&code(&bytes), 0x1000, &C_ARGUMENTS), None);
    }

    #[test]
    fn an_argument_written_before_the_branch_ends_the_search() {
        // xor %esi,%esi; jmp +0
        assert_eq!(
            cheap_site(&code(&[0x31, 0xf6, 0xeb, 0x00]), 0x1000, &C_ARGUMENTS),
            None
        );
    }

    #[test]
    fn the_first_call_of_a_wrapper_is_found() {
        // sub $0x8,%rsp; call +0x10 (to 0x1019); xor %edx,%edx; ret; padding; target: push %r13
        let mut bytes = vec![
            0x48, 0x83, 0xec, 0x08, 0xe8, 0x10, 0x00, 0x00, 0x00, 0x31, 0xd2, 0xc3,
        ];
        bytes.resize(0x19, 0xcc);
        bytes.extend([0x41, 0x55, 0xc3]);
        let code = code(&bytes);
        assert_eq!(first_call(&code, 0x1000), Some(0x1019));
        assert_eq!(cheap_site(&code, 0x1019, &C_ARGUMENTS), Some(0x1019));
    }

    #[test]
    fn a_call_outside_text_is_not_followed() {
        // call far below the section (a PLT stub)
        let bytes = [0xe8, 0x00, 0xf0, 0xff, 0xff];
        assert_eq!(first_call(&code(&bytes), 0x1000), None);
    }
}

#[cfg(test)]
mod go_prologue {
    use super::*;

    #[test]
    fn a_go_stack_check_is_stepped_over_for_go_registers() {
        // Go's prologue: lea -0x70(%rsp),%r12; cmp 0x10(%r14),%r12; jbe (stack growth)
        let bytes = [
            0x4c, 0x8d, 0x64, 0x24, 0x90, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x06, 0x03, 0x00,
            0x00,
        ];
        let image = Image {
            sections: vec![(0x1000, &bytes[..], 0x1000)],
            text: Some((0x1000, 0x1000 + bytes.len() as u64)),
        };
        let go = [Register::RSP, Register::RAX, Register::RBX, Register::R14];
        assert_eq!(cheap_site(&image, 0x1000, &go), Some(0x1009));
        // Keeping r12 (it is written first), there is no such place.
        assert_eq!(cheap_site(&image, 0x1000, &[Register::R12]), None);
    }
}
