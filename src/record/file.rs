//! The recording file: header, framing, checksums; writing and reading.
//!
//! ```text
//! header   "SKPROF\0REC" (10 bytes), format version (u16 LE)
//! frame    len (u32 LE) | kind (u8) | 3 zero bytes | crc32 of those 8 bytes (u32 LE)
//!          payload (len bytes) | crc32 of the payload (u32 LE)
//! ```
//!
//! The header checksum tells a cut-off file (a valid header whose payload
//! runs past the end) from a corrupt one (a damaged length).

use std::fs::File;
use std::io::{self, BufReader, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::codec::{self, Dec, DecodeError, Enc};
use super::{Frame, Meta};

pub const MAGIC: &[u8; 10] = b"SKPROF\0REC";
/// The version this skprof writes, and the newest it reads. 2: each cell
/// carries its call count apart from its latency histogram (the probes time
/// a sample of the calls), and the counters `run_refs_full`.
pub const FORMAT_VERSION: u16 = 2;
const HEADER_LEN: u64 = MAGIC.len() as u64 + 2;
const FRAME_HEADER_LEN: u64 = 12;
const FRAME_TRAILER_LEN: u64 = 4;
/// Largest payload accepted: far above any real frame (a reading of 4096
/// aggregates with every slot used is ~25 MB), low enough that a corrupt
/// length cannot ask for absurd memory.
const MAX_PAYLOAD: u32 = 1 << 30;

/// Why a recording cannot be written or read. Every message names the
/// file, and for damaged files the byte offset.
#[derive(Debug, Error)]
pub enum RecordError {
    #[error("cannot open {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("{}: empty file, not a skprof recording", path.display())]
    Empty { path: PathBuf },
    #[error("{}: not a skprof recording (it does not start with the recording magic)", path.display())]
    NotRecording { path: PathBuf },
    #[error(
        "{}: recording format version {version} is newer than this skprof reads (up to {supported}): use a newer skprof",
        path.display()
    )]
    FutureVersion {
        path: PathBuf,
        version: u16,
        supported: u16,
    },
    #[error("{}: truncated recording: it ends at byte {offset}, {what}", path.display())]
    Truncated {
        path: PathBuf,
        offset: u64,
        what: &'static str,
    },
    #[error("{}: corrupt recording at byte {offset}: {what}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: String,
    },
}

fn frame_header(kind: u8, len: u32) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[..4].copy_from_slice(&len.to_le_bytes());
    h[4] = kind;
    let crc = crc32fast::hash(&h[..8]);
    h[8..].copy_from_slice(&crc.to_le_bytes());
    h
}

fn encode(frame: &Frame) -> Vec<u8> {
    let mut e = Enc::default();
    match frame {
        Frame::Meta(m) => codec::enc_meta(&mut e, m),
        Frame::Interval(i) => codec::enc_interval(&mut e, i),
        Frame::Leaks(l) => codec::enc_leaks(&mut e, l),
        Frame::Workload(t) => codec::enc_workload(&mut e, t),
        Frame::End => {}
    }
    e.buf
}

/// Writes a recording frame by frame.
pub struct Writer {
    path: PathBuf,
    file: File,
    bytes: u64,
    frames: u64,
}

impl Writer {
    /// Creates (or overwrites) `path` and writes the header and `meta`.
    pub fn create(path: &Path, meta: &Meta) -> Result<Writer, RecordError> {
        let file = File::create(path).map_err(|source| RecordError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Writer::with_file(file, path, meta)
    }

    /// As `create`, on a file already opened for writing (so a command can
    /// fail on an unwritable path before doing anything costly). `path` is
    /// for messages.
    pub fn with_file(file: File, path: &Path, meta: &Meta) -> Result<Writer, RecordError> {
        let mut w = Writer {
            path: path.to_path_buf(),
            file,
            bytes: 0,
            frames: 0,
        };
        let mut head = MAGIC.to_vec();
        head.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        w.write(&head)?;
        w.write_frame(&Frame::Meta(meta.clone()))?;
        Ok(w)
    }

    fn write(&mut self, b: &[u8]) -> Result<(), RecordError> {
        self.file
            .write_all(b)
            .map_err(|source| RecordError::Write {
                path: self.path.clone(),
                source,
            })?;
        self.bytes += b.len() as u64;
        Ok(())
    }

    fn write_frame(&mut self, frame: &Frame) -> Result<(), RecordError> {
        let payload = encode(frame);
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|&l| l <= MAX_PAYLOAD)
            .ok_or_else(|| RecordError::Write {
                path: self.path.clone(),
                source: io::Error::new(
                    ErrorKind::InvalidData,
                    format!(
                        "a frame of {} bytes is over the format's limit",
                        payload.len()
                    ),
                ),
            })?;
        // One write per frame, straight to the file (no user-space buffer):
        // once `append` returns, a SIGKILL cannot lose the frame.
        let mut buf = Vec::with_capacity(payload.len() + 16);
        buf.extend_from_slice(&frame_header(frame.kind(), len));
        buf.extend_from_slice(&payload);
        buf.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        self.write(&buf)?;
        self.frames += 1;
        Ok(())
    }

