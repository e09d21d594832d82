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

/// Bytes of shared memory a zone needs to hold allocations of these sizes: nginx's slab
/// allocator gives each allocation whole pages of its own (a small one, a page of its size
/// class), keeps a 24-byte descriptor per page (counted as 64 here) and a pool header with its
/// size-class tables (under a page, plus a page for the alignment of the first page); plus a
/// 2% margin of at least a page. Whole pages.
pub fn zone_size_for(allocations: &[usize]) -> usize {
    const PAGE: usize = 4096;
    let pages: usize = allocations.iter().map(|a| a.max(&1).div_ceil(PAGE)).sum();
    let bookkeeping = 2 + (pages * 64).div_ceil(PAGE);
    let total = pages + bookkeeping;
    (total + (total / 50).max(1)) * PAGE
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
        let small = zone_size_for(&[80, 112, 160, 1024]);
        let large = zone_size_for(&[80, 10_000 * 112, 100 * 160, 2500 * 4]);
        assert_eq!(small % 4096, 0);
        assert_eq!(large % 4096, 0);
        assert!(large >= 10_000 * 112 + 100 * 160 + 2500 * 4);
        assert!(large <= 10_000 * 125, "{}", large / 10_000);
        assert!(small >= 6 * 4096);
        assert!(small <= 32 * 1024, "one peer fits the minimum zone");
    }
}
