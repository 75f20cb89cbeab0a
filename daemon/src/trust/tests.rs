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

mod props {
    //! The known_peers file is edited by people and by p2pd: whatever it
    //! holds, p2pd reads the pins it can, and its own edits keep every
    //! other line as it was.
    use proptest::prelude::*;

    use super::*;

    /// A line of the file: a pin (canonical form), a comment, a blank, or
    /// noise.
    #[derive(Debug, Clone)]
    enum L {
        Pin(String, [u8; 32]),
        Text(String),
    }

    fn line() -> impl Strategy<Value = L> {
        prop_oneof![
            3 => ("[a-e]{1,2}", any::<[u8; 32]>()).prop_map(|(id, b)| L::Pin(id, b)),
            1 => "#\\PC{0,20}".prop_map(L::Text),
            1 => " {0,3}".prop_map(L::Text),
            2 => "\\PC{0,40}".prop_map(L::Text),
        ]
    }

    fn render(l: &L) -> String {
        match l {
            L::Pin(id, b) => format!("{id} {} 2026-12-01T10:00:00Z", Fingerprint::from_bytes(*b)),
            L::Text(t) => t.clone(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn pins_are_read_and_an_edit_keeps_every_other_line(lines in prop::collection::vec(line(), 0..12)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("known_peers");
            let text: String = lines.iter().map(|l| render(l) + "\n").collect();
            std::fs::write(&path, &text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();

            // The model: the first pin of each ID holds.
            let mut expected: Vec<(String, Fingerprint)> = Vec::new();
            let mut kept_verbatim = Vec::new();
            for l in &lines {
                match l {
                    L::Pin(id, b) if !expected.iter().any(|(e, _)| e == id) => {
                        expected.push((id.clone(), Fingerprint::from_bytes(*b)));
                    }
                    other => kept_verbatim.push(render(other)),
                }
            }
            let mut s = TrustStore::open(path.clone(), TrustPolicy::Known);
            for (id, fp) in &expected {
                prop_assert_eq!(s.get(id), Some(*fp));
            }
            prop_assert_eq!(s.pins().count(), expected.len());

            s.set("zz", fp(9), Some("new".into())).unwrap();
            let after = std::fs::read_to_string(&path).unwrap();
            // Every line that was not a pin p2pd holds is still there, in
            // order (a subsequence of the new file).
            let mut rest = after.lines();
            for want in &kept_verbatim {
                prop_assert!(rest.any(|l| l == want), "lost {:?} from:\n{}\nnow:\n{}", want, text, after);
            }
            let mut again = TrustStore::open(path, TrustPolicy::Known);
            for (id, fp) in &expected {
                prop_assert_eq!(again.get(id), Some(*fp));
            }
            prop_assert_eq!(again.get("zz"), Some(fp(9)));
        }
    }
}
