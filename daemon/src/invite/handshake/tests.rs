use tokio::sync::mpsc;

use super::*;
use crate::invite::Code;

/// One end of an in-memory wire.
struct End {
    tx: mpsc::UnboundedSender<String>,
    rx: mpsc::UnboundedReceiver<String>,
}

#[async_trait::async_trait]
impl Wire for End {
    async fn send(&mut self, text: String) -> Result<(), InviteFailure> {
        self.tx.send(text).map_err(|_| InviteFailure::Protocol)
    }
    async fn recv(&mut self) -> Result<String, InviteFailure> {
        self.rx.recv().await.ok_or(InviteFailure::Protocol)
    }
}

fn wire() -> (End, End) {
    let (a_tx, b_rx) = mpsc::unbounded_channel();
    let (b_tx, a_rx) = mpsc::unbounded_channel();
    (End { tx: a_tx, rx: a_rx }, End { tx: b_tx, rx: b_rx })
}

fn fp(b: u8) -> Fingerprint {
    Fingerprint::from_bytes([b; 32])
}

fn sides(joiner_key: u8, inviter_key: u8) -> Sides {
    Sides {
        joiner: "bob".into(),
        inviter: "alice".into(),
        joiner_key: fp(joiner_key),
        inviter_key: fp(inviter_key),
    }
}

/// Runs both sides; the joiner's and the host's results.
async fn run(
    joiner_code: &str,
    host_code: &str,
    joiner_view: Sides,
    host_view: Sides,
) -> (
    Result<(), InviteFailure>,
    (Option<u16>, Result<(), InviteFailure>),
) {
    let (mut j, mut h) = wire();
    let jc = Code::parse(joiner_code).unwrap();
    let hc = Code::parse(host_code).unwrap();
    let joiner = async move { join(&mut j, jc, &joiner_view).await };
    let host = async move {
        host(
            &mut h,
            |n| async move {
                assert_eq!(n, hc.number());
                Ok(hc)
            },
            &host_view,
        )
        .await
    };
    tokio::join!(joiner, host)
}

#[tokio::test]
async fn the_right_code_and_keys_succeed_on_both_sides() {
    let (j, (n, h)) = run("7-oak-elk", "7-oak-elk", sides(1, 2), sides(1, 2)).await;
    assert_eq!(j, Ok(()));
    assert_eq!((n, h), (Some(7), Ok(())));
}

#[tokio::test]
async fn a_wrong_code_fails_both_sides() {
    let (j, (n, h)) = run("7-oak-fig", "7-oak-elk", sides(1, 2), sides(1, 2)).await;
    assert_eq!(j, Err(InviteFailure::WrongCode));
    assert_eq!((n, h), (Some(7), Err(InviteFailure::WrongCode)));
}

#[tokio::test]
async fn a_swapped_fingerprint_fails_both_sides_even_with_the_right_code() {
    // A server in the middle terminated DTLS twice: the joiner saw key 9
    // for the inviter, the inviter saw key 8 for the joiner.
    let (j, (_, h)) = run("7-oak-elk", "7-oak-elk", sides(1, 9), sides(8, 2)).await;
    assert_eq!(j, Err(InviteFailure::WrongCode));
    assert_eq!(h, Err(InviteFailure::WrongCode));
}

#[tokio::test]
async fn other_ids_than_the_peers_know_fail() {
    let mut lied = sides(1, 2);
    lied.joiner = "mallory".into();
    let (j, (_, h)) = run("7-oak-elk", "7-oak-elk", lied, sides(1, 2)).await;
    assert!(j.is_err() && h.is_err(), "{j:?} {h:?}");
}

#[tokio::test]
async fn a_refused_claim_is_told_to_the_joiner() {
    let (mut j, mut h) = wire();
    let code = Code::parse("3-oak-elk").unwrap();
    let view = sides(1, 2);
    let joiner = join(&mut j, code, &view);
    let host = host(&mut h, |_| async { Err(InviteFailure::Expired) }, &view);
    let (j, (n, h)) = tokio::join!(joiner, host);
    assert_eq!(j, Err(InviteFailure::Expired));
    assert_eq!((n, h), (Some(3), Err(InviteFailure::Expired)));
}

#[tokio::test]
async fn a_reflected_tag_and_garbage_are_refused() {
    // A joiner without the code echoes the host's own tag back.
    let (mut j, mut h) = wire();
    let code = Code::parse("5-oak-elk").unwrap();
    let view = sides(1, 2);
    let hosting =
        tokio::spawn(async move { host(&mut h, |_| async move { Ok(code) }, &view).await });
    let (_, hello) = Spake2::<Ed25519Group>::start_a(
        &Password::new(b"5-wrong-guess"),
        &identity("joiner", "bob"),
        &identity("inviter", "alice"),
    );
    j.send(
        serde_json::to_string(&Msg::Hello {
            v: VERSION,
            invite: 5,
            spake: B64.encode(&hello),
        })
        .unwrap(),
    )
    .await
    .unwrap();
    let reply: Msg = serde_json::from_str(&j.recv().await.unwrap()).unwrap();
    let Msg::Reply { confirm, .. } = reply else {
        panic!("{reply:?}")
    };
    j.send(serde_json::to_string(&Msg::Confirm { confirm }).unwrap())
        .await
        .unwrap();
    assert_eq!(hosting.await.unwrap().1, Err(InviteFailure::WrongCode));

    let (mut j, mut h) = wire();
    let view = sides(1, 2);
    let hosting =
        tokio::spawn(async move { host(&mut h, |_| async move { Ok(code) }, &view).await });
    j.send("{\"t\":\"hello\",\"v\":1,\"invite\":5,\"spake\":\"!!!\"}".into())
        .await
        .unwrap();
    assert_eq!(hosting.await.unwrap(), (None, Err(InviteFailure::Protocol)));
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_times_out() {
    let (_j, mut h) = wire();
    let view = sides(1, 2);
    let (n, r) = host(&mut h, |_| async { Err(InviteFailure::Unknown) }, &view).await;
    assert_eq!((n, r), (None, Err(InviteFailure::Timeout)));
}
