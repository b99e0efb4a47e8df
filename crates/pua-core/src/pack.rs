//! Packing of the bodies kept in publication records (for re-publishing
//! after a 412): a static dictionary of the strings every PIDF and
//! dialog-info body repeats, each replaced by one control byte that XML
//! never contains (0x01-0x08, 0x0b, 0x0c, 0x0e-0x1f). A pua_usrloc PIDF of
//! about 350 bytes keeps about 100. A body that already contains such a
//! byte is kept as it is.

/// The dictionary, longest entries first where one contains another.
const DICT: [&[u8]; 28] = [
    b" xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\"",
    b" xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\"",
    b" xmlns:c=\"urn:ietf:params:xml:ns:pidf:cipid\"",
    b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>",
    b"urn:ietf:params:xml:ns:dialog-info",
    b"urn:ietf:params:xml:ns:pidf",
    b"<?xml version=\"1.0\"?>",
    b"<basic>closed</basic>",
    b"<presence xmlns=\"",
    b"<dialog-info xmlns=\"",
    b"<basic>open</basic>",
    b"</dialog-info>",
    b"<tuple id=\"",
    b"</presence>",
    b"<dialog id=\"",
    b"\n          ",
    b"</status>",
    b"</dialog>",
    b"<status>",
    b"</tuple>",
    b"</state>",
    b"entity=\"",
    b"\n        ",
    b"<state>",
    b"\n      ",
    b"\n    ",
    b"\n  ",
    b"</note>",
];

const fn code(i: usize) -> u8 {
    // 28 codes: 0x01-0x08, 0x0b, 0x0c, 0x0e-0x1f.
    match i {
        0..=7 => i as u8 + 1,
        8 => 0x0b,
        9 => 0x0c,
        _ => (i - 10) as u8 + 0x0e,
    }
}

const fn index(c: u8) -> Option<usize> {
    match c {
        0x01..=0x08 => Some((c - 1) as usize),
        0x0b => Some(8),
        0x0c => Some(9),
        0x0e..=0x1f => Some((c - 0x0e) as usize + 10),
        _ => None,
    }
}

/// Byte classes for [`pack`]: 0 = copied as it is, 1 = may start a
/// dictionary entry, 2 = a code byte (the body cannot be packed).
const CLASS: [u8; 256] = {
    let mut c = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        if index(b as u8).is_some() {
            c[b] = 2;
        }
        b += 1;
    }
    let mut k = 0;
    while k < DICT.len() {
        c[DICT[k][0] as usize] = 1;
        k += 1;
    }
    c
};

/// Dictionary indices ordered by first byte (dictionary order within one
/// byte), and per first byte its (start, count) in that order: built at
/// compile time, so a lookup touches two small static tables.
const ORDER: ([u8; DICT.len()], [(u8, u8); 256]) = {
    let mut order = [0u8; DICT.len()];
    let mut span = [(0u8, 0u8); 256];
    let mut n = 0;
    let mut b = 0;
    while b < 256 {
        let start = n;
        let mut k = 0;
        while k < DICT.len() {
            if DICT[k][0] as usize == b {
                order[n] = k as u8;
                n += 1;
            }
            k += 1;
        }
        span[b] = (start as u8, (n - start) as u8);
        b += 1;
    }
    (order, span)
};

/// The longest dictionary entry: a decision at `i` reads at most
/// `body[i..i + MAX_WORD]`.
const MAX_WORD: usize = {
    let mut m = 0;
    let mut k = 0;
    while k < DICT.len() {
        if DICT[k].len() > m {
            m = DICT[k].len();
        }
        k += 1;
    }
    m
};

/// Packs `body`; `None` when it cannot be packed (it holds a code byte) or
/// would not get smaller. Through this process's [`PackMemo`].
pub fn pack(body: &[u8]) -> Option<Vec<u8>> {
    static MEMO: crate::scratch::Slot<PackMemo> = crate::scratch::Slot::new();
    crate::scratch::try_with_slot(&MEMO, |m| m.pack(body).0).unwrap_or_else(|| pack_plain(body))
}

/// [`pack`] without a memo.
fn pack_plain(body: &[u8]) -> Option<Vec<u8>> {
    // Never reallocates: the output is at most as long as the input.
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let (c, n) = decide(body, i)?;
        out.push(c);
        i += n;
    }
    (out.len() < body.len()).then_some(out)
}

/// The decision of [`pack`] at `i` (< `body.len()`): the byte written and
/// how many input bytes it stands for; `None` for a code byte. A function
/// of `body[i..i + MAX_WORD]` alone.
#[inline(always)]
fn decide(body: &[u8], i: usize) -> Option<(u8, usize)> {
    let (order, span) = &ORDER;
    let c = body[i];
    match CLASS[c as usize] {
        0 => return Some((c, 1)),
        2 => return None, // holds a code byte: kept as it is
        _ => {}
    }
    let rest = &body[i..];
    let (start, count) = span[c as usize];
    // Every entry is at least 2 bytes: check the second byte before
    // comparing the whole entry.
    let second = rest.get(1).copied();
    let hit = order[start as usize..(start + count) as usize]
        .iter()
        .map(|&k| (k, DICT[k as usize]))
        .find(|&(_, w)| Some(w[1]) == second && starts_with(rest, w));
    Some(match hit {
        Some((k, w)) => (code(k as usize), w.len()),
        None => (c, 1),
    })
}

