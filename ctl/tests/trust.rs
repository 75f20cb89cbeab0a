//! Peers that signald cannot fake: pinned keys checked in both roles, the
//! impostor story, a man in the middle rewriting fingerprints, the three
//! policies, and guarded sends.

use p2p_proto::control::{LinkState, ServerState};
use p2p_proto::identity::Fingerprint;
use p2p_testkit::relay::Rewriter;
use p2p_testkit::{Daemon, Signald, Tail};

/// Waits until `d` has stopped trying: registered, or refused with `needle`.
fn refused_at_signald(d: &Daemon, needle: &str) {
    d.wait_status(&format!("refused by signald ({needle})"), |s| {
        s.server.state != ServerState::Connected
            && s.server
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains(needle))
    });
}

#[test]
fn an_impostor_cannot_take_a_reserved_id_and_the_owner_gets_it_back() {
    let s = Signald::start();
    let alice = Daemon::start(&s.url(), "alice");
    let bob = Daemon::start_with(&s.url(), "bob", &["--allow-peer", "alice"]);
    alice.pair(&bob);
    alice.ok(&["unpair"]);
    bob.wait_idle();
    let alice_dir = alice.stop();

    // Another p2pd, another token: the ID is kept for the first one.
    let impostor = Daemon::builder(&s.url(), "alice").spawn();
    refused_at_signald(&impostor, "id_taken");
    drop(impostor);

    // The real alice, restarted with her state (token and key), is back.
    let alice = Daemon::builder(&s.url(), "alice").dir(alice_dir).start();
    assert_eq!(alice.status().id.as_deref(), Some("alice"));
    alice.ok(&["pair", "bob"]);
}

#[test]
fn without_the_reservation_the_impostor_registers_but_no_one_talks_to_it() {
    let s = Signald::start_plus(&["--id-reserve", "0"]);
    let alice = Daemon::start(&s.url(), "alice");
    let bob = Daemon::start_with(&s.url(), "bob", &["--allow-peer", "alice"]);
    alice.trust_each_other(&bob);
    let events = Tail::start(&bob, &["--json"]);
    drop(alice.stop());

    let impostor = Daemon::start(&s.url(), "alice");
    assert_eq!(impostor.status().id.as_deref(), Some("alice"));
    // It knows bob's public key, so it can try to pair with him.
    impostor.trust(&bob);
    let err = impostor.refused(&["pair", "bob"], "refused");
    assert!(err.contains("bob refused the pairing"), "{err}");
    let ev = events.wait_event("peer_disconnected");
    assert_eq!(ev["peer_id"], "alice");
    assert_eq!(ev["reason"], "identity_mismatch");
    bob.wait_idle();

    // The other way round: bob's pair sees the wrong key in the answer.
    let err = bob.refused(&["pair", "alice"], "does not match");
    let pinned = bob.ok(&["trust", "--list", "--json"]);
    let pinned: serde_json::Value = serde_json::from_str(&pinned).unwrap();
    let expected = pinned[0]["fingerprint"].as_str().unwrap().to_string();
    let received = impostor.status().fingerprint.to_string();
    assert!(err.contains(&expected) && err.contains(&received), "{err}");
    let ev = events.wait_event("peer_disconnected");
    assert_eq!(ev["reason"], "identity_mismatch");
    impostor.wait_idle();

    // Not one message passed either way.
    for d in [&bob, &impostor] {
        let st = d.status();
        assert_eq!(st.counters.messages_received, 0);
        assert_eq!(st.counters.pairings, 0, "no channel ever opened");
    }
}

#[test]
fn a_relay_that_rewrites_fingerprints_is_refused_by_whoever_it_lies_to() {
    let s = Signald::start();
    let fake = Fingerprint::from_bytes([0xAB; 32]);
    // In front of bob: alice's offer reaches him with a forged key.
    let mitm = Rewriter::start(&s.url(), fake);
    let alice = Daemon::start(&s.url(), "alice");
    let bob = Daemon::start(&mitm.url(), "bob");
    alice.trust_each_other(&bob);
    let events = Tail::start(&bob, &["--json"]);
    alice.refused(&["pair", "bob"], "refused");
    let ev = events.wait_event("peer_disconnected");
    assert_eq!(ev["reason"], "identity_mismatch");
    drop((alice, bob));

    // In front of the initiator: carol's answer reaches dave forged (new
    // IDs: alice's and bob's are reserved for their tokens now).
    let dave = Daemon::start(&mitm.url(), "dave");
    let carol = Daemon::start(&s.url(), "carol");
    dave.trust_each_other(&carol);
    let err = dave.refused(&["pair", "carol"], "does not match");
    assert!(
        err.contains(&fake.to_string()),
        "names the forged key: {err}"
    );
    for d in [&dave, &carol] {
        d.wait_idle();
        assert_eq!(d.status().counters.pairings, 0);
    }
}

