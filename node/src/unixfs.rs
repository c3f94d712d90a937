//! The UnixFS file DAG of a blob, built from leaves Kubo already stores, so that finishing a
//! chunked upload never reads the bytes back and adds them again.
//!
//! Every upload chunk is added starting at a multiple of the chunker's size (the upload path
//! re-sends the unaligned tail of the previous chunk, under one chunk of bytes), so the
//! chunks' raw leaves are exactly the leaves `add` makes of the whole blob. What is left is the
//! tree above them. This module lays it out as Kubo's balanced importer does (boxo's
//! `importer/balanced`: full subtrees of up to 174 links, the tree deepened at the root) and
//! encodes each node as dag-pb with UnixFS `File` data the way go-unixfs does (links first,
//! each with an empty name and its cumulative size; then `Type`, `filesize` and one
//! `blocksizes` entry per child). The root is then the CID `add` gives for the same bytes, so
//! the regions agree and the CID check holds; the test of the chunked upload path compares the
//! two against a real Kubo.
//!
//! Hand-written because no maintained crate builds Kubo-identical DAGs over existing leaves:
//! the encoding is two small protobuf messages, written with a varint helper.

use sha2::Digest as _;

/// Kubo's default (`Import.UnixFSFileMaxLinks`), the fan-out of the balanced layout.
pub const MAX_LINKS: usize = 174;

/// A node of the tree: its CID (text and binary), the bytes of file it covers, and its
/// cumulative size (its block plus everything under it, dag-pb's `Tsize`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub cid: String,
    pub file_size: u64,
    pub tsize: u64,
}

/// An internal block to store, in the order it must be stored (children first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub cid: String,
    pub bytes: Vec<u8>,
}

/// The DAG over `leaves` (raw blocks, in file order): the root, and the internal blocks Kubo
/// does not have yet, children before parents. One leaf is its own root.
pub fn balanced(leaves: &[Node]) -> Option<(Node, Vec<Block>)> {
    let mut rest = leaves.iter().cloned();
    let mut root = rest.next()?;
    let mut blocks = Vec::new();
    let mut rest = rest.peekable();
    let mut depth = 1;
    while rest.peek().is_some() {
        root = fill(vec![root], depth, &mut rest, &mut blocks);
        depth += 1;
    }
    Some((root, blocks))
}

/// Fills a node of `depth` (1: its children are leaves) from `children` on, as far as the
/// leaves and [`MAX_LINKS`] allow, and encodes it.
fn fill(
    mut children: Vec<Node>,
    depth: usize,
    leaves: &mut std::iter::Peekable<impl Iterator<Item = Node>>,
    out: &mut Vec<Block>,
) -> Node {
    while children.len() < MAX_LINKS && leaves.peek().is_some() {
        let child = if depth == 1 { leaves.next().expect("peeked") } else { fill(Vec::new(), depth - 1, leaves, out) };
        children.push(child);
    }
    let bytes = encode(&children);
    let cid = dag_pb_cid(&bytes);
    let file_size = children.iter().map(|c| c.file_size).sum();
    let tsize = bytes.len() as u64 + children.iter().map(|c| c.tsize).sum::<u64>();
    out.push(Block { cid: cid.clone(), bytes });
    Node { cid, file_size, tsize }
}

