//! Go programs (Caddy, Traefik, ...): where to probe their net/http transport. A Go executable
//! keeps its function table (`.gopclntab`) even when stripped; this reads it (the layout of Go
//! 1.18 and later, whose register ABI puts the running goroutine in R14) to find
//! `(*persistConn).roundTrip` and `(*persistConn).writeLoop`, and puts each probe at the first
//! instruction the kernel emulates after Go's stack check, where the connection (RAX) and the
//! goroutine (R14) are still those of the entry.
use iced_x86::Register;
use object::{Object as _, ObjectSection as _};

use super::{
    probe_sites::{cheap_site, Image},
    tls_sites::ProbeSite,
};

/// The functions probed, with their programs.
const FUNCTIONS: &[(&str, &str)] = &[
    ("net/http.(*persistConn).roundTrip", "go_round_trip"),
    ("net/http.(*persistConn).writeLoop", "go_write_loop"),
];

/// What the probes read: the stack pointer, the receiver (RAX) and first argument (RBX), and
/// the goroutine (R14).
const GO_REGISTERS: [Register; 4] = [Register::RSP, Register::RAX, Register::RBX, Register::R14];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GoError {
    #[error("not a Go program")]
    NotGo,
    #[error("its function table is of a Go older than 1.18 (magic {0:#x})")]
    OldGo(u32),
    #[error("its function table is cut short")]
    Malformed,
    #[error("it has no {0} (no net/http client in it?)")]
    Missing(&'static str),
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?))
}

/// The entry address of each of `names` in a Go function table (`.gopclntab`, Go 1.18+).
fn entries(table: &[u8], names: &[&str]) -> Result<Vec<Option<u64>>, GoError> {
    let magic = u32_at(table, 0).ok_or(GoError::Malformed)?;
    // 1.18 and 1.19 write 0xfffffff0, 1.20 and later 0xfffffff1, with the same header.
    if magic != 0xffff_fff0 && magic != 0xffff_fff1 {
        return Err(GoError::OldGo(magic));
    }
    let field = |index: usize| u64_at(table, 8 + 8 * index).ok_or(GoError::Malformed);
    let functions = field(0)? as usize;
    let text_start = field(2)?;
    let names_at = field(3)? as usize;
    let functab_at = field(7)? as usize;
    let mut found = vec![None; names.len()];
    for index in 0..functions {
        let entry = functab_at + 8 * index;
        let entry_offset = u32_at(table, entry).ok_or(GoError::Malformed)?;
        let function = functab_at + u32_at(table, entry + 4).ok_or(GoError::Malformed)? as usize;
        let name_offset = u32_at(table, function + 4).ok_or(GoError::Malformed)? as usize;
        let name_at = names_at + name_offset;
        let name = table.get(name_at..).ok_or(GoError::Malformed)?;
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        if let Some(slot) = names.iter().position(|n| n.as_bytes() == name) {
            found[slot] = Some(text_start + entry_offset as u64);
        }
    }
    Ok(found)
}

/// Whether the process runs a Go executable (one with Go's build information).
pub fn is_go_program(pid: u32) -> bool {
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    let path = std::path::PathBuf::from(format!("/proc/{pid}/root"))
        .join(exe.to_string_lossy().trim_start_matches('/'));
    std::fs::read(path)
        .ok()
        .and_then(|data| {
            object::File::parse(&*data)
                .ok()
                .map(|file| file.section_by_name(".go.buildinfo").is_some())
        })
        .unwrap_or(false)
}

/// The probe sites of a Go executable's net/http transport.
pub fn sites(data: &[u8]) -> Result<Vec<ProbeSite>, GoError> {
    let file = object::File::parse(data).map_err(|_| GoError::NotGo)?;
    if file.section_by_name(".go.buildinfo").is_none() {
        return Err(GoError::NotGo);
    }
    let table = file
        .section_by_name(".gopclntab")
        .and_then(|s| s.data().ok())
        .ok_or(GoError::Malformed)?;
    let names: Vec<&str> = FUNCTIONS.iter().map(|(name, _)| *name).collect();
    let addresses = entries(table, &names)?;
    let code = Image::new(&file);
    let mut out = Vec::new();
    for ((name, program), address) in FUNCTIONS.iter().zip(addresses) {
        let address = address.ok_or(GoError::Missing(name))?;
        let (at, single_steps) = match cheap_site(&code, address, &GO_REGISTERS) {
            Some(at) => (at, false),
            None => (address, true),
        };
        out.push(ProbeSite {
            function: format!("{name}+{:#x}", at - address),
            file_offset: code.file_offset(at).ok_or(GoError::Malformed)?,
            entry_program: program,
            exit_program: None,
            single_steps,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caddy_has_its_transport_probed_past_the_stack_check() {
        // Debian's Caddy (Go 1.19, stripped), which `cargo xtask setup` installs.
        let data = std::fs::read("/usr/bin/caddy").expect("/usr/bin/caddy");
        let found = sites(&data).expect("Caddy's transport");
        assert_eq!(found.len(), 2, "{found:?}");
        for site in &found {
            assert!(!site.single_steps, "{site:?}");
            assert!(site.function.contains("+0x"), "{site:?}");
        }
        let not_go = std::fs::read("/usr/sbin/nginx").expect("/usr/sbin/nginx");
        assert_eq!(sites(&not_go), Err(GoError::NotGo));
    }
}
