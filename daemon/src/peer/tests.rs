//! Property tests of what a peer sends us through signald and the crate
//! parses: candidates and session descriptions, on real connections bound
//! to 127.0.0.1. Whatever arrives, p2pd answers with an error or takes
//! it, never panics, and never takes more candidates than the cap.

use proptest::prelude::*;

use super::*;
use crate::hub::{HistoryLimits, Hub};

fn config() -> ProptestConfig {
    ProptestConfig {
        // Each case builds real peer connections (sockets, tasks).
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(24),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    settings: PcSettings,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let identity =
            crate::identity::Identity::load_or_create(&dir.path().join("id.pem")).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let settings = PcSettings {
            bind: vec!["127.0.0.1:0".parse().unwrap()],
            ice_servers: Vec::new(),
            relay_only: false,
            ice_disconnected_timeout: Duration::from_secs(5),
            runtime: Arc::new(BufferedRuntime::new().unwrap()),
            certificate: identity.certificate(),
            sctp: crate::config::SctpTimers {
                rto_min: Duration::from_millis(220),
                rto_max: Duration::from_millis(800),
            },
            relay_wait: Duration::from_millis(300),
            answering_dtls_role: RTCDtlsRole::Server,
        };
        Fixture {
            rt,
            settings,
            _dir: dir,
        }
    }

    async fn pc(&self) -> Pc {
        self.pc_with(mpsc::unbounded_channel().0).await
    }

    /// A connection whose events go to `events` (a dropped receiver drops
    /// them, the data channels the peer opens included).
    async fn pc_with(&self, events: mpsc::UnboundedSender<PcEvent>) -> Pc {
        let counters = Arc::new(Counters::default());
        let ctx = PcContext {
            flow: crate::stall::Flow::default(),
            generation: 1,
            events,
            hub: Hub::new(
                HistoryLimits {
                    messages: 10,
                    bytes: 1 << 16,
                },
                counters.clone(),
            ),
            counters,
            // No link ever opens here: a stream channel waits and is closed.
            streams: crate::stream::Streams::new(
                crate::stream::Limits {
                    streams: 4,
                    per_service: 4,
                    accepts: 4,
                    forward_connections: 4,
                    window: 1 << 16,
                    drain: Duration::from_secs(1),
                },
                Vec::new(),
                tokio::sync::watch::channel(None).1,
            )
            .0,
        };
        Pc::build(&self.settings, ctx).await.unwrap()
    }
}

/// Candidate lines near real ones (so the crate's parser gets past its
/// first field) and plain noise.
fn candidate() -> impl Strategy<Value = CandidateInit> {
    let line = prop_oneof![
        (
            any::<u32>(),
            1u8..3,
            prop::sample::select(vec!["udp", "UDP", "tcp", "sctp", ""]),
            any::<u32>(),
            prop::sample::select(vec![
                "127.0.0.1",
                "10.0.0.1",
                "::1",
                "x.local",
                "999.1.1.1",
                ""
            ]),
            any::<u16>(),
            prop::sample::select(vec!["host", "srflx", "relay", "prflx", "bogus"]),
            "\\PC{0,30}",
        )
            .prop_map(|(f, c, p, prio, a, port, t, tail)| {
                format!("candidate:{f} {c} {p} {prio} {a} {port} typ {t} {tail}")
            }),
        "\\PC{0,600}",
    ];
    (
        line,
        proptest::option::of("\\PC{0,8}"),
        proptest::option::of(any::<u16>()),
    )
        .prop_map(|(candidate, sdp_mid, sdp_mline_index)| CandidateInit {
            candidate,
            sdp_mid,
            sdp_mline_index,
            username_fragment: None,
        })
}

