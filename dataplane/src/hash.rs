//! Deterministic hashing: flow keys to bucket numbers, and the per-(host,
//! bucket) scores that weighted rendezvous hashing ranks.
//!
//! Every host of a cluster must compute bit-identical results, whatever its
//! CPU or libm, or two hosts could both believe they own a bucket. So this
//! module uses only integer arithmetic and IEEE-754 basic operations (`+ - * /`,
//! which Rust never contracts into FMA), never `f64::ln` or other library
//! transcendental functions whose last bit may differ between platforms.

use std::net::IpAddr;

use crate::model::Affinity;

/// A strong 64-bit finaliser (the MurmurHash3 / SplitMix family of
/// multiply-xorshift rounds): every input bit affects every output bit.
#[inline(always)]
pub const fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// Folds one 64-bit word into a running hash.
#[inline(always)]
const fn fold(h: u64, word: u64) -> u64 {
    mix64(h ^ word.wrapping_mul(0x9e37_79b9_7f4a_7c15)).rotate_left(23)
}

/// The client part of a flow that affinity selects, as the hash input.
///
/// IPv4 addresses are hashed as themselves, IPv6 as two 64-bit halves, so an
/// IPv4 client and an IPv4-mapped IPv6 client are different clients.
#[inline]
pub fn affinity_hash(
    seed: u64,
    affinity: Affinity,
    client: IpAddr,
    client_port: u16,
    ipv6_prefix: u8,
) -> u64 {
    match client {
        IpAddr::V4(a) => affinity_hash_v4(seed, affinity, u32::from(a), client_port),
        IpAddr::V6(a) => {
            let mut bits = u128::from(a);
            let port = match affinity {
                Affinity::None => client_port,
                Affinity::Single => 0,
                Affinity::Network => {
                    let p = ipv6_prefix.min(128) as u32;
                    bits &= if p == 0 { 0 } else { u128::MAX << (128 - p) };
                    0
                }
            };
            let h = fold(seed ^ 6, (bits >> 64) as u64);
            fold(fold(h, bits as u64), port as u64)
        }
    }
}

/// [`affinity_hash`] of an IPv4 client given as an integer (the frame
/// path's form): the same value, without building an `IpAddr`.
#[inline(always)]
pub fn affinity_hash_v4(seed: u64, affinity: Affinity, client: u32, client_port: u16) -> u64 {
    let (addr_mask, port_mask) = affinity_masks_v4(affinity);
    masked_hash_v4(seed, client & addr_mask, client_port & port_mask)
}

/// What `affinity` keeps of an IPv4 client address and port, as masks:
/// [`affinity_hash_v4`] is [`masked_hash_v4`] of the masked values, so a
/// caller that resolved the affinity once (per rule) hashes without
/// branching on it.
#[inline(always)]
pub const fn affinity_masks_v4(affinity: Affinity) -> (u32, u16) {
    match affinity {
        Affinity::None => (u32::MAX, u16::MAX),
        Affinity::Single => (u32::MAX, 0),
        Affinity::Network => (0xffff_ff00, 0),
    }
}

/// The hash of an IPv4 client address and port already masked by
/// [`affinity_masks_v4`].
#[inline(always)]
pub fn masked_hash_v4(seed: u64, addr: u32, port: u16) -> u64 {
    fold(fold(seed ^ 4, addr as u64), port as u64)
}

