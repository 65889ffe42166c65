//! One reconciler per kind plus the shared context, error policy, finalizers and events.

pub mod deviceid;
