use std::os::unix::fs::PermissionsExt;

use super::*;

fn fp(b: u8) -> Fingerprint {
    Fingerprint::from_bytes([b; 32])
}

fn store_in(dir: &tempfile::TempDir) -> TrustStore {
    TrustStore::open(dir.path().join("known_peers"), TrustPolicy::Known)
}

#[test]
fn pins_are_kept_replaced_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store_in(&dir);
    assert_eq!(s.get("bob"), None);
    let (pin, replaced) = s.set("bob", fp(1), Some("laptop".into())).unwrap();
    assert_eq!((pin.fingerprint, replaced), (fp(1), None));
    assert_eq!(s.get("bob"), Some(fp(1)));
    let (_, replaced) = s.set("bob", fp(2), None).unwrap();
    assert_eq!(replaced, Some(fp(1)));
    // A second store sees what the first wrote (one file, re-read).
    let mut other = store_in(&dir);
    assert_eq!(other.get("bob"), Some(fp(2)));
    assert!(other.remove("bob").unwrap());
    assert!(!other.remove("bob").unwrap());
    assert_eq!(s.get("bob"), None, "the change is seen without a restart");
    let mode = std::fs::metadata(dir.path().join("known_peers"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn hand_edits_apply_and_bad_lines_pin_nothing_but_survive_rewrites() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("known_peers");
    let text = format!(
        "# managed by hand\n\nbob {} 2026-12-01T21:34:44Z desk\ncarol not-a-fingerprint 2026-12-01T21:34:44Z\nbob {} 2026-12-01T21:34:44Z\n",
        fp(1),
        fp(2)
    );
    std::fs::write(&path, &text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut s = store_in(&dir);
    assert_eq!(s.get("bob"), Some(fp(1)));
    assert_eq!(s.get("carol"), None);
    let problems = s.problems();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].starts_with("line 4:"), "{problems:?}");
    assert!(problems[1].contains("second pin for bob"), "{problems:?}");
    let list = s.list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].comment.as_deref(), Some("desk"));
    s.set("dave", fp(3), None).unwrap();
    let after = std::fs::read_to_string(&path).unwrap();
    assert!(after.starts_with("# managed by hand\n"), "{after}");
    assert!(after.contains("carol not-a-fingerprint"), "{after}");
    assert!(after.contains(&format!("dave {}", fp(3))), "{after}");
}

#[test]
fn a_file_others_can_write_pins_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store_in(&dir);
    s.set("bob", fp(1), None).unwrap();
    let path = dir.path().join("known_peers");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert_eq!(s.get("bob"), None);
    assert!(s.problems()[0].contains("writable by other users"));
}
