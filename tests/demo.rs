//! `certrotor demo`, the README's first command, run as the real binary.

#[test]
fn demo_tells_the_whole_story_and_exits_zero() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_certrotor"))
        .args(["demo", "--timeout", "100s"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for step in [
        "CertificateRequest identity/sso-example-com-",
        "awaiting approval",
        "issued by the CA issuer",
        "WaitingForLive",
        "Ready=True Live",
        "(SecretChanged)",
        "(RenewRequested)",
        "all resources Ready",
    ] {
        assert!(stdout.contains(step), "timeline lacks {step:?}:\n{stdout}");
    }
}
