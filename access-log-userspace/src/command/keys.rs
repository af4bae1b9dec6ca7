//! `access-log keys fingerprint`: the SHA-256 fingerprint of one API key read on standard
//! input, as the key catalog (`--keys`) lists it; the key itself is never written anywhere.
use std::io::Read as _;

use anyhow::Context as _;

use crate::{event::identity::fingerprint_hex, protocol::credential};

/// Keys longer than this are no API keys (and reading stops there).
const MAX_KEY: u64 = 64 * 1024;

pub fn fingerprint() -> anyhow::Result<()> {
    let mut key = Vec::new();
    std::io::stdin()
        .take(MAX_KEY + 1)
        .read_to_end(&mut key)
        .context("cannot read the key from standard input")?;
    println!("{}", fingerprint_of(&key)?);
    Ok(())
}

/// The fingerprint of `key` as sent in a header: surrounding whitespace (a final newline from
/// `echo`) is not part of it.
fn fingerprint_of(key: &[u8]) -> anyhow::Result<String> {
    if key.len() as u64 > MAX_KEY {
        anyhow::bail!("the key on standard input is longer than {MAX_KEY} bytes");
    }
    let key = key.trim_ascii();
    if key.is_empty() {
        anyhow::bail!("no key on standard input (pipe one in: printf %s \"$KEY\" | access-log keys fingerprint)");
    }
    if key.iter().any(|&b| b == b'\n' || b == b'\r') {
        anyhow::bail!("standard input holds more than one line: give one key at a time");
    }
    Ok(fingerprint_hex(&credential::fingerprint(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_and_its_final_newline_give_the_header_value_fingerprint() {
        // SHA-256("abc") (FIPS 180-2).
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(fingerprint_of(b"abc\n").unwrap(), abc);
        assert_eq!(fingerprint_of(b"abc").unwrap(), abc);
        assert!(fingerprint_of(b" \n").is_err());
        assert!(fingerprint_of(b"a\nb\n").is_err());
    }
}
