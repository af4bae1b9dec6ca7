//! HTTP/1.1 framing shared by the test backend and the load client.
use std::io::{self, BufRead, Read};

/// Reads and discards a chunked body, trailers included.
pub fn skip_chunked(reader: &mut impl BufRead) -> io::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
            .map_err(|e| io::Error::other(e.to_string()))?;
        if size == 0 {
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(());
                }
            }
        }
        io::copy(&mut reader.by_ref().take(size + 2), &mut io::sink())?;
    }
}
