//! The backup stream: one byte stream (a file, a pipe, an SSH channel) that
//! carries a manifest and the parts a restore needs, each part compressed and
//! checksummed, the whole stream checksummed at its end. A reader acts on the
//! manifest at once but commits nothing before the end has checked out, so a
//! truncated or corrupt stream is refused with nothing half made.
//!
//! Layout (integers big-endian):
//!
//! ```text
//! "VECTLBK1"                       magic and format version
//! u32 N, N bytes                   the manifest (JSON)
//! per part:
//!   'P', u16 N, N bytes            the part's name
//!   (u32 N > 0, N bytes)...        chunks of its zstd-compressed content
//!   u32 0, 32 bytes                end of the part: SHA-256 of its chunks' bytes
//! 'E', 32 bytes                    SHA-256 of every byte up to the 'E'
//! ```

use std::io::{self, BufReader, Read, Write};

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"VECTLBK1";
/// Content is cut into chunks of this size.
const CHUNK: usize = 1 << 20;
/// A manifest larger than this is not one of ours.
const MAX_MANIFEST: u32 = 16 << 20;
const ZSTD_LEVEL: i32 = 3;

fn corrupt(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

/// An unexpected end of the stream says so: "truncated".
fn truncated(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        corrupt("truncated: the stream ends before its last part is complete")
    } else {
        e
    }
}

/// A writer that hashes what passes through it and counts it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a backup stream.
pub struct Writer<W: Write> {
    out: Hashing<W>,
}

impl<W: Write> Writer<W> {
    /// Starts a stream with its manifest.
    pub fn new(inner: W, manifest: &[u8]) -> io::Result<Writer<W>> {
        let mut out = Hashing {
            inner,
            hash: Sha256::new(),
            bytes: 0,
        };
        let len = u32::try_from(manifest.len())
            .ok()
            .filter(|&n| n <= MAX_MANIFEST)
            .ok_or_else(|| corrupt("the manifest is too large"))?;
        out.write_all(MAGIC)?;
        out.write_all(&len.to_be_bytes())?;
        out.write_all(manifest)?;
        Ok(Writer { out })
    }

    /// Adds part `name` with everything `content` gives until its end, and
    /// returns how many bytes that was (before compression).
    pub fn part(&mut self, name: &str, content: &mut dyn Read) -> io::Result<u64> {
        let len = u16::try_from(name.len()).map_err(|_| corrupt("part name too long"))?;
        self.out.write_all(b"P")?;
        self.out.write_all(&len.to_be_bytes())?;
        self.out.write_all(name.as_bytes())?;
        let chunks = Chunks {
            out: &mut self.out,
            buf: Vec::with_capacity(CHUNK),
            hash: Sha256::new(),
        };
        let mut z = zstd::Encoder::new(chunks, ZSTD_LEVEL)?;
        let n = io::copy(content, &mut z)?;
        z.finish()?.finish()?;
        Ok(n)
    }

    /// Ends the stream and returns the writer and the stream's length.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.out.write_all(b"E")?;
        let digest = self.out.hash.clone().finalize();
        self.out.write_all(&digest)?;
        self.out.flush()?;
        Ok((self.out.inner, self.out.bytes))
    }
}

/// Frames a part's compressed bytes into chunks.
struct Chunks<'a, W: Write> {
    out: &'a mut Hashing<W>,
    buf: Vec<u8>,
    hash: Sha256,
}

impl<W: Write> Chunks<'_, W> {
    fn emit(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let n = self.buf.len() as u32;
        self.out.write_all(&n.to_be_bytes())?;
        self.out.write_all(&self.buf)?;
        self.hash.update(&self.buf);
        self.buf.clear();
        Ok(())
    }

    fn finish(mut self) -> io::Result<()> {
        self.emit()?;
        self.out.write_all(&0u32.to_be_bytes())?;
        let digest = self.hash.clone().finalize();
        self.out.write_all(&digest)
    }
}

