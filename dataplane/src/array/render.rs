//! What a CARP array publishes: the Proxy Array Membership Table
//! (draft-vinod-carp-v1-03 §2) and the PAC routing script (§4).
//!
//! Owns: [`membership_table`], [`pac_script`] and [`config_id`].
//! Guarantees:
//! - The table is the draft's §2 layout byte for byte: the version line and
//!   the four global fields as the draft prints them (`Field:  value`, two
//!   spaces), each line ended by CR LF, the global part ended by an empty
//!   line (CR LF CR LF), then one record per member, fields separated by
//!   single spaces, each record ended by CR LF. `ListTTL` is in seconds
//!   (§2.1.5). `ConfigID` is [`config_id`]: it changes with the view's epoch
//!   and with any member field.
//! - The PAC script's `FindProxyForURL` returns, for every URL the router
//!   can parse, exactly the router's answer: `DIRECT` for `direct` hosts,
//!   the exception proxy (the VIP) for `exceptions`, else `PROXY p` for
//!   every member that is up, in [`Carp::order`] order, separated by `; `.
//!   The script repeats the router's integer hashing with `Math.imul` (or an
//!   exact 16-bit-limb replacement where an engine lacks it) and `>>> 0`,
//!   embeds every member hash and multiplier (each `f64` printed in its
//!   shortest round-trip form, so JavaScript reads the identical double),
//!   and scores as `combine * multiplier` in doubles: IEEE multiplication of
//!   identical operands gives identical results, so no step can differ. Key
//!   bytes are the UTF-8 bytes of the URL's parts, as the router sees them.
//!   When no member is up the script answers `DIRECT`.

use std::fmt::Write as _;

use super::carp::{fmix32, fnv_step, Carp, HashMode, FNV_BASIS};
use super::router::{DomainPattern, Router};
use super::target::KeyPart;

/// One member's row in the membership table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableMember {
    /// The address other members and clients connect to (§2.2.2).
    pub address: String,
    /// The listening port (§2.2.3).
    pub port: u16,
    /// Seconds the member has been in its current state (§2.2.7).
    pub state_time_s: u32,
    /// Cache size in megabytes (§2.2.10).
    pub cache_mb: u64,
}

/// The array-wide fields of the membership table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArrayInfo<'a> {
    /// `ArrayName` (§2.1.4).
    pub array_name: &'a str,
    /// `ListTTL` in seconds (§2.1.5).
    pub list_ttl_s: u32,
    /// The view's epoch, folded into `ConfigID`.
    pub epoch: u64,
    /// The agent string (§2.2.5), one token.
    pub agent: &'a str,
}

/// The table's `ConfigID` (§2.1.3): a 32-bit digest of the epoch and every
/// member's name, address, port, load factor and state.
pub fn config_id(epoch: u64, carp: &Carp, rows: &[TableMember]) -> u32 {
    let mut h = FNV_BASIS;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h = fnv_step(h, b);
        }
    };
    feed(&epoch.to_le_bytes());
    for (m, row) in carp.members().iter().zip(rows) {
        feed(m.name.as_bytes());
        feed(&[0]);
        feed(row.address.as_bytes());
        feed(&[0]);
        feed(&row.port.to_le_bytes());
        feed(&m.load_factor.to_le_bytes());
        feed(&[u8::from(m.up)]);
    }
    fmix32(h)
}

fn url_host(address: &str) -> String {
    if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]")
    } else {
        address.to_string()
    }
}

/// The membership table for `carp`'s members, `rows[i]` describing member
/// `i` (extra rows are ignored, missing ones end the table early).
pub fn membership_table(info: &ArrayInfo<'_>, carp: &Carp, rows: &[TableMember]) -> String {
    let mut out = String::new();
    let id = config_id(info.epoch, carp, rows);
    let _ = write!(
        out,
        "Proxy Array Information/1.0\r\nArrayEnabled:  1\r\nConfigID:  {id}\r\nArrayName:  {}\r\nListTTL:  {}\r\n\r\n",
        info.array_name, info.list_ttl_s
    );
    for (m, row) in carp.members().iter().zip(rows) {
        let _ = write!(
            out,
            "{} {} {} http://{}:{}/array.dll?Get.Info.v1 {} {} {} {} {}\r\n",
            m.name,
            row.address,
            row.port,
            url_host(&row.address),
            row.port,
            info.agent,
            row.state_time_s,
            if m.up { "UP" } else { "DOWN" },
            m.load_factor,
            row.cache_mb
        );
    }
    out
}

