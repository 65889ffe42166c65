//! Day-2 commands for people: `status`, `renew`, `pause`, `resume`, `inspect`. They run from
//! the same binary, also as the kubectl plugin `kubectl certrotor …`, and connect as kubectl
//! does (`--kubeconfig`, `--context`, `-n`, `-A`, the context's namespace by default).
//!
//! Exit codes, for scripts: 0 when the answer is yes (Ready, accepted, done), 1 when it is no
//! (not Ready, refused, would spend the Device-ID budget), 2 on an error (no kubeconfig, no such
//! resource, bad input), with a one-line message on stderr.

mod inspect;
mod status;
mod time;

use anyhow::{Context as _, anyhow};
use clap::{Args, Subcommand, ValueEnum};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};

use crate::api::{self, DeviceIdCredential, TenantCertificate};

pub use inspect::InspectCommand;

/// The resource kinds, by the names kubectl accepts for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// TenantCertificate (also `tenantcertificate`, `tenantcertificates`).
    #[value(alias = "tenantcertificate", alias = "tenantcertificates")]
    Tcert,
    /// DeviceIdCredential (also `deviceidcredential`, `deviceidcredentials`).
    #[value(alias = "deviceidcredential", alias = "deviceidcredentials")]
    Didc,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Tcert => "TenantCertificate",
            Kind::Didc => "DeviceIdCredential",
        }
    }
}

/// How to reach the cluster, as kubectl's flags say it.
#[derive(Args, Debug, Clone, Default)]
pub struct KubeArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Namespace (default: the context's namespace, else `default`).
    #[arg(short = 'n', long, global = true, value_name = "NS")]
    pub namespace: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Day2 {
    /// Conditions, certificates, recent Events and (Device-ID) the refresh budget of one
    /// resource. Exit 0 when Ready, 1 when not, 2 on error.
    Status {
        kind: Kind,
        name: String,
        /// Events to show.
        #[arg(long, default_value_t = 5)]
        events: usize,
        /// TenantCertificate: also ask the tenant (one read-only list, with the resource's
        /// credentials Secret) for the notAfter, active and live of every certificate id in
        /// status, pending and previous ones included.
        #[arg(long)]
        from_tenant: bool,
    },
    /// Rotate now: set `certrotor.io/renew` to a fresh value. For Device-ID, refuses when the
    /// refresh budget would not allow the call yet, unless `--force`.
    Renew {
        kind: Kind,
        /// The resource (or `--all`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Every resource of the kind in the namespace (with -A, in every namespace).
        #[arg(long)]
        all: bool,
        /// With --all: every namespace.
        #[arg(short = 'A', long = "all-namespaces", requires = "all")]
        all_namespaces: bool,
        /// Device-ID: set the annotation even when the budget does not allow a call yet (the
        /// operator still waits for the budget; it never overspends).
        #[arg(long)]
        force: bool,
    },
    /// Stop all tenant calls for a resource (`certrotor.io/paused: "true"`).
    Pause { kind: Kind, name: String },
    /// Clear `certrotor.io/paused`.
    Resume { kind: Kind, name: String },
    /// Decode a tls.crt and run the checks the operator applies before any tenant call.
    #[command(subcommand)]
    Inspect(InspectCommand),
}

/// A client and the namespace to use, as kubectl would pick them.
pub async fn connect(args: &KubeArgs) -> anyhow::Result<(Client, String)> {
    let kubeconfig = match &args.kubeconfig {
        Some(path) => Kubeconfig::read_from(path)
            .with_context(|| format!("reading kubeconfig {}", path.display()))?,
        None => Kubeconfig::read()
            .map_err(|e| anyhow!("no kubeconfig ({e}); pass --kubeconfig or set KUBECONFIG"))?,
    };
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let config = Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .context("loading kubeconfig")?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).context("creating the Kubernetes client")?;
    Ok((client, namespace))
}

