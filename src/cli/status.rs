//! `certrotor status (tcert|didc) NAME`: one screen that says where a resource stands.

use std::fmt::Write as _;

use jiff::Timestamp;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use super::time::{local, relative};
use super::{Kind, not_found_or};
use crate::api::{self, DeviceIdCredential, TenantCertificate};
use crate::cie::budget;
use crate::controller::deviceid::plan;

pub async fn show(
    client: Client,
    ns: &str,
    kind: Kind,
    name: &str,
    events: usize,
    from_tenant: bool,
) -> anyhow::Result<i32> {
    let now = Timestamp::now();
    let (text, conditions, uid) = match kind {
        Kind::Tcert => {
            let obj = Api::<TenantCertificate>::namespaced(client.clone(), ns)
                .get(name)
                .await
                .map_err(|e| not_found_or(e, kind, ns, name))?;
            let status = obj.status.clone().unwrap_or_default();
            let remote = if from_tenant {
                Some(tenant_view(&client, ns, &obj).await)
            } else {
                None
            };
            (
                tenant_certificate(&obj, now, remote.as_ref()),
                status.conditions,
                obj.uid().unwrap_or_default(),
            )
        }
        Kind::Didc => {
            let obj = Api::<DeviceIdCredential>::namespaced(client.clone(), ns)
                .get(name)
                .await
                .map_err(|e| not_found_or(e, kind, ns, name))?;
            let status = obj.status.clone().unwrap_or_default();
            (
                device_id_credential(&obj, now),
                status.conditions,
                obj.uid().unwrap_or_default(),
            )
        }
    };
    let mut out = format!("{} {ns}/{name}\n", kind.name());
    out.push_str(&conditions_table(&conditions, now));
    out.push_str(&text);
    out.push_str(&recent_events(&client, ns, &uid, events, now).await);
    print!("{out}");
    Ok(if api::is_true(&conditions, api::READY) {
        0
    } else {
        1
    })
}

fn or_dash(s: Option<&str>) -> &str {
    s.filter(|s| !s.is_empty()).unwrap_or("-")
}

/// `2027-01-30T00:00:00Z (in 64d)`, or `-`.
fn when(t: Option<&str>, now: Timestamp) -> String {
    match t.and_then(|t| t.parse::<Timestamp>().ok()) {
        Some(ts) => format!("{ts} ({})", relative(ts, now)),
        None => or_dash(t).to_string(),
    }
}

fn flag(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "true",
        Some(false) => "false",
        None => "-",
    }
}

fn conditions_table(conditions: &[Condition], now: Timestamp) -> String {
    let mut out = String::from("Conditions:\n");
    if conditions.is_empty() {
        out.push_str("  (none yet: the operator has not reconciled it)\n");
        return out;
    }
    let _ = writeln!(
        out,
        "  {:<12} {:<7} {:<28} {:<10} MESSAGE",
        "TYPE", "STATUS", "REASON", "SINCE"
    );
    for c in conditions {
        let since = relative(c.last_transition_time.0, now);
        let _ = writeln!(
            out,
            "  {:<12} {:<7} {:<28} {:<10} {}",
            c.type_, c.status, c.reason, since, c.message
        );
    }
    out
}

/// The tenant's certificates by id, or why they could not be read.
type TenantView = Result<std::collections::BTreeMap<String, crate::aic::Certificate>, String>;

/// One list of the tenant's certificates, with the credentials the operator uses.
async fn tenant_view(client: &Client, ns: &str, obj: &TenantCertificate) -> TenantView {
    use k8s_openapi::api::core::v1::Secret;
    let tenant = &obj.spec.tenant;
    let name = &tenant.credentials_secret_ref.name;
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| format!("reading Secret {ns}/{name}: {e}"))?
        .ok_or_else(|| format!("credentials Secret {ns}/{name} not found"))?;
    let data = crate::controller::tenant::source::secret_data(&secret)
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    let credentials =
        crate::aic::Credentials::from_secret_data(&data).map_err(|e| e.to_string())?;
    let aic = crate::aic::AicClient::new(
        &tenant.url,
        credentials,
        tenant.ca_bundle.as_deref(),
        crate::aic::ClientOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    let list = aic
        .list_certificates()
        .await
        .map_err(|e| format!("listing the tenant's certificates: {e}"))?;
    Ok(list.into_iter().map(|c| (c.id.clone(), c)).collect())
}