/// What the PAC script answers with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacTargets {
    /// `host:port` of each member, by member index.
    pub proxies: Vec<String>,
    /// `host:port` answered for `exceptions` hosts (the VIP); `None`
    /// routes them like any other host.
    pub exception_proxy: Option<String>,
}

fn js_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn js_patterns(patterns: &[DomainPattern]) -> String {
    let items: Vec<String> = patterns
        .iter()
        .map(|p| format!("[{}, {}]", u8::from(p.is_suffix()), js_string(p.text())))
        .collect();
    format!("[{}]", items.join(", "))
}

/// The PAC script for `router` (see the module docs for its contract).
pub fn pac_script(router: &Router, targets: &PacTargets, header: &str) -> String {
    let carp = &router.carp;
    let mut members = String::new();
    for (i, m) in carp.members().iter().enumerate() {
        let proxy = targets.proxies.get(i).map_or("", String::as_str);
        let _ = writeln!(
            members,
            "  [{}, {}, {:?}, {}, {}],",
            js_string(&format!("PROXY {proxy}")),
            m.hash,
            m.multiplier,
            m.rank,
            u8::from(m.up)
        );
    }
    let mut by_rank: Vec<(u8, usize)> = carp
        .members()
        .iter()
        .enumerate()
        .map(|(i, m)| (m.rank, i))
        .collect();
    by_rank.sort_unstable();
    let by_rank: Vec<String> = by_rank.iter().map(|(_, i)| i.to_string()).collect();
    let key: Vec<String> = KeyPart::NAMES
        .iter()
        .map(|(_, p)| u8::from(carp.key().contains(*p)).to_string())
        .collect();
    let mode = match carp.mode() {
        HashMode::Spec => 0,
        HashMode::Squid => 1,
        HashMode::Hrw => 2,
    };
    let exception_proxy = match &targets.exception_proxy {
        Some(p) => js_string(&format!("PROXY {p}")),
        None => "null".into(),
    };
    let mut out = String::new();
    for line in header.lines() {
        let _ = writeln!(out, "// {line}");
    }
    let _ = write!(
        out,
        "var MODE = {mode}; // 0 spec, 1 squid, 2 hrw: hash mode {name}\n\
         var KEY = [{key}]; // scheme, host, port, path, query\n\
         // [proxy, member hash, load-factor multiplier, rank, up]\n\
         var MEMBERS = [\n{members}];\n\
         var BY_RANK = [{by_rank}];\n\
         var DIRECT_HOSTS = {direct};\n\
         var EXCEPTION_HOSTS = {exceptions};\n\
         var EXCEPTION_PROXY = {exception_proxy};\n\
         {PAC_BODY}",
        name = carp.mode().name(),
        key = key.join(", "),
        by_rank = by_rank.join(", "),
        direct = js_patterns(&router.direct),
        exceptions = js_patterns(&router.exceptions),
    );
    out
}

