//! The `shoal` command.

#![deny(unsafe_code)]
// The doc comments here are the CLI's help text, written in its notation
// (`VIP[:PORT]`), not rustdoc links.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use shoal_engine::logging::LogFormat;
use shoal_engine::{runtime, sys, tools};

/// The process allocator. The proxy allocates and frees a few dozen small
/// objects per request (request and response heads, buffers, futures), on
/// one thread per core; glibc's allocator spent about 4% of a proxy core in
/// them, a good part in consolidating its fast bins, where mimalloc's
/// per-thread free lists spend under half as much.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// shoal: a group of Linux hosts serving one virtual IP, no load balancer.
#[derive(Parser, Debug)]
#[command(name = "shoal", version, about)]
struct Cli {
    /// Log lines as text or JSON (levels from RUST_LOG; no timestamps of
    /// shoal's own under systemd, whose journal stamps every line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Write a fresh random cluster key to FILE (mode 0600).
    Keygen {
        /// The key file to create.
        file: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Print the unicast, multicast and IGMP cluster MACs of a primary VIP.
    Ip2mac {
        /// The primary VIP (IPv4).
        vip: Ipv4Addr,
    },
    /// Print which host keeps a new flow, and its bucket.
    Owner {
        /// Cluster configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Live members (default: every configured host), e.g. 1,2,3.
        #[arg(long)]
        members: Option<String>,
        /// tcp or udp.
        proto: String,
        /// CLIENT_IP[:PORT] ([v6]:PORT for IPv6). With several clients,
        /// each line starts with the client as given.
        #[arg(required = true, num_args = 1..)]
        client: Vec<String>,
        /// VIP[:PORT].
        vip: String,
    },
    /// Print each rule's bucket shares per host against the configured weights.
    Map {
        /// Cluster configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Live members (default: every configured host).
        #[arg(long)]
        members: Option<String>,
    },
    /// Replay a pcap or pcapng through one simulated dataplane per member.
    Classify {
        /// Cluster configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Live members, e.g. 1,2,3.
        #[arg(long)]
        members: String,
        /// The capture (pcap or pcapng, Ethernet).
        #[arg(long)]
        pcap: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Rewrite every IP destination to the cluster's VIP of its family.
        #[arg(long)]
        rewrite_vip: bool,
    },
    /// CARP array tools: each URL's owner, the membership table, the PAC script.
    Carp {
        #[command(subcommand)]
        command: CarpCommand,
    },
    /// Run the engine on this host.
    Run(runtime::RunArgs),
    /// Host state and cluster membership (NLB `query`).
    Query(AdminOpts),
    /// A live view of the engine: members, epoch, kept frames per second
    /// and share, drops by reason, services (refreshes every second; q quits).
    Top(TopOpts),
    /// The rules covering VIP[:PORT], PORT or all (NLB `queryport`).
    Queryport(ScopedOpts),
    /// Start cluster operations on this host.
    Start(AdminOpts),
    /// Stop cluster operations on this host (connections are dropped).
    Stop(AdminOpts),
    /// Drain every rule, then stop.
    Drainstop(AdminOpts),
    /// Stop and ignore control verbs until `resume`.
    Suspend(AdminOpts),
    /// Accept control verbs again.
    Resume(AdminOpts),
    /// Enable rules on this host: VIP[:PORT], PORT or all.
    Enable(ScopedOpts),
    /// Disable rules on this host (their traffic, tracked or not, moves away).
    Disable(ScopedOpts),
    /// Drain rules on this host: no new connections, existing ones served.
    Drain(ScopedOpts),
    /// Configuration, state and peers.
    Display(AdminOpts),
    /// Timing parameters in force.
    Params(AdminOpts),
    /// Re-read the configuration file and converge on it.
    Reload(AdminOpts),
    /// Undo what a run that died left on this host (sysctls, TAP, nftables
    /// table, XDP program, state record, admin socket); starts nothing.
    Cleanup {
        /// Cluster configuration file.
        #[arg(long, default_value = "/etc/shoal/shoal.toml")]
        config: PathBuf,
        /// Which `[[host]]` ran here (needed when the file describes several).
        #[arg(long)]
        host: Option<u8>,
        /// The dead run's admin socket (default `/run/shoal/host<ID>.sock`).
        #[arg(long)]
        admin_socket: Option<PathBuf>,
    },
    /// Write a man page per command and subcommand into DIR (shoal.1,
    /// shoal-run.1, shoal-config-check.1, ...).
    Man {
        /// The directory (created if missing).
        dir: PathBuf,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Benchmarks: pipeline, wire, scaling, disruption, failover, all (see README).
    ///
    /// Runs the `shoal-bench` binary beside this one with the arguments
    /// given (`shoal bench --help` lists them).
    #[command(disable_help_flag = true)]
    Bench {
        /// What `shoal-bench` takes, for example `pipeline --smoke`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

/// Shells `shoal completions` writes for.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

/// Writes `cmd`'s man page into `dir` as `NAME.1`, then its subcommands'
/// as `NAME-SUB.1`, recursively; returns the pages' paths.
fn man_pages(cmd: &clap::Command, dir: &std::path::Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let name = cmd.get_name().to_string();
    let path = dir.join(format!("{name}.1"));
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let full = format!("{name}-{}", sub.get_name());
        let sub = sub
            .clone()
            .name(full.clone())
            .bin_name(full.replace('-', " "))
            .version(cmd.get_version().unwrap_or_default().to_string());
        written.extend(man_pages(&sub, dir)?);
    }
    Ok(written)
}

/// How to reach a running shoal.
#[derive(clap::Args, Debug)]
struct AdminOpts {
    /// Print the engine's JSON answer.
    #[arg(long)]
    json: bool,
    /// Which host's engine (its admin socket is /run/shoal/host<ID>.sock).
    #[arg(long)]
    host: Option<u8>,
    /// The admin socket, if not the default.
    #[arg(long)]
    socket: Option<PathBuf>,
}

/// Which engine `shoal top` shows.
#[derive(clap::Args, Debug)]
struct TopOpts {
    /// Which host's engine (its admin socket is /run/shoal/host<ID>.sock).
    #[arg(long)]
    host: Option<u8>,
    /// The admin socket, if not the default.
    #[arg(long)]
    socket: Option<PathBuf>,
}

/// The admin socket `--socket` or `--host` names, or the only one running.
fn admin_socket(verb: &str, socket: Option<&PathBuf>, host: Option<u8>) -> Option<PathBuf> {
    match (socket, host) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(h)) => Some(shoal_engine::control::default_socket(h)),
        (None, None) => {
            let only = only_socket();
            if only.is_none() {
                eprintln!("shoal {verb}: no running shoal found in /run/shoal (or several: choose with --host ID)");
            }
            only
        }
    }
}

/// An admin verb that acts on rules.
#[derive(clap::Args, Debug)]
struct ScopedOpts {
    /// VIP[:PORT], [V6]:PORT, PORT or all.
    scope: String,
    #[command(flatten)]
    opts: AdminOpts,
}

/// Exit code when the engine answered with a return code other than
/// WLBS_OK or WLBS_ALREADY.
const EXIT_REFUSED: u8 = 3;

fn admin(verb: &str, scope: Option<&str>, opts: &AdminOpts) -> Result<ExitCode> {
    let mut words = vec![verb];
    if let Some(s) = scope {
        words.push(s);
    }
    let req = match shoal_controlplane::Request::from_args(&words) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shoal {verb}: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let Some(socket) = admin_socket(verb, opts.socket.as_ref(), opts.host) else {
        return Ok(ExitCode::from(1));
    };
    let resp = shoal_engine::control::call(&socket, &req)
        .with_context(|| format!("talking to shoal at {}", socket.display()))?;
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&resp)?);
    } else {
        println!("{} ({}): {}", resp.status, resp.code.code(), resp.message);
        if !matches!(resp.body, shoal_controlplane::admin::Body::None) {
            println!("{}", serde_json::to_string_pretty(&resp.body)?);
        }
    }
    Ok(if shoal_controlplane::admin::succeeded(resp.code) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_REFUSED)
    })
}

