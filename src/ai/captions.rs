//! Captions from timed speech segments: [`cues`] cuts what a transcription gives into
//! cues that respect the usual subtitle limits ([`CueRules`]); [`srt`] and [`vtt`] write
//! them as SubRip and WebVTT; [`parse_srt`] and [`parse_vtt`] read them back. The WebVTT
//! parser is strict: it validates our own output and files others hand us.
//!
//! Times inside a [`Cue`] are whole milliseconds (all that either format can express),
//! so a cue written by [`vtt`] and read back by [`parse_vtt`] compares equal.
//!
//! ```text
//! WEBVTT
//!
//! 00:00:00.000 --> 00:00:01.500
//! Hello world.
//!
//! 00:00:02.000 --> 00:00:04.250
//! Fish &amp; chips
//! ```
//!
//! Line lengths count Unicode scalar values (`char`s), not display width.

use serde::{Deserialize, Serialize};

/// Latest accepted segment time (about 31 years): keeps millisecond sums exact and far
/// from overflow.
const MAX_SECONDS: f64 = 1e9;

/// A timed piece of speech, as a transcription gives it (seconds from the start).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub start: f64,
    pub end: f64,
    pub text: String,
}

/// Limits a cue respects (the usual broadcast/web subtitle rules).
#[derive(Debug, Clone)]
pub struct CueRules {
    /// Characters per line; default 42.
    pub max_line_chars: usize,
    /// Lines per cue; default 2.
    pub max_lines: usize,
    /// Longest cue, in seconds; default 7.0.
    pub max_cue_s: f64,
    /// Shortest cue, in seconds; default 1.0. A shorter cue is extended into the gap
    /// before the next one, never overlapping it.
    pub min_cue_s: f64,
}

impl Default for CueRules {
    fn default() -> CueRules {
        CueRules {
            max_line_chars: 42,
            max_lines: 2,
            max_cue_s: 7.0,
            min_cue_s: 1.0,
        }
    }
}

/// One caption on screen: from `start` to `end` (seconds, whole milliseconds), its lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cue {
    pub start: f64,
    pub end: f64,
    pub lines: Vec<String>,
}

/// A cue read from a caption file becomes one segment (its lines joined by spaces), so
/// SRT or WebVTT supplied by a user can be re-cut with [`cues`].
impl From<Cue> for Segment {
    fn from(cue: Cue) -> Segment {
        Segment {
            start: cue.start,
            end: cue.end,
            text: cue.lines.join(" "),
        }
    }
}

/// Why captions cannot be made or read.
#[derive(Debug, thiserror::Error)]
pub enum CaptionError {
    /// Segment `index` (in the input slice) has unusable times.
    #[error("segment {index}: {reason}")]
    BadSegment { index: usize, reason: String },
    /// Rules no cue can satisfy (a zero line length, `min_cue_s > max_cue_s`, ...).
    #[error("cue rules: {reason}")]
    BadRules { reason: String },
    /// A caption file that is not valid; `line` counts from 1.
    #[error("line {line}: {reason}")]
    Parse { line: usize, reason: String },
}

/// [`CueRules`] checked and in the units the cutting works in.
struct Limits {
    line: usize,
    lines: usize,
    max_ms: u64,
    min_ms: u64,
}

impl Limits {
    fn new(r: &CueRules) -> Result<Limits, CaptionError> {
        let bad = |reason: &str| {
            Err(CaptionError::BadRules {
                reason: reason.to_string(),
            })
        };
        if r.max_line_chars == 0 || r.max_lines == 0 {
            return bad("max_line_chars and max_lines must be at least 1");
        }
        if !(r.max_cue_s >= 0.001 && r.max_cue_s <= MAX_SECONDS) {
            return bad("max_cue_s must be between 0.001 and 10^9");
        }
        if !(r.min_cue_s >= 0.0 && r.min_cue_s <= r.max_cue_s) {
            return bad("min_cue_s must be between 0 and max_cue_s");
        }
        Ok(Limits {
            line: r.max_line_chars,
            lines: r.max_lines,
            max_ms: to_ms(r.max_cue_s),
            min_ms: to_ms(r.min_cue_s),
        })
    }
}

/// A cue being built, in milliseconds.
struct Timed {
    start: u64,
    end: u64,
    lines: Vec<String>,
}

