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
fn hand_edits_apply_with_any_spacing_and_survive_rewrites() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("known_peers");
    // As `p2pctl trust --list` prints it: aligned, a `#` header; a tab too.
    let text = format!(
        "# ID   FINGERPRINT  ADDED  COMMENT\n\nbob    {}  2026-12-01T21:34:44Z  desk  by the window\ncarol\t{}\t2026-12-01T21:34:44Z\nbob {} 2026-12-02T08:00:00Z\n",
        fp(1),
        fp(2),
        fp(1)
    );
    std::fs::write(&path, &text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut s = store_in(&dir);
    assert_eq!(s.problems(), Vec::<String>::new());
    assert_eq!(s.get("bob"), Some(fp(1)));
    assert_eq!(s.get("carol"), Some(fp(2)));
    let list = s.list().unwrap();
    assert_eq!(list.len(), 2, "the same pin twice is one pin");
    assert_eq!(list[0].comment.as_deref(), Some("desk  by the window"));
    s.set("dave", fp(3), None).unwrap();
    let after = std::fs::read_to_string(&path).unwrap();
    assert!(after.starts_with("# ID   FINGERPRINT"), "{after}");
    // Pins are written back in the canonical form; other lines as they were.
    assert!(after.contains(&format!("carol {}", fp(2))), "{after}");
    assert!(after.contains(&format!("dave {}", fp(3))), "{after}");
}

/// Every way a store can be untrustworthy: it pins nothing, says which
/// file and line, and is never written while it is so (fails closed).
#[test]
fn a_store_that_cannot_be_fully_trusted_is_broken_and_never_written() {
    let good = |dir: &tempfile::TempDir| {
        let path = dir.path().join("known_peers");
        std::fs::write(&path, format!("bob {} 2026-12-01T21:34:44Z\n", fp(1))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    };
    type Spoil = Box<dyn Fn(&std::path::Path)>;
    let cases: Vec<(&str, Spoil)> = vec![
        (
            "writable by other users",
            Box::new(|p| {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o664)).unwrap()
            }),
        ),
        (
            "line 2:",
            Box::new(|p| {
                let mut t = std::fs::read_to_string(p).unwrap();
                t.push_str("carol not-a-fingerprint 2026-12-01T21:34:44Z\n");
                std::fs::write(p, t).unwrap();
            }),
        ),
        (
            "line 2: a second key for bob (line 1",
            Box::new(|p| {
                let mut t = std::fs::read_to_string(p).unwrap();
                t.push_str(&format!("bob {} 2026-12-01T21:34:44Z\n", fp(9)));
                std::fs::write(p, t).unwrap();
            }),
        ),
        (
            "cannot read it",
            Box::new(|p| {
                let mut b = std::fs::read(p).unwrap();
                b.extend_from_slice(b"# caf\xe9\n");
                std::fs::write(p, b).unwrap();
            }),
        ),
    ];
    for (why, spoil) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = good(&dir);
        let mut s = store_in(&dir);
        assert_eq!(s.get("bob"), Some(fp(1)));
        spoil(&path);
        let before = std::fs::read(&path).unwrap();
        let broken = s.check().unwrap_err();
        assert!(
            broken.problems.iter().any(|p| p.contains(why)),
            "{why}: {broken}"
        );
        assert!(broken.to_string().contains(&path.display().to_string()));
        assert_eq!(s.get("bob"), None, "{why}");
        assert!(s.list().is_err(), "{why}");
        assert!(s.set("carol", fp(2), None).is_err(), "{why}");
        assert!(s.remove("bob").is_err(), "{why}");
        assert!(s.pin_first("carol", fp(2), "tofu").is_err(), "{why}");
        assert_eq!(std::fs::read(&path).unwrap(), before, "{why}: rewritten");
    }
    // A missing file is an empty store, not a broken one.
    let dir = tempfile::tempdir().unwrap();
    let mut s = store_in(&dir);
    assert!(s.check().is_ok());
    assert_eq!(s.list().unwrap(), Vec::new());
}

