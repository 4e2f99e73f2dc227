//! Result tables: building them from rows, writing parquet/CSV/Markdown, and
//! answering SQL over them. Knows nothing of stages or GANs.

pub mod compare;
pub mod query;
pub mod stats;
pub mod table;

pub use table::{frame_from_rows, write_table, Cell};
