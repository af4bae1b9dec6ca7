//! Where the TLS uprobes go so that they cost the gateway little.
//!
//! At a uprobe, x86-64 Linux emulates a few instructions (push of a register, near call, jmp
//! and jcc, nop) and single-steps a copy of any other: a second trap per hit, which under this
//! machine's hypervisor costs about 15 µs against 0.5 µs emulated (measured with a uprobe on
//! each kind of first instruction). Debian's SSL_read/SSL_write begin with stack set-up (`sub
//! $0x18,%rsp`), so probes at their entries single-step on every call. Each probe therefore goes
//! at the first emulated instruction of its function when nothing before it changes the stack
//! pointer or an argument register (the return probe needs the return address at the stack
//! pointer; the entry probe needs the arguments); failing that, for the read and write
//! families, into the internal function that both the plain and the _ex form call (OpenSSL's
//! `ssl_read_internal`/`ssl_write_internal`, which report the count through a pointer like the
//! _ex forms); failing that, at the entry, single-stepping, and the attach line says so.
use std::collections::HashMap;

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, OpAccess,
    OpKind, Register,
};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

/// One uprobe pair to attach: an entry program and a return program at one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSite {
    /// What is probed, for messages: `SSL_read`, or `SSL_read+0x5`, or `internal read (via
    /// SSL_read)`.
    pub function: String,
    /// Offset in the file, as the kernel's uprobe takes it.
    pub file_offset: u64,
    pub entry_program: &'static str,
    pub exit_program: &'static str,
    /// The instruction there is single-stepped, not emulated: every hit costs a debug trap.
    pub single_steps: bool,
}

/// How many instructions from a function's entry are looked at.
const SCAN: usize = 24;

/// The registers the probes read at a site: the stack pointer (return address) and the first
/// five arguments.
const KEPT: [Register; 6] = [
    Register::RSP,
    Register::RDI,
    Register::RSI,
    Register::RDX,
    Register::RCX,
    Register::R8,
];

/// Code bytes and file layout of one ELF file, by virtual address.
struct Image<'a> {
    sections: Vec<(u64, &'a [u8], u64)>,
    text: Option<(u64, u64)>,
}

