//! The `afreg` command's integration tests: the local cluster (`afreg up`), the committed SDL
//! files against Akash's own parser (`afreg sdl render`), and GeoDNS against a real PowerDNS
//! (`afreg dns render`, SRV discovery, `afreg doctor`). One binary, a module per command.

mod compose;
mod geodns;
mod image;
mod sdl;
mod up;
mod version;