/// Cues for `segments`.
///
/// - Whitespace is normalised (runs become one space) and empty segments are dropped.
/// - A segment too long for one cue (more than `max_lines` lines of `max_line_chars`, or
///   longer than `max_cue_s`) is split at word boundaries into cues whose times divide the
///   segment's time in proportion to their characters, cut near equal shares of the text.
/// - Lines are filled greedily at word boundaries. A word longer than a line is
///   hard-broken into pieces of `max_line_chars`, so the limits always hold; only a
///   single word spoken for longer than `max_cue_s` gets a cue shortened to `max_cue_s`.
/// - Cues are sorted by start (input order among equal starts), never overlap (an earlier
///   cue is cut where the next begins), and always end after they start: a cue starting
///   with or before the previous one is moved `min_cue_s` (at least 1 ms) after it.
/// - Cues shorter than `min_cue_s` are extended into the gap before the next cue.
///
/// A segment time that is NaN, negative, infinite (or beyond 10^9 s), or an end before
/// its start, is a [`CaptionError::BadSegment`]. A segment with `start == end` is
/// accepted and extended like any short cue.
pub fn cues(segments: &[Segment], rules: &CueRules) -> Result<Vec<Cue>, CaptionError> {
    let limits = Limits::new(rules)?;
    let mut timed = Vec::new();
    for (index, segment) in segments.iter().enumerate() {
        let (start, end) =
            segment_ms(segment).map_err(|reason| CaptionError::BadSegment { index, reason })?;
        let words = words(&segment.text, limits.line);
        if !words.is_empty() {
            split(&words, start, end, &limits, &mut timed);
        }
    }
    timed.sort_by_key(|c| c.start);
    Ok(settle(timed, &limits))
}

/// A segment's times in milliseconds, or why they are unusable.
fn segment_ms(s: &Segment) -> Result<(u64, u64), String> {
    for (name, t) in [("start", s.start), ("end", s.end)] {
        if t.is_nan() {
            return Err(format!("{name} is NaN"));
        }
        if t < 0.0 {
            return Err(format!("{name} is negative ({t})"));
        }
        if t > MAX_SECONDS {
            return Err(format!("{name} is beyond 10^9 s ({t})"));
        }
    }
    if s.end < s.start {
        return Err(format!("end {} is before start {}", s.end, s.start));
    }
    Ok((to_ms(s.start), to_ms(s.end)))
}

/// The words of `text`, a word longer than `width` characters cut into pieces of `width`.
fn words(text: &str, width: usize) -> Vec<String> {
    let mut out = Vec::new();
    for word in text.split_whitespace() {
        let chars: Vec<char> = word.chars().collect();
        out.extend(chars.chunks(width).map(|piece| piece.iter().collect()));
    }
    out
}

/// Lines of at most `width` characters, filled greedily (no word is longer than `width`).
fn wrap(words: &[String], width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut len = 0;
    for word in words {
        let n = word.chars().count();
        match lines.last_mut() {
            Some(line) if len + 1 + n <= width => {
                line.push(' ');
                line.push_str(word);
                len += 1 + n;
            }
            _ => {
                lines.push(word.clone());
                len = n;
            }
        }
    }
    lines
}

/// Cuts `words`, spoken from `start` to `end` ms, into cues that fit `limits`.
///
/// First as many cues as the text (greedy wrapping) or the time needs, cut near equal
/// shares of the text; then any cue still over a limit is halved until none is.
fn split(words: &[String], start: u64, end: u64, limits: &Limits, out: &mut Vec<Timed>) {
    // offsets[i]: where word i starts in the words joined by spaces; the last entry is
    // one past the end, so offsets[b] - offsets[a] - 1 is the length of words a..b.
    let mut offsets = Vec::with_capacity(words.len() + 1);
    let mut at = 0;
    for word in words {
        offsets.push(at);
        at += word.chars().count() + 1;
    }
    offsets.push(at);
    let total = at - 1;

    let by_text = wrap(words, limits.line).len().div_ceil(limits.lines);
    let by_time = usize::try_from((end - start).div_ceil(limits.max_ms)).unwrap_or(usize::MAX);
    let n = by_text.max(by_time).clamp(1, words.len());
    // cuts: the first word of each cue, then words.len().
    let mut cuts = vec![0];
    for k in 1..n {
        let lo = cuts[k - 1] + 1;
        let hi = words.len() - (n - k);
        cuts.push(nearest(&offsets, lo, hi, k * total / n));
    }
    cuts.push(words.len());

    loop {
        let times = times(&cuts, &offsets, start, end);
        let over = (0..cuts.len() - 1).find(|&k| {
            let (a, b) = (cuts[k], cuts[k + 1]);
            b - a > 1
                && (times[k + 1] - times[k] > limits.max_ms
                    || wrap(&words[a..b], limits.line).len() > limits.lines)
        });
        let Some(k) = over else {
            for k in 0..cuts.len() - 1 {
                out.push(Timed {
                    start: times[k],
                    end: times[k + 1].min(times[k] + limits.max_ms),
                    lines: wrap(&words[cuts[k]..cuts[k + 1]], limits.line),
                });
            }
            return;
        };
        let (a, b) = (cuts[k], cuts[k + 1]);
        let middle = nearest(&offsets, a + 1, b - 1, (offsets[a] + offsets[b]) / 2);
        cuts.insert(k + 1, middle);
    }
}

/// The index in `lo..=hi` whose offset is closest to `target` (the earlier on a tie).
fn nearest(offsets: &[usize], lo: usize, hi: usize, target: usize) -> usize {
    let i = lo + offsets[lo..=hi].partition_point(|&o| o < target);
    if i > hi || (i > lo && target - offsets[i - 1] <= offsets[i] - target) {
        i - 1
    } else {
        i
    }
}