impl<'a> Image<'a> {
    fn new(file: &object::File<'a>) -> Self {
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

    fn file_offset(&self, address: u64) -> Option<u64> {
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
/// entry: no branch, no write to memory, the stack pointer or an argument register.
fn harmless(instruction: &Instruction, info: &mut InstructionInfoFactory) -> bool {
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
        .any(|r| writes(r.access()) && KEPT.contains(&r.register().full_register()))
}

/// The first place in the function at `address` where a probe is emulated and sees what it
/// would see at the entry.
fn cheap_site(code: &Image<'_>, address: u64) -> Option<u64> {
    let mut info = InstructionInfoFactory::new();
    for instruction in code.instructions(address) {
        if emulated(&instruction) {
            return Some(instruction.ip());
        }
        if !harmless(&instruction, &mut info) {
            return None;
        }
    }
    None
}

/// The target of the first direct call in the function at `address`, before any return or
/// jump away, when it lies in `.text` (not a PLT stub).
fn first_call(code: &Image<'_>, address: u64) -> Option<u64> {
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

/// (symbol, entry program, return program) for the functions probed at their own entries.
const DIRECT: &[(&str, &str, &str)] = &[
    ("SSL_read", "ssl_read_enter", "ssl_read_exit"),
    ("SSL_read_ex", "ssl_read_ex_enter", "ssl_read_ex_exit"),
    ("SSL_write", "ssl_write_enter", "ssl_write_exit"),
    ("SSL_write_ex", "ssl_write_ex_enter", "ssl_write_ex_exit"),
    (
        "SSL_do_handshake",
        "ssl_handshake_enter",
        "ssl_handshake_exit",
    ),
    ("SSL_accept", "ssl_handshake_enter", "ssl_handshake_exit"),
    ("SSL_connect", "ssl_handshake_enter", "ssl_handshake_exit"),
];

/// One family (read or write): its plain and _ex symbols, and the programs for its internal
/// function.
struct Family {
    plain: &'static str,
    extended: &'static str,
    internal: &'static str,
    programs: (&'static str, &'static str),
}

/// Every probe site for the TLS library in `data` (an ELF file) that exports these symbols.
pub fn sites(data: &[u8]) -> Result<Vec<ProbeSite>, object::Error> {
    let file = object::File::parse(data)?;
    let symbols: HashMap<&str, u64> = file
        .dynamic_symbols()
        .chain(file.symbols())
        .filter(|s| s.is_definition())
        .filter_map(|s| Some((s.name().ok()?, s.address())))
        .collect();
    let code = Image::new(&file);
    let site = |function: String, address: u64, single_steps, programs: (&'static str, _)| {
        Some(ProbeSite {
            function,
            file_offset: code.file_offset(address)?,
            entry_program: programs.0,
            exit_program: programs.1,
            single_steps,
        })
    };
    // OpenSSL 3.2 added SSL_write_ex2 and a flags argument before ssl_write_internal's count.
    let write_programs = if symbols.contains_key("SSL_write_ex2") {
        ("ssl_write_flags_enter", "ssl_write_flags_exit")
    } else {
        ("ssl_write_internal_enter", "ssl_write_internal_exit")
    };
    let families = [
        Family {
            plain: "SSL_read",
            extended: "SSL_read_ex",
            internal: "internal read",
            programs: ("ssl_read_internal_enter", "ssl_read_internal_exit"),
        },
        Family {
            plain: "SSL_write",
            extended: "SSL_write_ex",
            internal: "internal write",
            programs: write_programs,
        },
    ];
    let mut out = Vec::new();
    let mut done: Vec<&str> = Vec::new();
    for family in &families {
        let (Some(&plain), Some(&extended)) =
            (symbols.get(family.plain), symbols.get(family.extended))
        else {
            continue;
        };
        if cheap_site(&code, plain).is_some() && cheap_site(&code, extended).is_some() {
            continue;
        }
        // Both forms must lead to the same function, or it is not the shared internal one.
        let internal = first_call(&code, plain).filter(|&t| first_call(&code, extended) == Some(t));
        let Some(internal) = internal else {
            continue;
        };
        let Some(at) = cheap_site(&code, internal) else {
            continue;
        };
        let name = format!("{} (via {})", family.internal, family.plain);
        out.extend(site(name, at, false, family.programs));
        done.extend([family.plain, family.extended]);
    }
    for (symbol, entry, exit) in DIRECT {
        if done.contains(symbol) {
            continue;
        }
        let Some(&address) = symbols.get(symbol) else {
            continue;
        };
        let (at, single_steps) = match cheap_site(&code, address) {
            Some(at) => (at, false),
            None => (address, true),
        };
        let name = if at == address {
            (*symbol).to_owned()
        } else {
            format!("{symbol}+{:#x}", at - address)
        };
        out.extend(site(name, at, single_steps, (*entry, *exit)));
    }
    Ok(out)
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
            cheap_site(&code(&[0x55, 0x48, 0x89, 0xe5]), 0x1000),
            Some(0x1000)
        );
    }

    #[test]
    fn endbr64_and_a_flag_test_are_stepped_over() {
        // endbr64; cmpq $0x0,0x30(%rdi); je +9
        let bytes = [
            0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x83, 0x7f, 0x30, 0x00, 0x74, 0x09,
        ];
        assert_eq!(cheap_site(&code(&bytes), 0x1000), Some(0x1009));
    }

    #[test]
    fn stack_set_up_first_has_no_cheap_site() {
        // Debian's SSL_read: sub $0x18,%rsp; mov %fs:0x28,%rax; ...
        let bytes = [
            0x48, 0x83, 0xec, 0x18, 0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0x00, 0x00, 0x00,
        ];
        assert_eq!(cheap_site(&code(&bytes), 0x1000), None);
    }

    #[test]
    fn an_argument_written_before_the_branch_ends_the_search() {
        // xor %esi,%esi; jmp +0
        assert_eq!(cheap_site(&code(&[0x31, 0xf6, 0xeb, 0x00]), 0x1000), None);
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
        assert_eq!(cheap_site(&code, 0x1019), Some(0x1019));
    }

    #[test]
    fn a_call_outside_text_is_not_followed() {
        // call far below the section (a PLT stub)
        let bytes = [0xe8, 0x00, 0xf0, 0xff, 0xff];
        assert_eq!(first_call(&code(&bytes), 0x1000), None);
    }

    #[test]
    fn debian_libssl_gets_no_single_stepping_read_or_write_probe() {
        let path = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
        let Ok(data) = std::fs::read(path) else {
            eprintln!("{path} is absent: nothing to check");
            return;
        };
        let sites = sites(&data).expect("libssl parses");
        let names: Vec<_> = sites.iter().map(|s| s.function.as_str()).collect();
        for family in ["read", "write"] {
            assert!(
                sites
                    .iter()
                    .any(|s| s.function.contains(family) && !s.single_steps),
                "no cheap {family} site in {names:?}"
            );
        }
        assert!(sites
            .iter()
            .filter(|s| s.entry_program.starts_with("ssl_read")
                || s.entry_program.starts_with("ssl_write"))
            .all(|s| !s.single_steps));
    }
}
