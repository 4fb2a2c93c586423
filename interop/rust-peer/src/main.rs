//! `rust-peer SWARM_KEY_FILE MULTIADDR`: dial MULTIADDR over the libp2p private network of
//! SWARM_KEY_FILE (tcp, pnet, noise, yamux), then ping. Prints one line and exits 0 on the first
//! successful ping, 1 when the connection or ping fails, 2 on bad arguments or after 20 s.
//!
//! `rust-peer SWARM_KEY_FILE --listen`: listen on 127.0.0.1 and print `LISTENING <multiaddr>/p2p/<id>`,
//! then serve identify and `/ipfs/ping/1.0.0` (and nothing else) until killed, or for 120 s at most:
//! the standard libp2p peer that `pyagent ping` must reach.
use std::{error::Error, str::FromStr, time::Duration};

use futures::StreamExt;
use libp2p::{
    core::{muxing::StreamMuxerBox, transport::upgrade::Version},
    identify, noise, ping,
    pnet::{PnetConfig, PreSharedKey},
    swarm::{NetworkBehaviour, SwarmEvent},
    tcp, yamux, Multiaddr, Transport,
};

const RUN_TIMEOUT: Duration = Duration::from_secs(20);
const LISTEN_TIMEOUT: Duration = Duration::from_secs(120);
// Longer than a test's pings are apart, so that the peer does not drop an idle connection between them.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, key_file, flag] = args.as_slice() {
        if flag == "--listen" {
            std::process::exit(listen(key_file).await);
        }
    }
    let code = match tokio::time::timeout(RUN_TIMEOUT, run(&args)).await {
        Ok(Ok(outcome)) => {
            println!("{outcome}");
            if outcome.starts_with("PING_OK") {
                0
            } else {
                1
            }
        }
        Ok(Err(error)) => {
            println!("ERROR {error}");
            2
        }
        Err(_) => {
            println!("TIMEOUT after {RUN_TIMEOUT:?}");
            2
        }
    };
    std::process::exit(code);
}

fn build_swarm(key_file: &str) -> Result<libp2p::Swarm<Behaviour>, Box<dyn Error>> {
    let psk = PreSharedKey::from_str(&std::fs::read_to_string(key_file)?)?;
    eprintln!("swarm key fingerprint {}", psk.fingerprint());
    Ok(libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|key| {
            let noise = noise::Config::new(key)?;
            Ok::<_, Box<dyn Error + Send + Sync>>(
                tcp::tokio::Transport::new(tcp::Config::default())
                    .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
                    .upgrade(Version::V1)
                    .authenticate(noise)
                    .multiplex(yamux::Config::default())
                    .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer))),
            )
        })?
        .with_behaviour(|key| Behaviour {
            identify: identify::Behaviour::new(identify::Config::new(
                "/pyagent-interop/1.0.0".into(),
                key.public(),
            )),
            ping: ping::Behaviour::new(
                ping::Config::new().with_interval(Duration::from_millis(200)),
            ),
        })?
        .with_swarm_config(|config| config.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build())
}

/// Serves until killed (the test that started it is done), or for LISTEN_TIMEOUT at most.
async fn listen(key_file: &str) -> i32 {
    let mut swarm = match build_swarm(key_file) {
        Ok(swarm) => swarm,
        Err(error) => {
            println!("ERROR {error}");
            return 2;
        }
    };
    let local_peer = *swarm.local_peer_id();
    if let Err(error) = swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("a valid multiaddr"))
    {
        println!("ERROR {error}");
        return 2;
    }
    let deadline = tokio::time::sleep(LISTEN_TIMEOUT);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            event = swarm.select_next_some() => {
                if let SwarmEvent::NewListenAddr { address, .. } = event {
                    println!("LISTENING {address}/p2p/{local_peer}");
                }
            }
            _ = &mut deadline => return 0,
        }
    }
}

async fn run(args: &[String]) -> Result<String, Box<dyn Error>> {
    let [_, key_file, address] = args else {
        return Err(
            "usage: rust-peer SWARM_KEY_FILE MULTIADDR | rust-peer SWARM_KEY_FILE --listen".into(),
        );
    };
    let address = Multiaddr::from_str(address)?;
    let mut swarm = build_swarm(key_file)?;
    swarm.dial(address)?;

    loop {
        match swarm.select_next_some().await {
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => {
                return Ok(format!("PING_OK {peer} {} us", rtt.as_micros()));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                result: Err(error), ..
            })) => {
                return Ok(format!("PING_FAILED {error}"));
            }
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                return Ok(format!("CONNECTION_FAILED {error}"));
            }
            SwarmEvent::ConnectionClosed { cause, .. } => {
                return Ok(format!("CONNECTION_CLOSED {cause:?}"));
            }
            _ => {}
        }
    }
}
