//! `tail`: answers `ok`, replays history, then streams events until the
//! client hangs up (or at once without `follow`).

use interprocess::local_socket::tokio::Stream;
use p2p_proto::control::Reply;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::watch;

use crate::engine::EngineHandle;

/// Serves `tail` on this connection until it ends.
pub async fn serve(
    reader: &mut BufReader<&Stream>,
    writer: &mut BufWriter<&Stream>,
    engine: &EngineHandle,
    replay: usize,
    follow: bool,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let sub = engine.hub().subscribe(replay, follow);
    writer
        .write_all(Reply::empty().to_line().as_bytes())
        .await?;
    for line in &sub.replay {
        writer.write_all(line.as_str().as_bytes()).await?;
    }
    writer.flush().await?;
    let Some(mut live) = sub.live else {
        return Ok(());
    };
    loop {
        tokio::select! {
            line = live.recv() => {
                writer.write_all(line.as_str().as_bytes()).await?;
                // Batch what is already queued, then flush: each line is out
                // as soon as nothing else is waiting.
                while let Some(line) = live.try_recv() {
                    writer.write_all(line.as_str().as_bytes()).await?;
                    if writer.buffer().len() > 64 * 1024 {
                        break;
                    }
                }
                writer.flush().await?;
            }
            // Anything the client sends after `tail` is ignored; EOF ends it.
            r = reader.fill_buf() => {
                let n = r?.len();
                if n == 0 {
                    return Ok(());
                }
                reader.consume(n);
            }
            _ = shutdown.changed() => return Ok(()),
        }
    }
}
