//! certrotor: a Kubernetes operator that keeps SaaS tenant certificates valid, installed and
//! rotated — PingOne Advanced Identity Cloud (`TenantCertificate`) and Prisma Access Cloud
//! Identity Engine Third-Party Device-ID (`DeviceIdCredential`).

pub mod aic;
pub mod api;
pub mod certmanager;
pub mod cie;
pub mod cli;
pub mod controller;
pub mod demo;
pub mod ops;
pub mod pki;
pub mod sim;
pub mod telemetry;