/// Runs one day-2 command; the exit code (see the module docs).
pub async fn run(command: Day2, kube: KubeArgs) -> anyhow::Result<i32> {
    match command {
        Day2::Inspect(InspectCommand::File { path, key }) => inspect::file(&path, key.as_deref()),
        Day2::Inspect(InspectCommand::Secret { name }) => {
            let (client, ns) = connect(&kube).await?;
            inspect::secret(client, &ns, &name).await
        }
        Day2::Status {
            kind,
            name,
            events,
            from_tenant,
        } => {
            let (client, ns) = connect(&kube).await?;
            status::show(client, &ns, kind, &name, events, from_tenant).await
        }
        Day2::Renew {
            kind,
            name,
            all,
            all_namespaces,
            force,
        } => {
            let (client, ns) = connect(&kube).await?;
            renew(
                client,
                &ns,
                kind,
                name.as_deref(),
                all,
                all_namespaces,
                force,
            )
            .await
        }
        Day2::Pause { kind, name } => {
            let (client, ns) = connect(&kube).await?;
            set_annotation(
                &client,
                &ns,
                kind,
                &name,
                api::PAUSED_ANNOTATION,
                Some("true"),
            )
            .await?;
            println!(
                "{} {ns}/{name} paused: no tenant calls until resumed",
                kind.name()
            );
            Ok(0)
        }
        Day2::Resume { kind, name } => {
            let (client, ns) = connect(&kube).await?;
            set_annotation(&client, &ns, kind, &name, api::PAUSED_ANNOTATION, None).await?;
            println!("{} {ns}/{name} resumed", kind.name());
            Ok(0)
        }
    }
}

/// Sets (or, with `None`, removes) one annotation with a merge patch.
async fn set_annotation(
    client: &Client,
    ns: &str,
    kind: Kind,
    name: &str,
    key: &str,
    value: Option<&str>,
) -> anyhow::Result<()> {
    let patch = serde_json::json!({"metadata": {"annotations": {key: value}}});
    let result = match kind {
        Kind::Tcert => patch_merge::<TenantCertificate>(client, ns, name, &patch).await,
        Kind::Didc => patch_merge::<DeviceIdCredential>(client, ns, name, &patch).await,
    };
    result.map_err(|e| not_found_or(e, kind, ns, name))
}

async fn patch_merge<K>(
    client: &Client,
    ns: &str,
    name: &str,
    patch: &serde_json::Value,
) -> Result<(), kube::Error>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(|_| ())
}

/// kube's errors, with a plain sentence for the common one.
fn not_found_or(e: kube::Error, kind: Kind, ns: &str, name: &str) -> anyhow::Error {
    match e {
        kube::Error::Api(s) if s.code == 404 => {
            anyhow!("{} {ns}/{name} not found", kind.name())
        }
        other => anyhow::Error::new(other).context(format!("{} {ns}/{name}", kind.name())),
    }
}

/// (namespace, name) of every resource `renew --all` covers.
async fn targets(
    client: &Client,
    ns: &str,
    kind: Kind,
    all_namespaces: bool,
) -> anyhow::Result<Vec<(String, String)>> {
    Ok(match kind {
        Kind::Tcert => names_of::<TenantCertificate>(client, ns, all_namespaces).await?,
        Kind::Didc => names_of::<DeviceIdCredential>(client, ns, all_namespaces).await?,
    })
}

async fn names_of<K>(
    client: &Client,
    ns: &str,
    all_namespaces: bool,
) -> Result<Vec<(String, String)>, kube::Error>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = if all_namespaces {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), ns)
    };
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|o| (o.namespace().unwrap_or_default(), o.name_any()))
        .collect())
}

async fn renew(
    client: Client,
    ns: &str,
    kind: Kind,
    name: Option<&str>,
    all: bool,
    all_namespaces: bool,
    force: bool,
) -> anyhow::Result<i32> {
    let targets = match (name, all) {
        (Some(name), _) => vec![(ns.to_string(), name.to_string())],
        (None, true) => targets(&client, ns, kind, all_namespaces).await?,
        (None, false) => return Err(anyhow!("name a resource or pass --all")),
    };
    if targets.is_empty() {
        println!("no {} to renew", kind.name());
        return Ok(0);
    }
    let now = jiff::Timestamp::now();
    let value = now.to_string();
    let mut code = 0;
    for (ns, name) in targets {
        if kind == Kind::Didc && !force {
            let didc = Api::<DeviceIdCredential>::namespaced(client.clone(), &ns)
                .get(&name)
                .await
                .map_err(|e| not_found_or(e, kind, &ns, &name))?;
            let status = didc.status.unwrap_or_default();
            let next = crate::controller::deviceid::plan::cert_next_allowed(&status, now);
            if next > now {
                println!(
                    "DeviceIdCredential {ns}/{name}: the refresh budget allows the next cert:refresh at {} ({}); not renewed (use --force to request it anyway: the operator waits for the budget)",
                    time::local(next),
                    time::relative(next, now)
                );
                code = 1;
                continue;
            }
        }
        set_annotation(
            &client,
            &ns,
            kind,
            &name,
            api::RENEW_ANNOTATION,
            Some(&value),
        )
        .await?;
        println!(
            "{} {ns}/{name}: renewal requested ({}={value})",
            kind.name(),
            api::RENEW_ANNOTATION
        );
    }
    Ok(code)
}
