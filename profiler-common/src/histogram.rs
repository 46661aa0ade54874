//! Log-linear latency buckets, shared so that the kernel side and userspace agree on every boundary.
//!
//! Values (nanoseconds) below 32 get one bucket each. Every power-of-two range [2^k, 2^(k+1)) above
//! that is split into 16 equal sub-buckets, so a bucket is at most 1/16 (6.25 %) of its lower edge
//! wide: the HdrHistogram idea with 4 significant bits, 16 times finer than bcc's log2 slots.
//! Values of 2^MAX_LOG2 ns (about 17.2 s) and more fall into one overflow bucket.

/// Sub-buckets per power of two, as a number of bits.
pub const SUB_BITS: u32 = 4;
/// Sub-buckets per power of two.
pub const SUB_BUCKETS: u32 = 1 << SUB_BITS;
/// First value past the last finite bucket is 2^MAX_LOG2 ns.
pub const MAX_LOG2: u32 = 34;
/// Index of the bucket for values >= 2^MAX_LOG2.
pub const OVERFLOW_BUCKET: u32 = SUB_BUCKETS + (MAX_LOG2 - SUB_BITS) * SUB_BUCKETS;
/// Finite buckets plus the overflow bucket.
pub const NUM_BUCKETS: usize = OVERFLOW_BUCKET as usize + 1;

/// floor(log2(v)) for v > 0, by a branch-free binary search on shifts: the eBPF instruction set has
/// no count-leading-zeros, and this form keeps the verifier's job trivial. Returns 0 for v == 0.
#[inline(always)]
pub const fn log2(mut v: u64) -> u32 {
    let mut r = ((v > 0xFFFF_FFFF) as u32) << 5;
    v >>= r;
    let mut shift = ((v > 0xFFFF) as u32) << 4;
    v >>= shift;
    r |= shift;
    shift = ((v > 0xFF) as u32) << 3;
    v >>= shift;
    r |= shift;
    shift = ((v > 0xF) as u32) << 2;
    v >>= shift;
    r |= shift;
    shift = ((v > 0x3) as u32) << 1;
    v >>= shift;
    r |= shift;
    r | (v >> 1) as u32
}

/// The bucket that counts value `v`; always < NUM_BUCKETS.
#[inline(always)]
pub const fn bucket_index(v: u64) -> u32 {
    if v < SUB_BUCKETS as u64 {
        return v as u32;
    }
    let k = log2(v);
    if k >= MAX_LOG2 {
        return OVERFLOW_BUCKET;
    }
    let sub = ((v >> (k - SUB_BITS)) as u32) & (SUB_BUCKETS - 1);
    SUB_BUCKETS + (k - SUB_BITS) * SUB_BUCKETS + sub
}

/// Bits of the window of a value that `bucket_index_by_table` looks up.
const WINDOW_BITS: u32 = 12;

/// `bucket_index` of each value below 2^WINDOW_BITS (4096 ns), the table `bucket_index_by_table`
/// reads: 4 KiB, of which a program touches the few lines its latencies fall in.
pub static WINDOW_BUCKETS: [u8; 1 << WINDOW_BITS] = {
    let mut table = [0; 1 << WINDOW_BITS];
    let mut v = 0;
    while v < table.len() {
        table[v] = bucket_index(v as u64) as u8;
        v += 1;
    }
    table
};

/// `bucket_index` in a few eBPF instructions, for the programs that bucket a latency on every
/// event (every syscall, every switch-in). A value below 4096 (most syscalls and run-queue waits)
/// is one compare and one table load; a larger one is shifted right by a multiple of 4 bits, picked
/// by compares on the value alone (predicted branches, where `log2` is a chain of dependent shifts),
/// until it fits the table, and moves up 16 buckets for each bit shifted out: its top 12 bits are at
/// least 256, so they keep the 4 sub-bucket bits, and the result is exact. `opaque` hides the
/// index's range from the compiler, so that the mask stays in the program for the verifier.
#[inline(always)]
pub fn bucket_index_by_table(v: u64, opaque: impl Fn(u64) -> u64) -> u32 {
    let shift = if v < 1 << WINDOW_BITS {
        0
    } else if v < 1 << 20 {
        if v < 1 << 16 { 4 } else { 8 }
    } else if v < 1 << 24 {
        12
    } else if v < 1 << 28 {
        16
    } else if v < 1 << 32 {
        20
    } else if v < 1 << MAX_LOG2 {
        24
    } else {
        return OVERFLOW_BUCKET;
    };
    let window = opaque(v >> shift) & ((1 << WINDOW_BITS) - 1);
    WINDOW_BUCKETS[window as usize] as u32 + (shift << SUB_BITS)
}

