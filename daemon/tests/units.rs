//! systemd/p2pd.service, checked offline as a user unit with
//! `systemd-analyze verify --user`. Skipped with one printed line where
//! systemd-analyze is absent (`apt-get install systemd`).

#[test]
fn user_unit_verifies() {
    let Some(tool) = p2p_testkit::systemd_analyze("p2pd unit") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = p2p_testkit::manifest_dir().join("../systemd/p2pd.service");
    let text = std::fs::read_to_string(src)
        .unwrap()
        .replace("/usr/local/bin/p2pd", env!("CARGO_BIN_EXE_p2pd"));
    let unit = dir.path().join("p2pd.service");
    std::fs::write(&unit, text).unwrap();
    p2p_testkit::systemd_verify(&tool, &[unit], Some(dir.path()));
}