    /// Appends one frame. `Meta` is written by `create` and `End` by
    /// `finish`; either here would make the file unreadable.
    pub fn append(&mut self, frame: &Frame) -> Result<(), RecordError> {
        if matches!(frame, Frame::Meta(_) | Frame::End) {
            return Err(RecordError::Write {
                path: self.path.clone(),
                source: io::Error::new(
                    ErrorKind::InvalidInput,
                    "Meta and End frames are written by Writer::create and Writer::finish",
                ),
            });
        }
        self.write_frame(frame)
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Frames written so far (the `Meta` frame included).
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Writes the `End` frame and syncs the file to disk.
    pub fn finish(mut self) -> Result<u64, RecordError> {
        self.write_frame(&Frame::End)?;
        self.file.sync_all().map_err(|source| RecordError::Write {
            path: self.path.clone(),
            source,
        })?;
        Ok(self.bytes)
    }
}

/// How reading ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Reading,
    /// Read the `End` frame.
    Ended,
    /// Ran out of file before an `End` frame: at this byte, and whether a
    /// frame was cut off there (else the file ends between frames).
    Cut {
        offset: u64,
        mid_frame: bool,
    },
    /// An error was returned; nothing more is read.
    Failed,
}

/// Reads a recording frame by frame, from a file (`open`) or from any
/// byte source (`from_reader`, `from_bytes`).
pub struct Reader<R: Read = BufReader<File>> {
    path: PathBuf,
    input: R,
    /// Total input length at open.
    len: u64,
    /// Offset of the next frame.
    offset: u64,
    version: u16,
    meta: Meta,
    frames: u64,
    state: State,
}

/// A frame read whole, not yet decoded.
struct RawFrame {
    offset: u64,
    kind: u8,
    payload: Vec<u8>,
}

/// Payload bytes allocated ahead of reading them: a length field is only
/// trusted as far as bytes actually arrive.
const PAYLOAD_PREALLOC: u64 = 1 << 20;

