//! `access-log report`: event files (kv or JSON, rotated and gzipped ones too) read back
//! (`read`), the WSO2 API Manager access log's Splunk queries answered over them (`query`), and
//! the answer as a table, JSON or a self-contained HTML page (`render`).
pub mod query;
pub mod read;
pub mod render;
