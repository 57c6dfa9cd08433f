//! A QUIC client's first flight, read by a proxy that holds no keys but the
//! public ones: version 1 Initial packets (RFC 9000 §17.2.2) are protected
//! with keys derived from their destination connection ID (RFC 9001 §5.2),
//! so the ClientHello inside them, carried in CRYPTO frames, can be read for
//! its server name. [`read_initials`] decrypts the Initial packets of one
//! datagram and gathers their CRYPTO frames into a [`Crypto`] stream, which
//! may take several datagrams (a post-quantum key share makes the hello
//! longer than one packet). Pure functions over bytes: no panic, nothing read
//! past the input, at most [`MAX_HELLO`] kept.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::aes::cipher::{BlockEncrypt, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;

use super::hello::MAX_HELLO;
use super::reader::Reader;

/// QUIC version 1 (RFC 9000).
const VERSION_1: u32 = 1;

/// The salt of version 1 Initial secrets (RFC 9001 §5.2).
const V1_SALT: [u8; 20] = [
    0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad,
    0xcc, 0xbb, 0x7f, 0x0a,
];

/// Why a datagram gave no CRYPTO bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotInitial {
    /// Not a QUIC long-header packet.
    #[error("not a QUIC Initial packet")]
    NotQuic,
    /// A QUIC version other than 1.
    #[error("QUIC version {0:#x} is not read")]
    Version(u32),
    /// The packet did not decrypt: not from a client, or damaged.
    #[error("the Initial packet does not decrypt")]
    Undecryptable,
    /// Decrypted, but not as the specification says.
    #[error("malformed Initial packet")]
    Malformed,
    /// The CRYPTO stream runs past [`MAX_HELLO`].
    #[error("ClientHello too large")]
    TooLarge,
}

/// The CRYPTO stream of a client's Initial packets, as it arrives: frames
/// may come in any order, repeated or overlapping.
#[derive(Debug, Default, Clone)]
pub struct Crypto {
    bytes: Vec<u8>,
    /// Byte ranges held, sorted, disjoint, not touching.
    held: Vec<(usize, usize)>,
}

