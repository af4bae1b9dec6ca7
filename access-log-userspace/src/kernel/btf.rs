//! A reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`) that answers one question: at what
//! byte offset does a member sit in a kernel struct. The kernel programs walk a few kernel
//! structures (from a task to a socket's state and peer) with offsets read here at load time,
//! since the Rust eBPF toolchain has no CO-RE relocations.
use std::collections::HashMap;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("BTF data is cut short or malformed ({0})")]
    Malformed(&'static str),
    #[error("BTF has no struct {0}")]
    NoStruct(String),
    #[error("BTF struct {0} has no member {1}")]
    NoMember(String, String),
}

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

/// One struct or union member: its name, its type, its offset in bits.
#[derive(Clone, Copy, Debug)]
struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
}

#[derive(Clone, Debug)]
enum Type {
    /// A struct or union with its members.
    Aggregate(Vec<Member>),
    /// Any other type (only struct and union members matter here).
    Other,
}

pub struct Btf {
    strings: Vec<u8>,
    /// Indexed by type id (id 0 is void).
    types: Vec<Type>,
    /// Struct type ids by name.
    structs: HashMap<String, u32>,
}

fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

impl Btf {
    /// The running kernel's BTF.
    pub fn from_kernel() -> Result<Btf, std::io::Error> {
        let data = std::fs::read("/sys/kernel/btf/vmlinux")?;
        Btf::parse(&data).map_err(std::io::Error::other)
    }

    /// Parses little-endian BTF data (the only kind an x86-64 kernel has).
    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        let malformed = BtfError::Malformed;
        if u16_at(data, 0) != Some(MAGIC) {
            return Err(malformed("bad magic"));
        }
        let header_len = u32_at(data, 4).ok_or(malformed("header"))? as usize;
        let field = |at| {
            u32_at(data, at)
                .ok_or(malformed("header"))
                .map(|v| v as usize)
        };
        let (type_off, type_len) = (field(8)?, field(12)?);
        let (str_off, str_len) = (field(16)?, field(20)?);
        let types_at = header_len + type_off;
        let strings_at = header_len + str_off;
        let type_data = data
            .get(types_at..types_at + type_len)
            .ok_or(malformed("type section"))?;
        let strings = data
            .get(strings_at..strings_at + str_len)
            .ok_or(malformed("string section"))?
            .to_vec();
        let mut btf = Btf {
            strings,
            types: vec![Type::Other],
            structs: HashMap::new(),
        };
        let mut at = 0;
        while at < type_data.len() {
            let name = u32_at(type_data, at).ok_or(malformed("type"))?;
            let info = u32_at(type_data, at + 4).ok_or(malformed("type"))?;
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let bitfields = info >> 31 == 1;
            let extra = match kind {
                1 | 14 | 17 => 4,             // int, var, decl tag
                3 => 12,                      // array
                4 | 5 | 15 | 19 => 12 * vlen, // struct, union, datasec, enum64
                6 | 13 => 8 * vlen,           // enum, function prototype
                0 | 2 | 7..=12 | 16 | 18 => 0,
                _ => return Err(malformed("unknown type kind")),
            };
            let body = type_data
                .get(at..at + extra)
                .ok_or(malformed("type body"))?;
            let id = btf.types.len() as u32;
            if kind == KIND_STRUCT || kind == KIND_UNION {
                let members = (0..vlen)
                    .map(|index| {
                        let base = index * 12;
                        let offset = u32_at(body, base + 8).unwrap_or(0);
                        Member {
                            name: u32_at(body, base).unwrap_or(0),
                            type_id: u32_at(body, base + 4).unwrap_or(0),
                            bit_offset: if bitfields {
                                offset & 0xff_ffff
                            } else {
                                offset
                            },
                        }
                    })
                    .collect();
                btf.types.push(Type::Aggregate(members));
                if kind == KIND_STRUCT && name != 0 {
                    let name = btf.string(name).to_owned();
                    btf.structs.entry(name).or_insert(id);
                }
            } else {
                btf.types.push(Type::Other);
            }
            at += extra;
        }
        Ok(btf)
    }

    fn string(&self, offset: u32) -> &str {
        let bytes = self.strings.get(offset as usize..).unwrap_or_default();
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        std::str::from_utf8(&bytes[..end]).unwrap_or("")
    }

    /// The byte offset of `member` in struct `name`, looking through anonymous struct and
    /// union members as C does.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self
            .structs
            .get(name)
            .ok_or_else(|| BtfError::NoStruct(name.to_owned()))?;
        self.find(id, member, 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember(name.to_owned(), member.to_owned()))
    }

    fn find(&self, id: u32, member: &str, base_bits: u32) -> Option<u32> {
        let Type::Aggregate(members) = self.types.get(id as usize)? else {
            return None;
        };
        for m in members {
            let name = self.string(m.name);
            if name == member {
                return Some(base_bits + m.bit_offset);
            }
            if name.is_empty() {
                if let Some(found) = self.find(m.type_id, member, base_bits + m.bit_offset) {
                    return Some(found);
                }
            }
        }
        None
    }
}

/// The offsets the kernel programs walk with, from this kernel's BTF; all zero (the walk
/// skipped) when a member is missing, with why.
pub fn kernel_offsets() -> (access_log_common::KernelOffsets, Option<String>) {
    let read = || -> Result<access_log_common::KernelOffsets, String> {
        let btf = Btf::from_kernel().map_err(|e| e.to_string())?;
        let at = |name: &str, member: &str| btf.member_offset(name, member);
        (|| {
            Ok::<_, BtfError>(access_log_common::KernelOffsets {
                task_files: at("task_struct", "files")?,
                files_fdt: at("files_struct", "fdt")?,
                fdtable_max_fds: at("fdtable", "max_fds")?,
                fdtable_fd: at("fdtable", "fd")?,
                file_private_data: at("file", "private_data")?,
                socket_sk: at("socket", "sk")?,
                skc_state: at("sock_common", "skc_state")?,
                skc_family: at("sock_common", "skc_family")?,
                skc_daddr: at("sock_common", "skc_daddr")?,
                skc_dport: at("sock_common", "skc_dport")?,
                skc_v6_daddr: at("sock_common", "skc_v6_daddr")?,
                _pad: 0,
            })
        })()
        .map_err(|e| e.to_string())
    };
    match read() {
        Ok(offsets) => (offsets, None),
        Err(why) => (access_log_common::KernelOffsets::default(), Some(why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_members_of_the_running_kernel_through_anonymous_unions() {
        // Every machine this runs on has BTF (a requirement of access-log); the offsets of
        // task_struct differ by kernel build, so only their order and range are checked.
        let btf = Btf::from_kernel().expect("this kernel's BTF");
        let files = btf.member_offset("task_struct", "files").unwrap();
        let pid = btf.member_offset("task_struct", "pid").unwrap();
        assert!(files > 0 && pid > 0 && files != pid);
        // skc_daddr sits in an anonymous struct inside an anonymous union of sock_common,
        // at its very start; skc_state comes later.
        assert_eq!(btf.member_offset("sock_common", "skc_daddr").unwrap(), 0);
        assert!(btf.member_offset("sock_common", "skc_state").unwrap() > 0);
        assert_eq!(
            btf.member_offset("socket", "nothing"),
            Err(BtfError::NoMember("socket".into(), "nothing".into()))
        );
        assert!(matches!(
            Btf::parse(b"\x9f\xeb"),
            Err(BtfError::Malformed(_))
        ));
    }
}
