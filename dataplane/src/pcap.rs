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

#[cfg(test)]
mod tests {
    use super::*;

    fn put_u16(out: &mut Vec<u8>, value: u16, big_endian: bool) {
        out.extend_from_slice(&if big_endian {
            value.to_be_bytes()
        } else {
            value.to_le_bytes()
        });
    }

    fn put_u32(out: &mut Vec<u8>, value: u32, big_endian: bool) {
        out.extend_from_slice(&if big_endian {
            value.to_be_bytes()
        } else {
            value.to_le_bytes()
        });
    }

    /// A classic pcap file; records are (seconds, fraction, original length, data).
    fn classic(
        big_endian: bool,
        nanos: bool,
        link_type: u32,
        records: &[(u32, u32, u32, &[u8])],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        put_u32(
            &mut out,
            if nanos { MAGIC_NANOS } else { MAGIC_MICROS },
            big_endian,
        );
        put_u16(&mut out, 2, big_endian);
        put_u16(&mut out, 4, big_endian);
        put_u32(&mut out, 0, big_endian);
        put_u32(&mut out, 0, big_endian);
        put_u32(&mut out, 65535, big_endian);
        put_u32(&mut out, link_type, big_endian);
        for (seconds, fraction, original, data) in records {
            put_u32(&mut out, *seconds, big_endian);
            put_u32(&mut out, *fraction, big_endian);
            put_u32(&mut out, data.len() as u32, big_endian);
            put_u32(&mut out, *original, big_endian);
            out.extend_from_slice(data);
        }
        out
    }

    fn block(big_endian: bool, block_type: u32, body: &[u8]) -> Vec<u8> {
        let padded = body.len().div_ceil(4) * 4;
        let total = (12 + padded) as u32;
        let mut out = Vec::new();
        put_u32(&mut out, block_type, big_endian);
        put_u32(&mut out, total, big_endian);
        out.extend_from_slice(body);
        out.resize(8 + padded, 0);
        put_u32(&mut out, total, big_endian);
        out
    }

    fn section_header(big_endian: bool) -> Vec<u8> {
        let mut body = Vec::new();
        put_u32(&mut body, BYTE_ORDER_MAGIC, big_endian);
        put_u16(&mut body, 1, big_endian);
        put_u16(&mut body, 0, big_endian);
        body.extend_from_slice(&[0xff; 8]); // section length unknown
        block(big_endian, BLOCK_SECTION_HEADER, &body)
    }

    /// An interface description; `options` are (code, value).
    fn interface(big_endian: bool, link_type: u16, options: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        put_u16(&mut body, link_type, big_endian);
        put_u16(&mut body, 0, big_endian);
        put_u32(&mut body, 262_144, big_endian);
        for (code, value) in options {
            put_u16(&mut body, *code, big_endian);
            put_u16(&mut body, value.len() as u16, big_endian);
            body.extend_from_slice(value);
            body.resize(body.len().div_ceil(4) * 4, 0);
        }
        if !options.is_empty() {
            put_u32(&mut body, 0, big_endian); // opt_endofopt
        }
        block(big_endian, BLOCK_INTERFACE, &body)
    }

    fn enhanced(
        big_endian: bool,
        interface_id: u32,
        ticks: u64,
        original: u32,
        data: &[u8],
    ) -> Vec<u8> {
        let mut body = Vec::new();
        put_u32(&mut body, interface_id, big_endian);
        put_u32(&mut body, (ticks >> 32) as u32, big_endian);
        put_u32(&mut body, ticks as u32, big_endian);
        put_u32(&mut body, data.len() as u32, big_endian);
        put_u32(&mut body, original, big_endian);
        body.extend_from_slice(data);
        block(big_endian, BLOCK_ENHANCED_PACKET, &body)
    }

    fn obsolete(big_endian: bool, interface_id: u16, ticks: u64, data: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        put_u16(&mut body, interface_id, big_endian);
        put_u16(&mut body, 0, big_endian);
        put_u32(&mut body, (ticks >> 32) as u32, big_endian);
        put_u32(&mut body, ticks as u32, big_endian);
        put_u32(&mut body, data.len() as u32, big_endian);
        put_u32(&mut body, data.len() as u32, big_endian);
        body.extend_from_slice(data);
        block(big_endian, BLOCK_OBSOLETE_PACKET, &body)
    }

    fn simple(big_endian: bool, data: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        put_u32(&mut body, data.len() as u32, big_endian);
        body.extend_from_slice(data);
        block(big_endian, BLOCK_SIMPLE_PACKET, &body)
    }

