//! Scale benchmark: the real operator binary (`certrotor run`) against the Kubernetes API
//! stand-in, ten AIC tenant simulators and one CIE simulator per Device-ID credential, all on
//! loopback. Prints one Markdown table per run: time to Ready, tenant calls and Kubernetes
//! writes per resource, token requests, steady-state calls, operator RSS.
//!
//! Run it through `scripts/bench` (release build). `cargo run --release --example bench -- --help`
//! lists the knobs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use certrotor::api::{self, DeviceIdCredential, TenantCertificate};
use certrotor::pki::{KeyAlgorithm, ca::Ca};
use certrotor::sim::aic::{AicSim, AicSimConfig, CallRecord};
use certrotor::sim::cie::{CieSim, CieSimConfig, Operation};
use certrotor::sim::kube::{Options as StandInOptions, StandIn, Stats, Verb};

const NS: &str = "bench";
const NOISE_NS: &str = "unrelated";
const TCERT: &str = "tenantcertificates.certrotor.io";
const DIDC: &str = "deviceidcredentials.certrotor.io";
const TOKEN_ROUTE: &str = "POST /am/oauth2/access_token";
const MIB: f64 = 1024.0 * 1024.0;

/// Scale benchmark of the certrotor operator against the stand-in and the simulators.
#[derive(Parser, Debug, Clone)]
#[command(name = "bench")]
struct Args {
    /// Numbers of Local-mode TenantCertificates to run with, one run each.
    #[arg(default_values_t = vec![100, 1000])]
    sizes: Vec<usize>,
    /// Simulated AIC tenants the Local certificates are spread over.
    #[arg(long, default_value_t = 10)]
    tenants: usize,
    /// Tenant-mode TenantCertificates (on an eleventh tenant; the bench signs their CSRs).
    #[arg(long, default_value_t = 10)]
    tenant_mode: usize,
    /// DeviceIdCredentials, each with its own CIE simulator (own budget and eviction).
    #[arg(long, default_value_t = 100)]
    device_ids: usize,
    /// Time for `live` to follow `active` in the AIC simulators (real tenants: about 60 s).
    #[arg(long, default_value = "10s", value_parser = duration)]
    live_delay: Duration,
    /// Added to every AIC simulator answer (real tenants: tens to hundreds of milliseconds).
    #[arg(long, default_value = "0s", value_parser = duration)]
    aic_latency: Duration,
    /// Requests per second each AIC simulator accepts (429 + Retry-After beyond); unlimited when
    /// unset.
    #[arg(long)]
    aic_rate_limit: Option<f64>,
    /// `--tenant-rate-limit` for the operator (its default when unset).
    #[arg(long)]
    tenant_rate_limit: Option<f64>,
    /// Also run every size with this many unrelated Secrets present (and report the growth).
    #[arg(long, default_value_t = 0)]
    unrelated_secrets: usize,
    /// Resync of the second operator start, for the steady-state measurement.
    #[arg(long, default_value = "60s", value_parser = duration)]
    resync: Duration,
    /// Resync periods the steady-state window spans.
    #[arg(long, default_value_t = 2)]
    steady_periods: u32,
    /// Idle window after all Ready, with the default 1h resync: nothing should happen.
    #[arg(long, default_value = "30s", value_parser = duration)]
    idle: Duration,
    /// Skip the restart and steady-state phase.
    #[arg(long)]
    no_steady: bool,
    /// `--concurrency` for the operator (its default when unset).
    #[arg(long)]
    concurrency: Option<u16>,
    /// Give up on a run when not everything is Ready after this long.
    #[arg(long, default_value = "15m", value_parser = duration)]
    timeout: Duration,
    /// The operator binary (default: `certrotor` next to this example's directory).
    #[arg(long)]
    operator: Option<PathBuf>,
}

fn duration(s: &str) -> Result<Duration, String> {
    certrotor::api::parse_duration(s).map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let operator = match &args.operator {
        Some(p) => p.clone(),
        None => default_operator_path()?,
    };
    if !operator.is_file() {
        bail!(
            "operator binary {} not found (build it: cargo build --release --bin certrotor)",
            operator.display()
        );
    }
    let mut reports = vec![];
    for &n in &args.sizes {
        let mut noise = vec![0];
        if args.unrelated_secrets > 0 {
            noise.push(args.unrelated_secrets);
        }
        for unrelated in noise {
            eprintln!("== N = {n}, unrelated Secrets = {unrelated}");
            let report = run(&args, &operator, n, unrelated)
                .await
                .with_context(|| format!("run with N = {n}"))?;
            print!("{}", report.table(&args));
            reports.push(report);
        }
    }
    if reports.len() > 1 {
        print!("{}", summary(&reports));
    }
    Ok(())
}

fn default_operator_path() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/examples/bench -> target/<profile>/certrotor
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("locating the target directory")?;
    Ok(dir.join("certrotor"))
}

/// Writes the bench itself makes, so they can be taken out of the stand-in's counts.
#[derive(Default)]
struct OwnWrites(Mutex<BTreeMap<(Verb, String), u64>>);