fn tenant_certificate(
    obj: &TenantCertificate,
    now: Timestamp,
    remote: Option<&TenantView>,
) -> String {
    let s = obj.status.clone().unwrap_or_default();
    // What the tenant says of an id: (notAfter, active, live).
    let from_tenant = |id: &str| -> Option<[String; 3]> {
        let list = remote?.as_ref().ok()?;
        Some(match list.get(id) {
            Some(c) => [
                when(c.expire_time.as_deref(), now),
                flag(Some(c.active)).into(),
                flag(Some(c.live)).into(),
            ],
            None => ["(not in the tenant)".into(), "-".into(), "-".into()],
        })
    };
    // (role, id, not after, active, live, note)
    let mut rows: Vec<[String; 6]> = vec![[
        "current".into(),
        or_dash(s.certificate_id.as_deref()).into(),
        when(s.not_after.as_deref(), now),
        flag(s.active).into(),
        flag(s.live).into(),
        String::new(),
    ]];
    if let Some(p) = &s.pending {
        let id = p
            .certificate_id
            .clone()
            .or_else(|| p.csr.as_ref().map(|c| format!("(CSR {})", c.id)))
            .unwrap_or_else(|| "(not created yet)".into());
        rows.push([
            "pending".into(),
            id,
            "-".into(),
            "-".into(),
            "-".into(),
            format!("{} since {}", p.reason, when(Some(&p.since), now)),
        ]);
    }
    for id in &s.previous_certificate_ids {
        rows.push([
            "previous".into(),
            id.clone(),
            "-".into(),
            "-".into(),
            "-".into(),
            String::new(),
        ]);
    }
    for row in &mut rows {
        if let Some([after, active, live]) = from_tenant(&row[1]) {
            row[2] = after;
            row[3] = active;
            row[4] = live;
        }
    }
    let id_width = rows.iter().map(|r| r[1].len()).max().unwrap_or(2).max(2);
    let after_width = rows.iter().map(|r| r[2].len()).max().unwrap_or(9).max(9);
    let mut out = String::from("Certificates:\n");
    let _ = writeln!(
        out,
        "  {:<9} {:<id_width$} {:<after_width$} {:<6} LIVE",
        "ROLE", "ID", "NOT AFTER", "ACTIVE"
    );
    for [role, id, after, active, live, note] in &rows {
        let line = format!(
            "  {role:<9} {id:<id_width$} {after:<after_width$} {active:<6} {live:<4} {note}"
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    match remote {
        Some(Ok(_)) => {
            let _ = writeln!(
                out,
                "  (notAfter, active and live as the tenant reports them now)"
            );
        }
        Some(Err(why)) => {
            let _ = writeln!(out, "  (the tenant could not be asked: {why})");
        }
        None => {
            let _ = writeln!(
                out,
                "  (as recorded in status; --from-tenant asks the tenant about every id)"
            );
        }
    }
    let _ = writeln!(out, "Subject:  {}", or_dash(s.subject.as_deref()));
    if !s.subject_alternative_names.is_empty() {
        let _ = writeln!(out, "SANs:     {}", s.subject_alternative_names.join(", "));
    }
    let _ = writeln!(out, "Issuer:   {}", or_dash(s.issuer.as_deref()));
    let _ = writeln!(out, "Renewal:  {}", when(s.renewal_time.as_deref(), now));
    if let Some(csr) = &s.csr {
        let _ = writeln!(out, "CSR:      {}", csr.id);
    }
    if let Some(t) = s.next_attempt_time.as_deref() {
        let _ = writeln!(out, "Retry:    {}", when(Some(t), now));
    }
    if api::is_paused(&obj.metadata) {
        let _ = writeln!(out, "Paused:   yes ({}: \"true\")", api::PAUSED_ANNOTATION);
    }
    out
}

fn device_id_credential(obj: &DeviceIdCredential, now: Timestamp) -> String {
    let s = obj.status.clone().unwrap_or_default();
    let mut out = String::from("Certificate:\n");
    let _ = writeln!(
        out,
        "  certName {}  serial {}",
        or_dash(s.cert_name.as_deref()),
        or_dash(s.serial_number.as_deref())
    );
    let _ = writeln!(out, "  notAfter  {}", when(s.not_after.as_deref(), now));
    let _ = writeln!(out, "  renewal   {}", when(s.renewal_time.as_deref(), now));
    let _ = writeln!(
        out,
        "  Secret    {} (kubernetes.io/tls)",
        obj.spec.secret_name
    );
    if let Some(d) = s.deleted_cert_name.as_deref().filter(|d| !d.is_empty()) {
        let _ = writeln!(out, "  the vendor evicted {d} on the last refresh");
    }
    let attempts = budget::parse_attempts(&s.attempts, now);
    let limits = budget::CERT_REFRESH;
    let allowed = crate::ops::metrics::calls_allowed_now(&limits, &attempts, now);
    let next = plan::cert_next_allowed(&s, now);
    let _ = writeln!(
        out,
        "Refresh budget (cert:refresh: {} at once, then {} per {}m):",
        limits.burst,
        limits.per_window,
        limits.window.as_secs() / 60
    );
    let _ = writeln!(
        out,
        "  attempts recorded  {}{}",
        attempts.len(),
        attempts
            .last()
            .map(|t| format!(" (last {})", relative(*t, now)))
            .unwrap_or_default()
    );
    let _ = writeln!(out, "  calls allowed now  {allowed}");
    let _ = writeln!(
        out,
        "  next allowed       {} ({})",
        local(next),
        if next <= now {
            "now".to_string()
        } else {
            relative(next, now)
        }
    );
    let token = match (&s.token_expiry, obj.spec.refresh_token) {
        (Some(expiry), _) => format!("expires {}", when(Some(expiry), now)),
        (None, true) => {
            "expiry unknown (refreshed every spec.tokenRefreshInterval, default 24h)".into()
        }
        (None, false) => "not refreshed by certrotor (spec.refreshToken is false)".into(),
    };
    let _ = writeln!(out, "Token:    {token}");
    if api::is_paused(&obj.metadata) {
        let _ = writeln!(out, "Paused:   yes ({}: \"true\")", api::PAUSED_ANNOTATION);
    }
    out
}

/// The newest `limit` Events about the object, oldest first, as `kubectl describe` lists them.
async fn recent_events(
    client: &Client,
    ns: &str,
    uid: &str,
    limit: usize,
    now: Timestamp,
) -> String {
    let mut out = String::from("Events:\n");
    let listed = Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await;
    let mut events: Vec<Event> = match listed {
        Ok(list) => list
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == Some(uid))
            .collect(),
        Err(e) => {
            let _ = writeln!(out, "  (cannot list Events: {e})");
            return out;
        }
    };
    let seen = |e: &Event| {
        e.series
            .as_ref()
            .map(|s| s.last_observed_time.0)
            .or_else(|| e.event_time.as_ref().map(|t| t.0))
            .unwrap_or(Timestamp::UNIX_EPOCH)
    };
    events.sort_by_key(seen);
    if events.is_empty() {
        out.push_str("  <none>\n");
        return out;
    }
    let skip = events.len().saturating_sub(limit);
    for e in &events[skip..] {
        let count = e
            .series
            .as_ref()
            .map(|s| format!(" (x{})", s.count))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:<10} {:<8} {:<28} {}{count}",
            relative(seen(e), now),
            e.type_.as_deref().unwrap_or("-"),
            e.reason.as_deref().unwrap_or("-"),
            e.note.as_deref().unwrap_or("")
        );
    }
    out
}