impl<W: Write> Write for Chunks<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.emit()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A reader that hashes what it reads.
struct Hashed<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for Hashed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// What comes next in a stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A part of this name; read it with [`Reader::read_part`] or
    /// [`Reader::skip_part`].
    Part(String),
    /// The end, checked: every byte is as written.
    End,
}

/// Reads a backup stream.
pub struct Reader<R: Read> {
    inp: Hashed<R>,
    manifest: Vec<u8>,
    ended: bool,
}

impl<R: Read> Reader<R> {
    /// Reads the magic and the manifest.
    pub fn new(inner: R) -> io::Result<Reader<R>> {
        let mut inp = Hashed {
            inner,
            hash: Sha256::new(),
        };
        let mut magic = [0u8; 8];
        inp.read_exact(&mut magic).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                corrupt("not a vectl backup (too short)")
            } else {
                e
            }
        })?;
        if &magic != MAGIC {
            return Err(corrupt(if magic.starts_with(b"VECTLBK") {
                "a vectl backup of a format this vectl does not know"
            } else {
                "not a vectl backup"
            }));
        }
        let len = read_u32(&mut inp).map_err(truncated)?;
        if len > MAX_MANIFEST {
            return Err(corrupt("not a vectl backup (its manifest is too large)"));
        }
        let mut manifest = vec![0u8; len as usize];
        inp.read_exact(&mut manifest).map_err(truncated)?;
        Ok(Reader {
            inp,
            manifest,
            ended: false,
        })
    }

    /// The manifest's bytes (not yet checked against the end's checksum).
    pub fn manifest(&self) -> &[u8] {
        &self.manifest
    }

    /// The next part's name, or the end (whose checksum is checked here).
    pub fn next(&mut self) -> io::Result<Next> {
        if self.ended {
            return Ok(Next::End);
        }
        let mut tag = [0u8; 1];
        self.inp.read_exact(&mut tag).map_err(truncated)?;
        match tag[0] {
            b'P' => {
                let mut len = [0u8; 2];
                self.inp.read_exact(&mut len).map_err(truncated)?;
                let mut name = vec![0u8; u16::from_be_bytes(len) as usize];
                self.inp.read_exact(&mut name).map_err(truncated)?;
                String::from_utf8(name)
                    .map(Next::Part)
                    .map_err(|_| corrupt("corrupt: a part name is not UTF-8"))
            }
            b'E' => {
                let expected = self.inp.hash.clone().finalize();
                let mut digest = [0u8; 32];
                self.inp.inner.read_exact(&mut digest).map_err(truncated)?;
                if digest[..] != expected[..] {
                    return Err(corrupt(
                        "corrupt: the stream's checksum does not match its content",
                    ));
                }
                self.ended = true;
                Ok(Next::End)
            }
            _ => Err(corrupt("corrupt: a part begins with an unknown tag")),
        }
    }

    /// Decompresses the current part into `sink` and checks its checksum;
    /// returns the bytes written.
    pub fn read_part(&mut self, sink: &mut dyn Write) -> io::Result<u64> {
        let mut chunks = BufReader::with_capacity(
            CHUNK,
            PartChunks {
                inp: &mut self.inp,
                left: 0,
                hash: Sha256::new(),
                done: false,
            },
        );
        let n = {
            let mut z = zstd::Decoder::with_buffer(&mut chunks)?;
            io::copy(&mut z, sink).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof || e.kind() == io::ErrorKind::Other {
                    corrupt(format!("corrupt or truncated: {e}"))
                } else {
                    e
                }
            })?
        };
        // What follows the compressed frame up to the part's end (nothing, in
        // a stream we wrote) is read too: the checksum comes after it.
        io::copy(&mut chunks, &mut io::sink())?;
        if !chunks.get_ref().done {
            return Err(corrupt("corrupt: a part does not end where it should"));
        }
        Ok(n)
    }

    /// Reads past the current part, checking its checksum.
    pub fn skip_part(&mut self) -> io::Result<()> {
        let mut chunks = PartChunks {
            inp: &mut self.inp,
            left: 0,
            hash: Sha256::new(),
            done: false,
        };
        io::copy(&mut chunks, &mut io::sink())?;
        Ok(())
    }
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

