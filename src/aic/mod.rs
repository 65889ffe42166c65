//! PingOne Advanced Identity Cloud client: tokens, CSR and certificate endpoints, typed errors.
