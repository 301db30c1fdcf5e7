//! `shoal carp route|table|pac`: a CARP array's decisions, membership
//! table and PAC script, offline, exactly as the array serves them.
//!
//! The array comes from a configuration's `[[service]]` (`--config FILE
//! --service NAME`, members narrowed with `--members 1,2,3`) or from
//! `--member NAME=LOAD` arguments alone (then PAC entries are
//! `PROXY NAME:PORT`, port 3128 unless `--port`). `--hash` and `--key`
//! override the service's settings.

use std::fmt::Write as _;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use shoal_config::{CarpMembers, Config};
use shoal_dataplane::array::{
    membership_table, pac_script, ArrayInfo, Carp, Decision, HashMode, KeyParts, MemberSpec,
    PacTargets, RequestTarget, Router, TableMember,
};

/// The PAC port for `--member` entries when `--port` is not given.
pub const DEFAULT_PROXY_PORT: u16 = 3128;

/// How the array is described on the command line.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ArrayArgs {
    /// Cluster configuration file (with --service).
    #[arg(long, requires = "service")]
    pub config: Option<PathBuf>,
    /// The `[[service]]` name in --config.
    #[arg(long, requires = "config")]
    pub service: Option<String>,
    /// Live cluster members by host ID (default: every configured host), e.g.
    /// 1,2,3; the other hosts stay in the array marked down, as the proxy
    /// marks hosts outside the view.
    #[arg(long, requires = "config")]
    pub members: Option<String>,
    /// A member NAME=LOAD (repeatable); replaces the configuration's members.
    #[arg(long = "member", value_name = "NAME=LOAD")]
    pub member: Vec<String>,
    /// Hash mode: spec, squid or hrw (default: the service's, else spec).
    #[arg(long)]
    pub hash: Option<String>,
    /// URL parts hashed, comma-separated: scheme,host,port,path,query or all.
    #[arg(long)]
    pub key: Option<String>,
}

/// A CARP array as the tools see it.
#[derive(Clone, Debug)]
pub struct Array {
    /// The router.
    pub router: Router,
    /// `host:port` per member, for the PAC and the table.
    pub proxies: Vec<(String, u16)>,
    /// The VIP and service port answered for exceptions.
    pub exception_proxy: Option<String>,
    /// `ArrayName`.
    pub array_name: String,
    /// `ListTTL`, seconds.
    pub list_ttl_s: u32,
}

fn parse_member(arg: &str) -> Result<MemberSpec> {
    let (name, load) = match arg.rsplit_once('=') {
        Some((n, l)) => (
            n,
            l.parse::<u32>()
                .with_context(|| format!("--member {arg:?}: load {l:?} is not a whole number"))?,
        ),
        None => (arg, 1),
    };
    if let Some(why) = shoal_config::name_problem(name) {
        bail!("--member {arg:?}: name {why}");
    }
    Ok(MemberSpec::new(name, load))
}

/// Builds the array from the arguments; `config` is the loaded `--config`.
/// `port` is `--port` (PAC and table entries of `--member` members, or the
/// service port of cluster members).
pub fn array(args: &ArrayArgs, config: Option<&Config>, port: Option<u16>) -> Result<Array> {
    let service = match (config, &args.service) {
        (Some(c), Some(name)) => Some(c.service(name).ok_or_else(|| {
            let known: Vec<&str> = c.services.iter().map(|s| s.name.as_str()).collect();
            anyhow!(
                "--service {name:?}: no such [[service]] in {} (services: {})",
                c.source.display(),
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            )
        })?),
        _ => None,
    };
    let carp = match service {
        Some(s) => Some(
            s.carp()
                .ok_or_else(|| anyhow!("--service {:?}: not a route = \"carp\" service", s.name))?,
        ),
        None => None,
    };
    let hash = match &args.hash {
        Some(h) => HashMode::from_name(h)
            .ok_or_else(|| anyhow!("--hash {h:?}: expected spec, squid or hrw"))?,
        None => carp.map_or(HashMode::Spec, |c| c.hash),
    };
    let key = match &args.key {
        Some(k) => KeyParts::parse_list(k).map_err(|e| anyhow!("--key {k:?}: {e}"))?,
        None => carp.map_or(KeyParts::ALL, |c| c.key),
    };
    let mut down: Vec<usize> = Vec::new();
    let (specs, proxies): (Vec<MemberSpec>, Vec<(String, u16)>) = if !args.member.is_empty() {
        let specs = args
            .member
            .iter()
            .map(|m| parse_member(m))
            .collect::<Result<Vec<_>>>()?;
        let p = port.unwrap_or(DEFAULT_PROXY_PORT);
        let proxies = specs.iter().map(|s| (s.name.clone(), p)).collect();
        (specs, proxies)
    } else {
        let (Some(config), Some(service), Some(carp)) = (config, service, carp) else {
            bail!("name the members: --member NAME=LOAD ..., or --config FILE --service NAME");
        };
        let set = match (&args.members, &carp.members) {
            (Some(list), CarpMembers::Cluster { .. }) => Some(super::members(config, Some(list))?),
            (Some(_), CarpMembers::Parents(_)) => {
                bail!(
                    "--members selects cluster hosts; service {:?} routes to parents",
                    service.name
                )
            }
            (None, _) => None,
        };
        // Every configured member stays in the array: hosts outside
        // `--members` are marked down below, as the proxy marks hosts
        // outside the view, so multipliers and failover orders match it.
        let members = service.carp_members(config, None);
        down = members
            .iter()
            .enumerate()
            .filter(|(_, m)| matches!((set, m.host), (Some(set), Some(h)) if !set.contains(h)))
            .map(|(i, _)| i)
            .collect();
        let specs = members
            .iter()
            .map(|m| MemberSpec::new(m.name.clone(), m.load_factor))
            .collect();
        let proxies = members
            .iter()
            .map(|m| match (m.address, m.host) {
                (Some(a), Some(_)) => (a.ip().to_string(), port.unwrap_or(a.port())),
                (Some(a), None) => (a.ip().to_string(), a.port()),
                (None, _) => (m.name.clone(), port.unwrap_or(service.port)),
            })
            .collect();
        (specs, proxies)
    };
    if specs.is_empty() {
        bail!("the array has no members");
    }
    let mut router = Router::new(Carp::new(hash, key, &specs)?);
    for i in down {
        router.carp.set_up(i, false);
    }
    let (exception_proxy, array_name, list_ttl_s) = match (config, service, carp) {
        (Some(c), Some(s), Some(carp)) => {
            router.exceptions = carp.exceptions.clone();
            router.direct = carp.direct.clone();
            let p = port.unwrap_or(s.port);
            (
                Some(SocketAddr::new(c.primary_vip().into(), p).to_string()),
                carp.array_name.clone(),
                carp.list_ttl_s,
            )
        }
        _ => (None, "shoal".to_string(), shoal_config::DEFAULT_LIST_TTL_S),
    };
    Ok(Array {
        router,
        proxies,
        exception_proxy,
        array_name,
        list_ttl_s,
    })
}

