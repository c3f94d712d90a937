//! The regions' Kubo daemons form a private IPFS network (a shared `swarm.key`, and
//! `LIBP2P_FORCE_PNET=1`): they pin each other's blobs, while a stranger on the same machine
//! that knows every region's address can neither connect to any of them nor fetch a pushed
//! blob by its CID. A daemon with the key, started the same way, gets in: the refusal is the
//! key's doing, not the test's.

use std::time::Duration;

use afreg_deploy::local::kubo::Network;
use serde_json::json;
use testkit::afreg_bin as bin;
use testkit::cluster::TestCluster;
use testkit::oci::{cids_of, client, new_image, pinned_all, push, within};
use testkit::{json_set, Action, Kubo};

#[test]
fn a_stranger_without_the_swarm_key_can_neither_connect_nor_fetch_a_blob() {
    let cluster =
        TestCluster::start(bin(), &["us", "eu", "asia"], |_, c| c.config.auth.anonymous = Action::ALL.to_vec());
    let (us, eu, asia) = (cluster.region("us"), cluster.region("eu"), cluster.region("asia"));
    let img = new_image(300_000);
    push(&client(), &us.url(), "private/app", "v1", &img).unwrap_or_else(|e| panic!("push: {e:?}"));
    let cids = cids_of(us, &img.digests());
    within(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "eu and asia pin us's blobs over the private network",
        || pinned_all(eu, &cids) && pinned_all(asia, &cids),
    );

    // A stranger speaking the public protocol, configured to peer with every region.
    let peers: Vec<_> = cluster
        .regions
        .iter()
        .map(|r| json!({"ID": r.kubo().peer_id(), "Addrs": [format!("/ip4/127.0.0.1/tcp/{}", r.kubo().swarm_port)]}))
        .collect();
    let stranger = Kubo::start_in(Network::Public, |cfg| json_set(cfg, "Peering.Peers", json!(peers)), &[]);
    for r in &cluster.regions {
        let addr = r.kubo().swarm_multiaddr();
        let refused = stranger.rpc("swarm/connect", &[("arg", &addr), ("timeout", "10s")]);
        assert!(refused.is_err(), "{}: a stranger connected to {addr}: {refused:?}", r.name);
    }
    for cid in &cids {
        let fetched = stranger.rpc("block/get", &[("arg", cid), ("timeout", "5s")]);
        assert!(fetched.is_err(), "a stranger fetched {cid} without the swarm key");
    }
    for r in &cluster.regions {
        assert!(
            !r.kubo().swarm_peers().iter().any(|p| p == stranger.peer_id()),
            "{} lists the stranger as a peer",
            r.name
        );
    }

    // The same daemon with the key (testkit's default network) connects and fetches.
    let member = Kubo::start();
    member.connect(us.kubo());
    let (digest, layer) = img.blobs.iter().max_by_key(|(_, b)| b.len()).unwrap();
    let cid = &cids_of(us, &[digest])[0];
    let got = member
        .rpc("cat", &[("arg", cid), ("timeout", "30s")])
        .unwrap_or_else(|e| panic!("a member could not fetch {cid}: {e}"));
    assert_eq!(&got, layer, "a member fetched other bytes");
}