/// Start times of the cues `cuts` makes, then `end`: the segment's time divided in
/// proportion to each cue's characters, rounded to the millisecond.
fn times(cuts: &[usize], offsets: &[usize], start: u64, end: u64) -> Vec<u64> {
    let cues = cuts.len() - 1;
    // Characters before cue k: offsets[cuts[k]] less one space per earlier cue.
    let before = |k: usize| (offsets[cuts[k]] - k) as u128;
    let all = before(cues);
    let span = u128::from(end - start);
    (0..=cues)
        .map(|k| start + ((2 * span * before(k) + all) / (2 * all)) as u64)
        .collect()
}

/// Sorted cues made valid: starts strictly increasing (a cue starting with or before the
/// previous one moves `min_ms`, at least 1 ms, after it), short cues extended to `min_ms`,
/// and every cue ended no later than the next one starts.
fn settle(mut timed: Vec<Timed>, limits: &Limits) -> Vec<Cue> {
    let step = limits.min_ms.max(1);
    for k in 1..timed.len() {
        if timed[k].start <= timed[k - 1].start {
            timed[k].start = timed[k - 1].start.saturating_add(step);
        }
    }
    let next: Vec<u64> = timed.iter().skip(1).map(|c| c.start).collect();
    timed
        .into_iter()
        .enumerate()
        .map(|(k, c)| {
            let until = next.get(k).copied().unwrap_or(u64::MAX);
            let end = c.end.max(c.start.saturating_add(step)).min(until);
            Cue {
                start: to_s(c.start),
                end: to_s(end),
                lines: c.lines,
            }
        })
        .collect()
}

/// Seconds to whole milliseconds, to the nearest (halves up); negative and NaN give 0.
fn to_ms(seconds: f64) -> u64 {
    // `as` saturates: negative and NaN become 0, huge values u64::MAX.
    (seconds * 1000.0).round() as u64
}

fn to_s(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// `HH:MM:SS<sep>mmm`, hours padded to two digits and longer when needed.
fn clock(seconds: f64, sep: char) -> String {
    let ms = to_ms(seconds);
    let (h, m, s) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60);
    format!("{h:02}:{m:02}:{s:02}{sep}{:03}", ms % 1000)
}

/// A cue's text lines as written: embedded line breaks split, blank lines left out
/// (a blank line would end the cue in either format).
fn text_lines(cue: &Cue) -> impl Iterator<Item = &str> {
    cue.lines
        .iter()
        .flat_map(|l| l.lines())
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
}

