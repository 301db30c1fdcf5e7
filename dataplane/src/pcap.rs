//! Sans-IO reader of capture files held whole in memory: classic pcap and
//! pcapng.
//!
//! # Contract
//!
//! [`frames`] takes the bytes of a whole file and returns an iterator of
//! frames that borrow from it. No I/O, no allocation, no panics: a file cut
//! short or with impossible lengths ends with one `Err` item, after which
//! the iterator is exhausted. Work per item is bounded by the bytes it
//! consumes (every record or block is at least 12 bytes long).
//!
//! Formats:
//! - classic pcap in both byte orders, with microsecond (`0xa1b2c3d4`) or
//!   nanosecond (`0xa1b23c4d`) timestamps;
//! - pcapng (draft-ietf-opsawg-pcapng): section header blocks in either
//!   byte order (each section may differ), interface description blocks
//!   (link type, `if_tsresol`, `if_tsoffset`), enhanced, simple and obsolete
//!   packet blocks; every other block type is skipped. Up to
//!   [`MAX_INTERFACES`] interfaces per section are remembered in a fixed
//!   table.
//!
//! Every frame reports its link type; callers that want Ethernet keep link
//! type 1 ([`LINKTYPE_ETHERNET`]). Timestamps are nanoseconds since the Unix
//! epoch, saturating at the ends of `u64`; simple packet blocks carry none
//! and report 0.

/// Link type of Ethernet frames.
pub const LINKTYPE_ETHERNET: u16 = 1;

/// Most interfaces one pcapng section may describe.
pub const MAX_INTERFACES: usize = 32;

const CLASSIC_HEADER_LEN: usize = 24;
const CLASSIC_RECORD_HEADER_LEN: usize = 16;

const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
const MAGIC_NANOS: u32 = 0xa1b2_3c4d;

const BLOCK_SECTION_HEADER: u32 = 0x0a0d_0d0a;
const BLOCK_INTERFACE: u32 = 0x0000_0001;
const BLOCK_OBSOLETE_PACKET: u32 = 0x0000_0002;
const BLOCK_SIMPLE_PACKET: u32 = 0x0000_0003;
const BLOCK_ENHANCED_PACKET: u32 = 0x0000_0006;
const BYTE_ORDER_MAGIC: u32 = 0x1a2b_3c4d;
const MIN_BLOCK_LEN: usize = 12;
const MIN_SECTION_HEADER_LEN: usize = 28;

const OPTION_END: u16 = 0;
const OPTION_TSRESOL: u16 = 9;
const OPTION_TSOFFSET: u16 = 14;

/// One captured frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcapFrame<'a> {
    /// Link type of the interface it was captured on (1 = Ethernet).
    pub link_type: u16,
    /// Capture time, nanoseconds since the Unix epoch (0 when the format
    /// has none).
    pub timestamp_ns: u64,
    /// Length of the frame on the wire; more than `data.len()` when the
    /// capture's snap length cut it.
    pub original_len: u32,
    /// The captured bytes.
    pub data: &'a [u8],
}

/// Why a capture file cannot be read (further).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PcapError {
    /// Too short to hold the file header.
    #[error("file of {len} bytes is too short for a capture header")]
    TooShort {
        /// File length.
        len: usize,
    },
    /// Neither classic pcap nor pcapng.
    #[error("unknown capture file magic {magic:#010x}")]
    UnknownMagic {
        /// The first four bytes, read little endian.
        magic: u32,
    },
    /// A classic record header cut short.
    #[error("record header at offset {offset} cut short")]
    TruncatedRecordHeader {
        /// File offset of the record.
        offset: usize,
    },
    /// A classic record whose data runs past the end of the file.
    #[error("record at offset {offset} announces {len} bytes, but the file ends first")]
    TruncatedRecord {
        /// File offset of the record.
        offset: usize,
        /// Captured length the record announces.
        len: u32,
    },
    /// A pcapng block that runs past the end of the file.
    #[error("pcapng block at offset {offset} cut short")]
    TruncatedBlock {
        /// File offset of the block.
        offset: usize,
    },
    /// A pcapng block length that is impossible (below the minimum, not a
    /// multiple of 4, or different at the two ends).
    #[error("pcapng block at offset {offset} has impossible length {len}")]
    BadBlockLength {
        /// File offset of the block.
        offset: usize,
        /// The announced block length.
        len: u32,
    },
    /// A pcapng section header whose byte-order magic is neither order.
    #[error("pcapng section header at offset {offset} has no valid byte-order magic")]
    BadByteOrder {
        /// File offset of the block.
        offset: usize,
    },
    /// A pcapng packet block whose captured length overruns the block.
    #[error("pcapng packet block at offset {offset} has data overrunning the block")]
    BadPacketLength {
        /// File offset of the block.
        offset: usize,
    },
    /// A pcapng packet naming an interface the section did not describe.
    #[error("pcapng packet block at offset {offset} names undescribed interface {interface}")]
    UnknownInterface {
        /// File offset of the block.
        offset: usize,
        /// The interface ID.
        interface: u32,
    },
    /// A pcapng section describing more than [`MAX_INTERFACES`] interfaces.
    #[error("pcapng interface block at offset {offset} exceeds the limit of {MAX_INTERFACES} interfaces")]
    TooManyInterfaces {
        /// File offset of the block.
        offset: usize,
    },
}

