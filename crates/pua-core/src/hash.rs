//! The bucket hash of the record table. Records of one presentity (and, for
//! subscriptions, one watcher) share a bucket, as in the C module, so lookups
//! by pres_uri (+ watcher_uri) touch one bucket.

/// FNV-1a over the presentity URI, then the watcher URI when there is one.
pub fn bucket_of(pres_uri: &[u8], watcher_uri: Option<&[u8]>, buckets: usize) -> usize {
    debug_assert!(buckets.is_power_of_two());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(pres_uri);
    if let Some(w) = watcher_uri {
        eat(&[0xff]);
        eat(w);
    }
    // Fold the high bits in: FNV's low bits alone spread short keys poorly.
    ((h ^ (h >> 32)) as usize) & (buckets - 1)
}

/// A 32-bit FNV-1a of a presentity URI, kept in every record so that a
/// bucket walk compares 4 bytes before it reads the record's strings.
#[inline]
pub fn uri_hash(uri: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in uri {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_similar_uris() {
        let n = 512;
        let mut hits = vec![0u32; n];
        for i in 0..10_000 {
            let uri = format!("sip:user{i}@example.com");
            hits[bucket_of(uri.as_bytes(), None, n)] += 1;
        }
        let max = *hits.iter().max().unwrap();
        assert!(max < 60, "a bucket got {max} of 10000 keys");
        assert!(hits.iter().all(|&h| h > 0));
    }

    #[test]
    fn watcher_changes_bucket_key() {
        let a = bucket_of(b"sip:a@x", None, 1 << 16);
        let b = bucket_of(b"sip:a@x", Some(b"sip:w@x"), 1 << 16);
        assert_ne!(a, b);
        assert_eq!(b, bucket_of(b"sip:a@x", Some(b"sip:w@x"), 1 << 16));
    }
}
