//! Order-preserving integer keys for `f32` scores.
//!
//! Sorting these keys ascending reproduces qure's ranking rule: score descending, ties broken by
//! ascending gallery index. `-0.0` and `+0.0` map to the same key, so they tie as they compare.

/// Maps a finite `f32` to a `u32` whose unsigned order is the float's order (`-0.0 == +0.0`).
#[inline(always)]
pub fn f32_to_ordered(v: f32) -> u32 {
    // `-0.0 + 0.0 == +0.0` under round-to-nearest, so both zeros share one key.
    let bits = (v + 0.0).to_bits();
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// Inverse of [`f32_to_ordered`].
#[inline(always)]
pub fn ordered_to_f32(u: u32) -> f32 {
    let bits = if u & 0x8000_0000 != 0 { u & 0x7fff_ffff } else { !u };
    f32::from_bits(bits)
}

/// Ranking key: ascending key order = descending score, then ascending index.
#[inline(always)]
pub fn rank_key(score: f32, index: u32) -> u64 {
    (u64::from(!f32_to_ordered(score)) << 32) | u64::from(index)
}

/// The score stored in a [`rank_key`].
#[inline(always)]
pub fn key_score(key: u64) -> f32 {
    ordered_to_f32(!((key >> 32) as u32))
}

/// The gallery index stored in a [`rank_key`] (or the position stored in a [`drop_key`]).
#[inline(always)]
pub fn key_index(key: u64) -> u32 {
    key as u32
}

/// Drop key: ascending key order = drop ascending (steepest first), then ascending position.
#[inline(always)]
pub fn drop_key(drop: f32, position: u32) -> u64 {
    (u64::from(f32_to_ordered(drop)) << 32) | u64::from(position)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_round_trip_and_order() {
        let values = [
            f32::MIN,
            -1e30,
            -1.5,
            -1.0,
            -f32::MIN_POSITIVE,
            -1e-45,
            0.0,
            1e-45,
            f32::MIN_POSITIVE,
            0.5,
            1.0,
            3e38,
            f32::MAX,
        ];
        for w in values.windows(2) {
            assert!(f32_to_ordered(w[0]) < f32_to_ordered(w[1]), "{w:?}");
        }
        for &v in &values {
            assert_eq!(ordered_to_f32(f32_to_ordered(v)), v);
        }
        assert_eq!(f32_to_ordered(-0.0), f32_to_ordered(0.0));
    }

    #[test]
    fn rank_keys_sort_descending_score_then_index() {
        let mut keys = [
            rank_key(0.5, 3),
            rank_key(0.5, 1),
            rank_key(0.9, 7),
            rank_key(-0.0, 2),
            rank_key(0.0, 0),
        ];
        keys.sort_unstable();
        let order: Vec<u32> = keys.iter().map(|&k| key_index(k)).collect();
        assert_eq!(order, vec![7, 1, 3, 0, 2]);
        assert_eq!(key_score(keys[0]), 0.9);
    }

    #[test]
    fn drop_keys_sort_steepest_first_then_position() {
        let mut keys = [drop_key(-0.1, 4), drop_key(-0.5, 9), drop_key(-0.1, 2), drop_key(0.0, 0)];
        keys.sort_unstable();
        let order: Vec<u32> = keys.iter().map(|&k| key_index(k)).collect();
        assert_eq!(order, vec![9, 2, 4, 0]);
    }
}