    fn collect(file: &[u8]) -> Vec<Result<PcapFrame<'_>, PcapError>> {
        frames(file).unwrap().collect()
    }

    #[test]
    fn classic_little_endian_micros() {
        let file = classic(
            false,
            false,
            1,
            &[(10, 250_000, 60, &[1, 2, 3]), (11, 1, 1514, &[4; 5])],
        );
        let got = collect(&file);
        assert_eq!(
            got,
            vec![
                Ok(PcapFrame {
                    link_type: 1,
                    timestamp_ns: 10_250_000_000,
                    original_len: 60,
                    data: &[1, 2, 3]
                }),
                Ok(PcapFrame {
                    link_type: 1,
                    timestamp_ns: 11_000_001_000,
                    original_len: 1514,
                    data: &[4; 5]
                }),
            ]
        );
    }

    #[test]
    fn classic_big_endian_nanos_reports_other_link_types() {
        // The upper bits of the link-type field (FCS information) are not the link type.
        let file = classic(true, true, 0x1000_0071, &[(1, 5, 3, &[9, 9, 9])]);
        let got = collect(&file);
        assert_eq!(
            got,
            vec![Ok(PcapFrame {
                link_type: 113,
                timestamp_ns: 1_000_000_005,
                original_len: 3,
                data: &[9, 9, 9]
            })]
        );
    }

    fn pcapng_file() -> Vec<u8> {
        let mut file = section_header(false);
        file.extend(interface(false, 1, &[]));
        file.extend(block(false, 0x0000_0bad, &[1, 2, 3, 4, 5]));
        file.extend(enhanced(false, 0, 1_500_000, 64, &[0xaa; 7]));
        // Nanosecond resolution, 10 s offset.
        file.extend(interface(
            false,
            228,
            &[
                (OPTION_TSRESOL, &[9]),
                (OPTION_TSOFFSET, &10i64.to_le_bytes()),
            ],
        ));
        file.extend(enhanced(false, 1, 42, 3, &[1, 2, 3]));
        file.extend(simple(false, &[5; 6]));
        file.extend(obsolete(false, 1, 7, &[6; 2]));
        // A second section in the other byte order; interfaces start over.
        file.extend(section_header(true));
        file.extend(interface(true, 1, &[(OPTION_TSRESOL, &[0x80 | 10])]));
        file.extend(enhanced(true, 0, 3 * 1024, 4, &[7; 4]));
        file
    }

    #[test]
    fn pcapng_sections_interfaces_and_packet_blocks() {
        let file = pcapng_file();
        let got = collect(&file);
        let expected = vec![
            Ok(PcapFrame {
                link_type: 1,
                timestamp_ns: 1_500_000_000,
                original_len: 64,
                data: &[0xaa; 7][..],
            }),
            Ok(PcapFrame {
                link_type: 228,
                timestamp_ns: 10_000_000_042,
                original_len: 3,
                data: &[1, 2, 3][..],
            }),
            Ok(PcapFrame {
                link_type: 1,
                timestamp_ns: 0,
                original_len: 6,
                data: &[5; 6][..],
            }),
            Ok(PcapFrame {
                link_type: 228,
                timestamp_ns: 10_000_000_007,
                original_len: 2,
                data: &[6; 2][..],
            }),
            Ok(PcapFrame {
                link_type: 1,
                timestamp_ns: 3_000_000_000,
                original_len: 4,
                data: &[7; 4][..],
            }),
        ];
        assert_eq!(got, expected);
    }

    /// Every prefix of a valid file yields fewer frames or ends in an error;
    /// an error is always the last item; nothing panics.
    fn check_prefixes(file: &[u8]) {
        let full = collect(file).len();
        for len in 0..file.len() {
            let Ok(iter) = frames(&file[..len]) else {
                continue;
            };
            let items: Vec<_> = iter.collect();
            let errors = items.iter().filter(|item| item.is_err()).count();
            assert!(errors <= 1, "len {len}");
            if errors == 1 {
                assert!(items.last().unwrap().is_err(), "len {len}");
            }
            let ok = items.len() - errors;
            assert!(
                ok < full || errors == 1,
                "len {len}: {ok} frames of {full} without an error"
            );
        }
    }

    #[test]
    fn truncation_at_every_length_ends_cleanly() {
        check_prefixes(&classic(
            false,
            false,
            1,
            &[(1, 2, 3, &[1, 2, 3]), (4, 5, 6, &[7; 6])],
        ));
        check_prefixes(&classic(true, true, 1, &[(1, 2, 3, &[1, 2, 3])]));
        check_prefixes(&pcapng_file());
        // A record cut in its data reports where it was.
        let file = classic(false, false, 1, &[(1, 2, 3, &[1, 2, 3])]);
        let last = collect(&file[..file.len() - 1]).pop().unwrap();
        assert_eq!(last, Err(PcapError::TruncatedRecord { offset: 24, len: 3 }));
    }

    #[test]
    fn bad_files_are_errors() {
        assert_eq!(
            frames(&[0xd4, 0xc3]).unwrap_err(),
            PcapError::TooShort { len: 2 }
        );
        assert_eq!(
            frames(&[0xd4, 0xc3, 0xb2, 0xa1, 0]).unwrap_err(),
            PcapError::TooShort { len: 5 }
        );
        assert_eq!(
            frames(b"GIF89a").unwrap_err(),
            PcapError::UnknownMagic { magic: 0x3846_4947 }
        );
        let mut bad_order = section_header(false);
        bad_order[8] = 0;
        assert_eq!(
            frames(&bad_order).unwrap_err(),
            PcapError::BadByteOrder { offset: 0 }
        );

        // A packet before any interface description.
        let mut file = section_header(false);
        let at = file.len();
        file.extend(enhanced(false, 0, 0, 1, &[1]));
        assert_eq!(
            collect(&file),
            vec![Err(PcapError::UnknownInterface {
                offset: at,
                interface: 0
            })]
        );

        // Block lengths: not a multiple of 4, below 12, ends disagreeing.
        for (len, trailer) in [(13u32, 13u32), (8, 8), (16, 20)] {
            let mut file = section_header(false);
            let at = file.len();
            put_u32(&mut file, 0xbad, false);
            put_u32(&mut file, len, false);
            put_u32(&mut file, 0, false);
            put_u32(&mut file, trailer, false);
            file.resize(file.len().max(at + 20), 0);
            let last = collect(&file).pop().unwrap();
            assert!(
                matches!(last, Err(PcapError::BadBlockLength { offset, .. }) if offset == at),
                "{last:?}"
            );
        }

        // Captured length beyond the block.
        let mut file = section_header(false);
        file.extend(interface(false, 1, &[]));
        let at = file.len();
        let mut packet = enhanced(false, 0, 0, 4, &[1, 2, 3, 4]);
        packet[20] = 200;
        file.extend(packet);
        assert_eq!(
            collect(&file),
            vec![Err(PcapError::BadPacketLength { offset: at })]
        );

        // Too many interfaces in one section.
        let mut file = section_header(false);
        for _ in 0..=MAX_INTERFACES {
            file.extend(interface(false, 1, &[]));
        }
        let last = collect(&file).pop().unwrap();
        assert!(
            matches!(last, Err(PcapError::TooManyInterfaces { .. })),
            "{last:?}"
        );

        // The iterator is exhausted after an error.
        let file = classic(false, false, 1, &[(1, 2, 3, &[1, 2, 3])]);
        let mut iter = frames(&file[..30]).unwrap();
        assert!(matches!(iter.next(), Some(Err(_))));
        assert_eq!(iter.next(), None);
    }

    #[test]
    fn timestamp_resolutions() {
        let with = |tsresol: u8, tsoffset: i64| Interface {
            link_type: 1,
            tsresol,
            tsoffset,
        };
        assert_eq!(with(6, 0).timestamp_ns(1), 1_000);
        assert_eq!(with(9, 0).timestamp_ns(1), 1);
        assert_eq!(with(12, 0).timestamp_ns(5_000), 5);
        assert_eq!(with(127, 0).timestamp_ns(u64::MAX), 0);
        assert_eq!(with(0x80 | 20, 0).timestamp_ns(1 << 20), 1_000_000_000);
        assert_eq!(with(0x80 | 127, 0).timestamp_ns(u64::MAX), 0);
        assert_eq!(with(0, 0).timestamp_ns(u64::MAX), u64::MAX);
        assert_eq!(with(9, -5).timestamp_ns(1), 0);
        assert_eq!(with(9, i64::MAX).timestamp_ns(1), u64::MAX);
    }
}

#[cfg(test)]
mod proptests {
    use super::*;

    proptest::proptest! {
        /// Arbitrary bytes behind each magic never panic, and an error is
        /// always the last item.
        #[test]
        fn never_panics(
            magic in proptest::sample::select(vec![
                vec![0xd4, 0xc3, 0xb2, 0xa1],
                vec![0xa1, 0xb2, 0x3c, 0x4d],
                vec![0x0a, 0x0d, 0x0d, 0x0a],
            ]),
            rest in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
        ) {
            let mut file = magic;
            file.extend_from_slice(&rest);
            if file.len() >= 12 && file[0] == 0x0a {
                file[8..12].copy_from_slice(&BYTE_ORDER_MAGIC.to_le_bytes());
            }
            if let Ok(iter) = frames(&file) {
                let mut saw_error = false;
                for item in iter {
                    proptest::prop_assert!(!saw_error);
                    saw_error = item.is_err();
                }
            }
        }
    }
}
