use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use certrotor::telemetry::{self, LogFormat};

/// Keeps SaaS tenant certificates valid, installed and rotated.
#[derive(Parser, Debug)]
#[command(name = "certrotor", version, about)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "CERTROTOR_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(flatten)]
    kube: certrotor::cli::KubeArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator (kubeconfig or in-cluster config, as kube's Client::try_default).
    Run(RunArgs),
    /// Print every CRD as multi-document YAML, or check rendered CRDs (helm template, kubectl
    /// kustomize) for validation rules a real API server refuses.
    Crd {
        /// Check the CustomResourceDefinitions in these multi-document YAML files (`-` for
        /// stdin) instead of printing: every rule compiles, stays within the cost budget and
        /// reads only bounded arrays, strings and maps. Exits 1 when one is refused.
        #[arg(long, value_name = "FILE", num_args = 1..)]
        check: Vec<std::path::PathBuf>,
    },
    /// The whole story with no cluster and no tenant: stand-in API, simulators, operator, examples.
    Demo {
        /// Stay up afterwards and print a kubeconfig path for kubectl.
        #[arg(long, env = "CERTROTOR_DEMO_KEEP")]
        keep: bool,
        /// Give up (exit non-zero) after this long.
        #[arg(long, env = "CERTROTOR_DEMO_TIMEOUT", default_value = "120s", value_parser = duration)]
        timeout: Duration,
    },
    /// Run a tenant simulator on its own.
    #[command(subcommand)]
    Sim(SimCommand),
    #[command(flatten)]
    Day2(certrotor::cli::Day2),
    /// Print a shell completion script: `source <(certrotor completion bash)`.
    Completion { shell: clap_complete::Shell },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Reconciles running at once per kind.
    #[arg(long, env = "CERTROTOR_CONCURRENCY", default_value_t = 8)]
    concurrency: u16,
    /// Shortest wait between `live` polls.
    #[arg(long, env = "CERTROTOR_LIVE_POLL_MIN", default_value = "2s", value_parser = duration)]
    live_poll_min: Duration,
    /// Longest wait between `live` polls.
    #[arg(long, env = "CERTROTOR_LIVE_POLL_MAX", default_value = "20s", value_parser = duration)]
    live_poll_max: Duration,
    /// How long an activated certificate may take to go live before the resource is Stalled
    /// (LiveTimeout); AIC usually takes about a minute.
    #[arg(long, env = "CERTROTOR_LIVE_TIMEOUT", default_value = "10m", value_parser = duration)]
    live_timeout: Duration,
    /// Deleting a TenantCertificate whose tenant credentials are gone: how long to wait for
    /// them (or use a cached token) before letting it go, with a Warning naming what is left.
    #[arg(long, env = "CERTROTOR_CLEANUP_TIMEOUT", default_value = "5m", value_parser = duration)]
    cleanup_timeout: Duration,
    /// Sign TenantCertificates with `issuerRef` through cert-manager's CertificateRequests
    /// (needs their RBAC; the chart's certManager.enabled).
    #[arg(
        long,
        env = "CERTROTOR_CERT_MANAGER",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    cert_manager: bool,
    /// How often a settled certificate is checked against the tenant.
    #[arg(long, env = "CERTROTOR_RESYNC", default_value = "1h", value_parser = duration)]
    resync: Duration,
    /// Address of the admin server: /metrics, /healthz, /readyz.
    #[arg(long, env = "CERTROTOR_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Run the controllers only while holding the Lease (for more than one replica).
    #[arg(
        long,
        env = "CERTROTOR_LEADER_ELECTION",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "CERTROTOR_LEASE_NAME", default_value = "certrotor-leader")]
    lease_name: String,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// How long the Lease stays valid without renewal: a standby takes over at most this long
    /// (plus up to 1s) after the leader dies (whole seconds, at least 2s).
    #[arg(long, env = "CERTROTOR_LEASE_DURATION", default_value = "15s", value_parser = duration)]
    lease_duration: Duration,
    /// Watch only these namespaces (comma-separated); every namespace when empty.
    #[arg(long, env = "CERTROTOR_NAMESPACES", default_value = "")]
    namespaces: String,
    /// Reconcile only TenantCertificates and DeviceIdCredentials whose labels match this
    /// selector (e.g. `certrotor.io/shard=a`). Several deployments, each with its own Lease
    /// (`--lease-name`) and a disjoint selector, split one cluster's resources between them.
    #[arg(long, env = "CERTROTOR_SELECTOR")]
    selector: Option<String>,
    /// Requests per second to one AIC tenant at most, for all its certificates together (a
    /// token bucket holding a second's worth, beside the 4-in-flight limit); 0 turns it off.
    /// A 429's Retry-After holds every call to that tenant.
    #[arg(long, env = "CERTROTOR_TENANT_RATE_LIMIT", default_value_t = certrotor::controller::DEFAULT_TENANT_RATE_LIMIT)]
    tenant_rate_limit: f64,
}