/// The chunks of one part, as one byte stream; its end checks the part's
/// checksum.
struct PartChunks<'a, R: Read> {
    inp: &'a mut Hashed<R>,
    left: u32,
    hash: Sha256,
    done: bool,
}

impl<R: Read> Read for PartChunks<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            self.left = read_u32(self.inp).map_err(truncated)?;
            if self.left == 0 {
                let mut digest = [0u8; 32];
                self.inp.read_exact(&mut digest).map_err(truncated)?;
                if digest[..] != self.hash.clone().finalize()[..] {
                    return Err(corrupt(
                        "corrupt: a part's checksum does not match its content",
                    ));
                }
                self.done = true;
                return Ok(0);
            }
            if self.left as usize > CHUNK {
                return Err(corrupt("corrupt: a chunk longer than any writer makes"));
            }
        }
        let want = buf.len().min(self.left as usize);
        let n = self.inp.read(&mut buf[..want])?;
        if n == 0 {
            return Err(truncated(io::ErrorKind::UnexpectedEof.into()));
        }
        self.hash.update(&buf[..n]);
        self.left -= n as u32;
        Ok(n)
    }
}

/// Reads just the manifest of a stream (a listing, retention).
pub fn read_manifest(inner: impl Read) -> io::Result<Vec<u8>> {
    Ok(Reader::new(inner)?.manifest)
}

/// A stream's manifest and its parts' names and sizes (uncompressed).
pub type Contents = (Vec<u8>, Vec<(String, u64)>);

/// Reads a whole stream, checking every checksum.
pub fn verify(inner: impl Read) -> io::Result<Contents> {
    let mut r = Reader::new(inner)?;
    let mut parts = Vec::new();
    while let Next::Part(name) = r.next()? {
        let n = r.read_part(&mut io::sink())?;
        parts.push((name, n));
    }
    Ok((r.manifest, parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(parts: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), b"{\"x\":1}").unwrap();
        for (name, data) in parts {
            w.part(name, &mut &data[..]).unwrap();
        }
        w.finish().unwrap().0
    }

    fn big() -> Vec<u8> {
        // Incompressible enough to take several chunks.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..3 * CHUNK + 17)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn parts_come_back_as_written() {
        let data = big();
        let s = stream(&[("layer", data.clone()), ("empty", Vec::new())]);
        let mut r = Reader::new(&s[..]).unwrap();
        assert_eq!(r.manifest(), b"{\"x\":1}");
        assert_eq!(r.next().unwrap(), Next::Part("layer".into()));
        let mut out = Vec::new();
        assert_eq!(r.read_part(&mut out).unwrap(), data.len() as u64);
        assert!(out == data);
        assert_eq!(r.next().unwrap(), Next::Part("empty".into()));
        r.skip_part().unwrap();
        assert_eq!(r.next().unwrap(), Next::End);
        let (_, parts) = verify(&s[..]).unwrap();
        assert_eq!(
            parts,
            vec![("layer".into(), data.len() as u64), ("empty".into(), 0)]
        );
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused() {
        let s = stream(&[("layer", b"hello world".repeat(50))]);
        for len in 0..s.len() {
            let e = verify(&s[..len]).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{len}: {e}");
        }
        for i in 0..s.len() {
            let mut bad = s.clone();
            bad[i] ^= 0x20;
            assert!(verify(&bad[..]).is_err(), "byte {i} flipped went unnoticed");
        }
        let e = verify(&b"#!/bin/sh\necho hi\n"[..]).unwrap_err();
        assert!(e.to_string().contains("not a vectl backup"), "{e}");
    }
}