/// The values bucket `index` counts: `[lower, upper)`. The overflow bucket's upper edge is u64::MAX.
pub fn bucket_bounds(index: u32) -> (u64, u64) {
    if index < SUB_BUCKETS {
        return (index as u64, index as u64 + 1);
    }
    if index >= OVERFLOW_BUCKET {
        return (1u64 << MAX_LOG2, u64::MAX);
    }
    let k = SUB_BITS + (index - SUB_BUCKETS) / SUB_BUCKETS;
    let sub = ((index - SUB_BUCKETS) % SUB_BUCKETS) as u64;
    let width = 1u64 << (k - SUB_BITS);
    let lower = (SUB_BUCKETS as u64 + sub) * width;
    (lower, lower + width)
}

/// Slots of a kernel-side histogram: `NUM_BUCKETS` rounded up to a power of two, so that the eBPF
/// programs bound an index with a mask on the very register that addresses the slot. Older
/// verifiers (Linux 5.10, 6.1) do not carry a bounds check over to a copy of the index, which is
/// what a compare-and-branch becomes after LLVM's register allocation.
pub const HISTOGRAM_SLOTS: usize = NUM_BUCKETS.next_power_of_two();

/// Bucket counts of one latency distribution, as the kernel keeps them; slots from `NUM_BUCKETS`
/// on stay zero.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Histogram {
    pub buckets: [u64; HISTOGRAM_SLOTS],
}

impl Histogram {
    /// The counts of the real buckets.
    pub fn counts(&self) -> &[u64] {
        &self.buckets[..NUM_BUCKETS]
    }
}

crate::user_pod!(Histogram);

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn log2_matches_leading_zeros() {
        for shift in 0..64 {
            for v in [1u64 << shift, (1u64 << shift) | 1, (1u64 << shift).wrapping_mul(3) >> 1, u64::MAX >> shift] {
                if v != 0 {
                    assert_eq!(log2(v), 63 - v.leading_zeros(), "v = {v}");
                }
            }
        }
        assert_eq!(log2(0), 0);
    }

    #[test]
    fn small_values_are_exact() {
        for v in 0..32u64 {
            assert_eq!(bucket_index(v), v as u32);
            assert_eq!(bucket_bounds(v as u32), (v, v + 1));
        }
    }

    #[test]
    fn powers_of_two_open_a_bucket() {
        for k in SUB_BITS..MAX_LOG2 {
            let v = 1u64 << k;
            let i = bucket_index(v);
            assert_eq!(bucket_bounds(i).0, v, "2^{k} must be the lower edge of its bucket");
            assert_eq!(bucket_index(v - 1), i - 1, "2^{k} - 1 belongs to the previous bucket");
        }
    }

    #[test]
    fn every_boundary_is_consistent() {
        let mut expected_lower = 0;
        for i in 0..OVERFLOW_BUCKET {
            let (lower, upper) = bucket_bounds(i);
            assert_eq!(lower, expected_lower, "buckets must tile the range without gaps");
            assert!(upper > lower);
            assert_eq!(bucket_index(lower), i);
            assert_eq!(bucket_index(upper - 1), i);
            if lower >= 32 {
                assert!((upper - lower) * 16 <= lower, "bucket {i} is wider than 6.25 %");
            }
            expected_lower = upper;
        }
        assert_eq!(expected_lower, 1 << MAX_LOG2);
    }

    #[test]
    fn the_table_gives_every_bucket_as_the_arithmetic_does() {
        let check = |v: u64| assert_eq!(bucket_index_by_table(v, |x| x), bucket_index(v), "v = {v}");
        (0..1 << 20).for_each(check);
        for k in 20..64 {
            for v in [1u64 << k, (1 << k) - 1, (1 << k) + 1, (1 << k) | (1 << (k - 1)), (1 << k) | ((1 << (k - 4)) - 1)]
            {
                check(v);
            }
        }
        check(u64::MAX);
    }

    #[test]
    fn overflow_and_extremes() {
        assert_eq!(bucket_index((1 << MAX_LOG2) - 1), OVERFLOW_BUCKET - 1);
        assert_eq!(bucket_index(1 << MAX_LOG2), OVERFLOW_BUCKET);
        assert_eq!(bucket_index(u64::MAX), OVERFLOW_BUCKET);
        assert_eq!(bucket_bounds(OVERFLOW_BUCKET), (1 << MAX_LOG2, u64::MAX));
        assert!(NUM_BUCKETS == OVERFLOW_BUCKET as usize + 1);
        // 10 s must still have a finite bucket.
        assert!(bucket_index(10_000_000_000) < OVERFLOW_BUCKET);
    }
}
