//! Media files a call can play: Ogg Opus (RFC 7845) and IVF (VP8, VP9, AV1),
//! read whole into frames with their durations in RTP clock ticks.

use std::path::Path;

/// One encoded frame and how long it lasts, in RTP clock ticks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub data: Vec<u8>,
    /// RTP ticks: 48 kHz for Opus, 90 kHz for video.
    pub duration: u32,
    /// Decodable on its own (always true for Opus).
    pub keyframe: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MediaFileError {
    #[error("cannot read the media file: {0}")]
    Io(#[from] std::io::Error),
    #[error("not an Ogg or IVF file")]
    UnknownFormat,
    /// The file stops inside the thing that starts at `offset`.
    #[error("the file ends inside {what} starting at byte {offset}")]
    Truncated { what: &'static str, offset: usize },
    #[error("bad Ogg file at byte {offset}: {reason}")]
    NotOgg { reason: &'static str, offset: usize },
    #[error("Ogg page {sequence} at byte {offset} fails its CRC")]
    BadCrc { sequence: u32, offset: usize },
    #[error("not an Opus stream: {0}")]
    NotOpus(&'static str),
    #[error("bad IVF file at byte {offset}: {reason}")]
    NotIvf { reason: &'static str, offset: usize },
    #[error("IVF codec {0:?} is not VP8, VP9 or AV1")]
    UnsupportedCodec(String),
    #[error("the file holds no frames")]
    Empty,
}

use MediaFileError::{NotIvf, NotOgg, NotOpus, Truncated};

/// A whole file's frames, in order.
#[derive(Debug, Clone)]
pub struct MediaFile {
    /// "opus", "vp8", "vp9" or "av1".
    pub codec: &'static str,
    /// 48000 for Opus, 90000 for video.
    pub clock_rate: u32,
    pub frames: Vec<Frame>,
}

impl MediaFile {
    /// Read an Ogg Opus file (RFC 7845) or an IVF file (VP8/VP9/AV1), by its magic bytes.
    pub fn read(path: &Path) -> Result<MediaFile, MediaFileError> {
        Self::parse(&std::fs::read(path)?)
    }

    /// Parse the bytes of an Ogg Opus or IVF file.
    pub fn parse(bytes: &[u8]) -> Result<MediaFile, MediaFileError> {
        let file = if bytes.starts_with(b"OggS") {
            parse_ogg_opus(bytes)?
        } else if bytes.starts_with(b"DKIF") {
            parse_ivf(bytes)?
        } else {
            return Err(MediaFileError::UnknownFormat);
        };
        if file.frames.is_empty() {
            return Err(MediaFileError::Empty);
        }
        Ok(file)
    }
}

/// How long an Opus packet plays, in 48 kHz ticks, from its TOC byte
/// (RFC 6716 §3.1, §3.2.5).
pub fn opus_duration(packet: &[u8]) -> Result<u32, MediaFileError> {
    let &toc = packet.first().ok_or(NotOpus("an empty audio packet"))?;
    let config = usize::from(toc >> 3);
    let frame = match config {
        0..=11 => [480, 960, 1920, 2880][config % 4], // SILK: 10, 20, 40, 60 ms
        12..=15 => [480, 960][config % 2],            // Hybrid: 10, 20 ms
        _ => [120, 240, 480, 960][config % 4],        // CELT: 2.5, 5, 10, 20 ms
    };
    let count = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => {
            let &count = packet
                .get(1)
                .ok_or(NotOpus("a code 3 packet without its frame count"))?;
            u32::from(count & 0x3f)
        }
    };
    match frame * count {
        0 => Err(NotOpus("a code 3 packet of zero frames")),
        duration if duration > 5760 => Err(NotOpus("a packet longer than 120 ms")),
        duration => Ok(duration),
    }
}

/// Ogg's CRC-32 table: polynomial 0x04c11db7, not reflected.
const OGG_CRC: [u32; 256] = {
    let mut table = [0; 256];
    let mut i = 0;
    while i < 256 {
        let mut r = (i as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            r = if r & 0x8000_0000 != 0 {
                (r << 1) ^ 0x04c1_1db7
            } else {
                r << 1
            };
            bit += 1;
        }
        table[i] = r;
        i += 1;
    }
    table
};

fn ogg_crc(crc: u32, bytes: &[u8]) -> u32 {
    bytes.iter().fold(crc, |crc, &b| {
        (crc << 8) ^ OGG_CRC[usize::from((crc >> 24) as u8 ^ b)]
    })
}

const CONTINUED: u8 = 0x01;
const FIRST_PAGE: u8 = 0x02;
const LAST_PAGE: u8 = 0x04;

/// One Ogg page (RFC 3533 §6), its CRC checked.
struct Page<'a> {
    flags: u8,
    serial: u32,
    sequence: u32,
    lacing: &'a [u8],
    body: &'a [u8],
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from(le_u32(b, at)) | u64::from(le_u32(b, at + 4)) << 32
}

/// The page at `at` and its length.
fn ogg_page(bytes: &[u8], at: usize) -> Result<(Page<'_>, usize), MediaFileError> {
    let p = &bytes[at..];
    let truncated = || Truncated {
        what: "an Ogg page",
        offset: at,
    };
    if !p.starts_with(&b"OggS"[..p.len().min(4)]) {
        return Err(NotOgg {
            reason: "no page here",
            offset: at,
        });
    }
    if p.len() < 27 {
        return Err(truncated());
    }
    if p[4] != 0 {
        return Err(NotOgg {
            reason: "unknown page version",
            offset: at,
        });
    }
    let segments = usize::from(p[26]);
    let lacing = p.get(27..27 + segments).ok_or_else(truncated)?;
    let len = 27 + segments + lacing.iter().map(|&l| usize::from(l)).sum::<usize>();
    let page = p.get(..len).ok_or_else(truncated)?;
    let sequence = le_u32(page, 18);
    let crc = ogg_crc(ogg_crc(ogg_crc(0, &page[..22]), &[0; 4]), &page[26..]);
    if crc != le_u32(page, 22) {
        return Err(MediaFileError::BadCrc {
            sequence,
            offset: at,
        });
    }
    let page = Page {
        flags: page[5],
        serial: le_u32(page, 14),
        sequence,
        lacing,
        body: &page[27 + segments..],
    };
    Ok((page, len))
}

/// The packets of the file's first logical stream, up to its last page.
fn ogg_packets(bytes: &[u8]) -> Result<Vec<Vec<u8>>, MediaFileError> {
    let mut packets = Vec::new();
    let mut partial: Option<Vec<u8>> = None;
    // The stream's serial number and the page sequence number due next.
    let mut stream: Option<(u32, u32)> = None;
    let mut at = 0;
    while at < bytes.len() {
        let (page, len) = ogg_page(bytes, at)?;
        let offset = at;
        at += len;
        let bad = |reason| NotOgg { reason, offset };
        let due = match stream {
            None if page.flags & FIRST_PAGE == 0 => return Err(bad("no first page")),
            None => page.sequence,
            Some((serial, _)) if serial != page.serial => continue,
            Some((_, due)) => due,
        };
        if page.sequence != due {
            return Err(bad("a page is missing before this one"));
        }
        stream = Some((page.serial, due.wrapping_add(1)));
        match (page.flags & CONTINUED != 0, partial.is_some()) {
            (true, false) => return Err(bad("page continues a packet that never started")),
            (false, true) => return Err(bad("page starts before the last packet ends")),
            _ => {}
        }
        let mut body = page.body;
        for &lace in page.lacing {
            let (segment, rest) = body.split_at(usize::from(lace));
            body = rest;
            let mut packet = partial.take().unwrap_or_default();
            packet.extend_from_slice(segment);
            if lace == 255 {
                partial = Some(packet);
            } else {
                packets.push(packet);
            }
        }
        if page.flags & LAST_PAGE != 0 {
            if partial.is_some() {
                return Err(bad("the stream ends inside a packet"));
            }
            return Ok(packets);
        }
    }
    Err(Truncated {
        what: "the Ogg stream",
        offset: 0,
    })
}

/// RFC 7845 §5.1: check the OpusHead packet.
fn check_opus_head(head: &[u8]) -> Result<(), MediaFileError> {
    if head.len() < 19 || !head.starts_with(b"OpusHead") {
        return Err(NotOpus("the first packet is not an OpusHead"));
    }
    if head[8] > 15 {
        return Err(NotOpus("unknown OpusHead version"));
    }
    let channels = usize::from(head[9]);
    let family = head[18];
    if channels == 0 {
        return Err(NotOpus("zero channels"));
    }
    if family == 0 && channels > 2 {
        return Err(NotOpus("more than two channels with mapping family 0"));
    }
    if family != 0 && head.len() < 21 + channels {
        return Err(NotOpus("the OpusHead channel mapping table is cut short"));
    }
    Ok(())
}

fn parse_ogg_opus(bytes: &[u8]) -> Result<MediaFile, MediaFileError> {
    let mut packets = ogg_packets(bytes)?.into_iter();
    check_opus_head(&packets.next().unwrap_or_default())?;
    if !packets.next().unwrap_or_default().starts_with(b"OpusTags") {
        return Err(NotOpus("the second packet is not an OpusTags"));
    }
    let frames = packets
        .map(|data| {
            Ok(Frame {
                duration: opus_duration(&data)?,
                data,
                keyframe: true,
            })
        })
        .collect::<Result<_, MediaFileError>>()?;
    Ok(MediaFile {
        codec: "opus",
        clock_rate: 48_000,
        frames,
    })
}

/// A VP9 frame that is a keyframe, from its uncompressed header (VP9 spec §6.2).
fn vp9_keyframe(data: &[u8]) -> bool {
    let Some(&b) = data.first() else {
        return false;
    };
    let profile = (b >> 5 & 1) | (b >> 4 & 1) << 1;
    // After frame_marker (2 bits), the profile (2) and, for profile 3, a reserved bit.
    let shift = if profile == 3 { 2 } else { 3 };
    let show_existing = b >> shift & 1 == 1;
    let frame_type = b >> (shift - 1) & 1;
    b >> 6 == 2 && !show_existing && frame_type == 0
}

/// An AV1 temporal unit that carries a sequence header: encoders send one
/// with every keyframe.
fn av1_keyframe(data: &[u8]) -> bool {
    let mut at = 0;
    while let Some(&header) = data.get(at) {
        if header >> 3 & 0xf == 1 {
            return true;
        }
        at += 1 + usize::from(header >> 2 & 1); // the extension byte
        if header & 0b10 == 0 {
            return false; // no size field: the OBU runs to the end
        }
        let mut size = 0usize;
        for i in 0..8 {
            let Some(&b) = data.get(at) else {
                return false;
            };
            at += 1;
            size |= usize::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                break;
            }
        }
        at = at.saturating_add(size);
    }
    false
}

/// IVF: a 32-byte header, then frames each behind a 12-byte header.
fn parse_ivf(bytes: &[u8]) -> Result<MediaFile, MediaFileError> {
    let truncated = |what, offset| Truncated { what, offset };
    if bytes.len() < 32 {
        return Err(truncated("the IVF header", 0));
    }
    let header_len = usize::from(u16::from_le_bytes([bytes[6], bytes[7]]));
    let (codec, keyframe): (_, fn(&[u8]) -> bool) = match &bytes[8..12] {
        b"VP80" => ("vp8", |d| d.first().is_some_and(|b| b & 1 == 0)),
        b"VP90" => ("vp9", vp9_keyframe),
        b"AV01" => ("av1", av1_keyframe),
        other => {
            let name = String::from_utf8_lossy(other).into_owned();
            return Err(MediaFileError::UnsupportedCodec(name));
        }
    };
    // Timestamps count units of num/den seconds.
    let (den, num) = (le_u32(bytes, 16), le_u32(bytes, 20));
    if header_len < 32 || den == 0 || num == 0 {
        return Err(NotIvf {
            reason: "bad header length or timebase",
            offset: 0,
        });
    }
    // A pts in 90 kHz ticks, rounded; durations are differences of these, so
    // rounding never adds up.
    let ticks = |pts: u64| {
        (u128::from(pts) * 90_000 * u128::from(num) + u128::from(den / 2)) / u128::from(den)
    };

    let mut frames: Vec<Frame> = Vec::new();
    let mut last: Option<(u128, usize)> = None; // the previous frame's ticks and offset
    let mut at = header_len;
    while at < bytes.len() {
        let head = bytes
            .get(at..at + 12)
            .ok_or(truncated("an IVF frame header", at))?;
        let size = le_u32(head, 0) as usize;
        let data = bytes
            .get(at + 12..at + 12 + size)
            .ok_or(truncated("an IVF frame", at))?;
        if data.is_empty() {
            return Err(NotIvf {
                reason: "an empty frame",
                offset: at,
            });
        }
        let now = ticks(le_u64(head, 4));
        if let (Some((then, offset)), Some(prev)) = (last, frames.last_mut()) {
            let gap = now.checked_sub(then).ok_or(NotIvf {
                reason: "the next frame's timestamp goes backwards",
                offset,
            })?;
            prev.duration = u32::try_from(gap).map_err(|_| NotIvf {
                reason: "over 13 hours to the next frame",
                offset,
            })?;
        }
        frames.push(Frame {
            data: data.to_vec(),
            duration: 0,
            keyframe: keyframe(data),
        });
        last = Some((now, at));
        at += 12 + size;
    }
    let n = frames.len();
    if n > 0 {
        frames[n - 1].duration = if n > 1 { frames[n - 2].duration } else { 3000 };
    }
    Ok(MediaFile {
        codec,
        clock_rate: 90_000,
        frames,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TONE: &[u8] = include_bytes!("../../../static/tone.opus");

    /// A valid Ogg page of stream `serial`.
    fn page_of(serial: u32, flags: u8, sequence: u32, lacing: &[u8], body: &[u8]) -> Vec<u8> {
        let mut p = b"OggS\0".to_vec();
        p.push(flags);
        p.extend_from_slice(&[0; 8]); // granule position
        p.extend_from_slice(&serial.to_le_bytes());
        p.extend_from_slice(&sequence.to_le_bytes());
        p.extend_from_slice(&[0; 4]);
        p.push(lacing.len() as u8);
        p.extend_from_slice(lacing);
        p.extend_from_slice(body);
        let crc = ogg_crc(0, &p);
        p[22..26].copy_from_slice(&crc.to_le_bytes());
        p
    }

    fn page(flags: u8, sequence: u32, lacing: &[u8], body: &[u8]) -> Vec<u8> {
        page_of(7, flags, sequence, lacing, body)
    }

    /// Each frame's duration and keyframe flag.
    fn timing(file: &MediaFile) -> Vec<(u32, bool)> {
        file.frames
            .iter()
            .map(|f| (f.duration, f.keyframe))
            .collect()
    }

    fn opus_head(channels: u8, family: u8) -> Vec<u8> {
        let mut h = b"OpusHead\x01".to_vec();
        h.push(channels);
        h.extend_from_slice(&[0x38, 0x01, 0x80, 0xbb, 0, 0, 0, 0, family]);
        h
    }

    /// OpusHead and OpusTags pages, then `rest`.
    fn ogg_opus(head: &[u8], rest: &[Vec<u8>]) -> Vec<u8> {
        let mut file = page(FIRST_PAGE, 0, &[head.len() as u8], head);
        file.extend(page(0, 1, &[16], b"OpusTags\0\0\0\0\0\0\0\0"));
        rest.iter().for_each(|p| file.extend_from_slice(p));
        file
    }

    fn ivf(fourcc: &[u8; 4], den: u32, num: u32, frames: &[(u64, &[u8])]) -> Vec<u8> {
        let mut f = b"DKIF\0\0\x20\0".to_vec();
        f.extend_from_slice(fourcc);
        f.extend_from_slice(&[0x40, 1, 0xf0, 0]); // 320x240
        f.extend_from_slice(&den.to_le_bytes());
        f.extend_from_slice(&num.to_le_bytes());
        f.extend_from_slice(&(frames.len() as u32).to_le_bytes());
        f.extend_from_slice(&[0; 4]);
        for (pts, data) in frames {
            f.extend_from_slice(&(data.len() as u32).to_le_bytes());
            f.extend_from_slice(&pts.to_le_bytes());
            f.extend_from_slice(data);
        }
        f
    }

    #[test]
    fn the_tone_asset_is_one_second_of_20ms_opus_frames() {
        let file = MediaFile::parse(TONE).unwrap();
        assert_eq!((file.codec, file.clock_rate), ("opus", 48_000));
        // 1 s of tone plus the encoder's 312-sample pre-skip: 51 frames.
        assert_eq!(file.frames.len(), 51);
        assert!(file.frames.iter().all(|f| f.duration == 960 && f.keyframe));
        assert!(file.frames.iter().all(|f| !f.data.is_empty()));
        let total: u32 = file.frames.iter().map(|f| f.duration).sum();
        assert_eq!(total, 48_960);
    }

    #[test]
    fn the_ogg_crc_is_crc32_with_zero_init_and_no_reflection() {
        // CRC-32/CKSUM of "123456789" is 0x765e7680, which also inverts its output.
        assert_eq!(ogg_crc(0, b"123456789"), !0x765e_7680);
    }

    #[test]
    fn a_corrupted_page_fails_its_crc() {
        let mut bad = TONE.to_vec();
        bad[22] ^= 1;
        assert!(matches!(
            MediaFile::parse(&bad),
            Err(MediaFileError::BadCrc {
                sequence: 0,
                offset: 0
            })
        ));
        let mut bad = TONE.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0x80;
        assert!(matches!(
            MediaFile::parse(&bad),
            Err(MediaFileError::BadCrc { sequence: 2.., .. })
        ));
    }

    #[test]
    fn a_truncated_ogg_file_is_an_error() {
        for len in [4, 20, 100, TONE.len() / 2, TONE.len() - 1] {
            let err = MediaFile::parse(&TONE[..len]).unwrap_err();
            assert!(matches!(err, Truncated { .. }), "{len}: {err}");
        }
        // Cut right before the last page: whole pages, but no end of stream.
        let last_page = TONE.windows(4).rposition(|w| w == b"OggS").unwrap();
        let err = MediaFile::parse(&TONE[..last_page]).unwrap_err();
        assert!(matches!(err, Truncated { .. }), "{err}");
    }

    #[test]
    fn packets_are_joined_across_lacing_values_and_pages() {
        let a: Vec<u8> = (0..600).map(|i| (i % 251) as u8 | 0xf8).collect(); // config 31
        let b: Vec<u8> = (0..300).map(|i| (i % 13) as u8).collect(); // config 0
        let body = [&a[..], &b[..255]].concat();
        let file = ogg_opus(
            &opus_head(1, 0),
            &[
                page(0, 2, &[255, 255, 90, 255], &body),
                // Another logical stream's page in between is skipped.
                page_of(8, FIRST_PAGE, 0, &[1], &[0xfc]),
                page(CONTINUED | LAST_PAGE, 3, &[45], &b[255..]),
            ],
        );
        let frames = MediaFile::parse(&file).unwrap().frames;
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].data, a);
        assert_eq!(frames[0].duration, 960);
        assert_eq!(frames[1].data, b);
        assert_eq!(frames[1].duration, 480);
        // A zero-length packet has no TOC byte.
        let empty = ogg_opus(&opus_head(1, 0), &[page(LAST_PAGE, 2, &[0], &[])]);
        assert!(matches!(MediaFile::parse(&empty), Err(NotOpus(_))));
    }

    #[test]
    fn broken_ogg_streams_are_refused() {
        let head = opus_head(2, 0);
        let audio = |seq, flags| page(flags, seq, &[1], &[0xfc]);
        let ok = ogg_opus(&head, &[audio(2, 0), audio(3, LAST_PAGE)]);
        assert_eq!(MediaFile::parse(&ok).unwrap().frames.len(), 2);

        let gap = ogg_opus(&head, &[audio(2, 0), audio(4, LAST_PAGE)]);
        let orphan = ogg_opus(&head, &[audio(2, CONTINUED | LAST_PAGE)]);
        let unfinished = ogg_opus(&head, &[page(LAST_PAGE, 2, &[255], &[0xfc; 255])]);
        for file in [gap, orphan, unfinished] {
            let err = MediaFile::parse(&file).unwrap_err();
            assert!(matches!(err, NotOgg { .. }), "{err}");
        }
        let mut garbage = ok.clone();
        garbage.extend_from_slice(b"junk");
        assert!(MediaFile::parse(&garbage).is_ok(), "junk after the end");

        let no_audio = ogg_opus(&head, &[page(LAST_PAGE, 2, &[], &[])]);
        assert!(matches!(
            MediaFile::parse(&no_audio),
            Err(MediaFileError::Empty)
        ));
        for head in [opus_head(0, 0), opus_head(3, 0), opus_head(3, 1)] {
            let file = ogg_opus(&head, &[audio(2, LAST_PAGE)]);
            let err = MediaFile::parse(&file).unwrap_err();
            assert!(matches!(err, NotOpus(_)), "{err}");
        }
        let end = audio(2, LAST_PAGE);
        let vorbis = ogg_opus(b"\x01vorbis\0\0\0\0\0\0\0\0\0\0\0\0", &[end]);
        assert!(matches!(MediaFile::parse(&vorbis), Err(NotOpus(_))));
    }

    #[test]
    fn opus_durations_come_from_the_toc_byte() {
        let toc = |config: u8, code: u8| config << 3 | code;
        // Config 0: SILK narrowband 10 ms; code 3 with 3 frames.
        assert_eq!(opus_duration(&[toc(0, 3), 3]).unwrap(), 3 * 480);
        assert_eq!(opus_duration(&[toc(0, 3), 0x80 | 3]).unwrap(), 3 * 480);
        assert_eq!(opus_duration(&[toc(1, 0)]).unwrap(), 960);
        assert_eq!(opus_duration(&[toc(2, 0)]).unwrap(), 1920);
        assert_eq!(opus_duration(&[toc(11, 0)]).unwrap(), 2880);
        assert_eq!(opus_duration(&[toc(3, 1)]).unwrap(), 5760);
        assert_eq!(opus_duration(&[toc(12, 0)]).unwrap(), 480);
        assert_eq!(opus_duration(&[toc(15, 2)]).unwrap(), 1920);
        assert_eq!(opus_duration(&[toc(16, 0)]).unwrap(), 120);
        assert_eq!(opus_duration(&[toc(17, 0)]).unwrap(), 240);
        assert_eq!(opus_duration(&[toc(31, 0)]).unwrap(), 960);
        assert_eq!(opus_duration(&[toc(28, 3), 48]).unwrap(), 5760);
        for bad in [&[][..], &[toc(0, 3)], &[toc(0, 3), 0], &[toc(3, 3), 3]] {
            assert!(matches!(opus_duration(bad), Err(NotOpus(_))), "{bad:?}");
        }
    }

    #[test]
    fn a_hand_made_vp8_ivf_gives_durations_and_keyframes() {
        // Timebase 1/1000: 33 ms and 34 ms gaps, rounded from absolute times.
        let file = ivf(
            b"VP80",
            1000,
            1,
            &[(0, &[0x10, 1, 2]), (33, &[0x11, 3]), (67, &[0x31, 4, 5, 6])],
        );
        let file = MediaFile::parse(&file).unwrap();
        assert_eq!((file.codec, file.clock_rate), ("vp8", 90_000));
        assert_eq!(timing(&file), [(2970, true), (3060, false), (3060, false)]);
        assert_eq!(file.frames[2].data, [0x31, 4, 5, 6]);

        // Timebase 1/48000: 3201 units is 6001.875 ticks, rounded to 6002.
        let audio_clock = ivf(b"VP80", 48_000, 1, &[(0, &[0]), (1600, &[1]), (3201, &[1])]);
        let file = MediaFile::parse(&audio_clock).unwrap();
        assert_eq!(timing(&file), [(3000, true), (3002, false), (3002, false)]);

        let one = ivf(b"VP80", 30, 1, &[(5, &[0x10])]);
        assert_eq!(MediaFile::parse(&one).unwrap().frames[0].duration, 3000);
    }

    #[test]
    fn vp9_and_av1_keyframes_are_found() {
        let vp9 = ivf(
            b"VP90",
            30,
            1,
            &[
                (0, &[0b1000_0010, 0x49]), // profile 0, key frame
                (1, &[0b1000_0110, 0]),    // profile 0, inter frame
                (2, &[0b1011_0000, 0]),    // profile 3, key frame
                (3, &[0b1011_0010, 0]),    // profile 3, inter frame
                (4, &[0b1010_0000, 0]),    // profile 1, key frame
                (5, &[0b1000_1000]),       // shows an existing frame
                (6, &[0b0100_0000]),       // no frame marker
            ],
        );
        let file = MediaFile::parse(&vp9).unwrap();
        let keys: Vec<_> = file.frames.iter().map(|f| f.keyframe).collect();
        assert_eq!(keys, [true, false, true, false, true, false, false]);
        assert!(file.frames.iter().all(|f| f.duration == 3000));

        // Temporal delimiter, then a sequence header or only a frame OBU.
        let key: &[u8] = &[0x12, 0, 0x0a, 2, 0, 0, 0x32, 1, 0];
        let inter: &[u8] = &[0x12, 0, 0x32, 3, 0, 0, 0];
        let ext: &[u8] = &[0x16, 0, 0, 0x0e, 0, 1, 0];
        let av1 = ivf(b"AV01", 90_000, 1, &[(0, key), (1500, inter), (4500, ext)]);
        let file = MediaFile::parse(&av1).unwrap();
        assert_eq!(file.codec, "av1");
        assert_eq!(timing(&file), [(1500, true), (3000, false), (3000, true)]);
    }

    #[test]
    fn broken_ivf_files_are_refused() {
        let h264 = ivf(b"H264", 30, 1, &[(0, &[0])]);
        let err = MediaFile::parse(&h264).unwrap_err();
        assert!(err.to_string().contains("\"H264\""), "{err}");

        let good = ivf(b"VP80", 30, 1, &[(0, &[0x10, 1, 2, 3]), (1, &[0x11])]);
        for len in [10, 32 + 6, good.len() - 1] {
            let err = MediaFile::parse(&good[..len]).unwrap_err();
            assert!(matches!(err, Truncated { .. }), "{len}: {err}");
        }
        let backwards = ivf(b"VP80", 30, 1, &[(5, &[0x10]), (4, &[0x11])]);
        let empty = ivf(b"VP80", 30, 1, &[(0, &[])]);
        let no_timebase = ivf(b"VP80", 0, 1, &[(0, &[0x10])]);
        for file in [backwards, empty, no_timebase] {
            let err = MediaFile::parse(&file).unwrap_err();
            assert!(matches!(err, NotIvf { .. }), "{err}");
        }
        let header_only = ivf(b"VP80", 30, 1, &[]);
        assert!(matches!(
            MediaFile::parse(&header_only),
            Err(MediaFileError::Empty)
        ));
    }

    #[test]
    fn other_files_are_refused_by_their_magic_bytes() {
        assert!(matches!(
            MediaFile::parse(b"RIFF\0\0\0\0WAVE"),
            Err(MediaFileError::UnknownFormat)
        ));
        assert!(matches!(
            MediaFile::parse(b""),
            Err(MediaFileError::UnknownFormat)
        ));
        let missing = MediaFile::read(Path::new("/nonexistent/tone.opus"));
        assert!(matches!(missing, Err(MediaFileError::Io(_))));
    }
}
