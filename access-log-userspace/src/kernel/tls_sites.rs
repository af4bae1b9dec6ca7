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

use object::{Object as _, ObjectSymbol as _};

use super::probe_sites::{cheap_site, first_call, Image, C_ARGUMENTS};

/// One uprobe pair to attach: an entry program and a return program at one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSite {
    /// What is probed, for messages: `SSL_read`, or `SSL_read+0x5`, or `internal read (via
    /// SSL_read)`.
    pub function: String,
    /// Offset in the file, as the kernel's uprobe takes it.
    pub file_offset: u64,
    pub entry_program: &'static str,
    /// None for an entry probe alone.
    pub exit_program: Option<&'static str>,
    /// The instruction there is single-stepped, not emulated: every hit costs a debug trap.
    pub single_steps: bool,
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
            exit_program: Some(programs.1),
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
        if cheap_site(&code, plain, &C_ARGUMENTS).is_some()
            && cheap_site(&code, extended, &C_ARGUMENTS).is_some()
        {
            continue;
        }
        // Both forms must lead to the same function, or it is not the shared internal one.
        let internal = first_call(&code, plain).filter(|&t| first_call(&code, extended) == Some(t));
        let Some(internal) = internal else {
            continue;
        };
        let Some(at) = cheap_site(&code, internal, &C_ARGUMENTS) else {
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
        let (at, single_steps) = match cheap_site(&code, address, &C_ARGUMENTS) {
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

    #[test]
    fn debian_libssl_gets_no_single_stepping_read_or_write_probe() {
        // Debian's libssl3 comes with openssl, which `cargo xtask setup` installs.
        let path = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
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
