//! ClientHellos built here, split over records every way, and any input as
//! a property. `PROPTEST_CASES=1000000 cargo test --release hello` runs the
//! properties longer.

use proptest::prelude::*;

use super::*;

/// A ClientHello handshake message (header included) naming `sni` and
/// offering `alpn`, with `pad` bytes of a padding extension.
pub(crate) fn client_hello(sni: Option<&str>, alpn: &[&str], pad: usize) -> Vec<u8> {
    let mut exts = Vec::new();
    let mut ext = |kind: u16, data: &[u8]| {
        exts.extend_from_slice(&kind.to_be_bytes());
        exts.extend_from_slice(&(data.len() as u16).to_be_bytes());
        exts.extend_from_slice(data);
    };
    if let Some(name) = sni {
        let mut list = vec![0u8];
        list.extend_from_slice(&(name.len() as u16).to_be_bytes());
        list.extend_from_slice(name.as_bytes());
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&list);
        ext(0, &data);
    }
    if !alpn.is_empty() {
        let mut list = Vec::new();
        for p in alpn {
            list.push(p.len() as u8);
            list.extend_from_slice(p.as_bytes());
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&list);
        ext(16, &data);
    }
    if pad > 0 {
        ext(21, &vec![0; pad]);
    }
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.push(32);
    body.extend_from_slice(&[9; 32]);
    body.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]);
    body.extend_from_slice(&[1, 0]);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut msg = vec![1];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&body);
    msg
}

/// `msg` in TLS records cut at `cuts` (offsets into `msg`).
pub(crate) fn records(msg: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut points: Vec<usize> = cuts.iter().map(|&c| c.min(msg.len())).collect();
    points.push(0);
    points.push(msg.len());
    points.sort_unstable();
    points.dedup();
    let mut out = Vec::new();
    for w in points.windows(2) {
        let part = &msg[w[0]..w[1]];
        out.extend_from_slice(&[0x16, 3, 1]);
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

#[test]
fn reads_the_name_and_alpn() {
    let msg = client_hello(Some("API.Example.com."), &["h2", "http/1.1"], 0);
    let hello = from_records(&records(&msg, &[])).unwrap().unwrap();
    assert_eq!(hello.sni.as_deref(), Some("api.example.com"));
    assert_eq!(hello.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    let hello = from_handshake(&msg).unwrap().unwrap();
    assert_eq!(hello.sni.as_deref(), Some("api.example.com"));
    let none = from_records(&records(&client_hello(None, &[], 0), &[])).unwrap();
    assert_eq!(none, Some(Hello::default()));
}

#[test]
fn tells_what_is_not_a_hello() {
    assert_eq!(from_records(b"GET / HTTP/1.1\r\n"), Err(NotHello::NotTls));
    assert_eq!(from_records(b"G"), Err(NotHello::NotTls));
    assert_eq!(from_records(b"\x16"), Ok(None));
    assert_eq!(from_records(b"\x16\x02"), Err(NotHello::NotTls));
    // A ServerHello is no ClientHello.
    assert_eq!(
        from_records(&[0x16, 3, 3, 0, 4, 2, 0, 0, 0]),
        Err(NotHello::NotTls)
    );
    let big = client_hello(Some("a.example"), &[], MAX_HELLO);
    assert_eq!(
        from_records(&records(&big, &[100])[..300]),
        Err(NotHello::TooLarge)
    );
}

proptest! {
    /// However the hello is cut into records, it reads the same, and every
    /// prefix asks for more.
    #[test]
    fn any_split_reads_the_same(cuts in proptest::collection::vec(0usize..400, 0..6), pad in 0usize..300) {
        let msg = client_hello(Some("x.example.org"), &["h2"], pad);
        let bytes = records(&msg, &cuts);
        let hello = from_records(&bytes).unwrap().unwrap();
        prop_assert_eq!(hello.sni.as_deref(), Some("x.example.org"));
        for cut in 0..bytes.len() {
            prop_assert_eq!(from_records(&bytes[..cut]), Ok(None));
        }
    }

    /// Any bytes, or a real hello with bytes flipped: no panic.
    #[test]
    fn any_input_is_safe(buf in proptest::collection::vec(any::<u8>(), 0..800), flips in proptest::collection::vec((0usize..300, any::<u8>()), 0..8)) {
        let _ = from_records(&buf);
        let _ = from_handshake(&buf);
        let mut msg = records(&client_hello(Some("y.example"), &["h2"], 10), &[50]);
        for (at, b) in flips {
            if let Some(x) = msg.get_mut(at) {
                *x ^= b;
            }
        }
        let _ = from_records(&msg);
    }
}
