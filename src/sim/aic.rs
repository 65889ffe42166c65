//! PingOne AIC tenant simulator (`certrotor sim aic`).