/// The last body this process packed (the bodies of one consumer differ in
/// a few bytes: pua_usrloc's PIDFs in the user and the tuple id), its
/// packed bytes and where each decision started. [`pack`] decides from the
/// start of a body to its end, each decision a function of the next
/// [`MAX_WORD`] bytes, so a new body takes the memo's decisions while those
/// bytes are the same, packs the bytes that differ, and takes the memo's
/// again from the first decision it shares in the common end. Comparing
/// and copying bytes instead of a dictionary lookup at each byte, whose
/// branches ran with cold predictors a PUBLISH apart.
#[derive(Default)]
struct PackMemo {
    valid: bool,
    body: Vec<u8>,
    out: Vec<u8>,
    /// (input, output) offsets at each decision, in order.
    steps: Vec<(u16, u16)>,
    /// Another list's capacity, for the next body.
    spare: Vec<(u16, u16)>,
}

impl PackMemo {
    /// [`pack`] of `body` through the memo, which then holds `body` (if it
    /// could be packed and is below 64 KiB); how many input bytes were
    /// decided anew (for tests).
    fn pack(&mut self, body: &[u8]) -> (Option<Vec<u8>>, usize) {
        if body.len() > usize::from(u16::MAX) {
            return (pack_plain(body), body.len());
        }
        let mut out = Vec::with_capacity(body.len());
        let mut steps = std::mem::take(&mut self.spare);
        steps.clear();
        let mut i = 0;
        // Where the bytes differ: [p, l_end) in the memo, [p, b_end) here.
        let mut window = None;
        if self.valid {
            let l = &self.body;
            let p = crate::bytes::common_prefix(l, body);
            let s = crate::bytes::common_suffix(&l[p..], &body[p..]);
            // The memo's decisions that read the common start only.
            let k = self
                .steps
                .partition_point(|&(x, _)| usize::from(x) + MAX_WORD <= p);
            if k > 0 {
                let (x, o) = self
                    .steps
                    .get(k)
                    .map_or((l.len(), self.out.len()), |&(x, o)| {
                        (usize::from(x), usize::from(o))
                    });
                out.extend_from_slice(&self.out[..o]);
                steps.extend_from_slice(&self.steps[..k]);
                i = x;
            }
            window = Some((l.len() - s, body.len() - s));
        }
        let mut decided = 0;
        while i < body.len() {
            if let Some((l_end, b_end)) = window.filter(|&(_, b_end)| i >= b_end) {
                // In the common end: a decision the memo made at the same
                // bytes starts the same decisions to the end.
                let at = i - b_end + l_end;
                if let Ok(j) = self
                    .steps
                    .binary_search_by_key(&at, |&(x, _)| usize::from(x))
                {
                    let o = usize::from(self.steps[j].1);
                    let base = out.len();
                    // Offsets stay below 64 KiB: checked above for the
                    // input, and the output is never longer.
                    steps.extend(self.steps[j..].iter().map(|&(x, y)| {
                        (
                            (usize::from(x) - at + i) as u16,
                            (usize::from(y) - o + base) as u16,
                        )
                    }));
                    out.extend_from_slice(&self.out[o..]);
                    break;
                }
            }
            steps.push((i as u16, out.len() as u16));
            let Some((c, n)) = decide(body, i) else {
                // Not packable: the memo stays as it was.
                self.spare = steps;
                return (None, decided);
            };
            out.push(c);
            i += n;
            decided += n;
        }
        self.valid = false;
        self.body.clear();
        self.body.extend_from_slice(body);
        self.out.clear();
        self.out.extend_from_slice(&out);
        self.spare = std::mem::replace(&mut self.steps, steps);
        self.valid = true;
        ((out.len() < body.len()).then_some(out), decided)
    }
}

/// `rest.starts_with(w)` for the short dictionary entries, 8 bytes at a
/// time without a call into memcmp.
fn starts_with(rest: &[u8], w: &[u8]) -> bool {
    let Some(r) = rest.get(..w.len()) else {
        return false;
    };
    let mut a = r.chunks_exact(8);
    let mut b = w.chunks_exact(8);
    let word = |c: &[u8]| c.try_into().map_or(0, u64::from_ne_bytes);
    for (x, y) in (&mut a).zip(&mut b) {
        if word(x) != word(y) {
            return false;
        }
    }
    a.remainder().iter().eq(b.remainder())
}