/// Hands `shoal bench ARGS` to `shoal-bench ARGS`, the benchmarks' own
/// binary in the same directory as this executable (symlinks resolved),
/// so that this binary links no benchmark or plotting code. The bench
/// replaces this process (`exec`): its exit status, and the signals sent to
/// it (Ctrl-C), are the bench's own. Returns only when it cannot start.
fn bench(args: Vec<std::ffi::OsString>) -> Result<ExitCode> {
    use std::os::unix::process::CommandExt;

    let exe = std::env::current_exe().context("locating the shoal binary")?;
    let bench = exe.with_file_name("shoal-bench");
    if !bench.is_file() {
        eprintln!(
            "shoal bench needs shoal-bench beside {}: build it with \
             `cargo build --release -p shoal-perf` (or install it in {})",
            exe.display(),
            bench.parent().unwrap_or(&bench).display()
        );
        return Ok(ExitCode::from(1));
    }
    let err = std::process::Command::new(&bench)
        .arg0("shoal bench")
        .args(args)
        .exec();
    Err(err).with_context(|| format!("running {}", bench.display()))
}

/// The admin socket when exactly one shoal runs on this machine.
fn only_socket() -> Option<PathBuf> {
    let entries: Vec<PathBuf> = std::fs::read_dir("/run/shoal")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .collect();
    match entries.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

#[derive(Subcommand, Debug)]
enum CarpCommand {
    /// Print the owner of each URL (arguments, else one per line on stdin): URL<TAB>OWNER.
    Route {
        #[command(flatten)]
        array: tools::carp::ArrayArgs,
        /// Print every member in failover order instead of the owner.
        #[arg(long)]
        order: bool,
        /// Print one JSON array of {"url", "owner", "order"}.
        #[arg(long)]
        json: bool,
        /// URLs (default: read from standard input).
        urls: Vec<String>,
    },
    /// Print the membership table (draft section 2) as /array.dll?Get.Info.v1 serves it.
    Table {
        #[command(flatten)]
        array: tools::carp::ArrayArgs,
        /// The members' port (default: the service port, or 3128 with --member).
        #[arg(long)]
        port: Option<u16>,
    },
    /// Print the PAC routing script as /array.dll?Get.Routing.Script serves it.
    Pac {
        #[command(flatten)]
        array: tools::carp::ArrayArgs,
        /// The members' port (default: the service port, or 3128 with --member).
        #[arg(long)]
        port: Option<u16>,
    },
}

fn carp(command: CarpCommand) -> Result<ExitCode> {
    let (args, port) = match &command {
        CarpCommand::Route { array, .. } => (array, None),
        CarpCommand::Table { array, port } | CarpCommand::Pac { array, port } => (array, *port),
    };
    let config = match &args.config {
        Some(path) => match load(path) {
            Ok(c) => Some(c),
            Err(code) => return Ok(code),
        },
        None => None,
    };
    let array = tools::carp::array(args, config.as_ref(), port)?;
    match command {
        CarpCommand::Route {
            order, json, urls, ..
        } => {
            let urls = tools::carp::urls(&urls, std::io::stdin().lock())?;
            print!("{}", tools::carp::route(&array, &urls, order, json)?);
        }
        CarpCommand::Table { .. } => print!("{}", tools::carp::table(&array)),
        CarpCommand::Pac { .. } => print!("{}", tools::carp::pac(&array)),
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate a configuration: print it normalized, or the errors (exit
    /// code 2); warn about a key file `shoal run` would refuse.
    Check {
        /// The file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`shoal query | head`) like other Unix
    // tools, instead of panicking in println!; no other thread exists yet.
    sys::signal::default_sigpipe();
    let cli = Cli::parse();
    shoal_engine::logging::init(cli.log_format);
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shoal: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn load(path: &std::path::Path) -> Result<shoal_config::Config, ExitCode> {
    shoal_config::load(path).map_err(|errors| {
        eprint!("{errors}");
        if !errors.to_string().ends_with('\n') {
            eprintln!();
        }
        ExitCode::from(2)
    })
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let config = match load(&file) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            print!("{}", config.to_normalized_toml());
            for w in shoal_engine::keyfile::warnings(&config) {
                eprintln!("warning: {w}");
            }
        }
        Command::Keygen { file, force } => {
            shoal_engine::keyfile::keygen(&file, force)?;
            eprintln!("wrote a fresh cluster key to {}", file.display());
        }
        Command::Ip2mac { vip } => print!("{}", tools::ip2mac(vip)),
        Command::Owner {
            config,
            members,
            proto,
            client,
            vip,
        } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let members = tools::members(&config, members.as_deref())?;
            let proto = tools::protocol(&proto)?;
            let key = shoal_engine::keyfile::for_tools(&config)?;
            let vip = tools::endpoint(&vip)?;
            if let [one] = client.as_slice() {
                let one = tools::endpoint(one)?;
                print!("{}", tools::owner(&config, &key, members, proto, one, vip)?);
            } else {
                let clients = client
                    .iter()
                    .map(|c| Ok((c.as_str(), tools::endpoint(c)?)))
                    .collect::<Result<Vec<_>>>()?;
                print!(
                    "{}",
                    tools::owners(&config, &key, members, proto, &clients, vip)?
                );
            }
        }
        Command::Map { config, members } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let members = tools::members(&config, members.as_deref())?;
            print!("{}", tools::map(&config, members)?);
        }
        Command::Classify {
            config,
            members,
            pcap,
            json,
            rewrite_vip,
        } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let members = tools::members(&config, Some(&members))?;
            let capture =
                std::fs::read(&pcap).with_context(|| format!("reading {}", pcap.display()))?;
            let key = shoal_engine::keyfile::for_tools(&config)?;
            let report = tools::classify(&config, &key, members, &capture, rewrite_vip)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", tools::classify_text(&report));
            }
        }
        Command::Carp { command } => return carp(command),
        Command::Run(args) => {
            let config = match load(&args.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            runtime::run(config, args)?;
        }
        Command::Bench { args } => return bench(args),
        Command::Cleanup {
            config,
            host,
            admin_socket,
        } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let host = config
                .select_host(host)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let socket = admin_socket
                .unwrap_or_else(|| shoal_engine::control::default_socket(host.id.get()));
            let cleaned = shoal_engine::wiring::clean_leftovers(&config, host, &socket)?;
            println!("host {} on {}: {cleaned}", host.id, host.interface);
        }
        Command::Man { dir } => {
            use clap::CommandFactory;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for page in man_pages(&Cli::command(), &dir)? {
                println!("{}", page.display());
            }
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let shell = match shell {
                CompletionShell::Bash => clap_complete::Shell::Bash,
                CompletionShell::Zsh => clap_complete::Shell::Zsh,
                CompletionShell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(shell, &mut Cli::command(), "shoal", &mut std::io::stdout());
        }
        Command::Query(o) => return admin("query", None, &o),
        Command::Top(o) => {
            let Some(socket) = admin_socket("top", o.socket.as_ref(), o.host) else {
                return Ok(ExitCode::from(1));
            };
            shoal_engine::top::run(&socket)?;
        }
        Command::Queryport(o) => return admin("queryport", Some(&o.scope), &o.opts),
        Command::Start(o) => return admin("start", None, &o),
        Command::Stop(o) => return admin("stop", None, &o),
        Command::Drainstop(o) => return admin("drainstop", None, &o),
        Command::Suspend(o) => return admin("suspend", None, &o),
        Command::Resume(o) => return admin("resume", None, &o),
        Command::Enable(o) => return admin("enable", Some(&o.scope), &o.opts),
        Command::Disable(o) => return admin("disable", Some(&o.scope), &o.opts),
        Command::Drain(o) => return admin("drain", Some(&o.scope), &o.opts),
        Command::Display(o) => return admin("display", None, &o),
        Command::Params(o) => return admin("params", None, &o),
        Command::Reload(o) => return admin("reload", None, &o),
    }
    Ok(ExitCode::SUCCESS)
}
