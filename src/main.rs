//! The `switchyard` command: arguments, logging and signals; the work is in the library.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use tokio::signal::unix::{signal, SignalKind};

use switchyard::config::Config;
use switchyard::{demo, notify, Server};

mod cli;
use cli::{Cli, Command, CtlAction, LogFormat};

fn main() -> ExitCode {
    // Before anything else: the binary on disk may be replaced later, and a
    // binary upgrade starts whatever is at this path then.
    switchyard::server::upgrade::remember_origin();
    let cli = Cli::parse();
    // Flushes buffered log lines when main returns.
    let _log_guard = init_logging(cli.log_format);
    if matches!(cli.command, Command::Run { .. } | Command::Demo { .. }) {
        // Before anything reads the descriptor budget.
        match switchyard::fds::raise_soft_limit() {
            Ok(limit) => tracing::debug!(limit, "descriptor limit"),
            Err(e) => tracing::warn!(error = %e, "cannot raise the descriptor limit"),
        }
    }
    let result = match cli.command {
        Command::Check { config } => return check(&config),
        Command::Run { config } => Config::load(&config)
            .map_err(anyhow::Error::from)
            .and_then(|c| runtime(c.workers, c.cpu_affinity)?.block_on(serve(c))),
        Command::Demo { port, admin_port } => {
            runtime(None, false).and_then(|rt| rt.block_on(run_demo(port, admin_port)))
        }
        Command::Ctl {
            admin,
            token_file,
            config,
            action,
        } => {
            return ctl(
                admin.as_deref(),
                token_file.as_deref(),
                config.as_deref(),
                action,
            )
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "switchyard",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        Command::Man { dir } => write_man(&dir),
        Command::Import { kind, file } => {
            return match switchyard::import::import(&kind, &file) {
                Ok(toml) => {
                    print!("{toml}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("switchyard import: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Schema => {
            println!("{}", switchyard::config::schema());
            return ExitCode::SUCCESS;
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Log lines go to stderr from a writer thread through a bounded queue:
/// a slow reader (a stalled journald, a full pipe) costs dropped lines, never
/// stalled connections.
fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    // 64k lines is seconds of access log at high connection rates.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(65_536)
        .lossy(true)
        .finish(std::io::stderr());
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    // Access lines go to stderr, to syslog or nowhere, as `[log]` says.
    let stderr = tracing_subscriber::filter::filter_fn(switchyard::log::to_stderr);
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let fmt = match format {
        LogFormat::Text => fmt
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(stderr)
            .boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).with_filter(stderr).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(switchyard::log::SyslogLayer)
        .init();
    guard
}

/// The data plane's workers (`workers`, default one per core, pinned with
/// `cpu_affinity`), then the control plane's runtime.
fn runtime(workers: Option<usize>, pin: bool) -> anyhow::Result<tokio::runtime::Runtime> {
    let n = workers.unwrap_or_else(switchyard::workers::default_count);
    switchyard::workers::start(n, pin).context("cannot start the worker threads")?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            for w in &config.warnings {
                println!("warning: {w}");
            }
            println!("{}", config.summary());
            print!("{}", config.outline());
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{e}");
            println!("{}: {} problem(s) found", path.display(), e.problems.len());
            ExitCode::FAILURE
        }
    }
}

/// Serves until SIGTERM or SIGINT; SIGHUP reloads; SIGUSR2 upgrades the
/// binary (a new process takes over the listening sockets, this one drains).
/// A second stop signal during the drain ends every connection at once.
async fn serve(config: Config) -> anyhow::Result<()> {
    let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    let mut usr2 = signal(SignalKind::user_defined2()).context("cannot listen for SIGUSR2")?;
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let summary = config.summary();
    let server = Server::start(config).await?;
    tracing::info!("{summary}");
    notify::notify("READY=1");
    // When started by an upgrade: the old process may stop accepting now.
    switchyard::server::upgrade::tell_ready(&server);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        pid = std::process::id(),
        "switchyard is ready"
    );
    let replaced = loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                // The outcome is logged and counted by the server itself.
                let _ = server.reload_file().await;
            }
            _ = usr2.recv() => {
                tracing::info!("SIGUSR2: upgrading the binary");
                match server.upgrade().await {
                    Ok(pid) => {
                        // systemd follows the new process from here on.
                        notify::notify(&format!("MAINPID={pid}\nREADY=1"));
                        tracing::info!(successor = pid, "upgrade: the new process serves; this one stops accepting and drains its connections");
                        break true;
                    }
                    Err(e) => tracing::error!(error = %e, "upgrade failed; this process serves on"),
                }
            }
            _ = term.recv() => break false,
            _ = int.recv() => break false,
        }
    };
    if !replaced {
        notify::notify("STOPPING=1");
    }
    tokio::select! {
        _ = server.shutdown() => tracing::info!("stopped"),
        _ = term.recv() => { server.abort(); tracing::warn!("second signal: stopped at once"); }
        _ = int.recv() => { server.abort(); tracing::warn!("second signal: stopped at once"); }
    }
    Ok(())
}

async fn run_demo(port: u16, admin_port: u16) -> anyhow::Result<()> {
    let mut backends = Vec::new();
    for name in ["alpha", "beta", "gamma"] {
        backends.push(
            demo::echo_backend(name)
                .await
                .context("cannot start a demo backend")?,
        );
    }
    let port = if port == 0 { demo::free_port()? } else { port };
    let config = demo::config(port, admin_port, &backends)?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let server = Server::start(config).await?;
    let tcp = server
        .local_addr("demo-tcp")
        .context("demo listener missing")?;
    let admin = server.admin_addr().await.context("demo admin missing")?;
    println!("switchyard demo: backends alpha (weight 1), beta (2), gamma (3) at {backends:?}");
    println!("  TCP:    nc {} {}        then type lines; each connection goes to the next backend in the weighted rotation", tcp.ip(), tcp.port());
    println!(
        "  UDP:    nc -u {} {}     each client address sticks to one backend",
        tcp.ip(),
        tcp.port()
    );
    println!(
        "  no nc?  bash -c 'exec 3<>/dev/tcp/{}/{}; echo hello >&3; head -n1 <&3'    (nc is in Debian's netcat-openbsd)",
        tcp.ip(),
        tcp.port()
    );
    println!("  status: http://{admin}/    metrics: http://{admin}/metrics");
    println!("  Ctrl-C stops.");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    server
        .shutdown_within(std::time::Duration::from_secs(1))
        .await;
    Ok(())
}

/// `switchyard ctl`: one action against the running daemon.
fn ctl(
    admin: Option<&str>,
    token_file: Option<&Path>,
    config: Option<&Path>,
    action: CtlAction,
) -> ExitCode {
    use switchyard::ctl::AdminTarget;
    let done = AdminTarget::resolve(admin, token_file, config).and_then(|t| match action {
        CtlAction::Status => t.status(),
        CtlAction::Top { count } => t.top(count, &mut std::io::stdout()).map(|()| String::new()),
        CtlAction::Drain { pool, backend } => t.drain(&pool, &backend, true),
        CtlAction::Enable { pool, backend } => t.drain(&pool, &backend, false),
        CtlAction::Weight {
            pool,
            backend,
            weight,
        } => t.weight(&pool, &backend, weight),
        CtlAction::Reload => t.reload(),
    });
    let done = done.and_then(|text| {
        let newline = if text.is_empty() || text.ends_with('\n') {
            ""
        } else {
            "\n"
        };
        switchyard::ctl::emit(&mut std::io::stdout(), &format!("{text}{newline}"))
    });
    match done {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard ctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The man pages: `switchyard.1` and `switchyard-COMMAND.1` for each command.
fn write_man(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot make {}", dir.display()))?;
    let cmd = Cli::command();
    let mut pages = vec![("switchyard".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("switchyard-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name)));
    }
    for (name, page) in pages {
        let mut out = Vec::new();
        clap_mangen::Man::new(page).render(&mut out)?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