/// SubRip: cues numbered from 1, `HH:MM:SS,mmm --> HH:MM:SS,mmm`, the text lines, then a
/// blank line; `\n` line ends. SubRip has no escaping, so `-->` in text is written `→`
/// (a reader might take the line for a timing); other text is written as it is.
/// Negative or NaN times are written as 0.
pub fn srt(cues: &[Cue]) -> String {
    let mut out = String::new();
    for (i, cue) in cues.iter().enumerate() {
        let (start, end) = (clock(cue.start, ','), clock(cue.end, ','));
        out.push_str(&format!("{}\n{start} --> {end}\n", i + 1));
        for line in text_lines(cue) {
            out.push_str(&line.replace("-->", "→"));
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

/// WebVTT: `WEBVTT`, a blank line, then each cue as `HH:MM:SS.mmm --> HH:MM:SS.mmm`, its
/// text lines and a blank line. `&`, `<` and `>` are escaped, which also keeps `-->` out
/// of the text (it becomes `--&gt;`) and lets [`parse_vtt`] give the text back exactly.
/// Negative or NaN times are written as 0.
pub fn vtt(cues: &[Cue]) -> String {
    let mut out = String::from("WEBVTT\n\n");
    for cue in cues {
        let (start, end) = (clock(cue.start, '.'), clock(cue.end, '.'));
        out.push_str(&format!("{start} --> {end}\n"));
        for line in text_lines(cue) {
            let line = line
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;");
            out.push_str(&line);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

fn parse_error(line: usize, reason: impl Into<String>) -> CaptionError {
    CaptionError::Parse {
        line,
        reason: reason.into(),
    }
}

/// The lines of `text` after an optional byte-order mark, split at CRLF, LF or CR.
fn split_lines(text: &str) -> Vec<&str> {
    let mut rest = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = Vec::new();
    while let Some(i) = rest.find(['\r', '\n']) {
        lines.push(&rest[..i]);
        let eol = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[i + eol..];
    }
    lines.push(rest);
    lines
}

/// Runs of non-empty lines, each with the number (from 1) of its first line.
fn blocks<'a>(lines: &[&'a str]) -> Vec<(usize, Vec<&'a str>)> {
    let mut blocks: Vec<(usize, Vec<&str>)> = Vec::new();
    let mut open = false;
    for (i, line) in lines.iter().enumerate() {
        match (line.is_empty(), open, blocks.last_mut()) {
            (true, _, _) => open = false,
            (false, true, Some((_, block))) => block.push(line),
            (false, _, _) => {
                blocks.push((i + 1, vec![line]));
                open = true;
            }
        }
    }
    blocks
}

/// Whether `line` is `keyword` alone or followed by a space or tab (then anything).
fn starts_block(line: &str, keyword: &str) -> bool {
    line.strip_prefix(keyword)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

/// A strict WebVTT parser, enough to validate what [`vtt`] writes and what others write.
///
/// Accepts an optional BOM; the `WEBVTT` signature alone or followed by a space or tab
/// and text; header lines up to the first blank line; `NOTE` blocks anywhere and
/// `STYLE`/`REGION` blocks before the first cue (skipped); cue identifiers; timings
/// `[HH:]MM:SS.mmm --> [HH:]MM:SS.mmm` (hours at least two digits, minutes and seconds
/// two digits below 60, milliseconds three digits) with optional `name:value` settings;
/// CRLF, LF or CR line ends. Requires start <= end and non-decreasing cue starts. Cue
/// text is unescaped (`&amp; &lt; &gt; &nbsp; &lrm; &rlm;` and numeric references);
/// tags such as `<i>` are kept as they are. Errors name the line.
pub fn parse_vtt(text: &str) -> Result<Vec<Cue>, CaptionError> {
    let lines = split_lines(text);
    if !starts_block(lines[0], "WEBVTT") {
        return Err(parse_error(1, "expected the WEBVTT signature"));
    }
    let mut blocks = blocks(&lines).into_iter();
    let (_, header) = blocks.next().unwrap_or_default();
    if let Some(i) = header.iter().position(|l| l.contains("-->")) {
        return Err(parse_error(i + 1, "expected a blank line after the header"));
    }
    let mut cues: Vec<Cue> = Vec::new();
    for (first, block) in blocks {
        if starts_block(block[0], "NOTE") {
            if let Some(i) = block.iter().position(|l| l.contains("-->")) {
                return Err(parse_error(first + i, "a NOTE block cannot contain '-->'"));
            }
            continue;
        }
        if ["STYLE", "REGION"]
            .iter()
            .any(|k| block[0].trim_end() == *k)
        {
            if !cues.is_empty() {
                return Err(parse_error(first, "STYLE and REGION come before the cues"));
            }
            continue;
        }
        let cue = vtt_cue(first, &block)?;
        if cues.last().is_some_and(|c| cue.start < c.start) {
            return Err(parse_error(first, "cue starts before the previous cue"));
        }
        cues.push(cue);
    }
    Ok(cues)
}

/// One WebVTT cue block starting at line `first`: identifier, timing, text.
fn vtt_cue(first: usize, block: &[&str]) -> Result<Cue, CaptionError> {
    let t = if block[0].contains("-->") { 0 } else { 1 };
    let Some(timing) = block.get(t) else {
        return Err(parse_error(first, "a cue identifier without a timing line"));
    };
    let (start, end) = vtt_timing(timing).map_err(|reason| parse_error(first + t, reason))?;
    if start > end {
        return Err(parse_error(first + t, "the cue ends before it starts"));
    }
    let mut lines = Vec::new();
    for (i, line) in block.iter().enumerate().skip(t + 1) {
        if line.contains("-->") {
            return Err(parse_error(first + i, "cue text cannot contain '-->'"));
        }
        lines.push(unescape(line));
    }
    Ok(Cue {
        start: to_s(start),
        end: to_s(end),
        lines,
    })
}

/// `start --> end [settings]`, with spaces or tabs around the arrow, in milliseconds.
fn vtt_timing(line: &str) -> Result<(u64, u64), String> {
    let blank = [' ', '\t'];
    let Some((left, right)) = line.split_once("-->") else {
        return Err("expected a timing line with '-->'".into());
    };
    let start = left.trim_end_matches(blank);
    let after = right.trim_start_matches(blank);
    if start.len() == left.len() || after.len() == right.len() {
        return Err("expected a space or tab on both sides of '-->'".into());
    }
    let (end, settings) = after.split_at(after.find(blank).unwrap_or(after.len()));
    for setting in settings.split(blank).filter(|s| !s.is_empty()) {
        match setting.split_once(':') {
            Some((name, value)) if !name.is_empty() && !value.is_empty() => {}
            _ => return Err(format!("bad cue setting {setting:?} (expected name:value)")),
        }
    }
    Ok((timestamp(start, '.', 2)?, timestamp(end, '.', 2)?))
}

/// `[HH:]MM:SS<sep>mmm` in milliseconds. Hours have at least `hour_digits` digits; with
/// `hour_digits == 1` (SubRip) they are required.
fn timestamp(s: &str, sep: char, hour_digits: usize) -> Result<u64, String> {
    let number = |part: &str, min: usize, max: usize| {
        let ok = (min..=max).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit());
        ok.then(|| part.parse::<u64>().ok()).flatten()
    };
    let parts: Vec<&str> = s.split(':').collect();
    let (hours, minutes, rest) = match parts[..] {
        [m, rest] if hour_digits > 1 => (Some(0), m, rest),
        [h, m, rest] => (number(h, hour_digits, 20), m, rest),
        _ => return Err(format!("bad timestamp {s:?}: expected HH:MM:SS{sep}mmm")),
    };
    let hours = hours.ok_or_else(|| format!("bad hours in {s:?}"))?;
    let (seconds, millis) = rest
        .split_once(sep)
        .ok_or_else(|| format!("bad timestamp {s:?}: expected {sep} before milliseconds"))?;
    let minutes = number(minutes, 2, 2)
        .filter(|&m| m < 60)
        .ok_or_else(|| format!("bad minutes in {s:?}: two digits below 60"))?;
    let seconds = number(seconds, 2, 2)
        .filter(|&s| s < 60)
        .ok_or_else(|| format!("bad seconds in {s:?}: two digits below 60"))?;
    let millis = number(millis, 3, 3)
        .ok_or_else(|| format!("bad milliseconds in {s:?}: exactly three digits"))?;
    hours
        .checked_mul(3_600_000)
        .and_then(|ms| ms.checked_add((minutes * 60 + seconds) * 1000 + millis))
        .filter(|&ms| ms as f64 <= MAX_SECONDS * 1000.0)
        .ok_or_else(|| format!("timestamp {s:?} is too large"))
}

/// Cue text with character references replaced; an `&` that starts none stays as it is.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        let decoded = rest
            .find(';')
            .and_then(|end| Some((reference(&rest[..end])?, end + 1)));
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => out.push('&'),
        }
    }
    out.push_str(rest);
    out
}

/// The character a reference `&name;` stands for.
fn reference(name: &str) -> Option<char> {
    let code = match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "nbsp" => '\u{a0}',
        "lrm" => '\u{200e}',
        "rlm" => '\u{200f}',
        _ => {
            let n = name.strip_prefix('#')?;
            let value = match n.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => n.parse().ok()?,
            };
            return char::from_u32(value);
        }
    };
    Some(code)
}

