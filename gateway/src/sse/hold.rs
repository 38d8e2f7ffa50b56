//! Event data held for later, stored as its difference from a base event.
//!
//! The events of one stream differ in a few bytes: every content delta
//! repeats the id, model, fingerprint and the same JSON around a token or
//! two of text. Holding each event's data whole cost a copy of ~250 bytes
//! per event, and at ~1,000 events the bound on held bytes was reached:
//! from there every event was decoded as it came (five times the cost of
//! holding it, measured). Stored as "the first `p` bytes of the base, these
//! bytes, the last `s` bytes of the base", a content delta takes about its
//! text plus three bytes, so the same bound covers streams of tens of
//! thousands of events.
//!
//! Exact: each event's bytes are rebuilt as they came, and decoded then.
//! An event that shares less than half of its bytes with the base is held
//! whole and becomes the base of the ones after it.
//!
//! Records, in blocks that never move (holding more never copies what is
//! held; a record never spans two blocks): a tag byte, then for a base
//! `len` and the bytes, for a difference `p`, `s`, `len` and the bytes;
//! numbers are LEB128.

use memchr::memchr2;

use crate::json_bytes::{next_line_end, next_special};

/// Size of one block of records.
const BLOCK: usize = 16 * 1024;

/// Most bytes of a record's head: a tag and three LEB128 numbers.
const HEAD: usize = 1 + 3 * 10;

/// A difference of at most this many bytes is copied with its head in
/// one step.
const SMALL: usize = 32;

const BASE: u8 = 0;
const DIFF: u8 = 1;

/// How an event compares with the base event of a [`Hold`].
#[derive(Debug, Clone, Copy)]
pub struct Diff {
    /// The base it was taken against.
    base: Option<(usize, usize, usize)>,
    /// Common prefix and suffix lengths (0 without a base).
    p: usize,
    s: usize,
}

impl Diff {
    /// Where in `data` (of `len` bytes) a pattern of up to `margin + 1`
    /// bytes that is in `data` but nowhere in the base can start: the bytes
    /// that may differ from the base and `margin` bytes before them.
    pub fn changed(&self, len: usize, margin: usize) -> std::ops::Range<usize> {
        self.p.saturating_sub(margin)..len.saturating_sub(self.s)
    }

    /// The base this diff was taken against (which record of the hold),
    /// and the common prefix and suffix lengths; `None` without a base.
    pub fn against(&self) -> Option<((usize, usize, usize), usize, usize)> {
        self.base.map(|b| (b, self.p, self.s))
    }
}

/// Held event data.
#[derive(Default)]
pub struct Hold {
    blocks: Vec<Vec<u8>>,
    /// Bytes in `blocks`.
    len: usize,
    /// Where the base event's bytes are: block, start, length.
    base: Option<(usize, usize, usize)>,
    /// The common prefix and suffix lengths of the last event.
    last: (usize, usize),
    /// What every difference held against the base shares with it.
    like: Option<Like>,
}

/// The prefix and suffix lengths that every event held as a difference
/// from the current base shares with it (the smallest of each seen), and
/// the head of a record with them. The next content delta of the stream
/// almost always has them too: it is checked against them with two
/// comparisons and held without the search for the longest ones
/// ([`Hold::like_middle`]). A record with a shorter prefix or suffix than
/// the longest is as exact, a few bytes larger.
#[derive(Clone, Copy)]
struct Like {
    p: usize,
    s: usize,
    /// The base has no CR or LF (it was one line): a line that starts
    /// with its prefix ends after it ([`Likeness::line`]).
    open: bool,
    /// The tag and the two numbers of a record with `p` and `s`.
    head: [u8; LIKE_HEAD],
    head_len: usize,
    /// What the hold's owner concluded for these lengths and this base
    /// ([`Hold::set_like_verdict`]); gone with them.
    verdict: Option<bool>,
}

/// Most bytes of a [`Like`] head: a tag and two LEB128 numbers.
const LIKE_HEAD: usize = 1 + 2 * 10;

impl Like {
    /// Where the middle of an `n`-byte event with these prefix and suffix
    /// ends; `None` when it is shorter than both or would be held whole
    /// (it shares less than half of its bytes).
    #[inline(always)]
    fn middle_end(&self, n: usize) -> Option<usize> {
        let end = n.checked_sub(self.s).filter(|&e| e >= self.p)?;
        (2 * (self.p + self.s) >= n).then_some(end)
    }

