//! Byte strings in the config: plain text with C-style escapes, or `hex:…`.

/// Parses `text` into bytes. `hex:0a0b…` is hexadecimal (spaces allowed);
/// anything else is text where `\r \n \t \0 \\ \xNN` are escapes.
pub fn parse_bytes(text: &str) -> Result<Vec<u8>, String> {
    if let Some(hex) = text.strip_prefix("hex:") {
        let digits: Vec<u8> = hex.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        if digits.len() % 2 != 0 {
            return Err("hex: needs an even number of digits".into());
        }
        return digits
            .chunks(2)
            .map(|pair| {
                let s = std::str::from_utf8(pair).map_err(|_| "hex: holds a non-ASCII byte")?;
                u8::from_str_radix(s, 16).map_err(|_| format!("hex: `{s}` is not a hex byte"))
            })
            .collect();
    }
    let mut out = Vec::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next() {
            Some('r') => out.push(b'\r'),
            Some('n') => out.push(b'\n'),
            Some('t') => out.push(b'\t'),
            Some('0') => out.push(0),
            Some('\\') => out.push(b'\\'),
            Some('x') => {
                let hi = chars.next();
                let lo = chars.next();
                let pair: String = [hi, lo].iter().flatten().collect();
                let byte = u8::from_str_radix(&pair, 16)
                    .ok()
                    .filter(|_| pair.len() == 2)
                    .ok_or_else(|| format!("\\x{pair} is not a two-digit hex escape"))?;
                out.push(byte);
            }
            Some(other) => return Err(format!("unknown escape \\{other}")),
            None => return Err("a lone \\ ends the string".into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn escapes_and_hex() {
        assert_eq!(parse_bytes("PING\\r\\n").unwrap(), b"PING\r\n");
        assert_eq!(parse_bytes("a\\x00b").unwrap(), b"a\0b");
        assert_eq!(parse_bytes("hex:00 ff 10").unwrap(), vec![0, 255, 16]);
        assert!(parse_bytes("hex:0").is_err());
        assert!(parse_bytes("\\q").is_err());
        assert!(parse_bytes("\\x4").is_err());
    }
}