proptest! {
    #![proptest_config(config())]

    /// Before and after the offer is applied (early candidates are held,
    /// then flushed into the crate), in any number up to twice the cap.
    #[test]
    fn any_candidates_are_taken_or_refused_up_to_the_cap(
        early in prop::collection::vec(candidate(), 0..20),
        late in prop::collection::vec(candidate(), 0..(2 * MAX_REMOTE_CANDIDATES)),
    ) {
        let f = Fixture::new();
        let taken = f.rt.block_on(async {
            let mut offerer = f.pc().await;
            let offer = offerer.offer("peer", false).await.unwrap();
            let mut answerer = f.pc().await;
            let mut taken = 0;
            for c in early {
                taken += answerer.add_candidate(c).await.is_ok() as usize;
            }
            // An early candidate the crate cannot read fails the offer's
            // application: an error, and the pairing ends.
            if answerer.answer(offer).await.is_ok() {
                for c in late {
                    taken += answerer.add_candidate(c).await.is_ok() as usize;
                }
            }
            offerer.close().await;
            answerer.close().await;
            taken
        });
        prop_assert!(taken <= MAX_REMOTE_CANDIDATES, "took {taken}");
    }

    /// A description made of a real offer with lines dropped, repeated or
    /// replaced: applied or refused, never a panic.
    #[test]
    fn any_mangled_offer_is_applied_or_refused(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, "\\PC{0,40}"), 0..8),
    ) {
        let f = Fixture::new();
        f.rt.block_on(async {
            let mut offerer = f.pc().await;
            let offer = offerer.offer("peer", false).await.unwrap();
            let mut lines: Vec<String> = offer.lines().map(str::to_string).collect();
            for (at, how, text) in edits {
                let i = at.index(lines.len().max(1)).min(lines.len().saturating_sub(1));
                match how {
                    0 if !lines.is_empty() => {
                        lines.remove(i);
                    }
                    1 if !lines.is_empty() => {
                        let l = lines[i].clone();
                        lines.insert(i, l);
                    }
                    _ => {
                        if lines.is_empty() {
                            lines.push(text);
                        } else {
                            lines[i] = text;
                        }
                    }
                }
            }
            let mut answerer = f.pc().await;
            let _ = answerer.answer(lines.join("\r\n")).await;
            offerer.close().await;
            answerer.close().await;
        });
    }
}

#[test]
fn the_cap_counts_every_candidate_offered() {
    let f = Fixture::new();
    f.rt.block_on(async {
        let mut offerer = f.pc().await;
        let offer = offerer.offer("peer", false).await.unwrap();
        let mut answerer = f.pc().await;
        answerer.answer(offer).await.unwrap();
        let mut taken = 0;
        for i in 0..(2 * MAX_REMOTE_CANDIDATES) {
            let c = CandidateInit {
                candidate: format!(
                    "candidate:{i} 1 udp 2130706431 127.0.0.1 {} typ host",
                    20000 + i
                ),
                sdp_mid: Some("0".into()),
                sdp_mline_index: Some(0),
                username_fragment: None,
            };
            taken += answerer.add_candidate(c).await.is_ok() as usize;
        }
        assert_eq!(taken, MAX_REMOTE_CANDIDATES);
        let long = CandidateInit {
            candidate: "x".repeat(MAX_CANDIDATE_BYTES + 1),
            sdp_mid: None,
            sdp_mline_index: None,
            username_fragment: None,
        };
        assert!(answerer.add_candidate(long).await.is_err());
        offerer.close().await;
        answerer.close().await;
    });
}

/// A peer that keeps sending on a channel we did not take (p2pd ignores a
/// second channel, and drops its handle): the crate keeps those messages
/// for a receiver that never comes. That must not stop the connection:
/// with a first version of vendor patch 9 the driver spun on them and
/// never read its socket again, so nothing more was acknowledged.
#[test]
fn messages_on_a_channel_nobody_took_do_not_stop_the_connection() {
    // On its own thread, watched from this one: a driver that spins holds
    // the runtime's threads, and the test's own timeouts never fire.
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        peer_keeps_sending_on_a_channel_nobody_took();
        let _ = done_tx.send(());
    });
    match done.recv_timeout(Duration::from_secs(30)) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("the connection stopped (its driver no longer runs)")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("the test failed"),
    }
}