impl OwnWrites {
    fn add(&self, verb: Verb, resource: &str) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((verb, resource.to_string())).or_insert(0) += 1;
    }
    fn snapshot(&self) -> Stats {
        Stats {
            requests: self.0.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

/// `after - before - own`, per verb and resource: what the operator did in between.
fn operator_delta(after: &Stats, before: &Stats, own: &Stats) -> Stats {
    let mut out = Stats::default();
    for (key, n) in &after.requests {
        let prior = before.requests.get(key).copied().unwrap_or(0);
        let mine = own.requests.get(key).copied().unwrap_or(0);
        let d = n.saturating_sub(prior).saturating_sub(mine);
        if d > 0 {
            out.requests.insert(key.clone(), d);
        }
    }
    out
}

/// What a watched change of one of our resources touched.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Changes {
    status: u64,
    finalizers: u64,
    other: u64,
}

fn classify(before: &serde_json::Value, after: &serde_json::Value) -> Changes {
    let field = |v: &serde_json::Value, p: &str| v.pointer(p).cloned();
    let status = field(before, "/status") != field(after, "/status");
    let finalizers = field(before, "/metadata/finalizers") != field(after, "/metadata/finalizers");
    Changes {
        status: u64::from(status && !finalizers),
        finalizers: u64::from(finalizers && !status),
        other: u64::from(status == finalizers),
    }
}

/// Per resource: when it was applied and when it was first Ready.
#[derive(Default)]
struct Tracker {
    applied: HashMap<String, Instant>,
    ready: HashMap<String, Instant>,
    /// When the watch first saw the resource's uploaded certificate recorded (pending id).
    uploaded: HashMap<String, Instant>,
    last: HashMap<String, serde_json::Value>,
    changes: BTreeMap<&'static str, Changes>,
    /// Changes seen to Local TenantCertificates (each a write that changed something).
    local_changes: u64,
    /// Tenant-mode CSRs already signed, by request PEM.
    signed: HashSet<String>,
}

impl Tracker {
    fn observe(&mut self, kind: &'static str, key: String, obj: serde_json::Value, ready: bool) {
        if let Some(prev) = self.last.get(&key) {
            let c = classify(prev, &obj);
            if key.starts_with("tcert/local-") {
                self.local_changes += c.status + c.finalizers + c.other;
            }
            let total = self.changes.entry(kind).or_default();
            total.status += c.status;
            total.finalizers += c.finalizers;
            total.other += c.other;
        }
        if ready && !self.ready.contains_key(&key) {
            self.ready.insert(key.clone(), Instant::now());
        }
        self.last.insert(key, obj);
    }
}

fn tcert_ready(t: &TenantCertificate) -> bool {
    t.status.as_ref().is_some_and(|s| {
        api::is_true(&s.conditions, api::READY) && s.pending.is_none() && s.certificate_id.is_some()
    })
}

fn didc_ready(d: &DeviceIdCredential) -> bool {
    d.status
        .as_ref()
        .is_some_and(|s| api::is_true(&s.conditions, api::READY) && s.serial_number.is_some())
}

/// Nearest-rank percentile of `values` (sorted here); `None` when empty.
fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// A `kB` field of /proc/PID/status (VmHWM, VmRSS), in bytes.
fn proc_status_bytes(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// Calls by route (`METHOD /path/{id}`).
fn by_route(calls: &[CallRecord]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for c in calls {
        *out.entry(c.route.clone()).or_insert(0) += 1;
    }
    out
}

/// The operator process and its memory high-water mark.
struct Operator {
    child: tokio::process::Child,
    pid: u32,
    hwm: Arc<Mutex<u64>>,
    sampler: tokio::task::JoinHandle<()>,
    /// The admin server (`/readyz`).
    admin: std::net::SocketAddr,
    started: Instant,
}

impl Operator {
    fn start(
        binary: &Path,
        kubeconfig: &Path,
        log: &Path,
        resync: Duration,
        args: &Args,
    ) -> anyhow::Result<Operator> {
        let concurrency = args.concurrency;
        let log_file = std::fs::File::create(log)?;
        let admin = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut cmd = tokio::process::Command::new(binary);
        cmd.arg("run")
            .arg("--resync")
            .arg(format!("{}s", resync.as_secs()))
            .arg("--metrics-addr")
            .arg(admin.to_string())
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true);
        if let Some(c) = concurrency {
            cmd.arg("--concurrency").arg(c.to_string());
        }
        if let Some(r) = args.tenant_rate_limit {
            cmd.arg("--tenant-rate-limit").arg(r.to_string());
        }
        let child = cmd.spawn().context("starting the operator")?;
        let pid = child.id().context("operator pid")?;
        let hwm = Arc::new(Mutex::new(0));
        let seen = hwm.clone();
        // VmHWM is the kernel's own peak; sampling only keeps the last value readable after exit.
        let sampler = tokio::spawn(async move {
            let path = format!("/proc/{pid}/status");
            loop {
                match tokio::fs::read_to_string(&path).await {
                    Ok(s) => {
                        if let Some(b) = proc_status_bytes(&s, "VmHWM") {
                            *seen.lock().unwrap_or_else(|e| e.into_inner()) = b;
                        }
                    }
                    Err(_) => return,
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        Ok(Operator {
            child,
            pid,
            hwm,
            sampler,
            admin,
            started: Instant::now(),
        })
    }

    /// Reconciles that ended in an error so far, from the operator's `/metrics`.
    async fn failed_reconciles(&self) -> Option<u64> {
        let url = format!("http://{}/metrics", self.admin);
        let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
        Some(
            text.lines()
                .filter(|l| {
                    l.starts_with("certrotor_reconcile_total{") && l.contains("outcome=\"error\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64,
        )
    }

    /// Time from start until `/readyz` answers 200 (None if not within `limit`).
    async fn time_to_ready(&self, limit: Duration) -> Option<Duration> {
        let url = format!("http://{}/readyz", self.admin);
        let client = reqwest::Client::new();
        while self.started.elapsed() < limit {
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                return Some(self.started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    fn rss(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()
            .and_then(|s| proc_status_bytes(&s, "VmRSS"))
            .unwrap_or(0)
    }

    fn peak(&self) -> u64 {
        let sampled = *self.hwm.lock().unwrap_or_else(|e| e.into_inner());
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()
            .and_then(|s| proc_status_bytes(&s, "VmHWM"))
            .unwrap_or(0)
            .max(sampled)
    }

    /// SIGTERM, then SIGKILL after 10 s. Returns the peak RSS.
    async fn stop(mut self) -> u64 {
        let peak = self.peak();
        let _ = tokio::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
        self.sampler.abort();
        peak
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// Counts from the simulators at one moment.
#[derive(Default, Clone)]
struct Calls {
    /// Per Local-mode tenant, its call log.
    local: Vec<Vec<CallRecord>>,
    tenant_mode: Vec<CallRecord>,
    cie: Vec<(u64, u64, u64)>,
}

impl Calls {
    fn local_total(&self) -> u64 {
        self.local.iter().map(|c| c.len() as u64).sum()
    }
    fn total(&self) -> u64 {
        self.local_total()
            + self.tenant_mode.len() as u64
            + self.cie.iter().map(|(a, b, c)| a + b + c).sum::<u64>()
    }
}

/// `after` minus the first `before` records of each log.
fn calls_since(after: &Calls, before: &Calls) -> Calls {
    let tail = |a: &[CallRecord], b: &[CallRecord]| a[b.len().min(a.len())..].to_vec();
    Calls {
        local: after
            .local
            .iter()
            .zip(before.local.iter().chain(std::iter::repeat(&vec![])))
            .map(|(a, b)| tail(a, b))
            .collect(),
        tenant_mode: tail(&after.tenant_mode, &before.tenant_mode),
        cie: after
            .cie
            .iter()
            .zip(before.cie.iter().chain(std::iter::repeat(&(0, 0, 0))))
            .map(|(a, b)| (a.0 - b.0, a.1 - b.1, a.2 - b.2))
            .collect(),
    }
}

struct Sims {
    local: Vec<AicSim>,
    tenant_mode: AicSim,
    cie: Vec<CieSim>,
}

impl Sims {
    fn calls(&self) -> Calls {
        Calls {
            local: self.local.iter().map(AicSim::calls).collect(),
            tenant_mode: self.tenant_mode.calls(),
            cie: self
                .cie
                .iter()
                .map(|s| {
                    let calls = s.calls();
                    let count = |op| calls.iter().filter(|c| c.operation == op).count() as u64;
                    (
                        count(Operation::CertRefresh),
                        count(Operation::TokenRefresh),
                        count(Operation::Other),
                    )
                })
                .collect(),
        }
    }
}

/// Everything one run measured.
struct Report {
    n: usize,
    tenant_mode: usize,
    device_ids: usize,
    unrelated: usize,
    tenants: usize,
    apply_to_ready: Duration,
    /// First create → last create.
    applied: Duration,
    live_delay: Duration,
    local_latency: Vec<f64>,
    /// Local: apply → the upload recorded in status, and that → Ready.
    local_upload: Vec<f64>,
    local_after_upload: Vec<f64>,
    tenant_latency: Vec<f64>,
    didc_latency: Vec<f64>,
    apply_calls: Calls,
    apply_writes: Stats,
    changes: BTreeMap<&'static str, Changes>,
    local_changes: u64,
    events_by_kind: BTreeMap<String, u64>,
    idle: Duration,
    idle_calls: u64,
    idle_writes: u64,
    peak_rss: u64,
    settled_rss: u64,
    /// Reconciles that ended in an error during the first run (None: /metrics unreachable).
    failed_reconciles: Option<u64>,
    steady: Option<Steady>,
}

struct Steady {
    /// Operator start → `/readyz` 200 on the restart.
    readyz: Option<Duration>,
    resync: Duration,
    restart_calls: Calls,
    restart_writes: Stats,
    window: Duration,
    window_calls: Calls,
    window_writes: u64,
    peak_rss: u64,
}

async fn run(args: &Args, binary: &Path, n: usize, unrelated: usize) -> anyhow::Result<Report> {
    let started = Instant::now();
    let standin = StandIn::start_with(
        "127.0.0.1:0".parse()?,
        StandInOptions {
            // A real API server replays about five minutes of changes; the default 4096 would
            // make watchers relist in the middle of a 5,000-resource apply.
            history_limit: 200_000,
            ..Default::default()
        },
    )
    .await?;
    let client = standin.client();
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    standin.write_kubeconfig(&kubeconfig)?;
    let own = Arc::new(OwnWrites::default());

    for crd in api::crds() {
        Api::<CustomResourceDefinition>::all(client.clone())
            .create(&PostParams::default(), &crd)
            .await?;
    }
    for ns in [NS, NOISE_NS] {
        let obj = Namespace {
            metadata: ObjectMeta {
                name: Some(ns.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &obj)
            .await?;
    }

    let sims = start_sims(args).await?;
    eprintln!(
        "   simulators up ({} AIC, {} CIE) in {:.1}s",
        sims.local.len() + 1,
        sims.cie.len(),
        started.elapsed().as_secs_f64()
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    put_unrelated(&client, unrelated).await?;
    let ca = Arc::new(Ca::new("bench CA")?);
    prepare_secrets(&secrets, &sims, &ca, args, n, &own).await?;
    eprintln!(
        "   Secrets in place in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let watchers = spawn_watchers(&client, &tracker, &ca, &own);

    let log = dir.path().join("operator-1.log");
    let mut operator = Operator::start(binary, &kubeconfig, &log, Duration::from_secs(3600), args)?;
    wait_for_watches(&standin, &mut operator).await?;

    let stats0 = standin.stats();
    let own0 = own.snapshot();
    let calls0 = sims.calls();
    let t0 = Instant::now();
    apply_all(&client, &sims, args, n, &tracker, &own).await?;
    let applied = t0.elapsed();
    eprintln!(
        "   applied {} resources in {:.1}s",
        n + args.tenant_mode + args.device_ids,
        t0.elapsed().as_secs_f64()
    );
    let expected = n + args.tenant_mode + args.device_ids;
    let deadline = t0 + args.timeout;
    loop {
        let ready = tracker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ready
            .len();
        if ready >= expected {
            break;
        }
        if let Some(status) = operator.exited() {
            bail!(
                "the operator exited ({status}); log: {}",
                tail_of(&log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!("only {ready} of {expected} Ready after {:?}", args.timeout);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let apply_to_ready = t0.elapsed();
    eprintln!(
        "   all Ready {:.1}s after the first apply",
        apply_to_ready.as_secs_f64()
    );
    // Let trailing writes (the last status patch, events) land before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats1 = standin.stats();
    let own1 = own.snapshot();
    let calls1 = sims.calls();
    let settled_rss = operator.rss();

    tokio::time::sleep(args.idle).await;
    let stats2 = standin.stats();
    let own2 = own.snapshot();
    let calls2 = sims.calls();
    let failed_reconciles = operator.failed_reconciles().await;
    let peak_rss = operator.stop().await;

    let (
        local_latency,
        local_upload,
        local_after_upload,
        tenant_latency,
        didc_latency,
        (changes, local_changes),
    ) = {
        let t = tracker.lock().unwrap_or_else(|e| e.into_inner());
        let local = |from: &HashMap<String, Instant>, to: &HashMap<String, Instant>| -> Vec<f64> {
            to.iter()
                .filter(|(k, _)| k.starts_with("tcert/local-"))
                .filter_map(|(k, r)| {
                    from.get(k)
                        .map(|a| r.saturating_duration_since(*a).as_secs_f64())
                })
                .collect()
        };
        let lat = |prefix: &str| -> Vec<f64> {
            t.ready
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .filter_map(|(k, r)| t.applied.get(k).map(|a| (*r - *a).as_secs_f64()))
                .collect()
        };
        (
            lat("tcert/local-"),
            local(&t.applied, &t.uploaded),
            local(&t.uploaded, &t.ready),
            lat("tcert/tmode-"),
            lat("didc/"),
            (t.changes.clone(), t.local_changes),
        )
    };
    let events_by_kind = events_by_kind(&client).await?;

    let steady = if args.no_steady {
        None
    } else {
        Some(measure_steady(args, binary, &kubeconfig, dir.path(), &standin, &sims, &own).await?)
    };

    for w in watchers {
        w.abort();
    }
    for sim in sims.local {
        sim.shutdown().await;
    }
    sims.tenant_mode.shutdown().await;
    for sim in sims.cie {
        sim.shutdown().await;
    }
    standin.shutdown().await;

    Ok(Report {
        n,
        tenant_mode: args.tenant_mode,
        device_ids: args.device_ids,
        unrelated,
        tenants: args.tenants,
        apply_to_ready,
        applied,
        live_delay: args.live_delay,
        local_latency,
        local_upload,
        local_after_upload,
        tenant_latency,
        didc_latency,
        apply_calls: calls_since(&calls1, &calls0),
        apply_writes: operator_delta(
            &stats1,
            &stats0,
            &operator_delta(&own1, &own0, &Stats::default()),
        ),
        changes,
        local_changes,
        events_by_kind,
        idle: args.idle,
        idle_calls: calls_since(&calls2, &calls1).total(),
        idle_writes: writes_apart_from_leases(&operator_delta(
            &stats2,
            &stats1,
            &operator_delta(&own2, &own1, &Stats::default()),
        )),
        peak_rss,
        settled_rss,
        failed_reconciles,
        steady,
    })
}

/// Restart with a short resync; once the restart pass is over, count over whole resync periods.
async fn measure_steady(
    args: &Args,
    binary: &Path,
    kubeconfig: &Path,
    dir: &Path,
    standin: &StandIn,
    sims: &Sims,
    own: &OwnWrites,
) -> anyhow::Result<Steady> {
    let before = sims.calls();
    let stats_before = standin.stats();
    let own_before = own.snapshot();
    let log = dir.join("operator-2.log");
    let mut operator = Operator::start(binary, kubeconfig, &log, args.resync, args)?;
    // Ready as the leader: its watches are up (a standby is ready before it leads), and then
    // /readyz says its caches have synced.
    wait_for_watches(standin, &mut operator).await?;
    let readyz = operator.time_to_ready(Duration::from_secs(120)).await;
    // The restart pass: every resource is reconciled once. Over when the tenants are quiet.
    let mut last = sims.calls().total();
    let mut quiet_since = Instant::now();
    let limit = Instant::now() + args.resync;
    while quiet_since.elapsed() < Duration::from_secs(5) && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = sims.calls().total();
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
    let after_restart = sims.calls();
    let stats_restart = standin.stats();
    let own_restart = own.snapshot();
    let window = args.resync * args.steady_periods;
    eprintln!(
        "   restart pass done; steady-state window {}s",
        window.as_secs()
    );
    tokio::time::sleep(window).await;
    let end = sims.calls();
    let stats_end = standin.stats();
    let own_end = own.snapshot();
    let peak_rss = operator.stop().await;
    Ok(Steady {
        readyz,
        resync: args.resync,
        restart_calls: calls_since(&after_restart, &before),
        restart_writes: operator_delta(
            &stats_restart,
            &stats_before,
            &operator_delta(&own_restart, &own_before, &Stats::default()),
        ),
        window,
        window_calls: calls_since(&end, &after_restart),
        window_writes: writes_apart_from_leases(&operator_delta(
            &stats_end,
            &stats_restart,
            &operator_delta(&own_end, &own_restart, &Stats::default()),
        )),
        peak_rss,
    })
}

async fn start_sims(args: &Args) -> anyhow::Result<Sims> {
    let config = AicSimConfig {
        live_delay: args.live_delay,
        delete_500_window: Duration::from_secs(2),
        latency: args.aic_latency,
        rate_limit: args.aic_rate_limit,
        ..Default::default()
    };
    let mut local = vec![];
    for _ in 0..args.tenants.max(1) {
        local.push(AicSim::start("127.0.0.1:0".parse()?, config.clone()).await?);
    }
    let tenant_mode = AicSim::start("127.0.0.1:0".parse()?, config).await?;
    let mut cie = vec![];
    for _ in 0..args.device_ids {
        cie.push(CieSim::start("127.0.0.1:0".parse()?, CieSimConfig::default()).await?);
    }
    Ok(Sims {
        local,
        tenant_mode,
        cie,
    })
}

fn secret(name: &str, ns: &str, type_: &str, data: BTreeMap<String, String>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        string_data: Some(data),
        type_: Some(type_.into()),
        ..Default::default()
    }
}

/// Secrets no resource references, about 2 KiB each, like a busy cluster's.
async fn put_unrelated(client: &Client, count: usize) -> anyhow::Result<()> {
    if count == 0 {
        return Ok(());
    }
    let started = Instant::now();
    let api: Api<Secret> = Api::namespaced(client.clone(), NOISE_NS);
    let filler = "x".repeat(2048);
    stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            let s = secret(
                &format!("unrelated-{i}"),
                NOISE_NS,
                "Opaque",
                [("blob".to_string(), filler.clone())].into(),
            );
            async move { api.create(&PostParams::default(), &s).await }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    eprintln!(
        "   {count} unrelated Secrets in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Credentials per tenant, a TLS Secret per Local certificate (as cert-manager keeps them), an
/// onboarding Secret per Device-ID credential.
async fn prepare_secrets(
    secrets: &Api<Secret>,
    sims: &Sims,
    ca: &Ca,
    args: &Args,
    n: usize,
    own: &OwnWrites,
) -> anyhow::Result<()> {
    let mut all = vec![];
    for (t, sim) in sims.local.iter().enumerate() {
        all.push(secret(
            &format!("aic-creds-{t}"),
            NS,
            "Opaque",
            sim.credentials_secret_data(),
        ));
    }
    all.push(secret(
        "aic-creds-tmode",
        NS,
        "Opaque",
        sims.tenant_mode.credentials_secret_data(),
    ));
    let now = jiff::Timestamp::now();
    for i in 0..n {
        let host = format!("local-{i}.example.com");
        let (chain, key) = ca.issue(
            &host,
            &[host.as_str()],
            now - jiff::SignedDuration::from_mins(5),
            now + jiff::SignedDuration::from_hours(24 * 90),
            KeyAlgorithm::EcdsaP256,
        )?;
        all.push(secret(
            &format!("local-{i}-tls"),
            NS,
            "kubernetes.io/tls",
            [("tls.crt".into(), chain), ("tls.key".into(), key)].into(),
        ));
    }
    for (i, sim) in sims.cie.iter().enumerate().take(args.device_ids) {
        let o = sim.onboarding();
        all.push(secret(
            &format!("didc-{i}-onboarding"),
            NS,
            "Opaque",
            [
                ("tls.crt".into(), o.cert_pem),
                ("tls.key".into(), o.key_pem),
                ("apiKey".into(), o.api_key),
            ]
            .into(),
        ));
    }
    let count = all.len();
    stream::iter(all)
        .map(|s| async move { secrets.create(&PostParams::default(), &s).await })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    for _ in 0..count {
        own.add(Verb::Create, "secrets");
    }
    Ok(())
}

/// Waits until the operator watches both kinds and Secrets (it is ready to react).
async fn wait_for_watches(standin: &StandIn, operator: &mut Operator) -> anyhow::Result<()> {
    let before = standin.stats();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = standin.stats();
        let new = |r: &str| s.count(Verb::Watch, r) > before.count(Verb::Watch, r);
        if new(TCERT) && new(DIDC) && new("secrets") {
            return Ok(());
        }
        if let Some(status) = operator.exited() {
            bail!("the operator exited at start-up ({status})");
        }
        if Instant::now() > deadline {
            bail!("the operator did not start watching within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The bench's own view: readiness per resource, what each change touched, and the CA that
/// signs Tenant-mode CSRs as they appear.
fn spawn_watchers(
    client: &Client,
    tracker: &Arc<Mutex<Tracker>>,
    ca: &Arc<Ca>,
    own: &Arc<OwnWrites>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let tcerts: Api<TenantCertificate> = Api::namespaced(client.clone(), NS);
    let t = tracker.clone();
    let ca = ca.clone();
    let own = own.clone();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let tc = tokio::spawn(async move {
        let mut events = watcher(tcerts, watcher::Config::default()).boxed();
        while let Some(event) = events.next().await {
            let Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) = event else {
                continue;
            };
            let name = obj.name_any();
            let csr = obj
                .status
                .as_ref()
                .and_then(|s| s.pending.as_ref())
                .and_then(|p| p.csr.as_ref())
                .map(|c| c.request.clone());
            let uploaded = obj
                .status
                .as_ref()
                .and_then(|s| s.pending.as_ref())
                .is_some_and(|p| p.certificate_id.is_some());
            let sign = {
                let mut tr = t.lock().unwrap_or_else(|e| e.into_inner());
                if uploaded {
                    tr.uploaded
                        .entry(format!("tcert/{name}"))
                        .or_insert_with(Instant::now);
                }
                let json = serde_json::to_value(&obj).unwrap_or_default();
                tr.observe(
                    "TenantCertificate",
                    format!("tcert/{name}"),
                    json,
                    tcert_ready(&obj),
                );
                csr.filter(|c| tr.signed.insert(c.clone()))
            };
            if let Some(csr) = sign {
                let secret_name = obj.spec.secret_ref.name.clone();
                if let Err(e) = sign_into(&ca, &secrets, &secret_name, &csr).await {
                    eprintln!("   bench CA: signing for {name} failed: {e:#}");
                }
                own.add(Verb::Patch, "secrets");
            }
        }
    });
    let didcs: Api<DeviceIdCredential> = Api::namespaced(client.clone(), NS);
    let t = tracker.clone();
    let dc = tokio::spawn(async move {
        let mut events = watcher(didcs, watcher::Config::default()).boxed();
        while let Some(event) = events.next().await {
            if let Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) = event {
                let json = serde_json::to_value(&obj).unwrap_or_default();
                t.lock().unwrap_or_else(|e| e.into_inner()).observe(
                    "DeviceIdCredential",
                    format!("didc/{}", obj.name_any()),
                    json,
                    didc_ready(&obj),
                );
            }
        }
    });
    vec![tc, dc]
}

async fn sign_into(ca: &Ca, secrets: &Api<Secret>, name: &str, csr: &str) -> anyhow::Result<()> {
    let now = jiff::Timestamp::now();
    let chain = ca.sign_csr(
        csr,
        now - jiff::SignedDuration::from_mins(5),
        now + jiff::SignedDuration::from_hours(24 * 90),
    )?;
    let s = secret(name, NS, "Opaque", [("tls.crt".into(), chain)].into());
    secrets
        .patch(
            name,
            &PatchParams::apply("bench-ca").force(),
            &Patch::Apply(&s),
        )
        .await?;
    Ok(())
}

/// Creates every resource, 16 at a time (as `kubectl apply -f dir/` would, roughly).
async fn apply_all(
    client: &Client,
    sims: &Sims,
    args: &Args,
    n: usize,
    tracker: &Arc<Mutex<Tracker>>,
    own: &OwnWrites,
) -> anyhow::Result<()> {
    let tcerts: Api<TenantCertificate> = Api::namespaced(client.clone(), NS);
    let didcs: Api<DeviceIdCredential> = Api::namespaced(client.clone(), NS);
    let mut objs: Vec<(String, serde_json::Value)> = vec![];
    // Interleave kinds so each starts early, as a GitOps sync of a mixed directory would.
    for i in 0..n.max(args.tenant_mode).max(args.device_ids) {
        if i < n {
            let t = i % sims.local.len();
            objs.push((
                format!("tcert/local-{i}"),
                local_tcert(i, &sims.local[t].url(), t),
            ));
        }
        if i < args.tenant_mode {
            objs.push((
                format!("tcert/tmode-{i}"),
                tenant_tcert(i, &sims.tenant_mode.url()),
            ));
        }
        if let Some(sim) = sims.cie.get(i).filter(|_| i < args.device_ids) {
            objs.push((format!("didc/didc-{i}"), didc(i, sim)));
        }
    }
    stream::iter(objs)
        .map(|(key, obj)| {
            let tcerts = tcerts.clone();
            let didcs = didcs.clone();
            async move {
                let applied = Instant::now();
                if key.starts_with("tcert/") {
                    let t: TenantCertificate = serde_json::from_value(obj)?;
                    tcerts.create(&PostParams::default(), &t).await?;
                } else {
                    let d: DeviceIdCredential = serde_json::from_value(obj)?;
                    didcs.create(&PostParams::default(), &d).await?;
                }
                anyhow::Ok((key, applied))
            }
        })
        .buffer_unordered(16)
        .try_for_each(|(key, applied)| {
            let resource = if key.starts_with("tcert/") {
                TCERT
            } else {
                DIDC
            };
            own.add(Verb::Create, resource);
            tracker
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .applied
                .insert(key, applied);
            async { Ok(()) }
        })
        .await
}

fn local_tcert(i: usize, url: &str, tenant: usize) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "certrotor.io/v1alpha1",
        "kind": "TenantCertificate",
        "metadata": {"name": format!("local-{i}"), "namespace": NS},
        "spec": {
            "tenant": {"url": url, "credentialsSecretRef": {"name": format!("aic-creds-{tenant}")}},
            "keySource": "Local",
            "secretRef": {"name": format!("local-{i}-tls")},
        }
    })
}

fn tenant_tcert(i: usize, url: &str) -> serde_json::Value {
    let host = format!("tmode-{i}.example.com");
    serde_json::json!({
        "apiVersion": "certrotor.io/v1alpha1",
        "kind": "TenantCertificate",
        "metadata": {"name": format!("tmode-{i}"), "namespace": NS},
        "spec": {
            "tenant": {"url": url, "credentialsSecretRef": {"name": "aic-creds-tmode"}},
            "keySource": "Tenant",
            "secretRef": {"name": format!("tmode-{i}-chain")},
            "csr": {"commonName": host, "organization": "Bench", "subjectAlternativeNames": [host], "algorithm": "ecdsa"},
        }
    })
}

fn didc(i: usize, sim: &CieSim) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "certrotor.io/v1alpha1",
        "kind": "DeviceIdCredential",
        "metadata": {"name": format!("didc-{i}"), "namespace": NS},
        "spec": {
            "endpoint": sim.url(),
            "caBundle": sim.ca_pem(),
            "onboardingSecretRef": {"name": format!("didc-{i}-onboarding")},
            "certName": format!("didc-{i}"),
            "subject": {"commonName": format!("didc-{i}"), "organization": "Bench"},
            "secretName": format!("didc-{i}-client"),
        }
    })
}

/// Event objects per kind of the object they regard, counting each repeat of a series.
async fn events_by_kind(client: &Client) -> anyhow::Result<BTreeMap<String, u64>> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), NS);
    let mut out = BTreeMap::new();
    for e in events.list(&Default::default()).await? {
        let kind = e
            .regarding
            .as_ref()
            .and_then(|r| r.kind.clone())
            .unwrap_or_default();
        let count = e
            .series
            .as_ref()
            .map_or(1, |s| u64::try_from(s.count).unwrap_or(1));
        *out.entry(kind).or_insert(0) += count;
    }
    Ok(out)
}

fn tail_of(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    Some(lines[lines.len().saturating_sub(20)..].join("\n"))
}

/// `verb resource count` for each kind of write, e.g. `patch secrets 3`.
fn describe_writes(s: &Stats) -> String {
    let parts: Vec<String> = s
        .requests
        .iter()
        .filter(|((v, _), _)| v.is_write())
        .map(|((v, r), n)| format!("{} {r} {n}", v.as_str()))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// Leader election renews its Lease every few seconds; what certrotor writes is the rest.
fn writes_apart_from_leases(s: &Stats) -> u64 {
    s.writes() - s.writes_to("leases.coordination.k8s.io")
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

fn secs(v: Option<f64>) -> String {
    v.map_or("–".into(), |s| format!("{s:.1} s"))
}

fn per(n: u64, d: usize) -> f64 {
    if d == 0 { 0.0 } else { n as f64 / d as f64 }
}

fn mib(b: u64) -> f64 {
    b as f64 / MIB
}

impl Report {
    fn resources(&self) -> usize {
        self.n + self.tenant_mode + self.device_ids
    }

    fn local_calls_per_cert(&self) -> f64 {
        per(self.apply_calls.local_total(), self.n)
    }

    fn writes_per_resource(&self) -> f64 {
        per(self.apply_writes.writes(), self.resources())
    }

    fn event_objects(&self, kind: &str) -> u64 {
        self.events_by_kind.get(kind).copied().unwrap_or(0)
    }

    fn events_writes(&self, s: &Stats) -> u64 {
        s.writes_to("events") + s.writes_to("events.events.k8s.io")
    }

    fn table(&self, args: &Args) -> String {
        let mut rows: Vec<(String, String)> = vec![];
        let mut row = |k: &str, v: String| rows.push((k.to_string(), v));
        row(
            "resources",
            format!(
                "{} Local + {} Tenant-mode TenantCertificates, {} DeviceIdCredentials; {} unrelated Secrets",
                self.n, self.tenant_mode, self.device_ids, self.unrelated
            ),
        );
        row(
            "setup",
            format!(
                "{} AIC tenants (+1 for Tenant mode), live delay {} s, AIC latency {} ms, tenant rate limit {}; operator defaults (poll 2–20 s) with concurrency {}, tenant rate limit {}/s",
                self.tenants,
                args.live_delay.as_secs(),
                args.aic_latency.as_millis(),
                args.aic_rate_limit
                    .map_or("none".into(), |r| format!("{r}/s")),
                args.concurrency.map_or("8".into(), |c| c.to_string()),
                args.tenant_rate_limit
                    .unwrap_or(certrotor::controller::DEFAULT_TENANT_RATE_LIMIT)
            ),
        );
        row(
            "apply → all Ready",
            format!("{:.1} s", self.apply_to_ready.as_secs_f64()),
        );
        for (what, lat) in [
            ("apply → Ready p50 / p99, Local", &self.local_latency),
            (
                "Local, apply → upload recorded in status, p50 / p99",
                &self.local_upload,
            ),
            (
                "Local, upload recorded → Ready, p50 / p99",
                &self.local_after_upload,
            ),
            (
                "apply → Ready p50 / p99, Tenant mode (incl. bench CA signing)",
                &self.tenant_latency,
            ),
            (
                "apply → Ready p50 / p99, DeviceIdCredential",
                &self.didc_latency,
            ),
        ] {
            row(
                what,
                format!(
                    "{} / {}",
                    secs(percentile(lat, 50.0)),
                    secs(percentile(lat, 99.0))
                ),
            );
        }
        let mut local_routes = BTreeMap::new();
        for log in &self.apply_calls.local {
            for (r, c) in by_route(log) {
                *local_routes.entry(r).or_insert(0) += c;
            }
        }
        row(
            "AIC calls per Local cert, apply → Ready",
            format!("{:.2}", self.local_calls_per_cert()),
        );
        for (route, count) in &local_routes {
            row(&format!("  {route}"), format!("{:.2}", per(*count, self.n)));
        }
        if self.tenant_mode > 0 {
            let routes = by_route(&self.apply_calls.tenant_mode);
            row(
                "AIC calls per Tenant-mode cert",
                format!(
                    "{:.2} ({})",
                    per(self.apply_calls.tenant_mode.len() as u64, self.tenant_mode),
                    routes
                        .iter()
                        .map(|(r, c)| format!("{r} {:.1}", per(*c, self.tenant_mode)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        let tokens: Vec<u64> = self
            .apply_calls
            .local
            .iter()
            .chain(std::iter::once(&self.apply_calls.tenant_mode))
            .map(|log| log.iter().filter(|c| c.route == TOKEN_ROUTE).count() as u64)
            .collect();
        row(
            "token requests per tenant (min / max)",
            format!(
                "{} / {}",
                tokens.iter().min().copied().unwrap_or(0),
                tokens.iter().max().copied().unwrap_or(0)
            ),
        );
        let (cert, token, other) = self
            .apply_calls
            .cie
            .iter()
            .fold((0, 0, 0), |a, c| (a.0 + c.0, a.1 + c.1, a.2 + c.2));
        row(
            "CIE calls per DeviceIdCredential",
            format!(
                "cert:refresh {:.2}, token:refresh {:.2}, other {:.2}",
                per(cert, self.device_ids),
                per(token, self.device_ids),
                per(other, self.device_ids)
            ),
        );
        let w = &self.apply_writes;
        row(
            "Kubernetes writes per resource, apply → Ready",
            format!(
                "{:.2} ({} writes / {} resources)",
                self.writes_per_resource(),
                w.writes(),
                self.resources()
            ),
        );
        let tcerts = self.n + self.tenant_mode;
        let kind_writes = [
            (
                "TenantCertificate",
                w.writes_to(TCERT)
                    + self.event_objects("TenantCertificate")
                    + w.writes_to("configmaps"),
                tcerts,
            ),
            (
                "DeviceIdCredential",
                w.writes_to(DIDC)
                    + self.event_objects("DeviceIdCredential")
                    + w.writes_to("secrets"),
                self.device_ids,
            ),
        ];
        for (kind, writes, count) in kind_writes {
            row(
                &format!("  per {kind} (its patches, its events, its Secrets/ConfigMaps)"),
                format!("{:.2}", per(writes, count)),
            );
        }
        for (kind, resource, count) in [
            ("TenantCertificate", TCERT, tcerts),
            ("DeviceIdCredential", DIDC, self.device_ids),
        ] {
            let c = self.changes.get(kind).copied().unwrap_or_default();
            let patches = w.count(Verb::Patch, resource) + w.count(Verb::Update, resource);
            let effective = c.status + c.finalizers + c.other;
            row(
                &format!("  {kind} patches per resource"),
                format!(
                    "{:.2}: status {:.2}, finalizer {:.2}, both/other {:.2}, no-op {:.2}",
                    per(patches, count),
                    per(c.status, count),
                    per(c.finalizers, count),
                    per(c.other, count),
                    per(patches.saturating_sub(effective), count)
                ),
            );
            row(
                &format!("  events about {kind} per resource"),
                format!(
                    "{:.2}",
                    per(self.events_by_kind.get(kind).copied().unwrap_or(0), count)
                ),
            );
        }
        row(
            "  event writes (all kinds) per resource",
            format!("{:.2}", per(self.events_writes(w), self.resources())),
        );
        row(
            "  Secret writes per DeviceIdCredential",
            format!("{:.2}", per(w.writes_to("secrets"), self.device_ids)),
        );
        row(
            "  ConfigMap writes per Tenant-mode cert",
            format!("{:.2}", per(w.writes_to("configmaps"), self.tenant_mode)),
        );
        let other_writes = w.writes()
            - w.writes_to(TCERT)
            - w.writes_to(DIDC)
            - self.events_writes(w)
            - w.writes_to("secrets")
            - w.writes_to("configmaps");
        row("  other writes (leases, …)", format!("{other_writes}"));
        row(
            &format!("idle {} s after Ready (1h resync)", self.idle.as_secs()),
            format!(
                "{} tenant calls, {} Kubernetes writes (Lease renewals apart)",
                self.idle_calls, self.idle_writes
            ),
        );
        let answered_429: usize = self
            .apply_calls
            .local
            .iter()
            .flatten()
            .filter(|c| c.status == 429)
            .count();
        row(
            "AIC answers 429 / failed reconciles (whole first run)",
            format!(
                "{answered_429} / {}",
                self.failed_reconciles
                    .map_or("unknown".into(), |n| n.to_string())
            ),
        );
        if let Some(s) = &self.steady {
            let restart = s.restart_calls.local_total();
            row(
                "operator restart: AIC calls per Local cert",
                format!(
                    "{:.2}; Kubernetes writes: {}",
                    per(restart, self.n),
                    describe_writes(&s.restart_writes)
                ),
            );
            let cycles = f64::from(args.steady_periods.max(1));
            let per_cycle = per(s.window_calls.local_total(), self.n) / cycles;
            row(
                &format!(
                    "steady state (resync {} s, window {} s)",
                    s.resync.as_secs(),
                    s.window.as_secs()
                ),
                format!(
                    "{:.3} AIC calls per cert per resync; CIE calls (cert:refresh, token:refresh, other) {:?}; {} Kubernetes writes",
                    per_cycle,
                    s.window_calls.cie.iter().fold((0, 0, 0), |a, c| (
                        a.0 + c.0,
                        a.1 + c.1,
                        a.2 + c.2
                    )),
                    s.window_writes
                ),
            );
            row(
                "  ⇒ per cert per hour at the default 1h resync",
                format!("{per_cycle:.3}"),
            );
            row(
                "peak RSS, second operator start",
                format!("{:.1} MiB", mib(s.peak_rss)),
            );
        }
        row(
            "operator peak RSS (VmHWM) / RSS when settled",
            format!(
                "{:.1} MiB / {:.1} MiB",
                mib(self.peak_rss),
                mib(self.settled_rss)
            ),
        );
        let mut out = format!(
            "\n### N = {}{}\n\n| measure | value |\n|---|---|\n",
            self.n,
            if self.unrelated > 0 {
                format!(", {} unrelated Secrets", self.unrelated)
            } else {
                String::new()
            }
        );
        for (k, v) in rows {
            out.push_str(&format!("| {k} | {v} |\n"));
        }
        out.push_str(&self.restart_block());
        out.push_str(&self.targets());
        out
    }

    /// Issue 14's restart figures, as their own block: what restarting a settled fleet costs.
    fn restart_block(&self) -> String {
        let Some(s) = &self.steady else {
            return String::new();
        };
        let periods = (s.window.as_secs() / s.resync.as_secs().max(1)).max(1) as usize;
        let per_tenant: Vec<usize> = s
            .restart_calls
            .local
            .iter()
            .zip(s.window_calls.local.iter())
            .map(|(restart, window)| restart.len() + window.len().div_ceil(periods))
            .collect();
        let worst = per_tenant.iter().copied().max().unwrap_or(0);
        let restart_pass: usize = s.restart_calls.local.iter().map(Vec::len).sum();
        let leases = s.restart_writes.writes_to("leases.coordination.k8s.io");
        let writes = s.restart_writes.writes() - leases;
        let mut out = format!(
            "\n#### Restart of the settled fleet (N = {}, resync {} s)\n\n| measure | value | target | |\n|---|---|---|---|\n",
            self.n,
            s.resync.as_secs()
        );
        out.push_str(&format!(
            "| AIC calls in the restart pass (all {} tenants) | {restart_pass} | | |\n",
            self.tenants
        ));
        out.push_str(&format!(
            "| AIC calls per tenant within one resync of the restart (worst tenant) | {worst} | ≤ 2 | {} |\n",
            met(worst <= 2)
        ));
        out.push_str(&format!(
            "| Kubernetes writes in the restart pass (Lease renewals apart: {leases}) | {writes} | 0 | {} |\n",
            met(writes == 0)
        ));
        out.push_str(&format!(
            "| operator start → /readyz 200 | {} | ≤ 30 s | {} |\n",
            s.readyz.map_or("not within 120 s".into(), |d| format!(
                "{:.1} s",
                d.as_secs_f64()
            )),
            met(s.readyz.is_some_and(|d| d <= Duration::from_secs(30)))
        ));
        out
    }

    fn targets(&self) -> String {
        let mut out = String::from("\n| target | measured | |\n|---|---|---|\n");
        let live = self.live_delay.as_secs_f64();
        if self.n == 1000 {
            let p99 = percentile(&self.local_latency, 99.0).unwrap_or(f64::MAX);
            out.push_str(&format!(
                "| apply → Ready p99 ≤ live delay + 3 s ({:.0} s) | {p99:.1} s | {} |\n",
                live + 3.0,
                met(p99 <= live + 3.0)
            ));
        }
        let after_last = self.apply_to_ready.as_secs_f64() - self.applied.as_secs_f64();
        out.push_str(&format!(
            "| all Ready within live delay + 30 s of the last create ({:.0} s) | {after_last:.1} s | {} |\n",
            live + 30.0,
            met(after_last <= live + 30.0)
        ));
        let calls = self.local_calls_per_cert();
        let (limit, at) = if self.n >= 10_000 {
            (1.1, "10,000")
        } else {
            (1.2, "1,000")
        };
        out.push_str(&format!(
            "| Local calls per cert apply→Ready ≤ {limit} (at N = {at}) | {calls:.2} | {} |\n",
            met(calls <= limit)
        ));
        let own_writes = per(self.local_changes, self.n);
        out.push_str(&format!(
            "| writes to each Local TenantCertificate itself ≤ 3 (Events apart) | {own_writes:.2} | {} |\n",
            met(own_writes <= 3.0)
        ));
        if self.resources() >= 10_000 {
            let peak = mib(self.peak_rss);
            out.push_str(&format!(
                "| operator peak RSS ≤ 100 MiB at 10,000 certificates + 100 Device-ID | {peak:.1} MiB | {} |\n",
                met(peak <= 100.0)
            ));
        }
        let w = self.writes_per_resource();
        out.push_str(&format!(
            "| Kubernetes writes per resource apply→Ready ≤ 4 | {w:.2} | {} |\n",
            met(w <= 4.0)
        ));
        let idle_writes = self.idle_writes + self.steady.as_ref().map_or(0, |s| s.window_writes);
        out.push_str(&format!(
            "| zero writes when nothing changed, Lease renewals apart | {idle_writes} | {} |\n",
            met(idle_writes == 0)
        ));
        let tokens = self
            .apply_calls
            .local
            .iter()
            .map(|log| log.iter().filter(|c| c.route == TOKEN_ROUTE).count())
            .max()
            .unwrap_or(0);
        out.push_str(&format!(
            "| one token per tenant per token lifetime (899 s; run shorter) | max {tokens} | {} |\n",
            met(tokens <= 1 || self.apply_to_ready > Duration::from_secs(899))
        ));
        if let Some(s) = &self.steady {
            let cycles = f64::from((s.window.as_secs() / s.resync.as_secs().max(1)).max(1) as u32);
            let per_hour = per(s.window_calls.local_total(), self.n) / cycles;
            out.push_str(&format!(
                "| steady state ≤ 1 tenant call per cert per hour | {per_hour:.3} | {} |\n",
                met(per_hour <= 1.0)
            ));
        }
        if (5000..10_000).contains(&self.resources()) {
            let peak = mib(self.peak_rss);
            out.push_str(&format!(
                "| operator RSS ≤ 100 MiB at 5,000 resources | {peak:.1} MiB | {} |\n",
                met(peak <= 100.0)
            ));
        }
        out
    }
}

/// One line per run, and the RSS growth that unrelated Secrets cause.
fn summary(reports: &[Report]) -> String {
    let mut out = String::from(
        "\n### Summary\n\n| N | unrelated Secrets | apply → all Ready | AIC calls / Local cert | writes / resource | steady calls / cert / h | peak RSS |\n|---|---|---|---|---|---|---|\n",
    );
    for r in reports {
        let steady = r.steady.as_ref().map_or("–".into(), |s| {
            let cycles = (s.window.as_secs() / s.resync.as_secs().max(1)).max(1) as f64;
            format!("{:.3}", per(s.window_calls.local_total(), r.n) / cycles)
        });
        out.push_str(&format!(
            "| {} | {} | {:.1} s | {:.2} | {:.2} | {} | {:.1} MiB |\n",
            r.n,
            r.unrelated,
            r.apply_to_ready.as_secs_f64(),
            r.local_calls_per_cert(),
            r.writes_per_resource(),
            steady,
            mib(r.peak_rss)
        ));
    }
    for pair in reports.windows(2) {
        if let [base, noisy] = pair
            && base.n == noisy.n
            && base.unrelated == 0
            && noisy.unrelated > 0
        {
            let growth = mib(noisy.peak_rss) - mib(base.peak_rss);
            out.push_str(&format!(
                "\nRSS growth with {} unrelated Secrets at N = {}: {growth:+.1} MiB (target ≤ 20 MiB: {})\n",
                noisy.unrelated,
                base.n,
                met(growth <= 20.0)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 100.0), Some(3.0));
        assert_eq!(percentile(&[7.0], 1.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn reads_kib_fields_of_proc_status() {
        let status = "Name:\tcertrotor\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(proc_status_bytes(status, "VmHWM"), Some(51200 * 1024));
        assert_eq!(proc_status_bytes(status, "VmRSS"), Some(40960 * 1024));
        assert_eq!(proc_status_bytes(status, "VmSwap"), None);
    }

    #[test]
    fn operator_delta_takes_out_the_bench_and_the_past() {
        let mut before = Stats::default();
        before.requests.insert((Verb::Create, "secrets".into()), 5);
        let mut after = before.clone();
        after.requests.insert((Verb::Create, "secrets".into()), 12);
        after.requests.insert((Verb::Patch, TCERT.into()), 3);
        let mut own = Stats::default();
        own.requests.insert((Verb::Create, "secrets".into()), 4);
        let d = operator_delta(&after, &before, &own);
        assert_eq!(d.count(Verb::Create, "secrets"), 3);
        assert_eq!(d.count(Verb::Patch, TCERT), 3);
        assert_eq!(d.writes(), 6);
    }

    #[test]
    fn classify_tells_status_from_finalizer_changes() {
        let base = serde_json::json!({"metadata": {"name": "a"}, "spec": {}});
        let fin = serde_json::json!({"metadata": {"name": "a", "finalizers": ["x"]}, "spec": {}});
        let st = serde_json::json!({"metadata": {"name": "a", "finalizers": ["x"]}, "spec": {}, "status": {"live": true}});
        assert_eq!(
            classify(&base, &fin),
            Changes {
                status: 0,
                finalizers: 1,
                other: 0
            }
        );
        assert_eq!(
            classify(&fin, &st),
            Changes {
                status: 1,
                finalizers: 0,
                other: 0
            }
        );
        assert_eq!(classify(&st, &st).other, 1);
    }

    #[test]
    fn calls_since_keeps_only_new_records() {
        let rec = |route: &str| CallRecord {
            method: "GET".into(),
            route: route.into(),
            status: 200,
        };
        let before = Calls {
            local: vec![vec![rec("a")]],
            tenant_mode: vec![],
            cie: vec![(1, 0, 0)],
        };
        let after = Calls {
            local: vec![vec![rec("a"), rec("b"), rec("b")]],
            tenant_mode: vec![rec("c")],
            cie: vec![(2, 1, 0)],
        };
        let d = calls_since(&after, &before);
        assert_eq!(by_route(&d.local[0]).get("b"), Some(&2));
        assert_eq!(d.local_total(), 2);
        assert_eq!(d.total(), 2 + 1 + 2);
    }
}
