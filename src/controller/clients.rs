//! One AIC client per tenant and credential, so each tenant gets one cached token, shared by all
//! the resources that use it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::aic::{AicClient, AicError, CallObserver, ClientOptions, Credentials};

pub struct AicClients {
    clients: Mutex<HashMap<String, Arc<AicClient>>>,
    observer: Option<Arc<dyn CallObserver>>,
}

impl AicClients {
    pub fn new(observer: Option<Arc<dyn CallObserver>>) -> Self {
        Self {
            clients: Mutex::new(HashMap::new()),
            observer,
        }
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
        let mut client = AicClient::new(url, creds, ca_bundle, ClientOptions::default())?;
        if let Some(observer) = &self.observer {
            client = client.with_observer(observer.clone());
        }
        let client = Arc::new(client);
        clients.insert(key, client.clone());
        Ok(client)
    }
}