#[derive(Subcommand, Debug)]
enum SimCommand {
    /// PingOne Advanced Identity Cloud tenant simulator.
    Aic {
        #[arg(long, env = "CERTROTOR_SIM_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Time from `active` flipping to `live` following it.
        #[arg(long, env = "CERTROTOR_SIM_LIVE_DELAY", default_value = "60s", value_parser = duration)]
        live_delay: Duration,
        /// Write a ready-to-apply credentials Secret manifest here (else print it).
        #[arg(long, env = "CERTROTOR_SIM_CREDENTIALS_OUT")]
        credentials_out: Option<std::path::PathBuf>,
        /// Requests per second the tenant accepts; beyond it, 429 with Retry-After.
        #[arg(long, env = "CERTROTOR_SIM_RATE_LIMIT")]
        rate_limit: Option<f64>,
    },
    /// Prisma Access CIE Third-Party Device-ID simulator (HTTPS, client certificates required).
    Cie {
        #[arg(long, env = "CERTROTOR_SIM_LISTEN", default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// Write the onboarding bundle (tls.crt, tls.key, apiKey, ca.crt, a Secret manifest) here.
        #[arg(long, env = "CERTROTOR_SIM_ONBOARDING_OUT")]
        onboarding_out: Option<std::path::PathBuf>,
    },
}

/// `certrotor crd --check`: prints one line per CRD, and each refusal; false when any is refused.
fn check_crd_files(files: &[std::path::PathBuf]) -> anyhow::Result<bool> {
    use anyhow::Context as _;
    use std::io::Read as _;
    let mut clean = true;
    let mut seen = 0;
    for file in files {
        let text = if file.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s
        } else {
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
        };
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text)
            .with_context(|| format!("parsing {} as YAML", file.display()))?;
        for doc in docs.iter().filter(|d| {
            d.get("kind").and_then(serde_json::Value::as_str) == Some("CustomResourceDefinition")
        }) {
            seen += 1;
            let name = doc
                .pointer("/metadata/name")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("<unnamed>");
            let errors = certrotor::sim::kube::cel::crd_rule_errors(doc);
            if errors.is_empty() {
                println!("{}: {name}: validation rules accepted", file.display());
            } else {
                clean = false;
                println!("{}: {name}: refused", file.display());
                for e in errors {
                    println!("  {e}");
                }
            }
        }
    }
    if seen == 0 {
        anyhow::bail!("no CustomResourceDefinition in {files:?}");
    }
    Ok(clean)
}

/// A selector the API server refuses would leave the watches retrying forever: ask once at
/// start-up, where the namespaces say we may list, and fail with the server's answer.
async fn check_selector(
    client: &kube::Client,
    namespaces: &[String],
    selector: &str,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use certrotor::api::TenantCertificate;
    use kube::api::{Api, ListParams};
    let api: Api<TenantCertificate> = match namespaces.first() {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    api.list_metadata(&ListParams::default().labels(selector).limit(1))
        .await
        .map(|_| ())
        .with_context(|| format!("--selector {selector:?}"))
}

fn duration(s: &str) -> Result<Duration, String> {
    certrotor::api::parse_duration(s).map_err(|e| e.to_string())
}

/// Installed as `kubectl-certrotor`, the binary is kubectl's plugin: `kubectl certrotor …`.
const PLUGIN_NAME: &str = "kubectl-certrotor";

/// The command line, named as it was invoked. A usage error is one line and exit code 2.
fn parse() -> Cli {
    let invoked = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let mut command = Cli::command();
    if invoked == PLUGIN_NAME {
        command = command
            .name("kubectl certrotor")
            .bin_name("kubectl certrotor");
    }
    let parsed = command
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m));
    match parsed {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            let rendered = e.to_string();
            eprintln!(
                "{}",
                rendered.lines().next().unwrap_or("error: bad arguments")
            );
            std::process::exit(2);
        }
    }
}

