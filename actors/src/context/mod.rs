//! A bounded context at run time, one job per file:
//!
//! - `declare`: [`BoundedContext`], a context declared once (what it decides, reads, caches,
//!   serves);
//! - `assemble`: the declaration made into a supervisor's children (the writer, one consumer per
//!   stream it reads, the outbox relay, its servers);
//! - `writer`: [`ContextWriter`], the one actor that writes the context's file (batches,
//!   commands, owners' answers, pruning, gap repair);
//! - `port`: `ContextPort`, what a consumer hands its batches to (the writer's mailbox, after
//!   a prefetch), reads its checkpoint from, and asks for a full sync;
//! - `decisions`: commands queued for the writer's next group commit;
//! - `handle`: [`ContextHandle`], what the rest of the process uses of a running context;
//! - `lookup`, `rebuild`, `resync`: its caches read by id (a miss asks the owner), rebuilt from
//!   the streams, and replaced from an owner's snapshot.

mod assemble;
mod decisions;
mod declare;
mod handle;
mod lookup;
mod port;
mod rebuild;
mod resync;
mod writer;

pub use assemble::*;
pub use decisions::*;
pub use declare::*;
pub use handle::*;
pub(crate) use lookup::*;
pub(crate) use port::*;
pub(crate) use resync::*;
pub use writer::*;
