//! HPACK (RFC 7541) header blocks to fields, with the dynamic table kept per connection and
//! direction (Huffman strings through the `httlib-huffman` crate's table-driven decoder).
//!
//! A connection joined mid-stream holds table entries the observer never saw. Its table stays
//! true anyway for what it did see: a new entry takes index 62 on both sides and pushes the
//! older ones up, so the entries inserted since joining have the peer's indexes, and the
//! observer's table (a prefix of the peer's, never larger) evicts no later than it should
//! matter. A field that refers to an entry past them is [`Field::Unknown`], never another
//! entry's value. When bytes of a block are lost, insertions may have been missed and the
//! indexes no longer line up: every dynamic reference is then unknown, until the peer empties
//! its table (a size update to 0).
use std::collections::VecDeque;

/// One header field of a block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Field {
    Known {
        name: Vec<u8>,
        value: Vec<u8>,
    },
    /// It refers to a table entry the observer does not know.
    Unknown,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HpackError {
    #[error("header block cut short")]
    Truncated,
    #[error("integer too large")]
    Overflow,
    #[error("table index {0} does not exist")]
    BadIndex(usize),
    #[error("invalid Huffman string")]
    Huffman,
    #[error("table size update to {0}, above the limit")]
    TableSize(usize),
}

/// RFC 7541 Appendix A.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// The table size both sides start with (SETTINGS_HEADER_TABLE_SIZE's default), and the most
/// this decoder accepts a peer to ask for.
const DEFAULT_TABLE_SIZE: usize = 4096;
const MAX_TABLE_SIZE: usize = 1 << 20;

/// A dynamic table entry: its name, unknown when it was inserted by a reference to an entry
/// the observer did not know.
#[derive(Clone, Debug)]
struct Entry {
    name: Option<Vec<u8>>,
    value: Vec<u8>,
}

impl Entry {
    /// RFC 7541 4.1: an entry's size is its name and value lengths plus 32 (an unknown name
    /// counts as empty: the table may then hold more than the peer's, never less).
    fn size(&self) -> usize {
        self.name.as_ref().map_or(0, Vec::len) + self.value.len() + 32
    }
}

pub struct Decoder {
    /// Newest first: index 62 is `table[0]`.
    table: VecDeque<Entry>,
    size: usize,
    max_size: usize,
    /// The connection was joined after it began: indexes past the table are entries from
    /// before, unknown rather than invalid.
    joined_late: bool,
    /// Bytes of a block were lost: the indexes may not line up with the peer's any more.
    diverged: bool,
}

