//! Test doubles: the two tenant simulators and the in-process Kubernetes API stand-in. They follow
//! the documented behaviour (../shared/API-NOTES.md); the code under test must not know it talks
//! to them.

pub mod aic;
pub mod certmanager;
pub mod cie;
pub mod kube;