/// The mode-independent part of the PAC script.
const PAC_BODY: &str = r##"
var imul = Math.imul || function (a, b) {
  var ah = (a >>> 16) & 0xffff, al = a & 0xffff, bh = (b >>> 16) & 0xffff, bl = b & 0xffff;
  return ((al * bl) + (((ah * bl + al * bh) << 16) >>> 0)) | 0;
};
function rotl(x, n) { return ((x << n) | (x >>> (32 - n))) >>> 0; }
function carpStep(h, b) { return (h + rotl(h, 19) + b) >>> 0; }
function carpSpread(x) { return rotl((x + imul(x, 0x62531965)) >>> 0, 21); }
function fnvStep(h, b) { return imul(h ^ b, 0x01000193) >>> 0; }
function fmix32(h) {
  h = (h ^ (h >>> 16)) >>> 0; h = imul(h, 0x85ebca6b) >>> 0;
  h = (h ^ (h >>> 13)) >>> 0; h = imul(h, 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}
function hrwCombine(u, m) {
  var k = imul(u, 0xcc9e2d51); k = rotl(k, 15); k = imul(k, 0x1b873593);
  var h = rotl((m ^ k) >>> 0, 13);
  h = (imul(h, 5) + 0xe6546b64) >>> 0;
  return fmix32((h ^ 4) >>> 0);
}
function lowerAscii(s) {
  var out = "";
  for (var i = 0; i < s.length; i++) {
    var c = s.charCodeAt(i);
    out += (c >= 65 && c <= 90) ? String.fromCharCode(c + 32) : s.charAt(i);
  }
  return out;
}
function utf8(s) {
  var out = [];
  for (var i = 0; i < s.length; i++) {
    var c = s.charCodeAt(i);
    if (c < 0x80) { out.push(c); continue; }
    if (c < 0x800) { out.push(0xc0 | (c >> 6), 0x80 | (c & 63)); continue; }
    if (c >= 0xd800 && c < 0xdc00 && i + 1 < s.length) {
      var d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d < 0xe000) {
        c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00); i++;
        out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
        continue;
      }
    }
    out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
  }
  return out;
}
function defaultPort(scheme) {
  switch (lowerAscii(scheme)) {
    case "http": case "ws": return 80;
    case "https": case "wss": return 443;
    case "ftp": return 21;
  }
  return 0;
}
function parseUrl(url) {
  var i = url.indexOf("://");
  if (i < 0) return null;
  var scheme = url.substring(0, i);
  if (!/^[A-Za-z][A-Za-z0-9+.\-]*$/.test(scheme)) return null;
  var rest = url.substring(i + 3);
  var end = rest.search(/[\/?#]/);
  if (end < 0) end = rest.length;
  var auth = rest.substring(0, end), tail = rest.substring(end);
  var hash = tail.indexOf("#");
  if (hash >= 0) tail = tail.substring(0, hash);
  var at = auth.lastIndexOf("@");
  if (at >= 0) auth = auth.substring(at + 1);
  var host, portText = null;
  if (auth.charAt(0) == "[") {
    var close = auth.indexOf("]");
    if (close < 0) return null;
    host = auth.substring(0, close + 1);
    var after = auth.substring(close + 1);
    if (after.length) {
      if (after.charAt(0) != ":") return null;
      portText = after.substring(1);
    }
  } else {
    var colon = auth.indexOf(":");
    if (colon >= 0) { host = auth.substring(0, colon); portText = auth.substring(colon + 1); }
    else host = auth;
  }
  if (!host.length || /[\x00-\x20\x7f\/?#@]/.test(host)) return null;
  var port = null;
  if (portText !== null && portText.length) {
    if (!/^[0-9]{1,5}$/.test(portText)) return null;
    port = parseInt(portText, 10);
    if (port > 65535) return null;
  }
  var q = tail.indexOf("?");
  return { scheme: scheme, host: host, port: port,
           path: q >= 0 ? tail.substring(0, q) : tail,
           query: q >= 0 ? tail.substring(q + 1) : null };
}
function routingKey(u) {
  var all = KEY[0] && KEY[1] && KEY[2] && KEY[3] && KEY[4];
  var k = "";
  if (KEY[0]) k += lowerAscii(u.scheme) + "://";
  if (KEY[1]) k += lowerAscii(u.host);
  if (KEY[2]) {
    if (MODE == 1 && !all) k += ":" + (u.port !== null ? u.port : defaultPort(u.scheme));
    else if (u.port !== null && u.port != defaultPort(u.scheme)) k += ":" + u.port;
  }
  if (KEY[3]) k += u.path.length ? u.path : "/";
  if (KEY[4] && u.query !== null) k += "?" + u.query;
  return utf8(k);
}
function matchesHost(patterns, host) {
  var h = lowerAscii(host);
  for (var i = 0; i < patterns.length; i++) {
    var p = patterns[i];
    if (p[0]) {
      if (p[1] == "" || (h.length > p[1].length && h.substring(h.length - p[1].length) == p[1])) return true;
    } else if (h == p[1]) return true;
  }
  return false;
}
function carpOrder(u) {
  var key = routingKey(u), scores = [], h, i, j;
  if (MODE == 1) {
    h = 0;
    for (i = 0; i < BY_RANK.length; i++) {
      for (j = 0; j < key.length; j++) h = carpStep(h, key[j] >= 0x80 ? key[j] + 0xffffff00 : key[j]);
      var m = MEMBERS[BY_RANK[i]];
      scores.push([carpSpread((h ^ m[1]) >>> 0) * m[2], m[3], BY_RANK[i]]);
    }
  } else {
    h = MODE == 0 ? 0 : 0x811c9dc5;
    for (j = 0; j < key.length; j++) h = MODE == 0 ? carpStep(h, key[j]) : fnvStep(h, key[j]);
    for (i = 0; i < MEMBERS.length; i++) {
      var c = MODE == 0 ? carpSpread((h ^ MEMBERS[i][1]) >>> 0) : hrwCombine(h, MEMBERS[i][1]);
      scores.push([c * MEMBERS[i][2], MEMBERS[i][3], i]);
    }
  }
  scores.sort(function (a, b) { return a[0] != b[0] ? (a[0] > b[0] ? -1 : 1) : a[1] - b[1]; });
  var order = [];
  for (i = 0; i < scores.length; i++) if (MEMBERS[scores[i][2]][4]) order.push(MEMBERS[scores[i][2]][0]);
  return order;
}
function FindProxyForURL(url, host) {
  var u = parseUrl(url);
  if (u === null) return "DIRECT";
  if (matchesHost(DIRECT_HOSTS, u.host)) return "DIRECT";
  if (EXCEPTION_PROXY !== null && matchesHost(EXCEPTION_HOSTS, u.host)) return EXCEPTION_PROXY;
  var order = carpOrder(u);
  return order.length ? order.join("; ") : "DIRECT";
}
"##;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::array::carp::MemberSpec;
    use crate::array::target::KeyParts;

    fn carp() -> Carp {
        Carp::new(
            HashMode::Spec,
            KeyParts::ALL,
            &[
                MemberSpec::new("p1.example", 1),
                MemberSpec::new("p2.example", 2),
            ],
        )
        .unwrap()
    }

    fn rows() -> Vec<TableMember> {
        vec![
            TableMember {
                address: "10.0.0.11".into(),
                port: 3128,
                state_time_s: 42,
                cache_mb: 0,
            },
            TableMember {
                address: "fd00::12".into(),
                port: 8080,
                state_time_s: 7,
                cache_mb: 1024,
            },
        ]
    }

    #[test]
    fn the_table_has_the_drafts_layout() {
        let mut carp = carp();
        carp.set_up(1, false);
        let info = ArrayInfo {
            array_name: "lab",
            list_ttl_s: 300,
            epoch: 9,
            agent: "shoal/0.1.0",
        };
        let id = config_id(9, &carp, &rows());
        let table = membership_table(&info, &carp, &rows());
        assert_eq!(
            table,
            format!(
                "Proxy Array Information/1.0\r\nArrayEnabled:  1\r\nConfigID:  {id}\r\n\
                 ArrayName:  lab\r\nListTTL:  300\r\n\r\n\
                 p1.example 10.0.0.11 3128 http://10.0.0.11:3128/array.dll?Get.Info.v1 shoal/0.1.0 42 UP 1 0\r\n\
                 p2.example fd00::12 8080 http://[fd00::12]:8080/array.dll?Get.Info.v1 shoal/0.1.0 7 DOWN 2 1024\r\n"
            )
        );
        assert_ne!(id, config_id(10, &carp, &rows()), "the epoch changes it");
        let up = self::carp();
        assert_ne!(
            id,
            config_id(9, &up, &rows()),
            "a member's state changes it"
        );
    }

    #[test]
    fn the_pac_embeds_exact_multipliers_and_every_pattern() {
        let mut router = Router::new(carp());
        router.direct.push(DomainPattern::parse("*.intra").unwrap());
        let pac = pac_script(
            &router,
            &PacTargets {
                proxies: vec!["10.0.0.11:3128".into(), "10.0.0.12:3128".into()],
                exception_proxy: Some("10.0.0.100:3128".into()),
            },
            "shoal CARP routing script",
        );
        assert!(pac.starts_with("// shoal CARP routing script\nvar MODE = 0;"));
        for m in router.carp.members() {
            assert!(pac.contains(&format!("{}, {:?},", m.hash, m.multiplier)));
            let printed = format!("{:?}", m.multiplier);
            assert_eq!(printed.parse::<f64>().unwrap(), m.multiplier);
        }
        assert!(pac.contains(r#"var DIRECT_HOSTS = [[1, ".intra"]];"#));
        assert!(pac.contains(r#"var EXCEPTION_PROXY = "PROXY 10.0.0.100:3128";"#));
        assert!(pac.contains("function FindProxyForURL(url, host)"));
    }
}
