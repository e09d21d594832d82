//! The identity of a checked peer across reloads and the size of the shared zone they need.

/// Key of a peer in the shared zone: its upstream, its name as nginx shows it, and which
/// occurrence of that name in the upstream it is (the same address may be listed twice).
/// FNV-1a over the parts; 0 is reserved for "empty slot".
pub fn peer_key(upstream: &[u8], peer: &[u8], occurrence: u32) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(PRIME);
        }
        // A separator that cannot occur in names keeps ("ab","c") apart from ("a","bc").
        h ^= 0xff;
        h = h.wrapping_mul(PRIME);
    };
    eat(upstream);
    eat(peer);
    eat(&occurrence.to_le_bytes());
    h.max(1)
}

/// Bytes of shared memory the zone needs for `peers` slots of `slot_size` bytes: the slab
/// allocator's own bookkeeping (its pool header, a page per size class of small allocations
/// and a page descriptor per 4 KiB page),
/// the zone header and the slot array, rounded up to whole pages, with a 10% margin.
pub fn zone_size_for(peers: usize, slot_size: usize, header_size: usize) -> usize {
    const PAGE: usize = 4096;
    let data = header_size + peers * slot_size;
    let pages = data.div_ceil(PAGE);
    let bookkeeping_pages = 5 + (pages * 64).div_ceil(PAGE);
    let total = (pages + bookkeeping_pages) * PAGE;
    (total + total / 10).div_ceil(PAGE) * PAGE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_tell_upstreams_peers_and_occurrences_apart() {
        let a = peer_key(b"backend", b"127.0.0.1:8081", 0);
        assert_eq!(a, peer_key(b"backend", b"127.0.0.1:8081", 0));
        assert_ne!(a, peer_key(b"other", b"127.0.0.1:8081", 0));
        assert_ne!(a, peer_key(b"backend", b"127.0.0.1:8082", 0));
        assert_ne!(a, peer_key(b"backend", b"127.0.0.1:8081", 1));
        assert_ne!(peer_key(b"ab", b"c", 0), peer_key(b"a", b"bc", 0));
    }

    #[test]
    fn zone_size_grows_with_peers_and_is_page_aligned() {
        let small = zone_size_for(3, 112, 64);
        let large = zone_size_for(10_000, 112, 64);
        assert_eq!(small % 4096, 0);
        assert_eq!(large % 4096, 0);
        assert!(large >= 10_000 * 112);
        assert!(large < 10_000 * 112 * 13 / 10);
        assert!(small >= 6 * 4096);
        assert!(small <= 32 * 1024, "one peer fits the minimum zone");
    }
}
