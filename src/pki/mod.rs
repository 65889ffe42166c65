//! Keys and CSRs (rcgen), PEM/X.509 parsing and chain checks, and a small CA for the simulators.