#[test]
fn dtls_itself_refuses_a_certificate_that_is_not_the_described_one() {
    // With --trust any the daemons do not check the key, so the forged
    // fingerprint reaches DTLS, which must refuse the real certificate:
    // the whole design rests on it.
    let s = Signald::start();
    let mitm = Rewriter::start(&s.url(), Fingerprint::from_bytes([0xCD; 32]));
    let loose = ["--trust", "any", "--connect-timeout", "3s"];
    let alice = Daemon::start_with(&s.url(), "alice", &loose);
    let bob = Daemon::start_with(&mitm.url(), "bob", &loose);
    let tail = Tail::start(&bob, &[]);
    // Refused; the explanation ("did not open", or "no network path" when
    // bob gave up before alice's ICE reported connected, as happens under
    // load) is not what this test is about: nothing opened, nothing passed.
    let err = alice.refused(&["pair", "bob", "--timeout", "10s"], "bob");
    assert!(
        err.contains("did not open") || err.contains("no network path"),
        "{err}"
    );
    assert_eq!(alice.status().counters.pairings, 0);
    let out = alice.ctl(&["send", "leak"]);
    assert_eq!(out.status.code(), Some(1));
    drop(tail);
    assert_eq!(bob.status().counters.messages_received, 0);
}

#[test]
fn known_refuses_unknown_peers_in_both_roles_and_trust_applies_at_once() {
    let s = Signald::start();
    let alice = Daemon::start(&s.url(), "alice");
    let bob = Daemon::start(&s.url(), "bob");
    let events = Tail::start(&bob, &["--json"]);
    alice.refused(&["pair", "bob"], "not a trusted peer");
    // alice trusts bob, bob does not trust alice: bob refuses.
    alice.trust(&bob);
    alice.refused(&["pair", "bob"], "refused");
    assert_eq!(
        events.wait_event("peer_disconnected")["reason"],
        "not_trusted"
    );
    // No restart: bob trusts alice now and the pairing works.
    bob.trust(&alice);
    let out = alice.ok(&["pair", "bob"]);
    assert!(out.contains("key pinned"), "{out}");
    let st = bob.wait_open_with("alice");
    assert_eq!(
        st.peer.as_ref().and_then(|p| p.fingerprint),
        Some(alice.status().fingerprint)
    );
    // Untrusting the open peer ends the link.
    bob.ok(&["untrust", "alice"]);
    let ev = events.wait_event("peer_disconnected");
    assert_eq!(ev["reason"], "not_trusted");
    alice.wait_idle();
    alice.refused(&["pair", "bob"], "refused");
}