/// `-ln(u)` for `u = x / 2^64`, `x != 0`, computed with basic IEEE operations
/// only, so it is bit-identical on every platform. Accurate to about 1e-8
/// absolute, far below what the ranking needs.
#[inline(always)]
pub fn neg_ln_unit(x: u64) -> f64 {
    let x = x | 1;
    let lz = x.leading_zeros();
    // Normalise to m in [1, 2): the top 53 bits after the leading one.
    let top = (x << lz) >> 11; // 53 significant bits, leading bit set
    let m = top as f64 / (1u64 << 52) as f64;
    // ln(m) = 2 atanh(s), s = (m-1)/(m+1) in [0, 1/3).
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let series = s
        * (1.0
            + s2 * (1.0 / 3.0
                + s2 * (1.0 / 5.0
                    + s2 * (1.0 / 7.0
                        + s2 * (1.0 / 9.0
                            + s2 * (1.0 / 11.0 + s2 * (1.0 / 13.0 + s2 * (1.0 / 15.0))))))));
    let ln_m = 2.0 * series;
    // x = m * 2^(63 - lz), u = x / 2^64 = m * 2^-(lz + 1).
    (lz as f64 + 1.0) * std::f64::consts::LN_2 - ln_m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neg_ln_matches_libm_closely() {
        for &x in &[
            1u64,
            2,
            3,
            1 << 20,
            0x1234_5678_9abc_def0,
            u64::MAX,
            u64::MAX / 3,
        ] {
            let u = (x | 1) as f64 / 2f64.powi(64);
            let want = -u.ln();
            let got = neg_ln_unit(x);
            assert!((got - want).abs() <= 2e-8, "x={x} got={got} want={want}");
        }
    }

    /// Pinned values: the XDP program in `engine/src/xdp/` computes the
    /// same hash bit for bit, so no refactoring may change one.
    #[test]
    fn ipv4_hash_values_are_pinned() {
        let c = u32::from_be_bytes([192, 0, 2, 7]);
        let got = [
            affinity_hash_v4(0x5348_4f41_4c00_0001, Affinity::None, c, 4321),
            affinity_hash_v4(0x5348_4f41_4c00_0001, Affinity::Single, c, 4321),
            affinity_hash_v4(0x5348_4f41_4c00_0001, Affinity::Network, c, 4321),
        ];
        // fold(fold(seed ^ 4, addr), port), written out independently.
        let want = |addr: u32, port: u16| {
            let f =
                |h: u64, w: u64| mix64(h ^ w.wrapping_mul(0x9e37_79b9_7f4a_7c15)).rotate_left(23);
            f(f(0x5348_4f41_4c00_0001 ^ 4, addr as u64), port as u64)
        };
        assert_eq!(got, [want(c, 4321), want(c, 0), want(c & 0xffff_ff00, 0)]);
        // Taken from the code before the integer form existed.
        assert_eq!(
            got,
            [
                0x6a35_adb3_4f27_9422,
                0xac0c_0baa_d054_5c74,
                0x18d2_7fce_0ac5_ee30
            ]
        );
    }

    proptest::proptest! {
        /// The integer form gives exactly what `affinity_hash` gives for an
        /// IPv4 client.
        #[test]
        fn ipv4_form_equals_the_general_form(
            seed: u64,
            client: u32,
            port: u16,
            prefix in 0u8..=128,
            aff in 0usize..3,
        ) {
            let affinity = [Affinity::None, Affinity::Single, Affinity::Network][aff];
            proptest::prop_assert_eq!(
                affinity_hash_v4(seed, affinity, client, port),
                affinity_hash(seed, affinity, IpAddr::V4(client.into()), port, prefix)
            );
        }
    }

    #[test]
    fn affinity_selects_inputs() {
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let b: IpAddr = "192.0.2.9".parse().unwrap();
        let c: IpAddr = "192.0.3.7".parse().unwrap();
        let h = |aff, ip, port| affinity_hash(1, aff, ip, port, 64);
        assert_ne!(h(Affinity::None, a, 1000), h(Affinity::None, a, 1001));
        assert_eq!(h(Affinity::Single, a, 1000), h(Affinity::Single, a, 1001));
        assert_ne!(h(Affinity::Single, a, 1), h(Affinity::Single, b, 1));
        assert_eq!(h(Affinity::Network, a, 1), h(Affinity::Network, b, 2));
        assert_ne!(h(Affinity::Network, a, 1), h(Affinity::Network, c, 1));
        let x: IpAddr = "2001:db8:1:2::5".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let z: IpAddr = "2001:db8:1:3::5".parse().unwrap();
        assert_eq!(h(Affinity::Network, x, 1), h(Affinity::Network, y, 2));
        assert_ne!(h(Affinity::Network, x, 1), h(Affinity::Network, z, 1));
        assert_ne!(h(Affinity::Single, x, 1), h(Affinity::Single, y, 1));
    }
}