impl Decoder {
    /// A decoder for a connection seen from its start, or (`joined_late`) from its middle.
    pub fn new(joined_late: bool) -> Decoder {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size: DEFAULT_TABLE_SIZE,
            joined_late,
            diverged: false,
        }
    }

    /// Bytes of a header block were lost: insertions may have been missed.
    pub fn lose_track(&mut self) {
        self.diverged = true;
    }

    /// Whether dynamic references can be trusted.
    pub fn in_step(&self) -> bool {
        !self.diverged
    }

    /// The fields of one whole header block (HEADERS and its CONTINUATIONs, joined).
    pub fn decode(&mut self, block: &[u8]) -> Result<Vec<Field>, HpackError> {
        let mut fields = Vec::new();
        let mut at = 0;
        while at < block.len() {
            let first = block[at];
            if first & 0x80 != 0 {
                // Indexed field.
                let (index, used) = integer(&block[at..], 7)?;
                at += used;
                fields.push(match self.lookup(index)? {
                    Some(Entry {
                        name: Some(name),
                        value,
                    }) => Field::Known { name, value },
                    Some(Entry { name: None, .. }) | None => Field::Unknown,
                });
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update.
                let (size, used) = integer(&block[at..], 5)?;
                at += used;
                if size > MAX_TABLE_SIZE {
                    return Err(HpackError::TableSize(size));
                }
                self.max_size = size;
                if size == 0 {
                    // The peer emptied its table: both sides agree again.
                    self.table.clear();
                    self.size = 0;
                    self.diverged = false;
                    self.joined_late = false;
                }
                self.evict();
            } else {
                // Literal: with incremental indexing (01), without (0000) or never (0001).
                let (prefix, indexing) = if first & 0xc0 == 0x40 {
                    (6, true)
                } else {
                    (4, false)
                };
                let (index, used) = integer(&block[at..], prefix)?;
                at += used;
                let name = if index == 0 {
                    let (name, used) = self.string(&block[at..])?;
                    at += used;
                    Some(name)
                } else {
                    self.lookup(index)?.and_then(|entry| entry.name)
                };
                let (value, used) = self.string(&block[at..])?;
                at += used;
                if indexing {
                    self.insert(Entry {
                        name: name.clone(),
                        value: value.clone(),
                    });
                }
                fields.push(match name {
                    Some(name) => Field::Known { name, value },
                    None => Field::Unknown,
                });
            }
        }
        Ok(fields)
    }

    /// The entry at `index` (1-61 static, 62 on dynamic): None when it is not known.
    fn lookup(&self, index: usize) -> Result<Option<Entry>, HpackError> {
        match index {
            0 => Err(HpackError::BadIndex(0)),
            1..=61 => {
                let (name, value) = STATIC[index - 1];
                Ok(Some(Entry {
                    name: Some(name.into()),
                    value: value.into(),
                }))
            }
            _ if self.diverged => Ok(None),
            _ => match self.table.get(index - 62) {
                Some(entry) => Ok(Some(entry.clone())),
                None if self.joined_late => Ok(None),
                None => Err(HpackError::BadIndex(index)),
            },
        }
    }

    fn insert(&mut self, entry: Entry) {
        self.size += entry.size();
        self.table.push_front(entry);
        self.evict();
    }

    fn evict(&mut self) {
        while self.size > self.max_size {
            match self.table.pop_back() {
                Some(entry) => self.size -= entry.size(),
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
    }

    /// A string literal (RFC 7541 5.2): its bytes and how many bytes it took.
    fn string(&mut self, bytes: &[u8]) -> Result<(Vec<u8>, usize), HpackError> {
        let huffman = bytes.first().ok_or(HpackError::Truncated)? & 0x80 != 0;
        let (length, used) = integer(bytes, 7)?;
        let end = used.checked_add(length).ok_or(HpackError::Overflow)?;
        let raw = bytes.get(used..end).ok_or(HpackError::Truncated)?;
        let text = if huffman {
            // A flattened code table read four bits at a time: a decoder that walks the code a
            // bit at a time, looking each prefix up in a hash map, took half the CPU of a
            // replay of HTTP/2 traffic.
            let mut text = Vec::with_capacity(raw.len() * 8 / 5 + 1);
            httlib_huffman::decode(raw, &mut text, httlib_huffman::DecoderSpeed::FourBits)
                .map_err(|_| HpackError::Huffman)?;
            text
        } else {
            raw.to_vec()
        };
        Ok((text, end))
    }
}

/// Where the values of the literal fields that `sensitive` names stand in a header block: the
/// bytes of each value's string literal (after its length prefix), and whether they are
/// Huffman-coded. Found without a decoder's table, so a name given by a dynamic table index is
/// not known here (its field is left alone); names given as literals or by the static table
/// are. Fields before a malformed or cut representation are still found.
pub fn sensitive_values(
    block: &[u8],
    sensitive: &dyn Fn(&[u8]) -> bool,
) -> Vec<(std::ops::Range<usize>, bool)> {
    let mut found = Vec::new();
    let mut at = 0;
    while at < block.len() {
        let first = block[at];
        let prefix = if first & 0x80 != 0 {
            7
        } else if first & 0xe0 == 0x20 {
            5
        } else if first & 0xc0 == 0x40 {
            6
        } else {
            4
        };
        let Ok((index, used)) = integer(&block[at..], prefix) else {
            break;
        };
        at += used;
        if prefix == 7 || prefix == 5 {
            // An indexed field or a table size update: no literal.
            continue;
        }
        let name_is_sensitive = if index == 0 {
            let Some((name, used)) = literal(&block[at..]) else {
                break;
            };
            at += used;
            sensitive(&name)
        } else {
            STATIC
                .get(index - 1)
                .is_some_and(|(name, _)| sensitive(name.as_bytes()))
        };
        let Some(huffman) = block.get(at).map(|b| b & 0x80 != 0) else {
            break;
        };
        let Ok((length, used)) = integer(&block[at..], 7) else {
            break;
        };
        let start = at + used;
        let end = start.saturating_add(length).min(block.len());
        if name_is_sensitive {
            found.push((start..end, huffman));
        }
        if start.saturating_add(length) > block.len() {
            break;
        }
        at = end;
    }
    found
}

/// A string literal's text (decoded when Huffman-coded) and the bytes it took.
fn literal(bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
    let huffman = bytes.first()? & 0x80 != 0;
    let (length, used) = integer(bytes, 7).ok()?;
    let raw = bytes.get(used..used.checked_add(length)?)?;
    let text = if huffman {
        let mut text = Vec::with_capacity(raw.len() * 8 / 5 + 1);
        httlib_huffman::decode(raw, &mut text, httlib_huffman::DecoderSpeed::FourBits).ok()?;
        text
    } else {
        raw.to_vec()
    };
    Some((text, used + length))
}

/// An integer with an N-bit prefix (RFC 7541 5.1): its value and how many bytes it took.
fn integer(bytes: &[u8], prefix_bits: u8) -> Result<(usize, usize), HpackError> {
    let mask = (1u16 << prefix_bits) as usize - 1;
    let first = *bytes.first().ok_or(HpackError::Truncated)? as usize & mask;
    if first < mask {
        return Ok((first, 1));
    }
    let mut value = mask;
    let mut shift = 0u32;
    for (index, byte) in bytes.iter().enumerate().skip(1) {
        if shift > 28 {
            return Err(HpackError::Overflow);
        }
        value += ((*byte & 0x7f) as usize) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Ok((value, index + 1));
        }
    }
    Err(HpackError::Truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    fn known(fields: &[Field]) -> Vec<(String, String)> {
        fields
            .iter()
            .map(|field| match field {
                Field::Known { name, value } => (
                    String::from_utf8_lossy(name).into_owned(),
                    String::from_utf8_lossy(value).into_owned(),
                ),
                Field::Unknown => ("?".into(), "?".into()),
            })
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn integers_with_a_prefix() {
        // RFC 7541 C.1: 10 in a 5-bit prefix, 1337 in a 5-bit prefix, 42 on an octet.
        assert_eq!(integer(&[0x0a], 5), Ok((10, 1)));
        assert_eq!(integer(&[0x1f, 0x9a, 0x0a], 5), Ok((1337, 3)));
        assert_eq!(integer(&[0x2a], 8), Ok((42, 1)));
        assert_eq!(integer(&[0x1f, 0x9a], 5), Err(HpackError::Truncated));
        assert_eq!(integer(&[0xff; 12], 7), Err(HpackError::Overflow));
    }

    #[test]
    fn huffman_strings_that_no_encoder_makes_are_errors() {
        // Literals with a new name (RFC 7541 6.2.2), the value 0x30 ('i' in the Huffman code).
        // A name of one octet of ones is eight bits of padding (at most seven are allowed);
        // four octets of ones hold the 30-bit EOS code, which no string may contain.
        let blocks: [&[u8]; 2] = [
            &[0x00, 0x81, 0xff, 0x81, 0x30],
            &[0x00, 0x84, 0xff, 0xff, 0xff, 0xff, 0x81, 0x30],
        ];
        for block in blocks {
            assert_eq!(
                Decoder::new(false).decode(block),
                Err(HpackError::Huffman),
                "{block:02x?}"
            );
        }
        let fine = Decoder::new(false).decode(&[0x00, 0x81, 0x37, 0x81, 0x30]);
        assert!(fine.is_ok(), "{fine:?}");
    }

    #[test]
    fn the_requests_of_rfc_7541_c4_with_huffman_and_the_dynamic_table() {
        let mut decoder = Decoder::new(false);
        let first = decoder
            .decode(&hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"))
            .unwrap();
        assert_eq!(
            known(&first),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ])
        );
        let second = decoder
            .decode(&hex("8286 84be 5886 a8eb 1064 9cbf"))
            .unwrap();
        assert_eq!(
            known(&second),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache"),
            ])
        );
        let third = decoder
            .decode(&hex(
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ))
            .unwrap();
        assert_eq!(
            known(&third),
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ])
        );
        assert_eq!(decoder.table.len(), 3);
        assert_eq!(decoder.size, 164);
    }

    #[test]
    fn a_connection_joined_late_never_gives_another_entrys_value() {
        // The third request of C.4 alone: it refers to :authority at 63 (bf), inserted before.
        let mut decoder = Decoder::new(true);
        let fields = decoder
            .decode(&hex(
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ))
            .unwrap();
        assert_eq!(fields[3], Field::Unknown);
        assert_eq!(
            known(&[fields[4].clone()]),
            pairs(&[("custom-key", "custom-value")])
        );
        // The entry it inserted is 62 for both sides now: a reference to it is known.
        let again = decoder.decode(&hex("be")).unwrap();
        assert_eq!(known(&again), pairs(&[("custom-key", "custom-value")]));
        // Seen from the start, the same reference past the table is an error.
        let mut strict = Decoder::new(false);
        assert_eq!(strict.decode(&hex("bf")), Err(HpackError::BadIndex(63)));
    }

    #[test]
    fn after_lost_bytes_dynamic_references_are_unknown_until_the_table_is_emptied() {
        let mut decoder = Decoder::new(false);
        decoder
            .decode(&hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"))
            .unwrap();
        decoder.lose_track();
        let fields = decoder.decode(&hex("82be")).unwrap();
        assert_eq!(fields[1], Field::Unknown);
        // A size update to 0 and back empties both tables: in step again.
        let fields = decoder.decode(&hex("203f e11f 82")).unwrap();
        assert!(decoder.in_step());
        assert_eq!(known(&fields), pairs(&[(":method", "GET")]));
    }

    #[test]
    fn a_literal_whose_name_is_unknown_keeps_the_table_aligned() {
        let mut decoder = Decoder::new(true);
        // Literal with indexing, name at 70 (unknown), value "v".
        let fields = decoder.decode(&[0x40 | 0x3f, 70 - 63, 0x01, b'v']).unwrap();
        assert_eq!(fields, vec![Field::Unknown]);
        assert_eq!(decoder.table.len(), 1);
        // 62 is that entry: its name unknown, so the field is.
        assert_eq!(decoder.decode(&hex("be")).unwrap(), vec![Field::Unknown]);
    }

    #[test]
    fn cut_blocks_are_errors_not_panics() {
        let block = hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff");
        for end in 0..block.len() {
            let _ = Decoder::new(false).decode(&block[..end]);
        }
        assert_eq!(
            Decoder::new(false).decode(&block[..6]),
            Err(HpackError::Truncated)
        );
    }
}
