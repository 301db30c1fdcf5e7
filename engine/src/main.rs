//! The `shoal` command.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use shoal_engine::{runtime, tools};

/// shoal: a group of Linux hosts serving one virtual IP, no load balancer.
#[derive(Parser, Debug)]
#[command(name = "shoal", version, about)]
struct Cli {
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
        /// CLIENT_IP[:PORT] ([v6]:PORT for IPv6).
        client: String,
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
    /// Run the engine on this host.
    Run(runtime::RunArgs),
    /// Benchmarks: pipeline, wire, scaling, disruption (see README).
    Bench(shoal_perf::BenchArgs),
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate a configuration: print it normalized, or the errors (exit code 2).
    Check {
        /// The file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
            print!(
                "{}",
                tools::owner(
                    &config,
                    members,
                    proto,
                    tools::endpoint(&client)?,
                    tools::endpoint(&vip)?
                )?
            );
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
            let report = tools::classify(&config, members, &capture, rewrite_vip)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", tools::classify_text(&report));
            }
        }
        Command::Run(args) => {
            let config = match load(&args.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            runtime::run(config, args)?;
        }
        Command::Bench(args) => shoal_perf::run(args)?,
    }
    Ok(ExitCode::SUCCESS)
}