#[test]
fn a_pin_added_by_hand_meanwhile_is_not_overwritten_on_first_contact() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store_in(&dir);
    assert_eq!(s.pin_first("bob", fp(1), "tofu").unwrap(), FirstPin::Added);
    assert_eq!(
        s.pin_first("bob", fp(1), "tofu").unwrap(),
        FirstPin::AlreadyPinned
    );
    let path = dir.path().join("known_peers");
    let mut t = std::fs::read_to_string(&path).unwrap();
    t.push_str(&format!("carol {} 2026-12-01T21:34:44Z by hand\n", fp(7)));
    std::fs::write(&path, t).unwrap();
    assert_eq!(
        s.pin_first("carol", fp(2), "tofu").unwrap(),
        FirstPin::Conflict(fp(7))
    );
    assert_eq!(s.get("carol"), Some(fp(7)));
}

mod props {
    //! The known_peers file is edited by people and by p2pd. Whatever it
    //! holds, either every line is understood (comments, blanks, pins; the
    //! same pin twice) and p2pd reads every pin and its edits keep every
    //! other line, or the store is broken: it pins nothing and p2pd never
    //! writes it.
    use proptest::prelude::*;

    use super::*;

    /// A line of the file: a pin (with any spacing), a comment, a blank,
    /// or noise.
    #[derive(Debug, Clone)]
    enum L {
        Pin(String, [u8; 2], String),
        Text(String),
    }

    fn line() -> impl Strategy<Value = L> {
        prop_oneof![
            4 => ("[a-e]{1,2}", any::<[u8; 2]>(), "[ \t]{1,4}")
                .prop_map(|(id, b, sep)| L::Pin(id, b, sep)),
            1 => "#\\PC{0,20}".prop_map(L::Text),
            1 => "[ \t]{0,3}".prop_map(L::Text),
            1 => "\\PC{0,40}".prop_map(L::Text),
        ]
    }

    /// Few distinct keys, so that one ID pinned twice with the same key
    /// happens as well as with another.
    fn key(b: [u8; 2]) -> Fingerprint {
        let bytes: Vec<u8> = [b[0] % 2, b[1] % 2].repeat(16);
        Fingerprint::from_bytes(bytes.try_into().unwrap())
    }

    fn render(l: &L) -> String {
        match l {
            L::Pin(id, b, sep) => format!("{id}{sep}{}{sep}2026-12-01T10:00:00Z", key(*b)),
            L::Text(t) => t.clone(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn pins_are_all_read_or_the_store_is_broken_and_untouched(lines in prop::collection::vec(line(), 0..12)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("known_peers");
            let text: String = lines.iter().map(|l| render(l) + "\n").collect();
            std::fs::write(&path, &text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();

            // The model: noise that is not blank or a comment breaks it, and
            // so does a second key for one ID.
            let mut expected: Vec<(String, Fingerprint)> = Vec::new();
            let mut broken = false;
            let mut kept_verbatim = Vec::new();
            for l in &lines {
                match l {
                    L::Pin(id, b, _) => match expected.iter().find(|(e, _)| e == id) {
                        None => expected.push((id.clone(), key(*b))),
                        Some((_, k)) if *k == key(*b) => kept_verbatim.push(render(l)),
                        Some(_) => broken = true,
                    },
                    L::Text(t) => {
                        let t2 = t.trim();
                        if parse_pin(t2).is_ok() {
                            // Noise that happens to be a pin: not this model's case.
                            return Ok(());
                        }
                        if !(t2.is_empty() || t2.starts_with('#')) {
                            broken = true;
                        }
                        kept_verbatim.push(t.clone());
                    }
                }
            }
            let mut s = TrustStore::open(path.clone(), TrustPolicy::Known);
            if broken {
                prop_assert!(s.check().is_err());
                for (id, _) in &expected {
                    prop_assert_eq!(s.get(id), None);
                }
                prop_assert!(s.set("zz", fp(9), None).is_err());
                prop_assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
                return Ok(());
            }
            prop_assert!(s.check().is_ok(), "{:?}", s.problems());
            for (id, fp) in &expected {
                prop_assert_eq!(s.get(id), Some(*fp));
            }
            prop_assert_eq!(s.list().unwrap().len(), expected.len());

            s.set("zz", fp(9), Some("new".into())).unwrap();
            let after = std::fs::read_to_string(&path).unwrap();
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