impl Crypto {
    /// Adds `data` at stream offset `offset`.
    fn add(&mut self, offset: u64, data: &[u8]) -> Result<(), NotInitial> {
        let start = usize::try_from(offset).map_err(|_| NotInitial::TooLarge)?;
        let end = start
            .checked_add(data.len())
            .filter(|&e| e <= MAX_HELLO + 4)
            .ok_or(NotInitial::TooLarge)?;
        if data.is_empty() {
            return Ok(());
        }
        if self.bytes.len() < end {
            self.bytes.resize(end, 0);
        }
        self.bytes[start..end].copy_from_slice(data);
        self.held.push((start, end));
        self.held.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(self.held.len());
        for &(s, e) in &self.held {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.held = merged;
        Ok(())
    }

    /// The stream's bytes from its start up to the first gap.
    pub fn contiguous(&self) -> &[u8] {
        match self.held.first() {
            Some(&(0, end)) => &self.bytes[..end],
            _ => &[],
        }
    }
}

/// The client's Initial keys for a destination connection ID.
struct Keys {
    key: [u8; 16],
    iv: [u8; 12],
    hp: [u8; 16],
}

/// HKDF-Expand-Label of TLS 1.3 (RFC 8446 §7.1), with an empty context.
fn expand_label(hk: &Hkdf<Sha256>, label: &str, out: &mut [u8]) {
    let full = format!("tls13 {label}");
    let mut info = Vec::with_capacity(4 + full.len());
    info.extend_from_slice(&(out.len() as u16).to_be_bytes());
    info.push(full.len() as u8);
    info.extend_from_slice(full.as_bytes());
    info.push(0);
    hk.expand(&info, out)
        .expect("the lengths asked for are far below HKDF's limit");
}

impl Keys {
    fn client(dcid: &[u8]) -> Keys {
        let (_, initial) = Hkdf::<Sha256>::extract(Some(&V1_SALT), dcid);
        let mut secret = [0u8; 32];
        expand_label(&initial, "client in", &mut secret);
        let client = Hkdf::<Sha256>::from_prk(&secret).expect("a SHA-256 sized key");
        let mut keys = Keys {
            key: [0; 16],
            iv: [0; 12],
            hp: [0; 16],
        };
        expand_label(&client, "quic key", &mut keys.key);
        expand_label(&client, "quic iv", &mut keys.iv);
        expand_label(&client, "quic hp", &mut keys.hp);
        keys
    }
}

/// Decrypts the client Initial packets in `datagram` and adds their CRYPTO
/// frames to `crypto`. Other long-header packets coalesced with them
/// (0-RTT) are stepped over.
pub fn read_initials(datagram: &[u8], crypto: &mut Crypto) -> Result<(), NotInitial> {
    let mut rest = datagram;
    let mut keys: Option<(Vec<u8>, Keys)> = None;
    let mut read_one = false;
    while let Some(&first) = rest.first() {
        if first & 0xc0 != 0xc0 {
            // Padding after the last packet, or a short-header packet.
            break;
        }
        let mut r = Reader::new(rest, NotInitial::Malformed);
        r.take(1)?;
        let v = r.take(4)?;
        let version = u32::from_be_bytes([v[0], v[1], v[2], v[3]]);
        if version != VERSION_1 {
            return Err(if read_one || version != 0 {
                NotInitial::Version(version)
            } else {
                NotInitial::NotQuic
            });
        }
        let dcid_len = r.take(1)?[0] as usize;
        if dcid_len > 20 {
            return Err(NotInitial::Malformed);
        }
        let dcid = r.take(dcid_len)?;
        let scid_len = r.take(1)?[0] as usize;
        if scid_len > 20 {
            return Err(NotInitial::Malformed);
        }
        r.take(scid_len)?;
        let kind = (first >> 4) & 0x3;
        if kind == 0 {
            r.len_prefixed()?; // token
        } else if kind == 3 {
            return Err(NotInitial::NotQuic); // Retry comes from servers
        }
        let length = usize::try_from(r.varint()?).map_err(|_| NotInitial::Malformed)?;
        let pn_offset = rest.len() - r.rest().len();
        let packet = rest
            .get(..pn_offset + length)
            .ok_or(NotInitial::Malformed)?;
        rest = &rest[pn_offset + length..];
        if kind != 0 {
            continue;
        }
        let k = match &keys {
            Some((id, k)) if id == dcid => k,
            Some(_) => return Err(NotInitial::Malformed),
            None => &keys.insert((dcid.to_vec(), Keys::client(dcid))).1,
        };
        decrypt(packet, pn_offset, k, crypto)?;
        read_one = true;
    }
    if read_one {
        Ok(())
    } else {
        Err(NotInitial::NotQuic)
    }
}

/// Removes header protection, decrypts one Initial packet and reads its
/// frames.
fn decrypt(
    packet: &[u8],
    pn_offset: usize,
    k: &Keys,
    crypto: &mut Crypto,
) -> Result<(), NotInitial> {
    let sample = packet
        .get(pn_offset + 4..pn_offset + 20)
        .ok_or(NotInitial::Malformed)?;
    let mut mask = aes_gcm::aes::Block::clone_from_slice(sample);
    aes_gcm::aes::Aes128::new(&k.hp.into()).encrypt_block(&mut mask);
    let first = packet[0] ^ (mask[0] & 0x0f);
    let pn_len = usize::from(first & 0x3) + 1;
    let mut header = packet[..pn_offset + pn_len].to_vec();
    header[0] = first;
    let mut pn = 0u64;
    for i in 0..pn_len {
        header[pn_offset + i] ^= mask[1 + i];
        pn = (pn << 8) | u64::from(header[pn_offset + i]);
    }
    let mut nonce = k.iv;
    for (n, p) in nonce[4..].iter_mut().zip(pn.to_be_bytes()) {
        *n ^= p;
    }
    let plain = Aes128Gcm::new(&k.key.into())
        .decrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &packet[pn_offset + pn_len..],
                aad: &header,
            },
        )
        .map_err(|_| NotInitial::Undecryptable)?;
    frames(&plain, crypto)
}

/// Reads the frames an Initial packet may carry (RFC 9000 §17.2.2),
/// keeping the CRYPTO ones.
fn frames(plain: &[u8], crypto: &mut Crypto) -> Result<(), NotInitial> {
    let mut r = Reader::new(plain, NotInitial::Malformed);
    while !r.is_empty() {
        match r.varint()? {
            0x00 | 0x01 => {} // PADDING, PING
            kind @ (0x02 | 0x03) => {
                // ACK: largest, delay, range count, first range, ranges.
                r.varint()?;
                r.varint()?;
                let ranges = r.varint()?;
                r.varint()?;
                for _ in 0..ranges {
                    r.varint()?;
                    r.varint()?;
                }
                if kind == 0x03 {
                    for _ in 0..3 {
                        r.varint()?;
                    }
                }
            }
            0x06 => {
                let offset = r.varint()?;
                let data = r.len_prefixed()?;
                crypto.add(offset, data)?;
            }
            0x1c => {
                // CONNECTION_CLOSE: error code, frame type, reason.
                r.varint()?;
                r.varint()?;
                r.len_prefixed()?;
            }
            _ => return Err(NotInitial::Malformed),
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
