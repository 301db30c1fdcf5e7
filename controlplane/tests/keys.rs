//! What the cluster key reaches and what it must not: no `Debug` output of
//! a type that holds the key shows it, and the bucket hash's seed is derived
//! from the key (not from anything public such as the VIPs).

use std::net::{IpAddr, Ipv4Addr};

use shoal_controlplane::heartbeat::ClusterAuth;
use shoal_controlplane::{bucket_seed, Config, Machine};
use shoal_dataplane::map::{ClusterMap, View};
use shoal_dataplane::{Affinity, ClusterMode, ClusterSpec, FilterMode, HostId, PortRule, Protocol};

/// A key whose bytes are all distinct and none zero.
fn key() -> [u8; 32] {
    std::array::from_fn(|i| 0xa1u8.wrapping_add(7 * i as u8))
}

fn spec(bucket_seed: u64) -> ClusterSpec {
    ClusterSpec {
        vips: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 100))],
        mode: ClusterMode::Unicast,
        ipv6_network_prefix: 64,
        rules: vec![PortRule::new(
            None,
            (0, 65535),
            Protocol::Both,
            FilterMode::Multiple {
                affinity: Affinity::None,
            },
        )],
        bucket_seed,
    }
}

/// Asserts that `text` shows no run of 3 consecutive key bytes, in hex
/// (either case, with or without separators) or in decimal (as `Debug`
/// prints a byte array or slice).
fn assert_no_key(what: &str, text: &str) {
    let key = key();
    let squeezed: String = text
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    let decimal: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    for w in key.windows(3) {
        let hex: String = w.iter().map(|b| format!("{b:02x}")).collect();
        assert!(
            !squeezed.contains(&hex),
            "{what} shows key bytes {hex}: {text}"
        );
        let dec = format!("{},{},{}", w[0], w[1], w[2]);
        assert!(
            !decimal.contains(&dec),
            "{what} shows key bytes {dec}: {text}"
        );
    }
}

#[test]
fn debug_output_never_shows_the_key() {
    let cfg = Config::new(HostId::new(1).unwrap(), key(), 7);
    let auth = ClusterAuth::new(key(), &spec(bucket_seed(&key())));
    let machine = Machine::new(cfg.clone(), spec(bucket_seed(&key())), 0);
    for (what, text) in [
        ("Config", format!("{cfg:?}")),
        ("Config (pretty)", format!("{cfg:#?}")),
        ("ClusterAuth", format!("{auth:?}")),
        ("Machine", format!("{machine:?}")),
        ("Machine (pretty)", format!("{machine:#?}")),
    ] {
        assert_no_key(what, &text);
    }
    // The check itself sees a key where one is printed.
    let shown = std::panic::catch_unwind(|| assert_no_key("the key", &format!("{:?}", key())));
    assert!(shown.is_err());
    let shown = std::panic::catch_unwind(|| {
        let hex: String = key().iter().map(|b| format!("{b:02X}")).collect();
        assert_no_key("the key", &hex)
    });
    assert!(shown.is_err());
}

/// Owners of 4,096 clients of a 3-host converged cluster under `seed`.
fn owners(seed: u64) -> Vec<Option<HostId>> {
    let spec = spec(seed);
    let members = [1, 2, 3]
        .into_iter()
        .map(|h| HostId::new(h).unwrap())
        .collect();
    let view = View::converged(&spec, members);
    let map = ClusterMap::build(&spec, &view, HostId::new(1).unwrap(), 1);
    let vip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 100));
    (0..4096u32)
        .map(|i| {
            let client = IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + i));
            shoal_dataplane::pipeline::Dataplane::owner_of(&map, 6, client, 40000, vip, 80).host
        })
        .collect()
}

#[test]
fn the_bucket_seed_follows_the_key_not_the_vips() {
    let other: [u8; 32] = std::array::from_fn(|i| key()[i] ^ (i == 31) as u8);
    assert_eq!(bucket_seed(&key()), bucket_seed(&key()));
    assert_ne!(bucket_seed(&key()), bucket_seed(&other));
    // Same VIPs, same key: the same owner for every client.
    assert_eq!(owners(bucket_seed(&key())), owners(bucket_seed(&key())));
    // Same VIPs, another key: many clients move.
    let (a, b) = (owners(bucket_seed(&key())), owners(bucket_seed(&other)));
    let moved = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert!(
        moved > a.len() / 2,
        "only {moved} of {} clients moved",
        a.len()
    );
}
