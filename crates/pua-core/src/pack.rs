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

fn code(i: usize) -> u8 {
    // 28 codes: 0x01-0x08, 0x0b, 0x0c, 0x0e-0x1f.
    match i {
        0..=7 => i as u8 + 1,
        8 => 0x0b,
        9 => 0x0c,
        _ => (i - 10) as u8 + 0x0e,
    }
}

fn index(c: u8) -> Option<usize> {
    match c {
        0x01..=0x08 => Some((c - 1) as usize),
        0x0b => Some(8),
        0x0c => Some(9),
        0x0e..=0x1f => Some((c - 0x0e) as usize + 10),
        _ => None,
    }
}

/// The dictionary entries by their first byte, in dictionary order.
fn by_first_byte() -> &'static [Vec<u8>; 256] {
    static LISTS: std::sync::OnceLock<[Vec<u8>; 256]> = std::sync::OnceLock::new();
    LISTS.get_or_init(|| {
        let mut l: [Vec<u8>; 256] = std::array::from_fn(|_| Vec::new());
        for (k, w) in DICT.iter().enumerate() {
            l[w[0] as usize].push(k as u8);
        }
        l
    })
}

/// Packs `body`; `None` when it cannot be packed (it holds a code byte) or
/// would not get smaller.
pub fn pack(body: &[u8]) -> Option<Vec<u8>> {
    let lists = by_first_byte();
    let mut out = Vec::with_capacity(body.len() / 2);
    let mut i = 0;
    'outer: while i < body.len() {
        let rest = &body[i..];
        let cands = &lists[rest[0] as usize];
        if !cands.is_empty() {
            // Every entry is at least 2 bytes: check the second byte before
            // comparing the whole entry.
            let second = rest.get(1).copied();
            for &k in cands {
                let w = DICT[k as usize];
                if Some(w[1]) == second && rest.starts_with(w) {
                    out.push(code(k as usize));
                    i += w.len();
                    continue 'outer;
                }
            }
        }
        if rest[0] < 0x20 && index(rest[0]).is_some() {
            // Holds a code byte: kept as it is.
            return None;
        }
        out.push(rest[0]);
        i += 1;
    }
    (out.len() < body.len()).then_some(out)
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