/// Recognizes the file format and returns an iterator over its frames.
///
/// # Errors
/// [`PcapError::TooShort`], [`PcapError::UnknownMagic`], or for pcapng
/// [`PcapError::BadByteOrder`] when the first section header is unreadable.
pub fn frames(file: &[u8]) -> Result<PcapFrames<'_>, PcapError> {
    let Some(magic_bytes) = file.first_chunk::<4>() else {
        return Err(PcapError::TooShort { len: file.len() });
    };
    let magic = u32::from_le_bytes(*magic_bytes);
    let classic = |big_endian: bool, nanos: bool| {
        if file.len() < CLASSIC_HEADER_LEN {
            return Err(PcapError::TooShort { len: file.len() });
        }
        let network = read_u32(file, 20, big_endian);
        Ok(PcapFrames {
            file,
            pos: CLASSIC_HEADER_LEN,
            done: false,
            format: Format::Classic {
                big_endian,
                nanos,
                link_type: network as u16,
            },
            interfaces: [Interface::UNDESCRIBED; MAX_INTERFACES],
            interface_count: 0,
        })
    };
    match magic {
        MAGIC_MICROS => classic(false, false),
        MAGIC_NANOS => classic(false, true),
        m if m == MAGIC_MICROS.swap_bytes() => classic(true, false),
        m if m == MAGIC_NANOS.swap_bytes() => classic(true, true),
        BLOCK_SECTION_HEADER => {
            if file.len() < MIN_SECTION_HEADER_LEN {
                return Err(PcapError::TooShort { len: file.len() });
            }
            if section_byte_order(file, 0).is_none() {
                return Err(PcapError::BadByteOrder { offset: 0 });
            }
            Ok(PcapFrames {
                file,
                pos: 0,
                done: false,
                format: Format::Ng { big_endian: false },
                interfaces: [Interface::UNDESCRIBED; MAX_INTERFACES],
                interface_count: 0,
            })
        }
        magic => Err(PcapError::UnknownMagic { magic }),
    }
}

/// Iterator over the frames of a capture file; see [`frames`].
#[derive(Debug, Clone)]
pub struct PcapFrames<'a> {
    file: &'a [u8],
    pos: usize,
    done: bool,
    format: Format,
    /// The current pcapng section's interfaces (unused for classic pcap).
    interfaces: [Interface; MAX_INTERFACES],
    interface_count: usize,
}

#[derive(Debug, Clone)]
enum Format {
    Classic {
        big_endian: bool,
        nanos: bool,
        link_type: u16,
    },
    Ng {
        big_endian: bool,
    },
}

/// What a pcapng interface description says about its packets.
#[derive(Debug, Clone, Copy)]
struct Interface {
    link_type: u16,
    /// `if_tsresol`: high bit clear means 10^-n seconds, set means 2^-n.
    tsresol: u8,
    /// `if_tsoffset`: seconds added to every timestamp.
    tsoffset: i64,
}

impl Interface {
    const UNDESCRIBED: Interface = Interface {
        link_type: 0,
        tsresol: 6,
        tsoffset: 0,
    };

