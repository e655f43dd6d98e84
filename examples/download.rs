//! Downloads a torrent with a progress bar: `cargo run --example download -- FILE DIR [PEER...]`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let session = shoal::Session::new(shoal::SessionSettings::default())?;
    let torrent = session.add_file(&args[0], &args[1])?;
    let peers: Result<_, _> = args[2..].iter().map(|p| p.parse()).collect();
    let bar = indicatif::ProgressBar::new(torrent.progress().total_pieces.into());
    let done = session.block_on(async {
        torrent.add_peers(peers?).await;
        while !torrent.progress().complete && !torrent.is_stopped() {
            bar.set_position(torrent.progress().verified_pieces.into());
            smol::Timer::after(std::time::Duration::from_millis(100)).await;
        }
        bar.finish();
        Ok::<_, Box<dyn std::error::Error>>(torrent.wait_complete().await?)
    });
    session.block_on(session.shutdown());
    done
}
