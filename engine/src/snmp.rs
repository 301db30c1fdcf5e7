//! The kernel's protocol counters as `/proc/net/snmp` prints them, read by
//! name (for example `Udp: NoPorts`, the datagrams the local stack took for
//! an address where nothing listens: what the XDP pass and the exception
//! path hand it).
//!
//! Parsing only: the caller reads the file, inside whichever network
//! namespace it means, so this module does no I/O.

#![forbid(unsafe_code)]

/// Counter `name` of group `group` (`Udp`, `Ip`, …) in the text of
/// `/proc/net/snmp`: a header line of names, then a line of values, both
/// prefixed `group:`. `None` when the group or the name is absent or the
/// value is not a number.
pub fn counter(snmp: &str, group: &str, name: &str) -> Option<u64> {
    let prefix = format!("{group}:");
    let mut lines = snmp.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = (lines.next()?, lines.next()?);
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_by_name() {
        let snmp = "Ip: Forwarding InReceives\nIp: 2 17\n\
                    Udp: InDatagrams NoPorts InErrors\nUdp: 5 340 0\n";
        assert_eq!(counter(snmp, "Udp", "NoPorts"), Some(340));
        assert_eq!(counter(snmp, "Ip", "InReceives"), Some(17));
        assert_eq!(counter(snmp, "Udp", "Missing"), None);
        assert_eq!(counter("Udp: NoPorts\n", "Udp", "NoPorts"), None);
    }
}