    /// For `p` and `s`, the suffix cut back to its first quote. A
    /// token's text ends at a quote, and a letter before it that the
    /// base's text shared with one event by chance (the last of
    /// `"assistant"` and of `" not"`) would make the next event miss the
    /// suffix and take the full way. A shorter suffix is as exact, one
    /// byte longer per record. (The prefix is kept: the text of most
    /// tokens starts with the same space, a byte saved every record.)
    fn new(p: usize, s: usize, base: &[u8]) -> Like {
        let s = base
            .get(base.len().saturating_sub(s)..)
            .and_then(|b| b.iter().position(|&c| c == b'"'))
            .map_or(s, |i| s - i);
        let open = memchr2(b'\n', b'\r', base).is_none();
        let mut head = [0u8; LIKE_HEAD];
        let n = put_diff_head(&mut head, p, s);
        Like {
            p,
            s,
            open,
            head,
            head_len: n,
            verdict: None,
        }
    }
}

/// A hold's like lengths and its base's prefix and suffix of those
/// lengths ([`Hold::likeness`]).
pub struct Likeness<'h> {
    like: Like,
    prefix: &'h [u8],
    suffix: &'h [u8],
}

impl Likeness<'_> {
    /// [`Hold::like_middle`] for the line `rest` starts with: the line's
    /// length (up to its first CR or LF) and its middle. `None` when the
    /// line is not like the held ones, when no CR or LF follows in
    /// `rest`, or when the middle has a quote that does not start the
    /// suffix.
    ///
    /// The line's end is found without searching the bytes it shares with
    /// the base (which have no CR or LF): a content delta's middle is its
    /// text, and when the suffix starts at the text's closing quote the
    /// middle ends at the first quote, backslash or control byte after the
    /// prefix, a few bytes on; the line ends `s` bytes after it, checked.
    /// Otherwise (a backslash, a suffix that starts elsewhere) the line's
    /// end is searched for from the prefix on.
    #[inline(always)]
    pub fn line(&self, rest: &[u8]) -> Option<(usize, std::ops::Range<usize>)> {
        let l = &self.like;
        if rest.get(..l.p)? != self.prefix {
            return None;
        }
        let q = next_special(rest, l.p);
        let n = match (self.suffix.first(), rest.get(q)) {
            (Some(b'"'), Some(b'"')) => q + l.s,
            _ => next_line_end(rest, l.p)?,
        };
        let end = l.middle_end(n)?;
        if !matches!(rest.get(n), Some(b'\n' | b'\r')) {
            return None;
        }
        (rest.get(end..n)? == self.suffix).then_some((n, l.p..end))
    }
}

impl Hold {
    /// Bytes held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Nothing held.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Most bytes one [`push`](Self::push) of `data` adds.
    pub fn bound(data: &[u8]) -> usize {
        HEAD + data.len()
    }

    /// One [`push`](Self::push) of `data` keeps the hold within `max`
    /// bytes, whatever it adds.
    pub fn fits(&self, data: &[u8], max: usize) -> bool {
        self.len + Self::bound(data) <= max
    }

    /// How `data` compares with the base event.
    pub fn diff(&self, data: &[u8]) -> Diff {
        let Some(base) = self.base_bytes() else {
            return Diff {
                base: None,
                p: 0,
                s: 0,
            };
        };
        // Like events share the same prefix and suffix with the base: the
        // last lengths are checked first, one vectorised comparison each.
        let (gp, gs) = self.last;
        let p = prefix_from_guess(base, data, gp);
        let s = suffix_from_guess(&base[p..], &data[p..], gs);
        Diff {
            base: self.base,
            p,
            s,
        }
    }

