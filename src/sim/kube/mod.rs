//! In-process Kubernetes API stand-in: a test double and the embedded default for `certrotor demo`.