fn peer_keeps_sending_on_a_channel_nobody_took() {
    let f = Fixture::new();
    f.rt.block_on(async {
        let (tx, mut offerer_events) = mpsc::unbounded_channel();
        let mut offerer = f.pc_with(tx).await;
        // The answerer's events, its data channel among them, are dropped.
        let mut answerer = f.pc().await;
        let offer = offerer.offer("peer", false).await.unwrap();
        let answer = answerer.answer(offer).await.unwrap();
        offerer.accept_answer(answer).await.unwrap();
        // Trickle the offerer's candidates until its channel opens (the
        // answerer finds the offerer through them; its own are learnt as
        // peer-reflexive).
        tokio::time::timeout(STEP, async {
            while let Some(ev) = offerer_events.recv().await {
                match ev.kind {
                    PcEventKind::Candidate(Some(c)) => {
                        let c = offerer.local_candidate(c);
                        let _ = answerer.add_candidate(c).await;
                    }
                    PcEventKind::ChannelOpen => return,
                    _ => {}
                }
            }
        })
        .await
        .expect("the channel opens");
        let dc = offerer.channel().expect("the offerer's channel");
        for i in 0..200 {
            dc.send_text(&format!("{i} {}", "x".repeat(1000)))
                .await
                .unwrap();
        }
        // Everything is acknowledged: the answerer still reads its socket.
        tokio::time::timeout(STEP, async {
            while dc.outstanding_bytes().await.unwrap_or(0) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the peer acknowledges everything sent");
        offerer.close().await;
        answerer.close().await;
    });
}

/// Most stacks answer as the DTLS client (aiortc always, webrtc-rs by
/// default). An RFC 8832 one is then the SCTP client and sends the INIT;
/// we, the ICE-controlling DTLS server, must take it rather than send our
/// own at once (vendor/PATCHES.md 11 sends one only if none comes, for
/// aiortc). A first version of that patch made us an SCTP client right
/// away: both sides sent an INIT, each dropped the other's, and this test
/// failed ("offerer false, answerer false").
#[test]
fn a_dtls_client_answerer_opens_the_channel() {
    let f = Fixture::new();
    // The other stack: its own key, answering as the DTLS client.
    let mut other = Fixture::new();
    other.settings.answering_dtls_role = RTCDtlsRole::Client;
    f.rt.block_on(async {
        let (tx, mut offerer_events) = mpsc::unbounded_channel();
        let mut offerer = f.pc_with(tx).await;
        let (tx, mut answerer_events) = mpsc::unbounded_channel();
        let mut answerer = other.pc_with(tx).await;
        let offer = offerer.offer("peer", false).await.unwrap();
        let answer = answerer.answer(offer).await.unwrap();
        assert!(answer.contains("a=setup:active"), "{answer}");
        offerer.accept_answer(answer).await.unwrap();
        let (mut offerer_open, mut answerer_open) = (false, false);
        tokio::time::timeout(STEP, async {
            while !(offerer_open && answerer_open) {
                tokio::select! {
                    Some(ev) = offerer_events.recv() => match ev.kind {
                        PcEventKind::Candidate(Some(c)) => {
                            let c = offerer.local_candidate(c);
                            let _ = answerer.add_candidate(c).await;
                        }
                        PcEventKind::ChannelOpen => offerer_open = true,
                        _ => {}
                    },
                    Some(ev) = answerer_events.recv() => {
                        if let PcEventKind::DataChannel(_) = ev.kind {
                            answerer_open = true;
                        }
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!("the channel did not open (offerer {offerer_open}, answerer {answerer_open})")
        });
        offerer.close().await;
        answerer.close().await;
    });
}

/// The DER of the fixture's certificate, from its `id.pem`.
fn certificate_der(f: &Fixture) -> Vec<u8> {
    use base64::Engine as _;
    let pem = std::fs::read_to_string(f._dir.path().join("id.pem")).unwrap();
    let b64: String = pem
        .split("-----BEGIN CERTIFICATE-----")
        .nth(1)
        .and_then(|rest| rest.split("-----END CERTIFICATE-----").next())
        .expect("a certificate in id.pem")
        .split_whitespace()
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

fn sdp_hex(digest: &[u8]) -> String {
    let hex: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

/// The answer names the answerer's certificate by sha-256, sha-384 and
/// sha-512 (as aiortc 1.16 does): with all three right the channel opens
/// (before vendor patch 15 the crate refused any line but sha-256); with
/// one wrong the offerer's DTLS refuses the certificate (the patch checks
/// every line, where the crate accepted any one that matched).
#[test]
fn every_fingerprint_line_is_checked_against_the_certificate() {
    use sha2::Digest;
    let f = Fixture::new();
    let other = Fixture::new();
    let der = certificate_der(&other);
    let right = format!(
        "a=fingerprint:sha-384 {}\r\na=fingerprint:sha-512 {}\r\n",
        sdp_hex(&sha2::Sha384::digest(&der)),
        sdp_hex(&sha2::Sha512::digest(&der))
    );
    let wrong = format!(
        "a=fingerprint:sha-384 {}\r\na=fingerprint:sha-512 {}\r\n",
        sdp_hex(&sha2::Sha384::digest(&der)),
        sdp_hex(&sha2::Sha512::digest(b"another certificate"))
    );
    // (extra lines, whether the sha-256 line stays, whether it opens)
    for (extra, keep_256, opens) in [
        (String::new(), true, true),
        (right.clone(), true, true),
        (right, false, true),
        (wrong, true, false),
    ] {
        let opened = f.rt.block_on(async {
            let (tx, mut offerer_events) = mpsc::unbounded_channel();
            let mut offerer = f.pc_with(tx).await;
            let mut answerer = other.pc().await;
            let offer = offerer.offer("peer", false).await.unwrap();
            let answer = answerer.answer(offer).await.unwrap();
            assert!(
                answer.contains(&sdp_hex(&sha2::Sha256::digest(&der))),
                "the certificate read is the one the answer names"
            );
            // After the sha-256 line, in its media section (or in its
            // place: then only DTLS can tell the key, patch 15).
            let start = answer.find("a=fingerprint:").unwrap();
            let at = start + answer[start..].find("\r\n").unwrap() + 2;
            let answer = match keep_256 {
                true => format!("{}{extra}{}", &answer[..at], &answer[at..]),
                false => format!("{}{extra}{}", &answer[..start], &answer[at..]),
            };
            assert_eq!(answer.contains("sha-256"), keep_256);
            offerer.accept_answer(answer).await.unwrap();
            // A refused certificate does not fail the connection here: the
            // DTLS client refuses each flight the server sends again, and
            // the daemon's connect timeout ends it. Nothing opens meanwhile,
            // where the right lines open in milliseconds.
            let limit = if opens { STEP } else { Duration::from_secs(3) };
            let opened = tokio::time::timeout(limit, async {
                loop {
                    match offerer_events.recv().await.map(|e| e.kind) {
                        Some(PcEventKind::Candidate(Some(c))) => {
                            let c = offerer.local_candidate(c);
                            let _ = answerer.add_candidate(c).await;
                        }
                        Some(PcEventKind::ChannelOpen) => return true,
                        Some(PcEventKind::PcState(RTCPeerConnectionState::Failed)) | None => {
                            return false;
                        }
                        _ => {}
                    }
                }
            })
            .await
            .unwrap_or(false);
            if opened {
                // The key, from the certificate DTLS proved.
                let expected: [u8; 32] = sha2::Sha256::digest(&der).into();
                assert_eq!(
                    offerer.remote_certificate().await,
                    Some(p2p_proto::identity::Fingerprint::from_bytes(expected))
                );
            }
            offerer.close().await;
            answerer.close().await;
            opened
        });
        assert_eq!(opened, opens, "{extra} (sha-256 line kept: {keep_256})");
    }
}

/// How long a step of a test here may take before it fails.
const STEP: Duration = Duration::from_secs(10);
