//! Translation tables: descriptors, tables, audit (placeholder, being written).