/// A hand edit that removes the open peer's pin ends the link, with no
/// request to the daemon: it looks at the file while a link exists.
#[test]
fn removing_the_open_peers_pin_by_hand_ends_the_link() {
    let s = Signald::start();
    let alice = Daemon::start(&s.url(), "alice");
    let bob = Daemon::start(&s.url(), "bob");
    alice.trust_each_other(&bob);
    alice.pair(&bob);
    let events = Tail::start(&bob, &["--json"]);
    let file = bob.state_dir().join("known_peers");
    let text = std::fs::read_to_string(&file).unwrap();
    let kept: String = text
        .lines()
        .filter(|l| !l.starts_with("alice "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(kept, text, "alice's pin was in {text}");
    // As an editor saves: a new file renamed over the old one.
    let tmp = file.with_extension("edit");
    std::fs::write(&tmp, kept).unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let ev = events.wait_event("peer_disconnected");
    assert_eq!(ev["reason"], "not_trusted");
    alice.wait_idle();
}

#[test]
fn tofu_pins_on_first_contact_and_refuses_a_changed_key() {
    let s = Signald::start();
    let alice = Daemon::start_with(&s.url(), "alice", &["--trust", "tofu"]);
    let bob = Daemon::start_with(&s.url(), "bob", &["--trust", "tofu"]);
    let out = alice.ok(&["pair", "bob"]);
    assert!(out.contains("pinned on first contact"), "{out}");
    bob.wait_open_with("alice");
    let listed = alice.ok(&["trust", "--list"]);
    assert!(
        listed.contains("bob") && listed.contains("tofu"),
        "{listed}"
    );
    alice.ok(&["unpair"]);
    bob.wait_idle();
    // A pairing with the pinned key is verified by the pin now.
    let out = alice.ok(&["pair", "bob"]);
    assert!(out.contains("key pinned"), "{out}");
    alice.ok(&["unpair"]);
    bob.wait_idle();
    // bob's key changes: alice refuses it.
    bob.ok(&["id", "--rotate"]);
    alice.refused(&["pair", "bob"], "does not match");
}

#[test]
fn any_marks_the_peer_unverified_and_send_to_refuses_it() {
    let s = Signald::start();
    let alice = Daemon::start_with(&s.url(), "alice", &["--trust", "any"]);
    let bob = Daemon::start_with(&s.url(), "bob", &["--trust", "any"]);
    let out = alice.ok(&["pair", "bob"]);
    assert!(out.contains("UNVERIFIED"), "{out}");
    let human = alice.ok(&["status"]);
    assert!(human.contains("accepted UNVERIFIED"), "{human}");
    bob.wait_open_with("alice");
    let tail = Tail::start(&bob, &[]);
    alice.ok(&["send", "plain send works"]);
    assert_eq!(tail.next_str(), "plain send works");
    alice.refused(&["send", "--to", "bob", "guarded"], "not verified");
}

#[test]
fn send_to_goes_only_to_the_named_verified_peer() {
    let s = Signald::start();
    let alice = Daemon::start(&s.url(), "alice");
    let bob = Daemon::start(&s.url(), "bob");
    alice.pair(&bob);
    let tail = Tail::start(&bob, &[]);
    alice.ok(&["send", "--to", "bob", "for bob"]);
    assert_eq!(tail.next_str(), "for bob");
    alice.refused(&["send", "--to", "carol", "for carol"], "not carol");
    let out = alice.ctl_stdin(&["send", "--to", "carol"], b"one\ntwo\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("(0 of "));
    alice.ok(&["send", "after"]);
    assert_eq!(tail.next_str(), "after", "nothing else arrived");
    assert_eq!(alice.status().link, LinkState::Open);
}

#[test]
fn id_and_trust_speak_one_token_and_reject_bad_input_as_usage() {
    let s = Signald::start();
    let alice = Daemon::start(&s.url(), "alice");
    let token = alice.token();
    assert!(token.starts_with("alice@sha256:"), "{token}");
    let json: serde_json::Value = serde_json::from_str(&alice.ok(&["id", "--json"])).unwrap();
    assert_eq!(json["token"], token);
    assert_eq!(json["id"], "alice");
    assert_eq!(alice.status().identity.as_deref(), Some(token.as_str()));

    for bad in [
        &["trust", "bob", "sha256:nope"][..],
        &["trust", "bob"][..],
        &["trust", "not an id", "sha256:AAAA"][..],
    ] {
        let out = alice.ctl(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {out:?}");
    }
    assert!(alice.ok(&["trust", "--list"]).contains("no trusted peers"));
    // The SDP hex form is accepted too.
    let fp = alice.status().fingerprint;
    alice.ok(&["trust", "bob", &fp.to_sdp_hex(), "--comment", "hex form"]);
    let listed = alice.ok(&["trust", "--list"]);
    assert!(
        listed.contains(&fp.to_string()) && listed.contains("hex form"),
        "{listed}"
    );
    let out = alice.ctl(&["untrust", "carol"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("was not trusted"));
}

/// The hole issue 21 found: a group-writable known_peers (umask 002) under
/// `--trust tofu` let an impostor's key for `bob` be pinned, and the
/// rewrite dropped every other pin. A store that cannot be fully trusted
/// now refuses every pairing, says which file and why, and is never
/// written; the same for a comment line that is not UTF-8.
#[test]
fn a_trust_store_that_cannot_be_trusted_refuses_every_pairing_and_stays_as_it_was() {
    use std::os::unix::fs::PermissionsExt;
    let s = Signald::start();
    let alice = Daemon::start_with(&s.url(), "alice", &["--trust", "tofu"]);
    let store = alice.state_dir().join("known_peers");
    let pins = format!(
        "bob {} 2026-12-01T21:34:44Z\ncarol {} 2026-12-01T21:34:44Z\n",
        Fingerprint::from_bytes([1; 32]),
        Fingerprint::from_bytes([2; 32])
    );
    // An impostor as bob, with a fresh key, that accepts anyone.
    let impostor = Daemon::start_with(&s.url(), "bob", &["--trust", "any"]);
    let spoiled: [(&str, Vec<u8>, u32); 2] = [
        ("writable by other users", pins.clone().into_bytes(), 0o664),
        (
            "cannot read it",
            [pins.as_bytes(), b"# caf\xe9\n"].concat(),
            0o600,
        ),
    ];
    for (why, bytes, mode) in spoiled {
        std::fs::write(&store, &bytes).unwrap();
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(mode)).unwrap();
        impostor.refused(&["pair", "alice"], "refused");
        alice.wait_idle();
        let err = alice.refused(&["pair", "carol"], why);
        assert!(err.contains(&store.display().to_string()), "{err}");
        let st = alice.status();
        assert!(st.trust.problems.iter().any(|p| p.contains(why)), "{st:?}");
        let out = alice.ctl(&["trust", &impostor.token()]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be trusted"));
        assert_eq!(std::fs::read(&store).unwrap(), bytes, "{why}: rewritten");
    }
    // Fixed: the pins hold again, and the impostor's key is not bob's.
    std::fs::write(&store, &pins).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o600)).unwrap();
    impostor.refused(&["pair", "alice"], "refused");
    assert_eq!(std::fs::read_to_string(&store).unwrap(), pins);
}