    fn timestamp_ns(&self, ticks: u64) -> u64 {
        let ticks = u128::from(ticks);
        let exponent = u32::from(self.tsresol & 0x7f);
        let ns: u128 = if self.tsresol & 0x80 != 0 {
            (ticks * 1_000_000_000) >> exponent
        } else if exponent <= 9 {
            ticks * 10u128.pow(9 - exponent)
        } else {
            match 10u128.checked_pow(exponent - 9) {
                Some(divisor) => ticks / divisor,
                None => 0,
            }
        };
        let ns = ns as i128 + i128::from(self.tsoffset) * 1_000_000_000;
        ns.clamp(0, i128::from(u64::MAX)) as u64
    }
}

impl<'a> Iterator for PcapFrames<'a> {
    type Item = Result<PcapFrame<'a>, PcapError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos >= self.file.len() {
            return None;
        }
        let item = match self.format {
            Format::Classic {
                big_endian,
                nanos,
                link_type,
            } => self.next_classic(big_endian, nanos, link_type),
            Format::Ng { .. } => self.next_ng(),
        };
        match item {
            Some(Err(_)) | None => self.done = true,
            Some(Ok(_)) => {}
        }
        item
    }
}

impl<'a> PcapFrames<'a> {
    fn next_classic(
        &mut self,
        big_endian: bool,
        nanos: bool,
        link_type: u16,
    ) -> Option<Result<PcapFrame<'a>, PcapError>> {
        let offset = self.pos;
        let rest = &self.file[offset..];
        if rest.len() < CLASSIC_RECORD_HEADER_LEN {
            return Some(Err(PcapError::TruncatedRecordHeader { offset }));
        }
        let seconds = u64::from(read_u32(rest, 0, big_endian));
        let fraction = u64::from(read_u32(rest, 4, big_endian));
        let captured = read_u32(rest, 8, big_endian);
        let original_len = read_u32(rest, 12, big_endian);
        let end = CLASSIC_RECORD_HEADER_LEN.saturating_add(captured as usize);
        let Some(data) = rest.get(CLASSIC_RECORD_HEADER_LEN..end) else {
            return Some(Err(PcapError::TruncatedRecord {
                offset,
                len: captured,
            }));
        };
        self.pos += end;
        let fraction_ns = if nanos {
            fraction
        } else {
            fraction.saturating_mul(1000)
        };
        let timestamp_ns = seconds
            .saturating_mul(1_000_000_000)
            .saturating_add(fraction_ns);
        Some(Ok(PcapFrame {
            link_type,
            timestamp_ns,
            original_len,
            data,
        }))
    }

    fn next_ng(&mut self) -> Option<Result<PcapFrame<'a>, PcapError>> {
        // Each pass consumes one block of at least 12 bytes, so the loop
        // ends within file.len() / 12 passes.
        while self.pos < self.file.len() {
            let offset = self.pos;
            let rest = &self.file[offset..];
            if rest.len() < MIN_BLOCK_LEN {
                return Some(Err(PcapError::TruncatedBlock { offset }));
            }
            let Format::Ng { big_endian } = &mut self.format else {
                return None;
            };
            let block_type = read_u32(rest, 0, *big_endian);
            if block_type == BLOCK_SECTION_HEADER {
                match section_byte_order(rest, 0) {
                    Some(order) => *big_endian = order,
                    None => return Some(Err(PcapError::BadByteOrder { offset })),
                }
                self.interface_count = 0;
            }
            let big_endian = *big_endian;
            let block_len = read_u32(rest, 4, big_endian);
            let len = block_len as usize;
            if len < MIN_BLOCK_LEN || len & 3 != 0 {
                return Some(Err(PcapError::BadBlockLength {
                    offset,
                    len: block_len,
                }));
            }
            let Some(block) = rest.get(..len) else {
                return Some(Err(PcapError::TruncatedBlock { offset }));
            };
            if read_u32(block, len - 4, big_endian) != block_len {
                return Some(Err(PcapError::BadBlockLength {
                    offset,
                    len: block_len,
                }));
            }
            self.pos += len;
            let body = &block[8..len - 4];
            let interface = |id: u32| -> Result<Interface, PcapError> {
                let index = id as usize;
                if index < self.interface_count {
                    Ok(self.interfaces[index])
                } else {
                    Err(PcapError::UnknownInterface {
                        offset,
                        interface: id,
                    })
                }
            };
            let bad_length = PcapError::BadPacketLength { offset };
            match block_type {
                BLOCK_SECTION_HEADER if body.len() < MIN_SECTION_HEADER_LEN - MIN_BLOCK_LEN => {
                    return Some(Err(PcapError::BadBlockLength {
                        offset,
                        len: block_len,
                    }));
                }
                BLOCK_INTERFACE => {
                    if body.len() < 8 {
                        return Some(Err(PcapError::BadBlockLength {
                            offset,
                            len: block_len,
                        }));
                    }
                    if self.interface_count == MAX_INTERFACES {
                        return Some(Err(PcapError::TooManyInterfaces { offset }));
                    }
                    self.interfaces[self.interface_count] = describe_interface(body, big_endian);
                    self.interface_count += 1;
                }
                BLOCK_ENHANCED_PACKET | BLOCK_OBSOLETE_PACKET => {
                    if body.len() < 20 {
                        return Some(Err(bad_length));
                    }
                    let id = if block_type == BLOCK_ENHANCED_PACKET {
                        read_u32(body, 0, big_endian)
                    } else {
                        u32::from(read_u16(body, 0, big_endian))
                    };
                    let iface = match interface(id) {
                        Ok(iface) => iface,
                        Err(err) => return Some(Err(err)),
                    };
                    let ticks = (u64::from(read_u32(body, 4, big_endian)) << 32)
                        | u64::from(read_u32(body, 8, big_endian));
                    let captured = read_u32(body, 12, big_endian) as usize;
                    let original_len = read_u32(body, 16, big_endian);
                    let Some(data) = body.get(20..20usize.saturating_add(captured)) else {
                        return Some(Err(bad_length));
                    };
                    let timestamp_ns = iface.timestamp_ns(ticks);
                    return Some(Ok(PcapFrame {
                        link_type: iface.link_type,
                        timestamp_ns,
                        original_len,
                        data,
                    }));
                }
                BLOCK_SIMPLE_PACKET => {
                    if body.len() < 4 {
                        return Some(Err(bad_length));
                    }
                    let iface = match interface(0) {
                        Ok(iface) => iface,
                        Err(err) => return Some(Err(err)),
                    };
                    let original_len = read_u32(body, 0, big_endian);
                    let data = &body[4..];
                    let data = &data[..data.len().min(original_len as usize)];
                    return Some(Ok(PcapFrame {
                        link_type: iface.link_type,
                        timestamp_ns: 0,
                        original_len,
                        data,
                    }));
                }
                _ => {}
            }
        }
        None
    }
}

