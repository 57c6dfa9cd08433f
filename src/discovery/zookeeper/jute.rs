//! ZooKeeper's wire encoding (jute): big-endian integers, length-prefixed
//! strings and buffers (-1 for none), every packet framed by its length.

use std::io::{Error, ErrorKind};

/// The largest frame taken from a server: a child list of 10,000 long
/// names fits many times over; a server that sends more is cut off.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Operation codes used here.
pub mod op {
    pub const GET_DATA: i32 = 4;
    pub const SET_DATA: i32 = 5;
    pub const EXISTS: i32 = 3;
    pub const GET_CHILDREN: i32 = 8;
    pub const PING: i32 = 11;
    pub const AUTH: i32 = 100;
}

/// Reserved transaction ids.
pub mod xid {
    pub const WATCH: i32 = -1;
    pub const PING: i32 = -2;
    pub const AUTH: i32 = -4;
}

/// Error codes used here.
pub mod code {
    pub const OK: i32 = 0;
    pub const NO_NODE: i32 = -101;
    pub const NO_AUTH: i32 = -102;
    pub const BAD_VERSION: i32 = -103;
    pub const SESSION_EXPIRED: i32 = -112;
    pub const AUTH_FAILED: i32 = -115;
}

/// A packet being written: [`JuteOut::frame`] puts its length in front.
pub struct JuteOut(Vec<u8>);

impl JuteOut {
    /// A request: its transaction id and operation.
    pub fn request(xid: i32, op: i32) -> JuteOut {
        let mut o = JuteOut(vec![0; 4]);
        o.i32(xid).i32(op);
        o
    }

    /// The connect packet, which has no header.
    pub fn bare() -> JuteOut {
        JuteOut(vec![0; 4])
    }

    pub fn i32(&mut self, v: i32) -> &mut JuteOut {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn i64(&mut self, v: i64) -> &mut JuteOut {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn bool(&mut self, v: bool) -> &mut JuteOut {
        self.0.push(v as u8);
        self
    }

    pub fn buf(&mut self, v: &[u8]) -> &mut JuteOut {
        self.i32(v.len() as i32);
        self.0.extend_from_slice(v);
        self
    }

    pub fn str(&mut self, v: &str) -> &mut JuteOut {
        self.buf(v.as_bytes())
    }

    /// The packet with its length in front.
    pub fn frame(mut self) -> Vec<u8> {
        let len = (self.0.len() - 4) as u32;
        self.0[..4].copy_from_slice(&len.to_be_bytes());
        self.0
    }
}

/// A packet being read.
pub struct JuteIn<'a>(&'a [u8]);

fn short() -> Error {
    Error::new(ErrorKind::InvalidData, "a ZooKeeper packet ended early")
}

impl<'a> JuteIn<'a> {
    pub fn new(b: &'a [u8]) -> JuteIn<'a> {
        JuteIn(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(short());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub fn i32(&mut self) -> Result<i32, Error> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }

    pub fn i64(&mut self) -> Result<i64, Error> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }

    #[cfg(test)]
    pub fn bool(&mut self) -> Result<bool, Error> {
        Ok(self.take(1)?[0] != 0)
    }

    /// A buffer; `None` for a null one.
    pub fn buf(&mut self) -> Result<Option<&'a [u8]>, Error> {
        match self.i32()? {
            -1 => Ok(None),
            n if n < 0 => Err(short()),
            n => self.take(n as usize).map(Some),
        }
    }

    pub fn str(&mut self) -> Result<String, Error> {
        let b = self.buf()?.unwrap_or_default();
        String::from_utf8(b.to_vec())
            .map_err(|_| Error::new(ErrorKind::InvalidData, "a ZooKeeper string is not UTF-8"))
    }

    /// A vector of strings; a null one is empty.
    pub fn strs(&mut self) -> Result<Vec<String>, Error> {
        let n = self.i32()?;
        // Each string takes at least its 4-byte length: a count beyond what
        // is left is a lie, not an allocation to make.
        if n > 0 && n as usize > self.0.len() / 4 {
            return Err(short());
        }
        (0..n.max(0)).map(|_| self.str()).collect()
    }

    /// A node's stat; only its data version is kept.
    pub fn stat_version(&mut self) -> Result<i32, Error> {
        // czxid, mzxid, ctime, mtime
        self.take(32)?;
        let version = self.i32()?;
        // cversion, aversion, ephemeralOwner, dataLength, numChildren, pzxid
        self.take(4 + 4 + 8 + 4 + 4 + 8)?;
        Ok(version)
    }

    #[cfg(test)]
    pub fn rest(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut o = JuteOut::request(7, op::GET_DATA);
        o.str("/a/b").bool(true).buf(&[]).i64(-5);
        let f = o.frame();
        assert_eq!(&f[..4], &((f.len() - 4) as u32).to_be_bytes());
        let mut i = JuteIn::new(&f[4..]);
        assert_eq!((i.i32().unwrap(), i.i32().unwrap()), (7, op::GET_DATA));
        assert_eq!(i.str().unwrap(), "/a/b");
        assert!(i.bool().unwrap());
        assert_eq!(i.buf().unwrap(), Some(&[][..]));
        assert_eq!(i.i64().unwrap(), -5);
        assert_eq!(i.rest(), 0);
    }

    #[test]
    fn lies_are_errors() {
        // A null buffer, a negative length, a count beyond the packet.
        assert_eq!(JuteIn::new(&(-1i32).to_be_bytes()).buf().unwrap(), None);
        assert!(JuteIn::new(&(-7i32).to_be_bytes()).buf().is_err());
        assert!(JuteIn::new(&1_000_000i32.to_be_bytes()).strs().is_err());
        assert!(JuteIn::new(&[0, 0, 0, 9, b'x']).str().is_err());
        assert!(JuteIn::new(&[0; 60]).stat_version().is_err());
    }
}
