//! A cursor over bytes that fails, with the caller's own error, instead of
//! reading past the end: what every parser in `wire` reads with.

/// The bytes not yet read, and the error a short read gives.
pub(crate) struct Reader<'a, E> {
    rest: &'a [u8],
    short: E,
}

impl<'a, E: Copy> Reader<'a, E> {
    /// Reads `bytes`; a read past their end is `short`.
    pub(crate) fn new(bytes: &'a [u8], short: E) -> Self {
        Reader { rest: bytes, short }
    }

    /// The bytes not yet read.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.rest
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], E> {
        if self.rest.len() < n {
            return Err(self.short);
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<usize, E> {
        Ok(self.take(1)?[0] as usize)
    }

    pub(crate) fn u16(&mut self) -> Result<usize, E> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]) as usize)
    }

    /// A vector with a one-byte length (TLS).
    pub(crate) fn vec8(&mut self) -> Result<Self, E> {
        let n = self.u8()?;
        Ok(Reader::new(self.take(n)?, self.short))
    }

    /// A vector with a two-byte length (TLS).
    pub(crate) fn vec16(&mut self) -> Result<Self, E> {
        let n = self.u16()?;
        Ok(Reader::new(self.take(n)?, self.short))
    }

    /// A variable-length integer (QUIC, RFC 9000 §16).
    pub(crate) fn varint(&mut self) -> Result<u64, E> {
        let first = self.take(1)?[0];
        let len = 1usize << (first >> 6);
        let rest = self.take(len - 1)?;
        let mut v = u64::from(first & 0x3f);
        for &b in rest {
            v = (v << 8) | u64::from(b);
        }
        Ok(v)
    }

    /// Bytes preceded by their varint length (QUIC).
    pub(crate) fn len_prefixed(&mut self) -> Result<&'a [u8], E> {
        let n = self.varint()?;
        self.take(usize::try_from(n).map_err(|_| self.short)?)
    }
}
