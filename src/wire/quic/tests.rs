//! Against RFC 9001's Appendix A (the client Initial of A.2, protected and
//! not), against Initials built here and cut over several datagrams, and
//! any input as a property. `PROPTEST_CASES=1000000 cargo test --release
//! quic` runs the properties longer.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::aes::cipher::{BlockEncrypt, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use proptest::prelude::*;

use super::*;
use crate::wire::hello::{self, tests::client_hello};

/// RFC 9001 A.2's protected client Initial, its 1,200 bytes as the RFC
/// prints them in hex.
const RFC_INITIAL: &[u8] = include_bytes!("rfc9001-a2-client-initial.bin");

const RFC_DCID: [u8; 8] = [0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08];

/// A client Initial packet, protected as RFC 9001 §5 says, with a four-byte
/// packet number and `payload` (frames) padded to `padded` bytes.
pub(crate) fn initial(dcid: &[u8], pn: u32, payload: &[u8], padded: usize) -> Vec<u8> {
    let k = Keys::client(dcid);
    let mut plain = payload.to_vec();
    plain.resize(padded.max(payload.len()), 0);
    let length = 4 + plain.len() + 16;
    let mut header = vec![0xc3, 0, 0, 0, 1, dcid.len() as u8];
    header.extend_from_slice(dcid);
    header.extend_from_slice(&[0, 0]); // no source connection ID, no token
    header.extend_from_slice(&(0x4000u16 | length as u16).to_be_bytes());
    let pn_offset = header.len();
    header.extend_from_slice(&pn.to_be_bytes());
    let mut nonce = k.iv;
    for (n, p) in nonce[4..].iter_mut().zip(u64::from(pn).to_be_bytes()) {
        *n ^= p;
    }
    let sealed = Aes128Gcm::new(&k.key.into())
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &plain,
                aad: &header,
            },
        )
        .unwrap();
    let mut packet = [header, sealed].concat();
    let mut mask = aes_gcm::aes::Block::clone_from_slice(&packet[pn_offset + 4..pn_offset + 20]);
    aes_gcm::aes::Aes128::new(&k.hp.into()).encrypt_block(&mut mask);
    packet[0] ^= mask[0] & 0x0f;
    for i in 0..4 {
        packet[pn_offset + i] ^= mask[1 + i];
    }
    packet
}

/// A CRYPTO frame.
pub(crate) fn crypto_frame(offset: usize, data: &[u8]) -> Vec<u8> {
    let mut f = vec![0x06];
    f.extend_from_slice(&(0x8000_0000u32 | offset as u32).to_be_bytes());
    f.extend_from_slice(&(0x4000u16 | data.len() as u16).to_be_bytes());
    f.extend_from_slice(data);
    f
}

#[test]
fn reads_the_rfc_9001_client_initial() {
    let packet = RFC_INITIAL;
    assert_eq!(packet.len(), 1200);
    let mut crypto = Crypto::default();
    read_initials(packet, &mut crypto).unwrap();
    let hello = hello::from_handshake(crypto.contiguous()).unwrap().unwrap();
    assert_eq!(hello.sni.as_deref(), Some("example.com"));
    assert_eq!(hello.alpn, vec![b"alpn".to_vec()]);
}

#[test]
fn protects_as_the_rfc_does() {
    // The same packet built here from its frames: the keys, the header
    // protection and the sealing all agree with Appendix A.2.
    let frames = include_bytes!("rfc9001-a2-client-crypto-frame.bin");
    let built = initial(&RFC_DCID, 2, frames, 1162);
    assert_eq!(built, RFC_INITIAL.to_vec());
}

#[test]
fn a_hello_over_two_datagrams_in_any_order() {
    let msg = client_hello(Some("quic.example"), &["h3"], 1500);
    let dcid = [1, 2, 3, 4, 5, 6, 7, 8];
    let a = initial(&dcid, 0, &crypto_frame(0, &msg[..1000]), 1160);
    let b = initial(&dcid, 1, &crypto_frame(1000, &msg[1000..]), 1160);
    for order in [[&a, &b], [&b, &a]] {
        let mut crypto = Crypto::default();
        read_initials(order[0], &mut crypto).unwrap();
        assert_eq!(hello::from_handshake(crypto.contiguous()), Ok(None));
        read_initials(order[1], &mut crypto).unwrap();
        let hello = hello::from_handshake(crypto.contiguous()).unwrap().unwrap();
        assert_eq!(hello.sni.as_deref(), Some("quic.example"));
    }
    // Two Initials coalesced in one datagram.
    let both = [a.as_slice(), &b].concat();
    let mut crypto = Crypto::default();
    read_initials(&both, &mut crypto).unwrap();
    assert!(hello::from_handshake(crypto.contiguous())
        .unwrap()
        .is_some());
}

#[test]
fn tells_what_is_not_an_initial() {
    let mut crypto = Crypto::default();
    assert_eq!(
        read_initials(b"\x12\x34 dns", &mut crypto),
        Err(NotInitial::NotQuic)
    );
    let mut packet = RFC_INITIAL.to_vec();
    packet[40] ^= 1;
    assert_eq!(
        read_initials(&packet, &mut crypto),
        Err(NotInitial::Undecryptable)
    );
    packet[1..5].copy_from_slice(&[0x6b, 0x33, 0x43, 0xcf]);
    assert_eq!(
        read_initials(&packet, &mut crypto),
        Err(NotInitial::Version(0x6b3343cf))
    );
    let far = initial(&[9; 8], 0, &crypto_frame(MAX_HELLO + 4, b"x"), 1160);
    assert_eq!(read_initials(&far, &mut crypto), Err(NotInitial::TooLarge));
}

proptest! {
    /// Any bytes, or a real Initial with bytes flipped: no panic.
    #[test]
    fn any_input_is_safe(buf in proptest::collection::vec(any::<u8>(), 0..1500), flips in proptest::collection::vec((0usize..1200, any::<u8>()), 0..4)) {
        let mut crypto = Crypto::default();
        let _ = read_initials(&buf, &mut crypto);
        let mut packet = RFC_INITIAL.to_vec();
        for (at, b) in flips {
            packet[at] ^= b;
        }
        let _ = read_initials(&packet, &mut crypto);
    }

    /// CRYPTO frames in any order and overlap give back the stream.
    #[test]
    fn crypto_reassembles(cuts in proptest::collection::vec((0usize..600, 1usize..200), 1..20)) {
        let msg = client_hello(Some("r.example"), &[], 300);
        let mut crypto = Crypto::default();
        for (at, len) in cuts {
            let at = at.min(msg.len());
            let end = (at + len).min(msg.len());
            crypto.add(at as u64, &msg[at..end]).unwrap();
        }
        crypto.add(0, &msg).unwrap();
        prop_assert_eq!(crypto.contiguous(), &msg[..]);
    }
}