/// The URLs from the arguments, else one per line from `input` (blank lines
/// skipped).
pub fn urls(args: &[String], input: impl BufRead) -> Result<Vec<String>> {
    if !args.is_empty() {
        return Ok(args.to_vec());
    }
    let mut out = Vec::new();
    for line in input.lines() {
        let line = line.context("reading URLs from standard input")?;
        let line = line.trim();
        if !line.is_empty() {
            out.push(line.to_string());
        }
    }
    Ok(out)
}

/// One URL's answer: the owner and the full order (member names), or
/// `DIRECT` / `EXCEPTION` for the host patterns.
fn decide(array: &Array, url: &str) -> Result<(String, Vec<String>)> {
    let target =
        RequestTarget::parse_absolute(url.as_bytes()).map_err(|e| anyhow!("{url:?}: {e}"))?;
    let names = array.router.carp.members();
    Ok(match array.router.decide(&target) {
        Decision::Direct => ("DIRECT".into(), vec!["DIRECT".into()]),
        Decision::Exception => ("EXCEPTION".into(), vec!["EXCEPTION".into()]),
        Decision::Route(order) => {
            let order: Vec<String> = order.map(|i| names[i].name.clone()).collect();
            (order.first().cloned().unwrap_or_default(), order)
        }
    })
}

/// One `--json` element, fields in contract order.
#[derive(serde::Serialize)]
struct RouteRow {
    url: String,
    owner: String,
    order: Vec<String>,
}

/// `shoal carp route`: `URL<TAB>OWNER` lines (`--order`: every member in
/// failover order, space-separated), or with `json` one JSON array of
/// `{"url", "owner", "order"}`. Hosts matching `direct` answer `DIRECT`,
/// `exceptions` answer `EXCEPTION`.
pub fn route(array: &Array, urls: &[String], order: bool, json: bool) -> Result<String> {
    let mut out = String::new();
    let mut rows = Vec::new();
    for url in urls {
        let (owner, full) = decide(array, url)?;
        if json {
            rows.push(RouteRow {
                url: url.clone(),
                owner,
                order: full,
            });
        } else if order {
            let _ = writeln!(out, "{url}\t{}", full.join(" "));
        } else {
            let _ = writeln!(out, "{url}\t{owner}");
        }
    }
    if json {
        out = serde_json::to_string_pretty(&rows)? + "\n";
    }
    Ok(out)
}

/// `shoal carp table`: the membership table as served (epoch 0, every
/// member UP, state time 0, cache size 0).
pub fn table(array: &Array) -> String {
    table_at(array, 0, &[])
}

/// The membership table of `array` (its router's up flags) at view
/// `epoch`, `state_times_s[i]` seconds since member `i` last changed state
/// (0 for members past the end); what a member serves at
/// `/array.dll?Get.Info.v1`.
pub fn table_at(array: &Array, epoch: u64, state_times_s: &[u32]) -> String {
    let rows: Vec<TableMember> = array
        .proxies
        .iter()
        .enumerate()
        .map(|(i, (host, port))| TableMember {
            address: host.clone(),
            port: *port,
            state_time_s: state_times_s.get(i).copied().unwrap_or(0),
            cache_mb: 0,
        })
        .collect();
    membership_table(
        &ArrayInfo {
            array_name: &array.array_name,
            list_ttl_s: array.list_ttl_s,
            epoch,
            agent: AGENT,
        },
        &array.router.carp,
        &rows,
    )
}

/// The agent field of the membership table (§2.2.5).
pub const AGENT: &str = concat!("shoal/", env!("CARGO_PKG_VERSION"));

/// `shoal carp pac`: the PAC script as served.
pub fn pac(array: &Array) -> String {
    let proxies = array
        .proxies
        .iter()
        .map(|(h, p)| {
            if h.contains(':') {
                format!("[{h}]:{p}")
            } else {
                format!("{h}:{p}")
            }
        })
        .collect();
    let header = format!(
        "shoal CARP routing script (draft-vinod-carp-v1-03 section 4)\nArrayName: {}, hash {}, key {}",
        array.array_name,
        array.router.carp.mode().name(),
        array.router.carp.key().names().collect::<Vec<_>>().join(",")
    );
    pac_script(
        &array.router,
        &PacTargets {
            proxies,
            exception_proxy: array.exception_proxy.clone(),
        },
        &header,
    )
}