impl Reader {
    /// Opens `path` and reads its header and `Meta` frame.
    pub fn open(path: &Path) -> Result<Reader, RecordError> {
        let file = File::open(path).map_err(|source| RecordError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let md = file.metadata().map_err(|source| RecordError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        // Opening a directory succeeds; say what it is rather than how
        // reading it fails.
        if md.is_dir() {
            return Err(RecordError::Open {
                path: path.to_path_buf(),
                source: io::Error::from_raw_os_error(libc::EISDIR),
            });
        }
        Reader::from_reader(BufReader::new(file), md.len(), path)
    }
}

impl<'a> Reader<&'a [u8]> {
    /// Reads a recording held in memory; `path` names it in messages.
    pub fn from_bytes(bytes: &'a [u8], path: &Path) -> Result<Self, RecordError> {
        Reader::from_reader(bytes, bytes.len() as u64, path)
    }
}

impl<R: Read> Reader<R> {
    /// Reads the header and `Meta` frame of a recording of `len` bytes from
    /// `input` (positioned at its start); `path` names it in messages. A
    /// source that ends before `len` bytes reads as a cut-off recording;
    /// bytes past `len` are not read.
    pub fn from_reader(mut input: R, len: u64, path: &Path) -> Result<Self, RecordError> {
        if len == 0 {
            return Err(RecordError::Empty {
                path: path.to_path_buf(),
            });
        }
        let mut head = [0u8; HEADER_LEN as usize];
        let got = read_full(&mut input, &mut head).map_err(|source| RecordError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let m = got.min(MAGIC.len());
        if head[..m] != MAGIC[..m] {
            return Err(RecordError::NotRecording {
                path: path.to_path_buf(),
            });
        }
        if got < head.len() {
            return Err(RecordError::Truncated {
                path: path.to_path_buf(),
                offset: got as u64,
                what: "inside its header",
            });
        }
        let version = u16::from_le_bytes([head[10], head[11]]);
        if version == 0 {
            return Err(RecordError::Corrupt {
                path: path.to_path_buf(),
                offset: MAGIC.len() as u64,
                what: "format version 0 does not exist".into(),
            });
        }
        if version > FORMAT_VERSION {
            return Err(RecordError::FutureVersion {
                path: path.to_path_buf(),
                version,
                supported: FORMAT_VERSION,
            });
        }
        let mut r = Reader {
            path: path.to_path_buf(),
            input,
            len,
            offset: HEADER_LEN,
            version,
            meta: Meta {
                skprof_version: String::new(),
                kernel: String::new(),
                probe_mode: String::new(),
                hostname: String::new(),
                start_unix_ms: 0,
                interval_ms: 0,
                helpers: Vec::new(),
                attribution_off: None,
                command: Vec::new(),
            },
            frames: 0,
            state: State::Reading,
        };
        let Some(raw) = r.read_raw()? else {
            return Err(RecordError::Truncated {
                path: path.to_path_buf(),
                offset: len,
                what: "before its Meta frame was complete",
            });
        };
        if raw.kind != 1 {
            return Err(r.corrupt(
                raw.offset,
                format!(
                    "the first frame is a {} frame, not Meta",
                    Frame::kind_name(raw.kind)
                ),
            ));
        }
        let mut d = Dec::of_version(&raw.payload, r.version);
        let meta = codec::dec_meta(&mut d)
            .and_then(|m| d.finish().map(|()| m))
            .map_err(|e| r.decode_error(&raw, e))?;
        r.meta = meta;
        r.frames = 1;
        Ok(r)
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    pub fn format_version(&self) -> u16 {
        self.version
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file ended without an `End` frame (meaningful once the
    /// frames are read).
    pub fn truncated(&self) -> bool {
        matches!(self.state, State::Cut { .. })
    }

    /// Whether the `End` frame was read.
    pub fn ended_cleanly(&self) -> bool {
        self.state == State::Ended
    }

    /// Complete frames read so far, `Meta` included.
    pub fn frames_read(&self) -> u64 {
        self.frames
    }

    /// The line to show the user about a cut-off file, if it is one.
    pub fn warning(&self) -> Option<String> {
        let State::Cut { offset, mid_frame } = self.state else {
            return None;
        };
        let how = if mid_frame {
            format!(
                "cut off inside the frame at byte {offset}, file of {} bytes",
                self.len
            )
        } else {
            format!("no End frame after byte {offset}")
        };
        Some(format!(
            "{}: recording not finished ({how}; skprof record was killed?): using the {} complete frames before it",
            self.path.display(),
            self.frames
        ))
    }

    /// The frames after `Meta`, in order; ends after `End`, at the end of a
    /// cut-off file, or after the first error.
    pub fn frames(&mut self) -> Frames<'_, R> {
        Frames { reader: self }
    }

    /// The next frame, `None` once the recording is over.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, RecordError> {
        let raw = match self.read_raw() {
            Ok(Some(raw)) => raw,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.state = State::Failed;
                return Err(e);
            }
        };
        let result = self.decode(&raw);
        match &result {
            Ok(Frame::End) => self.state = State::Ended,
            Ok(_) => {}
            Err(_) => self.state = State::Failed,
        }
        if result.is_ok() {
            self.frames += 1;
        }
        result.map(Some)
    }

    fn corrupt(&self, offset: u64, what: String) -> RecordError {
        RecordError::Corrupt {
            path: self.path.clone(),
            offset,
            what,
        }
    }

    fn decode_error(&self, raw: &RawFrame, e: DecodeError) -> RecordError {
        self.corrupt(
            raw.offset + FRAME_HEADER_LEN + e.at as u64,
            format!("{} frame: {}", Frame::kind_name(raw.kind), e.what),
        )
    }

    fn decode(&self, raw: &RawFrame) -> Result<Frame, RecordError> {
        let mut d = Dec::of_version(&raw.payload, self.version);
        let frame = match raw.kind {
            1 => {
                return Err(self.corrupt(raw.offset, "a second Meta frame".into()));
            }
            2 => codec::dec_interval(&mut d).map(|i| Frame::Interval(Box::new(i))),
            3 => codec::dec_leaks(&mut d).map(Frame::Leaks),
            4 => codec::dec_workload(&mut d).map(|t| Frame::Workload(Box::new(t))),
            5 => Ok(Frame::End),
            k => {
                return Err(self.corrupt(raw.offset, format!("unknown frame kind {k}")));
            }
        };
        frame
            .and_then(|f| d.finish().map(|()| f))
            .map_err(|e| self.decode_error(raw, e))
    }

    /// Reads the next whole frame and checks its checksums. `None` at the
    /// end of the file (`state` says whether cleanly).
    fn read_raw(&mut self) -> Result<Option<RawFrame>, RecordError> {
        match self.state {
            State::Reading => {}
            State::Ended => {
                // Anything after End was not written by skprof record.
                if self.offset < self.len {
                    self.state = State::Failed;
                    return Err(self.corrupt(self.offset, "data after the End frame".into()));
                }
                return Ok(None);
            }
            State::Cut { .. } | State::Failed => return Ok(None),
        }
        let offset = self.offset;
        let read_err = |path: &Path, source| RecordError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut h = [0u8; FRAME_HEADER_LEN as usize];
        let got = read_full(&mut self.input, &mut h).map_err(|e| read_err(&self.path, e))?;
        if got == 0 {
            self.state = State::Cut {
                offset,
                mid_frame: false,
            };
            return Ok(None);
        }
        if got < h.len() {
            self.state = State::Cut {
                offset,
                mid_frame: true,
            };
            return Ok(None);
        }
        let crc = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        if crc32fast::hash(&h[..8]) != crc {
            return Err(self.corrupt(offset, "frame header fails its checksum".into()));
        }
        if h[5..8] != [0, 0, 0] {
            return Err(self.corrupt(offset, "frame header has non-zero reserved bytes".into()));
        }
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        if len > MAX_PAYLOAD {
            return Err(self.corrupt(offset, format!("frame length {len} is over the limit")));
        }
        let end = offset + FRAME_HEADER_LEN + u64::from(len) + FRAME_TRAILER_LEN;
        if end > self.len {
            // The header is intact (its checksum holds): the file was cut.
            self.state = State::Cut {
                offset,
                mid_frame: true,
            };
            return Ok(None);
        }
        // Grown as the bytes arrive (from a file, `len` is known to be there).
        let mut payload = Vec::with_capacity(u64::from(len).min(PAYLOAD_PREALLOC) as usize);
        let mut trailer = [0u8; 4];
        let got = read_upto(&mut self.input, &mut payload, u64::from(len))
            .and_then(|n| Ok(n + read_full(&mut self.input, &mut trailer)?))
            .map_err(|e| read_err(&self.path, e))?;
        if got < payload.len() + trailer.len() {
            // Shrunk since open.
            self.state = State::Cut {
                offset,
                mid_frame: true,
            };
            return Ok(None);
        }
        if crc32fast::hash(&payload) != u32::from_le_bytes(trailer) {
            return Err(self.corrupt(
                offset,
                format!("{} frame fails its checksum", Frame::kind_name(h[4])),
            ));
        }
        self.offset = end;
        Ok(Some(RawFrame {
            offset,
            kind: h[4],
            payload,
        }))
    }
}

/// Fills `buf` as far as the input goes; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Appends up to `n` bytes of the input to `buf` (`read_to_end` retries
/// interrupted reads); returns the bytes read.
fn read_upto(r: &mut impl Read, buf: &mut Vec<u8>, n: u64) -> io::Result<usize> {
    r.by_ref().take(n).read_to_end(buf)
}

/// Iterator over a reader's frames.
pub struct Frames<'a, R: Read = BufReader<File>> {
    reader: &'a mut Reader<R>,
}

impl<R: Read> Iterator for Frames<'_, R> {
    type Item = Result<Frame, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.reader.next_frame().transpose()
    }
}
