//! What reading a client's identity and destination costs per connection:
//! a PROXY v1 and v2 header, a TLS ClientHello's server name, and a QUIC
//! Initial (RFC 9001 A.2: key derivation, header protection, AES-GCM).

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

use switchyard::wire::{hello, proxy_protocol, quic};

fn wire(c: &mut Criterion) {
    let src = "203.0.113.7:51000".parse().unwrap();
    let dst = "198.51.100.1:443".parse().unwrap();
    let v1 = proxy_protocol::v1(src, dst);
    let v2 = proxy_protocol::v2(Some((src, dst)), proxy_protocol::Transport::Stream, &[]);
    c.bench_function("proxy_protocol/parse_v1", |b| {
        b.iter(|| proxy_protocol::parse(black_box(&v1), 4096).unwrap())
    });
    c.bench_function("proxy_protocol/parse_v2", |b| {
        b.iter(|| proxy_protocol::parse(black_box(&v2), 4096).unwrap())
    });
    c.bench_function("proxy_protocol/write_v2", |b| {
        b.iter(|| {
            proxy_protocol::v2(
                Some((black_box(src), dst)),
                proxy_protocol::Transport::Stream,
                &[],
            )
        })
    });
    let initial: &[u8] = include_bytes!("../src/wire/quic/rfc9001-a2-client-initial.bin");
    // The ClientHello inside RFC 9001's Initial, as TLS records on TCP.
    let mut crypto = quic::Crypto::default();
    quic::read_initials(initial, &mut crypto).unwrap();
    let msg = crypto.contiguous().to_vec();
    let mut records = vec![0x16, 3, 1];
    records.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    records.extend_from_slice(&msg);
    c.bench_function("hello/server_name", |b| {
        b.iter(|| hello::from_records(black_box(&records)).unwrap().unwrap())
    });
    c.bench_function("quic/initial_server_name", |b| {
        b.iter(|| {
            let mut crypto = quic::Crypto::default();
            quic::read_initials(black_box(initial), &mut crypto).unwrap();
            hello::from_handshake(crypto.contiguous()).unwrap().unwrap()
        })
    });
}

criterion_group!(benches, wire);
criterion_main!(benches);
