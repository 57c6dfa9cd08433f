//! The command line: every command and flag, also the source of the man
//! pages (`switchyard man`) and the shell completions.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use switchyard::config::DEFAULT_PATH;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "A layer-4 (TCP and UDP) load balancer"
)]
pub struct Cli {
    /// Log line format on stderr.
    #[arg(long, value_enum, global = true, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon.
    Run {
        #[arg(long, short, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Validate a configuration file and exit (0: valid, 1: problems printed).
    Check {
        #[arg(long, short, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Start three echo backends and the daemon in front of them.
    Demo {
        /// Port for the TCP and UDP listeners.
        #[arg(long, default_value_t = 7000)]
        port: u16,
        /// Port for the admin endpoint (status page, metrics).
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
    },
    /// Talk to the running daemon through its admin API.
    ///
    /// Exit codes: 0 done; 1 the daemon refused (the message says why); 2 a
    /// wrong command line or config file; 3 daemon not reachable; 4 a token
    /// is needed or wrong.
    Ctl {
        /// The admin endpoint, host:port (default: [admin] bind of --config,
        /// else 127.0.0.1:9901). Like every ctl flag, it may come before or
        /// after the action.
        #[arg(long, global = true)]
        admin: Option<String>,
        /// A file holding the admin token (default: [admin] token_file of --config).
        #[arg(long, global = true)]
        token_file: Option<PathBuf>,
        /// The daemon's configuration file, for the two defaults above.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: CtlAction,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (switchyard.1 and one per command) into a directory.
    Man {
        /// Where to write them.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Print a switchyard configuration equivalent to the stream (nginx) or
    /// `mode tcp` (HAProxy) parts of another proxy's configuration; what has
    /// no equivalent is listed at the end, each with its file and line.
    Import {
        /// Whose configuration: nginx or haproxy.
        #[arg(value_parser = ["nginx", "haproxy"])]
        kind: String,
        /// The file (nginx.conf, haproxy.cfg).
        file: PathBuf,
    },
    /// Print the JSON Schema of the configuration file (for editors: taplo,
    /// Even Better TOML).
    Schema,
}

#[derive(Subcommand)]
pub enum CtlAction {
    /// A table of pools and backends: state, weight, open connections, rates.
    Status,
    /// The same table, refreshed every second (Ctrl-C to leave).
    Top {
        /// Stop after this many refreshes.
        #[arg(long)]
        count: Option<u32>,
    },
    /// Stop sending new connections to a backend; open ones run on.
    Drain {
        /// The pool.
        pool: String,
        /// The backend: its name or ip:port.
        backend: String,
    },
    /// Send new connections to a drained backend again.
    Enable {
        /// The pool.
        pool: String,
        /// The backend: its name or ip:port.
        backend: String,
    },
    /// Set a backend's weight (until the next reload; on an etcd pool, in etcd).
    Weight {
        /// The pool.
        pool: String,
        /// The backend: its name or ip:port.
        backend: String,
        /// 1 to 256.
        weight: u32,
    },
    /// Re-read the configuration file, as SIGHUP does.
    Reload,
}