    /// Holds one event's data; `d` is its [`diff`](Self::diff).
    pub fn push(&mut self, data: &[u8], d: Diff) {
        // A diff taken against another base (or none, or for other data)
        // holds it whole.
        let (p, s) = if d.base.is_some() && d.base == self.base && d.p + d.s <= data.len() {
            (d.p, d.s)
        } else {
            (0, 0)
        };
        self.last = (p, s);
        let mut head = [0u8; HEAD + SMALL];
        if self.base.is_none() || 2 * (p + s) < data.len() {
            head[0] = BASE;
            let n = 1 + put_varint(&mut head[1..], data.len());
            let (block, at) = self.append(&mut head, n, data, 0, data.len());
            self.base = Some((block, at, data.len()));
            self.like = None;
            return;
        }
        let len = data.len() - s - p;
        let mut n = put_diff_head(&mut head, p, s);
        n += put_varint(&mut head[n..], len);
        self.append(&mut head, n, data, p, len);
        let base = self.base_bytes().unwrap_or_default();
        // The suffix was looked for after the prefix. When it was cut short
        // there (an event equal to the base up to its length: a token the
        // base had too), the prefix took bytes the suffix shares: like lengths
        // are kept if the whole common suffix has theirs, and none are
        // made from such an event (its split says nothing of where the
        // others differ). A suffix cut short would make every later event
        // miss them.
        let whole_s = if p + s == data.len().min(base.len()) {
            common_suffix(base, data)
        } else {
            s
        };
        self.like = match self.like {
            Some(l) if l.p <= p && l.s <= whole_s => Some(l),
            Some(l) => Some(Like::new(l.p.min(p), l.s.min(whole_s), base)),
            None if whole_s > s => None,
            None => Some(Like::new(p, s, base)),
        };
    }

    /// Where `data` differs from the base if it shares with it the prefix
    /// and suffix every held difference did (and so is held as one): the
    /// bytes between them. `None` when it does not, or would be held
    /// whole.
    pub fn like_middle(&self, data: &[u8]) -> Option<std::ops::Range<usize>> {
        let l = self.like.as_ref()?;
        let base = self.base_bytes()?;
        let end = l.middle_end(data.len())?;
        let same = data[..l.p] == base[..l.p] && data[end..] == base[base.len() - l.s..];
        same.then_some(l.p..end)
    }