/// glibc raises its mmap threshold each time a large block is freed (up to 32 MiB); after that,
/// the megabyte-sized buffers of tenant lists and watch pages come from the heap and leave it
/// fragmented. A fixed threshold (glibc's starting 128 KiB, which also fixes the trim threshold)
/// keeps them in mmap, returned when freed: at 10,000 certificates the peak RSS fell from
/// 100.5 to 91.9 MiB. The container image is a musl build, whose allocator does not do this.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn fix_malloc_thresholds() {
    // SAFETY: mallopt only sets allocator parameters; it is called once, before main's work.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fix_malloc_thresholds() {}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    fix_malloc_thresholds();
    let cli = parse();
    if let Command::Completion { shell } = cli.command {
        let mut command = Cli::command();
        clap_complete::generate(shell, &mut command, "certrotor", &mut std::io::stdout());
        return Ok(());
    }
    if let Command::Day2(day2) = cli.command {
        telemetry::init(cli.log_format, "warn");
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let code = match certrotor::cli::run(day2, cli.kube).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
                2
            }
        };
        std::process::exit(code);
    }
    // The demo tells its own story on stdout; logs only for what goes wrong.
    let default_level = if matches!(cli.command, Command::Demo { .. }) {
        "warn"
    } else {
        "info"
    };
    telemetry::init(cli.log_format, default_level);
    // aws-lc-rs is the one crypto provider compiled in; say so explicitly for rustls.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match cli.command {
        Command::Crd { check } if check.is_empty() => print!("{}", certrotor::api::crds_yaml()),
        Command::Crd { check } => {
            if !check_crd_files(&check)? {
                std::process::exit(1);
            }
        }
        Command::Demo { keep, timeout } => {
            certrotor::demo::run(certrotor::demo::DemoOptions {
                keep,
                timeout,
                ..Default::default()
            })
            .await?;
        }
        Command::Run(args) => run(args).await?,
        Command::Sim(SimCommand::Aic {
            listen,
            live_delay,
            credentials_out,
            rate_limit,
        }) => {
            let config = certrotor::sim::aic::AicSimConfig {
                live_delay,
                rate_limit,
                ..Default::default()
            };
            certrotor::sim::aic::run_cli(listen, config, credentials_out).await?;
        }
        Command::Sim(SimCommand::Cie {
            listen,
            onboarding_out,
        }) => {
            certrotor::sim::cie::run_cli(
                listen,
                certrotor::sim::cie::CieSimConfig::default(),
                onboarding_out,
            )
            .await?;
        }
        Command::Day2(_) | Command::Completion { .. } => unreachable!("handled above"),
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use certrotor::ops::{self, leader};

    let leader = if args.leader_election {
        // Checked here so a bad value fails at start-up, not on the first lease attempt.
        leader::lease_seconds(args.lease_duration).map_err(anyhow::Error::msg)?;
        let hostname = std::env::var("HOSTNAME").ok().or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        });
        let suffix: String = std::iter::repeat_with(fastrand::lowercase)
            .take(6)
            .collect();
        Some(leader::LeaderConfig {
            lease_name: args.lease_name,
            lease_namespace: args.lease_namespace,
            identity: leader::identity(std::env::var("POD_NAME").ok(), hostname, &suffix),
            lease_duration: args.lease_duration,
        })
    } else {
        None
    };
    let operator = ops::Operator {
        options: certrotor::controller::Options {
            poll: certrotor::controller::PollPolicy {
                min: args.live_poll_min,
                max: args.live_poll_max,
                resync: args.resync,
                live_timeout: args.live_timeout,
                ..Default::default()
            },
            concurrency: args.concurrency,
            selector: args.selector.clone().filter(|s| !s.trim().is_empty()),
            tenant_rate_limit: args.tenant_rate_limit.max(0.0),
            cleanup_timeout: args.cleanup_timeout,
            cert_manager: args.cert_manager,
            ..Default::default()
        },
        leader,
        namespaces: ops::namespaces::parse_namespaces(&args.namespaces),
        observer: None,
    };
    let admin = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding the admin server to {}", args.metrics_addr))?;
    let client = kube_client().await?;
    if let Some(selector) = &operator.options.selector {
        check_selector(&client, &operator.namespaces, selector).await?;
    }
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "certrotor starting");
    ops::run(client, operator, admin, shutdown_signal()).await?;
    tracing::info!("certrotor stopped");
    Ok(())
}

/// As `Client::try_default`, naming certrotor in the User-Agent so API audit logs (and the
/// stand-in's RBAC test) can tell its calls apart.
async fn kube_client() -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::infer().await?;
    let agent = concat!("certrotor/", env!("CARGO_PKG_VERSION"));
    config.headers.push((
        reqwest::header::USER_AGENT,
        reqwest::header::HeaderValue::from_static(agent),
    ));
    Ok(kube::Client::try_from(config)?)
}

/// SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
