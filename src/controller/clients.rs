//! One AIC client per tenant and credential, so each tenant gets one cached token, shared by all
//! the resources that use it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::aic::limit::RateLimiter;
use crate::aic::{AicClient, AicError, CallObserver, ClientOptions, Credentials};

/// Clients not asked for this long are dropped (a credential rotated away, a tenant no
/// resource uses any more): the map does not grow with every credential a cluster ever had.
pub const IDLE_CLIENT: std::time::Duration = std::time::Duration::from_secs(3 * 3600);

pub struct AicClients {
    /// Key → (client, when it was last asked for).
    clients: Mutex<HashMap<String, (Arc<AicClient>, std::time::Instant)>>,
    observer: Option<Arc<dyn CallObserver>>,
    /// Requests per second per tenant (0: no limit); one bucket per tenant URL, whatever the
    /// credentials.
    rate_limit: f64,
    limiters: Mutex<HashMap<String, Arc<RateLimiter>>>,
    /// Credentials Secret (`namespace/name`) → the key of the client made from it last: after
    /// the Secret is deleted (namespace teardown), cleanup may still use that client's token.
    by_source: Mutex<HashMap<String, String>>,
}

impl AicClients {
    pub fn new(observer: Option<Arc<dyn CallObserver>>) -> Self {
        Self::with_rate_limit(observer, 0.0)
    }

    pub fn with_rate_limit(observer: Option<Arc<dyn CallObserver>>, rate_limit: f64) -> Self {
        Self {
            clients: Mutex::new(HashMap::new()),
            observer,
            rate_limit,
            limiters: Mutex::new(HashMap::new()),
            by_source: Mutex::new(HashMap::new()),
        }
    }

    /// The tenant's bucket: a second's worth of requests at once, then the rate.
    fn limiter(&self, url: &str) -> Option<Arc<RateLimiter>> {
        if self.rate_limit <= 0.0 {
            return None;
        }
        let key = limiter_key(url);
        let mut limiters = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        let burst = self.rate_limit.ceil().clamp(1.0, f64::from(u32::MAX)) as u32;
        Some(
            limiters
                .entry(key)
                .or_insert_with(|| Arc::new(RateLimiter::new(self.rate_limit, burst)))
                .clone(),
        )
    }

    /// The client for this tenant and credential content; a changed Secret gets a new client.
    /// `source` names the credentials Secret (`namespace/name`), for [`Self::cached_token`].
    pub fn get(
        &self,
        source: &str,
        url: &str,
        credentials: &std::collections::BTreeMap<String, Vec<u8>>,
        ca_bundle: Option<&str>,
    ) -> Result<Arc<AicClient>, AicError> {
        let mut hasher = Sha256::new();
        hasher.update(url.as_bytes());
        for (k, v) in credentials {
            hasher.update(k.as_bytes());
            hasher.update([0]);
            hasher.update(v);
            hasher.update([0]);
        }
        hasher.update(ca_bundle.unwrap_or_default().as_bytes());
        let key = format!("{:x}", hasher.finalize());
        self.by_source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(source.to_string(), key.clone());
        let now = std::time::Instant::now();
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((client, used)) = clients.get_mut(&key) {
            *used = now;
            return Ok(client.clone());
        }
        prune(&mut clients, now, IDLE_CLIENT);
        let creds = Credentials::from_secret_data(credentials)?;
        let options = ClientOptions {
            limiter: self.limiter(url),
            ..Default::default()
        };
        let mut client = AicClient::new(url, creds, ca_bundle, options)?;
        if let Some(observer) = &self.observer {
            client = client.with_observer(observer.clone());
        }
        let client = Arc::new(client);
        clients.insert(key, (client.clone(), now));
        self.by_source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, k| clients.contains_key(k));
        // Limiters of tenants no client uses any more go too.
        let urls: std::collections::HashSet<String> = clients
            .values()
            .map(|(c, _)| limiter_key(c.base_url().as_str()))
            .collect();
        self.limiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|url, _| urls.contains(url));
        Ok(client)
    }

    /// The client last made from the credentials Secret `source` for tenant `url`, if it still
    /// holds a token that needs no new request: the Secret itself may be gone. Only that
    /// Secret's own client qualifies, never another namespace's credentials for the same tenant.
    pub async fn cached_token(&self, source: &str, url: &str) -> Option<Arc<AicClient>> {
        let key = self
            .by_source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(source)
            .cloned()?;
        let client = self
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .map(|(c, _)| c.clone())?;
        if limiter_key(client.base_url().as_str()) != limiter_key(url) {
            return None;
        }
        client.has_fresh_token().await.then_some(client)
    }

    /// How many clients are kept (tests).
    pub fn len(&self) -> usize {
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn limiter_key(url: &str) -> String {
    url.trim_end_matches('/').to_ascii_lowercase()
}

/// Drops the clients not asked for within `idle`.
fn prune(
    clients: &mut HashMap<String, (Arc<AicClient>, std::time::Instant)>,
    now: std::time::Instant,
    idle: std::time::Duration,
) {
    clients.retain(|_, (_, used)| now.saturating_duration_since(*used) < idle);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn client() -> Arc<AicClient> {
        Arc::new(
            AicClient::new(
                "http://127.0.0.1:1",
                Credentials::AccessToken("t".into()),
                None,
                ClientOptions::default(),
            )
            .unwrap(),
        )
    }

    #[test]
    fn idle_clients_are_dropped_and_used_ones_kept() {
        let t0 = Instant::now();
        let mut map = HashMap::new();
        map.insert("old".to_string(), (client(), t0));
        map.insert(
            "used".to_string(),
            (client(), t0 + Duration::from_secs(3 * 3600)),
        );
        prune(&mut map, t0 + Duration::from_secs(4 * 3600), IDLE_CLIENT);
        assert_eq!(map.keys().collect::<Vec<_>>(), vec!["used"]);
    }

    #[test]
    fn a_rotated_credential_gets_a_new_client_and_the_same_limiter() {
        let clients = AicClients::with_rate_limit(None, 10.0);
        let creds = |token: &str| {
            std::collections::BTreeMap::from([(
                "accessToken".to_string(),
                token.as_bytes().to_vec(),
            )])
        };
        let a = clients
            .get("ns/a", "http://127.0.0.1:1", &creds("a"), None)
            .unwrap();
        let again = clients
            .get("ns/a", "http://127.0.0.1:1", &creds("a"), None)
            .unwrap();
        assert!(
            Arc::ptr_eq(&a, &again),
            "one client per tenant and credential"
        );
        assert_eq!(clients.len(), 1);
        let _b = clients
            .get("ns/b", "http://127.0.0.1:1", &creds("b"), None)
            .unwrap();
        assert_eq!(clients.len(), 2, "a new credential, a new client");
        assert_eq!(
            clients.limiters.lock().unwrap().len(),
            1,
            "one limiter per tenant, whatever the credentials"
        );
    }
}
