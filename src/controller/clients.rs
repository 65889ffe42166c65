//! One AIC client per tenant and credential, so each tenant gets one cached token, shared by all
//! the resources that use it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::aic::limit::RateLimiter;
use crate::aic::{AicClient, AicError, CallObserver, ClientOptions, Credentials};

pub struct AicClients {
    clients: Mutex<HashMap<String, Arc<AicClient>>>,
    observer: Option<Arc<dyn CallObserver>>,
    /// Requests per second per tenant (0: no limit); one bucket per tenant URL, whatever the
    /// credentials.
    rate_limit: f64,
    limiters: Mutex<HashMap<String, Arc<RateLimiter>>>,
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
        }
    }

    /// The tenant's bucket: a second's worth of requests at once, then the rate.
    fn limiter(&self, url: &str) -> Option<Arc<RateLimiter>> {
        if self.rate_limit <= 0.0 {
            return None;
        }
        let key = url.trim_end_matches('/').to_ascii_lowercase();
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
    pub fn get(
        &self,
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
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
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
        clients.insert(key, client.clone());
        Ok(client)
    }
}