/// dag-pb `PBNode { Links, Data }` with UnixFS `Data { Type: File, filesize, blocksizes }`.
fn encode(children: &[Node]) -> Vec<u8> {
    let mut out = Vec::with_capacity(children.len() * 48 + 16);
    for c in children {
        let hash = cid_bytes(&c.cid);
        let mut link = Vec::with_capacity(hash.len() + 16);
        field_bytes(&mut link, 1, &hash);
        field_bytes(&mut link, 2, b"");
        field_varint(&mut link, 3, c.tsize);
        field_bytes(&mut out, 2, &link);
    }
    let mut data = Vec::with_capacity(children.len() * 4 + 16);
    field_varint(&mut data, 1, 2); // Type: File
    field_varint(&mut data, 3, children.iter().map(|c| c.file_size).sum());
    for c in children {
        field_varint(&mut data, 4, c.file_size);
    }
    field_bytes(&mut out, 1, &data);
    out
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_varint(out: &mut Vec<u8>, field: u64, v: u64) {
    varint(out, field << 3);
    varint(out, v);
}

fn field_bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
    varint(out, (field << 3) | 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// The binary form of a base32 (`b…`) CIDv1.
fn cid_bytes(cid: &str) -> Vec<u8> {
    let s = cid.strip_prefix('b').unwrap_or(cid).to_ascii_uppercase();
    data_encoding::BASE32_NOPAD.decode(s.as_bytes()).unwrap_or_default()
}

/// The raw codec: a leaf's bytes as they are.
pub const RAW: u8 = 0x55;
/// The dag-pb codec: UnixFS's inner nodes.
pub const DAG_PB: u8 = 0x70;

/// A CIDv1 with a sha2-256 multihash, in base32 (`b…`) as Kubo prints it.
pub fn cid_v1(codec: u8, sha256: &[u8; 32]) -> String {
    let mut b = vec![0x01, codec, 0x12, 0x20];
    b.extend_from_slice(sha256);
    format!("b{}", data_encoding::BASE32_NOPAD.encode(&b).to_lowercase())
}

/// CIDv1, dag-pb, sha2-256 of a block.
pub fn dag_pb_cid(block: &[u8]) -> String {
    cid_v1(DAG_PB, &sha2::Sha256::digest(block).into())
}

/// Whether `cid` (base32 CIDv1) is a raw block: a leaf of a raw-leaves DAG.
pub fn is_raw(cid: &str) -> bool {
    cid_bytes(cid).get(1) == Some(&RAW)
}

/// The chunk size of a fixed-size chunker (`size-N`); `None` for content-defined chunkers,
/// whose leaves depend on the bytes around a chunk's edges.
pub fn fixed_chunk_size(chunker: &str) -> Option<u64> {
    chunker.strip_prefix("size-")?.parse().ok().filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(i: usize, size: u64) -> Node {
        let h: [u8; 32] = sha2::Sha256::digest(i.to_le_bytes()).into();
        Node { cid: crate::kubo::raw_cid_for_sha256(&h), file_size: size, tsize: size }
    }

    #[test]
    fn one_leaf_is_its_own_root() {
        let (root, blocks) = balanced(&[leaf(0, 10)]).unwrap();
        assert_eq!(root, leaf(0, 10));
        assert!(blocks.is_empty());
        assert!(balanced(&[]).is_none());
    }

    #[test]
    fn the_layout_deepens_at_the_root_and_counts_every_byte() {
        // 174 leaves fit under one node; one more needs a second level with two children.
        let (_, blocks) = balanced(&(0..MAX_LINKS).map(|i| leaf(i, 4)).collect::<Vec<_>>()).unwrap();
        assert_eq!(blocks.len(), 1);
        let leaves: Vec<Node> = (0..=MAX_LINKS).map(|i| leaf(i, 4)).collect();
        let (root, blocks) = balanced(&leaves).unwrap();
        assert_eq!(blocks.len(), 3, "two depth-1 nodes and the root");
        assert_eq!(root.file_size, 4 * (MAX_LINKS as u64 + 1));
        assert_eq!(blocks.last().unwrap().cid, root.cid, "the root is stored last");
        assert!(is_raw(&leaves[0].cid) && !is_raw(&root.cid));
        assert_eq!(root.tsize, blocks.iter().map(|b| b.bytes.len() as u64).sum::<u64>() + root.file_size);
    }

    #[test]
    fn chunkers() {
        assert_eq!(fixed_chunk_size("size-1048576"), Some(1 << 20));
        assert_eq!(fixed_chunk_size("rabin-262144-524288-1048576"), None);
        assert_eq!(fixed_chunk_size("size-0"), None);
    }
}
