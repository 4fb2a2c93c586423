//! `rust-peer SWARM_KEY_FILE MULTIADDR`: dial MULTIADDR over the libp2p private network of
//! SWARM_KEY_FILE (tcp, pnet, noise, yamux), then ping. Prints one line and exits 0 on the first
//! successful ping, 1 when the connection or ping fails, 2 on bad arguments or after 20 s.
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

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

#[tokio::main]
async fn main() {
    let code = match tokio::time::timeout(RUN_TIMEOUT, run()).await {
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

async fn run() -> Result<String, Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, key_file, address] = args.as_slice() else {
        return Err("usage: rust-peer SWARM_KEY_FILE MULTIADDR".into());
    };
    let psk = PreSharedKey::from_str(&std::fs::read_to_string(key_file)?)?;
    eprintln!("swarm key fingerprint {}", psk.fingerprint());
    let address = Multiaddr::from_str(address)?;

    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
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
        .build();
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