    /// The like lengths and the base's prefix and suffix with them, read
    /// once for a run of lines ([`Likeness::line`]); `None` without like
    /// lengths or when the base has a CR or LF (it was more than one
    /// line).
    pub fn likeness(&self) -> Option<Likeness<'_>> {
        let l = self.like.filter(|l| l.open)?;
        let base = self.base_bytes()?;
        Some(Likeness {
            like: l,
            prefix: base.get(..l.p)?,
            suffix: base.get(base.len().checked_sub(l.s)?..)?,
        })
    }

    /// The prefix and suffix lengths of [`like_middle`](Self::like_middle),
    /// and the base they are taken against.
    pub fn like(&self) -> Option<((usize, usize, usize), usize, usize)> {
        Some((self.base?, self.like?.p, self.like?.s))
    }

    /// The verdict set for the current like lengths and base, until they
    /// change (a memo for the owner's check of them, read every event).
    pub fn like_verdict(&self) -> Option<bool> {
        self.like.as_ref()?.verdict
    }

    /// Sets [`like_verdict`](Self::like_verdict); nothing without like
    /// lengths.
    pub fn set_like_verdict(&mut self, verdict: bool) {
        if let Some(l) = &mut self.like {
            l.verdict = Some(verdict);
        }
    }

    /// Holds events like the held ones ([`Likeness::line`] or
    /// [`like_middle`](Self::like_middle) found them, for the current like
    /// lengths), in order, each as its middle, while the hold stays within
    /// `max` bytes ([`fits`](Self::fits)); returns how many it held. The
    /// record's head is made once for the run.
    pub fn push_like_run<'a>(&mut self, max: usize, run: impl Iterator<Item = &'a [u8]>) -> usize {
        let Some(l) = self.like else {
            return 0;
        };
        let mut head = [0u8; HEAD + SMALL];
        head[..LIKE_HEAD].copy_from_slice(&l.head);
        let mut held = 0;
        for data in run {
            let Some(end) = l.middle_end(data.len()) else {
                break;
            };
            if !self.fits(data, max) {
                break;
            }
            debug_assert_eq!(self.like_middle(data), Some(l.p..end), "not a like event");
            let len = end - l.p;
            let n = l.head_len + put_varint(&mut head[l.head_len..], len);
            self.append(&mut head, n, data, l.p, len);
            held += 1;
        }
        held
    }

    /// Appends a record, `head[..n]` then `len` bytes of `data` from
    /// `from`; returns its block and where those bytes start in it.
    #[inline(always)]
    fn append(
        &mut self,
        head: &mut [u8; HEAD + SMALL],
        n: usize,
        data: &[u8],
        from: usize,
        len: usize,
    ) -> (usize, usize) {
        let need = n + len;
        // Room for the whole head buffer, so a small record is written
        // with copies of fixed length (no calls): the buffer, then the
        // length cut back to the record's.
        if self
            .blocks
            .last()
            .is_none_or(|b| b.capacity() - b.len() < need.max(HEAD + SMALL))
        {
            self.blocks.push(Vec::with_capacity(BLOCK.max(need)));
        }
        let last = self.blocks.len() - 1;
        let block = &mut self.blocks[last];
        let start = block.len();
        let at = start + n;
        if len <= SMALL
            && let (Some(slot), Some(src)) =
                (head.get_mut(n..n + SMALL), data.get(from..from + SMALL))
        {
            slot.copy_from_slice(src);
            block.extend_from_slice(head);
            block.truncate(start + need);
        } else {
            block.extend_from_slice(&head[..n]);
            block.extend_from_slice(&data[from..from + len]);
        }
        self.len += need;
        (last, at)
    }

    /// The base event's bytes, if there is a base.
    pub fn base_bytes(&self) -> Option<&[u8]> {
        let (b, at, len) = self.base?;
        self.blocks.get(b)?.get(at..at + len)
    }

    /// Hands every held event's data to `each`, in order, and empties the
    /// hold.
    pub fn drain(&mut self, mut each: impl FnMut(&[u8])) {
        let blocks = std::mem::take(&mut self.blocks);
        self.len = 0;
        self.base = None;
        self.like = None;
        let mut base: &[u8] = &[];
        let mut event = Vec::new();
        for block in &blocks {
            let mut r = Reader { b: block, at: 0 };
            while let Some(tag) = r.byte() {
                if tag == BASE {
                    let Some(data) = r.varint().and_then(|n| r.take(n)) else {
                        break;
                    };
                    base = data;
                    each(data);
                } else {
                    let (Some(p), Some(s)) = (r.varint(), r.varint()) else {
                        break;
                    };
                    let Some(m) = r.varint().and_then(|n| r.take(n)) else {
                        break;
                    };
                    let (Some(head), Some(tail)) = (
                        base.get(..p),
                        base.len().checked_sub(s).and_then(|t| base.get(t..)),
                    ) else {
                        break;
                    };
                    event.clear();
                    event.extend_from_slice(head);
                    event.extend_from_slice(m);
                    event.extend_from_slice(tail);
                    each(&event);
                }
            }
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let v = *self.b.get(self.at)?;
        self.at += 1;
        Some(v)
    }

    fn varint(&mut self) -> Option<usize> {
        let mut v = 0usize;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
}

/// Writes the tag and the prefix and suffix lengths of a difference
/// record into `out` (at least [`LIKE_HEAD`] bytes); returns their length.
fn put_diff_head(out: &mut [u8], p: usize, s: usize) -> usize {
    out[0] = DIFF;
    let mut n = 1;
    n += put_varint(&mut out[n..], p);
    n += put_varint(&mut out[n..], s);
    n
}

/// Writes `v` as LEB128 into `out` (at least 10 bytes); returns its length.
fn put_varint(out: &mut [u8], mut v: usize) -> usize {
    let mut n = 0;
    while let Some(slot) = out.get_mut(n) {
        let low = (v & 0x7f) as u8;
        v >>= 7;
        n += 1;
        if v == 0 {
            *slot = low;
            break;
        }
        *slot = low | 0x80;
    }
    n
}

/// [`common_prefix`], checking first whether the first `guess` bytes are
/// equal (one vectorised comparison).
fn prefix_from_guess(a: &[u8], b: &[u8], guess: usize) -> usize {
    let g = guess.min(a.len()).min(b.len());
    if a[..g] == b[..g] {
        g + common_prefix(&a[g..], &b[g..])
    } else {
        common_prefix(&a[..g], &b[..g])
    }
}

/// [`common_suffix`], checking first whether the last `guess` bytes are
/// equal.
fn suffix_from_guess(a: &[u8], b: &[u8], guess: usize) -> usize {
    let g = guess.min(a.len()).min(b.len());
    let (ta, tb) = (a.len() - g, b.len() - g);
    if a[ta..] == b[tb..] {
        return g + common_suffix(&a[..ta], &b[..tb]);
    }
    // A miss is usually a guess a byte or two too long (the last event's
    // text ended, by chance, in the letter the base's does): 16 bytes shorter
    // is tried before the whole guessed run is scanned; the 16 bytes between
    // then hold the difference.
    let h = g.saturating_sub(16);
    if h > 0 && a[a.len() - h..] == b[b.len() - h..] {
        return h + common_suffix(&a[ta..a.len() - h], &b[tb..b.len() - h]);
    }
    common_suffix(&a[ta..], &b[tb..])
}

/// Length of the common prefix of `a` and `b`, 16 bytes per step.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut i = 0;
    for (x, y) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
        let d = u128::from_le_bytes(word(x)) ^ u128::from_le_bytes(word(y));
        if d != 0 {
            return i + (d.trailing_zeros() / 8) as usize;
        }
        i += 16;
    }
    i + a[i..]
        .iter()
        .zip(&b[i..])
        .take_while(|(x, y)| x == y)
        .count()
}