/// Reads a section header's byte-order magic: `Some(true)` for big endian.
fn section_byte_order(block: &[u8], at: usize) -> Option<bool> {
    let magic = block.get(at + 8..at + 12)?;
    match u32::from_le_bytes([magic[0], magic[1], magic[2], magic[3]]) {
        BYTE_ORDER_MAGIC => Some(false),
        m if m == BYTE_ORDER_MAGIC.swap_bytes() => Some(true),
        _ => None,
    }
}

/// Reads link type and the timestamp options of an interface description
/// body (at least 8 bytes). Malformed options end the option walk; the
/// defaults stand for whatever was not read.
fn describe_interface(body: &[u8], big_endian: bool) -> Interface {
    let mut interface = Interface {
        link_type: read_u16(body, 0, big_endian),
        ..Interface::UNDESCRIBED
    };
    let mut options = &body[8..];
    while options.len() >= 4 {
        let code = read_u16(options, 0, big_endian);
        let len = usize::from(read_u16(options, 2, big_endian));
        let Some(value) = options.get(4..4 + len) else {
            break;
        };
        match code {
            OPTION_END => break,
            OPTION_TSRESOL if len >= 1 => interface.tsresol = value[0],
            OPTION_TSOFFSET if len == 8 => {
                let mut bytes = [0; 8];
                bytes.copy_from_slice(value);
                interface.tsoffset = if big_endian {
                    i64::from_be_bytes(bytes)
                } else {
                    i64::from_le_bytes(bytes)
                };
            }
            _ => {}
        }
        let padded = (4 + len).div_ceil(4) * 4;
        options = options.get(padded..).unwrap_or(&[]);
    }
    interface
}

fn read_u16(buf: &[u8], at: usize, big_endian: bool) -> u16 {
    let bytes = [buf[at], buf[at + 1]];
    if big_endian {
        u16::from_be_bytes(bytes)
    } else {
        u16::from_le_bytes(bytes)
    }
}

fn read_u32(buf: &[u8], at: usize, big_endian: bool) -> u32 {
    let bytes = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
    if big_endian {
        u32::from_be_bytes(bytes)
    } else {
        u32::from_le_bytes(bytes)
    }
}