/// Unpacks what [`pack`] made.
pub fn unpack(packed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(packed.len() * 4);
    for &c in packed {
        match index(c) {
            Some(k) => out.extend_from_slice(DICT[k]),
            None => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const USRLOC: &[u8] = b"<?xml version=\"1.0\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\" xmlns:c=\"urn:ietf:params:xml:ns:pidf:cipid\" entity=\"alice@127.0.0.1\">\n  <tuple id=\"pua6b82-18eb8e0cc64667c2-0\">\n    <status>\n      <basic>open</basic>\n    </status>\n  </tuple>\n</presence>\n";

    #[test]
    fn round_trip_and_size() {
        let p = pack(USRLOC).unwrap();
        assert!(p.len() < 110, "{} bytes", p.len());
        assert_eq!(unpack(&p), USRLOC);
        let dlg = b"<?xml version=\"1.0\"?>\n<dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"3\" state=\"full\" entity=\"sip:a@b\">\n  <dialog id=\"x\" direction=\"initiator\">\n    <state>confirmed</state>\n  </dialog>\n</dialog-info>\n";
        assert_eq!(unpack(&pack(dlg).unwrap()), dlg);
    }

    /// The plain definition: at each position the first dictionary entry
    /// (in dictionary order) that matches, else the byte.
    fn reference(body: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let mut i = 0;
        'outer: while i < body.len() {
            for (k, w) in DICT.iter().enumerate() {
                if body[i..].starts_with(w) {
                    out.push(code(k));
                    i += w.len();
                    continue 'outer;
                }
            }
            if index(body[i]).is_some() {
                return None;
            }
            out.push(body[i]);
            i += 1;
        }
        (out.len() < body.len()).then_some(out)
    }

    #[test]
    fn same_as_the_plain_definition() {
        // Bodies glued from dictionary entries, their prefixes and odd
        // bytes, from a fixed-seed generator.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..5000 {
            let mut body = Vec::new();
            for _ in 0..(next() % 12) {
                let w = DICT[(next() % DICT.len() as u64) as usize];
                match next() % 4 {
                    0 => body.extend_from_slice(&w[..1 + (next() as usize % w.len())]),
                    1 => body.push(b" <e\nux\x01\xff"[(next() % 8) as usize]),
                    _ => body.extend_from_slice(w),
                }
            }
            let got = pack(&body);
            assert_eq!(
                got,
                reference(&body),
                "{:?}",
                String::from_utf8_lossy(&body)
            );
            if let Some(p) = got {
                assert_eq!(unpack(&p), body);
            }
        }
        assert_eq!(pack(USRLOC), reference(USRLOC));
    }

    /// Through the memo, every body packs as without it: pua_usrloc-like
    /// PIDFs from user to user (the memo's case), edits anywhere, code
    /// bytes and dictionary fragments at the edges of what changed.
    #[test]
    fn the_memo_packs_as_the_plain_loop() {
        let mut rnd = crate::testing::rnd_below(0x2545_f491_4f6c_dd1d);
        let text = String::from_utf8_lossy(USRLOC).into_owned();
        let mut memo = PackMemo::default();
        let (mut fresh, mut total) = (0, 0);
        for n in 0..20_000 {
            let user: String = (0..rnd(30))
                .map(|_| char::from(b"abz09@.-"[rnd(8)]))
                .collect();
            let id: String = (0..rnd(30))
                .map(|_| char::from(b"pua0f-"[rnd(6)]))
                .collect();
            let mut body = text
                .replace("alice@127.0.0.1", &user)
                .replace("pua6b82-18eb8e0cc64667c2-0", &id)
                .into_bytes();
            if n % 4 == 0 {
                // Edits with bytes that start or end dictionary entries.
                for _ in 0..1 + rnd(3) {
                    if body.is_empty() {
                        break;
                    }
                    let w = DICT[rnd(DICT.len())];
                    let frag = &w[rnd(w.len())..];
                    let at = rnd(body.len());
                    match rnd(4) {
                        0 => body.splice(at..at, frag.iter().copied()).for_each(drop),
                        1 => body
                            .splice(at..(at + frag.len()).min(body.len()), [])
                            .for_each(drop),
                        2 => body[at] = b" <e\nu\x01\"x"[rnd(8)],
                        _ => body.truncate(at),
                    }
                }
            }
            let (got, decided) = memo.pack(&body);
            let want = pack_plain(&body);
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&body));
            assert_eq!(got, reference(&body));
            fresh += decided;
            total += body.len();
        }
        assert!(
            fresh * 2 < total,
            "the memo decided {fresh} of {total} bytes anew"
        );
    }

    #[test]
    fn entries_are_long_enough_for_the_prefilter() {
        assert!(DICT.iter().all(|w| w.len() >= 2));
    }

    #[test]
    fn codes_are_distinct_and_not_xml_whitespace() {
        let mut seen = std::collections::HashSet::new();
        for k in 0..DICT.len() {
            let c = code(k);
            assert!(seen.insert(c));
            assert!(!matches!(c, 0 | b'\t' | b'\n' | b'\r') && c < 0x20);
            assert_eq!(index(c), Some(k));
        }
    }

    #[test]
    fn unpackable_bodies() {
        assert_eq!(pack(b"a\x01b"), None, "holds a code byte");
        assert_eq!(pack(b"plain text"), None, "would not get smaller");
        assert_eq!(unpack(b"plain"), b"plain");
        // Arbitrary bytes survive when packable.
        let odd = b"<tuple id=\"\xff\xfe\"></tuple>";
        assert_eq!(unpack(&pack(odd).unwrap()), odd);
    }
}