/// Length of the common suffix of `a` and `b`, 16 bytes per step.
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let (a, b) = (&a[a.len() - n..], &b[b.len() - n..]);
    let mut i = 0;
    for (x, y) in a.rchunks_exact(16).zip(b.rchunks_exact(16)) {
        let d = u128::from_be_bytes(word(x)) ^ u128::from_be_bytes(word(y));
        if d != 0 {
            return i + (d.trailing_zeros() / 8) as usize;
        }
        i += 16;
    }
    let (a, b) = (&a[..n - i], &b[..n - i]);
    i + a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count()
}

/// A 16-byte chunk as an array (the chunks are exact: nothing is cut).
fn word(x: &[u8]) -> [u8; 16] {
    let mut w = [0u8; 16];
    w.copy_from_slice(x);
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive_prefix(a: &[u8], b: &[u8]) -> usize {
        a.iter().zip(b).take_while(|(x, y)| x == y).count()
    }

    fn naive_suffix(a: &[u8], b: &[u8]) -> usize {
        a.iter()
            .rev()
            .zip(b.iter().rev())
            .take_while(|(x, y)| x == y)
            .count()
    }

    fn round_trip(events: &[Vec<u8>]) -> (Vec<Vec<u8>>, usize) {
        let mut h = Hold::default();
        for e in events {
            let before = h.len();
            // As `DeferredText` holds them: like the ones before when it can.
            match h.like_middle(e) {
                Some(_) => assert_eq!(h.push_like_run(usize::MAX, std::iter::once(&e[..])), 1),
                None => h.push(e, h.diff(e)),
            }
            assert!(h.len() - before <= Hold::bound(e));
        }
        let held = h.len();
        assert_eq!(held, h.blocks.iter().map(Vec::len).sum::<usize>());
        let mut out = Vec::new();
        h.drain(|d| out.push(d.to_vec()));
        assert!(h.is_empty() && h.blocks.is_empty());
        (out, held)
    }

    fn delta(text: &str) -> Vec<u8> {
        format!(
            "{{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}},\"finish_reason\":null}}],\"usage\":null}}",
            serde_json::to_string(text).unwrap()
        )
        .into_bytes()
    }

    #[test]
    fn content_deltas_are_held_as_their_text() {
        let events: Vec<Vec<u8>> = ["", "Hello", " world", "!", " \u{65e5}\u{672c}"]
            .iter()
            .map(|t| delta(t))
            .collect();
        let (out, held) = round_trip(&events);
        assert_eq!(out, events);
        // The first whole, each other about its text and four bytes.
        let text: usize = ["Hello", " world", "!", " \u{65e5}\u{672c}"]
            .iter()
            .map(|t| t.len())
            .sum();
        assert!(held <= 1 + 2 + events[0].len() + text + 4 * 4, "{held}");
    }

    #[test]
    fn a_like_verdict_lasts_as_long_as_the_like_lengths_and_base() {
        let mut h = Hold::default();
        let push = |h: &mut Hold, e: &[u8]| h.push(e, h.diff(e));
        h.set_like_verdict(true);
        assert_eq!(h.like_verdict(), None, "no like lengths yet");
        push(&mut h, &delta(""));
        push(&mut h, &delta(" cat"));
        h.set_like_verdict(true);
        // An event that has the like lengths keeps the verdict.
        push(&mut h, &delta(" dog"));
        assert_eq!(h.like_verdict(), Some(true));
        // Shorter ones clear it (here the suffix: the finish reason).
        let stop = String::from_utf8(delta(" hat"))
            .unwrap()
            .replace("null}]", "\"stop\"}]");
        push(&mut h, stop.as_bytes());
        assert_eq!(h.like_verdict(), None);
        h.set_like_verdict(false);
        assert_eq!(h.like_verdict(), Some(false));
        // So do a new base and a drain.
        push(&mut h, br#"{"choices":[{"delta":{"tool_calls":[]}}]}"#);
        assert_eq!(h.like_verdict(), None);
        push(&mut h, &delta(" a"));
        push(&mut h, &delta(" b"));
        h.set_like_verdict(true);
        h.drain(|_| {});
        assert_eq!(h.like_verdict(), None);
    }

    #[test]
    fn an_event_equal_to_the_base_leaves_the_like_lengths_as_they_were() {
        // Its prefix takes all of it and its suffix nothing: the like
        // lengths must not shrink to that (every later delta would miss
        // them), nor be made from it.
        let push = |h: &mut Hold, e: &[u8]| h.push(e, h.diff(e));
        let mut h = Hold::default();
        push(&mut h, &delta(" a"));
        push(&mut h, &delta(" b"));
        let like = h.like();
        assert!(like.is_some());
        h.set_like_verdict(true);
        push(&mut h, &delta(" a"));
        assert_eq!((h.like(), h.like_verdict()), (like, Some(true)));
        assert!(h.like_middle(&delta(" c")).is_some());
        // Right after the base: no like lengths from it, then the next
        // delta's.
        let mut h = Hold::default();
        push(&mut h, &delta(" a"));
        push(&mut h, &delta(" a"));
        assert_eq!(h.like(), None);
        push(&mut h, &delta(" b"));
        assert_eq!(h.like(), like);
        assert!(h.like_middle(&delta(" c")).is_some());
        let (out, _) = round_trip(&[delta(" a"), delta(" b"), delta(" a"), delta(" c")]);
        assert_eq!(out[2], delta(" a"));
    }

    #[test]
    fn an_event_unlike_the_base_becomes_the_base() {
        let tool = br#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":1}"}}]}}]}"#.to_vec();
        let events = vec![
            delta("a"),
            tool.clone(),
            tool.clone(),
            delta("b"),
            delta("c"),
        ];
        let (out, _) = round_trip(&events);
        assert_eq!(out, events);
    }

    #[test]
    fn records_larger_than_a_block_and_many_blocks() {
        let mut events = vec![vec![b'x'; 3 * BLOCK]];
        for i in 0..5000 {
            events.push(delta(&format!("piece {i}")));
        }
        events.push(Vec::new());
        let (out, _) = round_trip(&events);
        assert_eq!(out, events);
    }

    #[test]
    fn a_diff_for_other_data_is_held_whole() {
        let mut h = Hold::default();
        let (a, b) = (delta("first"), delta("second"));
        h.push(&a, h.diff(&a));
        let d = h.diff(&a);
        h.push(b"short", d);
        h.push(&b, h.diff(&b));
        let mut out = Vec::new();
        h.drain(|e| out.push(e.to_vec()));
        assert_eq!(out, vec![a, b"short".to_vec(), b]);
    }

    #[test]
    fn varints_round_trip() {
        for v in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            usize::MAX >> 1,
            usize::MAX,
        ] {
            let mut b = [0u8; 10];
            let n = put_varint(&mut b, v);
            let mut r = Reader { b: &b[..n], at: 0 };
            assert_eq!(r.varint(), Some(v));
            assert_eq!(r.at, n);
        }
    }

    proptest! {
        #[test]
        fn prefix_and_suffix_match_a_byte_loop(
            a in proptest::collection::vec(0u8..3, 0..80),
            b in proptest::collection::vec(0u8..3, 0..80),
            shared in proptest::collection::vec(any::<u8>(), 0..70),
        ) {
            let x = [shared.as_slice(), &a].concat();
            let y = [shared.as_slice(), &b].concat();
            prop_assert_eq!(common_prefix(&x, &y), naive_prefix(&x, &y));
            for g in [0, 1, shared.len(), shared.len() + 3, 200] {
                prop_assert_eq!(prefix_from_guess(&x, &y, g), naive_prefix(&x, &y));
            }
            let x = [a.as_slice(), &shared].concat();
            let y = [b.as_slice(), &shared].concat();
            prop_assert_eq!(common_suffix(&x, &y), naive_suffix(&x, &y));
            for g in [0, 1, shared.len(), shared.len() + 3, 200] {
                prop_assert_eq!(suffix_from_guess(&x, &y, g), naive_suffix(&x, &y));
            }
        }

        #[test]
        fn every_event_comes_back_as_it_went_in(
            events in proptest::collection::vec(
                proptest::collection::vec(0u8..4, 0..60), 0..40),
            prefix in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let events: Vec<Vec<u8>> = events
                .into_iter()
                .map(|e| [prefix.as_slice(), &e, &prefix].concat())
                .collect();
            let (out, _) = round_trip(&events);
            prop_assert_eq!(out, events);
        }
    }
}
