//! The parser against the specification's examples and, as properties,
//! against any input. `PROPTEST_CASES=1000000 cargo test --release
//! proxy_protocol` runs the properties longer.

use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;

use super::*;
use crate::wire::canonical;

const LIMIT: usize = 4096;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn reads_the_v1_examples() {
    let h = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET /";
    let (header, n) = parse(h, LIMIT).unwrap().unwrap();
    assert_eq!(n, h.len() - 5);
    assert_eq!(
        header.addrs,
        Some((addr("192.168.0.1:56324"), addr("192.168.0.11:443")))
    );
    let h = b"PROXY TCP6 ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
    assert!(matches!(parse(h, LIMIT), Err(Invalid::Malformed(_))));
    let h = b"PROXY TCP6 2001:db8::1 ::1 65535 1\r\n";
    let (header, _) = parse(h, LIMIT).unwrap().unwrap();
    assert_eq!(
        header.addrs,
        Some((addr("[2001:db8::1]:65535"), addr("[::1]:1")))
    );
    let (header, n) = parse(b"PROXY UNKNOWN ffff:: whatever\r\nx", LIMIT)
        .unwrap()
        .unwrap();
    assert_eq!((header.addrs, n), (None, 31));
}

#[test]
fn refuses_bad_v1() {
    for bad in [
        &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"[..],
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
        b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
    ] {
        assert!(
            matches!(parse(bad, LIMIT), Err(Invalid::Malformed(_))),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
    assert_eq!(parse(&long, LIMIT), Err(Invalid::TooLong));
    assert_eq!(parse(b"GET / HTTP/1.1\r\n", LIMIT), Err(Invalid::NotProxy));
    assert_eq!(parse(b"PROXY", LIMIT), Ok(None));
    assert_eq!(parse(b"", LIMIT), Ok(None));
}

#[test]
fn reads_v2_with_tlvs_and_drops_the_checksum() {
    let mut tlvs = vec![0x01, 0x00, 0x02, b'h', b'2']; // ALPN
    tlvs.extend_from_slice(&[0x03, 0x00, 0x04, 1, 2, 3, 4]); // CRC32C
    tlvs.extend_from_slice(&[0x04, 0x00, 0x00]); // NOOP
    let src = addr("10.1.2.3:40000");
    let dst = addr("10.9.9.9:443");
    let h = v2(Some((src, dst)), Transport::Stream, &tlvs);
    assert_eq!(&h[..16], b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x1b");
    let (header, n) = parse(&h, LIMIT).unwrap().unwrap();
    assert_eq!(n, h.len());
    assert_eq!(header.addrs, Some((src, dst)));
    assert_eq!(header.transport, Transport::Stream);
    assert_eq!(
        header.tlvs,
        [0x01, 0x00, 0x02, b'h', b'2', 0x04, 0x00, 0x00]
    );
    // LOCAL: addresses present but not to be used.
    let mut local = h.clone();
    local[12] = 0x20;
    let (header, _) = parse(&local, LIMIT).unwrap().unwrap();
    assert_eq!(header.addrs, None);
    // A header longer than the limit is refused from its first 16 bytes.
    assert_eq!(parse(&h[..16], 30), Err(Invalid::TooLong));
    // A TLV running past the end.
    let mut bad = v2(Some((src, dst)), Transport::Stream, &[0x01, 0x00, 0x09, 0]);
    bad.truncate(bad.len());
    assert!(matches!(parse(&bad, LIMIT), Err(Invalid::Malformed(_))));
}

#[test]
fn writes_unix_clients_in_an_af_unix_block() {
    let h = v2_unix(b"", b"\0switchyard", &[0x04, 0x00, 0x01, 0x7f]);
    assert_eq!(&h[..12], &V2_SIGNATURE);
    assert_eq!(h[12..14], [0x21, 0x31], "PROXY, AF_UNIX over STREAM");
    assert_eq!(u16::from_be_bytes([h[14], h[15]]), 216 + 4);
    assert_eq!(h.len(), 16 + 216 + 4);
    assert!(h[16..16 + 108].iter().all(|&b| b == 0), "an unnamed client");
    assert_eq!(&h[124..135], b"\0switchyard");
    assert_eq!(&h[232..], &[0x04, 0x00, 0x01, 0x7f]);
    // What every receiver of v2 reads: a Unix client, whose addresses it
    // takes from the connection itself; the TLVs pass.
    let (read, n) = parse(&h, 4096).unwrap().unwrap();
    assert_eq!((read.addrs, n), (None, h.len()));
    assert_eq!(read.tlvs, [0x04, 0x00, 0x01, 0x7f]);
    assert_eq!(parse(V1_UNKNOWN, 107).unwrap().unwrap().0.addrs, None);
}

#[test]
fn writes_mixed_families_as_ipv6() {
    let h = v1(addr("192.0.2.1:5"), addr("[2001:db8::1]:443"));
    assert_eq!(
        h,
        b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::1 5 443\r\n".to_vec()
    );
    // A dual-stack socket's mapped addresses are IPv4 again.
    let h = v1(addr("[::ffff:127.0.0.2]:5"), addr("[::ffff:127.0.0.1]:6"));
    assert_eq!(h, b"PROXY TCP4 127.0.0.2 127.0.0.1 5 6\r\n".to_vec());
}

fn any_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(IpAddr::from(ip), p)),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| {
            let ip = IpAddr::from(ip);
            SocketAddr::new(ip.to_canonical(), p)
        }),
    ]
}

