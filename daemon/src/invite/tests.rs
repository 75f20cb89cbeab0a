use super::*;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn codes_read_back_in_any_reasonable_spelling() {
    let c = Code::random(7);
    let text = c.to_string();
    assert!(text.starts_with("7-"), "{text}");
    assert_eq!(Code::parse(&text).unwrap(), c);
    assert_eq!(
        Code::parse(&text.to_uppercase().replace('-', " ")).unwrap(),
        c
    );
    assert_eq!(Code::parse(&format!(" {text} ")).unwrap(), c);
    for bad in [
        "",
        "7",
        "7-amber",
        "0-oak-elk",
        "100-oak-elk",
        "7-oak-notaword",
        "x-oak-elk",
    ] {
        assert!(Code::parse(bad).is_err(), "{bad:?}");
    }
    assert_eq!(c.password(), text.as_bytes());
}

#[test]
fn codes_draw_from_the_whole_list() {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4000 {
        let c = Code::random(1);
        seen.insert(c.words[0]);
        seen.insert(c.words[1]);
    }
    // 8,000 draws from 376 words leave none out but by a fluke (p < 1e-8).
    assert_eq!(seen.len(), WORDS.len());
}

#[test]
fn an_invite_is_claimed_once_and_remembered_after() {
    let mut inv = Invites::default();
    let now = Instant::now();
    let a = inv.create(secs(60), None, now).unwrap();
    let b = inv.create(secs(60), Some("bob".into()), now).unwrap();
    assert_eq!((a.number, b.number), (1, 2));
    assert_eq!(inv.list(now).len(), 2);
    assert!(inv.admits("carol", now));
    assert_eq!(inv.claim(2, "carol", now), Err(InviteFailure::NotForYou));
    let code = inv.claim(1, "carol", now).unwrap();
    assert_eq!(code.to_string(), a.code);
    assert_eq!(
        inv.claim(1, "dave", now),
        Err(InviteFailure::Used),
        "one attempt at a time"
    );
    inv.finish(1, now);
    assert_eq!(
        inv.claim(1, "carol", now),
        Err(InviteFailure::Used),
        "used up"
    );
    assert_eq!(inv.claim(9, "carol", now), Err(InviteFailure::Unknown));
    // The next invite does not reuse a remembered number.
    assert_eq!(inv.create(secs(60), None, now).unwrap().number, 3);
}

#[test]
fn invites_expire_are_cancelled_and_are_bounded() {
    let mut inv = Invites::default();
    let now = Instant::now();
    let a = inv.create(secs(1), None, now).unwrap();
    assert_eq!(
        inv.claim(a.number, "x", now + secs(2)),
        Err(InviteFailure::Expired)
    );
    assert!(inv.list(now + secs(2)).is_empty());
    // Remembered for a while (a handshake naming it hears why), but no
    // unknown peer is admitted for it: none is open.
    assert!(!inv.admits("x", now + secs(2)));
    assert_eq!(
        inv.claim(a.number, "x", now + secs(2) + REMEMBER),
        Err(InviteFailure::Unknown),
        "then forgotten"
    );
    let b = inv.create(secs(60), None, now).unwrap();
    assert_eq!(inv.cancel(&b.code, now).unwrap(), b.number);
    assert_eq!(inv.claim(b.number, "x", now), Err(InviteFailure::Cancelled));
    assert!(inv.cancel("42", now).is_err());
    for _ in 0..MAX_OPEN {
        inv.create(secs(60), None, now).unwrap();
    }
    assert!(inv.create(secs(60), None, now).is_err(), "at most MAX_OPEN");
    let first_open = inv.list(now)[0].number.to_string();
    inv.cancel(&first_open, now).unwrap();
    assert!(inv.create(Duration::ZERO, None, now).is_err());
    let long = inv.create(secs(10 * 24 * 3600), None, now).unwrap();
    assert_eq!(long.expires_in_ms, MAX_TTL.as_millis() as u64);
}

mod props {
    use proptest::prelude::*;

    use super::*;

    fn code() -> impl Strategy<Value = Code> {
        let n = WORDS.len() as u16;
        (1..=MAX_NUMBER, 0..n, 0..n).prop_map(|(number, a, b)| Code {
            number,
            words: [a, b],
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn every_code_reads_back_however_it_is_typed(
            c in code(),
            seps in prop::collection::vec(prop::sample::select(vec!["-", " ", "_", "  ", " - "]), 2),
            upper in any::<[bool; 2]>(),
        ) {
            let text = c.to_string();
            prop_assert_eq!(Code::parse(&text).unwrap(), c);
            let [a, b] = c.words.map(|w| WORDS[w as usize]);
            let case = |w: &str, up: bool| if up { w.to_uppercase() } else { w.to_string() };
            let typed = format!("{}{}{}{}{}", c.number, seps[0], case(a, upper[0]), seps[1], case(b, upper[1]));
            prop_assert_eq!(Code::parse(&typed).unwrap(), c);
        }

        #[test]
        fn any_text_is_a_code_or_an_error(s in "\\PC{0,40}") {
            if let Ok(c) = Code::parse(&s) {
                // What parses is a code in its one written form.
                prop_assert_eq!(Code::parse(&c.to_string()).unwrap(), c);
            }
        }
    }
}

/// The codes the documents show are codes p2pd would accept (an example
/// whose words are not in the list teaches people to mistrust real ones).
#[test]
fn the_documented_example_codes_are_real_codes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut seen = 0;
    for doc in ["README.md", "docs/security.md"] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        for word in text.split(|c: char| c.is_whitespace() || c == '`') {
            let parts: Vec<&str> = word.split('-').collect();
            let looks_like_a_code = parts.len() == 3
                && parts[0].parse::<u8>().is_ok()
                && parts[1..]
                    .iter()
                    .all(|w| w.chars().all(|c| c.is_ascii_lowercase()));
            if looks_like_a_code {
                assert!(Code::parse(word).is_ok(), "{doc}: {word:?} is not a code");
                seen += 1;
            }
        }
    }
    assert!(seen >= 3, "the examples were found ({seen})");
}