/// Parses SubRip: blocks of a cue number, `HH:MM:SS,mmm --> HH:MM:SS,mmm` (anything after
/// the end time, such as position hints, is ignored) and text lines, separated by blank
/// lines. Text is taken as it is (SubRip has no escaping). Requires start <= end; cues
/// are returned in file order (see [`cues`] to sort and re-cut them).
pub fn parse_srt(text: &str) -> Result<Vec<Cue>, CaptionError> {
    let lines = split_lines(text);
    let mut cues = Vec::new();
    for (first, block) in blocks(&lines) {
        let number = block[0].trim();
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(parse_error(first, "expected a cue number"));
        }
        let Some(timing) = block.get(1) else {
            return Err(parse_error(first, "a cue number without a timing line"));
        };
        let (start, end) = srt_timing(timing).map_err(|reason| parse_error(first + 1, reason))?;
        if start > end {
            return Err(parse_error(first + 1, "the cue ends before it starts"));
        }
        cues.push(Cue {
            start: to_s(start),
            end: to_s(end),
            lines: block[2..].iter().map(|l| l.to_string()).collect(),
        });
    }
    Ok(cues)
}

/// `HH:MM:SS,mmm --> HH:MM:SS,mmm [ignored]` in milliseconds.
fn srt_timing(line: &str) -> Result<(u64, u64), String> {
    let Some((left, right)) = line.split_once("-->") else {
        return Err("expected a timing line with '-->'".into());
    };
    let end = right.split_whitespace().next().unwrap_or("");
    Ok((timestamp(left.trim(), ',', 1)?, timestamp(end, ',', 1)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seg(start: f64, end: f64, text: &str) -> Segment {
        Segment {
            start,
            end,
            text: text.to_string(),
        }
    }

    fn cue(start: f64, end: f64, lines: &[&str]) -> Cue {
        Cue {
            start,
            end,
            lines: lines.iter().map(|l| l.to_string()).collect(),
        }
    }

    fn ms(seconds: f64) -> u64 {
        to_ms(seconds)
    }

    /// Every promise [`cues`] makes, for cues made with `rules`.
    fn check_invariants(cues: &[Cue], rules: &CueRules) {
        for (k, c) in cues.iter().enumerate() {
            assert!(ms(c.end) > ms(c.start), "cue {k} is empty: {c:?}");
            assert!(
                ms(c.end) - ms(c.start) <= ms(rules.max_cue_s),
                "cue {k} too long"
            );
            assert!(
                !c.lines.is_empty() && c.lines.len() <= rules.max_lines,
                "{c:?}"
            );
            for line in &c.lines {
                assert!(!line.is_empty() && line.trim() == line, "{line:?}");
                assert!(line.chars().count() <= rules.max_line_chars, "{line:?}");
            }
            if let Some(next) = cues.get(k + 1) {
                assert!(c.end <= next.start, "cue {k} overlaps the next");
            }
        }
    }

    #[test]
    fn exact_srt_and_vtt() {
        let segments = [
            seg(0.0, 1.5, "  Hello   world. "),
            seg(1.6, 1.6, "   "),
            seg(2.0, 4.25, "Fish & chips\n<b>now</b>"),
        ];
        let cues = cues(&segments, &CueRules::default()).unwrap();
        assert_eq!(
            cues,
            [
                cue(0.0, 1.5, &["Hello world."]),
                cue(2.0, 4.25, &["Fish & chips <b>now</b>"])
            ]
        );
        assert_eq!(
            srt(&cues),
            "1\n00:00:00,000 --> 00:00:01,500\nHello world.\n\n\
             2\n00:00:02,000 --> 00:00:04,250\nFish & chips <b>now</b>\n\n"
        );
        assert_eq!(
            vtt(&cues),
            "WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello world.\n\n\
             00:00:02.000 --> 00:00:04.250\nFish &amp; chips &lt;b&gt;now&lt;/b&gt;\n\n"
        );
        assert_eq!(parse_srt(&srt(&cues)).unwrap(), cues);
        assert_eq!(parse_vtt(&vtt(&cues)).unwrap(), cues);
    }

    #[test]
    fn timestamps_round_to_the_millisecond() {
        assert_eq!(clock(0.0, '.'), "00:00:00.000");
        assert_eq!(clock(0.0004, '.'), "00:00:00.000");
        assert_eq!(clock(59.9995, '.'), "00:01:00.000");
        assert_eq!(clock(3599.9996, ','), "01:00:00,000");
        assert_eq!(clock(3599.9994, ','), "00:59:59,999");
        assert_eq!(clock(100.0 * 3600.0 + 61.25, '.'), "100:01:01.250");
        assert_eq!(clock(-1.0, '.'), "00:00:00.000");
        assert_eq!(clock(f64::NAN, '.'), "00:00:00.000");
        assert_eq!(timestamp("100:01:01.250", '.', 2), Ok(360_061_250));
        assert_eq!(timestamp("01:01.250", '.', 2), Ok(61_250));
        assert_eq!(timestamp("1:00:00,000", ',', 1), Ok(3_600_000));
    }

    #[test]
    fn escaping_round_trips_through_parse_vtt() {
        let cues = [cue(1.0, 2.0, &["<b>bold</b> & a --> b", "&amp; &lt;"])];
        let text = vtt(&cues);
        assert!(!text.contains("<b>"));
        assert!(text.contains("&lt;b&gt;bold&lt;/b&gt; &amp; a --&gt; b\n&amp;amp; &amp;lt;"));
        assert_eq!(
            text.matches("-->").count(),
            1,
            "only the timing has an arrow"
        );
        assert_eq!(parse_vtt(&text).unwrap(), cues);
        // SubRip cannot escape: the arrow is replaced, the rest kept.
        let back = parse_srt(&srt(&cues)).unwrap();
        assert_eq!(back[0].lines, ["<b>bold</b> & a → b", "&amp; &lt;"]);
    }

    #[test]
    fn blank_and_multiline_text_lines_are_not_written() {
        let cues = [cue(0.0, 1.0, &["one\ntwo", "", "  "])];
        assert_eq!(
            vtt(&cues),
            "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\none\ntwo\n\n"
        );
        assert_eq!(parse_vtt(&vtt(&cues)).unwrap()[0].lines, ["one", "two"]);
    }

    #[test]
    fn long_segment_is_split_within_the_rules() {
        let rules = CueRules::default();
        let text: Vec<String> = (1..=60).map(|i| format!("word{i:02}")).collect();
        let segments = [seg(10.0, 30.0, &text.join(" "))];
        let cues = cues(&segments, &rules).unwrap();
        assert!(cues.len() >= 5, "{} cues", cues.len());
        check_invariants(&cues, &rules);
        // Contiguous, covering the segment, the words in order.
        assert_eq!(cues[0].start, 10.0);
        assert_eq!(cues.last().unwrap().end, 30.0);
        for pair in cues.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        let all: Vec<String> = cues.iter().map(|c| c.lines.join(" ")).collect();
        assert_eq!(all.join(" "), text.join(" "));
        // Times in proportion to characters (within rounding).
        let total: usize = all.iter().map(|t| t.chars().count()).sum();
        for (c, t) in cues.iter().zip(&all) {
            let expected = 20_000.0 * t.chars().count() as f64 / total as f64;
            let got = (ms(c.end) - ms(c.start)) as f64;
            assert!(
                (got - expected).abs() <= 1.0,
                "{got} ms, expected {expected}"
            );
        }
    }

    #[test]
    fn slow_speech_is_split_by_time() {
        let rules = CueRules::default();
        let cues = cues(&[seg(0.0, 30.0, "one two three four five six")], &rules).unwrap();
        assert!(cues.len() >= 5, "{cues:?}");
        check_invariants(&cues, &rules);
        assert_eq!(cues.last().unwrap().end, 30.0);
        // A single word cannot be split: its cue is cut to max_cue_s.
        let one = super::cues(&[seg(5.0, 60.0, "hmm")], &rules).unwrap();
        assert_eq!(one, [cue(5.0, 12.0, &["hmm"])]);
    }

    #[test]
    fn long_word_is_hard_broken() {
        let rules = CueRules {
            max_line_chars: 10,
            ..CueRules::default()
        };
        let cues = cues(&[seg(0.0, 3.0, "a abcdefghijklmnopqrstuvwxyz b")], &rules).unwrap();
        check_invariants(&cues, &rules);
        let lines: Vec<&str> = cues
            .iter()
            .flat_map(|c| &c.lines)
            .map(|l| l.as_str())
            .collect();
        assert_eq!(lines, ["a", "abcdefghij", "klmnopqrst", "uvwxyz b"]);
    }

    #[test]
    fn short_cue_is_extended_but_not_over_the_next() {
        let rules = CueRules::default();
        let segments = [
            seg(0.0, 0.2, "Hi"),
            seg(0.7, 3.0, "there"),
            seg(5.0, 5.3, "Bye"),
        ];
        let cues = cues(&segments, &rules).unwrap();
        assert_eq!(
            cues,
            [
                cue(0.0, 0.7, &["Hi"]),
                cue(0.7, 3.0, &["there"]),
                cue(5.0, 6.0, &["Bye"])
            ]
        );
        let instant = super::cues(&[seg(2.0, 2.0, "Oh")], &rules).unwrap();
        assert_eq!(instant, [cue(2.0, 3.0, &["Oh"])]);
    }

    #[test]
    fn overlapping_and_unsorted_segments_are_made_disjoint() {
        let rules = CueRules::default();
        let segments = [
            seg(4.0, 6.0, "third"),
            seg(0.0, 3.0, "first"),
            seg(2.0, 5.0, "second"),
            seg(4.0, 4.5, "fourth"),
        ];
        let cues = cues(&segments, &rules).unwrap();
        check_invariants(&cues, &rules);
        assert_eq!(
            cues,
            [
                cue(0.0, 2.0, &["first"]),
                cue(2.0, 4.0, &["second"]),
                cue(4.0, 5.0, &["third"]),
                cue(5.0, 6.0, &["fourth"]),
            ]
        );
    }

    #[test]
    fn bad_segments_and_rules_are_errors() {
        let rules = CueRules::default();
        let bad = [
            seg(f64::NAN, 1.0, "x"),
            seg(0.0, f64::NAN, "x"),
            seg(2.0, 1.0, "x"),
            seg(-1.0, 1.0, "x"),
            seg(0.0, f64::INFINITY, "x"),
        ];
        for s in bad {
            let input = [seg(0.0, 1.0, "fine"), s.clone()];
            match cues(&input, &rules) {
                Err(CaptionError::BadSegment { index: 1, .. }) => {}
                other => panic!("{s:?}: {other:?}"),
            }
        }
        let zero = CueRules {
            max_line_chars: 0,
            ..CueRules::default()
        };
        let inverted = CueRules {
            min_cue_s: 8.0,
            ..CueRules::default()
        };
        for r in [zero, inverted] {
            assert!(matches!(cues(&[], &r), Err(CaptionError::BadRules { .. })));
        }
    }

    /// The line a parse error names.
    fn error_line(text: &str) -> usize {
        match parse_vtt(text) {
            Err(CaptionError::Parse { line, .. }) => line,
            other => panic!("accepted {text:?}: {other:?}"),
        }
    }

    #[test]
    fn parse_vtt_rejects() {
        let ok = "00:00:01.000 --> 00:00:02.000\nhi\n";
        assert_eq!(error_line(ok), 1, "no signature");
        assert_eq!(error_line(&format!("WEBVTTX\n\n{ok}")), 1);
        assert_eq!(error_line("WEBVTT\n\n00:01.5 --> 00:02.000\nhi\n"), 3);
        assert_eq!(
            error_line("WEBVTT\n\n00:60:00.000 --> 01:00:00.000\nhi\n"),
            3
        );
        assert_eq!(
            error_line("WEBVTT\n\n00:00:60.000 --> 00:01:00.000\nhi\n"),
            3
        );
        assert_eq!(error_line("WEBVTT\n\n0:00:01.000 --> 00:00:02.000\n"), 3);
        assert_eq!(
            error_line("WEBVTT\n\n00:00:03.000 --> 00:00:02.000\nhi\n"),
            3
        );
        assert_eq!(error_line("WEBVTT\n\n00:00:01.000 00:00:02.000\nhi\n"), 4);
        assert_eq!(error_line("WEBVTT\n\nid\n"), 3);
        assert_eq!(error_line("WEBVTT\n\n00:00:01.000-->00:00:02.000\n"), 3);
        assert_eq!(
            error_line("WEBVTT\n\n00:00:01.000 --> 00:00:02.000 align\n"),
            3
        );
        assert_eq!(
            error_line(&format!("WEBVTT\n{ok}")),
            2,
            "no blank after header"
        );
        assert_eq!(error_line(&format!("WEBVTT\n\n{ok}x --> y\n")), 5);
        assert_eq!(
            error_line(
                "WEBVTT\n\n00:00:05.000 --> 00:00:06.000\na\n\n00:00:01.000 --> 00:00:02.000\nb\n"
            ),
            6,
            "starts go backwards"
        );
        assert_eq!(
            error_line(&format!("WEBVTT\n\n{ok}\nSTYLE\n::cue {{}}\n")),
            6
        );
    }

    #[test]
    fn parse_vtt_accepts() {
        let text = "\u{feff}WEBVTT - a title\r\nKind: captions\r\n\r\n\
                    NOTE written by hand\r\nover two lines\r\n\r\n\
                    STYLE\r\n::cue { color: yellow }\r\n\r\n\
                    intro\r\n00:01.000 --> 00:02.500 align:start position:10%\r\n\
                    caf&eacute; &amp;&nbsp;x&lrm;&rlm; &#65;&#x42; <i>it</i>\r\n\r\n\
                    NOTE\r\n\r\n\
                    2\r\n01:00:00.000\t-->\t100:00:00.000\r\nsecond\r\nline\r\n";
        let cues = parse_vtt(text).unwrap();
        assert_eq!(
            cues,
            [
                cue(
                    1.0,
                    2.5,
                    &["caf&eacute; &\u{a0}x\u{200e}\u{200f} AB <i>it</i>"]
                ),
                cue(3600.0, 360_000.0, &["second", "line"]),
            ]
        );
        assert_eq!(parse_vtt("WEBVTT").unwrap(), []);
        assert_eq!(parse_vtt("WEBVTT\tx\n\n").unwrap(), []);
        let empty = parse_vtt("WEBVTT\n\n00:00:01.000 --> 00:00:01.000\n").unwrap();
        assert_eq!(empty, [cue(1.0, 1.0, &[])]);
    }

    #[test]
    fn parse_srt_reads_and_rejects() {
        let text = "\u{feff}1\r\n00:00:01,000 --> 00:00:02,500 X1:10\r\n<i>Hi</i>\r\n\r\n\
                    2\r\n00:00:03,000 --> 00:00:04,000\r\nbye\r\nnow\r\n";
        let cues = parse_srt(text).unwrap();
        assert_eq!(
            cues,
            [
                cue(1.0, 2.5, &["<i>Hi</i>"]),
                cue(3.0, 4.0, &["bye", "now"])
            ]
        );
        assert_eq!(Segment::from(cues[1].clone()), seg(3.0, 4.0, "bye now"));
        for (bad, line) in [
            ("x\n00:00:01,000 --> 00:00:02,000\n", 1),
            ("1\n00:00:01.000 --> 00:00:02,000\n", 2),
            ("1\n00:00:03,000 --> 00:00:02,000\n", 2),
            ("1\n", 1),
        ] {
            match parse_srt(bad) {
                Err(CaptionError::Parse { line: l, .. }) => assert_eq!(l, line, "{bad:?}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    const WORDS: &[&str] = &[
        "a",
        "the",
        "speech",
        "&",
        "<b>",
        "-->",
        "é",
        "caf&amp;",
        "日本語",
        "x>y",
        "incomprehensibilities-and-then-some-more-letters",
    ];

    fn segment_strategy() -> impl Strategy<Value = Segment> {
        (
            0u32..100_000,
            0u32..40_000,
            prop::collection::vec(0..WORDS.len(), 0..80),
        )
            .prop_map(|(start, len, words)| {
                let text: Vec<&str> = words.iter().map(|&i| WORDS[i]).collect();
                seg(
                    f64::from(start) / 997.0,
                    f64::from(start + len) / 997.0,
                    &text.join(" "),
                )
            })
    }

    fn rules_strategy() -> impl Strategy<Value = CueRules> {
        (5usize..50, 1usize..4, 1u32..10_000, 0u32..2_000).prop_map(|(width, lines, max, min)| {
            CueRules {
                max_line_chars: width,
                max_lines: lines,
                max_cue_s: f64::from(max) / 1000.0,
                min_cue_s: f64::from(min.min(max)) / 1000.0,
            }
        })
    }

    proptest! {
        #[test]
        fn cues_keep_their_promises_and_round_trip(
            segments in prop::collection::vec(segment_strategy(), 0..12),
            rules in rules_strategy(),
        ) {
            let cues = cues(&segments, &rules).unwrap();
            check_invariants(&cues, &rules);
            let words = |t: &str| t.split_whitespace().map(str::to_string).collect::<Vec<_>>();
            let said: usize = segments.iter().map(|s| words(&s.text).concat().len()).sum();
            let shown: usize = cues.iter().map(|c| words(&c.lines.join(" ")).concat().len()).sum();
            prop_assert_eq!(said, shown, "no text lost or added");
            prop_assert_eq!(parse_vtt(&vtt(&cues)).unwrap(), cues.clone());
            let srt_back = parse_srt(&srt(&cues)).unwrap();
            let arrowless: Vec<Cue> = cues.iter().map(|c| Cue {
                lines: c.lines.iter().map(|l| l.replace("-->", "→")).collect(),
                ..c.clone()
            }).collect();
            prop_assert_eq!(srt_back, arrowless);
        }
    }
}
