//! The MallBots mall (seed 001): its eight bounded contexts as declarations, in start order
//! (owners first). `carrier` runs these; a user's binary runs its own list the same way.

use crate::context::BoundedContext;

/// Every context of the mall, owners first.
pub fn contexts() -> Vec<BoundedContext> {
    vec![
        crate::stores::context(),
        crate::customers::context(),
        crate::baskets::context(),
        crate::ordering::context(),
        crate::depot::context(),
        crate::payments::context(),
        crate::notifications::context(),
        crate::search::context(),
    ]
}