fn same_family() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
    (any_addr(), any_addr()).prop_map(|(a, b)| one_family(a, b))
}

/// A dual-stack proxy in front names an IPv4 client as `::ffff:a.b.c.d`,
/// in either version: it is read as the IPv4 client it is.
#[test]
fn mapped_clients_are_read_as_ipv4() {
    let want = Some((addr("10.1.2.3:1234"), addr("192.0.2.1:443")));
    let v1in = b"PROXY TCP6 ::ffff:10.1.2.3 ::ffff:192.0.2.1 1234 443\r\n";
    assert_eq!(parse(v1in, LIMIT).unwrap().unwrap().0.addrs, want);
    let v2in = v2(
        Some((addr("[::ffff:10.1.2.3]:1234"), addr("[2001:db8::1]:443"))),
        Transport::Stream,
        &[],
    );
    let (h, _) = parse(&v2in, LIMIT).unwrap().unwrap();
    assert_eq!(
        h.addrs,
        Some((addr("10.1.2.3:1234"), addr("[2001:db8::1]:443")))
    );
}

proptest! {
    /// Any bytes: no panic, never more consumed than given, TLVs no longer
    /// than the input.
    #[test]
    fn any_input_is_safe(buf in proptest::collection::vec(any::<u8>(), 0..600), limit in 16usize..5000) {
        if let Ok(Some((h, n))) = parse(&buf, limit) {
            prop_assert!(n <= buf.len());
            prop_assert!(h.tlvs.len() <= n);
        }
    }

    /// Input that begins like a header reaches every branch of the parser.
    #[test]
    fn near_headers_are_safe(tail in proptest::collection::vec(any::<u8>(), 0..300), v2_head in any::<[u8; 4]>()) {
        let v2in = [V2_SIGNATURE.as_slice(), &v2_head, &tail].concat();
        let _ = parse(&v2in, LIMIT);
        let v1in = [b"PROXY TCP4 ".as_slice(), &tail].concat();
        let _ = parse(&v1in, LIMIT);
    }

    /// What is written is read back, whole, with the data after it left alone;
    /// every shorter prefix asks for more.
    #[test]
    fn round_trips((src, dst) in same_family(), data in proptest::collection::vec(any::<u8>(), 0..40), dgram in any::<bool>()) {
        let t = if dgram { Transport::Dgram } else { Transport::Stream };
        for (h, version) in [(v1(src, dst), Version::V1), (v2(Some((src, dst)), t, &[]), Version::V2)] {
            let whole = [h.as_slice(), &data].concat();
            let (header, n) = parse(&whole, LIMIT).unwrap().unwrap();
            prop_assert_eq!(n, h.len());
            prop_assert_eq!(header.version, version);
            // Read back in their canonical form: a mapped IPv4 address
            // written beside an IPv6 one is IPv4 again.
            prop_assert_eq!(header.addrs, Some((canonical(src), canonical(dst))));
            for cut in 0..h.len() {
                prop_assert_eq!(parse(&h[..cut], LIMIT), Ok(None));
            }
        }
    }
}
