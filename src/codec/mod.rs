//! Payload codecs: inbound messages → fields, outbound rows → messages.

pub mod csv;
pub mod json;

pub use self::csv::csv_row;
pub use self::json::json_row;
